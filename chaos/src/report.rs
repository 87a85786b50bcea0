//! The report of a run: `report.json` (everything: the scenario, the
//! verdicts and the whole [`Record`], which [`crate::check`] can judge again)
//! and `report.md` for people: the seed and how to replay, each invariant's
//! verdict with evidence, the timeline of faults and admin writes, and the
//! requests per second per node with their status classes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::check::Verdict;
use crate::history::{OpKind, Outcome, Record};

/// A judged run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// The seed.
    pub seed: u64,
    /// The scenario as run (TOML-equivalent JSON).
    pub definition: serde_json::Value,
    /// Unix time the run started, in seconds.
    pub started_at: u64,
    /// The `meridian` binary that ran, or the deployment run against.
    pub meridian: String,
    /// Whether every invariant held.
    pub pass: bool,
    /// Each invariant's verdict.
    pub verdicts: Vec<Verdict>,
    /// Everything recorded.
    pub record: Record,
}

// === impl Report ===

impl Report {
    /// Writes `report.json` and `report.md` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("report.json");
        let md = dir.join("report.md");
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        std::fs::write(&md, self.markdown())
            .with_context(|| format!("writing {}", md.display()))?;
        Ok((md, json))
    }

    /// One line per verdict, for a terminal.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for v in &self.verdicts {
            let _ = writeln!(
                out,
                "{} {:<36} {}",
                if v.pass { "PASS" } else { "FAIL" },
                v.name,
                v.measured
            );
        }
        out
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let r = &self.record;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Chaos run: {} — {}\n",
            self.scenario,
            if self.pass { "PASS" } else { "FAIL" }
        );
        let _ = writeln!(md, "{}\n", self.description);
        let _ = writeln!(
            md,
            "- seed: `{}` — replay: `meridian chaos run {} --seed {}`",
            self.seed, self.scenario, self.seed
        );
        let _ = writeln!(md, "- started: unix {}", self.started_at);
        let _ = writeln!(md, "- ran: `{}`", self.meridian);
        if !r.network.is_empty() {
            let _ = writeln!(md, "- network: {}", r.network);
        }
        let _ = writeln!(
            md,
            "- duration {} s; bounds: failover W = {} ms, heal X = {} ms, election = {} ms",
            r.duration_ms as f64 / 1000.0,
            r.bounds.failover,
            r.bounds.heal,
            r.bounds.election
        );
        let _ = writeln!(md, "\n| node | region | proxy | admin |\n|---|---|---|---|");
        for n in &r.nodes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                n.id, n.region, n.proxy, n.admin
            );
        }

        let _ = writeln!(md, "\n## Invariants\n");
        let _ = writeln!(md, "| verdict | invariant | measured |\n|---|---|---|");
        for v in &self.verdicts {
            let _ = writeln!(
                md,
                "| {} | `{}` | {} |",
                if v.pass { "PASS" } else { "**FAIL**" },
                v.name,
                v.measured.replace('|', "\\|")
            );
        }
        for v in &self.verdicts {
            let _ = writeln!(md, "\n### `{}`\n\n{}\n", v.name, v.rule);
            for line in &v.evidence {
                let _ = writeln!(md, "- {line}");
            }
        }

        let _ = writeln!(md, "\n## Timeline\n");
        let _ = writeln!(md, "| t (s) | event |\n|---|---|");
        let mut events: Vec<(u64, String)> = Vec::new();
        for f in &r.faults {
            events.push((
                f.start_ms,
                format!(
                    "**{}** step {}{}: {}",
                    f.fault,
                    f.step,
                    if f.was_leader { " (the leader)" } else { "" },
                    f.detail
                ),
            ));
            if let Some(h) = f.heal_ms {
                events.push((h, format!("**heal** {} step {}", f.fault, f.step)));
            }
        }
        for op in &r.ops {
            let what = match &op.kind {
                OpKind::ConfigWrite { route } => format!("config write {route}"),
                OpKind::Revoke { key_id } => format!("revoke key {key_id}"),
            };
            let outcome = match &op.outcome {
                Outcome::Ok { version, index } => format!(
                    "ok{}{}",
                    version.map(|v| format!(" v{v}")).unwrap_or_default(),
                    index.map(|i| format!(" @{i}")).unwrap_or_default()
                ),
                Outcome::Fail { status, message } => format!("fail {status}: {message}"),
                Outcome::Timeout => "timeout".into(),
                Outcome::Unreachable { message } => format!("unreachable: {message}"),
            };
            events.push((
                op.invoke_ms,
                format!(
                    "write {} → node {}: {what}: {outcome} (returned at {:.2} s)",
                    op.id,
                    op.node,
                    op.return_ms as f64 / 1000.0
                ),
            ));
        }
        events.sort_by_key(|(t, _)| *t);
        for (t, e) in events {
            let _ = writeln!(
                md,
                "| {:.2} | {} |",
                t as f64 / 1000.0,
                e.replace('|', "\\|")
            );
        }

        let _ = writeln!(md, "\n## Requests per second\n");
        let _ = writeln!(
            md,
            "Per node: sent / 2xx-3xx / 4xx / 5xx / failed (no answer). `*` marks a second with a fault start or heal.\n"
        );
        let ids = r.node_ids();
        let mut header = "| s |".to_owned();
        let mut rule = "|---|".to_owned();
        for id in &ids {
            let _ = write!(header, " node {id} |");
            rule.push_str("---|");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        let last = r.load.iter().map(|s| s.second).max().unwrap_or(0);
        for second in 0..=last {
            let marked = r.faults.iter().any(|f| {
                f.start_ms / 1000 == second || f.heal_ms.is_some_and(|h| h / 1000 == second)
            });
            let mut row = format!("| {second}{} |", if marked { "*" } else { "" });
            for id in &ids {
                match r.load.iter().find(|s| s.node == *id && s.second == second) {
                    Some(s) => {
                        let _ = write!(
                            row,
                            " {} / {} / {} / {} / {} |",
                            s.sent, s.ok, s.client_errors, s.server_errors, s.failed
                        );
                    }
                    None => row.push_str(" - |"),
                }
            }
            let _ = writeln!(md, "{row}");
        }
        md
    }
}

#[cfg(test)]
mod tests;
