//! The invariants, checked over a [`Record`] and nothing else.
//!
//! Each checker returns a [`Verdict`]: the rule with its bound, pass or
//! fail, what was measured, and evidence (at most [`MAX_EVIDENCE`] lines;
//! every violation is counted in `measured`). Indeterminate operations
//! (timeouts, refusals) are never held against the cluster: only
//! acknowledged writes must survive (TESTING-NOTES.md §1).
//!
//! | invariant | rule |
//! |---|---|
//! | `acked-writes-survive` | every acknowledged config write's version holds its marker route on every node after the run |
//! | `revocations-enforced` | every acknowledged revocation is refused by every node within X of its ack, or of the node's heal if it was killed or cut off; a never-revoked key still works |
//! | `one-leader-per-term` | no two nodes name different leaders for one term |
//! | `cut-off-node-acks-nothing` | no write sent to a node while its peer links are cut is acknowledged |
//! | `new-leader-after-leader-loss` | after the leader is killed or cut off, the others name a new leader within the election bound |
//! | `data-plane-serves-during-partition` | a cut-off node's proxy answers every request without a 5xx or a failure |
//! | `errors-only-in-failover-windows` | 5xx and failed requests to a running node only within W after a fault starts or heals |
//! | `converges-after-heal` | within X after every heal, every node answers and names the same leader, term and config version |
//! | `valid-tokens-verify` | a request with a valid token of the run's issuer is never answered 4xx, the JWKS endpoint up or down (keys are cached up to `max_stale`) |
//! | `unverifiable-tokens-refused` | a token signed by a key the JWKS never published is refused by every node, every time |
//! | `global-limit-overshoot` | in every whole calendar window, the requests the global limit admitted over all nodes stay within `limit + 2 × bound + 1`: `bound` is the largest overshoot bound a node reported in that window or, while peer datagrams are lost, `peak admission rate × (full-sync interval + one-way delay)` |

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{OpKind, Outcome, Record, View};

/// `ratelimit.global.full-sync-interval`, which the harness leaves at its
/// default: under loss, a count waits at most this long for a full sync.
pub const FULL_SYNC_MS: u64 = 1_000;

/// `ratelimit.global.peer-timeout`, left at its default: a side of a new
/// partition counts the other's last known admissions until then.
pub const PEER_TIMEOUT_MS: u64 = 2_000;

/// Most evidence lines per verdict.
pub const MAX_EVIDENCE: usize = 12;

/// One invariant's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The invariant's name.
    pub name: String,
    /// The rule, with its bound.
    pub rule: String,
    /// Whether it held.
    pub pass: bool,
    /// What was measured (counts, times).
    pub measured: String,
    /// Evidence: violations first, or what was checked.
    pub evidence: Vec<String>,
}

/// Every invariant over `record`.
pub fn all(record: &Record) -> Vec<Verdict> {
    vec![
        acked_writes_survive(record),
        revocations_enforced(record),
        one_leader_per_term(record),
        cut_off_node_acks_nothing(record),
        new_leader_after_leader_loss(record),
        data_plane_serves_during_partition(record),
        errors_only_in_failover_windows(record),
        converges_after_heal(record),
        global_limit_overshoot(record),
        valid_tokens_verify(record),
        unverifiable_tokens_refused(record),
    ]
}

struct Builder {
    name: &'static str,
    rule: String,
    violations: u64,
    evidence: Vec<String>,
}

impl Builder {
    fn new(name: &'static str, rule: String) -> Self {
        Self {
            name,
            rule,
            violations: 0,
            evidence: Vec::new(),
        }
    }

    fn violation(&mut self, line: String) {
        self.violations += 1;
        if self.evidence.len() < MAX_EVIDENCE {
            self.evidence.push(line);
        }
    }

    fn note(&mut self, line: String) {
        if self.evidence.len() < MAX_EVIDENCE {
            self.evidence.push(line);
        }
    }

    fn finish(self, measured: String) -> Verdict {
        let measured = if self.violations > 0 {
            format!("{} violation(s); {measured}", self.violations)
        } else {
            measured
        };
        Verdict {
            name: self.name.into(),
            rule: self.rule,
            pass: self.violations == 0,
            measured,
            evidence: self.evidence,
        }
    }
}

