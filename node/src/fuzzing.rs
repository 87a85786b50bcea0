//! Entry points of the fuzz targets (`fuzz/`), one per parser that faces
//! untrusted input. The test `corpora_and_regressions_replay_cleanly` replays the
//! committed corpora and crash inputs through the same functions, so CI
//! needs neither cargo-fuzz nor a nightly toolchain.
//!
//! Each function must never panic on any input; where a parser promises
//! more (the path normaliser is idempotent, the head scanner does not care
//! how the bytes are split, a replicated configuration parses again) the
//! function asserts it, so a broken promise shows up as a crash too.

use raft::model::GatewayConfig;
use raft::model::state::config_text;

use crate::{normalize, peer, server};

/// The HTTP/1.1 request-head scanner that looks for `Content-Length` +
/// `Transfer-Encoding` (`server/framing.rs`). The first byte chooses how the
/// rest is split into reads; the verdict must not depend on the split.
pub fn request_head(data: &[u8]) {
    let Some((&piece, head)) = data.split_first() else {
        return;
    };
    let whole = server::scan_in_pieces(head, head.len().max(1));
    let split = server::scan_in_pieces(head, usize::from(piece % 32) + 1);
    assert_eq!(
        whole, split,
        "the verdict depends on how the head was split"
    );
}

/// The path normaliser (`normalize.rs`). A normalised path starts with `/`,
/// has no empty or dot segment, and normalises to itself.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize::path(raw) else {
        return;
    };
    assert!(normal.starts_with('/'), "{normal:?} is not absolute");
    assert!(!normal.contains("//"), "{normal:?} has an empty segment");
    for segment in normal.split('/') {
        assert!(
            segment != "." && segment != "..",
            "{normal:?} has a dot segment"
        );
    }
    let again = normalize::path(&normal).expect("a normalised path is accepted");
    assert_eq!(again, normal, "normalising twice changes {raw:?}");
}

/// Gateway configuration parsing (`GatewayConfig::parse`, YAML or JSON). A
/// configuration that parses must parse again from its replicated form, or
/// the nodes that apply it from the log would refuse what the leader took.
pub fn gateway_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = GatewayConfig::parse(text) else {
        return;
    };
    let replicated = config_text(&config);
    let again = GatewayConfig::parse(&replicated)
        .unwrap_or_else(|errors| panic!("the replicated form is refused: {errors}"));
    assert_eq!(
        config_text(&again),
        replicated,
        "the replicated form drifts"
    );
}

/// The peer-plane frame decoder (`peer::codec`), both directions. A frame
/// that decodes must encode again.
pub fn peer_frame(data: &[u8]) {
    if let Ok(request) = peer::codec::decode::<peer::Request>(data) {
        peer::codec::encode(&request).expect("a decoded request encodes");
    }
    if let Ok(response) = peer::codec::decode::<peer::Response>(data) {
        peer::codec::encode(&response).expect("a decoded response encodes");
    }
}

/// The auth stage's JWT path: the input as a bearer token through
/// [`Issuer::check`](crate::pipeline::auth::jwt::Issuer::check) of an issuer
/// holding one published key (size cap, header, `kid` lookup, algorithm from
/// the key, signature, claims, identity headers), and the input as a JWK set
/// through the parser the JWKS refresh uses.
pub fn jwt(data: &[u8]) {
    use crate::pipeline::auth::jwks::KeySet;
    use jsonwebtoken::{Algorithm, Validation};
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = fuzz_issuer().check(token.trim(), FUZZ_NOW_MS);
    }
    let _ = KeySet::parse(
        data,
        &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
        &Validation::new(Algorithm::RS256),
    );
}

/// The time the `jwt` target checks tokens at (2027-01-15).
const FUZZ_NOW_MS: u64 = 1_800_000_000_000;

