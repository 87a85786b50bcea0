use std::time::Duration;

use super::*;

#[track_caller]
fn check(text: &str, expected: &[&str]) {
    let rendered: Vec<String> = match Scenario::load(text, None, None) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(rendered, expected);
}

#[test]
fn every_builtin_scenario_is_valid_and_named_after_itself() {
    assert!(BUILTIN.len() >= 5);
    for (name, text) in BUILTIN {
        let scenario = Scenario::load(text, None, None)
            .unwrap_or_else(|e| panic!("built-in scenario {name}: {e}"));
        assert_eq!(scenario.name, *name);
        assert!(!scenario.steps.is_empty(), "{name} injects a fault");
        assert!(
            scenario.duration <= Duration::from_secs(30),
            "{name} stays short"
        );
    }
    assert!(builtin("leader-loss").is_some());
    assert!(builtin("nope").is_none());
}

#[test]
fn a_step_is_typed_by_its_fault() {
    let scenario = Scenario::load(
        "name = \"x\"\nduration = \"10s\"\n[[step]]\nat = \"2s\"\nfault = \"latency\"\ndelay = \"100ms\"\njitter = \"50ms\"\nloss = 0.2\nheal-at = \"8s\"\n[[step]]\nat = \"1s\"\nfault = \"partition\"\nnode = 2\ncut = \"inbound\"\n",
        Some(9),
        None,
    )
    .unwrap();
    assert_eq!(scenario.seed, 9);
    assert_eq!(scenario.nodes, 3);
    // Sorted by start.
    assert_eq!(
        scenario.steps[0].fault,
        Fault::Partition {
            node: Target::Node(2),
            cut: Cut::Inbound
        }
    );
    assert_eq!(
        scenario.heal_of(&scenario.steps[0]),
        Duration::from_secs(10)
    );
    assert_eq!(
        scenario.steps[1].fault,
        Fault::Latency {
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(50),
            loss: 0.2
        }
    );
    assert_eq!(scenario.steps[1].heal_at, Some(Duration::from_secs(8)));
}

#[test]
fn overrides_apply_before_validation() {
    let text = builtin("leader-loss").unwrap();
    let short = Scenario::load(text, Some(42), Some(Duration::from_secs(30))).unwrap();
    assert_eq!((short.seed, short.duration), (42, Duration::from_secs(30)));
    check_errors_contain(
        Scenario::load(text, None, Some(Duration::from_secs(3))),
        "step[0].at (5s) must be before duration",
    );
}

#[track_caller]
fn check_errors_contain(result: Result<Scenario, Errors>, wanted: &str) {
    let errors = result.expect_err("invalid");
    assert!(
        errors.0.iter().any(|e| e.to_string() == wanted),
        "{errors} lacks {wanted}"
    );
}

#[test]
fn mistakes_name_the_key_the_value_and_the_rule() {
    check(
        "name = \"a b\"\nduration = \"0s\"\nnodes = 2\n[load]\nrate = 5000\nroutes = [\"x\"]\n[writes]\nevery = \"10ms\"\n[bounds]\nheal = \"0s\"\n",
        &[
            "name (a b) must be letters, digits, '-' and '_'",
            "duration (0s) must be above 0 and at most 1h",
            "nodes (2) must be 3 to 5 (one node per region)",
            "load.rate (5000) must be at most 1000 per node",
            "load.routes[0] (x) must be a path starting with '/' without spaces",
            "writes.every (10ms) must be at least 100ms",
            "bounds.heal (0s) must be above 0 and at most 10m",
        ],
    );
    check(
        "name = \"s\"\nduration = \"10s\"\n[[step]]\nat = \"12s\"\nfault = \"explode\"\n[[step]]\nat = \"1s\"\nheal-at = \"1s\"\nfault = \"kill\"\nnode = 7\nloss = 0.5\n[[step]]\nat = \"1s\"\nfault = \"latency\"\ndelay = \"10ms\"\njitter = \"20ms\"\nloss = 1.5\n[[step]]\nat = \"1s\"\nfault = \"partition\"\n",
        &[
            "step[0].at (12s) must be before duration",
            "step[0].fault (explode) must be kill, partition, latency, backend-down, backend-slow, clock, disk-full or jwks-down",
            "step[1].heal-at (1s) must be after at and at most duration",
            "step[1].node (7) must be \"leader\", \"follower\" or a node id from 1 to 3",
            "step[1].loss ((set)) is not a parameter of fault kill",
            "step[2].jitter (20ms) must be at most delay",
            "step[2].loss (1.5) must be between 0 and 1",
            "step[3].node ((missing)) is required by fault partition",
        ],
    );
}

#[test]
fn unknown_keys_and_bad_syntax_are_refused_without_panicking() {
    let errors = Scenario::load("name = \"x\"\nduration = \"1s\"\nspeed = 3\n", None, None)
        .expect_err("unknown key");
    assert!(errors.to_string().contains("speed"), "{errors}");
    for text in ["", "name = ", "[[step]]\nat = 5", "duration = \"forever\""] {
        assert!(Scenario::load(text, None, None).is_err(), "{text:?}");
    }
}

#[test]
fn a_clock_step_takes_a_signed_offset() {
    let text = |offset: &str| {
        format!(
            "name = \"c\"\nduration = \"10s\"\n[[step]]\nat = \"1s\"\nfault = \"clock\"\nnode = \"leader\"\n{offset}"
        )
    };
    for (offset, seconds) in [("+5m", 300), ("-1h", -3600), ("90s", 90)] {
        let scenario =
            Scenario::load(&text(&format!("offset = \"{offset}\"\n")), None, None).unwrap();
        assert_eq!(
            scenario.steps[0].fault,
            Fault::Clock {
                node: Target::Leader,
                offset: seconds
            }
        );
    }
    check(
        &text("offset = \"+31d\"\n"),
        &["step[0].offset (+31d) must be a signed duration of at most 30 days, e.g. +5m or -1h"],
    );
    check(
        &text(""),
        &["step[0].offset ((missing)) is required by fault clock"],
    );
}
