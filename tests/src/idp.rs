//! A test identity provider on loopback: signing keys (RSA, P-256,
//! Ed25519) made with aws-lc-rs, tokens signed with jsonwebtoken, a JWKS
//! server that can rotate keys, count fetches and be killed, and an RFC 7662
//! introspection server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::MockUpstream;
use crate::upstream::{full, json as json_response};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (what jsonwebtoken
/// signs RS256 with).
fn pkcs8_inner(der: &[u8]) -> Vec<u8> {
    // One DER element: (tag, content, rest).
    fn element(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = input[0];
        let (len, header) = if input[1] & 0x80 == 0 {
            (usize::from(input[1]), 2)
        } else {
            let n = usize::from(input[1] & 0x7f);
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        };
        (tag, &input[header..header + len], &input[header + len..])
    }
    let (_, info, _) = element(der);
    let (_, _version, rest) = element(info);
    let (_, _algorithm, rest) = element(rest);
    let (tag, key, _) = element(rest);
    assert_eq!(tag, 0x04, "PKCS#8 private key is an OCTET STRING");
    key.to_vec()
}

/// A signing key and its public JWK.
pub struct SigningKey {
    /// `kid`.
    pub kid: String,
    /// The algorithm it signs with.
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public JWK.
    pub jwk: Value,
    /// The RSA public key as X.509 DER (for the HS256 confusion attack).
    pub public_der: Vec<u8>,
}

impl SigningKey {
    /// A 2048-bit RSA key (RS256).
    pub fn rsa(kid: &str) -> Self {
        let pair =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        let pkcs8 = pair.as_der().expect("PKCS#8");
        let public = pair.public_key();
        let jwk = json!({
            "kty": "RSA", "kid": kid, "use": "sig",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        });
        Self {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(&pkcs8_inner(pkcs8.as_ref())),
            jwk,
            public_der: public.as_der().expect("X.509").as_ref().to_vec(),
        }
    }

    /// A P-256 key (ES256).
    pub fn ec(kid: &str) -> Self {
        let alg = &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(alg).expect("EC key");
        let pkcs8 = pair.to_pkcs8v1().expect("PKCS#8");
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        Self {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
            public_der: Vec::new(),
        }
    }

    /// An Ed25519 key (EdDSA).
    pub fn ed(kid: &str) -> Self {
        let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().expect("Ed25519 key");
        let pkcs8 = pair.to_pkcs8().expect("PKCS#8");
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": b64(pair.public_key().as_ref()),
        });
        Self {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk,
            public_der: Vec::new(),
        }
    }

    /// A token with `claims`, its header naming this key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(&header, claims)
    }

    /// A token with `claims` and a header of the caller's choosing.
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("signs")
    }
}

/// Standard claims for `issuer` and audience `api`, valid for an hour.
pub fn claims(issuer: &str, sub: &str) -> Value {
    let now = now();
    json!({
        "iss": issuer, "aud": "api", "sub": sub, "iat": now, "exp": now + 3600,
        "jti": format!("jti-{sub}-{}", fastish()), "scope": "read write",
        "roles": ["reader"], "tenant": "t1",
    })
}

fn fastish() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u64
}

/// A token made of parts the caller chooses (for `alg: none` and friends).
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// A JWKS server: `GET /jwks` answers the current keys.
pub struct JwksServer {
    mock: MockUpstream,
    keys: Arc<Mutex<Vec<Value>>>,
}

impl JwksServer {
    /// Serves `keys` with `Cache-Control: max-age=<max_age>`.
    pub async fn start(keys: &[&SigningKey], max_age: u64) -> Self {
        let keys = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()));
        let served = keys.clone();
        let mock = MockUpstream::start(move |_| {
            let set = json!({ "keys": *served.lock().expect("not poisoned") });
            async move {
                let mut response = json_response(StatusCode::OK, set);
                response.headers_mut().insert(
                    header::CACHE_CONTROL,
                    format!("public, max-age={max_age}").parse().expect("valid"),
                );
                response
            }
        })
        .await;
        Self { mock, keys }
    }

    /// `http://…/jwks`.
    pub fn uri(&self) -> String {
        format!("http://{}/jwks", self.mock.addr)
    }

    /// Replaces the published keys.
    pub fn publish(&self, keys: &[&SigningKey]) {
        *self.keys.lock().expect("not poisoned") = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    /// Fetches served so far.
    pub fn fetches(&self) -> usize {
        self.mock.count()
    }

    /// Stops the server (connections refused from now on).
    pub fn kill(&self) {
        self.mock.shutdown();
    }
}

/// What the introspection server answers for a token.
pub type Answer = Arc<dyn Fn(&str) -> Option<Value> + Send + Sync>;

/// An RFC 7662 introspection server at `POST /introspect`, checking the
/// client's Basic credentials; `None` from the answer function is a 500.
pub struct Introspector {
    /// Its address.
    pub addr: SocketAddr,
    /// Calls received.
    pub calls: Arc<AtomicUsize>,
    /// Calls with wrong client credentials.
    pub unauthorised: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Introspector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Introspector {
    /// Starts the server; each answer is delayed by `delay`.
    pub async fn start(credentials: (&str, &str), delay: Duration, answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let calls = Arc::new(AtomicUsize::new(0));
        let unauthorised = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        // RFC 6749 §2.3.1: id and secret are form-encoded, then Basic.
        let form = |text: &str| -> String {
            text.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        };
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                form(credentials.0),
                form(credentials.1)
            ))
        );
        let (c, u, s) = (calls.clone(), unauthorised.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = s.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                let (c, u, answer, expected) =
                    (c.clone(), u.clone(), answer.clone(), expected.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (c, u, answer, expected) =
                            (c.clone(), u.clone(), answer.clone(), expected.clone());
                        async move {
                            c.fetch_add(1, Ordering::SeqCst);
                            let authorised = req
                                .headers()
                                .get(header::AUTHORIZATION)
                                .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                            let form = req.headers().get(header::CONTENT_TYPE).cloned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            tokio::time::sleep(delay).await;
                            if !authorised
                                || form
                                    .as_ref()
                                    .is_none_or(|f| f != "application/x-www-form-urlencoded")
                            {
                                u.fetch_add(1, Ordering::SeqCst);
                                let mut r = Response::new(full("unauthorised"));
                                *r.status_mut() = StatusCode::UNAUTHORIZED;
                                return Ok::<_, Infallible>(r);
                            }
                            let text = String::from_utf8_lossy(&body).into_owned();
                            let token = text
                                .split('&')
                                .find_map(|p| p.strip_prefix("token="))
                                .unwrap_or_default()
                                .to_owned();
                            let hint_ok = text.contains("token_type_hint=access_token");
                            Ok(match answer(&token).filter(|_| hint_ok) {
                                Some(value) => json_response(StatusCode::OK, value),
                                None => {
                                    let mut r = Response::new(full(Bytes::from_static(b"boom")));
                                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                                    r
                                }
                            })
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            calls,
            unauthorised,
            stop,
        }
    }

    /// `http://…/introspect`.
    pub fn uri(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    /// Calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}
