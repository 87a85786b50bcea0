//! Whole scenarios, end to end: real `meridian` processes (a network
//! namespace per region when the tests run as root, loopback otherwise, as
//! `meridian chaos run` picks), real faults, the report's verdicts.
//!
//! The `meridian` binary is taken from `MERIDIAN_BIN`, or from the target
//! directory these tests were built in (`cargo test --workspace` builds it;
//! with `cargo test -p chaos`, run `cargo build --bin meridian` first).
//! `clock_skew` needs libfaketime (Debian `faketime`).
//! The scenarios run one at a time: each starts three nodes, and the
//! machine may have two cores.

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use chaos::cluster::Network;
use chaos::report::Report;
use chaos::run::Options;
use chaos::scenario::{self, Scenario};
use common::meridian;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(name: &str, duration: Option<Duration>) -> Report {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let text = scenario::builtin(name).expect("a built-in scenario");
    let scenario = Scenario::load(text, None, duration).expect("valid");
    let out = tempfile::tempdir().expect("a temporary directory");
    let options = Options {
        meridian: meridian(),
        out: out.path().to_owned(),
        target: None,
        network: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime
        .block_on(chaos::run_and_judge(&scenario, &options))
        .unwrap_or_else(|e| {
            let logs: String = (1..=3)
                .map(|n| {
                    let log = out.path().join("work").join(format!("node{n}.log"));
                    format!(
                        "--- node {n}\n{}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    )
                })
                .collect();
            panic!("{name} could not run: {e:#}\n{logs}")
        });
    report.write(out.path()).expect("the report is written");
    assert!(out.path().join("report.md").is_file());
    assert!(out.path().join("report.json").is_file());
    let expected = match chaos::netns::Net::unavailable() {
        None => Network::Namespaces,
        Some(reason) => {
            eprintln!("{name} on loopback: {reason}");
            Network::Loopback
        }
    };
    assert_eq!(report.record.network, expected.describe());
    if !report.pass {
        // Keep the report, node configs and logs for a post-mortem.
        let kept = out.keep();
        panic!(
            "{name} (seed {}) broke an invariant; report, configs and node logs kept in {}\n{}",
            report.seed,
            kept.display(),
            report.markdown()
        );
    }
    report
}

fn acked(report: &Report, kind: &str) -> usize {
    report
        .record
        .ops
        .iter()
        .filter(|op| {
            let json = serde_json::to_value(op).unwrap();
            json["kind"] == kind && json["outcome"] == "ok"
        })
        .count()
}

#[test]
fn leader_loss() {
    let report = run("leader-loss", None);
    let r = &report.record;
    let kill = &r.faults[0];
    assert_eq!(kill.fault, "kill");
    assert!(kill.was_leader, "the leader was the one killed: {kill:?}");
    assert!(kill.heal_ms.is_some(), "and it was restarted");
    assert!(acked(&report, "config-write") >= 3, "{:?}", r.ops);
    assert!(acked(&report, "revoke") >= 3, "{:?}", r.ops);
    let failover = report
        .verdicts
        .iter()
        .find(|v| v.name == "new-leader-after-leader-loss")
        .unwrap();
    assert!(failover.measured.contains("leads after"), "{failover:?}");
    // Load reached every node, the killed one before and after its death.
    for node in 1..=3 {
        let ok: u64 = r.load.iter().filter(|s| s.node == node).map(|s| s.ok).sum();
        assert!(ok > 100, "node {node}: {ok} answered");
    }
}

#[test]
fn region_partition() {
    let report = run("region-partition", None);
    let r = &report.record;
    let cut = &r.faults[0];
    assert_eq!(
        (cut.fault.as_str(), cut.cut.as_deref()),
        ("partition", Some("both"))
    );
    assert!(!cut.was_leader, "a follower was cut off: {cut:?}");
    let node = cut.node.unwrap();
    // The cut-off node served throughout its cut.
    let served: u64 = r
        .load
        .iter()
        .filter(|s| {
            s.node == node
                && s.second * 1000 >= cut.start_ms
                && (s.second + 1) * 1000 <= cut.heal_ms.unwrap()
        })
        .map(|s| s.ok)
        .sum();
    assert!(served > 100, "node {node} served {served} during its cut");
    // Writes were acknowledged during the cut, and the cut-off node
    // enforced the revocations acknowledged meanwhile after the heal.
    let during = r
        .ops
        .iter()
        .filter(|op| {
            op.invoke_ms > cut.start_ms
                && op.return_ms < cut.heal_ms.unwrap()
                && matches!(op.outcome, chaos::history::Outcome::Ok { .. })
        })
        .count();
    assert!(during >= 2, "{:?}", r.ops);
    assert!(acked(&report, "revoke") >= 3, "{:?}", r.ops);
}

/// Needs libfaketime (Debian `faketime`, which `.ci/run` installs).
#[test]
fn clock_skew() {
    let report = run("clock-skew", None);
    let r = &report.record;
    assert_eq!(r.faults.len(), 2);
    // The forward jump is visible in the node's Date header.
    assert!(
        r.faults[0].detail.contains("Date header now reads +600 s")
            || r.faults[0].detail.contains("Date header now reads +599 s")
            || r.faults[0].detail.contains("Date header now reads +601 s"),
        "{:?}",
        r.faults[0]
    );
    assert!(r.faults[1].was_leader, "{:?}", r.faults[1]);
    assert!(acked(&report, "config-write") >= 3, "{:?}", r.ops);
    assert!(acked(&report, "revoke") >= 3, "{:?}", r.ops);
}

/// `--target`: a cluster the run did not start, its fault carried out by a
/// hook; the configuration in force is put back afterwards.
#[test]
fn against_an_existing_deployment_through_hooks() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cluster = chaos::cluster::Cluster::start(
            &meridian(),
            &dir.path().join("deployment"),
            3,
            1,
            &chaos::cluster::Wrap::default(),
        )
            .await
            .expect("a deployment to run against");
        let admin = cluster.node(1).admin;
        let marker = dir.path().join("hooked");
        let text = "name = \"hooked\"\nduration = \"8s\"\n[writes]\nevery = \"500ms\"\n[[step]]\nat = \"2s\"\nheal-at = \"5s\"\nfault = \"backend-slow\"\nnode = \"follower\"\ndelay = \"100ms\"\n";
        let scenario = Scenario::load(text, None, None).unwrap();
        let settings = chaos::target::Settings {
            admin: admin.to_string(),
            hooks: chaos::target::parse_hooks(&[
                format!("backend-slow=echo slow {{id}} {{delay}} >> {}", marker.display()),
                format!("backend-slow.heal=echo healed {{id}} >> {}", marker.display()),
            ])
            .unwrap(),
            consumer: Some("chaos".into()),
            probe_path: Some("/private/x".into()),
            routes: vec!["/echo/target".into()],
        };
        let options = Options {
            meridian: PathBuf::from("unused"),
            out: dir.path().join("out"),
            target: Some(settings),
            network: None,
        };
        let report = chaos::run_and_judge(&scenario, &options).await.unwrap();
        assert!(report.pass, "{}", report.markdown());
        assert!(report.meridian.contains(&admin.to_string()));
        assert_eq!(report.record.nodes.len(), 3);
        assert!(acked(&report, "config-write") >= 3, "{:?}", report.record.ops);
        assert!(acked(&report, "revoke") >= 3, "{:?}", report.record.ops);
        assert!(report.record.faults[0].detail.contains("exited 0"));
        let hooked = std::fs::read_to_string(&marker).unwrap();
        let node = report.record.faults[0].node.unwrap();
        assert_eq!(hooked, format!("slow {node} 100\nhealed {node}\n"));
        // The configuration in force has no marker route any more.
        let (_, config) = chaos::client::Client::new()
            .get_json(admin, "/v1/config", Duration::from_secs(5))
            .await
            .unwrap();
        let routes = config["config"]["routes"].as_array().unwrap();
        assert!(routes.iter().all(|r| !r["name"].as_str().unwrap().starts_with("chaos-")), "{config}");
        cluster.shutdown().await;
    });
}

