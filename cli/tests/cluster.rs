//! The cluster as an operator runs it: `cluster init`, `node run`,
//! `cluster join`, `apply --wait`, `key create|revoke --wait`,
//! `cluster status`, on real processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod common;

use common::{BIN, free_tcp};

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    proxy: u16,
    admin: u16,
    config: std::path::PathBuf,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn node(dir: &Path, id: u64) -> Node {
    let (proxy, admin, peer) = (free_tcp(), free_tcp(), free_udp());
    let config = dir.join(format!("node{id}.toml"));
    std::fs::write(
        &config,
        format!(
            "id = {id}\nregion = \"region-{id}\"\ndata-dir = \"{}\"\n[listen]\nproxy = \"127.0.0.1:{proxy}\"\nadmin = \"127.0.0.1:{admin}\"\npeer = \"127.0.0.1:{peer}\"\n[log]\naccess-log = \"off\"\nlevel = \"warn\"\n[raft]\nheartbeat = \"50ms\"\nelection-timeout-min = \"300ms\"\nelection-timeout-max = \"600ms\"\n",
            dir.join(format!("data{id}")).display()
        ),
    )
    .unwrap();
    Node {
        proxy,
        admin,
        config,
        child: None,
    }
}

fn meridian(args: &[&str]) -> Output {
    let output = meridian_with(args, &[]);
    assert!(
        output.status.success(),
        "meridian {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn spawn(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn ready(admin: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", admin)) else {
        return false;
    };
    let _ = stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn wait_ready(admin: u16) {
    for _ in 0..400 {
        if ready(admin) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("node with admin port {admin} never became ready");
}

fn request(proxy: u16, key: &str) -> u16 {
    let mut stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], proxy))).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A backend that answers 200 to everything.
