//! Building and running a node: bind the listeners, start the background
//! tasks, serve until the shutdown trigger fires, then stop in the order
//! documented in [`crate::shutdown`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raft::model::state::config_text;
use raft::model::{Command, ConfigErrors, GatewayConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::access_log::{AccessLog, Writer};
use crate::cluster::{self, Cluster, Written};
use crate::config::{AdminTls, Config};
use crate::metrics::Metrics;
use crate::pipeline::{self, Pipeline};
use crate::regions::RegionHealth;
use crate::snapshot;
use crate::{Shared, admin, server};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener address is unavailable.
    #[error("cannot listen on {address} ({listener})")]
    Bind {
        /// Which listener.
        listener: &'static str,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The access log cannot be opened.
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    /// The gateway configuration file cannot be read.
    #[error("cannot read gateway configuration {path}")]
    ReadGateway {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The gateway configuration breaks rules.
    #[error("gateway configuration {path}:\n{errors}")]
    InvalidGateway {
        /// The file.
        path: PathBuf,
        /// Every violated rule.
        errors: ConfigErrors,
    },
    /// The cluster side could not start.
    #[error(transparent)]
    Cluster(Box<cluster::StartError>),
    /// The configuration could not be committed.
    #[error("cannot commit the gateway configuration: {0}")]
    Write(#[from] cluster::WriteError),
    /// The peer socket could not be bound.
    #[error(transparent)]
    Peer(#[from] crate::peer::Error),
    /// Joining the cluster failed.
    #[error(transparent)]
    Join(#[from] crate::join::Error),
    /// The TLS certificates or CAs could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The DNS responder's address is unavailable.
    #[error("cannot listen on {address} (dns): {source}")]
    BindDns {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the request handlers share: the node's services, the snapshot in
/// force and the pipeline.
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
    pub(crate) snapshots: snapshot::Handle,
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) regions: Arc<RegionHealth>,
    pipeline: Pipeline,
}

/// The proxy listeners' handler: the gateway, and the
/// `Strict-Transport-Security` value a TLS listener adds to answers that
/// carry none.
#[derive(Clone)]
struct Proxying {
    gateway: Arc<Gateway>,
    hsts: Option<http::HeaderValue>,
}

impl server::Handler for Proxying {
    async fn call(
        &self,
        request: Box<pipeline::Request>,
        peer: crate::text::Peer,
    ) -> Box<pipeline::Response> {
        let mut response = self.gateway.serve(request, peer).await;
        if let Some(hsts) = &self.hsts {
            crate::body::fields_mut(&mut response)
                .entry(http::header::STRICT_TRANSPORT_SECURITY)
                .or_insert_with(|| hsts.clone());
        }
        response
    }
}

impl Gateway {
    /// Serves one proxied request.
    pub async fn serve(
        &self,
        req: Box<pipeline::Request>,
        peer: crate::text::Peer,
    ) -> Box<pipeline::Response> {
        let snapshot = self.snapshots.load();
        self.pipeline.handle(snapshot, peer, req).await
    }

    /// Serves a request that `peer`, a node of another region, forwarded
    /// ([`crate::proxy::fallback`]).
    pub async fn serve_forwarded(
        &self,
        peer: &crate::pki::PeerIdentity,
        req: pipeline::Request,
    ) -> pipeline::Response {
        let snapshot = self.snapshots.load();
        self.pipeline
            .proxy()
            .serve_forwarded(&snapshot, peer, req)
            .await
    }

    /// The node's rate limiters.
    pub fn ratelimit(&self) -> &Arc<crate::ratelimit::Registry> {
        &self.shared.ratelimit
    }

    /// The snapshot handle (to apply configurations).
    pub fn snapshots(&self) -> &snapshot::Handle {
        &self.snapshots
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The node's cluster membership.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The regions' health view.
    pub fn regions(&self) -> &Arc<RegionHealth> {
        &self.regions
    }

    /// Asks the node to drain: it reports unhealthy to GSLB and anycast at
    /// once, keeps serving for `shutdown.drain-delay`, then shuts down
    /// gracefully ([`App::run`] returns). Idempotent.
    pub fn drain(&self) {
        if !self.shared.drain.is_cancelled() {
            tracing::info!(delay = ?self.shared.config.shutdown.drain_delay, "drain requested");
            self.shared.drain.cancel();
        }
    }

    /// Whether the node is draining or shutting down.
    pub fn draining(&self) -> bool {
        self.shared.drain.is_cancelled() || self.shared.shutdown.is_cancelled()
    }

    /// `Ok` when the node is ready to take traffic (`/readyz`), else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining() {
            return Err("draining".into());
        }
        let raft = &self.shared.config.raft;
        let silence = self.cluster.leader_silence_ms();
        if raft.on_leader_loss == crate::config::LeaderLoss::NotReady
            && silence > raft.leader_loss.as_millis() as u64
        {
            return Err(format!(
                "no contact with a raft leader for {silence} ms; revocations may be stale"
            ));
        }
        if self.snapshots.load().version == 0 {
            return Err("no gateway configuration".into());
        }
        Ok(())
    }

    /// Brings the data plane up to the latest applied state: records it for
    /// the request path and compiles a new snapshot if the configuration
    /// version moved. Idempotent; called after every applied batch.
    pub fn sync(&self) {
        let applied = self.cluster.subscribe().borrow().clone();
        if let (Some(config), version) = (applied.state.gateway(), applied.state.config_version()) {
            self.snapshots.install(config, version);
        }
        self.cluster.observe(applied);
    }

    /// Commits `config` through the log (unless it is already current) and
    /// waits until this node serves it; returns the version in force.
    pub async fn commit_config(
        &self,
        config: &GatewayConfig,
        author: &str,
    ) -> Result<Written, cluster::WriteError> {
        let text = config_text(config);
        let applied = self.cluster.applied();
        if let Some(current) = applied.state.config()
            && current.text == text
        {
            return Ok(Written {
                index: applied.index(),
                outcome: raft::model::Outcome::ConfigApplied {
                    version: current.version,
                },
            });
        }
        let written = self
            .cluster
            .write(Command::ApplyConfig {
                config: text,
                author: author.to_owned(),
            })
            .await?;
        self.sync();
        Ok(written)
    }

    /// Records this node in the replicated member list if it is missing
    /// (the founding node; joined nodes are recorded by the leader).
    async fn register(&self, proxy: Option<SocketAddr>, admin: Option<SocketAddr>) {
        let cluster = &self.cluster;
        if cluster.applied().state.members.contains_key(&cluster.id) {
            return;
        }
        let listen = &self.shared.config.listen;
        let own = cluster.identity.own();
        let member = raft::model::Member {
            id: cluster.id,
            region: self.shared.config.region.clone(),
            peer: listen.advertised(cluster.plane.local_addr()),
            admin: admin.map(|a| listen.advertised(a)).unwrap_or_default(),
            proxy: proxy.map(|a| listen.advertised(a)).unwrap_or_default(),
            serial: own.map(|o| o.serial).unwrap_or_default(),
        };
        if let Err(error) = cluster.write(Command::SetMember(member)).await {
            tracing::warn!(%error, "cannot record this node in the member list yet");
        }
    }

    /// Re-reads the gateway file and commits it; a bad file changes nothing.
    pub async fn reload_file(&self) -> Result<u64, Error> {
        let Some(path) = &self.shared.config.gateway else {
            return Ok(self.snapshots.load().version);
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadGateway {
            path: path.clone(),
            source,
        })?;
        let config = GatewayConfig::parse(&text).map_err(|errors| {
            self.shared.metrics.config_reloads_failed.increment(1);
            Error::InvalidGateway {
                path: path.clone(),
                errors,
            }
        })?;
        self.commit_config(&config, &format!("file {}", path.display()))
            .await?;
        Ok(self.snapshots.load().version)
    }
}

/// A node with its listeners bound, ready to run.
pub struct App {
    gateway: Arc<Gateway>,
    /// The DNS responder's sockets, when `[dns]` has a zone.
    dns: Option<crate::dns::responder::Bound>,
    proxy: TcpListener,
    /// The HTTPS listener and its TLS, when `[tls]` has certificates.
    proxy_tls: Option<(TcpListener, Arc<crate::tls::Tls>)>,
    admin_tls: Option<Arc<crate::tls::Tls>>,
    admin: TcpListener,
    writer: Option<Writer>,
}

impl App {
    /// Binds the listeners, starts the node's cluster membership (founding a
    /// one-node cluster on a fresh data directory) and commits the gateway
    /// configuration (the given one, else the configured file, else none).
    pub async fn build(config: Config, initial: Option<GatewayConfig>) -> Result<Self, Error> {
        Self::start(config, initial, None).await
    }

    /// Joins the cluster named by `token` (unless the data directory already
    /// holds an identity, i.e. the node joined before), then starts as
    /// [`App::build`] does.
    pub async fn join(config: Config, token: &str) -> Result<Self, Error> {
        Self::start(config, None, Some(token)).await
    }

    async fn start(
        mut config: Config,
        initial: Option<GatewayConfig>,
        join: Option<&str>,
    ) -> Result<Self, Error> {
        config.limits.max_connections = raise_open_files(config.limits.max_connections);
        let metrics = Metrics::new();
        let (access_log, writer) =
            AccessLog::start(&config.log.access_log, metrics.access_log_dropped.clone())
                .map_err(Error::AccessLog)?;
        let defer_accept = config.timeouts.defer_accept;
        let bind = |listener, address| {
            server::bind(address, defer_accept).map_err(|source| Error::Bind {
                listener,
                address,
                source,
            })
        };
        let proxy = bind("proxy", config.listen.proxy)?;
        let proxy_tls = match config.tls.take() {
            Some(mut settings) => {
                let listener = bind("proxy-tls", config.listen.proxy_tls)?;
                if let Ok(bound) = listener.local_addr() {
                    config.listen.proxy_tls = bound;
                    settings.https_port.get_or_insert(bound.port());
                }
                config.tls = Some(settings.clone());
                Some((listener, settings))
            }
            None => None,
        };
        let admin = bind("admin", config.listen.admin)?;
        let dns = match &config.dns {
            Some(settings) => Some(crate::dns::responder::Bound::bind(settings.listen).map_err(
                |source| Error::BindDns {
                    address: settings.listen,
                    source,
                },
            )?),
            None => None,
        };
        let socket = crate::peer::PeerPlane::socket(config.listen.peer)?;
        if let Some(token) = join
            && !crate::pki::Identity::exists(&config.data_dir)
        {
            let local = |listener: &TcpListener| {
                listener
                    .local_addr()
                    .expect("a bound listener has an address")
            };
            let peer_port = socket.local_addr().map(|a| a.port()).unwrap_or_default();
            crate::join::join(&config, token, peer_port, local(&admin), local(&proxy)).await?;
        }
        let cluster = Cluster::start(&config, socket)
            .await
            .map_err(|e| Error::Cluster(Box::new(e)))?;
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let ratelimit = crate::ratelimit::Registry::new(
            &config.ratelimit,
            metrics.clone(),
            tasks.clone(),
            shutdown.clone(),
        );
        ratelimit.spawn_sweeper();
        cluster.set_counters(ratelimit.clone());
        crate::ratelimit::sync::spawn(
            ratelimit.clone(),
            cluster.clone(),
            tasks.clone(),
            shutdown.clone(),
        );
        let resolver = crate::dns::resolver::Resolver::new(&config.resolver);
        let regions = Arc::new(RegionHealth::new(&config.region, config.id, &config.gslb));
        cluster.set_regions(regions.clone());
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            metrics,
            access_log,
            tasks,
            shutdown,
            cluster: cluster.clone(),
            ratelimit,
            resolver,
            drain: CancellationToken::new(),
        });
        shared.tasks.spawn(
            cluster
                .plane
                .clone()
                .serve(shared.tasks.clone(), shared.shutdown.clone())
                .instrument(tracing::info_span!("peer-plane")),
        );
        let proxy_tls = match proxy_tls {
            Some((listener, settings)) => {
                let tls = crate::tls::Tls::new(settings, &shared.metrics).map_err(Error::Tls)?;
                tls.prime().await;
                Some((listener, tls))
            }
            None => None,
        };
        let admin_tls = match shared.config.admin.tls {
            AdminTls::Off => None,
            mode => {
                let settings = crate::tls::TlsSettings::admin(
                    &crate::pki::dir(&shared.config.data_dir),
                    mode == AdminTls::Mutual,
                );
                Some(crate::tls::Tls::new(settings, &shared.metrics).map_err(Error::Tls)?)
            }
        };
        let gateway = Arc::new(Gateway {
            snapshots: snapshot::Handle::new(shared.clone()),
            pipeline: pipeline::build(&shared),
            cluster,
            regions,
            shared,
        });
        gateway.sync();
        gateway
            .cluster
            .plane
            .set_forwarder(Arc::new(crate::proxy::fallback::ForwardService(
                Arc::downgrade(&gateway),
            )));
        shared_spawn(&gateway, follow_applied(gateway.clone()), "apply");
        shared_spawn(
            &gateway,
            gateway
                .cluster
                .clone()
                .seek_promotion(gateway.shared.shutdown.clone()),
            "promotion",
        );
        let committed = match initial {
            Some(config) => gateway
                .commit_config(&config, "startup")
                .await
                .map(drop)
                .map_err(Error::from),
            None => gateway.reload_file().await.map(drop),
        };
        match committed {
            Ok(()) => {}
            // A founding node must serve what it was given; a member of a
            // larger cluster keeps serving the replicated configuration.
            Err(error)
                if gateway.cluster.founded || matches!(error, Error::InvalidGateway { .. }) =>
            {
                return Err(error);
            }
            Err(error) => tracing::warn!(%error, "the startup configuration was not committed"),
        }
        gateway
            .register(proxy.local_addr().ok(), admin.local_addr().ok())
            .await;
        Ok(Self {
            gateway,
            dns,
            proxy,
            proxy_tls,
            admin,
            admin_tls,
            writer,
        })
    }

    /// The bound proxy address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound HTTPS proxy address, when TLS is configured.
    pub fn proxy_tls_addr(&self) -> Option<SocketAddr> {
        self.proxy_tls
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound DNS responder address (UDP and TCP), when `[dns]` has a zone.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().and_then(|bound| bound.local_addr().ok())
    }

    /// The request handlers' shared state.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// Serves until `shutdown` resolves, then drains and stops.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            gateway,
            dns,
            proxy,
            proxy_tls,
            admin,
            admin_tls,
            writer,
        } = self;
        let shared = gateway.shared.clone();
        let config = shared.config.clone();
        let bound = |listener: &TcpListener| {
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        };
        let (proxy_addr, admin_addr) = (bound(&proxy), bound(&admin));
        let grace = config.shutdown.grace_period;
        let servers = TaskTracker::new();
        let proxy_settings = server::Settings::proxy(&config, &shared.metrics);
        let handler = Proxying {
            gateway: gateway.clone(),
            hsts: None,
        };
        // Not instrumented: entering a span at each poll of the accept
        // loop costs every new connection, and its events name the
        // listener themselves.
        servers.spawn(server::serve(
            proxy,
            proxy_settings,
            handler,
            shared.shutdown.clone(),
            grace,
        ));
        if let Some((listener, tls)) = proxy_tls {
            let settings = server::Settings::proxy_tls(&config, &shared.metrics, tls.clone());
            let handler = Proxying {
                gateway: gateway.clone(),
                hsts: tls.settings().hsts.clone(),
            };
            tracing::info!(address = %bound(&listener), "HTTPS proxy listener");
            servers.spawn(server::serve(
                listener,
                settings,
                handler,
                shared.shutdown.clone(),
                grace,
            ));
            shared.tasks.spawn(
                tls.watch(shared.shutdown.clone())
                    .instrument(tracing::info_span!("tls-reload")),
            );
        }
        let handler = {
            let gateway = gateway.clone();
            move |req: Box<_>, peer| {
                let gateway = gateway.clone();
                async move { Box::new(admin::handle(gateway, *req, peer).await) }
            }
        };
        servers.spawn(server::serve(
            admin,
            server::Settings::admin(&config, admin_tls),
            handler,
            shared.shutdown.clone(),
            grace,
        ));
        shared
            .tasks
            .spawn(upkeep(shared.clone()).instrument(tracing::info_span!("upkeep")));
        shared.tasks.spawn(
            crate::regions::gossip::run(gateway.clone()).instrument(tracing::info_span!("gslb")),
        );
        if let Some(settings) = config.anycast.clone() {
            shared.tasks.spawn(
                crate::regions::anycast::run(gateway.clone(), settings)
                    .instrument(tracing::info_span!("anycast")),
            );
        }
        if let (Some(bound), Some(settings)) = (dns, &config.dns) {
            shared.tasks.spawn(
                crate::dns::responder::serve(
                    bound,
                    settings.zone.clone(),
                    gateway.regions.clone(),
                    shared.metrics.clone(),
                    shared.shutdown.clone(),
                )
                .instrument(tracing::info_span!("dns")),
            );
        }
        if config.gateway.is_some() {
            shared
                .tasks
                .spawn(reload_on_sighup(gateway.clone()).instrument(tracing::info_span!("reload")));
        }
        tracing::info!(
            proxy = %proxy_addr,
            admin = %admin_addr,
            node = config.id,
            region = %config.region,
            "node running"
        );

        let mut shutdown = std::pin::pin!(shutdown);
        let drained = tokio::select! {
            () = shutdown.as_mut() => false,
            () = shared.drain.cancelled() => true,
        };
        if drained {
            // GSLB and anycast already see the node as unhealthy (they
            // watch the same token); keep serving while traffic moves away,
            // unless the node is told to stop meanwhile.
            tracing::info!(delay = ?config.shutdown.drain_delay, "draining: reporting unhealthy before closing the listeners");
            tokio::select! {
                () = shutdown.as_mut() => {}
                () = tokio::time::sleep(config.shutdown.drain_delay) => {}
            }
        }
        tracing::info!("shutting down");
        shared.shutdown.cancel();
        servers.close();
        servers.wait().await;
        shared.tasks.close();
        shared.tasks.wait().await;
        gateway.cluster.shutdown().await;
        shared.access_log.flush(Duration::from_secs(2)).await;
        drop(gateway);
        drop(shared);
        drop(writer);
        tracing::info!("stopped");
    }
}