/// The processes whose command line mentions `dir`.
fn processes_under(dir: &std::path::Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

#[test]
fn an_interrupted_run_leaves_no_node_and_no_namespace_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().expect("a temporary directory");
    let mut harness = std::process::Command::new(env!("CARGO_BIN_EXE_meridian-chaos"))
        .args(["run", "region-partition", "--out"])
        .arg(out.path())
        .arg("--meridian")
        .arg(meridian())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("meridian-chaos starts");
    let pid = harness.id();
    // Interrupt it mid-run: once all three nodes run, and 6 s more, past
    // the scenario's cut at 4 s.
    let work = out.path().join("work");
    // Polls, 100 ms apart, at most 600 times (60 s).
    for _ in 0..600 {
        if processes_under(&work).len() >= 3 {
            break;
        }
        if let Ok(Some(status)) = harness.try_wait() {
            panic!("meridian-chaos ended before the interrupt: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        processes_under(&work).len() >= 3,
        "three nodes did not start within 60 s"
    );
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        harness.try_wait().expect("waiting").is_none(),
        "meridian-chaos ended before the interrupt"
    );
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    // At most 600 polls 50 ms apart (30 s).
    let status = (0..600)
        .find_map(|_| {
            let status = harness.try_wait().expect("waiting for meridian-chaos");
            if status.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            status
        })
        .expect("meridian-chaos still runs 30 s after SIGINT");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut harness.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    // SIGKILL is delivered at once, the exits are reaped a moment later.
    for _ in 0..100 {
        if processes_under(&work).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        processes_under(&work),
        Vec::<u32>::new(),
        "nodes left running"
    );
    if chaos::netns::Net::unavailable().is_none() {
        let list = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let prefix = format!("mrd{pid}-");
        let left = String::from_utf8_lossy(&list.stdout);
        assert!(
            !left.lines().any(|l| l.starts_with(&prefix)),
            "namespaces left: {left}"
        );
    }
}
