use serde_json::json;

use super::*;
use crate::scenario::{Scenario, Target, builtin};

fn member() -> Member {
    Member {
        id: 2,
        region: "us-east".into(),
        proxy: "10.0.0.2:8080".parse().unwrap(),
        admin: "10.0.0.2:9080".parse().unwrap(),
    }
}

#[test]
fn hooks_are_named_after_faults() {
    let hooks = parse_hooks(&[
        "kill=ssh {region} systemctl kill -s KILL meridian".into(),
        "kill.heal=ssh {region} systemctl start meridian".into(),
    ])
    .unwrap();
    assert_eq!(hooks.len(), 2);
    for (spec, error) in [
        ("kill", "--hook (kill) must be NAME=COMMAND"),
        (
            "explode=true",
            "--hook (explode) must name a fault (kill, partition, latency, backend-down, backend-slow, clock, disk-full, jwks-down), optionally with .heal",
        ),
        ("kill.heal= ", "--hook (kill.heal) has an empty command"),
    ] {
        assert_eq!(parse_hooks(&[spec.into()]).unwrap_err(), error);
    }
}

#[test]
fn every_fault_of_the_scenario_needs_a_start_and_a_heal_hook() {
    let scenario = Scenario::load(builtin("clock-skew").unwrap(), None, None).unwrap();
    let hooks = parse_hooks(&["clock=date".into()]).unwrap();
    assert_eq!(missing_hooks(&scenario, &hooks), ["clock.heal"]);
    let hooks = parse_hooks(&["clock=date".into(), "clock.heal=date".into()]).unwrap();
    assert!(missing_hooks(&scenario, &hooks).is_empty());
}

#[test]
fn placeholders_are_filled_from_the_node_and_the_step() {
    let latency = Fault::Latency {
        delay: Duration::from_millis(100),
        jitter: Duration::from_millis(50),
        loss: 0.2,
    };
    assert_eq!(
        render(
            "tc {id} {region} {proxy} {admin} +{delay}ms ±{jitter} {loss}",
            &latency,
            &member()
        ),
        "tc 2 us-east 10.0.0.2:8080 10.0.0.2:9080 +100ms ±50 0.2"
    );
    let clock = Fault::Clock {
        node: Target::Leader,
        offset: -3600,
    };
    assert_eq!(
        render("faketime {offset}", &clock, &member()),
        "faketime -3600"
    );
    let cut = Fault::Partition {
        node: Target::Follower,
        cut: Cut::Outbound,
    };
    assert_eq!(render("nft {cut}", &cut, &member()), "nft outbound");
}

#[test]
fn a_marker_route_is_added_to_the_configuration_in_force() {
    let base = json!({"upstreams": {"u": {"targets": ["x:1"]}}, "routes": [{"name": "r", "upstream": "u"}]});
    let written = with_marker(&base, "chaos-w3", "u");
    assert_eq!(written["routes"].as_array().unwrap().len(), 2);
    assert_eq!(
        written["routes"][1],
        json!({"name": "chaos-w3", "match": {"path": "/chaos/chaos-w3"}, "upstream": "u"})
    );
    assert_eq!(
        base["routes"].as_array().unwrap().len(),
        1,
        "the base is untouched"
    );
    let bare = with_marker(&json!({"upstreams": {}}), "chaos-w1", "u");
    assert_eq!(bare["routes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_failing_hook_stops_with_its_message() {
    let remote = Remote {
        members: vec![member()],
        original: json!({}),
        upstream: "u".into(),
        settings: Settings {
            hooks: parse_hooks(&[
                "kill=echo killed {id}".into(),
                "kill.heal=echo oops >&2; exit 3".into(),
            ])
            .unwrap(),
            ..Settings::default()
        },
    };
    let kill = Fault::Kill {
        node: Target::Node(2),
    };
    assert_eq!(
        remote.hook("kill", &kill, 2).await.unwrap(),
        "hook kill: `echo killed 2` exited 0"
    );
    let error = remote
        .hook("kill.heal", &kill, 2)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("failed with exit status: 3: oops"),
        "{error}"
    );
    assert!(remote.hook("kill", &kill, 9).await.is_err(), "no node 9");
}
