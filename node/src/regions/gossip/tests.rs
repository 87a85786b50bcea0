use std::collections::BTreeMap;
use std::time::Duration;

use super::{Report, UpstreamHealth};
use crate::regions::{GslbSettings, RegionHealth, Source};

fn settings() -> GslbSettings {
    let mut settings = GslbSettings {
        peer_timeout: Duration::from_secs(3),
        ..GslbSettings::default()
    };
    settings
        .regions
        .insert("eu-west".into(), vec!["192.0.2.1".parse().unwrap()]);
    settings
        .regions
        .insert("us-east".into(), vec!["198.51.100.1".parse().unwrap()]);
    settings
}

fn report(serve: bool, reason: &str, address: &str) -> Report {
    Report {
        ready: true,
        serve,
        reason: reason.into(),
        addresses: vec![address.parse().unwrap()],
        upstreams: BTreeMap::from([(
            "users".to_owned(),
            UpstreamHealth {
                available: u32::from(serve),
                total: 1,
            },
        )]),
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_report_replaces_the_static_entry_and_goes_stale() {
    let view = RegionHealth::new("eu-west", 1, &settings());
    view.set_local(report(true, "serving", "192.0.2.1"));
    let mut changes = view.subscribe();
    view.heard_from(
        2,
        "us-east",
        report(
            false,
            "upstream users has no available target",
            "198.51.100.7",
        ),
    );
    assert!(changes.has_changed().unwrap());
    let us = view.get("us-east").unwrap();
    assert!(!us.healthy);
    assert_eq!(us.source, Source::Peer);
    assert_eq!(us.reason, "upstream users has no available target");
    assert_eq!(
        us.addresses,
        ["198.51.100.7".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(us.nodes[&2].report.upstreams["users"].available, 0);

    view.heard_from(2, "us-east", report(true, "serving", "198.51.100.7"));
    assert!(view.get("us-east").unwrap().healthy);

    // Silence past the peer timeout: the region is unhealthy, its
    // addresses fall back to the configured ones.
    tokio::time::advance(Duration::from_millis(3100)).await;
    changes.mark_unchanged();
    view.refresh(&[2]);
    let us = view.get("us-east").unwrap();
    assert!(!us.healthy, "{us:?}");
    assert_eq!(us.reason, "no health report for 3s");
    assert!(!us.nodes[&2].fresh);
    assert_eq!(
        us.addresses,
        ["198.51.100.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(changes.has_changed().unwrap());
    // This node's own entry never goes stale.
    assert!(view.get("eu-west").unwrap().healthy);
}

#[tokio::test(start_paused = true)]
async fn a_region_serves_while_one_of_its_nodes_does() {
    let view = RegionHealth::new("eu-west", 1, &settings());
    view.heard_from(2, "us-east", report(false, "draining", "198.51.100.1"));
    view.heard_from(3, "us-east", report(true, "serving", "198.51.100.2"));
    let us = view.get("us-east").unwrap();
    assert!(us.healthy);
    assert_eq!(us.addresses.len(), 2);
    view.heard_from(
        3,
        "us-east",
        report(false, "not ready: draining", "198.51.100.2"),
    );
    let us = view.get("us-east").unwrap();
    assert!(!us.healthy);
    assert_eq!(
        us.reason, "node 2: draining",
        "the first node's reason, named"
    );
    // The same for this node's own region: a region peer that serves
    // keeps it healthy in the view while this node drains.
    view.set_local(report(false, "draining", "192.0.2.1"));
    view.heard_from(4, "eu-west", report(true, "serving", "192.0.2.4"));
    let eu = view.get("eu-west").unwrap();
    assert!(eu.healthy);
    assert_eq!(eu.source, Source::Local);
}

#[tokio::test(start_paused = true)]
async fn nodes_that_left_are_forgotten_and_unknown_regions_appear() {
    let view = RegionHealth::new("eu-west", 1, &settings());
    view.heard_from(5, "ap-south", report(true, "serving", "203.0.113.5"));
    assert!(
        view.get("ap-south").unwrap().healthy,
        "a region learned only by gossip"
    );
    view.refresh(&[]);
    assert!(
        view.get("ap-south").is_none(),
        "its only node left the cluster"
    );
    let mut changes = view.subscribe();
    changes.mark_unchanged();
    view.refresh(&[]);
    assert!(!changes.has_changed().unwrap(), "no news, no notification");
}

#[test]
fn reports_round_trip_on_the_peer_codec() {
    let request = crate::peer::Request::Health(report(true, "serving", "192.0.2.1"));
    let frame = crate::peer::codec::encode(&request).unwrap();
    let back: crate::peer::Request = crate::peer::codec::decode(&frame).unwrap();
    assert!(matches!(back, crate::peer::Request::Health(r) if r.upstreams["users"].total == 1));
}
