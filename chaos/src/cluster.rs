//! A cluster of real `meridian` processes, one per region, on loopback or
//! in network namespaces.
//!
//! [`Cluster::start`] does what an operator does (docs/operations.md):
//! writes a `node.toml` per node, `meridian cluster init` on the first,
//! `meridian node run` it, commits the gateway configuration through the
//! admin API, then `meridian cluster join` the others with one-time tokens,
//! and waits until every node is a voter and ready.
//!
//! Every ordered pair of nodes `(a, b)` gets its own UDP [`relay`](crate::relay)
//! link, and node `a`'s `[peers]` table sends its traffic for `b` through
//! it: a partition or added latency is a change on the links, per direction.
//! (Joining dials the founder directly, before any fault.)
//!
//! With [`Network::Namespaces`] (root only) each region gets a network
//! namespace of its own instead of loopback ([`crate::netns`]): node `N`
//! runs under `ip netns exec` and listens on 10.77.0.N with fixed ports
//! ([`NS_PROXY`], [`NS_ADMIN`], [`NS_PEER`]: every namespace has its own
//! port space), region `N`'s backend listens in namespace `N` on port
//! [`NS_BACKEND`], and the JWKS endpoint and the relay live in the hub at
//! 10.77.0.254. A two-way partition sets the region's link down at the
//! hub, which cuts all of its traffic, not only peer traffic; one-way cuts,
//! latency and loss act on the relay links as on loopback. The harness
//! reaches a node from inside its namespace ([`Cluster::client`]).

//! Each region has a demo [`Backend`]; the gateway's `echo` upstream is,
//! in each region, that region's backend, with active health checks,
//! retries and cross-region fallback to the others (as a multi-region
//! deployment runs, docs/regions.md), and a `private` route needs an API
//! key of consumer `chaos`.
//!
//! Processes are started with `kill_on_drop`: dropping the [`Cluster`] (on
//! any exit path, a panic included) sends SIGKILL to every node it started,
//! by PID, then deletes the namespaces. [`Cluster::shutdown`] also waits for
//! the processes before deleting the namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use http::Method;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::backend::Backend;
use crate::client::Client;
use crate::idp::{self, Idp};
use crate::netns::{self, Dialer, Net};
use crate::relay::{Direction, LinkHandle, LinkParams, Relay};
use crate::scenario::Cut;

/// Region names, in node order.
pub const REGIONS: [&str; 5] = ["eu-west", "us-east", "ap-south", "sa-east", "af-south"];

/// The consumer whose keys the run creates and revokes.
pub const CONSUMER: &str = "chaos";

/// The global rate limit on `/global/…`: this many requests per calendar
/// window of [`GLOBAL_WINDOW_MS`], counted over every node.
pub const GLOBAL_LIMIT: u64 = 100;

/// The window of [`GLOBAL_LIMIT`].
pub const GLOBAL_WINDOW_MS: u64 = 10_000;

/// Load paths under this prefix meet the global limit.
pub const GLOBAL_PREFIX: &str = "/global";

/// Load paths under this prefix need a JWT of the run's issuer.
pub const JWT_PREFIX: &str = "/jwt";

/// Raft timings of the nodes (TESTING-NOTES.md §1 suggests 1–2 s elections).
const HEARTBEAT: &str = "150ms";
const ELECTION_MIN: &str = "1s";
const ELECTION_MAX: &str = "2s";

/// How long cluster formation may take.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// Admin call deadline during set-up.
const SETUP_CALL: Duration = Duration::from_secs(15);

/// How long [`Cluster::commit_gateway`] may take.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// With [`Network::Namespaces`]: node `N`'s proxy port on 10.77.0.N.
pub const NS_PROXY: u16 = 8080;
/// With [`Network::Namespaces`]: node `N`'s admin port on 10.77.0.N.
pub const NS_ADMIN: u16 = 9080;
/// With [`Network::Namespaces`]: node `N`'s peer (QUIC) port on 10.77.0.N.
pub const NS_PEER: u16 = 9443;
/// With [`Network::Namespaces`]: region `N`'s backend port on 10.77.0.N.
pub const NS_BACKEND: u16 = 8000;
/// With [`Network::Namespaces`]: the JWKS endpoint's port on the hub.
pub const NS_JWKS: u16 = 8001;

