//! The run's identity provider: a P-256 signing key whose public half the
//! JWKS endpoint publishes, and a rogue key it never publishes.
//!
//! [`Idp::token`] signs a valid token for the gateway's `chaos-idp` issuer
//! (audience `api`, an hour of validity); [`Idp::rogue`] signs one with the
//! rogue key under an unknown `kid`, which no node may ever accept.
//! [`Idp::jwks`] is the JWKS document the `/jwks` backend serves.

use anyhow::Context;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The issuer the gateway trusts.
pub const ISSUER: &str = "chaos-idp";

/// The audience of the tokens.
pub const AUDIENCE: &str = "api";

/// Signing keys and their JWKS.
pub struct Idp {
    key: EncodingKey,
    jwk: Value,
    rogue: EncodingKey,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp").field("jwk", &self.jwk).finish()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn p256() -> anyhow::Result<(EncodingKey, Vec<u8>)> {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
    let pkcs8 = pair
        .to_pkcs8v1()
        .map_err(|_| anyhow::anyhow!("encoding a P-256 key"))?;
    Ok((
        EncodingKey::from_ec_der(pkcs8.as_ref()),
        pair.public_key().as_ref().to_vec(),
    ))
}

// === impl Idp ===

impl Idp {
    /// New keys.
    pub fn new() -> anyhow::Result<Self> {
        let (key, point) = p256()?;
        let (rogue, _) = p256()?;
        let (x, y) = (
            point.get(1..33).context("a P-256 point")?,
            point.get(33..65).context("a P-256 point")?,
        );
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "chaos-1", "alg": "ES256", "use": "sig", "x": b64(x), "y": b64(y)});
        Ok(Self { key, jwk, rogue })
    }

    /// The JWKS document.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// A valid token for `sub`, an hour long.
    pub fn token(&self, sub: &str) -> anyhow::Result<String> {
        Self::sign(&self.key, "chaos-1", sub)
    }

    /// A token signed by the unpublished key, under kid `rogue`.
    pub fn rogue(&self) -> anyhow::Result<String> {
        Self::sign(&self.rogue, "rogue", "intruder")
    }

    fn sign(key: &EncodingKey, kid: &str, sub: &str) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let claims =
            json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 3600});
        jsonwebtoken::encode(&header, &claims, key).context("signing a token")
    }
}

#[cfg(test)]
mod tests;
