//! The tasks that run beside the timeline: the observer, the writer and
//! the enforcement prober. Each stops at its window's deadline or token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use super::{Key, OBSERVE_EVERY, PROBE_TIMEOUT, Shared, WRITE_TIMEOUT, elapsed, lock};
use crate::client::{CallError, Client};
use crate::history::{Enforcement, Observation, Op, OpKind, Outcome, View};
use crate::load::Window;
use crate::target;

/// Polls `GET /v1/cluster` on every node.
pub(super) async fn observe(
    client: Client,
    admins: Vec<(u64, std::net::SocketAddr)>,
    window: Window,
    shared: Shared,
) {
    let origin = window.origin;
    let mut tick = tokio::time::interval(OBSERVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while window.next(&mut tick).await {
        let polls = admins.iter().map(|&(id, admin)| {
            let client = client.clone();
            async move {
                let view = match client.get_json(admin, "/v1/cluster", PROBE_TIMEOUT).await {
                    Ok((200, v)) => Some(View {
                        term: v["term"].as_u64().unwrap_or(0),
                        leader: v["leader"].as_u64(),
                        state: v["state"].as_str().unwrap_or("").to_owned(),
                        config_version: v["config_version"].as_u64().unwrap_or(0),
                        applied: v["applied"].as_u64().unwrap_or(0),
                        global_bound: v["global_limits"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|l| l["bound"].as_f64())
                            .reduce(f64::max),
                    }),
                    _ => None,
                };
                Observation {
                    t_ms: elapsed(origin),
                    node: id,
                    view,
                }
            }
        });
        let observed = futures_join(polls).await;
        lock(&shared).observations.extend(observed);
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}

/// What the writer writes, where, and how often.
pub(super) struct Writer {
    /// Node id and admin address of every node.
    pub(super) admins: Vec<(u64, std::net::SocketAddr)>,
    /// The configuration each config write adds its marker route to.
    pub(super) base: serde_json::Value,
    /// The upstream of the marker routes.
    pub(super) upstream: String,
    /// Keys to revoke, in order.
    pub(super) keys: Vec<Key>,
    /// One write this often.
    pub(super) every: Duration,
    /// Picks the node of each write.
    pub(super) rng: fastrand::Rng,
}

/// Config writes and revocations, alternating, to nodes drawn from the
/// writer's seeded RNG.
pub(super) async fn write(client: Client, writer: Writer, window: Window, shared: Shared) {
    let Writer {
        admins,
        base,
        upstream,
        keys,
        every,
        mut rng,
    } = writer;
    let origin = window.origin;
    let mut keys = keys.into_iter();
    let mut tick = tokio::time::interval_at(origin + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        if !window.next(&mut tick).await {
            return;
        }
        let (node, admin) = admins[rng.usize(..admins.len())];
        let (kind, method, path, body) = if n % 2 == 0 {
            let route = format!("chaos-w{}", n / 2 + 1);
            let body = target::with_marker(&base, &route, &upstream).to_string();
            (
                OpKind::ConfigWrite { route },
                Method::PUT,
                "/v1/config".to_owned(),
                Some(body.into_bytes()),
            )
        } else {
            let Some(key) = keys.next() else { continue };
            (
                OpKind::Revoke {
                    key_id: key.id.clone(),
                },
                Method::DELETE,
                format!("/v1/keys/{}", key.id),
                None,
            )
        };
        let invoke_ms = elapsed(origin);
        let answer = client
            .call(method, admin, &path, &[], body, WRITE_TIMEOUT)
            .await;
        let outcome = match answer {
            Ok(a) if a.status == 200 => {
                let v = a.json();
                Outcome::Ok {
                    version: v["version"].as_u64(),
                    index: v["index"].as_u64(),
                }
            }
            Ok(a) => Outcome::Fail {
                status: a.status,
                message: a.message(),
            },
            Err(CallError::Timeout(_)) => Outcome::Timeout,
            Err(e) => Outcome::Unreachable {
                message: e.to_string(),
            },
        };
        let mut recorder = lock(&shared);
        let id = recorder.ops.len() as u64 + 1;
        recorder.ops.push(Op {
            id,
            kind,
            node,
            invoke_ms,
            return_ms: elapsed(origin),
            outcome,
        });
    }
}

/// Tries every acknowledged revoked key on every node until it is refused.
pub(super) async fn probe_enforcement(
    client: Client,
    proxies: Vec<(u64, std::net::SocketAddr)>,
    (keys, path): (Vec<Key>, String),
    window: Window,
    shared: Shared,
) {
    let origin = window.origin;
    let secrets: BTreeMap<String, String> = keys.into_iter().map(|k| (k.id, k.secret)).collect();
    let path: Arc<str> = path.into();
    let mut tick = tokio::time::interval(OBSERVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while window.next(&mut tick).await {
        let pending: Vec<(String, u64, std::net::SocketAddr)> = {
            let recorder = lock(&shared);
            let mut pending = Vec::new();
            for op in &recorder.ops {
                let (OpKind::Revoke { key_id }, Outcome::Ok { .. }) = (&op.kind, &op.outcome)
                else {
                    continue;
                };
                for (node, proxy) in &proxies {
                    if !recorder
                        .enforcements
                        .iter()
                        .any(|e| e.key_id == *key_id && e.node == *node)
                    {
                        pending.push((key_id.clone(), *node, *proxy));
                    }
                }
            }
            pending
        };
        let probes = pending.into_iter().filter_map(|(key_id, node, proxy)| {
            let secret = secrets.get(&key_id)?.clone();
            let (client, path) = (client.clone(), path.clone());
            Some(async move {
                let status = client
                    .call(
                        Method::GET,
                        proxy,
                        &path,
                        &[("x-api-key", &secret)],
                        None,
                        PROBE_TIMEOUT,
                    )
                    .await
                    .map(|a| a.status);
                (key_id, node, status, elapsed(origin))
            })
        });
        for (key_id, node, status, t_ms) in futures_join(probes).await {
            if status == Ok(401) {
                lock(&shared)
                    .enforcements
                    .push(Enforcement { key_id, node, t_ms });
            }
        }
    }
}

/// Sends the rogue token (signed by a key the JWKS never published) to
/// every node's `/jwt` route every [`OBSERVE_EVERY`]; any answer but a
/// refusal is recorded.
pub(super) async fn probe_rogue(
    client: Client,
    proxies: Vec<(u64, std::net::SocketAddr)>,
    token: String,
    window: Window,
    shared: Shared,
) {
    let origin = window.origin;
    let bearer: Arc<str> = format!("Bearer {token}").into();
    let mut tick = tokio::time::interval(OBSERVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while window.next(&mut tick).await {
        let probes = proxies.iter().map(|&(node, proxy)| {
            let (client, bearer) = (client.clone(), bearer.clone());
            async move {
                let status = client
                    .call(
                        Method::GET,
                        proxy,
                        "/jwt/chaos-rogue",
                        &[("authorization", &bearer)],
                        None,
                        PROBE_TIMEOUT,
                    )
                    .await
                    .map(|a| a.status)
                    .ok();
                (node, status, elapsed(origin))
            }
        });
        for (node, status, t_ms) in futures_join(probes).await {
            let Some(status) = status else { continue };
            let mut recorder = lock(&shared);
            recorder.rogue_probes += 1;
            if !matches!(status, 401 | 403) {
                recorder.rogue_accepted.push((t_ms, node, status));
            }
        }
    }
}
