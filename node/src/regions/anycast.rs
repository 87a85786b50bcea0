//! Anycast: run the configured announce / withdraw commands when this node
//! should start / stop attracting anycast traffic (e.g. to drive BIRD or
//! ExaBGP).
//!
//! Every `check-interval` the node evaluates its region
//! ([`super::evaluate`]). With hysteresis: `rise` healthy checks in a row
//! announce, `fall` unhealthy ones withdraw, and a state, once reached, is
//! held at least `hold` before the next change. The node starts withdrawn
//! (nothing is run until it has risen). Draining and shutdown withdraw at
//! once, whatever the counts and the hold time.
//!
//! A command is an argument vector (no shell), run with `tokio::process`
//! in the background, never on the request path, bounded by `timeout`
//! (killed after it), with the environment `MERIDIAN_ANYCAST_ACTION`
//! (`announce` / `withdraw`), `MERIDIAN_REGION`, `MERIDIAN_NODE_ID` and
//! `MERIDIAN_REASON`. Only a command that exits 0 changes the state; a
//! failed one is retried at the next check. Each run is logged and counted
//! in `meridian_anycast_commands_total{action,result}` (`ok`, `failed`,
//! `timeout`); `meridian_anycast_announced` is 1 while announced.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::Gateway;

/// `[anycast]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawAnycast {
    /// `announce`: the command and its arguments.
    pub announce: Vec<String>,
    /// `withdraw`: the command and its arguments.
    pub withdraw: Vec<String>,
    /// `rise`: healthy checks in a row before announcing.
    pub rise: u32,
    /// `fall`: unhealthy checks in a row before withdrawing.
    pub fall: u32,
    /// `hold`: least time between two changes.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// `check-interval`.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// `timeout`: a command running longer is killed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RawAnycast {
    fn default() -> Self {
        Self {
            announce: Vec::new(),
            withdraw: Vec::new(),
            rise: 3,
            fall: 2,
            hold: Duration::from_secs(30),
            check_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The validated `[anycast]`; `None` in the node config when no command is set.
#[derive(Debug, Clone)]
pub struct AnycastSettings {
    /// Announce command.
    pub announce: Vec<String>,
    /// Withdraw command.
    pub withdraw: Vec<String>,
    /// Hysteresis and hold time.
    pub hysteresis: Hysteresis,
    /// Check period.
    pub check_interval: Duration,
    /// Command timeout.
    pub timeout: Duration,
}

impl RawAnycast {
    /// Checks `[anycast]`, reporting broken rules through `fail`; `None`
    /// when neither command is configured.
    pub fn validate(
        self,
        fail: &mut dyn FnMut(&str, &dyn std::fmt::Display, &str),
    ) -> Option<AnycastSettings> {
        if self.announce.is_empty() && self.withdraw.is_empty() {
            return None;
        }
        for (key, command) in [
            ("anycast.announce", &self.announce),
            ("anycast.withdraw", &self.withdraw),
        ] {
            if command.first().is_none_or(|program| program.is_empty()) {
                fail(
                    key,
                    &format!("{command:?}"),
                    "must name a program (with its arguments) when the other command is set",
                );
            }
        }
        if self.rise == 0 {
            fail("anycast.rise", &0, "must be at least 1");
        }
        if self.fall == 0 {
            fail("anycast.fall", &0, "must be at least 1");
        }
        for (key, value) in [
            ("anycast.check-interval", self.check_interval),
            ("anycast.timeout", self.timeout),
        ] {
            if value.is_zero() {
                fail(key, &"0s", "must be greater than zero");
            }
        }
        Some(AnycastSettings {
            announce: self.announce,
            withdraw: self.withdraw,
            hysteresis: Hysteresis {
                rise: self.rise.max(1),
                fall: self.fall.max(1),
                hold: self.hold,
            },
            check_interval: self.check_interval,
            timeout: self.timeout,
        })
    }
}

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start attracting traffic.
    Announce,
    /// Stop attracting traffic.
    Withdraw,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Announce => "announce",
            Action::Withdraw => "withdraw",
        }
    }
}

