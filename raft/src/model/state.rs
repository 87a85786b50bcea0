//! The replicated cluster state and the commands that change it.
//!
//! [`State`] is what every node holds after applying the same log: the
//! gateway configuration in force (with a bounded history of earlier
//! versions), API keys (hashes only), revocations and cluster members. It
//! changes only through [`State::apply`], which is deterministic: time comes
//! from the command ([`Request::at`], set once by the node that proposed it),
//! never from the clock of the node applying it.
//!
//! Revocations carry an expiry (the latest moment the revoked credential
//! could still have been valid); each applied request purges the ones whose
//! expiry has passed, so the set stays bounded by what is still live.

use std::collections::{BTreeMap, VecDeque};

use imbl::{OrdMap, OrdSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::GatewayConfig;

/// Node ids are small integers chosen by the operator (`id` in node.toml).
pub type NodeId = u64;

/// Configuration versions kept for `config history`, `diff` and `rollback`.
pub const HISTORY: usize = 50;

/// A proposal: a command and the wall-clock time (Unix milliseconds) at
/// which the proposing node accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unix time in milliseconds, fixed at proposal.
    pub at: u64,
    /// What to change.
    pub command: Command,
}

/// Every change to the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Replace the gateway configuration. `config` is the document as JSON
    /// (validated before proposal, validated again on apply).
    ApplyConfig {
        /// The configuration, as JSON text.
        config: String,
        /// Who asked (free text, for the audit trail).
        author: String,
    },
    /// Make an earlier configuration version current again (as a new version).
    Rollback {
        /// The version to restore.
        version: u64,
        /// Who asked.
        author: String,
    },
    /// Register an API key. Only its hash is replicated.
    CreateKey {
        /// The key id (public, used to revoke it).
        id: String,
        /// The consumer that owns the key.
        consumer: String,
        /// Hex HMAC-SHA-256 of the secret under the cluster key.
        hash: String,
        /// Unix milliseconds after which the key no longer works.
        expires_at: Option<u64>,
    },
    /// Revoke a credential until `expires_at`.
    Revoke {
        /// What is revoked.
        target: Revocation,
        /// Unix milliseconds after which the revocation is purged (the
        /// credential cannot be valid any more by then).
        expires_at: u64,
    },
    /// Add or update a cluster member.
    SetMember(Member),
    /// Remove a cluster member.
    RemoveMember {
        /// The member.
        id: NodeId,
    },
    /// Spend a one-time join token (its nonce) for node `node`. Refused if
    /// the nonce was spent before.
    UseJoinToken {
        /// The token's nonce.
        nonce: String,
        /// When the token expires (Unix ms); the spent nonce is remembered until then.
        expires_at: u64,
        /// The node that joins with it.
        node: NodeId,
    },
}

/// A revoked credential.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    /// An API key, by id.
    ApiKey(String),
    /// A JWT, by `jti`.
    JwtId(String),
    /// Every JWT for a subject issued (`iat`) before `not_before` (Unix ms).
    JwtSubject {
        /// The `sub` claim.
        subject: String,
        /// Tokens issued before this are revoked.
        not_before: u64,
    },
    /// A client certificate, by serial number (hex).
    CertificateSerial(String),
}

/// A cluster member as the other members need to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Region name.
    pub region: String,
    /// Peer (QUIC) address, `host:port`.
    pub peer: String,
    /// Admin API address, `host:port`.
    pub admin: String,
    /// Proxy address, `host:port`.
    pub proxy: String,
    /// Serial of the node's certificate (hex), revoked when it leaves.
    pub serial: String,
}

/// What applying a request produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A configuration became current, with this version.
    ConfigApplied {
        /// The new version.
        version: u64,
    },
    /// The command changed the state.
    Done,
    /// The command was refused; the state is unchanged.
    Refused {
        /// Why.
        reason: String,
    },
}

