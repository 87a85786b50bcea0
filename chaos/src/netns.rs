//! Network namespaces for region tests: one per region, joined at a hub.
//!
//! [`Net::create`] makes a hub namespace holding a bridge `br0` at
//! [`HUB_ADDRESS`] (10.77.0.254, where region-neutral services such as the
//! JWKS endpoint live), and for each region `N` a namespace whose `eth0`
//! has 10.77.0.N/24 ([`address`]), on a veth whose other end, `vN`, is a
//! port of the bridge. Every namespace has `lo` up. [`Net::cut`] sets `vN`
//! down in the hub: the region's packets are dropped silently both ways
//! while its own interfaces stay up, as in a real partition
//! (TESTING-NOTES.md §2.2); [`Net::heal`] sets it up again.
//!
//! Nothing is added to the test's own (root) namespace. Each [`Net`] has its
//! own bridge, so two at once (parallel test binaries) may both use
//! 10.77.0.0/24 without meeting. Names carry a per-process prefix,
//! `mrd<pid>-<k>-hub`, `mrd<pid>-<k>-r1`, …; dropping the [`Net`] deletes
//! every namespace it created, and the first [`Net::create`] of a process
//! deletes leftovers of harness processes that are gone (or that had this
//! pid before). Deleting a namespace only removes its name: it lives on
//! until the last process in it exits, so kill the nodes first.
//!
//! The test process itself stays in its own namespace. A socket belongs to
//! the namespace it was created in, so a [`Dialer`] creates sockets on a
//! short-lived thread that first joins the namespace (`setns(2)` on
//! `/run/netns/NAME`) and hands them back to tokio; they keep working from
//! any thread. Node processes run under `ip netns exec`.
//!
//! Needs root and iproute2; [`Net::unavailable`] says why not.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

/// The hub's address on the bridge.
pub const HUB_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);

/// Every namespace name of the harness starts with this, then the pid.
const PREFIX: &str = "mrd";

/// At most this many regions (addresses 10.77.0.1 to .200).
pub const MAX_REGIONS: u64 = 200;

/// Region `region`'s address (1-based), on every [`Net`].
///
/// # Panics
///
/// When `region` is 0 or above [`MAX_REGIONS`].
pub fn address(region: u64) -> Ipv4Addr {
    assert!(
        (1..=MAX_REGIONS).contains(&region),
        "region {region} is not in 1..={MAX_REGIONS}"
    );
    Ipv4Addr::new(10, 77, 0, region as u8)
}

/// Whether `ip` is one of the namespaces' addresses (10.77.0.0/24), which
/// only a [`Dialer`] of a [`Net`] reaches: from the test's own namespace,
/// such an address would leave the machine by its default route.
pub fn inside(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [10, 77, 0])
}

/// [`Net`]s alive in this process.
static LIVE: AtomicU64 = AtomicU64::new(0);

/// Whether dialling `ip` from the test's own namespace is refused: while
/// this process has a [`Net`], its addresses are only dialled through a
/// [`Dialer`] (a deployment under test elsewhere is not affected).
pub(crate) fn refused_here(ip: IpAddr) -> bool {
    inside(ip) && LIVE.load(Ordering::Relaxed) > 0
}

/// Whether this process runs as root (uid 0, from /proc/self/status).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Serialises creation, so that the first one's clean-up of leftovers never
/// meets a sibling's namespaces half made; `true` once it has run.
static CREATING: Mutex<bool> = Mutex::new(false);

/// The `k` of the next [`Net`] of this process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A hub and one namespace per region. Dropping it deletes them.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    regions: u64,
    /// What was made, in order; deleted in reverse.
    created: Vec<String>,
}

// === impl Net ===