/// One node of the cluster.
#[derive(Debug)]
pub struct Node {
    /// Node id (1-based).
    pub id: u64,
    /// Its region.
    pub region: String,
    /// Proxy listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Peer (QUIC) listener.
    pub peer: SocketAddr,
    /// Its node.toml.
    pub config: PathBuf,
    /// Its data dir.
    pub data: PathBuf,
    /// Its stderr, appended across restarts.
    pub log: PathBuf,
    /// Where sockets to it are made: here on loopback, its region's
    /// namespace with [`Network::Namespaces`] ([`Cluster::client`] dials
    /// its addresses through it).
    pub dialer: Dialer,
    child: Option<Child>,
    /// With tmpfs data dirs: the process holding the node's mount namespace
    /// (and so its tmpfs) across restarts of the node.
    holder: Option<Child>,
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    links: BTreeMap<(u64, u64), LinkHandle>,
    backends: Vec<Backend>,
    jwks: Backend,
    idp: Idp,
    relay: Relay,
    /// Reaches every node: one pool on loopback, routed per namespace.
    client: Client,
    wrap: Wrap,
    /// Last, so that it is dropped after the node processes are killed.
    net: Option<Net>,
}

/// How the nodes are networked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// Every node on 127.0.0.1 with free ports; no root.
    #[default]
    Loopback,
    /// One network namespace per region on a bridge ([`crate::netns`]); a
    /// two-way partition is the region's link down at the hub. Root only.
    Namespaces,
}

// === impl Network ===

impl Network {
    /// Namespaces where they can be made (root, iproute2), else loopback.
    pub fn best() -> Self {
        match Net::unavailable() {
            None => Self::Namespaces,
            Some(_) => Self::Loopback,
        }
    }

    /// One line for a report.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "loopback: every node on 127.0.0.1, peer traffic through the relay",
            Self::Namespaces => {
                "network namespaces: a region each on 10.77.0.0/24, joined at a hub bridge; peer traffic through the relay in the hub"
            }
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "loopback" => Ok(Self::Loopback),
            "namespaces" => Ok(Self::Namespaces),
            other => Err(format!(
                "network {other:?} is not one of: loopback, namespaces"
            )),
        }
    }
}

/// What every node process of a cluster runs under.
#[derive(Clone, Debug, Default)]
pub struct Wrap {
    /// libfaketime (the path of `libfaketimeMT.so.1`): each node gets its
    /// own offset file, `+0` until [`Cluster::skew`] changes it.
    pub faketime: Option<PathBuf>,
    /// A tmpfs of this size (`64m`) as the data dir, mounted in a mount
    /// namespace of the node's own (`unshare -m`, root only) that a holder
    /// process keeps for the whole run, so the node restarts on it
    /// (`nsenter`) and [`Cluster::fill`] can fill it up. Whatever the data
    /// dir held is copied in first.
    pub tmpfs: Option<String>,
    /// How the nodes are networked (and so where each process runs).
    pub network: Network,
    /// More node.toml for node `id`, merged over what the harness writes:
    /// tables key by key, any other value replacing the harness's (e.g.
    /// `[raft] leader-loss`, `[gslb]`, `[regions.NAME]`, `[dns]`).
    pub node_toml: BTreeMap<u64, toml::Table>,
}

/// Mounts the tmpfs over the data dir, keeping what it held, then holds the
/// mount namespace until killed.
const TMPFS_SCRIPT: &str = r#"set -e
seed=$(mktemp -d)
mkdir -p "$CHAOS_DATA"
cp -a "$CHAOS_DATA/." "$seed/"
mount -t tmpfs -o size="$CHAOS_TMPFS" chaos-data "$CHAOS_DATA"
cp -a "$seed/." "$CHAOS_DATA/"
rm -rf "$seed"
touch "$CHAOS_DATA/.chaos-mounted"
exec sleep infinity"#;

/// The file that fills a node's data dir.
const FILLER: &str = "chaos-filler";

/// Where Debian's `faketime` package puts the multi-threaded libfaketime.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

// === impl Node ===