/// One configuration version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    /// Increases by one with every applied configuration.
    pub version: u64,
    /// The configuration as JSON text.
    pub text: String,
    /// Who applied it.
    pub author: String,
    /// When it was proposed (Unix ms).
    pub at: u64,
    /// The raft log index that applied it (set by the store).
    pub index: u64,
}

/// An API key as replicated: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The owning consumer.
    pub consumer: String,
    /// Hex HMAC-SHA-256 of the secret.
    pub hash: String,
    /// When it was created (Unix ms).
    pub created_at: u64,
    /// When it stops working (Unix ms), if ever.
    pub expires_at: Option<u64>,
}

/// The replicated state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Configuration versions, oldest first; the last is current.
    pub configs: VecDeque<ConfigRecord>,
    /// The current configuration, parsed (derived from `configs`).
    #[serde(skip)]
    parsed: Option<Arc<GatewayConfig>>,
    /// API keys by id (a persistent map: cloning the state is cheap).
    pub keys: OrdMap<String, KeyRecord>,
    /// Revoked credentials and when each revocation may be forgotten.
    pub revocations: OrdMap<Revocation, u64>,
    /// Revocations by expiry, so purging costs O(log n) per purged item.
    expiries: OrdSet<(u64, Revocation)>,
    /// Keys by expiry, likewise.
    key_expiries: OrdSet<(u64, String)>,
    /// Cluster members by id.
    pub members: BTreeMap<NodeId, Member>,
    /// Spent join-token nonces: when each token expires (Unix ms) and the
    /// node that spent it.
    pub spent_tokens: BTreeMap<String, (u64, NodeId)>,
    /// The time of the last applied request (Unix ms).
    pub clock: u64,
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.configs == other.configs
            && self.keys == other.keys
            && self.revocations == other.revocations
            && self.members == other.members
            && self.spent_tokens == other.spent_tokens
            && self.clock == other.clock
    }
}

impl State {
    /// The current configuration record, if any was applied.
    pub fn config(&self) -> Option<&ConfigRecord> {
        self.configs.back()
    }

    /// The current configuration, parsed.
    pub fn gateway(&self) -> Option<Arc<GatewayConfig>> {
        self.parsed.clone()
    }

    /// The current configuration version (0 before the first).
    pub fn config_version(&self) -> u64 {
        self.config().map_or(0, |c| c.version)
    }

    /// Re-derives what is not serialised (after loading a snapshot).
    pub fn restore(mut self) -> Self {
        self.parsed = self
            .configs
            .back()
            .and_then(|record| parse(&record.text).ok())
            .map(Arc::new);
        self
    }

    /// Whether `revocation` is in force at `now` (Unix ms).
    pub fn is_revoked(&self, revocation: &Revocation, now: u64) -> bool {
        self.revocations
            .get(revocation)
            .is_some_and(|expires| *expires > now)
    }

    /// Whether the certificate with serial `serial` (lowercase hex, as
    /// `pki::hex` writes it) is revoked at `now`: node certificates on the
    /// peer plane, client certificates on the admin API and `mtls` routes.
    pub fn is_certificate_revoked(&self, serial: &str, now: u64) -> bool {
        !self.revocations.is_empty()
            && self.is_revoked(&Revocation::CertificateSerial(serial.to_owned()), now)
    }

    /// Whether a JWT for `subject` issued at `issued_at` (Unix ms; `None`
    /// when the token has no `iat`) is revoked at `now` by a
    /// [`Revocation::JwtSubject`]: one whose `not_before` is after the
    /// token's issue time. A token without `iat` is revoked by any such
    /// revocation of its subject. Costs one ordered-map range lookup.
    pub fn is_subject_revoked(&self, subject: &str, issued_at: Option<u64>, now: u64) -> bool {
        let from = Revocation::JwtSubject {
            subject: subject.to_owned(),
            not_before: issued_at.map_or(0, |iat| iat.saturating_add(1)),
        };
        let to = Revocation::JwtSubject {
            subject: subject.to_owned(),
            not_before: u64::MAX,
        };
        self.revocations
            .range(from..=to)
            .any(|(_, expires)| *expires > now)
    }

