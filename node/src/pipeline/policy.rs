//! The edge policies of a snapshot, compiled once per configuration: the
//! trusted proxies, the global and per-route IP lists, and for each route
//! the WAF, CORS and headers blocks in force (the route's own block when it
//! has one, else the global one). The stages `ip`, `waf`, `cors` and
//! `headers` read them from [`crate::snapshot::Snapshot::policies`].

use std::sync::Arc;

use raft::model::{self, GatewayConfig};

use super::cors::Cors;
use super::headers::Headers;
use super::ip::{IpRules, IpSet};
use super::route::Route;
use super::waf::Waf;

/// The WAF, CORS and headers blocks in force for one scope.
#[derive(Default, Clone)]
struct Effective {
    ip: Option<IpRules>,
    waf: Option<Arc<Waf>>,
    cors: Option<Arc<Cors>>,
    headers: Option<Arc<Headers>>,
}

/// Compiled policies of one configuration.
#[derive(Default)]
pub struct Policies {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: IpSet,
    /// The global IP lists.
    pub global_ip: Option<IpRules>,
    global: Effective,
    /// Each route's, by its position in the configuration
    /// ([`Route::index`]): a lookup per stage and request costs no hash.
    routes: Vec<Effective>,
}

impl Policies {
    /// Compiles the policies of a validated configuration.
    pub fn compile(config: &GatewayConfig) -> Self {
        let global_block = &config.policies;
        let global = Effective {
            ip: None,
            waf: global_block.waf.as_ref().map(|p| Arc::new(Waf::new(p))),
            cors: global_block.cors.as_ref().map(|p| Arc::new(Cors::new(p))),
            headers: global_block
                .headers
                .as_ref()
                .map(|p| Arc::new(Headers::new(p))),
        };
        let routes = config
            .routes
            .iter()
            .map(|route| effective(&route.policies, &global))
            .collect();
        Self {
            trusted_proxies: IpSet::new(&global_block.trusted_proxies),
            global_ip: global_block.ip.as_ref().map(IpRules::new),
            global,
            routes,
        }
    }

    fn scope(&self, route: Option<&Route>) -> &Effective {
        route
            .and_then(|r| self.routes.get(r.index()))
            .unwrap_or(&self.global)
    }

    /// The route's own IP lists.
    pub fn route_ip(&self, route: Option<&Route>) -> Option<&IpRules> {
        route.and_then(|r| self.routes.get(r.index())?.ip.as_ref())
    }

    /// The WAF block in force.
    pub fn waf(&self, route: Option<&Route>) -> Option<&Waf> {
        self.scope(route).waf.as_deref()
    }

    /// The CORS block in force.
    pub fn cors(&self, route: Option<&Route>) -> Option<&Cors> {
        self.scope(route).cors.as_deref()
    }

    /// The headers block in force.
    pub fn headers(&self, route: Option<&Route>) -> Option<&Headers> {
        self.scope(route).headers.as_deref()
    }
}

fn effective(block: &model::Policies, global: &Effective) -> Effective {
    Effective {
        ip: block.ip.as_ref().map(IpRules::new),
        waf: match &block.waf {
            Some(p) => Some(Arc::new(Waf::new(p))),
            None => global.waf.clone(),
        },
        cors: match &block.cors {
            Some(p) => Some(Arc::new(Cors::new(p))),
            None => global.cors.clone(),
        },
        headers: match &block.headers {
            Some(p) => Some(Arc::new(Headers::new(p))),
            None => global.headers.clone(),
        },
    }
}