fn secs(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

/// Every acknowledged config write's version holds its marker route on
/// every node.
pub fn acked_writes_survive(record: &Record) -> Verdict {
    let mut b = Builder::new(
        "acked-writes-survive",
        "every acknowledged config write is in every node's history, with its content, after the run".into(),
    );
    let mut acked = 0;
    for op in &record.ops {
        let (OpKind::ConfigWrite { route }, Outcome::Ok { version, .. }) = (&op.kind, &op.outcome)
        else {
            continue;
        };
        acked += 1;
        let Some(version) = version else {
            b.violation(format!(
                "write {} ({route}) was acknowledged without a version",
                op.id
            ));
            continue;
        };
        for node in record.node_ids() {
            match record
                .final_probe
                .versions
                .get(&node)
                .and_then(|v| v.get(version))
            {
                Some(Some(routes)) if routes.contains(route) => {}
                Some(Some(routes)) => b.violation(format!(
                    "node {node}: version {version} (write {}, acked at {}) holds {routes:?}, not {route}",
                    op.id,
                    secs(op.return_ms)
                )),
                Some(None) | None => b.violation(format!(
                    "node {node}: version {version} (write {} of {route}, acked by node {} at {}) is missing",
                    op.id,
                    op.node,
                    secs(op.return_ms)
                )),
            }
        }
    }
    let unknown = record
        .ops
        .iter()
        .filter(|op| {
            matches!(op.kind, OpKind::ConfigWrite { .. })
                && !matches!(op.outcome, Outcome::Ok { .. })
        })
        .count();
    if acked == 0 {
        b.note("no config write was acknowledged: nothing to check".into());
    }
    b.finish(format!(
        "{acked} acknowledged config write(s) checked on {} node(s); {unknown} not acknowledged (indeterminate)",
        record.nodes.len()
    ))
}

/// When `node` must enforce something acknowledged at `acked`: X later, or
/// X after the end of any kill, cut or full disk that overlaps the wait.
fn deadline(record: &Record, node: u64, acked: u64) -> u64 {
    let x = record.bounds.heal;
    let impaired = record.impaired(node);
    let mut deadline = acked + x;
    loop {
        let extended = impaired
            .iter()
            .filter(|&&(a, b)| a <= deadline && b > acked)
            .map(|&(_, b)| b + x)
            .fold(deadline, u64::max);
        if extended == deadline {
            return deadline;
        }
        deadline = extended;
    }
}

/// Every acknowledged revocation is enforced by every node within X.
pub fn revocations_enforced(record: &Record) -> Verdict {
    let x = record.bounds.heal;
    let mut b = Builder::new(
        "revocations-enforced",
        format!(
            "every acknowledged revocation is refused (401) by every node within X = {} of its ack, or of that node's heal",
            secs(x)
        ),
    );
    let mut acked = 0;
    let mut worst: Option<(u64, String)> = None;
    for op in &record.ops {
        let (OpKind::Revoke { key_id }, Outcome::Ok { .. }) = (&op.kind, &op.outcome) else {
            continue;
        };
        acked += 1;
        for node in record.node_ids() {
            let due = deadline(record, node, op.return_ms);
            let seen = record
                .enforcements
                .iter()
                .filter(|e| e.key_id == *key_id && e.node == node)
                .map(|e| e.t_ms)
                .min();
            match seen {
                None => b.violation(format!(
                    "node {node} never refused key {key_id} (revoked through node {}, acked at {})",
                    op.node,
                    secs(op.return_ms)
                )),
                Some(t) if t > due => b.violation(format!(
                    "node {node} refused key {key_id} at {}, after its deadline {}",
                    secs(t),
                    secs(due)
                )),
                Some(t) => {
                    // Measured from the later of the ack and the node's heal.
                    let from = due - x;
                    let lag = t.saturating_sub(from);
                    if worst.as_ref().is_none_or(|(w, _)| lag > *w) {
                        worst = Some((lag, format!("key {key_id} on node {node}")));
                    }
                }
            }
        }
    }
    for (node, status) in &record.final_probe.control_key {
        if *status != 200 {
            b.violation(format!(
                "node {node} answers {status} to a key that was never revoked: the 401s prove nothing"
            ));
        }
    }
    let worst = worst.map_or("-".into(), |(lag, what)| format!("{} ({what})", secs(lag)));
    b.finish(format!(
        "{acked} acknowledged revocation(s); slowest enforcement after the later of ack and heal: {worst}"
    ))
}

/// No two nodes name different leaders for one term.
pub fn one_leader_per_term(record: &Record) -> Verdict {
    let mut b = Builder::new(
        "one-leader-per-term",
        "no two observations name different leaders for the same term".into(),
    );
    let mut leaders: BTreeMap<u64, BTreeMap<u64, (u64, u64)>> = BTreeMap::new();
    for o in &record.observations {
        if let Some(View {
            term,
            leader: Some(leader),
            ..
        }) = &o.view
        {
            leaders
                .entry(*term)
                .or_default()
                .entry(*leader)
                .or_insert((o.node, o.t_ms));
        }
    }
    for (term, named) in &leaders {
        if named.len() > 1 {
            let who: Vec<String> = named
                .iter()
                .map(|(leader, (by, t))| {
                    format!("leader {leader} (named by node {by} at {})", secs(*t))
                })
                .collect();
            b.violation(format!("term {term}: {}", who.join(", ")));
        }
    }
    let terms: Vec<String> = leaders
        .iter()
        .map(|(t, l)| {
            let ids: Vec<String> = l.keys().map(u64::to_string).collect();
            format!("{t}→{}", ids.join("/"))
        })
        .collect();
    b.finish(format!(
        "{} observation(s), {} term(s) with a leader: {}",
        record.observations.len(),
        leaders.len(),
        terms.join(" ")
    ))
}

/// No write sent to a cut-off node while it was cut off is acknowledged.
pub fn cut_off_node_acks_nothing(record: &Record) -> Verdict {
    let mut b = Builder::new(
        "cut-off-node-acks-nothing",
        "a write invoked on a node after its peer links were cut and returned before the heal is never acknowledged".into(),
    );
    let mut sent = 0;
    for op in &record.ops {
        let cut = record.cut(op.node);
        let inside = cut
            .iter()
            .any(|&(a, h)| a <= op.invoke_ms && op.return_ms < h);
        if !inside {
            continue;
        }
        sent += 1;
        if let Outcome::Ok { version, index } = &op.outcome {
            b.violation(format!(
                "write {} to cut-off node {} was acknowledged at {} (version {version:?}, index {index:?})",
                op.id,
                op.node,
                secs(op.return_ms)
            ));
        }
    }
    b.finish(format!(
        "{sent} write(s) sent to a cut-off node while it was cut off"
    ))
}

/// After the leader is killed or cut off, the other nodes name a new
/// leader within the election bound.
pub fn new_leader_after_leader_loss(record: &Record) -> Verdict {
    let bound = record.bounds.election;
    let mut b = Builder::new(
        "new-leader-after-leader-loss",
        format!(
            "after the leader is killed or cut off, another node is named leader within {}",
            secs(bound)
        ),
    );
    let mut measured = Vec::new();
    for f in &record.faults {
        let (Some(old), true) = (f.node, f.was_leader) else {
            continue;
        };
        if f.fault != "kill" && !(f.fault == "partition" && f.cut.as_deref() == Some("both")) {
            continue;
        }
        let elected = record
            .observations
            .iter()
            .filter(|o| o.t_ms >= f.start_ms && o.node != old)
            .find(|o| matches!(&o.view, Some(View { leader: Some(l), .. }) if *l != old));
        match elected {
            Some(o) if o.t_ms - f.start_ms <= bound => {
                let leader = o.view.as_ref().and_then(|v| v.leader).unwrap_or(0);
                measured.push(format!(
                    "{} of node {old}: node {leader} leads after {}",
                    f.fault,
                    secs(o.t_ms - f.start_ms)
                ));
            }
            Some(o) => b.violation(format!(
                "{} of leader {old} at {}: a new leader only after {}",
                f.fault,
                secs(f.start_ms),
                secs(o.t_ms - f.start_ms)
            )),
            None => b.violation(format!(
                "{} of leader {old} at {}: no new leader was ever named",
                f.fault,
                secs(f.start_ms)
            )),
        }
    }
    if measured.is_empty() && b.violations == 0 {
        b.note("no leader was killed or cut off: nothing to check".into());
    }
    b.finish(if measured.is_empty() {
        "no leader lost".into()
    } else {
        measured.join("; ")
    })
}

/// A cut-off node's proxy keeps answering.
pub fn data_plane_serves_during_partition(record: &Record) -> Verdict {
    let mut b = Builder::new(
        "data-plane-serves-during-partition",
        "while a node's peer links are cut, its proxy answers every request without a 5xx or a failure".into(),
    );
    let mut served = 0;
    let mut cuts = 0;
    for f in record.faults.iter().filter(|f| f.fault == "partition") {
        let Some(node) = f.node else { continue };
        cuts += 1;
        let end = f
            .heal_ms
            .unwrap_or(record.final_probe.start_ms.max(record.duration_ms));
        let down = record.down(node);
        for e in &record.errors {
            if e.node == node
                && e.t_ms >= f.start_ms
                && e.t_ms < end
                && !Record::within(&down, e.t_ms)
            {
                b.violation(format!(
                    "node {node} at {} (cut off since {}): {}",
                    secs(e.t_ms),
                    secs(f.start_ms),
                    e.what
                ));
            }
        }
        served += record
            .load
            .iter()
            .filter(|s| {
                s.node == node && s.second * 1000 >= f.start_ms && (s.second + 1) * 1000 <= end
            })
            .map(|s| s.ok)
            .sum::<u64>();
    }
    if cuts == 0 {
        b.note("no partition in this run: nothing to check".into());
    }
    b.finish(format!(
        "{cuts} partition(s); {served} request(s) answered 2xx by cut-off nodes during whole seconds of their cut"
    ))
}

/// 5xx and failures only inside the failover windows.
pub fn errors_only_in_failover_windows(record: &Record) -> Verdict {
    let w = record.bounds.failover;
    let mut b = Builder::new(
        "errors-only-in-failover-windows",
        format!(
            "5xx answers and failed requests to a running node only within W = {} after a fault starts or heals (a request failing on a node killed while it was in flight, up to 2s, is not held against the cluster)",
            secs(w)
        ),
    );
    let windows = record.windows();
    let (mut inside, mut to_dead) = (0u64, 0u64);
    for e in &record.errors {
        let failed = e.what.starts_with("failed");
        if failed && Record::within(&record.killed_under(e.node), e.t_ms) {
            to_dead += 1;
        } else if Record::within(&windows, e.t_ms) {
            inside += 1;
        } else {
            b.violation(format!("node {} at {}: {}", e.node, secs(e.t_ms), e.what));
        }
    }
    let sent: u64 = record.load.iter().map(|s| s.sent).sum();
    let server: u64 = record.load.iter().map(|s| s.server_errors).sum();
    let failed: u64 = record.load.iter().map(|s| s.failed).sum();
    let dropped = if record.errors_dropped > 0 {
        format!(
            "; {} error(s) not itemised (list full)",
            record.errors_dropped
        )
    } else {
        String::new()
    };
    if record.errors_dropped > 0 {
        b.violation(format!(
            "{} error(s) could not be placed in time: the error list was full",
            record.errors_dropped
        ));
    }
    b.finish(format!(
        "{sent} request(s): {server} 5xx, {failed} failed; {inside} inside a window, {to_dead} to a killed node{dropped}"
    ))
}

/// Within X after every heal, every node agrees.
pub fn converges_after_heal(record: &Record) -> Verdict {
    let x = record.bounds.heal;
    let mut b = Builder::new(
        "converges-after-heal",
        format!(
            "within X = {} after every heal (and the end of the run), every node answers and names the same leader, term and config version",
            secs(x)
        ),
    );
    let nodes: BTreeSet<u64> = record.node_ids().into_iter().collect();
    let mut heals: Vec<(u64, String)> = record
        .faults
        .iter()
        .filter_map(|f| {
            f.heal_ms
                .map(|h| (h, format!("{} step {} heal", f.fault, f.step)))
        })
        .collect();
    heals.push((record.duration_ms, "end of run".into()));
    heals.sort();
    let mut observations: Vec<_> = record.observations.iter().collect();
    observations.sort_by_key(|o| o.t_ms);
    let mut measured = Vec::new();
    for (heal, what) in heals {
        let mut latest: BTreeMap<u64, Option<&View>> = BTreeMap::new();
        let mut converged = None;
        for o in observations.iter().filter(|o| o.t_ms >= heal) {
            latest.insert(o.node, o.view.as_ref());
            if latest.len() == nodes.len() && agree(latest.values().copied()) {
                converged = Some(o.t_ms);
                break;
            }
        }
        match converged {
            Some(t) if t - heal <= x => measured.push(format!("{what}: {}", secs(t - heal))),
            Some(t) => b.violation(format!(
                "{what} at {}: converged only after {}",
                secs(heal),
                secs(t - heal)
            )),
            None => {
                let views: Vec<String> = latest
                    .iter()
                    .map(|(n, v)| match v {
                        Some(v) => format!(
                            "node {n}: term {} leader {:?} v{}",
                            v.term, v.leader, v.config_version
                        ),
                        None => format!("node {n}: no answer"),
                    })
                    .collect();
                b.violation(format!(
                    "{what} at {}: never converged (last: {})",
                    secs(heal),
                    views.join("; ")
                ));
            }
        }
    }
    b.finish(measured.join("; "))
}

/// The global rate limit's admissions stay within its documented bound.
pub fn global_limit_overshoot(record: &Record) -> Verdict {
    let mut b = Builder::new(
        "global-limit-overshoot",
        "in every whole calendar window, the requests the global limit admitted over all nodes ≤ limit + 2 × bound + 1, where bound = Σ rₙ × D is the largest a node reported in that window (D = the longest a peer went unheard + RTT/2) or, while peer datagrams are lost, the peak admission rate × (full-sync interval 1 s + one-way delay), or in a window where a partition starts, the peak admission rate × the peer timeout 2 s (docs/rate-limiting.md; 2× for timer and scheduling delay, as its tests assert; +1 for the batch in flight)".into(),
    );
    let Some(limit) = record.global_limit.filter(|l| l.window_ms > 0) else {
        b.note("no global limit in this run: nothing to check".into());
        return b.finish("-".into());
    };
    if record.global_admitted.is_empty() {
        b.note("the load did not reach the global limit's route: nothing to check".into());
        return b.finish("-".into());
    }
    let unix = |t: u64| record.origin_unix_ms + t;
    let first = unix(0).div_ceil(limit.window_ms);
    let last = unix(record.duration_ms) / limit.window_ms; // exclusive
    let mut measured = Vec::new();
    for window in first..last {
        let (start, end) = (window * limit.window_ms, (window + 1) * limit.window_ms);
        let admitted = record
            .global_admitted
            .iter()
            .filter(|(t, _)| (start..end).contains(&unix(*t)))
            .count() as u64;
        let bound = record
            .observations
            .iter()
            .filter(|o| (start..end).contains(&unix(o.t_ms)))
            .filter_map(|o| o.view.as_ref().and_then(|v| v.global_bound))
            .fold(0.0, f64::max);
        // Under loss a count may wait for the next full sync; when a
        // partition starts, each side trusts the other's last counts until
        // the peer timeout presumes it away.
        let cut_starts = record
            .faults
            .iter()
            .any(|f| f.fault == "partition" && (start..end).contains(&unix(f.start_ms)));
        let lossy = record
            .faults
            .iter()
            .filter(|f| f.loss > 0.0)
            .filter(|f| {
                let heal = f.heal_ms.unwrap_or(record.duration_ms);
                unix(f.start_ms) < end && unix(heal) > start
            })
            .map(|f| f.one_way_ms)
            .max();
        // How long a count may stay unknown to the other nodes, beyond what
        // the nodes report.
        let unknown_ms = [
            lossy.map(|one_way| FULL_SYNC_MS + one_way),
            cut_starts.then_some(PEER_TIMEOUT_MS),
        ]
        .into_iter()
        .flatten()
        .max();
        let reported = bound;
        let bound = match unknown_ms {
            None => reported,
            Some(unknown_ms) => {
                let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
                for (t, _) in &record.global_admitted {
                    if (start..end).contains(&unix(*t)) {
                        *per_second.entry(unix(*t) / 1000).or_default() += 1;
                    }
                }
                let peak = per_second.values().copied().max().unwrap_or(0) as f64;
                reported.max(peak * unknown_ms as f64 / 1000.0)
            }
        };
        let allowed = limit.limit as f64 + 2.0 * bound + 1.0;
        let at = secs(start.saturating_sub(record.origin_unix_ms));
        if admitted as f64 > allowed {
            b.violation(format!(
                "window from {at}: {admitted} admitted, above {} + 2 × {bound:.1} + 1",
                limit.limit
            ));
        } else {
            measured.push(match unknown_ms {
                None => format!("from {at}: {admitted}/{} (bound {bound:.1})", limit.limit),
                Some(_) => format!(
                    "from {at}: {admitted}/{} (under loss or a new partition: bound {bound:.1}; the nodes reported {reported:.1})",
                    limit.limit
                ),
            });
        }
    }
    if measured.is_empty() && b.violations == 0 {
        b.note("the run held no whole window: nothing to check".into());
    }
    b.finish(format!("admitted per window: {}", measured.join("; ")))
}

/// Valid tokens verify, even while the JWKS endpoint is down.
pub fn valid_tokens_verify(record: &Record) -> Verdict {
    let mut b = Builder::new(
        "valid-tokens-verify",
        "a request with a valid token of the run's issuer is never answered 4xx, with its JWKS endpoint up or down (cached keys verify up to max_stale, 1h here)".into(),
    );
    let jwt = &record.jwt;
    if jwt.sent == 0 {
        b.note("no request carried a token: nothing to check".into());
    }
    for (t, node, status) in &jwt.refused {
        b.violation(format!(
            "node {node} at {}: {status} to a valid token",
            secs(*t)
        ));
    }
    let down: u64 = record
        .faults
        .iter()
        .filter(|f| f.fault == "jwks-down")
        .map(|f| f.heal_ms.unwrap_or(record.duration_ms) - f.start_ms)
        .sum();
    b.finish(format!(
        "{} request(s) with a valid token, {} refused; JWKS down for {}",
        jwt.sent,
        jwt.refused.len(),
        secs(down)
    ))
}

/// Tokens signed by an unpublished key are always refused.
pub fn unverifiable_tokens_refused(record: &Record) -> Verdict {
    let mut b = Builder::new(
        "unverifiable-tokens-refused",
        "a token signed by a key the JWKS never published (unknown kid) is refused by every node, every time, with the JWKS endpoint up or down".into(),
    );
    let jwt = &record.jwt;
    if jwt.rogue_probes == 0 {
        b.note("no rogue token was sent: nothing to check".into());
    }
    for (t, node, status) in &jwt.rogue_accepted {
        b.violation(format!(
            "node {node} at {}: answered {status} to a token it cannot verify",
            secs(*t)
        ));
    }
    b.finish(format!(
        "{} rogue request(s), {} not refused",
        jwt.rogue_probes,
        jwt.rogue_accepted.len()
    ))
}

fn agree<'a>(mut views: impl Iterator<Item = Option<&'a View>>) -> bool {
    let Some(Some(first)) = views.next() else {
        return false;
    };
    first.leader.is_some()
        && views.all(|v| {
            v.is_some_and(|v| {
                v.leader == first.leader
                    && v.term == first.term
                    && v.config_version == first.config_version
            })
        })
}

#[cfg(test)]
mod tests;
