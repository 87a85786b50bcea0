//! The `meridian` binary as users run it: real processes, real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::{BIN, dev_nodes, free_tcp as free_port, split_answer};

/// A child process killed when dropped.
struct Running {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("meridian starts");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, stderr: rx }
    }

    /// Waits for a stderr line containing `needle`; returns everything read.
    fn wait_for(&self, needle: &str) -> String {
        let mut seen = String::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(20)) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return seen;
            }
        }
        panic!("no {needle:?} in stderr:\n{seen}");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Peak resident memory of the process, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, head, body).
fn http(address: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (status, head, body) = split_answer(&answer);
    (status, head.to_owned(), body.to_owned())
}

fn get(address: SocketAddr, path: &str) -> (u16, String, String) {
    http(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
}

fn wait_until_listening(address: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(address).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {address}");
}

#[test]
fn dev_runs_a_three_region_cluster_and_prints_a_quick_start() {
    let dev = Running::spawn(&[
        "dev",
        "--proxy",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--access-log",
        "off",
    ]);
    let banner = dev.wait_for("Ctrl-C drains and stops.");
    let regions: Vec<(SocketAddr, SocketAddr)> = dev_nodes(&banner)
        .into_iter()
        .map(|(proxy, admin, _)| (proxy, admin))
        .collect();
    assert_eq!(regions.len(), 3, "{banner}");
    assert!(banner.contains("meridian key revoke"), "{banner}");
    let (proxy, admin) = regions[0];

    let (status, head, body) = get(proxy, "/echo/hello?lang=en");
    assert_eq!(status, 200);
    assert!(body.contains("\"path\":\"/hello\""), "{body}");
    // Each region proxies to its own echo backend.
    assert!(
        head.to_ascii_lowercase()
            .contains("x-meridian-region: eu-west"),
        "{head}"
    );
    assert!(body.contains("eu-west"), "{body}");
    let (status, head, body) = get(proxy, "/api/v1/users/1");
    assert_eq!(status, 200);
    assert!(body.contains("Ada Lovelace"), "{body}");
    assert!(
        head.to_ascii_lowercase().contains("deprecation: @"),
        "{head}"
    );
    for (proxy, _) in &regions {
        let (status, _, body) = get(*proxy, "/api/v2/users/2");
        assert_eq!(
            status, 200,
            "every region serves the replicated configuration"
        );
        assert!(body.contains("\"given\":\"Grace\""), "{body}");
    }
    let (status, _, body) = get(proxy, "/private/x");
    assert_eq!(status, 401);
    assert!(body.contains("missing_credentials"));
    let (status, _, body) = get(proxy, "/nowhere");
    assert_eq!(status, 404);
    assert!(body.contains("no_route"));
    let (status, _, body) = get(admin, "/v1/cluster");
    assert_eq!(status, 200);
    assert!(body.contains("\"region\":\"ap-south\""), "{body}");
    // The quick-start's rate-limited route: five, then 429.
    for _ in 0..5 {
        let (status, head, _) = get(proxy, "/limited/x");
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("ratelimit-policy: \"per-ip\";q=5;w=10"),
            "{head}"
        );
    }
    let (status, head, body) = get(proxy, "/limited/x");
    assert_eq!(status, 429, "{head}");
    assert!(body.contains("rate_limited"), "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );

    dev.signal("-TERM");
}

#[test]
fn config_check_reports_every_error_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "upstreams:\n  u: { targets: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: r, upstream: u }\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (1 upstreams, 1 routes"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "upstreams:\n  u: { targets: [\"nohost\"] }\nroutes:\n  - { name: r, upstream: missing, match: { path: users } }\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "upstreams.u.targets[0] (nohost) must be host:port",
        "routes[0].upstream (missing) must name a declared upstream",
        "routes[0].match.path (users) must start with '/'",
        "3 error(s)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    let syntax = dir.path().join("syntax.yaml");
    std::fs::write(&syntax, "routes:\n  - { name: r, upstrem: u }\n").unwrap();
    let output = Command::new(BIN)
        .args(["config", "check"])
        .arg(&syntax)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field `upstrem`"));
}