/// Rise / fall counts and the hold time.
#[derive(Debug, Clone, Copy)]
pub struct Hysteresis {
    /// Healthy checks in a row before announcing.
    pub rise: u32,
    /// Unhealthy checks in a row before withdrawing.
    pub fall: u32,
    /// Least time between two changes.
    pub hold: Duration,
}

/// The announce state machine, without I/O.
#[derive(Debug)]
pub struct State {
    hysteresis: Hysteresis,
    announced: bool,
    healthy_streak: u32,
    unhealthy_streak: u32,
    changed_at: Option<Instant>,
}

impl State {
    /// Withdrawn, no checks seen.
    pub fn new(hysteresis: Hysteresis) -> Self {
        Self {
            hysteresis,
            announced: false,
            healthy_streak: 0,
            unhealthy_streak: 0,
            changed_at: None,
        }
    }

    /// Whether the node is announced.
    pub fn announced(&self) -> bool {
        self.announced
    }

    /// Records one check; returns the action due now, if any. The state
    /// changes only when [`State::done`] confirms the action ran.
    pub fn observe(&mut self, healthy: bool, now: Instant) -> Option<Action> {
        if healthy {
            self.healthy_streak = self.healthy_streak.saturating_add(1);
            self.unhealthy_streak = 0;
        } else {
            self.unhealthy_streak = self.unhealthy_streak.saturating_add(1);
            self.healthy_streak = 0;
        }
        let held = self
            .changed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.hysteresis.hold);
        match self.announced {
            false if self.healthy_streak >= self.hysteresis.rise && held => Some(Action::Announce),
            true if self.unhealthy_streak >= self.hysteresis.fall && held => Some(Action::Withdraw),
            _ => None,
        }
    }

    /// Records that `action` ran successfully at `now`.
    pub fn done(&mut self, action: Action, now: Instant) {
        self.announced = action == Action::Announce;
        self.changed_at = Some(now);
    }
}

/// Runs the anycast hooks until shutdown (withdrawing then, if announced).
pub async fn run(gateway: Arc<Gateway>, settings: AnycastSettings) {
    let shared = gateway.shared.clone();
    let announced_gauge = shared.metrics.gauge("meridian_anycast_announced", &[]);
    announced_gauge.set(0.0);
    let mut state = State::new(settings.hysteresis);
    let mut interval = tokio::time::interval(settings.check_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut woken_by_drain = false;
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => {}
            () = shared.drain.cancelled(), if state.announced() && !woken_by_drain => {
                woken_by_drain = true;
            }
            _ = interval.tick() => {}
        }
        // Draining and shutdown withdraw at once (and again at each check
        // until the command succeeds), whatever the counts and hold time.
        let stopping = shared.shutdown.is_cancelled() || shared.drain.is_cancelled();
        let verdict = super::evaluate(&gateway);
        let action = if stopping {
            state.announced().then_some(Action::Withdraw)
        } else {
            state.observe(verdict.serve, Instant::now())
        };
        if let Some(action) = action {
            let reason = if stopping {
                "draining"
            } else {
                &verdict.reason
            };
            if execute(&gateway, &settings, action, reason).await {
                state.done(action, Instant::now());
                announced_gauge.set(if state.announced() { 1.0 } else { 0.0 });
            }
        }
        if shared.shutdown.is_cancelled() {
            return;
        }
    }
}

