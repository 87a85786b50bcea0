//! The auth stage's decisions per request, next to the raw jsonwebtoken
//! cost they build on.
//!
//! - `api_key/hit`: one map access + one HMAC + expiry/revocation checks.
//! - `jwt/verify/{RS256,ES256}`: `Issuer::check` on tokens it has not seen
//!   (header, key lookup, signature, claims, identity headers, cache insert).
//! - `jwt/cached`: the same token again, plus the per-request revocation
//!   checks against a state holding 10 000 revocations.
//! - `raw/decode/{RS256,ES256}`: `jsonwebtoken::decode` alone, the anchor.
//!
//! Run: `cargo bench -p node --bench auth -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use node::pipeline::auth::{api_key, jwt::Issuer};
use raft::model::{Command, GatewayConfig, Request, Revocation, State};
use serde_json::json;

const ISSUER: &str = "https://idp.bench/";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The `RSAPrivateKey` inside a PKCS#8 document.
fn pkcs8_inner(der: &[u8]) -> Vec<u8> {
    fn element(input: &[u8]) -> (&[u8], &[u8]) {
        let (len, header) = if input[1] & 0x80 == 0 {
            (usize::from(input[1]), 2)
        } else {
            let n = usize::from(input[1] & 0x7f);
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        };
        (&input[header..header + len], &input[header + len..])
    }
    let (info, _) = element(der);
    let (_, rest) = element(info);
    let (_, rest) = element(rest);
    element(rest).0.to_vec()
}

struct Signer {
    alg: Algorithm,
    kid: &'static str,
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn rsa() -> Signer {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let public = pair.public_key();
    Signer {
        alg: Algorithm::RS256,
        kid: "rsa",
        key: EncodingKey::from_rsa_der(&pkcs8_inner(pair.as_der().unwrap().as_ref())),
        jwk: json!({"kty": "RSA", "kid": "rsa",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero())}),
    }
}

fn ec() -> Signer {
    let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap();
    let point = pair.public_key().as_ref();
    Signer {
        alg: Algorithm::ES256,
        kid: "ec",
        key: EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": "ec",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
    }
}

impl Signer {
    fn token(&self, n: usize) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.into());
        let now = jsonwebtoken::get_current_timestamp();
        let claims = json!({"iss": ISSUER, "aud": "api", "sub": format!("user-{n}"),
            "iat": now, "exp": now + 3600, "jti": format!("jti-{n}"),
            "scope": "read write", "roles": ["reader"], "tenant": "t1"});
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Claims {
    sub: String,
    exp: u64,
    iss: String,
    scope: String,
}

fn issuer(signers: &[&Signer], cache_entries: usize) -> Issuer {
    let yaml = format!(
        "auth:\n  jwt:\n    - {{ name: bench, issuer: \"{ISSUER}\", jwks_uri: \"http://127.0.0.1:1/jwks\", audiences: [api], cache_entries: {cache_entries} }}\n"
    );
    let config = GatewayConfig::parse(&yaml).unwrap();
    let issuer = Issuer::new(&config.auth.jwt[0], &node::metrics::Metrics::new());
    let keys: Vec<_> = signers.iter().map(|s| s.jwk.clone()).collect();
    issuer
        .install(json!({ "keys": keys }).to_string().as_bytes())
        .unwrap();
    issuer
}

fn state_with_revocations() -> State {
    let mut state = State::default();
    for i in 0..10_000u64 {
        state.apply(
            &Request {
                at: 1,
                command: Command::Revoke {
                    target: if i % 2 == 0 {
                        Revocation::JwtId(format!("revoked-{i}"))
                    } else {
                        Revocation::JwtSubject {
                            subject: format!("user-x{i}"),
                            not_before: 5,
                        }
                    },
                    expires_at: u64::MAX,
                },
            },
            i + 1,
        );
    }
    state
}

fn bench(c: &mut Criterion) {
    let now_ms = jsonwebtoken::get_current_timestamp() * 1000;

    // API key hit.
    let cluster_key = [7u8; 32];
    let key = api_key::new_key(&cluster_key);
    let mut state = state_with_revocations();
    state.apply(
        &Request {
            at: 2,
            command: Command::CreateKey {
                id: key.id.clone(),
                consumer: "acme".into(),
                hash: key.hash.clone(),
                expires_at: None,
            },
        },
        20_000,
    );
    c.bench_function("api_key/hit", |b| {
        b.iter(|| api_key::verify(black_box(&key.key), &cluster_key, &state, now_ms).unwrap())
    });

    let (rsa, ec) = (rsa(), ec());
    for signer in [&rsa, &ec] {
        let name = format!("{:?}", signer.alg);
        // A small cache and many distinct tokens: every check is a miss.
        let issuer = issuer(&[&rsa, &ec], 16);
        let tokens: Vec<String> = (0..512).map(|n| signer.token(n)).collect();
        let mut i = 0;
        c.bench_function(&format!("jwt/verify/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                issuer.check(black_box(&tokens[i]), now_ms).unwrap()
            })
        });

        let decoding =
            DecodingKey::from_jwk(&serde_json::from_value(signer.jwk.clone()).unwrap()).unwrap();
        let mut validation = Validation::new(signer.alg);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&["api"]);
        c.bench_function(&format!("raw/decode/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                jsonwebtoken::decode::<Claims>(black_box(&tokens[i]), &decoding, &validation)
                    .unwrap()
            })
        });
    }

    let issuer = issuer(&[&rsa, &ec], 10_000);
    let token = rsa.token(1);
    issuer.check(&token, now_ms).unwrap();
    c.bench_function("jwt/cached", |b| {
        b.iter(|| {
            let identity = issuer.check(black_box(&token), now_ms).unwrap();
            let revoked = identity
                .jti
                .as_ref()
                .is_some_and(|jti| state.is_revoked(&Revocation::JwtId(jti.clone()), now_ms))
                || identity
                    .subject
                    .as_ref()
                    .is_some_and(|sub| state.is_subject_revoked(sub, identity.issued_at, now_ms));
            assert!(!revoked);
            identity
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
