use std::collections::BTreeMap;

use super::*;
use crate::history::{
    BoundsMs, Enforcement, FaultEvent, FinalProbe, LoadError, NodeInfo, Observation, Op, Second,
};

fn view(term: u64, leader: Option<u64>, version: u64) -> Option<View> {
    Some(View {
        term,
        leader,
        state: "Follower".into(),
        config_version: version,
        applied: 0,
        global_bound: Some(2.0),
    })
}

fn observe(t_ms: u64, node: u64, view: Option<View>) -> Observation {
    Observation { t_ms, node, view }
}

/// A healthy run of three nodes: node 1 leads term 2 until it is killed at
/// 5 s; node 2 leads term 3 from 6 s; node 1 restarts at 9 s. One config
/// write (version 2) and one revocation are acknowledged; everything is
/// where it should be.
fn healthy() -> Record {
    let mut observations = Vec::new();
    for t in (0..23_000).step_by(500) {
        for node in 1..=3 {
            let v = if t < 5_000 {
                view(2, Some(1), 1)
            } else if node == 1 && t < 9_500 {
                None
            } else if t < 6_000 {
                view(2, None, 1)
            } else {
                view(3, Some(2), 2)
            };
            observations.push(observe(t, node, v));
        }
    }
    let versions: BTreeMap<u64, BTreeMap<u64, Option<Vec<String>>>> = (1..=3)
        .map(|n| (n, BTreeMap::from([(2, Some(vec!["chaos-w1".to_owned()]))])))
        .collect();
    Record {
        network: "loopback".into(),
        nodes: (1..=3)
            .map(|id| NodeInfo {
                id,
                region: format!("r{id}"),
                ..NodeInfo::default()
            })
            .collect(),
        duration_ms: 20_000,
        bounds: BoundsMs {
            failover: 3_000,
            heal: 5_000,
            election: 5_000,
        },
        faults: vec![FaultEvent {
            step: 0,
            fault: "kill".into(),
            node: Some(1),
            was_leader: true,
            cut: None,
            start_ms: 5_000,
            heal_ms: Some(9_000),
            detail: "kill -9 node 1".into(),
            ..FaultEvent::default()
        }],
        ops: vec![
            Op {
                id: 1,
                kind: OpKind::ConfigWrite {
                    route: "chaos-w1".into(),
                },
                node: 2,
                invoke_ms: 7_000,
                return_ms: 7_100,
                outcome: Outcome::Ok {
                    version: Some(2),
                    index: Some(9),
                },
            },
            Op {
                id: 2,
                kind: OpKind::Revoke {
                    key_id: "k1".into(),
                },
                node: 3,
                invoke_ms: 8_000,
                return_ms: 8_100,
                outcome: Outcome::Ok {
                    version: None,
                    index: Some(10),
                },
            },
            Op {
                id: 3,
                kind: OpKind::ConfigWrite {
                    route: "chaos-w2".into(),
                },
                node: 1,
                invoke_ms: 6_000,
                return_ms: 6_001,
                outcome: Outcome::Unreachable {
                    message: "refused".into(),
                },
            },
        ],
        observations,
        load: vec![Second {
            node: 2,
            second: 5,
            sent: 30,
            ok: 29,
            server_errors: 1,
            ..Second::default()
        }],
        errors: vec![
            // Inside the failover window after the kill.
            LoadError {
                t_ms: 5_500,
                node: 2,
                what: "502".into(),
            },
            // To the killed node: expected.
            LoadError {
                t_ms: 6_000,
                node: 1,
                what: "failed: connection refused".into(),
            },
        ],
        errors_dropped: 0,
        enforcements: vec![
            Enforcement {
                key_id: "k1".into(),
                node: 1,
                t_ms: 9_800,
            },
            Enforcement {
                key_id: "k1".into(),
                node: 2,
                t_ms: 8_200,
            },
            Enforcement {
                key_id: "k1".into(),
                node: 3,
                t_ms: 8_150,
            },
        ],
        final_probe: FinalProbe {
            start_ms: 21_000,
            versions,
            control_key: (1..=3).map(|n| (n, 200)).collect(),
        },
        // Starts 5 s into a 10 s window: the only whole window of the
        // 20 s run is from 5 s to 15 s.
        origin_unix_ms: 1_000_005_000,
        global_limit: Some(crate::history::GlobalLimit {
            limit: 100,
            window_ms: 10_000,
        }),
        global_admitted: (0..104).map(|i| (5_000 + i * 10, 1 + i % 3)).collect(),
        jwt: crate::history::JwtRecord::default(),
    }
}