/// Publishes the raft gauges.
fn record_raft(shared: &Shared) {
    let cluster = &shared.cluster;
    let metrics = cluster.raft.metrics().borrow().clone();
    let m = &shared.metrics;
    m.raft_term.set(metrics.current_term as f64);
    m.raft_leader.set(f64::from(u8::from(
        metrics.current_leader == Some(cluster.id),
    )));
    m.raft_last_log
        .set(metrics.last_log_index.unwrap_or(0) as f64);
    m.raft_applied
        .set(metrics.last_applied.map_or(0, |l| l.index) as f64);
    let last_apply = cluster.last_apply_ms();
    if last_apply > 0 {
        m.raft_apply_age
            .set(crate::cluster::now_ms().saturating_sub(last_apply) as f64 / 1000.0);
    }
    m.raft_leader_silence
        .set(cluster.leader_silence_ms() as f64 / 1000.0);
}

/// Spawns a tracked node task named `name`.
fn shared_spawn(
    gateway: &Arc<Gateway>,
    task: impl Future<Output = ()> + Send + 'static,
    name: &'static str,
) {
    gateway
        .shared
        .tasks
        .spawn(task.instrument(tracing::info_span!("task", name)));
}

/// Follows the applied state: every applied batch updates the data plane.
async fn follow_applied(gateway: Arc<Gateway>) {
    let mut applied = gateway.cluster.subscribe();
    loop {
        tokio::select! {
            () = gateway.shared.shutdown.cancelled() => return,
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
                gateway.sync();
            }
        }
    }
}

