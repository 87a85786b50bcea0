//! The admin API (JSON), on its own listener.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/healthz` | 200 while the process runs |
//! | GET | `/readyz` | 200 once a gateway configuration is in force, the node is not draining and (with `raft.on-leader-loss = "not-ready"`) it heard from a raft leader within `raft.leader-loss`; else 503 |
//! | GET | `/healthz/gslb` | 200 `{"status": "serve", …}` when this region should receive traffic, 503 `{"status": "drain", "reason": …}` when not (rules in [`crate::regions`]); for DNS GSLB health checkers |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/v1/config` | `{"version": n, "config": {…}}`, secrets shown as `<redacted>` |
//! | PUT | `/v1/config[?wait=all]` | body: gateway.yaml (YAML or JSON); committed through raft: 200 `{"version", "index"[, "applied"]}`, 400 with every violated rule, 503 without a leader |
//! | GET | `/v1/config/history` | the last 50 versions: version, author, time, log index |
//! | GET | `/v1/config/versions/{n}` | one version of the history |
//! | POST | `/v1/config/rollback[?wait=all]` | `{"version": n}`: that configuration becomes current again, as a new version |
//! | GET | `/v1/cluster` | leader, term, indexes, every member with its role, region, addresses, applied index and lag, and each global rate limit's overshoot bound |
//! | POST | `/v1/cluster/tokens[?ttl=1h]` | a one-time join token |
//! | DELETE | `/v1/cluster/members/{id}` | remove a node; its certificate is revoked |
//! | POST | `/v1/consumers/{name}/keys[?wait=all]` | body `{"ttl": "30d"}` optional; a new API key, shown once |
//! | DELETE | `/v1/keys/{id}[?wait=all]` | revoke an API key |
//! | POST | `/v1/revocations[?wait=all]` | `{"jti"}`, `{"sub", "not_before"}` or `{"serial"}`, optional `ttl` |
//! | GET | `/v1/health/regions` | the regions' health view: per region `healthy`, `reason`, `addresses`, `updated_at_ms`, `source`, and each node's last report (`nodes`) |
//! | POST | `/v1/node/drain` | 202: the node reports unhealthy to GSLB / anycast / `/readyz`, serves for `shutdown.drain-delay`, then shuts down gracefully |
//!
//! When `admin.token` is set, `/v1/*` requires `Authorization: Bearer <token>`.
//! Failures use the JSON error body of the data plane.

use std::sync::Arc;

use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use crate::Gateway;
use crate::body::{Body, Inbound};