    /// Applies one request at raft log `index`. Deterministic.
    pub fn apply(&mut self, request: &Request, index: u64) -> Outcome {
        self.clock = self.clock.max(request.at);
        let now = self.clock;
        self.purge(now);
        match &request.command {
            Command::ApplyConfig { config, author } => {
                self.push_config(config.clone(), author, request.at, index)
            }
            Command::Rollback { version, author } => {
                match self.configs.iter().find(|c| c.version == *version) {
                    Some(record) => {
                        let text = record.text.clone();
                        self.push_config(
                            text,
                            &format!("{author} (rollback to {version})"),
                            request.at,
                            index,
                        )
                    }
                    None => Outcome::Refused {
                        reason: format!(
                            "version {version} is not in the last {HISTORY} configurations"
                        ),
                    },
                }
            }
            Command::CreateKey {
                id,
                consumer,
                hash,
                expires_at,
            } => {
                if self.keys.contains_key(id) {
                    return Outcome::Refused {
                        reason: format!("key id {id} exists"),
                    };
                }
                if let Some(expires) = expires_at {
                    self.key_expiries.insert((*expires, id.clone()));
                }
                self.keys.insert(
                    id.clone(),
                    KeyRecord {
                        consumer: consumer.clone(),
                        hash: hash.clone(),
                        created_at: request.at,
                        expires_at: *expires_at,
                    },
                );
                Outcome::Done
            }
            Command::Revoke { target, expires_at } => {
                let previous = self.revocations.get(target).copied().unwrap_or(0);
                if *expires_at > now && *expires_at > previous {
                    self.expiries.remove(&(previous, target.clone()));
                    self.expiries.insert((*expires_at, target.clone()));
                    self.revocations.insert(target.clone(), *expires_at);
                }
                if let Revocation::ApiKey(id) = target
                    && let Some(key) = self.keys.remove(id)
                    && let Some(expires) = key.expires_at
                {
                    self.key_expiries.remove(&(expires, id.clone()));
                }
                Outcome::Done
            }
            Command::SetMember(member) => {
                self.members.insert(member.id, member.clone());
                Outcome::Done
            }
            Command::RemoveMember { id } => {
                self.members.remove(id);
                Outcome::Done
            }
            Command::UseJoinToken {
                nonce,
                expires_at,
                node,
            } => {
                if *expires_at <= now {
                    return Outcome::Refused {
                        reason: "the join token has expired".into(),
                    };
                }
                match self.spent_tokens.get(nonce) {
                    // The same node asking again (its first answer was lost):
                    // the join is granted again.
                    Some((_, spender)) if spender == node => return Outcome::Done,
                    Some(_) => {
                        return Outcome::Refused {
                            reason: "the join token was already used".into(),
                        };
                    }
                    None => {}
                }
                if self.members.contains_key(node) {
                    return Outcome::Refused {
                        reason: format!("node id {node} is already a member"),
                    };
                }
                self.spent_tokens
                    .insert(nonce.clone(), (*expires_at, *node));
                Outcome::Done
            }
        }
    }

    /// Forgets revocations, keys and spent tokens whose expiry is not after `now`.
    fn purge(&mut self, now: u64) {
        self.spent_tokens.retain(|_, (expires, _)| *expires > now);
        while let Some((expires, revocation)) = self.expiries.get_min().cloned() {
            if expires > now {
                break;
            }
            self.expiries.remove(&(expires, revocation.clone()));
            self.revocations.remove(&revocation);
        }
        while let Some((expires, id)) = self.key_expiries.get_min().cloned() {
            if expires > now {
                break;
            }
            self.key_expiries.remove(&(expires, id.clone()));
            self.keys.remove(&id);
        }
    }