#[track_caller]
fn verdict<'a>(verdicts: &'a [Verdict], name: &str) -> &'a Verdict {
    verdicts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no verdict {name}"))
}

#[test]
fn a_healthy_history_passes_every_invariant() {
    let verdicts = all(&healthy());
    for v in &verdicts {
        assert!(v.pass, "{v:?}");
    }
    let failover = verdict(&verdicts, "new-leader-after-leader-loss");
    assert!(
        failover.measured.contains("node 2 leads after 1.00s"),
        "{failover:?}"
    );
    let converged = verdict(&verdicts, "converges-after-heal");
    assert!(
        converged.measured.contains("kill step 0 heal: 0.50s"),
        "{converged:?}"
    );
}

#[test]
fn an_acknowledged_write_missing_on_one_node_fails() {
    let mut record = healthy();
    record
        .final_probe
        .versions
        .get_mut(&3)
        .unwrap()
        .insert(2, None);
    let v = acked_writes_survive(&record);
    assert!(!v.pass);
    assert!(v.measured.starts_with("1 violation(s)"), "{v:?}");
    assert_eq!(
        v.evidence,
        ["node 3: version 2 (write 1 of chaos-w1, acked by node 2 at 7.10s) is missing"]
    );
    // A version that exists but holds another write is a loss too.
    let mut record = healthy();
    record
        .final_probe
        .versions
        .get_mut(&1)
        .unwrap()
        .insert(2, Some(vec!["chaos-w9".into()]));
    assert!(!acked_writes_survive(&record).pass);
}

#[test]
fn unacknowledged_writes_are_not_held_against_the_cluster() {
    let mut record = healthy();
    record.ops[0].outcome = Outcome::Timeout;
    for versions in record.final_probe.versions.values_mut() {
        versions.clear();
    }
    assert!(acked_writes_survive(&record).pass);
}

#[test]
fn a_revocation_enforced_late_or_never_fails() {
    let mut record = healthy();
    // Node 2 was healthy: due at 8.1 + 5 s.
    record.enforcements[1].t_ms = 13_200;
    let v = revocations_enforced(&record);
    assert!(!v.pass);
    assert_eq!(
        v.evidence,
        ["node 2 refused key k1 at 13.20s, after its deadline 13.10s"]
    );
    // Node 1 was down until 9 s: due at 9 + 5 s, so 13.9 s is in time.
    let mut record = healthy();
    record.enforcements[0].t_ms = 13_900;
    assert!(revocations_enforced(&record).pass);
    record.enforcements.remove(0);
    let v = revocations_enforced(&record);
    assert_eq!(
        v.evidence,
        ["node 1 never refused key k1 (revoked through node 3, acked at 8.10s)"]
    );
    // Node 2's disk was full from 7 s to 10 s: it could not append the
    // revocation before 10 s, so it is due at 10 + 5 s.
    let mut record = healthy();
    record.enforcements[1].t_ms = 13_200;
    record.faults.push(FaultEvent {
        step: 1,
        fault: "disk-full".into(),
        node: Some(2),
        start_ms: 7_000,
        heal_ms: Some(10_000),
        ..FaultEvent::default()
    });
    assert!(revocations_enforced(&record).pass);
    // A control key that stopped working voids the 401s.
    let mut record = healthy();
    record.final_probe.control_key.insert(2, 401);
    assert!(!revocations_enforced(&record).pass);
}