/// Largest accepted configuration document.
const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Serves one admin request.
pub async fn handle(
    app: Arc<Gateway>,
    req: hyper::Request<Inbound>,
    _peer: crate::text::Peer,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    // With `admin.tls = "mutual"` the handshake verified the client's
    // certificate against the cluster CA; a serial revoked in the
    // replicated state is refused here.
    if let Some(client) = req
        .extensions()
        .get::<Arc<crate::tls::TlsInfo>>()
        .and_then(|tls| tls.client.as_ref())
        && app
            .cluster
            .applied()
            .state
            .is_certificate_revoked(&client.serial, crate::cluster::now_ms())
    {
        return error(
            StatusCode::FORBIDDEN,
            "certificate_revoked",
            "the client certificate has been revoked",
        );
    }
    if path.starts_with("/v1/")
        && let Some(token) = &app.shared.config.admin.token
        && !authorized(&req, token)
    {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin bearer token is required",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"meridian-admin\""),
        );
        return response;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            let version = app.snapshots.load().version;
            let silence = app.cluster.leader_silence_ms();
            let (status, state) = match app.readiness() {
                Ok(()) => (StatusCode::OK, "ready".to_owned()),
                Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
            };
            json_response(
                status,
                &json!({"status": state, "config_version": version, "leader_silence_ms": silence}),
            )
        }
        (&Method::GET, "/healthz/gslb") => {
            let verdict = crate::regions::evaluate(&app);
            let status = if verdict.serve {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(
                status,
                &json!({
                    "status": if verdict.serve { "serve" } else { "drain" },
                    "reason": verdict.reason,
                    "region": app.shared.config.region,
                    "node": app.shared.config.id,
                }),
            )
        }
        (&Method::GET, "/v1/health/regions") => {
            let regions = app.regions.all();
            json_response(
                StatusCode::OK,
                &json!({"local": app.regions.local_region(), "regions": &*regions}),
            )
        }
        (&Method::POST, "/v1/node/drain") => {
            app.drain();
            json_response(
                StatusCode::ACCEPTED,
                &json!({
                    "status": "draining",
                    "node": app.shared.config.id,
                    "drain_delay_ms": app.shared.config.shutdown.drain_delay.as_millis() as u64,
                    "grace_period_ms": app.shared.config.shutdown.grace_period.as_millis() as u64,
                }),
            )
        }
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Body::full(app.shared.metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::GET, "/v1/config") => {
            let snapshot = app.snapshots.load();
            json_response(
                StatusCode::OK,
                &json!({"version": snapshot.version, "config": snapshot.config.redacted()}),
            )
        }
        (&Method::GET, "/v1/config/history") => {
            let applied = app.cluster.applied();
            let versions: Vec<_> = applied
                .state
                .configs
                .iter()
                .rev()
                .map(|c| json!({"version": c.version, "author": c.author, "at": c.at, "index": c.index}))
                .collect();
            json_response(StatusCode::OK, &json!({"versions": versions}))
        }
        (&Method::PUT, "/v1/config") => put_config(&app, req).await,
        (&Method::GET, version) if version.starts_with("/v1/config/versions/") => {
            let Ok(wanted) = version["/v1/config/versions/".len()..].parse::<u64>() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_version",
                    "versions are integers",
                );
            };
            let applied = app.cluster.applied();
            match applied.state.configs.iter().find(|c| c.version == wanted) {
                Some(record) => {
                    let config = raft::model::GatewayConfig::parse(&record.text)
                        .map(|c| serde_json::to_value(c.redacted()).unwrap_or_default())
                        .unwrap_or_default();
                    json_response(
                        StatusCode::OK,
                        &json!({"version": record.version, "author": record.author, "at": record.at, "config": config}),
                    )
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    "unknown_version",
                    "that version is not in the history",
                ),
            }
        }
        (&Method::POST, "/v1/config/rollback") => {
            let wait_all = query(&req, "wait").is_some_and(|w| w == "all");
            let body = match json_body(req).await {
                Ok(body) => body,
                Err(response) => return *response,
            };
            let Some(version) = body.get("version").and_then(|v| v.as_u64()) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_version",
                    "give {\"version\": N}",
                );
            };
            let command = raft::model::Command::Rollback {
                version,
                author: "admin api".into(),
            };
            let response = commit(&app, command, wait_all, json!({"restored": version})).await;
            app.sync();
            response
        }
        (&Method::GET, "/v1/cluster") => cluster_status(&app).await,
        (&Method::POST, "/v1/cluster/tokens") => {
            let ttl = query(&req, "ttl")
                .and_then(|t| humantime::parse_duration(&t).ok())
                .unwrap_or(std::time::Duration::from_secs(3600));
            match app.cluster.token(ttl) {
                Some(token) => json_response(
                    StatusCode::OK,
                    &json!({"token": token.encode(), "expires_at": token.expires_at}),
                ),
                None => error(
                    StatusCode::CONFLICT,
                    "no_authority",
                    "this member cannot issue join tokens",
                ),
            }
        }
        (&Method::POST, consumer_keys)
            if consumer_keys.starts_with("/v1/consumers/") && consumer_keys.ends_with("/keys") =>
        {
            let name = consumer_keys["/v1/consumers/".len()..consumer_keys.len() - "/keys".len()]
                .to_owned();
            create_key(&app, req, name).await
        }
        (&Method::DELETE, key) if key.starts_with("/v1/keys/") => {
            let id = key["/v1/keys/".len()..].to_owned();
            let wait_all = query(&req, "wait").is_some_and(|w| w == "all");
            let applied = app.cluster.applied();
            let Some(record) = applied.state.keys.get(&id) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no live key has this id",
                );
            };
            // Keep the revocation as long as the key could have lived.
            let expires_at = record
                .expires_at
                .unwrap_or_else(|| crate::cluster::now_ms() + 10 * YEAR_MS);
            let command = raft::model::Command::Revoke {
                target: raft::model::Revocation::ApiKey(id.clone()),
                expires_at,
            };
            commit(&app, command, wait_all, json!({"revoked": id})).await
        }
        (&Method::POST, "/v1/revocations") => revoke(&app, req).await,
        (&Method::DELETE, member) if member.starts_with("/v1/cluster/members/") => {
            let Ok(id) = member["/v1/cluster/members/".len()..].parse::<u64>() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_member",
                    "member ids are integers",
                );
            };
            match app.cluster.remove(id).await {
                Ok(()) => json_response(StatusCode::OK, &json!({"removed": id})),
                Err(e @ crate::cluster::WriteError::NoLeader) => {
                    error(StatusCode::SERVICE_UNAVAILABLE, "no_leader", &e.to_string())
                }
                Err(e) => error(StatusCode::CONFLICT, "refused", &e.to_string()),
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics") => method_not_allowed("GET"),
        (_, "/v1/config") => method_not_allowed("GET, PUT"),
        (_, "/v1/config/history") => method_not_allowed("GET"),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}

