//! `[resolver]`: the node's DNS resolver (hickory-resolver), used to
//! discover upstream targets ([`super::discovery`]).
//!
//! With no `servers` the system's `/etc/resolv.conf` (name servers, search
//! domains, `ndots`, timeout, attempts) and `/etc/hosts` are used; keys set
//! in `[resolver]` override what the file says. The resolver keeps no cache
//! of its own: the discovery task is the cache, and it asks again when an
//! answer's TTL runs out.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::Name;
use hickory_resolver::{Resolver as Hickory, TokioResolver};
use serde::Deserialize;

/// `[resolver]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawResolver {
    /// `servers`: `ip` or `ip:port` of each name server; empty means the
    /// system's resolv.conf.
    pub servers: Vec<String>,
    /// `timeout`: per query and server.
    #[serde(with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    /// `attempts`: tries per query before it fails.
    pub attempts: Option<usize>,
    /// `search`: domains tried for names with fewer than `ndots` dots.
    pub search: Option<Vec<String>>,
    /// `ndots`.
    pub ndots: Option<usize>,
    /// `min-refresh`: names are asked again no sooner than this, whatever
    /// their TTL.
    #[serde(with = "humantime_serde")]
    pub min_refresh: Duration,
    /// `max-refresh`: and no later than this.
    #[serde(with = "humantime_serde")]
    pub max_refresh: Duration,
}

impl Default for RawResolver {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            timeout: None,
            attempts: None,
            search: None,
            ndots: None,
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(300),
        }
    }
}

/// The validated `[resolver]`.
#[derive(Debug, Clone)]
pub struct ResolverSettings {
    /// Name servers; empty means the system's.
    pub servers: Vec<SocketAddr>,
    /// Per-query timeout (overrides resolv.conf).
    pub timeout: Option<Duration>,
    /// Attempts (overrides resolv.conf).
    pub attempts: Option<usize>,
    /// Search domains (overrides resolv.conf).
    pub search: Option<Vec<Name>>,
    /// `ndots` (overrides resolv.conf).
    pub ndots: Option<usize>,
    /// Floor of the re-resolution period.
    pub min_refresh: Duration,
    /// Ceiling of the re-resolution period.
    pub max_refresh: Duration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        RawResolver::default().validate(&mut |_, _, _| {})
    }
}

impl RawResolver {
    /// Checks `[resolver]`, reporting each broken rule through `fail`.
    pub fn validate(
        self,
        fail: &mut dyn FnMut(&str, &dyn std::fmt::Display, &str),
    ) -> ResolverSettings {
        let mut servers = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            match parse_server(server) {
                Some(address) => servers.push(address),
                None => fail(
                    &format!("resolver.servers[{i}]"),
                    server,
                    "must be an IP address, optionally with a port (e.g. 10.0.0.2 or 127.0.0.1:5353)",
                ),
            }
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            fail("resolver.timeout", &"0s", "must be greater than zero");
        }
        if let Some(attempts) = self.attempts
            && !(1..=10).contains(&attempts)
        {
            fail("resolver.attempts", &attempts, "must be between 1 and 10");
        }
        if let Some(ndots) = self.ndots
            && ndots > 15
        {
            fail("resolver.ndots", &ndots, "must be at most 15");
        }
        let search = self.search.map(|domains| {
            domains
                .iter()
                .enumerate()
                .filter_map(|(i, domain)| match Name::from_utf8(domain) {
                    Ok(name) if !domain.is_empty() => Some(name),
                    _ => {
                        fail(
                            &format!("resolver.search[{i}]"),
                            domain,
                            "must be a domain name",
                        );
                        None
                    }
                })
                .collect()
        });
        if self.min_refresh.is_zero() {
            fail("resolver.min-refresh", &"0s", "must be greater than zero");
        }
        if self.max_refresh < self.min_refresh {
            fail(
                "resolver.max-refresh",
                &humantime::format_duration(self.max_refresh),
                "must not be below resolver.min-refresh",
            );
        }
        ResolverSettings {
            servers,
            timeout: self.timeout,
            attempts: self.attempts,
            search,
            ndots: self.ndots,
            min_refresh: self.min_refresh,
            max_refresh: self.max_refresh,
        }
    }
}

fn parse_server(server: &str) -> Option<SocketAddr> {
    if let Ok(address) = server.parse::<SocketAddr>() {
        return Some(address);
    }
    server
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

/// The node's resolver.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    settings: ResolverSettings,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Builds the resolver. Without configured servers it reads the system
    /// configuration; when that cannot be read the resolver has no server,
    /// every lookup fails (and is counted), and a warning says why.
    pub fn new(settings: &ResolverSettings) -> Self {
        let (config, mut options) = if settings.servers.is_empty() {
            match hickory_resolver::system_conf::read_system_conf() {
                Ok(system) => system,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the system resolver configuration; set [resolver] servers");
                    (
                        ResolverConfig::from_name_servers(Vec::new()),
                        ResolverOpts::default(),
                    )
                }
            }
        } else {
            let servers = settings
                .servers
                .iter()
                .map(|server| {
                    let mut config = NameServerConfig::udp_and_tcp(server.ip());
                    for connection in &mut config.connections {
                        connection.port = server.port();
                    }
                    config
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        let (domain, search, servers) = config.into_parts();
        let search = settings.search.clone().unwrap_or(search);
        let config = ResolverConfig::from_parts(domain, search, servers);
        if let Some(timeout) = settings.timeout {
            options.timeout = timeout;
        }
        if let Some(attempts) = settings.attempts {
            options.attempts = attempts;
        }
        if let Some(ndots) = settings.ndots {
            options.ndots = ndots;
        }
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Auto;
        options.try_tcp_on_error = true;
        let inner = Hickory::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot build the configured resolver; using one without servers");
                Hickory::builder_with_config(
                    ResolverConfig::from_name_servers(Vec::new()),
                    TokioRuntimeProvider::default(),
                )
                .build()
                .expect("a resolver without servers always builds")
            });
        Self {
            inner,
            settings: settings.clone(),
        }
    }

    /// The hickory resolver.
    pub fn inner(&self) -> &TokioResolver {
        &self.inner
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &ResolverSettings {
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: RawResolver) -> Vec<String> {
        let mut errors = Vec::new();
        raw.validate(&mut |key, _, rule| errors.push(format!("{key}: {rule}")));
        errors
    }

    #[test]
    fn servers_take_an_optional_port() {
        assert_eq!(
            parse_server("10.0.0.2"),
            Some("10.0.0.2:53".parse().unwrap())
        );
        assert_eq!(
            parse_server("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_server("[::1]:53"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(parse_server("ns.example.com"), None);
    }

    #[test]
    fn broken_rules_name_their_key() {
        let errors = check(RawResolver {
            servers: vec!["nope".into()],
            attempts: Some(0),
            min_refresh: Duration::from_secs(10),
            max_refresh: Duration::from_secs(1),
            ..RawResolver::default()
        });
        assert_eq!(
            errors
                .iter()
                .map(|e| e.split(':').next().unwrap())
                .collect::<Vec<_>>(),
            [
                "resolver.servers[0]",
                "resolver.attempts",
                "resolver.max-refresh"
            ],
            "{errors:?}"
        );
        assert!(check(RawResolver::default()).is_empty());
    }
}