    fn push_config(&mut self, text: String, author: &str, at: u64, index: u64) -> Outcome {
        let config = match parse(&text) {
            Ok(config) => config,
            Err(reason) => return Outcome::Refused { reason },
        };
        let version = self.config_version() + 1;
        self.configs.push_back(ConfigRecord {
            version,
            text,
            author: author.to_owned(),
            at,
            index,
        });
        while self.configs.len() > HISTORY {
            self.configs.pop_front();
        }
        self.parsed = Some(Arc::new(config));
        Outcome::ConfigApplied { version }
    }
}

fn parse(text: &str) -> Result<GatewayConfig, String> {
    let config: GatewayConfig =
        serde_json::from_str(text).map_err(|e| format!("not a configuration: {e}"))?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The JSON text a configuration is replicated as.
pub fn config_text(config: &GatewayConfig) -> String {
    serde_json::to_string(config).expect("configurations serialise to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(at: u64, command: Command) -> Request {
        Request { at, command }
    }

    fn config(route: &str) -> String {
        let yaml = format!(
            "upstreams:\n  u: {{ targets: [\"127.0.0.1:1\"] }}\nroutes:\n  - {{ name: {route}, upstream: u }}\n"
        );
        config_text(&GatewayConfig::parse(&yaml).unwrap())
    }

    #[test]
    fn configs_get_versions_and_history_is_bounded() {
        let mut state = State::default();
        for i in 1..=(HISTORY as u64 + 5) {
            let outcome = state.apply(
                &request(
                    i,
                    Command::ApplyConfig {
                        config: config(&format!("r{i}")),
                        author: "t".into(),
                    },
                ),
                i,
            );
            assert_eq!(outcome, Outcome::ConfigApplied { version: i });
        }
        assert_eq!(state.configs.len(), HISTORY);
        assert_eq!(state.config_version(), HISTORY as u64 + 5);
        assert_eq!(
            state.gateway().unwrap().routes[0].name,
            format!("r{}", HISTORY + 5)
        );
    }

    #[test]
    fn invalid_configs_are_refused_on_apply() {
        let mut state = State::default();
        let bad = r#"{"routes":[{"name":"r","upstream":"missing"}]}"#.to_owned();
        let outcome = state.apply(
            &request(
                1,
                Command::ApplyConfig {
                    config: bad,
                    author: "t".into(),
                },
            ),
            1,
        );
        assert!(matches!(outcome, Outcome::Refused { .. }), "{outcome:?}");
        assert_eq!(state.config_version(), 0);
    }

    #[test]
    fn rollback_makes_a_new_version() {
        let mut state = State::default();
        state.apply(
            &request(
                1,
                Command::ApplyConfig {
                    config: config("a"),
                    author: "t".into(),
                },
            ),
            1,
        );
        state.apply(
            &request(
                2,
                Command::ApplyConfig {
                    config: config("b"),
                    author: "t".into(),
                },
            ),
            2,
        );
        let outcome = state.apply(
            &request(
                3,
                Command::Rollback {
                    version: 1,
                    author: "ops".into(),
                },
            ),
            3,
        );
        assert_eq!(outcome, Outcome::ConfigApplied { version: 3 });
        assert_eq!(state.gateway().unwrap().routes[0].name, "a");
        assert_eq!(state.config().unwrap().author, "ops (rollback to 1)");
        let missing = state.apply(
            &request(
                4,
                Command::Rollback {
                    version: 99,
                    author: "ops".into(),
                },
            ),
            4,
        );
        assert!(matches!(missing, Outcome::Refused { .. }));
    }

    #[test]
    fn revocations_expire_and_revoked_keys_disappear() {
        let mut state = State::default();
        let key = Command::CreateKey {
            id: "k1".into(),
            consumer: "acme".into(),
            hash: "00".into(),
            expires_at: None,
        };
        assert_eq!(state.apply(&request(10, key.clone()), 1), Outcome::Done);
        assert!(matches!(
            state.apply(&request(11, key), 2),
            Outcome::Refused { .. }
        ));
        let jti = Revocation::JwtId("t-1".into());
        state.apply(
            &request(
                20,
                Command::Revoke {
                    target: Revocation::ApiKey("k1".into()),
                    expires_at: 1000,
                },
            ),
            3,
        );
        state.apply(
            &request(
                21,
                Command::Revoke {
                    target: jti.clone(),
                    expires_at: 100,
                },
            ),
            4,
        );
        assert!(!state.keys.contains_key("k1"));
        assert!(state.is_revoked(&jti, 50));
        assert!(!state.is_revoked(&jti, 100));
        // Applying anything later than the expiry purges it.
        state.apply(&request(101, Command::RemoveMember { id: 9 }), 5);
        assert!(!state.revocations.contains_key(&jti));
        assert!(
            state
                .revocations
                .contains_key(&Revocation::ApiKey("k1".into()))
        );
    }

    #[test]
    fn subject_revocations_cover_tokens_issued_before() {
        let mut state = State::default();
        state.apply(
            &request(
                10,
                Command::Revoke {
                    target: Revocation::JwtSubject {
                        subject: "alice".into(),
                        not_before: 5_000,
                    },
                    expires_at: 100_000,
                },
            ),
            1,
        );
        assert!(state.is_subject_revoked("alice", Some(4_000), 50));
        assert!(state.is_subject_revoked("alice", None, 50));
        assert!(!state.is_subject_revoked("alice", Some(5_000), 50));
        assert!(!state.is_subject_revoked("alice", Some(6_000), 50));
        assert!(!state.is_subject_revoked("alicf", Some(4_000), 50));
        assert!(!state.is_subject_revoked("alic", Some(4_000), 50));
        assert!(!state.is_subject_revoked("alice", Some(4_000), 100_000));
    }

    #[test]
    fn join_tokens_are_one_time() {
        let mut state = State::default();
        let use_token = |node| Command::UseJoinToken {
            nonce: "n1".into(),
            expires_at: 1000,
            node,
        };
        assert_eq!(state.apply(&request(10, use_token(2)), 1), Outcome::Done);
        assert_eq!(
            state.apply(&request(10, use_token(2)), 1),
            Outcome::Done,
            "a retry by the same node"
        );
        assert!(matches!(
            state.apply(&request(11, use_token(3)), 2),
            Outcome::Refused { .. }
        ));
        assert!(matches!(
            state.apply(
                &request(
                    2000,
                    Command::UseJoinToken {
                        nonce: "n2".into(),
                        expires_at: 1500,
                        node: 4
                    }
                ),
                3
            ),
            Outcome::Refused { .. }
        ));
        assert!(
            state.spent_tokens.is_empty(),
            "spent tokens are forgotten after expiry"
        );
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut state = State::default();
        state.apply(&request(100, Command::RemoveMember { id: 1 }), 1);
        state.apply(&request(50, Command::RemoveMember { id: 1 }), 2);
        assert_eq!(state.clock, 100);
        let late = Command::Revoke {
            target: Revocation::JwtId("x".into()),
            expires_at: 80,
        };
        state.apply(&request(60, late), 3);
        assert!(
            state.revocations.is_empty(),
            "already expired by the cluster clock"
        );
    }

    #[test]
    fn snapshots_round_trip() {
        let mut state = State::default();
        state.apply(
            &request(
                1,
                Command::ApplyConfig {
                    config: config("a"),
                    author: "t".into(),
                },
            ),
            1,
        );
        state.apply(
            &request(
                2,
                Command::SetMember(Member {
                    id: 1,
                    region: "eu".into(),
                    peer: "127.0.0.1:1".into(),
                    admin: "127.0.0.1:2".into(),
                    proxy: "127.0.0.1:3".into(),
                    serial: "01".into(),
                }),
            ),
            2,
        );
        let bytes = serde_json::to_vec(&state).unwrap();
        let restored = serde_json::from_slice::<State>(&bytes).unwrap().restore();
        assert_eq!(restored, state);
        assert_eq!(restored.gateway(), state.gateway());
    }
}
