use base64::Engine;

use super::*;

fn part(token: &str, i: usize) -> Value {
    let raw = token.split('.').nth(i).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn tokens_name_the_published_key_and_the_rogue_one_does_not() {
    let idp = Idp::new().unwrap();
    let jwks = idp.jwks();
    assert_eq!(jwks["keys"][0]["kid"], "chaos-1");
    assert_eq!(jwks["keys"][0]["crv"], "P-256");
    let token = idp.token("alice").unwrap();
    assert_eq!(part(&token, 0)["kid"], "chaos-1");
    assert_eq!(part(&token, 0)["alg"], "ES256");
    assert_eq!(part(&token, 1)["iss"], ISSUER);
    assert_eq!(part(&token, 1)["aud"], AUDIENCE);
    let rogue = idp.rogue().unwrap();
    assert_eq!(part(&rogue, 0)["kid"], "rogue");
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["kid"] != "rogue")
    );
}
