//! Upstream discovery through DNS.
//!
//! A configured target is one of ([`Entry`]):
//! - an IP literal, `10.0.0.1:8080` or `[2001:db8::1]:8080`: used as is;
//! - a name, `users.internal:8080`: its A and AAAA records, each with the
//!   port; `Host` stays `users.internal:8080`;
//! - `srv:_http._tcp.users.internal`: its SRV records. Only the records of
//!   the best (lowest) priority that yields an address are used; within it
//!   the weights shape the balancer (see [`crate::proxy::pool`]), and
//!   records of weight 0 are used only when every record of that priority
//!   has weight 0. Each record's target is resolved to A/AAAA (the answer's
//!   additional section is used when it has them); `Host` is the record's
//!   target and port. A target of `.` ("no service") is skipped.
//!
//! One task per pool with names resolves them in the background, never on
//! the request path: at once when the pool is created, then again when the
//! answer's TTL (the smallest in the chain) runs out, bounded by
//! `resolver.min-refresh` and `resolver.max-refresh`. Each answer replaces
//! the name's addresses in the pool ([`Pool::set_resolved`]), which swaps
//! the target set atomically. When a lookup fails — a timeout, a server
//! error, or an answer without a usable address (NXDOMAIN, no records) — the
//! last addresses that resolved stay in use, the failure is counted in
//! `meridian_dns_resolve_errors_total{upstream,name}`, and the name is asked
//! again after `min-refresh`, doubling up to `max-refresh`. At most
//! [`MAX_ADDRESSES`] addresses per name are used.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::proto::rr::{Name, RData};
use raft::model::validate::parse_target;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::resolver::Resolver;
use crate::metrics::Metrics;
use crate::proxy::pool::Pool;

/// Most addresses one name contributes to a pool.
pub const MAX_ADDRESSES: usize = 64;

/// The prefix of SRV targets.
pub const SRV_PREFIX: &str = "srv:";

/// One configured target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An IP address and port.
    Addr {
        /// The address.
        addr: SocketAddr,
        /// As written, for `Host`.
        authority: http::uri::Authority,
    },
    /// A name whose A/AAAA records are the targets.
    Name {
        /// The name.
        host: String,
        /// The port.
        port: u16,
        /// `host:port`, for `Host`.
        authority: http::uri::Authority,
    },
    /// A name whose SRV records are the targets.
    Srv {
        /// The SRV owner name, e.g. `_http._tcp.users.internal`.
        name: String,
    },
}

impl Entry {
    /// Parses a validated target; `None` for one validation refuses.
    pub fn parse(target: &str) -> Option<Self> {
        if let Some(name) = target.strip_prefix(SRV_PREFIX) {
            let name = name.trim();
            return (!name.is_empty()).then(|| Entry::Srv {
                name: name.to_owned(),
            });
        }
        let (host, port) = parse_target(target).ok()?;
        let authority: http::uri::Authority = target.parse().ok()?;
        Some(match host.parse::<IpAddr>() {
            Ok(ip) => Entry::Addr {
                addr: SocketAddr::new(ip, port),
                authority,
            },
            Err(_) => Entry::Name {
                host: host.to_owned(),
                port,
                authority,
            },
        })
    }

    /// Whether DNS decides this entry's addresses.
    pub fn is_dynamic(&self) -> bool {
        !matches!(self, Entry::Addr { .. })
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Addr { authority, .. } | Entry::Name { authority, .. } => {
                f.write_str(authority.as_str())
            }
            Entry::Srv { name } => write!(f, "{SRV_PREFIX}{name}"),
        }
    }
}

/// One address a name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `Host` for requests to it.
    pub authority: http::uri::Authority,
    /// Relative share of requests (SRV weight; 1 otherwise).
    pub weight: u32,
}

/// Why a lookup gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The resolver failed (timeout, server failure, NXDOMAIN…).
    #[error("{0}")]
    Lookup(String),
    /// The answer had no usable address.
    #[error("no usable address in the answer")]
    Empty,
}

/// An answer: the addresses and how long they may be kept.
#[derive(Debug)]
pub struct Answer {
    /// The addresses, at most [`MAX_ADDRESSES`].
    pub addresses: Vec<Resolved>,
    /// The smallest TTL of the records used.
    pub ttl: Duration,
}

