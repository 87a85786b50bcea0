//! The deployment artifacts in `deploy/`, checked without a container
//! engine or a Kubernetes cluster: every example configuration passes
//! `meridian config check`, the Kubernetes manifests and the compose file
//! hold together (names, labels, probes, volumes, join addresses, tokens),
//! and the systemd unit passes `systemd-analyze verify`.
//!
//! `prometheus.rs` runs a real Prometheus against `meridian dev` and checks
//! the dashboard and the alert rules on live data. Schema validation of the
//! manifests (`kubernetes-validate`) and `promtool check rules|config` run in
//! `.ci/run`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

#[path = "../common/mod.rs"]
mod common;
mod prometheus;

use common::{BIN, free_tcp, split_answer};

/// The regions of the three-region examples.
const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every file under `dir` whose name satisfies `keep`, sorted.
fn files(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path, keep));
        } else if keep(&path) {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// All documents of a YAML file.
fn yaml_documents(path: &Path) -> Vec<Value> {
    serde_saphyr::from_multiple(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `meridian config check FILE`; panics with its output unless it passes.
fn config_check(path: &Path) {
    let output = Command::new(BIN)
        .args(["config", "check"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "meridian config check {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(": ok ("));
}

/// A node.toml, validated the way `meridian node run` does.
fn node_config(text: &str, origin: &str) -> node::config::Config {
    node::config::RawConfig::parse(text)
        .unwrap_or_else(|e| panic!("{origin}: {e}"))
        .validate()
        .unwrap_or_else(|e| panic!("{origin}: {e}"))
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

/// The Secret named `name` among `documents`.
fn secret<'a>(documents: &'a [Value], name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Secret {name}"))
}

#[test]
fn every_example_configuration_passes_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = deploy();
    // Plain files: every node.toml-shaped .toml and every gateway*.yaml.
    let plain = files(&deploy, &|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.ends_with(".toml") || (name.starts_with("gateway") && name.ends_with(".yaml"))
    });
    for path in &plain {
        config_check(path);
    }
    // Configurations embedded in the Kubernetes Secrets.
    let mut embedded = 0;
    for manifest in files(&deploy.join("kubernetes"), &|p| {
        p.extension().is_some_and(|e| e == "yaml")
    }) {
        for document in yaml_documents(&manifest) {
            if document["kind"] != "Secret" {
                continue;
            }
            let data = document["stringData"].as_object().unwrap();
            for (name, text) in data {
                if !(name.ends_with(".toml") || name.ends_with(".yaml")) {
                    continue;
                }
                let path = dir.path().join(format!("{embedded}-{name}"));
                std::fs::write(&path, text.as_str().unwrap()).unwrap();
                config_check(&path);
                embedded += 1;
            }
        }
    }
    let names: Vec<String> = plain
        .iter()
        .map(|p| p.strip_prefix(&deploy).unwrap().display().to_string())
        .collect();
    // deploy/node.toml and gateway.yaml, three regions for VMs and three for
    // compose with their gateway files: the examples the docs point at.
    for expected in [
        "node.toml",
        "gateway.yaml",
        "regions/eu-west.toml",
        "regions/us-east.toml",
        "regions/ap-south.toml",
        "regions/gateway.yaml",
        "compose/eu-west.toml",
        "compose/us-east.toml",
        "compose/ap-south.toml",
        "compose/gateway.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert_eq!(
        embedded, 4,
        "three node.toml and one gateway.yaml in Secrets"
    );
}

#[test]
fn the_three_region_examples_describe_one_cluster() {
    let mut ids = BTreeSet::new();
    for region in REGIONS {
        let path = deploy().join(format!("regions/{region}.toml"));
        let config = node_config(&read(&path), &path.display().to_string());
        assert_eq!(config.region, region);
        assert!(ids.insert(config.id), "node ids are unique");
        assert_eq!(
            config.listen.advertise,
            format!("meridian-{region}.internal")
        );
        assert_eq!(config.data_dir, Path::new("/var/lib/meridian"));
        assert!(
            !config.listen.admin.ip().is_loopback(),
            "Prometheus scrapes the admin listener from another host"
        );
        assert!(
            config.admin.token.is_some(),
            "a reachable admin API needs a token"
        );
        assert!(
            config.gateway.is_none(),
            "with `meridian apply` managing the configuration, a gateway file would revert it at restart"
        );
    }
    // The scrape configuration names the same nodes, one region label each.
    let scrape: Value = yaml_documents(&deploy().join("prometheus/prometheus.yml")).remove(0);
    let targets: Vec<(String, String)> = scrape["scrape_configs"][0]["static_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                str_at(c, "/targets/0").to_owned(),
                str_at(c, "/labels/region").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = REGIONS
        .iter()
        .map(|r| (format!("meridian-{r}.internal:9080"), (*r).to_owned()))
        .collect();
    assert_eq!(targets, expected);
}

#[test]
fn kubernetes_manifests_hold_together() {
    let dir = deploy().join("kubernetes");
    let documents: Vec<Value> = files(&dir, &|p| p.extension().is_some_and(|e| e == "yaml"))
        .iter()
        .map(PathBuf::as_path)
        .flat_map(yaml_documents)
        .collect();
    let known: BTreeSet<(&str, &str)> = [
        ("v1", "Namespace"),
        ("v1", "Secret"),
        ("v1", "Service"),
        ("apps/v1", "StatefulSet"),
        ("policy/v1", "PodDisruptionBudget"),
    ]
    .into();
    for document in &documents {
        let kind = (str_at(document, "/apiVersion"), str_at(document, "/kind"));
        assert!(known.contains(&kind), "unexpected {kind:?}");
        if kind.1 != "Namespace" {
            assert_eq!(str_at(document, "/metadata/namespace"), "meridian");
        }
    }
    let of_kind =
        |kind: &str| -> Vec<&Value> { documents.iter().filter(|d| d["kind"] == kind).collect() };
    let selects = |selector: &Value, labels: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };

    let headless: Vec<&Value> = of_kind("Service")
        .into_iter()
        .filter(|s| s["spec"]["clusterIP"] == "None")
        .collect();
    assert_eq!(headless.len(), 1, "one headless service");
    let headless = headless[0];
    let service = str_at(headless, "/metadata/name");
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"], true,
        "joining nodes reach peers before they are ready"
    );
    let pdbs = of_kind("PodDisruptionBudget");
    assert_eq!(pdbs.len(), 1);
    assert_eq!(
        pdbs[0]["spec"]["maxUnavailable"], 1,
        "one voter at a time keeps the raft quorum of three"
    );
    let admin_token = str_at(secret(&documents, "meridian-admin"), "/stringData/token");

    let sets = of_kind("StatefulSet");
    assert_eq!(sets.len(), REGIONS.len(), "one StatefulSet per region");
    let mut founders = Vec::new();
    let mut join_from = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for set in &sets {
        let name = str_at(set, "/metadata/name");
        let spec = &set["spec"];
        let pod = &spec["template"];
        let labels = &pod["metadata"]["labels"];
        let region = str_at(labels, "/meridian.dev~1region");
        assert!(REGIONS.contains(&region), "{name}: region {region}");
        assert_eq!(name, format!("meridian-{region}"));
        assert_eq!(str_at(spec, "/serviceName"), service, "{name}");
        assert!(selects(&spec["selector"]["matchLabels"], labels), "{name}");
        assert!(selects(&headless["spec"]["selector"], labels), "{name}");
        assert!(
            selects(&pdbs[0]["spec"]["selector"]["matchLabels"], labels),
            "{name}: the disruption budget covers every region"
        );
        assert_eq!(spec["replicas"], 1, "{name}: one voter per region");
        assert_eq!(
            str_at(pod, "/spec/nodeSelector/topology.kubernetes.io~1region"),
            region
        );

        let containers = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        let container = &containers[0];
        let ports: BTreeMap<&str, (u64, &str)> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    str_at(p, "/name"),
                    (p["containerPort"].as_u64().unwrap(), str_at(p, "/protocol")),
                )
            })
            .collect();
        assert_eq!(ports["admin"], (9080, "TCP"));
        assert_eq!(ports["proxy"], (8080, "TCP"));
        assert_eq!(ports["peer"], (9443, "UDP"), "QUIC");
        assert_eq!(str_at(container, "/readinessProbe/httpGet/path"), "/readyz");
        assert_eq!(str_at(container, "/readinessProbe/httpGet/port"), "admin");
        assert_eq!(str_at(container, "/livenessProbe/httpGet/path"), "/healthz");

        // The data directory is a volume claim, mounted where node.toml says.
        let claims: Vec<&str> = spec["volumeClaimTemplates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| str_at(c, "/metadata/name"))
            .collect();
        let mounts: BTreeMap<&str, &str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (str_at(m, "/name"), str_at(m, "/mountPath")))
            .collect();
        assert_eq!(claims, ["data"], "{name}");
        assert_eq!(mounts["data"], "/var/lib/meridian");
        assert_eq!(mounts["config"], "/etc/meridian");
        let config_volume = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .unwrap();
        let secret = secret(&documents, str_at(config_volume, "/secret/secretName"));
        let config = node_config(str_at(secret, "/stringData/node.toml"), name);
        assert_eq!(config.region, region);
        assert!(ids.insert(config.id), "node ids are unique");
        assert_eq!(config.data_dir, Path::new(mounts["data"]));
        assert_eq!(config.listen.admin.port(), 9080);
        assert_eq!(config.listen.proxy.port(), 8080);
        assert_eq!(config.listen.peer.port(), 9443);
        assert!(
            config.listen.admin.ip().is_unspecified(),
            "kubelet probes the pod IP"
        );
        assert_eq!(
            config.listen.advertise,
            format!("{name}-0.{service}.meridian.svc.cluster.local"),
            "the stable DNS name of the pod"
        );
        assert_eq!(config.admin.token.as_deref(), Some(admin_token));
        if let Some(gateway) = &config.gateway {
            let file = gateway.file_name().unwrap().to_str().unwrap();
            assert!(secret["stringData"][file].is_string(), "{name}: {file}");
        }
        let terminate = pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
        assert!(
            terminate > config.shutdown.grace_period.as_secs(),
            "{name}: the kubelet must wait for the drain"
        );

        let env: BTreeMap<&str, &Value> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (str_at(e, "/name"), e))
            .collect();
        assert_eq!(
            str_at(env["MERIDIAN_TOKEN"], "/valueFrom/secretKeyRef/name"),
            "meridian-admin"
        );
        match env.get("MERIDIAN_JOIN_FROM") {
            Some(from) => {
                join_from.insert(str_at(from, "/value").to_owned());
            }
            None => founders.push((config.listen.advertise.clone(), config.gateway.is_some())),
        }
    }
    assert_eq!(founders.len(), 1, "one region founds the cluster");
    let (founder, has_gateway) = &founders[0];
    assert!(
        has_gateway,
        "the founding node commits a gateway configuration"
    );
    assert_eq!(
        join_from,
        BTreeSet::from([format!("http://{founder}:9080")]),
        "the others join through the founder's admin API"
    );
}