const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

/// Commits `command`; answers with its index (and, with `wait_all`, every
/// member's applied index) merged into `answer`.
async fn commit(
    app: &Gateway,
    command: raft::model::Command,
    wait_all: bool,
    answer: serde_json::Value,
) -> Response<Body> {
    let written = app.cluster.write(command).await;
    respond_written(app, written, wait_all, answer).await
}

/// The answer to a write: its index (and, with `wait_all`, every member's
/// applied index) merged into `answer`; 409 when applying refused it, 503
/// without a leader.
async fn respond_written(
    app: &Gateway,
    written: Result<crate::cluster::Written, crate::cluster::WriteError>,
    wait_all: bool,
    mut answer: serde_json::Value,
) -> Response<Body> {
    match written {
        Ok(written) => match written.outcome {
            raft::model::Outcome::Refused { reason } => {
                error(StatusCode::CONFLICT, "refused", &reason)
            }
            _ => {
                answer["index"] = json!(written.index);
                if wait_all {
                    let applied = app
                        .cluster
                        .wait_everywhere(written.index, std::time::Duration::from_secs(10))
                        .await;
                    answer["applied"] = json!(applied);
                }
                json_response(StatusCode::OK, &answer)
            }
        },
        Err(e @ crate::cluster::WriteError::NoLeader) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "no_leader", &e.to_string())
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "write_failed",
            &e.to_string(),
        ),
    }
}

/// Reads a small JSON body (empty means `{}`).
async fn json_body(req: hyper::Request<Inbound>) -> Result<serde_json::Value, Box<Response<Body>>> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body exceeds 64 KiB",
            )
        })?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &e.to_string(),
        ))
    })
}

fn duration_field(
    body: &serde_json::Value,
    key: &str,
) -> Result<Option<std::time::Duration>, Box<Response<Body>>> {
    match body.get(key).and_then(|v| v.as_str()) {
        None => Ok(None),
        Some(text) => humantime::parse_duration(text).map(Some).map_err(|e| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                "invalid_duration",
                &format!("{key} ({text}): {e}"),
            ))
        }),
    }
}

/// `POST /v1/consumers/{name}/keys`: a new API key, shown once.
async fn create_key(
    app: &Gateway,
    req: hyper::Request<Inbound>,
    consumer: String,
) -> Response<Body> {
    let wait_all = query(&req, "wait").is_some_and(|w| w == "all");
    let body = match json_body(req).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    if !app
        .snapshots
        .load()
        .config
        .consumers
        .iter()
        .any(|c| c.name == consumer)
    {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_consumer",
            "no consumer of that name in the configuration",
        );
    }
    let ttl = match duration_field(&body, "ttl") {
        Ok(ttl) => ttl,
        Err(response) => return *response,
    };
    let key = crate::pipeline::auth::new_key(&app.cluster.identity.cluster_key);
    let expires_at = ttl.map(|ttl| crate::cluster::now_ms() + ttl.as_millis() as u64);
    let command = raft::model::Command::CreateKey {
        id: key.id.clone(),
        consumer: consumer.clone(),
        hash: key.hash,
        expires_at,
    };
    let answer =
        json!({"id": key.id, "key": key.key, "consumer": consumer, "expires_at": expires_at});
    commit(app, command, wait_all, answer).await
}