/// Resolves a dynamic entry once.
pub async fn resolve(resolver: &Resolver, entry: &Entry) -> Result<Answer, ResolveError> {
    match entry {
        Entry::Addr { addr, authority } => Ok(Answer {
            addresses: vec![Resolved {
                addr: *addr,
                authority: authority.clone(),
                weight: 1,
            }],
            ttl: Duration::MAX,
        }),
        Entry::Name {
            host,
            port,
            authority,
        } => {
            let (ips, ttl) = lookup_ip(resolver, host).await?;
            let addresses = ips
                .into_iter()
                .map(|ip| Resolved {
                    addr: SocketAddr::new(ip, *port),
                    authority: authority.clone(),
                    weight: 1,
                })
                .collect();
            Ok(Answer { addresses, ttl })
        }
        Entry::Srv { name } => resolve_srv(resolver, name).await,
    }
}

async fn lookup_ip(
    resolver: &Resolver,
    host: &str,
) -> Result<(Vec<IpAddr>, Duration), ResolveError> {
    let lookup = resolver
        .inner()
        .lookup_ip(host)
        .await
        .map_err(|e| ResolveError::Lookup(e.to_string()))?;
    let ttl = lookup
        .as_lookup()
        .answers()
        .iter()
        .map(|r| r.ttl)
        .min()
        .unwrap_or(0);
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in lookup.iter() {
        if !ips.contains(&ip) && ips.len() < MAX_ADDRESSES {
            ips.push(ip);
        }
    }
    if ips.is_empty() {
        return Err(ResolveError::Empty);
    }
    Ok((ips, Duration::from_secs(u64::from(ttl))))
}

struct SrvRecord {
    priority: u16,
    weight: u16,
    port: u16,
    target: Name,
    ttl: u32,
}

async fn resolve_srv(resolver: &Resolver, name: &str) -> Result<Answer, ResolveError> {
    let lookup = resolver
        .inner()
        .srv_lookup(name)
        .await
        .map_err(|e| ResolveError::Lookup(e.to_string()))?;
    let mut records: Vec<SrvRecord> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) if !srv.target.is_root() && srv.port != 0 => Some(SrvRecord {
                priority: srv.priority,
                weight: srv.weight,
                port: srv.port,
                target: srv.target.clone(),
                ttl: record.ttl,
            }),
            _ => None,
        })
        .take(MAX_ADDRESSES)
        .collect();
    records.sort_by_key(|r| r.priority);
    let mut priorities: Vec<u16> = records.iter().map(|r| r.priority).collect();
    priorities.dedup();
    let mut last_error = ResolveError::Empty;
    for priority in priorities {
        let group: Vec<&SrvRecord> = records.iter().filter(|r| r.priority == priority).collect();
        let weighted = group.iter().any(|r| r.weight > 0);
        let mut addresses = Vec::new();
        let mut ttl = u32::MAX;
        for record in group.iter().filter(|r| !weighted || r.weight > 0) {
            let host = record.target.to_utf8();
            let host = host.trim_end_matches('.');
            let Ok(authority) = format!("{host}:{}", record.port).parse::<http::uri::Authority>()
            else {
                continue;
            };
            // Addresses the server sent along save a lookup.
            let glued: Vec<(IpAddr, u32)> = lookup
                .additionals()
                .iter()
                .filter(|r| r.name == record.target)
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
                    RData::AAAA(aaaa) => Some((IpAddr::V6(aaaa.0), r.ttl)),
                    _ => None,
                })
                .collect();
            let (ips, ip_ttl) = if glued.is_empty() {
                match lookup_ip(resolver, &record.target.to_utf8()).await {
                    Ok((ips, ttl)) => (ips, ttl.as_secs().min(u64::from(u32::MAX)) as u32),
                    Err(error) => {
                        tracing::debug!(target = %host, %error, "SRV target does not resolve");
                        last_error = error;
                        continue;
                    }
                }
            } else {
                let ttl = glued.iter().map(|(_, ttl)| *ttl).min().unwrap_or(0);
                (glued.into_iter().map(|(ip, _)| ip).collect(), ttl)
            };
            ttl = ttl.min(record.ttl).min(ip_ttl);
            for ip in ips {
                if addresses.len() < MAX_ADDRESSES {
                    addresses.push(Resolved {
                        addr: SocketAddr::new(ip, record.port),
                        authority: authority.clone(),
                        weight: if weighted {
                            u32::from(record.weight)
                        } else {
                            1
                        },
                    });
                }
            }
        }
        if !addresses.is_empty() {
            return Ok(Answer {
                addresses,
                ttl: Duration::from_secs(u64::from(ttl)),
            });
        }
    }
    Err(last_error)
}