impl Net {
    /// Why namespaces cannot be made here (not root, no `ip`), or `None`.
    pub fn unavailable() -> Option<String> {
        if !is_root() {
            return Some("network namespaces need root (uid 0)".into());
        }
        match Command::new("ip").arg("-V").output() {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "`ip -V` failed ({}): is iproute2 installed?",
                out.status
            )),
            Err(error) => Some(format!("`ip` (iproute2) cannot run: {error}")),
        }
    }

    /// Makes the hub and `regions` region namespaces, wired and up.
    pub fn create(regions: u64) -> anyhow::Result<Self> {
        if !(1..=MAX_REGIONS).contains(&regions) {
            bail!("a Net has 1 to {MAX_REGIONS} regions, not {regions}");
        }
        if let Some(reason) = Self::unavailable() {
            bail!("{reason}");
        }
        let mut cleaned = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        if !*cleaned {
            clean_leftovers(pid);
            *cleaned = true;
        }
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        // Dropped on any error below, deleting what was made so far.
        LIVE.fetch_add(1, Ordering::Relaxed);
        let mut net = Self {
            prefix: format!("{PREFIX}{pid}-{k}"),
            regions,
            created: Vec::new(),
        };
        let hub = net.hub();
        net.add(&hub)?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{HUB_ADDRESS}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for region in 1..=regions {
            let ns = net.namespace(region);
            net.add(&ns)?;
            let port = format!("v{region}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", address(region)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        tracing::info!(prefix = %net.prefix, regions, "network namespaces created");
        Ok(net)
    }

    fn add(&mut self, name: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        Ok(())
    }

    /// How many regions it has.
    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// The hub namespace's name.
    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// Region `region`'s namespace name (1-based).
    pub fn namespace(&self, region: u64) -> String {
        format!("{}-r{region}", self.prefix)
    }

    /// Region `region`'s address.
    ///
    /// # Panics
    ///
    /// When the region is not one of this [`Net`]'s.
    pub fn address(&self, region: u64) -> IpAddr {
        self.check(region);
        IpAddr::V4(address(region))
    }

    /// Makes sockets inside region `region`'s namespace.
    ///
    /// # Panics
    ///
    /// When the region is not one of this [`Net`]'s.
    pub fn dialer(&self, region: u64) -> Dialer {
        self.check(region);
        Dialer::Namespace(self.namespace(region).into())
    }

    /// Makes sockets inside the hub namespace (at [`HUB_ADDRESS`]).
    pub fn hub_dialer(&self) -> Dialer {
        Dialer::Namespace(self.hub().into())
    }

    /// Cuts region `region` off at the hub (`ip -n HUB link set vN down`).
    pub fn cut(&self, region: u64) -> anyhow::Result<()> {
        self.link(region, "down")
    }

    /// Reconnects region `region` at the hub (`link set vN up`).
    pub fn heal(&self, region: u64) -> anyhow::Result<()> {
        self.link(region, "up")
    }

    fn link(&self, region: u64, state: &str) -> anyhow::Result<()> {
        self.check(region);
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            &format!("v{region}"),
            state,
        ])?;
        tracing::info!(region, state, "region link at the hub");
        Ok(())
    }

    fn check(&self, region: u64) {
        assert!(
            (1..=self.regions).contains(&region),
            "region {region} is not one of this Net's 1..={}",
            self.regions
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            delete(name);
        }
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes namespace `name`, saying so when processes still run in it.
fn delete(name: &str) {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if !pids.is_empty() {
            tracing::warn!(
                namespace = name,
                ?pids,
                "processes still run in a namespace being deleted"
            );
        }
    }
    if let Err(error) = ip(&["netns", "del", name]) {
        tracing::warn!(namespace = name, error = %format!("{error:#}"), "cannot delete a namespace");
    }
}

/// Deletes the harness's namespaces of processes that are gone, and of an
/// earlier process that had this `pid`.
fn clean_leftovers(pid: u32) {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    let names: BTreeSet<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in names {
        let Some(owner) = owner(name) else { continue };
        let gone = !std::path::Path::new(&format!("/proc/{owner}")).exists();
        if owner == pid || gone {
            tracing::warn!(namespace = name, owner, "deleting a leftover namespace");
            delete(name);
        }
    }
}

/// The pid in a harness namespace name `mrd<pid>-…`.
fn owner(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix(PREFIX)?.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Where the harness makes a socket: in its own network namespace
/// (loopback runs), or in a named one. It dials from there and binds there;
/// the socket stays in that namespace wherever it is used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dialer {
    /// The test process's own namespace.
    #[default]
    Here,
    /// The namespace `/run/netns/NAME`.
    Namespace(Arc<str>),
}

// === impl Dialer ===

impl Dialer {
    /// The namespace's name, unless [`Dialer::Here`].
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::Here => None,
            Self::Namespace(name) => Some(name),
        }
    }

    /// Runs `make` where this dialer's sockets are made: on this thread, or
    /// on a new thread that has joined the namespace (it blocks the caller
    /// for as long as that takes, about a tenth of a millisecond).
    pub fn make<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let Self::Namespace(name) = self else {
            return make();
        };
        let path = format!("/run/netns/{name}");
        std::thread::Builder::new()
            .name("chaos-netns".into())
            .spawn(move || {
                let file = std::fs::File::open(&path)
                    .map_err(|e| io::Error::new(e.kind(), format!("opening {path}: {e}")))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io::Error::other(format!("setns {path}: {e}")))?;
                make()
            })?
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
    }

    /// A TCP listener on `addr`.
    pub async fn bind_tcp(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        if let Self::Here = self {
            return tokio::net::TcpListener::bind(addr).await;
        }
        let listener = self.make(move || std::net::TcpListener::bind(addr))?;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// A UDP socket on `addr`.
    pub async fn bind_udp(&self, addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        if let Self::Here = self {
            return tokio::net::UdpSocket::bind(addr).await;
        }
        let socket = self.make(move || std::net::UdpSocket::bind(addr))?;
        socket.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(socket)
    }

    /// A TCP connection to `addr`, within `timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<tokio::net::TcpStream> {
        if *self == Self::Here && refused_here(addr.ip()) {
            return Err(outside(addr));
        }
        // tokio's TcpSocket needs no runtime until it connects.
        let socket = self.make(move || match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        })?;
        tokio::time::timeout(timeout, socket.connect(addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out after {timeout:?}"),
                )
            })?
    }
}

/// The error for a namespace address dialled from the test's namespace.
pub(crate) fn outside(addr: SocketAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{addr} is inside the network namespaces: dial it through their Dialer (Cluster::client)"
        ),
    )
}

#[cfg(test)]
mod tests;