fn backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                        line.clear();
                    }
                    if line.is_empty()
                        || stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_three_region_cluster_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (1..=3).map(|id| node(dir.path(), id)).collect();
    let init = meridian(&[
        "cluster",
        "init",
        "--config",
        nodes[0].config.to_str().unwrap(),
    ]);
    let init = String::from_utf8_lossy(&init.stdout).into_owned();
    let token = init
        .lines()
        .find(|l| l.contains("cluster join"))
        .and_then(|l| l.split_whitespace().last())
        .expect("init prints a join command")
        .to_owned();
    let config = nodes[0].config.to_str().unwrap().to_owned();
    nodes[0].child = Some(spawn(&["node", "run", "--config", &config]));
    let first_admin = format!("http://127.0.0.1:{}", nodes[0].admin);
    // The founding node is ready once it serves a configuration.
    let upstream = backend();
    let gateway = dir.path().join("gateway.yaml");
    std::fs::write(
        &gateway,
        format!(
            "upstreams:\n  u: {{ targets: [\"127.0.0.1:{upstream}\"] }}\nconsumers:\n  - {{ name: acme }}\nroutes:\n  - {{ name: r, upstream: u, auth: [api_key] }}\n"
        ),
    )
    .unwrap();
    for attempt in 0.. {
        let output = Command::new(BIN)
            .args([
                "apply",
                "-f",
                gateway.to_str().unwrap(),
                "--admin",
                &first_admin,
            ])
            .output()
            .unwrap();
        if output.status.success() {
            break;
        }
        assert!(
            attempt < 100,
            "apply never succeeded: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let config2 = nodes[1].config.to_str().unwrap().to_owned();
    nodes[1].child = Some(spawn(&[
        "cluster", "join", "--config", &config2, "--token", &token,
    ]));
    wait_ready(nodes[1].admin);
    let second_token = meridian(&["cluster", "token", "--admin", &first_admin]);
    let second_token = String::from_utf8_lossy(&second_token.stdout)
        .trim()
        .to_owned();
    let config3 = nodes[2].config.to_str().unwrap().to_owned();
    nodes[2].child = Some(spawn(&[
        "cluster",
        "join",
        "--config",
        &config3,
        "--token",
        &second_token,
    ]));
    wait_ready(nodes[2].admin);

    // Joined nodes start as learners and are promoted once caught up.
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        let output = meridian(&["cluster", "status", "--json", "--admin", &first_admin]);
        status = serde_json::from_slice(&output.stdout).unwrap();
        let members = status["members"].as_array().unwrap();
        if members.len() == 3 && members.iter().all(|m| m["role"] == "voter") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    assert!(members.iter().all(|m| m["role"] == "voter"), "{status}");

    let created = meridian(&[
        "key",
        "create",
        "--consumer",
        "acme",
        "--wait",
        "--admin",
        &first_admin,
    ]);
    let created = String::from_utf8_lossy(&created.stdout).into_owned();
    let key = created
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim()
        .to_owned();
    let id = created
        .lines()
        .find_map(|l| l.strip_prefix("key id:"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(created.contains("node 3: applied"), "{created}");
    for node in &nodes {
        assert_eq!(
            request(node.proxy, &key),
            200,
            "a fresh key works on every node"
        );
    }
    let third_admin = format!("http://127.0.0.1:{}", nodes[2].admin);
    meridian(&["key", "revoke", &id, "--wait", "--admin", &third_admin]);
    for node in &nodes {
        assert_eq!(
            request(node.proxy, &key),
            401,
            "once revoke --wait returns, every node refuses the key"
        );
    }
}

/// Output of `meridian` with `env` set (e.g. the admin client's TLS
/// settings), whether it succeeded or not.
fn meridian_with(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

#[test]
fn the_admin_api_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = node(dir.path(), 1);
    let mut config = std::fs::read_to_string(&node.config).unwrap();
    config.push_str("[admin]\ntls = \"mutual\"\n");
    std::fs::write(&node.config, config).unwrap();
    let config = node.config.to_str().unwrap().to_owned();
    meridian(&["cluster", "init", "--config", &config]);
    node.child = Some(spawn(&["node", "run", "--config", &config]));
    let out = dir.path().join("ops");
    let issued = meridian(&[
        "cluster",
        "cert",
        "--config",
        &config,
        "--name",
        "ops",
        "--out",
        out.to_str().unwrap(),
    ]);
    let issued = String::from_utf8_lossy(&issued.stdout).into_owned();
    let serial = issued
        .lines()
        .find_map(|line| line.strip_prefix("Serial (for `meridian revoke cert --serial`): "))
        .expect("the serial is printed")
        .to_owned();
    let admin = format!("https://127.0.0.1:{}", node.admin);
    let (ca, cert, key) = (out.join("ca.pem"), out.join("ops.pem"), out.join("ops.key"));
    let with_cert = [
        ("MERIDIAN_CA", ca.as_path()),
        ("MERIDIAN_CERT", cert.as_path()),
        ("MERIDIAN_KEY", key.as_path()),
    ];
    let status = || meridian_with(&["cluster", "status", "--admin", &admin], &with_cert);
    let mut answered = status();
    for _ in 0..200 {
        if answered.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        answered = status();
    }
    assert!(
        answered.status.success(),
        "status over mutual TLS failed: {}",
        String::from_utf8_lossy(&answered.stderr)
    );
    // Plain HTTP and TLS without a client certificate are refused.
    let plain = meridian_with(
        &[
            "cluster",
            "status",
            "--admin",
            &format!("http://127.0.0.1:{}", node.admin),
        ],
        &[],
    );
    assert!(!plain.status.success());
    let anonymous = meridian_with(
        &["cluster", "status", "--admin", &admin],
        &[("MERIDIAN_CA", ca.as_path())],
    );
    assert!(!anonymous.status.success());
    // A certificate from another CA is refused in the handshake.
    let foreign = tempfile::tempdir().unwrap();
    let impostor = node::pki::Ca::generate("impostor")
        .unwrap()
        .issue_client("ops")
        .unwrap();
    std::fs::write(foreign.path().join("ops.pem"), impostor.cert_pem).unwrap();
    std::fs::write(foreign.path().join("ops.key"), impostor.key_pem).unwrap();
    let (foreign_cert, foreign_key) = (
        foreign.path().join("ops.pem"),
        foreign.path().join("ops.key"),
    );
    let refused = meridian_with(
        &["cluster", "status", "--admin", &admin],
        &[
            ("MERIDIAN_CA", ca.as_path()),
            ("MERIDIAN_CERT", foreign_cert.as_path()),
            ("MERIDIAN_KEY", foreign_key.as_path()),
        ],
    );
    assert!(!refused.status.success());
    // Revoking the certificate's serial (with itself, the last thing it
    // may do) locks it out.
    let revoked = meridian_with(
        &[
            "revoke", "cert", "--serial", &serial, "--wait", "--admin", &admin,
        ],
        &with_cert,
    );
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let after = status();
    assert!(!after.status.success());
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert!(stderr.contains("403"), "{stderr}");
}