/// `POST /v1/revocations`: `{"jti": …}`, `{"sub": …, "not_before": ms}` or
/// `{"serial": …}`, with an optional `ttl` (how long the revoked credential
/// could still be valid; 24h for JWTs, ten years for certificates).
async fn revoke(app: &Gateway, req: hyper::Request<Inbound>) -> Response<Body> {
    use raft::model::Revocation;
    let wait_all = query(&req, "wait").is_some_and(|w| w == "all");
    let body = match json_body(req).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let text = |key: &str| body.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let now = crate::cluster::now_ms();
    let (target, default_ttl) = if let Some(jti) = text("jti") {
        (Revocation::JwtId(jti), 24 * 3600 * 1000)
    } else if let Some(subject) = text("sub") {
        let not_before = body
            .get("not_before")
            .and_then(|v| v.as_u64())
            .unwrap_or(now);
        (
            Revocation::JwtSubject {
                subject,
                not_before,
            },
            24 * 3600 * 1000,
        )
    } else if let Some(serial) = text("serial") {
        (
            Revocation::CertificateSerial(serial.to_ascii_lowercase()),
            10 * YEAR_MS,
        )
    } else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_revocation",
            "give one of jti, sub or serial",
        );
    };
    let ttl = match duration_field(&body, "ttl") {
        Ok(ttl) => ttl.map_or(default_ttl, |t| t.as_millis() as u64),
        Err(response) => return *response,
    };
    let answer = json!({"revoked": target, "expires_at": now + ttl});
    commit(
        app,
        raft::model::Command::Revoke {
            target,
            expires_at: now + ttl,
        },
        wait_all,
        answer,
    )
    .await
}

/// A query parameter of the request, decoded.
fn query(req: &hyper::Request<Inbound>, name: &str) -> Option<String> {
    req.uri()
        .query()
        .and_then(|q| crate::pipeline::version::form_urlencoded_pairs(q).find(|(k, _)| k == name))
        .map(|(_, v)| v)
}

/// `GET /v1/cluster`: this node's view of the cluster.
async fn cluster_status(app: &Gateway) -> Response<Body> {
    let cluster = &app.cluster;
    let metrics = cluster.raft.metrics().borrow().clone();
    let applied = cluster.applied();
    let by_member = cluster
        .applied_by_member(std::time::Duration::from_millis(500))
        .await;
    let commit = by_member.values().flatten().copied().max().unwrap_or(0);
    let membership = metrics.membership_config.membership().clone();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members: Vec<_> = membership
        .nodes()
        .map(|(id, node)| {
            let record = applied.state.members.get(id);
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index);
            let member_applied = by_member.get(id).copied().flatten();
            json!({
                "id": id,
                "region": node.region,
                "peer": node.peer,
                "admin": record.map(|m| m.admin.clone()),
                "proxy": record.map(|m| m.proxy.clone()),
                "role": if voters.contains(id) { "voter" } else { "learner" },
                "leader": metrics.current_leader == Some(*id),
                "applied": member_applied,
                "matched": matched,
                "lag": member_applied.map(|a| commit.saturating_sub(a)),
                "reachable": member_applied.is_some(),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "id": cluster.id,
            "region": app.shared.config.region,
            "state": format!("{:?}", metrics.state),
            "leader": metrics.current_leader,
            "term": metrics.current_term,
            "last_log": metrics.last_log_index,
            "commit": commit,
            "applied": applied.index(),
            "snapshot": metrics.snapshot.map(|s| s.index),
            "purged": metrics.purged.map(|p| p.index),
            "config_version": applied.state.config_version(),
            "members": members,
            "global_limits": app.shared.ratelimit.bounds(),
        }),
    )
}

async fn put_config(app: &Gateway, req: hyper::Request<Inbound>) -> Response<Body> {
    let wait_all = query(&req, "wait").is_some_and(|w| w == "all");
    let body = match Limited::new(req.into_body(), MAX_CONFIG_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the configuration exceeds 4 MiB or could not be read",
            );
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_config",
            "the configuration is not UTF-8",
        );
    };
    let mut config = match raft::model::GatewayConfig::parse(text) {
        Ok(config) => config,
        Err(errors) => {
            app.shared.metrics.config_reloads_failed.increment(1);
            let details: Vec<_> = errors
                .0
                .iter()
                .map(|e| json!({"key": e.key, "value": e.value, "rule": e.rule}))
                .collect();
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": {
                    "code": "invalid_config",
                    "message": errors.to_string(),
                    "details": details,
                }}),
            );
        }
    };
    // A configuration read back from GET /v1/config says `<redacted>` for
    // secrets: written again, it keeps the ones in force.
    config.restore_secrets(&app.snapshots.load().config);
    let written = app.commit_config(&config, "admin api").await;
    let version = match &written {
        Ok(crate::cluster::Written {
            outcome: raft::model::Outcome::ConfigApplied { version },
            ..
        }) => *version,
        _ => 0,
    };
    respond_written(app, written, wait_all, json!({"version": version})).await
}

fn authorized(req: &hyper::Request<Inbound>, token: &str) -> bool {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(presented) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    constant_time_eq(presented, token.as_bytes())
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed here",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