/// The issuer of the `jwt` target: one ES256 key, `kid` `k1`.
fn fuzz_issuer() -> &'static crate::pipeline::auth::jwt::Issuer {
    use crate::pipeline::auth::jwt::Issuer;
    static ISSUER: std::sync::OnceLock<Issuer> = std::sync::OnceLock::new();
    ISSUER.get_or_init(|| {
        let config = serde_json::from_value(serde_json::json!({
            "name": "fuzz",
            "issuer": "https://idp.example.com/",
            "jwks_uri": "http://127.0.0.1:9/jwks",
            "audiences": ["api"],
        }))
        .expect("a valid issuer");
        let issuer = Issuer::new(&config, &crate::metrics::Metrics::new());
        let installed = issuer.install(
            br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig",
                "x":"Wh-_kfnCePMoY4dZo9Tiowlz81Xlfls_BxXHxa6Rm9k",
                "y":"x7DagZNCfri0gIdcH-r1Ecyo8PL-UqlNW7NFJ_v4t-E"}]}"#,
        );
        assert_eq!(installed, Ok(1), "the fuzz issuer's key installs");
        issuer
    })
}

/// XML bodies (`pipeline/transform/xml.rs`): XML → JSON as for a client's
/// or an upstream's body. What converts must write back as XML that the
/// gateway parses again.
pub fn xml_body(data: &[u8]) {
    use crate::pipeline::transform::xml;
    let Ok(value) = xml::to_json(data, 64) else {
        return;
    };
    if let Ok(text) = xml::from_json(&value, "root") {
        let again = xml::to_json(text.as_bytes(), 128);
        assert!(again.is_ok(), "the gateway's own XML is refused: {again:?}");
    }
}

/// JSON bodies (`pipeline/transform/{json,xml}.rs`): a filter with `*`, a
/// move and JSON → XML through fixed plans; XML written by the gateway must
/// parse again.
pub fn json_body(data: &[u8]) {
    use raft::model::transform::{BodyTransform, Convert, Filter, Move};

    use crate::pipeline::transform::{BodyPlan, xml};
    static PLANS: std::sync::OnceLock<(BodyPlan, BodyPlan)> = std::sync::OnceLock::new();
    let (reshape, to_xml) = PLANS.get_or_init(|| {
        let reshape = BodyPlan::new(&BodyTransform {
            filter: Filter {
                allow: vec!["/a".into(), "/b/*/c".into(), "/0".into()],
                deny: vec!["/a/x".into(), "/b/1".into()],
            },
            moves: vec![Move {
                from: "/a/y".into(),
                to: "/b/-".into(),
            }],
            ..BodyTransform::default()
        });
        let to_xml = BodyPlan::new(&BodyTransform {
            convert: Some(Convert::JsonToXml),
            ..BodyTransform::default()
        });
        (reshape, to_xml)
    });
    let _ = reshape.apply(data);
    if let Ok(text) = to_xml.apply(data) {
        let again = xml::to_json(&text, 128);
        assert!(again.is_ok(), "the gateway's own XML is refused: {again:?}");
    }
}

/// Every fuzz target by name, for the corpus replay.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("request_head", request_head),
    ("path", path),
    ("gateway_config", gateway_config),
    ("peer_frame", peer_frame),
    ("jwt", jwt),
    ("xml_body", xml_body),
    ("json_body", json_body),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{FUZZ_NOW_MS, TARGETS, fuzz_issuer};

    /// The `jwt` corpus holds a token the target's issuer verifies, so the
    /// fuzzer starts past the signature check.
    #[test]
    fn the_jwt_seed_token_verifies() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/jwt");
        let token = std::fs::read_to_string(root.join("valid-es256-token")).unwrap();
        let identity = fuzz_issuer().check(token.trim(), FUZZ_NOW_MS).unwrap();
        assert_eq!(identity.subject.as_deref(), Some("alice"));
        assert_eq!(identity.scopes, ["read", "write"]);
    }

    /// Replays `fuzz/corpus/<target>/*` and `fuzz/regressions/<target>/*`
    /// through each target; a panic names the file.
    #[test]
    fn corpora_and_regressions_replay_cleanly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            let mut seeds = 0;
            for kind in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(kind).join(name)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.expect("a readable directory").path();
                    let data = std::fs::read(&path).expect("a readable input");
                    let outcome = std::panic::catch_unwind(|| target(&data));
                    assert!(outcome.is_ok(), "{name}: {} panics", path.display());
                    seeds += 1;
                }
            }
            assert!(seeds > 0, "fuzz/corpus/{name} holds no input");
            replayed += seeds;
        }
        println!("replayed {replayed} fuzz inputs");
    }
}