#[test]
fn the_compose_cluster_holds_together() {
    let deploy = deploy();
    let compose: Value = yaml_documents(&deploy.join("compose.yaml")).remove(0);
    let services = compose["services"].as_object().unwrap();
    // Every bind-mounted file exists.
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(deploy.join(source).is_file(), "{name}: {source}");
            }
        }
    }
    // The image is built from the Dockerfile, and what it copies exists.
    let node = &services["meridian-eu-west"];
    let context = deploy.join(str_at(node, "/build/context"));
    let dockerfile = read(&context.join(str_at(node, "/build/dockerfile")));
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ")) {
        if line.contains("--from=") {
            continue;
        }
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(context.join(source).exists(), "{line}");
    }
    let mut founders = Vec::new();
    for region in REGIONS {
        let name = format!("meridian-{region}");
        let service = &services[&name];
        let mount = service["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .find(|v| v.ends_with(":/etc/meridian/node.toml:ro"))
            .unwrap();
        let path = deploy.join(mount.split(':').next().unwrap());
        let config = node_config(&read(&path), &path.display().to_string());
        assert_eq!(config.region, region);
        assert_eq!(config.listen.advertise, name, "the compose service name");
        assert_eq!(
            config.admin.token.as_deref(),
            service["environment"]["MERIDIAN_TOKEN"].as_str()
        );
        match service["environment"]["MERIDIAN_JOIN_FROM"].as_str() {
            Some(from) => assert_eq!(from, "http://meridian-eu-west:9080"),
            None => founders.push(name),
        }
    }
    assert_eq!(founders, ["meridian-eu-west"]);
    // Prometheus in compose scrapes the three nodes.
    let scrape: Value = yaml_documents(&deploy.join("compose/prometheus.yml")).remove(0);
    let targets: Vec<&str> = scrape["scrape_configs"][0]["static_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| str_at(c, "/targets/0"))
        .collect();
    assert_eq!(
        targets,
        REGIONS.map(|r| format!("meridian-{r}:9080")).to_vec()
    );
}

/// `deploy/container/start.sh`, the image's entry point, outside a
/// container: the founding node runs, a fresh node fetches a join token
/// from it and joins, and the joined node, restarted, runs from its
/// identity without a token.
#[test]
fn the_container_start_script_founds_joins_and_restarts() {
    let script = deploy().join("container/start.sh");
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_owned()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let gateway = dir.path().join("gateway.yaml");
    std::fs::write(
        &gateway,
        "upstreams:\n  u: { targets: [\"127.0.0.1:9\"] }\nroutes:\n  - { name: r, upstream: u }\n",
    )
    .unwrap();
    let node = |id: u64, region: &str| {
        let (proxy, admin) = (free_tcp(), free_tcp());
        let data = dir.path().join(region);
        let config = dir.path().join(format!("{region}.toml"));
        let gateway_line = if id == 1 {
            format!("gateway = {:?}\n", gateway.display().to_string())
        } else {
            String::new()
        };
        std::fs::write(
            &config,
            format!(
                "id = {id}\nregion = \"{region}\"\ndata-dir = {:?}\n{gateway_line}\
                 [listen]\nproxy = \"127.0.0.1:{proxy}\"\nadmin = \"127.0.0.1:{admin}\"\n\
                 peer = \"127.0.0.1:0\"\n[admin]\ntoken = \"secret\"\n[log]\naccess-log = \"off\"\n\
                 [raft]\nheartbeat = \"100ms\"\nelection-timeout-min = \"500ms\"\n\
                 election-timeout-max = \"1s\"\n",
                data.display().to_string()
            ),
        )
        .unwrap();
        (config, data, SocketAddr::from(([127, 0, 0, 1], admin)))
    };
    let start = |config: &Path, data: &Path, join_from: Option<SocketAddr>| {
        let mut command = Command::new("sh");
        command
            .arg(&script)
            .env("PATH", &path)
            .env("MERIDIAN_CONFIG", config)
            .env("MERIDIAN_DATA_DIR", data)
            .env("MERIDIAN_TOKEN", "secret")
            .env_remove("MERIDIAN_JOIN_FROM")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(from) = join_from {
            command.env("MERIDIAN_JOIN_FROM", format!("http://{from}"));
        }
        Running(command.spawn().unwrap())
    };
    let ready = |admin: SocketAddr| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(admin, "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "{admin} never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let members = |admin: SocketAddr| -> Vec<String> {
        let output = Command::new(BIN)
            .args(["cluster", "status", "--json", "--admin"])
            .arg(format!("http://{admin}"))
            .env("MERIDIAN_TOKEN", "secret")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let status: Value = serde_json::from_slice(&output.stdout).unwrap();
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["region"].as_str().unwrap().to_owned())
            .collect()
    };

    let (founder_config, founder_data, founder) = node(1, "eu-west");
    let (joiner_config, joiner_data, joiner) = node(2, "us-east");
    // The joiner starts first: it waits for the founder's token.
    let joining = start(&joiner_config, &joiner_data, Some(founder));
    std::thread::sleep(Duration::from_millis(500));
    let _founding = start(&founder_config, &founder_data, None);
    ready(founder);
    ready(joiner);
    assert!(joiner_data.join("pki").is_dir());
    let mut regions = members(founder);
    regions.sort();
    assert_eq!(regions, ["eu-west", "us-east"]);

    // Restarted with the founder's admin API unreachable, the joined node
    // runs from its identity: no token is needed any more.
    drop(joining);
    let _restarted = start(
        &joiner_config,
        &joiner_data,
        Some("127.0.0.1:9".parse().unwrap()),
    );
    ready(joiner);
    let mut regions = members(joiner);
    regions.sort();
    assert_eq!(regions, ["eu-west", "us-east"]);
}

/// `systemd-analyze verify` needs the unit's executables to exist, so the
/// unit is verified as a copy whose `/usr/local/bin/meridian` is the binary
/// under test; nothing else changes. Warnings (unknown keys, bad values)
/// fail the test too: systemd-analyze only prints them.
#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let unit = read(&deploy().join("systemd/meridian.service"));
    assert!(
        unit.contains(
            "ExecStart=/usr/local/bin/meridian node run --config /etc/meridian/node.toml"
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meridian.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/meridian", BIN)).unwrap();
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let about_the_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("meridian.service"))
        .collect();
    assert!(
        output.status.success() && about_the_unit.is_empty(),
        "systemd-analyze verify: {output:?}"
    );
}

/// The path of `name` on PATH. Missing: a failure in CI (`.ci/run`
/// installs it), a skip with a reason elsewhere.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed; .ci/run installs it"
        );
        eprintln!("skipped: {name} is not installed (CI installs it)");
    }
    found
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.0 GET (so the answer is neither chunked nor kept alive);
/// (status, body).
fn get(address: SocketAddr, target: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let (status, _, body) = split_answer(&answer);
    (status, body.to_owned())
}