/// Starts the discovery task of `pool`, if it has names.
pub fn spawn(
    pool: &Arc<Pool>,
    resolver: &Resolver,
    metrics: &Arc<Metrics>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    if !pool.entries().iter().any(Entry::is_dynamic) {
        return;
    }
    let span = tracing::info_span!("discovery", upstream = %pool.name());
    tasks.spawn(
        run(
            Arc::downgrade(pool),
            resolver.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
        .instrument(span),
    );
}

/// Per name: when to ask next, and the current retry delay after failures.
struct Schedule {
    index: usize,
    entry: Entry,
    due: Instant,
    backoff: Duration,
    errors: metrics::Counter,
}

async fn run(
    pool: Weak<Pool>,
    resolver: Resolver,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let (min, max) = {
        let settings = resolver.settings();
        (settings.min_refresh, settings.max_refresh)
    };
    let mut names: Vec<Schedule> = {
        let Some(pool) = pool.upgrade() else { return };
        pool.entries()
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.is_dynamic())
            .map(|(index, entry)| Schedule {
                index,
                entry: entry.clone(),
                due: Instant::now(),
                backoff: min,
                errors: metrics.counter(
                    "meridian_dns_resolve_errors_total",
                    &[
                        ("upstream", pool.name().to_owned()),
                        ("name", entry.to_string()),
                    ],
                ),
            })
            .collect()
    };
    loop {
        let now = Instant::now();
        let due: Vec<usize> = (0..names.len()).filter(|&i| names[i].due <= now).collect();
        let answers = futures_util::future::join_all(
            due.iter().map(|&i| resolve(&resolver, &names[i].entry)),
        )
        .await;
        {
            let Some(pool) = pool.upgrade() else { return };
            let now = Instant::now();
            for (i, answer) in due.into_iter().zip(answers) {
                let name = &mut names[i];
                match answer {
                    Ok(answer) => {
                        name.backoff = min;
                        name.due = now + answer.ttl.clamp(min, max);
                        pool.set_resolved(name.index, answer.addresses);
                    }
                    Err(error) => {
                        name.errors.increment(1);
                        tracing::warn!(name = %name.entry, %error, retry = ?name.backoff, "DNS lookup failed; keeping the last known addresses");
                        name.due = now + name.backoff;
                        name.backoff = (name.backoff * 2).min(max);
                    }
                }
            }
        }
        let next = names.iter().map(|n| n.due).min().unwrap_or(now + max);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_literals_names_or_srv() {
        assert!(matches!(
            Entry::parse("10.0.0.1:80"),
            Some(Entry::Addr { addr, .. }) if addr == "10.0.0.1:80".parse().unwrap()
        ));
        assert!(matches!(
            Entry::parse("[::1]:8080"),
            Some(Entry::Addr { addr, .. }) if addr == "[::1]:8080".parse().unwrap()
        ));
        let Some(Entry::Name {
            host,
            port,
            authority,
        }) = Entry::parse("users.internal:8080")
        else {
            panic!("a name");
        };
        assert_eq!(
            (host.as_str(), port, authority.as_str()),
            ("users.internal", 8080, "users.internal:8080")
        );
        assert_eq!(
            Entry::parse("srv:_http._tcp.users.internal"),
            Some(Entry::Srv {
                name: "_http._tcp.users.internal".into()
            })
        );
        assert_eq!(Entry::parse("srv:"), None);
        assert_eq!(Entry::parse("no-port"), None);
        assert_eq!(
            Entry::parse("srv:_http._tcp.a").unwrap().to_string(),
            "srv:_http._tcp.a"
        );
        assert!(!Entry::parse("10.0.0.1:80").unwrap().is_dynamic());
    }
}