/// Runs the command for `action`; whether it exited 0 in time.
async fn execute(
    gateway: &Gateway,
    settings: &AnycastSettings,
    action: Action,
    reason: &str,
) -> bool {
    let command = match action {
        Action::Announce => &settings.announce,
        Action::Withdraw => &settings.withdraw,
    };
    let config = &gateway.shared.config;
    let count = |result: &'static str| {
        gateway
            .shared
            .metrics
            .counter(
                "meridian_anycast_commands_total",
                &[
                    ("action", action.as_str().to_owned()),
                    ("result", result.to_owned()),
                ],
            )
            .increment(1);
    };
    let Some((program, args)) = command.split_first() else {
        count("failed");
        return false;
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("MERIDIAN_ANYCAST_ACTION", action.as_str())
        .env("MERIDIAN_REGION", &config.region)
        .env("MERIDIAN_NODE_ID", config.id.to_string())
        .env("MERIDIAN_REASON", reason)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) => {
            tracing::error!(action = action.as_str(), %program, %error, "cannot start the anycast command");
            count("failed");
            return false;
        }
    };
    match tokio::time::timeout(settings.timeout, child.wait_with_output()).await {
        Ok(Ok(output)) if output.status.success() => {
            tracing::info!(action = action.as_str(), %reason, "anycast command succeeded");
            count("ok");
            true
        }
        Ok(Ok(output)) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr = stderr.trim();
            let stderr: String = stderr.chars().take(512).collect();
            tracing::error!(action = action.as_str(), status = %output.status, %stderr, "anycast command failed");
            count("failed");
            false
        }
        Ok(Err(error)) => {
            tracing::error!(action = action.as_str(), %error, "anycast command failed");
            count("failed");
            false
        }
        Err(_) => {
            tracing::error!(action = action.as_str(), timeout = ?settings.timeout, "anycast command timed out and was killed");
            count("timeout");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(rise: u32, fall: u32, hold: u64) -> State {
        State::new(Hysteresis {
            rise,
            fall,
            hold: Duration::from_secs(hold),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn rise_checks_announce_and_fall_checks_withdraw() {
        let mut s = state(3, 2, 0);
        let now = Instant::now();
        assert_eq!(s.observe(true, now), None);
        assert_eq!(s.observe(true, now), None);
        assert_eq!(s.observe(false, now), None, "a failure resets the rise");
        assert_eq!(s.observe(true, now), None);
        assert_eq!(s.observe(true, now), None);
        assert_eq!(s.observe(true, now), Some(Action::Announce));
        assert!(!s.announced(), "not until the command ran");
        s.done(Action::Announce, now);
        assert!(s.announced());
        assert_eq!(s.observe(false, now), None);
        assert_eq!(s.observe(true, now), None, "one bad check is not a fall");
        assert_eq!(s.observe(false, now), None);
        assert_eq!(s.observe(false, now), Some(Action::Withdraw));
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_is_held_for_the_hold_time() {
        let mut s = state(1, 1, 30);
        let start = Instant::now();
        assert_eq!(
            s.observe(true, start),
            Some(Action::Announce),
            "the first change is not held"
        );
        s.done(Action::Announce, start);
        let soon = start + Duration::from_secs(10);
        assert_eq!(s.observe(false, soon), None, "held");
        let later = start + Duration::from_secs(30);
        assert_eq!(s.observe(false, later), Some(Action::Withdraw));
        s.done(Action::Withdraw, later);
        assert_eq!(s.observe(true, later + Duration::from_secs(29)), None);
        assert_eq!(
            s.observe(true, later + Duration::from_secs(31)),
            Some(Action::Announce)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_command_is_retried_at_the_next_check() {
        let mut s = state(2, 1, 0);
        let now = Instant::now();
        s.observe(true, now);
        assert_eq!(s.observe(true, now), Some(Action::Announce));
        // The command failed: no done(); the next check asks again.
        assert_eq!(s.observe(true, now), Some(Action::Announce));
    }

    #[test]
    fn validation_needs_both_commands() {
        let mut errors = Vec::new();
        let raw = RawAnycast {
            announce: vec!["/bin/true".into()],
            rise: 0,
            ..RawAnycast::default()
        };
        assert!(
            raw.validate(&mut |key, _, _| errors.push(key.to_owned()))
                .is_some()
        );
        assert_eq!(errors, ["anycast.withdraw", "anycast.rise"]);
        assert!(
            RawAnycast::default()
                .validate(&mut |_, _, _| panic!())
                .is_none()
        );
    }
}