#[test]
fn node_run_refuses_a_bad_node_config() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.toml");
    std::fs::write(&node, "id = 0\n[listen]\nproxy = \"nowhere\"\n").unwrap();
    let output = Command::new(BIN)
        .args(["node", "run", "--config"])
        .arg(&node)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("id (0) must be greater than zero"),
        "{stderr}"
    );
    assert!(
        stderr.contains("listen.proxy (nowhere) must be an IP address and port"),
        "{stderr}"
    );
}

/// `meridian chaos` runs `meridian-chaos` from beside the binary, with its
/// arguments (help included); without it, it says what is missing.
#[test]
fn chaos_runs_the_harness_beside_the_binary() {
    let harness = Path::new(BIN).with_file_name("meridian-chaos");
    let run = |args: &[&str]| {
        let output = Command::new(BIN).args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&["chaos", "list"]);
    if harness.is_file() {
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("leader-loss"), "{stdout}");
        assert!(stdout.contains("region-partition"), "{stdout}");
        let (code, stdout, _) = run(&["chaos", "run", "--help"]);
        assert_eq!(code, Some(0));
        assert!(stdout.contains("--seed"), "{stdout}");
        let (code, _, stderr) = run(&["chaos", "run", "no-such-scenario"]);
        assert_eq!(code, Some(64));
        assert!(stderr.contains("neither a built-in scenario"), "{stderr}");
    } else {
        assert_eq!(code, Some(2));
        assert!(stderr.contains("meridian-chaos is missing"), "{stderr}");
    }
}

fn write_node(dir: &Path, proxy: u16, admin: u16) -> std::path::PathBuf {
    let node = dir.join("node.toml");
    std::fs::write(
        &node,
        format!(
            "id = 1\nregion = \"test\"\ndata-dir = \"{}\"\n[listen]\nproxy = \"127.0.0.1:{proxy}\"\nadmin = \"127.0.0.1:{admin}\"\npeer = \"127.0.0.1:0\"\n[log]\naccess-log = \"off\"\n",
            dir.display()
        ),
    )
    .unwrap();
    node
}

/// A backend on loopback that answers `hello from <name>` to everything.
fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    let mut content_length = 0usize;
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            content_length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; content_length];
                    let _ = reader.read_exact(&mut body);
                    let text = format!("hello from {name}");
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if stream.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

#[test]
fn node_run_loads_the_gateway_file_and_reloads_it_on_sighup() {
    let (a, b) = (backend("a"), backend("b"));
    let dir = tempfile::tempdir().unwrap();
    let gateway = dir.path().join("gateway.yaml");
    let config = |target: SocketAddr| {
        format!(
            "upstreams:\n  u: {{ targets: [\"{target}\"] }}\nroutes:\n  - {{ name: r, upstream: u }}\n"
        )
    };
    std::fs::write(&gateway, config(a)).unwrap();
    let (proxy, admin) = (free_port(), free_port());
    let node = write_node(dir.path(), proxy, admin);
    let running = Running::spawn(&[
        "node",
        "run",
        "--config",
        node.to_str().unwrap(),
        "--gateway",
        gateway.to_str().unwrap(),
    ]);
    running.wait_for("node running");
    let proxy: SocketAddr = format!("127.0.0.1:{proxy}").parse().unwrap();
    assert_eq!(get(proxy, "/").2, "hello from a");

    std::fs::write(&gateway, config(b)).unwrap();
    running.signal("-HUP");
    running.wait_for("SIGHUP: gateway configuration reloaded");
    assert_eq!(get(proxy, "/").2, "hello from b");

    std::fs::write(&gateway, "routes: [ { name: r, upstream: nope } ]\n").unwrap();
    running.signal("-HUP");
    let log = running.wait_for("SIGHUP: reload refused");
    assert!(
        log.contains("routes[0].upstream (nope) must name a declared upstream"),
        "{log}"
    );
    assert_eq!(
        get(proxy, "/").2,
        "hello from b",
        "the previous configuration stays"
    );

    running.signal("-TERM");
    running.wait_for("stopped");
}