#[test]
fn two_leaders_in_one_term_fail() {
    let mut record = healthy();
    record
        .observations
        .push(observe(7_000, 3, view(3, Some(3), 2)));
    let v = one_leader_per_term(&record);
    assert!(!v.pass);
    assert_eq!(
        v.evidence,
        ["term 3: leader 2 (named by node 2 at 6.00s), leader 3 (named by node 3 at 7.00s)"]
    );
}

#[test]
fn an_ack_from_a_cut_off_node_fails() {
    let mut record = healthy();
    record.faults.push(FaultEvent {
        step: 1,
        fault: "partition".into(),
        node: Some(3),
        cut: Some("both".into()),
        start_ms: 7_500,
        heal_ms: Some(12_000),
        ..FaultEvent::default()
    });
    // The revocation went to node 3 at 8 s, inside its cut.
    let v = cut_off_node_acks_nothing(&record);
    assert!(!v.pass);
    assert!(
        v.evidence[0].starts_with("write 2 to cut-off node 3"),
        "{v:?}"
    );
    record.ops[1].outcome = Outcome::Fail {
        status: 503,
        message: "no leader".into(),
    };
    assert!(cut_off_node_acks_nothing(&record).pass);
}

#[test]
fn a_slow_or_missing_election_fails() {
    let mut record = healthy();
    record.bounds.election = 500;
    let v = new_leader_after_leader_loss(&record);
    assert!(!v.pass);
    assert_eq!(
        v.evidence,
        ["kill of leader 1 at 5.00s: a new leader only after 1.00s"]
    );
    let mut record = healthy();
    record
        .observations
        .retain(|o| o.t_ms < 5_000 || o.view.as_ref().is_none_or(|v| v.leader != Some(2)));
    assert!(!new_leader_after_leader_loss(&record).pass);
}

#[test]
fn errors_outside_the_windows_fail_and_errors_to_a_dead_node_do_not() {
    let mut record = healthy();
    record.errors.push(LoadError {
        t_ms: 15_000,
        node: 3,
        what: "503".into(),
    });
    let v = errors_only_in_failover_windows(&record);
    assert!(!v.pass);
    assert_eq!(v.evidence, ["node 3 at 15.00s: 503"]);
    assert!(
        v.measured.contains("1 inside a window, 1 to a killed node"),
        "{v:?}"
    );
}

#[test]
fn a_cut_off_node_that_stops_serving_fails() {
    let mut record = healthy();
    record.faults.push(FaultEvent {
        step: 1,
        fault: "partition".into(),
        node: Some(3),
        cut: Some("both".into()),
        start_ms: 12_000,
        heal_ms: Some(16_000),
        ..FaultEvent::default()
    });
    assert!(data_plane_serves_during_partition(&record).pass);
    // Even inside the failover window: the data plane needs no peer.
    record.errors.push(LoadError {
        t_ms: 12_100,
        node: 3,
        what: "502".into(),
    });
    let v = data_plane_serves_during_partition(&record);
    assert!(!v.pass);
    assert_eq!(v.evidence, ["node 3 at 12.10s (cut off since 12.00s): 502"]);
}

#[test]
fn a_cluster_that_never_agrees_after_a_heal_fails() {
    let mut record = healthy();
    for o in &mut record.observations {
        if o.node == 3 && o.t_ms >= 9_000 {
            o.view = view(3, Some(2), 1);
        }
    }
    let v = converges_after_heal(&record);
    assert!(!v.pass);
    assert!(
        v.evidence[0].starts_with("kill step 0 heal at 9.00s: never converged"),
        "{v:?}"
    );
}

#[test]
fn a_record_survives_json() {
    let record = healthy();
    let text = serde_json::to_string(&record).unwrap();
    let back: Record = serde_json::from_str(&text).unwrap();
    assert_eq!(back, record);
    assert_eq!(all(&back), all(&record));
}

