//! Asking a node's DNS responder, from wherever the node lives: a hickory
//! resolver whose UDP and TCP sockets a [`Dialer`] makes (so, inside a
//! region's network namespace), pointed at one server, without a cache.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_resolver::net::runtime::{RuntimeProvider, TokioHandle, TokioTime};

use crate::netns::Dialer;

/// A resolver that asks only `server` (UDP, then TCP), each query within a
/// second, with no cache: every lookup reaches the responder.
pub fn resolver(dialer: &Dialer, server: SocketAddr) -> anyhow::Result<Resolver<Provider>> {
    if *dialer == Dialer::Here && crate::netns::refused_here(server.ip()) {
        return Err(crate::netns::outside(server).into());
    }
    let mut config = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut config.connections {
        connection.port = server.port();
    }
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.timeout = Duration::from_secs(1);
    options.attempts = 1;
    Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![config]),
        Provider {
            handle: TokioHandle::default(),
            dialer: dialer.clone(),
        },
    )
    .with_options(options)
    .build()
    .with_context(|| format!("a resolver for {server}"))
}

/// The addresses `name` resolves to, sorted; empty when the name exists
/// without addresses (every region drained).
pub async fn lookup(resolver: &Resolver<Provider>, name: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = match resolver.lookup_ip(name).await {
        Ok(lookup) => lookup.iter().collect(),
        Err(error) if error.is_no_records_found() && !error.is_nx_domain() => Vec::new(),
        Err(error) => return Err(error).with_context(|| format!("looking up {name}")),
    };
    ips.sort();
    Ok(ips)
}

/// hickory's tokio runtime, with sockets made by a [`Dialer`].
#[derive(Clone)]
pub struct Provider {
    handle: TokioHandle,
    dialer: Dialer,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("dialer", &self.dialer)
            .finish()
    }
}

// === impl Provider ===

impl RuntimeProvider for Provider {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = tokio::net::UdpSocket;
    type Tcp = AsyncIoTokioAsStd<tokio::net::TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.handle.clone()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        _bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Tcp>>>> {
        let dialer = self.dialer.clone();
        Box::pin(async move {
            let stream = dialer
                .connect(server_addr, timeout.unwrap_or(Duration::from_secs(5)))
                .await?;
            stream.set_nodelay(true)?;
            Ok(AsyncIoTokioAsStd(stream))
        })
    }

    fn bind_udp(
        &self,
        local_addr: SocketAddr,
        _server_addr: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Udp>>>> {
        let dialer = self.dialer.clone();
        Box::pin(async move { dialer.bind_udp(local_addr).await })
    }
}