/// Streams 1 GiB up and 1 GiB down through a real node process and checks
/// that its peak memory stays small: bodies are never buffered.
#[test]
fn a_gibibyte_each_way_in_constant_memory() {
    const GIB: u64 = 1 << 30;
    // Backend: counts what it receives on POST, sends 1 GiB on GET.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let (received_tx, received_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let received_tx = received_tx.clone();
            std::thread::spawn(move || serve_bulk(stream, received_tx));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let gateway = dir.path().join("gateway.yaml");
    std::fs::write(
        &gateway,
        format!("upstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - {{ name: r, upstream: u, max_body: 2GiB }}\n"),
    )
    .unwrap();
    let (proxy, admin) = (free_port(), free_port());
    let node = write_node(dir.path(), proxy, admin);
    let running = Running::spawn(&[
        "node",
        "run",
        "--config",
        node.to_str().unwrap(),
        "--gateway",
        gateway.to_str().unwrap(),
    ]);
    running.wait_for("node running");
    let proxy: SocketAddr = format!("127.0.0.1:{proxy}").parse().unwrap();
    wait_until_listening(proxy);
    let baseline = running.peak_rss_kib();

    // Upload 1 GiB with a Content-Length body.
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream
        .write_all(
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let chunk = vec![b'u'; 1 << 20];
    for _ in 0..(GIB >> 20) {
        stream.write_all(&chunk).unwrap();
    }
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(
        received_rx.recv_timeout(Duration::from_secs(60)).unwrap(),
        GIB
    );

    // Download 1 GiB.
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream
        .write_all(b"GET /download HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut total = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = stream.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(total > GIB, "headers plus 1 GiB arrived: {total}");
    let peak = running.peak_rss_kib();
    eprintln!("gateway peak RSS: {baseline} KiB before, {peak} KiB after streaming 1 GiB each way");
    assert!(
        peak < baseline + 64 * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB while streaming 2 GiB"
    );
}

fn serve_bulk(stream: TcpStream, received: mpsc::Sender<u64>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    if reader.read_line(&mut request).unwrap_or(0) == 0 {
        return;
    }
    let mut content_length = 0u64;
    let mut chunked = false;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header == "\r\n" {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap();
        }
        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
    }
    assert!(!chunked, "a Content-Length upload stays length-delimited");
    if request.starts_with("POST") {
        let mut left = content_length;
        let mut buffer = vec![0u8; 1 << 20];
        while left > 0 {
            let n = reader
                .read(&mut buffer[..left.min(1 << 20) as usize])
                .unwrap();
            assert!(n > 0, "upload cut short");
            left -= n as u64;
        }
        let _ = received.send(content_length);
        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    } else {
        const GIB: u64 = 1 << 30;
        let _ = writer
            .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {GIB}\r\n\r\n").as_bytes());
        let chunk = vec![b'd'; 1 << 20];
        for _ in 0..(GIB >> 20) {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    }
}

/// The certificate the HTTPS listener at `address` presents for `localhost`,
/// verified against `ca`.
fn served_certificate(address: SocketAddr, ca: &rcgen::Certificate) -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut socket = TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut socket).expect("TLS handshake");
    }
    tls.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn sighup_reloads_the_tls_certificates() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = || {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert, key)
    };
    let (first, first_key) = leaf();
    let (second, second_key) = leaf();

    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, first.pem()).unwrap();
    std::fs::write(&key_file, first_key.serialize_pem()).unwrap();
    let (proxy, admin, https) = (free_port(), free_port(), free_port());
    let node = write_node(dir.path(), proxy, admin);
    let mut text = std::fs::read_to_string(&node).unwrap();
    text = text.replace(
        "[listen]\n",
        &format!("[listen]\nproxy-tls = \"127.0.0.1:{https}\"\n"),
    );
    // Files are also polled, but not within this test: only SIGHUP reloads.
    text.push_str(&format!(
        "[tls]\nreload-interval = \"1h\"\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    ));
    std::fs::write(&node, text).unwrap();
    let running = Running::spawn(&["node", "run", "--config", node.to_str().unwrap()]);
    running.wait_for("node running");
    let https: SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    assert_eq!(served_certificate(https, ca.as_ref()), first.der().to_vec());

    std::fs::write(&cert_file, second.pem()).unwrap();
    std::fs::write(&key_file, second_key.serialize_pem()).unwrap();
    assert_eq!(
        served_certificate(https, ca.as_ref()),
        first.der().to_vec(),
        "nothing changes before the signal"
    );
    running.signal("-HUP");
    running.wait_for("SIGHUP: re-reading TLS certificates");
    let mut attempts = 0;
    while served_certificate(https, ca.as_ref()) != second.der().to_vec() {
        attempts += 1;
        assert!(attempts < 200, "the new certificate is served after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    running.signal("-TERM");
}
