//! API keys: `mk_<id>_<secret>`. The replicated state holds, per key id,
//! only `HMAC-SHA-256(cluster key, "<id>:<secret>")`; a lookup is one map
//! access by id and one HMAC, whatever the number of keys. A key is live
//! while its consumer exists in the configuration, it has not expired and
//! it has not been revoked.

use raft::model::{Revocation, State};

use super::Refusal;
use crate::pki;

/// A new API key: what the caller sees once, and what is replicated.
pub struct NewKey {
    /// Key id (public).
    pub id: String,
    /// The whole key, shown once.
    pub key: String,
    /// The replicated hash.
    pub hash: String,
}

/// Makes a new API key hashed under `cluster_key`.
pub fn new_key(cluster_key: &[u8]) -> NewKey {
    let random = pki::secret();
    let id = pki::hex(&random[..6]);
    let secret = pki::hex(&random[6..22]);
    NewKey {
        key: format!("mk_{id}_{secret}"),
        hash: key_hash(cluster_key, &id, &secret),
        id,
    }
}

/// The replicated hash of a key.
pub fn key_hash(cluster_key: &[u8], id: &str, secret: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, cluster_key);
    pki::hex(aws_lc_rs::hmac::sign(&key, format!("{id}:{secret}").as_bytes()).as_ref())
}

/// Checks `presented` against `state` at `now` (Unix ms); returns the key
/// id and the owning consumer's name.
pub fn verify<'s>(
    presented: &str,
    cluster_key: &[u8],
    state: &'s State,
    now: u64,
) -> Result<(&'s str, &'s str), Refusal> {
    let invalid = || Refusal::invalid("invalid_credentials", "the API key is not valid");
    let (id, secret) = presented
        .strip_prefix("mk_")
        .and_then(|rest| rest.split_once('_'))
        .ok_or_else(invalid)?;
    let (id, record) = state.keys.get_key_value(id).ok_or_else(invalid)?;
    let hmac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, cluster_key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&hmac);
    ctx.update(id.as_bytes());
    ctx.update(b":");
    ctx.update(secret.as_bytes());
    let presented = ctx.sign();
    let matches = pki::unhex(&record.hash).is_some_and(|stored| {
        aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_ref(), &stored).is_ok()
    });
    if !matches {
        return Err(invalid());
    }
    if record.expires_at.is_some_and(|expires| expires <= now) {
        return Err(Refusal::invalid(
            "expired_credentials",
            "the API key has expired",
        ));
    }
    if !state.revocations.is_empty() && state.is_revoked(&Revocation::ApiKey(id.clone()), now) {
        return Err(Refusal::invalid(
            "revoked_credentials",
            "the API key has been revoked",
        ));
    }
    Ok((id.as_str(), record.consumer.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::model::Command;

    #[test]
    fn keys_hash_with_the_cluster_key() {
        let cluster_key = pki::secret();
        let key = new_key(&cluster_key);
        let (id, secret) = key
            .key
            .strip_prefix("mk_")
            .unwrap()
            .split_once('_')
            .unwrap();
        assert_eq!(id, key.id);
        assert_eq!(key_hash(&cluster_key, id, secret), key.hash);
        assert_ne!(key_hash(&pki::secret(), id, secret), key.hash);
        assert_eq!(key.key.len(), 3 + 12 + 1 + 32);
    }

    #[test]
    fn verify_checks_hash_expiry_and_revocation() {
        let cluster_key = pki::secret();
        let key = new_key(&cluster_key);
        let mut state = State::default();
        state.apply(
            &raft::model::Request {
                at: 1,
                command: Command::CreateKey {
                    id: key.id.clone(),
                    consumer: "acme".into(),
                    hash: key.hash.clone(),
                    expires_at: Some(1_000),
                },
            },
            1,
        );
        assert_eq!(
            verify(&key.key, &cluster_key, &state, 10).unwrap(),
            (key.id.as_str(), "acme")
        );
        fn code(r: Result<(&str, &str), Refusal>) -> &'static str {
            match r {
                Err(Refusal::Invalid { code, .. }) => code,
                _ => "ok",
            }
        }
        assert_eq!(
            code(verify(&key.key, &cluster_key, &state, 1_000)),
            "expired_credentials"
        );
        assert_eq!(
            code(verify(&key.key, &pki::secret(), &state, 10)),
            "invalid_credentials"
        );
        assert_eq!(
            code(verify("mk_nope", &cluster_key, &state, 10)),
            "invalid_credentials"
        );
        state.apply(
            &raft::model::Request {
                at: 2,
                command: Command::Revoke {
                    target: Revocation::ApiKey(key.id.clone()),
                    expires_at: 5_000,
                },
            },
            2,
        );
        assert_eq!(
            code(verify(&key.key, &cluster_key, &state, 10)),
            "invalid_credentials",
            "revoked keys are deleted"
        );
    }
}
