//! The data plane's view of the gateway configuration: one immutable
//! [`Snapshot`] compiled from the replicated [`GatewayConfig`], swapped
//! atomically by [`Handle::install`] when a newer version is applied.
//!
//! Every request loads the current snapshot once and keeps it to the end,
//! so a swap never changes the rules under a request in flight, and open
//! connections (WebSockets included) are untouched. Upstream pools whose
//! definition did not change are carried over with their health state,
//! connections and counters.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use raft::model::GatewayConfig;

use crate::Shared;
use crate::access_log::AccessLog;
use crate::dns::discovery;
use crate::metrics::RouteMetrics;
use crate::pipeline::auth;
use crate::pipeline::policy::Policies;
use crate::pipeline::route::{Route, Router};
use crate::pipeline::version::Apis;
use crate::proxy::health;
use crate::proxy::pool::Pool;

/// A compiled gateway configuration.
pub struct Snapshot {
    /// Increases by one with every applied configuration; 0 before the first.
    pub version: u64,
    /// The configuration it was compiled from.
    pub config: Arc<GatewayConfig>,
    /// Routes, ready for lookups.
    pub router: Router,
    /// Versioned APIs.
    pub apis: Apis,
    /// Upstream pools by name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// Series for requests that matched no route.
    pub unrouted: RouteMetrics,
    /// The node's access log, which every snapshot carries: a finished
    /// request writes its line through the snapshot it holds.
    pub access_log: AccessLog,
    /// IP lists, WAF, CORS and security headers.
    pub policies: Policies,
    /// Consumers, API key location, JWT issuers and introspection endpoints.
    pub auth: auth::Runtime,
    /// Rate limits by route and plan.
    pub limits: crate::pipeline::limit::Limits,
}

impl Snapshot {
    /// Compiles a validated configuration, reusing unchanged pools of `previous`.
    fn compile(
        config: Arc<GatewayConfig>,
        version: u64,
        previous: &Snapshot,
        shared: &Shared,
    ) -> Self {
        let mut pools = BTreeMap::new();
        for (name, definition) in &config.upstreams {
            // This region's targets (`region_targets`) stand in for `targets`.
            let definition = &definition.for_region(&shared.config.region);
            let pool = match previous.pools.get(name) {
                Some(pool) if pool.definition() == definition => pool.clone(),
                previous_pool => {
                    let pool = Pool::new(
                        name,
                        definition,
                        &shared.metrics,
                        &shared.tasks,
                        &shared.shutdown,
                        previous_pool.map(|p| &**p),
                    );
                    health::spawn(&pool, &shared.tasks, &shared.shutdown);
                    discovery::spawn(
                        &pool,
                        &shared.resolver,
                        &shared.metrics,
                        &shared.tasks,
                        &shared.shutdown,
                    );
                    pool
                }
            };
            pools.insert(name.clone(), pool);
        }
        let lookup = pools.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, route)| Route::compile(i, route, &lookup, &shared.metrics))
            .map(Arc::new)
            .collect();
        Self {
            version,
            auth: auth::Runtime::compile(&config, &previous.auth, shared),
            router: Router::new(routes),
            apis: Apis::compile(&config),
            pools,
            unrouted: RouteMetrics::new(&shared.metrics, "none"),
            access_log: shared.access_log.clone(),
            policies: Policies::compile(&config),
            limits: crate::pipeline::limit::Limits::compile(
                &config,
                &shared.ratelimit,
                &shared.metrics,
            ),
            config,
        }
    }

    fn empty(shared: &Shared) -> Self {
        Self {
            version: 0,
            config: Arc::new(GatewayConfig::default()),
            router: Router::default(),
            apis: Apis::default(),
            pools: BTreeMap::new(),
            unrouted: RouteMetrics::new(&shared.metrics, "none"),
            access_log: shared.access_log.clone(),
            policies: Policies::default(),
            auth: auth::Runtime::default(),
            limits: Default::default(),
        }
    }
}

/// The current snapshot and the one way to replace it.
pub struct Handle {
    current: ArcSwap<Snapshot>,
    /// The version of `current`, set after each swap: what a thread's
    /// cached snapshot ([`CACHED`]) is checked against.
    installed: AtomicU64,
    /// Tells handles apart in [`CACHED`] (a process may run several nodes).
    id: u64,
    /// Serialises swaps so versions increase and pool reuse sees the latest.
    apply: Mutex<()>,
    shared: Arc<Shared>,
}

/// Numbers the handles.
static HANDLES: AtomicU64 = AtomicU64::new(0);

/// The snapshot a thread loaded last, by handle and version.
struct Cached {
    handle: u64,
    version: u64,
    /// Weak: a thread that serves no more requests keeps no configuration
    /// alive.
    snapshot: Weak<Snapshot>,
}

thread_local! {
    /// [`Handle::load`]'s cache: `ArcSwap::load_full` is four atomic
    /// operations a request with the count's release; a hit is two.
    static CACHED: RefCell<Cached> = const {
        RefCell::new(Cached {
            handle: u64::MAX,
            version: 0,
            snapshot: Weak::new(),
        })
    };
}

impl Handle {
    /// A handle holding the empty configuration (version 0).
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::empty(&shared)),
            installed: AtomicU64::new(0),
            id: HANDLES.fetch_add(1, Ordering::Relaxed),
            apply: Mutex::new(()),
            shared,
        }
    }

    /// The snapshot in force.
    ///
    /// The thread's last snapshot of this handle, if the version in force
    /// is still its own. A load that races a swap may get the snapshot
    /// just replaced, as a request that came a moment earlier would; the
    /// version is set after the swap, so no thread keeps it past that.
    pub fn load(&self) -> Arc<Snapshot> {
        let installed = self.installed.load(Ordering::Acquire);
        let cached = CACHED.try_with(|cached| {
            let cached = &mut *cached.borrow_mut();
            if cached.handle == self.id
                && cached.version == installed
                && let Some(snapshot) = cached.snapshot.upgrade()
            {
                return snapshot;
            }
            let snapshot = self.current.load_full();
            *cached = Cached {
                handle: self.id,
                version: installed,
                snapshot: Arc::downgrade(&snapshot),
            };
            snapshot
        });
        // A thread whose locals are gone (its exit) loads without them.
        cached.unwrap_or_else(|_| self.current.load_full())
    }

    /// Compiles and swaps in configuration `version` (from the replicated
    /// state) unless the snapshot in force is already that new.
    pub fn install(&self, config: Arc<GatewayConfig>, version: u64) {
        let _guard = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.current.load_full();
        if version <= previous.version {
            return;
        }
        let snapshot = Snapshot::compile(config, version, &previous, &self.shared);
        self.current.store(Arc::new(snapshot));
        self.installed.store(version, Ordering::Release);
        self.shared.metrics.config_version.set(version as f64);
        self.shared.metrics.config_reloads_ok.increment(1);
        tracing::info!(version, "gateway configuration in force");
    }
}
