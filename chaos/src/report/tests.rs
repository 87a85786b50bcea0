use super::*;
use crate::check::Verdict;
use crate::history::{FaultEvent, NodeInfo, Op, Second};

fn report(pass: bool) -> Report {
    let record = Record {
        network: "loopback".into(),
        nodes: vec![NodeInfo {
            id: 1,
            region: "eu-west".into(),
            proxy: "127.0.0.1:1".into(),
            admin: "127.0.0.1:2".into(),
        }],
        duration_ms: 3_000,
        faults: vec![FaultEvent {
            step: 0,
            fault: "kill".into(),
            node: Some(1),
            was_leader: true,
            start_ms: 1_000,
            heal_ms: Some(2_000),
            detail: "kill -9 node 1 (pid 42)".into(),
            ..FaultEvent::default()
        }],
        ops: vec![Op {
            id: 1,
            kind: OpKind::Revoke {
                key_id: "k|1".into(),
            },
            node: 1,
            invoke_ms: 1_500,
            return_ms: 1_600,
            outcome: Outcome::Fail {
                status: 503,
                message: "no leader".into(),
            },
        }],
        load: vec![Second {
            node: 1,
            second: 1,
            sent: 10,
            ok: 7,
            server_errors: 1,
            failed: 2,
            ..Second::default()
        }],
        ..Record::default()
    };
    Report {
        scenario: "leader-loss".into(),
        description: "kill the leader".into(),
        seed: 7,
        definition: serde_json::Value::Null,
        started_at: 0,
        meridian: "meridian".into(),
        pass,
        verdicts: vec![Verdict {
            name: "acked-writes-survive".into(),
            rule: "rule".into(),
            pass,
            measured: "1 violation(s); a | b".into(),
            evidence: vec!["node 3: version 2 is missing".into()],
        }],
        record,
    }
}

#[test]
fn the_markdown_has_the_seed_the_verdicts_the_timeline_and_the_rates() {
    let md = report(false).markdown();
    assert!(md.starts_with("# Chaos run: leader-loss — FAIL"), "{md}");
    assert!(
        md.contains("replay: `meridian chaos run leader-loss --seed 7`"),
        "{md}"
    );
    assert!(
        md.contains("| **FAIL** | `acked-writes-survive` | 1 violation(s); a \\| b |"),
        "{md}"
    );
    assert!(md.contains("- node 3: version 2 is missing"), "{md}");
    assert!(
        md.contains("| 1.00 | **kill** step 0 (the leader): kill -9 node 1 (pid 42) |"),
        "{md}"
    );
    assert!(md.contains("| 2.00 | **heal** kill step 0 |"), "{md}");
    assert!(
        md.contains("revoke key k\\|1: fail 503: no leader (returned at 1.60 s)"),
        "{md}"
    );
    assert!(md.contains("| 1* | 10 / 7 / 0 / 1 / 2 |"), "{md}");
    assert!(md.contains("| 0 | - |"), "{md}");
    assert!(
        report(true)
            .summary()
            .starts_with("PASS acked-writes-survive")
    );
}

#[test]
fn both_files_are_written_and_the_json_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let (md, json) = report(true).write(dir.path()).unwrap();
    assert!(std::fs::read_to_string(md).unwrap().contains("PASS"));
    let back: Report = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    assert_eq!(back.record, report(true).record);
    assert_eq!(back.verdicts, report(true).verdicts);
}