#[test]
fn a_global_limit_overshooting_its_bound_fails() {
    let record = healthy();
    let v = global_limit_overshoot(&record);
    assert!(v.pass, "{v:?}");
    assert_eq!(
        v.measured,
        "admitted per window: from 5.00s: 104/100 (bound 2.0)"
    );
    // 100 + 2 × 2 + 1 = 105 is the most a window may admit.
    let mut record = healthy();
    record.global_admitted.extend([(6_000, 1), (6_001, 2)]);
    let v = global_limit_overshoot(&record);
    assert!(!v.pass);
    assert_eq!(
        v.evidence,
        ["window from 5.00s: 106 admitted, above 100 + 2 × 2.0 + 1"]
    );
    // Admissions outside whole windows are not judged.
    let mut record = healthy();
    record.global_admitted.extend(
        (0..500)
            .map(|i| (1_000 + i, 1))
            .chain((0..500).map(|i| (16_000 + i, 2))),
    );
    assert!(global_limit_overshoot(&record).pass);
    // Under 20 % loss with 150 ms one way, a count may wait for the full
    // sync: 50 a second × 1.15 s = 57.5, so 100 + 115 + 1 may pass.
    let mut record = healthy();
    record.faults.push(FaultEvent {
        step: 1,
        fault: "latency".into(),
        start_ms: 4_000,
        heal_ms: Some(12_000),
        loss: 0.2,
        one_way_ms: 150,
        ..FaultEvent::default()
    });
    record.global_admitted = (0..150).map(|i| (5_000 + i * 20, 1 + i % 3)).collect();
    let v = global_limit_overshoot(&record);
    assert!(v.pass, "{v:?}");
    assert!(
        v.measured.contains(
            "150/100 (under loss or a new partition: bound 57.5; the nodes reported 2.0)"
        ),
        "{v:?}"
    );
    record
        .global_admitted
        .extend((0..70).map(|i| (12_000 + i * 40, 2)));
    assert!(!global_limit_overshoot(&record).pass);
    // A partition starting in the window: each side trusts the other's
    // last counts for the 2 s peer timeout: 50 × 2 = 100.
    let mut record = healthy();
    record.faults.push(FaultEvent {
        step: 1,
        fault: "partition".into(),
        node: Some(3),
        start_ms: 6_000,
        heal_ms: Some(9_000),
        ..FaultEvent::default()
    });
    record.global_admitted = (0..150).map(|i| (5_000 + i * 20, 1 + i % 3)).collect();
    let v = global_limit_overshoot(&record);
    assert!(
        v.measured
            .contains("150/100 (under loss or a new partition: bound 100.0"),
        "{v:?}"
    );
    // No limit, nothing to judge.
    let mut record = healthy();
    record.global_limit = None;
    assert!(global_limit_overshoot(&record).pass);
}

#[test]
fn a_refused_valid_token_or_an_accepted_rogue_one_fails() {
    let mut record = healthy();
    assert!(valid_tokens_verify(&record).pass);
    assert!(unverifiable_tokens_refused(&record).pass);
    record.faults.push(FaultEvent {
        step: 1,
        fault: "jwks-down".into(),
        start_ms: 3_000,
        heal_ms: Some(12_000),
        ..FaultEvent::default()
    });
    record.jwt = crate::history::JwtRecord {
        sent: 300,
        refused: vec![],
        rogue_probes: 120,
        rogue_accepted: vec![],
    };
    let v = valid_tokens_verify(&record);
    assert!(v.pass);
    assert_eq!(
        v.measured,
        "300 request(s) with a valid token, 0 refused; JWKS down for 9.00s"
    );
    record.jwt.refused.push((5_000, 2, 401));
    record.jwt.rogue_accepted.push((6_000, 3, 200));
    let v = valid_tokens_verify(&record);
    assert!(!v.pass);
    assert_eq!(v.evidence, ["node 2 at 5.00s: 401 to a valid token"]);
    let v = unverifiable_tokens_refused(&record);
    assert!(!v.pass);
    assert_eq!(
        v.evidence,
        ["node 3 at 6.00s: answered 200 to a token it cannot verify"]
    );
}