impl Node {
    /// Whether the harness believes the process runs.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

// === impl Cluster ===

impl Cluster {
    /// Starts `nodes` nodes of `bin` with state and logs under `dir`; relay
    /// decisions come from `seed`; `wrap` says what each process runs under.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        nodes: u64,
        seed: u64,
        wrap: &Wrap,
    ) -> anyhow::Result<Self> {
        if wrap.tmpfs.is_some() && !netns::is_root() {
            bail!(
                "disk-full faults need root: each node's data dir is a tmpfs mounted in its own mount namespace"
            );
        }
        if !bin.is_file() {
            bail!(
                "the meridian binary {} does not exist (build it with `cargo build --bin meridian`, or pass --meridian PATH)",
                bin.display()
            );
        }
        if nodes == 0 || nodes as usize > REGIONS.len() {
            bail!("a cluster has 1 to {} nodes, not {nodes}", REGIONS.len());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let net = match wrap.network {
            Network::Loopback => None,
            Network::Namespaces => {
                Some(Net::create(nodes).context("creating a network namespace per region")?)
            }
        };
        let relay = Relay::new(seed);
        let idp = Idp::new()?;
        let jwks = match &net {
            None => Backend::document(SocketAddr::from(([127, 0, 0, 1], 0)), idp.jwks()).await,
            Some(net) => {
                let listen = SocketAddr::from((netns::HUB_ADDRESS, NS_JWKS));
                Backend::document_in(&net.hub_dialer(), listen, idp.jwks()).await
            }
        }
        .context("starting the JWKS endpoint")?;
        let mut backends = Vec::new();
        for i in 0..nodes {
            let region = REGIONS[i as usize];
            let backend = match &net {
                None => Backend::start(SocketAddr::from(([127, 0, 0, 1], 0)), region).await,
                Some(net) => {
                    let listen = SocketAddr::new(net.address(i + 1), NS_BACKEND);
                    Backend::start_in(&net.dialer(i + 1), listen, region).await
                }
            };
            backends.push(backend.with_context(|| format!("starting the {region} backend"))?);
        }
        let mut specs = Vec::new();
        let mut taken = BTreeSet::new();
        for i in 0..nodes {
            let id = i + 1;
            let (proxy, admin, peer, dialer) = match &net {
                None => (
                    free_tcp(&mut taken)?,
                    free_tcp(&mut taken)?,
                    free_udp(&mut taken)?,
                    Dialer::Here,
                ),
                Some(net) => {
                    let ip = net.address(id);
                    (
                        SocketAddr::new(ip, NS_PROXY),
                        SocketAddr::new(ip, NS_ADMIN),
                        SocketAddr::new(ip, NS_PEER),
                        net.dialer(id),
                    )
                }
            };
            specs.push(Node {
                id,
                region: REGIONS[i as usize].into(),
                proxy,
                admin,
                peer,
                config: dir.join(format!("node{id}.toml")),
                data: dir.join(format!("data{id}")),
                log: dir.join(format!("node{id}.log")),
                dialer,
                child: None,
                holder: None,
            });
        }
        // The relay listens on loopback, or in the hub between the regions.
        let (relay_at, relay_listen) = match &net {
            None => (Dialer::Here, SocketAddr::from(([127, 0, 0, 1], 0))),
            Some(net) => (net.hub_dialer(), SocketAddr::from((netns::HUB_ADDRESS, 0))),
        };
        let mut links = BTreeMap::new();
        for from in &specs {
            for to in &specs {
                if from.id != to.id {
                    let link = relay
                        .udp_in(&relay_at, relay_listen, to.peer)
                        .await
                        .with_context(|| format!("relay link {}→{}", from.id, to.id))?;
                    links.insert((from.id, to.id), link);
                }
            }
        }
        for node in &specs {
            let peers: BTreeMap<u64, SocketAddr> = links
                .iter()
                .filter(|((from, _), _)| *from == node.id)
                .map(|((_, to), link)| (*to, link.local_addr()))
                .collect();
            let text = node_toml(node, &node.data, &peers);
            let text = with_extra(text, wrap.node_toml.get(&node.id))
                .with_context(|| format!("node {}'s extra node.toml", node.id))?;
            std::fs::write(&node.config, text)
                .with_context(|| format!("writing {}", node.config.display()))?;
        }
        let client = match &net {
            None => Client::new(),
            Some(net) => {
                let mut routes: BTreeMap<_, _> = specs
                    .iter()
                    .map(|node| (node.proxy.ip(), node.dialer.clone()))
                    .collect();
                routes.insert(netns::HUB_ADDRESS.into(), net.hub_dialer());
                Client::routed(routes)
            }
        };
        let mut cluster = Self {
            bin: bin.to_owned(),
            nodes: specs,
            links,
            backends,
            jwks,
            idp,
            relay,
            client,
            wrap: wrap.clone(),
            net,
        };
        if cluster.wrap.faketime.is_some() {
            for id in 1..=nodes {
                cluster.skew(id, 0)?;
            }
        }
        tokio::time::timeout(FORM_TIMEOUT, cluster.form())
            .await
            .context("the cluster did not form within 60s")??;
        Ok(cluster)
    }

    /// `cluster init`, run the founder, commit the gateway, join the others.
    async fn form(&mut self) -> anyhow::Result<()> {
        let founder = self.nodes[0].config.clone();
        let init = Command::new(&self.bin)
            .args(["cluster", "init", "--config"])
            .arg(&founder)
            .output()
            .await
            .context("running meridian cluster init")?;
        if !init.status.success() {
            bail!(
                "meridian cluster init failed: {}",
                String::from_utf8_lossy(&init.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&init.stdout);
        let mut token = stdout
            .lines()
            .find(|l| l.contains("cluster join"))
            .and_then(|l| l.split_whitespace().last())
            .context("meridian cluster init printed no join command")?
            .to_owned();
        self.hold(1).await?;
        self.spawn(1, &["node", "run"], None)?;
        let gateway = gateway(&self.backend_addrs(), Some(self.jwks.addr()), None);
        self.retry_admin(1, Method::PUT, "/v1/config?wait=all", Some(&gateway))
            .await
            .context("committing the gateway configuration on node 1")?;
        for id in 2..=self.nodes.len() as u64 {
            if id > 2 {
                let answer = self
                    .retry_admin(1, Method::POST, "/v1/cluster/tokens?ttl=10m", None)
                    .await?;
                token = answer["token"]
                    .as_str()
                    .context("POST /v1/cluster/tokens answered without a token")?
                    .to_owned();
            }
            self.hold(id).await?;
            self.spawn(id, &["cluster", "join"], Some(&token))?;
            self.wait_ready(id).await?;
        }
        // Joined nodes are promoted to voters once caught up.
        loop {
            let (status, view) = self
                .client
                .get_json(self.node(1).admin, "/v1/cluster", SETUP_CALL)
                .await?;
            let members = view["members"].as_array().cloned().unwrap_or_default();
            if status == 200
                && members.len() == self.nodes.len()
                && members.iter().all(|m| m["role"] == "voter")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for id in 1..=self.nodes.len() as u64 {
            self.wait_ready(id).await?;
        }
        Ok(())
    }

    /// Starts the process that mounts node `id`'s tmpfs and holds its mount
    /// namespace, and waits until the tmpfs is mounted.
    async fn hold(&mut self, id: u64) -> anyhow::Result<()> {
        let Some(size) = self.wrap.tmpfs.clone() else {
            return Ok(());
        };
        let node = self.node_mut(id);
        if node.holder.is_some() {
            return Ok(());
        }
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", TMPFS_SCRIPT])
            .env("CHAOS_DATA", &node.data)
            .env("CHAOS_TMPFS", &size)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting unshare -m for a tmpfs data dir")?;
        let pid = holder.id().context("the namespace holder exited at once")?;
        let mounted = PathBuf::from(format!("/proc/{pid}/root"))
            .join(node.data.strip_prefix("/").unwrap_or(&node.data))
            .join(".chaos-mounted");
        for _ in 0..100 {
            if mounted.exists() {
                node.holder = Some(holder);
                return Ok(());
            }
            if let Ok(Some(status)) = holder.try_wait() {
                bail!("mounting node {id}'s tmpfs data dir failed ({status})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("node {id}'s tmpfs data dir was not mounted within 5s")
    }

    fn spawn(&mut self, id: u64, command: &[&str], token: Option<&str>) -> anyhow::Result<()> {
        let bin = self.bin.clone();
        let wrap = self.wrap.clone();
        let node = self.node_mut(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        // `ip netns exec` and nsenter exec, so the PID is the node's.
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(namespace) = node.dialer.namespace() {
            argv.extend(["ip", "netns", "exec", namespace].map(OsString::from));
        }
        match (&wrap.tmpfs, node.holder.as_ref().and_then(Child::id)) {
            (None, _) => {}
            (Some(_), Some(holder)) => {
                argv.extend(["nsenter", "-t", &holder.to_string(), "-m", "--"].map(OsString::from))
            }
            (Some(_), None) => bail!("node {id}'s mount namespace holder is gone"),
        }
        argv.push(bin.as_os_str().to_owned());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .args(command)
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(token) = token {
            cmd.env("MERIDIAN_JOIN_TOKEN", token);
        }
        if let Some(lib) = &wrap.faketime {
            // Wall clock only: faking the monotonic clock hangs tokio
            // (TESTING-NOTES.md §2.5).
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", faketime_file(&node.config))
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting node {id}: {}", bin.display()))?;
        tracing::info!(node = id, pid = child.id(), "node started");
        node.child = Some(child);
        Ok(())
    }

    /// Polls `/readyz` until 200.
    pub async fn wait_ready(&mut self, id: u64) -> anyhow::Result<()> {
        let admin = self.node(id).admin;
        let client = self.client.clone();
        loop {
            if let Ok(answer) = client
                .call(Method::GET, admin, "/readyz", &[], None, SETUP_CALL)
                .await
                && answer.status == 200
            {
                return Ok(());
            }
            if !self.node_mut(id).running() {
                bail!(
                    "node {id} exited during start; see {}",
                    self.node(id).log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn retry_admin(
        &mut self,
        id: u64,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let admin = self.node(id).admin;
        let client = self.client.clone();
        let body = body.map(|b| b.to_string().into_bytes());
        loop {
            match client
                .call(method.clone(), admin, path, &[], body.clone(), SETUP_CALL)
                .await
            {
                Ok(answer) if answer.status == 200 => return Ok(answer.json()),
                Ok(answer) if answer.status != 503 => bail!(
                    "{method} {path} on node {id}: {} {}",
                    answer.status,
                    answer.message()
                ),
                _ => {}
            }
            if !self.node_mut(id).running() {
                bail!(
                    "node {id} exited during start; see {}",
                    self.node(id).log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A client that reaches every node (admin, proxy, anything listening
    /// in its region), and with namespaces also the hub: each address is
    /// dialled from inside its own namespace, so a region cut off at the
    /// hub is still reached, as its own users would reach it.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How the nodes are networked.
    pub fn network(&self) -> Network {
        self.wrap.network
    }

    /// The network namespaces, with [`Network::Namespaces`].
    pub fn net(&self) -> Option<&Net> {
        self.net.as_ref()
    }

    /// Commits `gateway` (a gateway configuration, e.g. [`gateway`] with
    /// changes) through node 1's admin API and waits until every node
    /// serves it (`PUT /v1/config?wait=all`); returns the API's answer.
    pub async fn commit_gateway(&mut self, gateway: &Value) -> anyhow::Result<Value> {
        tokio::time::timeout(
            COMMIT_TIMEOUT,
            self.retry_admin(1, Method::PUT, "/v1/config?wait=all", Some(gateway)),
        )
        .await
        .with_context(|| {
            format!("committing a gateway configuration took over {COMMIT_TIMEOUT:?}")
        })?
    }

    /// Node `id`.
    ///
    /// # Panics
    ///
    /// When `id` is not a node of this cluster (ids come from the cluster).
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Whether node `id`'s process runs.
    pub fn running(&mut self, id: u64) -> bool {
        self.node_mut(id).running()
    }

    /// The demo backends' addresses, in node order.
    pub fn backend_addrs(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(Backend::addr).collect()
    }

    /// The JWT issuer's JWKS endpoint.
    pub fn jwks(&self) -> &Backend {
        &self.jwks
    }

    /// The JWT issuer's keys.
    pub fn idp(&self) -> &Idp {
        &self.idp
    }

    /// Node `id`'s region's backend.
    pub fn backend(&self, id: u64) -> &Backend {
        &self.backends[(id - 1) as usize]
    }

    /// `kill -9` node `id` (its own process, by PID) and reaps it.
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<u32> {
        let node = self.node_mut(id);
        let Some(mut child) = node.child.take() else {
            bail!("node {id} is not running");
        };
        let pid = child.id().unwrap_or(0);
        child
            .start_kill()
            .with_context(|| format!("kill -9 node {id} (pid {pid})"))?;
        let _ = child.wait().await;
        tracing::info!(node = id, pid, "node killed");
        Ok(pid)
    }

    /// Restarts node `id` on its data dir (`meridian node run`).
    pub fn restart(&mut self, id: u64) -> anyhow::Result<u32> {
        if self.node_mut(id).running() {
            bail!("node {id} is already running");
        }
        self.spawn(id, &["node", "run"], None)?;
        Ok(self.node(id).pid().unwrap_or(0))
    }

    /// Sets node `id`'s wall-clock offset to `seconds` (needs a cluster
    /// started with libfaketime).
    pub fn skew(&self, id: u64, seconds: i64) -> anyhow::Result<()> {
        if self.wrap.faketime.is_none() {
            bail!("clock faults need the cluster started under libfaketime");
        }
        let file = faketime_file(&self.node(id).config);
        std::fs::write(&file, format!("{seconds:+}\n"))
            .with_context(|| format!("writing {}", file.display()))
    }

    /// How far node `id`'s wall clock is from ours, read from the `Date`
    /// header of its admin API (whole seconds).
    pub async fn clock_offset(&self, id: u64) -> anyhow::Result<i64> {
        let answer = self
            .client
            .call(
                Method::GET,
                self.node(id).admin,
                "/healthz",
                &[],
                None,
                SETUP_CALL,
            )
            .await?;
        let date = answer
            .headers
            .get(http::header::DATE)
            .and_then(|d| d.to_str().ok())
            .context("node answered without a Date header")?;
        let theirs = httpdate::parse_http_date(date)
            .with_context(|| format!("node sent an unreadable Date header {date:?}"))?;
        let ours = std::time::SystemTime::now();
        Ok(match theirs.duration_since(ours) {
            Ok(ahead) => ahead.as_secs_f64().round() as i64,
            Err(behind) => -(behind.duration().as_secs_f64().round() as i64),
        })
    }

    /// Fills node `id`'s tmpfs data dir (seen through `/proc/PID/root`)
    /// until the kernel says ENOSPC; returns the bytes written.
    pub async fn fill(&self, id: u64) -> anyhow::Result<u64> {
        let file = self.filler(id)?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            use std::io::Write;
            let mut out = std::fs::File::create(&file)
                .with_context(|| format!("creating {}", file.display()))?;
            let chunk = vec![0u8; 1 << 20];
            let mut written = 0u64;
            // Bounded: the tmpfs is small; stop at 4 GiB whatever happens.
            while written < 4 << 30 {
                match out.write(&chunk) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => {
                        return Err(e).with_context(|| format!("filling {}", file.display()));
                    }
                }
            }
            let _ = out.sync_all();
            Ok(written)
        })
        .await
        .context("the filling task panicked")?
    }

    /// Frees what [`Cluster::fill`] wrote.
    pub fn free(&self, id: u64) -> anyhow::Result<()> {
        let file = self.filler(id)?;
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))
    }

    fn filler(&self, id: u64) -> anyhow::Result<PathBuf> {
        if self.wrap.tmpfs.is_none() {
            bail!("disk-full faults need the cluster started with tmpfs data dirs");
        }
        let node = self.node(id);
        let pid = node
            .holder
            .as_ref()
            .and_then(Child::id)
            .with_context(|| format!("node {id} has no tmpfs data dir"))?;
        let inside = node.data.strip_prefix("/").unwrap_or(&node.data);
        Ok(PathBuf::from(format!("/proc/{pid}/root"))
            .join(inside)
            .join(FILLER))
    }

    /// Cuts node `id`'s peer traffic: `Both`, only what it sends
    /// (`Outbound`), or only what it receives (`Inbound`). With namespaces,
    /// `Both` sets the region's link down at the hub, which cuts everything
    /// it sends and receives, not only peer traffic; one-way cuts are made
    /// on the relay links, as on loopback. Returns what was cut, for a
    /// timeline.
    pub fn partition(&self, id: u64, cut: Cut) -> anyhow::Result<String> {
        if let Some(net) = &self.net
            && cut == Cut::Both
        {
            net.cut(id)?;
            return Ok(format!(
                "cut region {id}'s link at the hub (ip -n {} link set v{id} down): everything it sends and receives",
                net.hub()
            ));
        }
        for ((from, to), link) in &self.links {
            // On link a→b, forward is a's datagrams, backward is b's.
            let direction = match (cut, *from == id, *to == id) {
                (Cut::Both, true, _) | (Cut::Both, _, true) => Some(Direction::Both),
                (Cut::Outbound, true, _) => Some(Direction::Forward),
                (Cut::Outbound, _, true) => Some(Direction::Backward),
                (Cut::Inbound, true, _) => Some(Direction::Backward),
                (Cut::Inbound, _, true) => Some(Direction::Forward),
                _ => None,
            };
            if let Some(direction) = direction {
                link.partition(direction);
            }
        }
        Ok(format!("cut node {id}'s peer links ({cut:?})"))
    }

    /// Reconnects node `id`'s peer links (and its region's link, with
    /// namespaces).
    pub fn heal(&self, id: u64) -> anyhow::Result<()> {
        if let Some(net) = &self.net {
            net.heal(id)?;
        }
        for ((from, to), link) in &self.links {
            if *from == id || *to == id {
                link.heal();
            }
        }
        Ok(())
    }

    /// Sets the parameters of every peer link, both directions.
    pub fn shape(&self, params: &LinkParams) {
        for link in self.links.values() {
            link.set(params.clone());
        }
    }

    /// Datagrams the relay dropped (loss, cuts, full queues), over all links.
    pub fn relay_drops(&self) -> u64 {
        self.links
            .values()
            .map(|l| {
                let c = l.counters();
                c.forward.dropped + c.backward.dropped
            })
            .sum()
    }

    /// Kills every node (SIGKILL by PID), waits for them, stops the relay
    /// and the backends, then deletes the namespaces.
    pub async fn shutdown(mut self) {
        for node in &mut self.nodes {
            for mut child in [node.child.take(), node.holder.take()]
                .into_iter()
                .flatten()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        let links = std::mem::take(&mut self.links);
        drop(links);
        for backend in std::mem::take(&mut self.backends) {
            backend.shutdown().await;
        }
        let Self {
            relay, jwks, net, ..
        } = self;
        jwks.shutdown().await;
        relay.shutdown().await;
        drop(net);
    }
}

/// How long a region's `echo` traffic stays with the fallback region after
/// its own backend is healthy again.
pub const FALLBACK_RETURN_AFTER: &str = "2s";

/// The gateway configuration of a run: the `echo` upstream, which in each
/// region is that region's own backend (`region_targets`) and falls back to
/// the other regions in node order (back [`FALLBACK_RETURN_AFTER`] after
/// the region's backend is healthy again), the `echo` route, the key-protected `private` route,
/// the `global` route with a global fixed-window limit of [`GLOBAL_LIMIT`]
/// per 10 s, consumer `chaos`, with `jwks` the JWT issuer [`idp::ISSUER`]
/// and the `jwt` route that needs its tokens, and optionally one marker
/// route `chaos-…` whose path is `/chaos/<name>`.
pub fn gateway(backends: &[SocketAddr], jwks: Option<SocketAddr>, marker: Option<&str>) -> Value {
    let regions = &REGIONS[..backends.len().min(REGIONS.len())];
    let local: serde_json::Map<String, Value> = regions
        .iter()
        .zip(backends)
        .map(|(region, backend)| ((*region).to_owned(), json!([backend.to_string()])))
        .collect();
    let mut routes = vec![
        json!({"name": "echo", "match": {"path_prefix": "/echo"}, "rewrite": {"strip_prefix": "/echo"}, "upstream": "echo"}),
        json!({"name": "private", "match": {"path_prefix": "/private"}, "rewrite": {"strip_prefix": "/private"}, "auth": ["api_key"], "upstream": "echo"}),
        json!({"name": "global", "match": {"path_prefix": GLOBAL_PREFIX}, "rewrite": {"strip_prefix": GLOBAL_PREFIX}, "upstream": "echo",
               "limits": [{"name": "chaos-global", "key": "route", "algorithm": "fixed_window", "limit": GLOBAL_LIMIT, "per": format!("{}s", GLOBAL_WINDOW_MS / 1000), "scope": "global"}]}),
    ];
    let mut auth = json!({});
    if let Some(jwks) = jwks {
        auth = json!({"jwt": [{
            "name": "chaos-idp",
            "issuer": idp::ISSUER,
            "jwks_uri": format!("http://{jwks}/jwks"),
            "audiences": [idp::AUDIENCE],
            "jwks": {"min_refresh": "1s", "max_refresh": "2s", "max_stale": "1h", "unknown_kid_interval": "1s", "timeout": "500ms"},
        }]});
        routes.push(json!({"name": "jwt", "match": {"path_prefix": JWT_PREFIX}, "rewrite": {"strip_prefix": JWT_PREFIX}, "auth": ["jwt"], "upstream": "echo"}));
    }
    if let Some(name) = marker {
        routes.push(
            json!({"name": name, "match": {"path": format!("/chaos/{name}")}, "upstream": "echo"}),
        );
    }
    json!({
        "upstreams": {
            "echo": {
                "targets": [],
                "region_targets": local,
                "fallback": {"regions": regions, "return_after": FALLBACK_RETURN_AFTER},
                "health": {"path": "/health", "interval": "1s", "timeout": "500ms"},
                "retries": {"attempts": 2},
            }
        },
        "routes": routes,
        "consumers": [{"name": CONSUMER}],
        "auth": auth,
    })
}

/// The libfaketime offset file of the node whose config is `config`.
fn faketime_file(config: &Path) -> PathBuf {
    config.with_extension("faketime")
}

/// The node.toml of `node`; `peers` are its relay links.
fn node_toml(node: &Node, data: &Path, peers: &BTreeMap<u64, SocketAddr>) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut text = format!(
        "# Written by the chaos harness.\nid = {}\nregion = {}\ndata-dir = {}\n\n[listen]\nproxy = \"{}\"\nadmin = \"{}\"\npeer = \"{}\"\n\n[log]\naccess-log = \"off\"\nlevel = \"warn\"\n\n[raft]\nheartbeat = \"{HEARTBEAT}\"\nelection-timeout-min = \"{ELECTION_MIN}\"\nelection-timeout-max = \"{ELECTION_MAX}\"\n\n[shutdown]\ngrace-period = \"1s\"\ndrain-delay = \"0s\"\n",
        node.id,
        quote(&node.region),
        quote(&data.display().to_string()),
        node.proxy,
        node.admin,
        node.peer,
    );
    text.push_str("\n# Every peer is dialled through its chaos relay link.\n[peers]\n");
    for (id, link) in peers {
        text.push_str(&format!("{id} = \"{link}\"\n"));
    }
    text
}

/// `text` (a node.toml) with `extra` merged over it: tables key by key,
/// any other value replacing. Unchanged without `extra`.
fn with_extra(text: String, extra: Option<&toml::Table>) -> anyhow::Result<String> {
    let Some(extra) = extra.filter(|e| !e.is_empty()) else {
        return Ok(text);
    };
    let mut table: toml::Table = text.parse().context("the harness's own node.toml")?;
    merge(&mut table, extra);
    Ok(format!(
        "# Written by the chaos harness, with the test's additions.\n{}",
        toml::to_string(&table).context("writing node.toml")?
    ))
}

/// Merges `from` into `into`: tables key by key, other values replace.
fn merge(into: &mut toml::Table, from: &toml::Table) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => merge(mine, theirs),
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A loopback TCP port for a node, free a moment ago (see [`free_port`]).
fn free_tcp(taken: &mut BTreeSet<u16>) -> anyhow::Result<SocketAddr> {
    free_port(taken, |at| TcpListener::bind(at).map(drop)).context("finding a free TCP port")
}

/// A loopback UDP port for a node, free a moment ago (see [`free_port`]).
fn free_udp(taken: &mut BTreeSet<u16>) -> anyhow::Result<SocketAddr> {
    free_port(taken, |at| UdpSocket::bind(at).map(drop)).context("finding a free UDP port")
}

/// A loopback port that `bind` could take a moment ago, drawn at random
/// from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
/// A port from `bind(0)` comes from that range, where the relay's links and
/// every connection made later take theirs: one of them could get the port
/// again before the node binds it (seen once in CI: node 1 exited with
/// "cannot bind the peer endpoint ... Address already in use"). A port in
/// `taken` (one this cluster chose already) is not chosen again.
fn free_port(
    taken: &mut BTreeSet<u16>,
    bind: impl Fn(SocketAddr) -> std::io::Result<()>,
) -> anyhow::Result<SocketAddr> {
    const LOWEST: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    anyhow::ensure!(
        ephemeral > LOWEST,
        "found no free port below the ephemeral range ({ephemeral})"
    );
    let mut last = None;
    for _ in 0..64 {
        let port = fastrand::u16(LOWEST..ephemeral);
        // A port that fails to bind is taken too: not worth a second try.
        if !taken.insert(port) {
            continue;
        }
        let at = SocketAddr::from(([127, 0, 0, 1], port));
        match bind(at) {
            Ok(()) => return Ok(at),
            Err(error) => last = Some(error),
        }
    }
    let why = format!("64 ports between {LOWEST} and {ephemeral} were all taken");
    match last {
        Some(error) => Err(error).context(why),
        None => bail!(why),
    }
}

#[cfg(test)]
mod tests;
