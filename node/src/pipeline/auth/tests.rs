use super::*;

#[test]
fn client_identity_headers_are_removed() {
    let mut headers = HeaderMap::new();
    headers.insert("x-consumer-id", HeaderValue::from_static("admin"));
    headers.insert("x-consumer-name", HeaderValue::from_static("admin"));
    headers.insert("x-consumer-plan", HeaderValue::from_static("gold"));
    headers.insert("x-auth-sub", HeaderValue::from_static("root"));
    headers.insert("x-other", HeaderValue::from_static("1"));
    strip_identity(&mut headers);
    assert_eq!(headers.len(), 1);
    assert!(headers.contains_key("x-other"));
}

#[test]
fn bearer_tokens_are_read() {
    let mut headers = HeaderMap::new();
    assert!(matches!(bearer(&headers), Presented::None));
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer abc.def.ghi"),
    );
    assert!(matches!(bearer(&headers), Presented::Some("abc.def.ghi")));
    headers.insert("authorization", HeaderValue::from_static("bearer  xyz "));
    assert!(matches!(bearer(&headers), Presented::Some("xyz")));
    headers.insert("authorization", HeaderValue::from_static("Basic dTpw"));
    assert!(matches!(bearer(&headers), Presented::None));
    headers.insert("authorization", HeaderValue::from_static("Bearer "));
    assert!(matches!(bearer(&headers), Presented::Garbled));
}

#[test]
fn the_key_parameter_is_removed_from_the_query() {
    let uri: Uri = "/a/b?x=1&key=mk_1_2&y=2".parse().unwrap();
    assert_eq!(query_param(&uri, "key"), Some("mk_1_2"));
    assert_eq!(without_param(&uri, "key").unwrap(), "/a/b?x=1&y=2");
    let only: Uri = "/a?key=k".parse().unwrap();
    assert_eq!(without_param(&only, "key").unwrap(), "/a");
    assert_eq!(query_param(&only, "ke"), None);
}

#[test]
fn claims_become_identity_headers() {
    let claims = serde_json::json!({
        "sub": "alice", "scope": "read write", "roles": ["admin", "ops"],
        "tenant": 42, "iss": "https://idp/", "jti": "t-1", "iat": 10, "exp": 20,
        "org": "acme"
    });
    let names = ClaimNames {
        consumer: Some("org".into()),
        ..ClaimNames::default()
    };
    let identity =
        Identity::from_claims(AuthMethod::Jwt, claims.as_object().unwrap(), &names, None).unwrap();
    assert_eq!(identity.scopes, ["read", "write"]);
    assert_eq!(identity.expires_at, Some(20_000));
    assert_eq!(identity.issued_at, Some(10_000));
    assert_eq!(identity.consumer.as_deref(), Some("acme"));
    let principal = Principal {
        method: AuthMethod::Jwt,
        key_id: None,
        consumer: None,
        identity: Some(Arc::new(identity)),
    };
    let mut headers = HeaderMap::new();
    principal.write_headers(&mut headers);
    assert_eq!(headers["x-auth-sub"], "alice");
    assert_eq!(headers["x-auth-scopes"], "read write");
    assert_eq!(headers["x-auth-roles"], "admin,ops");
    assert_eq!(headers["x-auth-tenant"], "42");
    assert_eq!(headers["x-auth-issuer"], "https://idp/");
    assert_eq!(headers["x-auth-method"], "jwt");

    let bad = serde_json::json!({"sub": "line\nbreak"});
    assert!(matches!(
        Identity::from_claims(AuthMethod::Jwt, bad.as_object().unwrap(), &names, None),
        Err(Refusal::Invalid {
            code: "invalid_claims",
            ..
        })
    ));
}