/// Hands buffered access-log lines to the writer and refreshes the raft
/// gauges every 200 ms.
async fn upkeep(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        shared.access_log.tick();
        record_raft(&shared);
    }
}

async fn reload_on_sighup(gateway: Arc<Gateway>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload through PUT /v1/config");
        return;
    };
    loop {
        tokio::select! {
            () = gateway.shared.shutdown.cancelled() => return,
            _ = hangup.recv() => match gateway.reload_file().await {
                Ok(version) => tracing::info!(version, "SIGHUP: gateway configuration reloaded"),
                Err(Error::InvalidGateway { path, errors }) => {
                    let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                    tracing::error!(path = %path.display(), errors = %errors.join("; "), "SIGHUP: reload refused; the previous configuration stays");
                }
                Err(error) => tracing::error!(%error, "SIGHUP: reload refused; the previous configuration stays"),
            },
        }
    }
}

/// Raises the open-file soft limit to the hard limit, and returns the
/// connection cap lowered to leave room for upstream connections and files.
fn raise_open_files(max_connections: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    // Each proxied connection may hold one upstream connection too.
    let cap = (limit.saturating_sub(128) / 2).max(16) as usize;
    if max_connections > cap {
        tracing::warn!(
            max_connections,
            cap,
            open_files = limit,
            "limits.max-connections lowered to fit the open-file limit"
        );
        cap
    } else {
        max_connections
    }
}
