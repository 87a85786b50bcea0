use base64::Engine as _;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

use super::*;

/// The directory of the shared test protos (google/api and the library).
fn proto_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/proto")
}

/// `t.proto` from `source`, with the shared protos importable.
struct Inline(&'static str);

impl FileResolver for Inline {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == "t.proto" {
            File::from_source(name, self.0)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

fn descriptor_set(source: &'static str) -> String {
    let mut resolver = ChainFileResolver::new();
    resolver.add(Inline(source));
    resolver.add(IncludeFileResolver::new(proto_dir()));
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler.open_file("t.proto").unwrap();
    base64::engine::general_purpose::STANDARD.encode(compiler.encode_file_descriptor_set())
}

fn library() -> Grpc {
    let mut compiler = protox::Compiler::new([proto_dir()]).unwrap();
    compiler.include_imports(true);
    compiler
        .open_file("meridian/test/v1/library.proto")
        .unwrap();
    Grpc {
        descriptor_set: base64::engine::general_purpose::STANDARD
            .encode(compiler.encode_file_descriptor_set()),
        service: "meridian.test.v1.Library".into(),
        streaming: Streaming::Ndjson,
    }
}

/// The rules `source`'s service `t.S` breaks.
fn problems(source: &'static str) -> Vec<String> {
    let grpc = Grpc {
        descriptor_set: descriptor_set(source),
        service: "t.S".into(),
        streaming: Streaming::Ndjson,
    };
    match Service::compile(&grpc) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

/// `service` after the common header (a package `t`, messages `R` and `Inner`).
macro_rules! concat_header {
    ($service:expr) => {
        concat!(
            "syntax = \"proto3\"; package t; import \"google/api/annotations.proto\";\n",
            "message R { string name = 1; int64 id = 2; Inner inner = 3; repeated string tags = 4; }\n",
            "message Inner { string key = 1; }\n",
            $service
        )
    };
}

#[test]
fn templates_parse() {
    let t = Template::parse("/v1/{name=shelves/*}/books/{id}:get").unwrap();
    assert_eq!(
        t.segments,
        [
            Segment::Literal("v1".into()),
            Segment::Literal("shelves".into()),
            Segment::Any,
            Segment::Literal("books".into()),
            Segment::Any,
        ]
    );
    assert_eq!(t.variables[0].path, ["name"]);
    assert_eq!((t.variables[0].start, t.variables[0].end), (1, 3));
    assert_eq!(t.verb.as_deref(), Some("get"));
    let t = Template::parse("/v1/files/{path=**}").unwrap();
    assert_eq!(t.segments.last(), Some(&Segment::Rest));

    for (bad, rule) in [
        ("v1/x", "must start with '/'"),
        ("/v1/{x", "'{' is not closed"),
        ("/v1/**/x", "'**' may only be the last segment"),
        ("/v1//x", "segments must not be empty"),
        ("/v1/{a}/{a}", "variable \"a\" is bound twice"),
        ("/v1/{a-b}", "variable \"a-b\" must be a field path"),
        ("/v1/x{a}", "segment \"x{a}\" must be a literal"),
        ("/v1/x:", "verb \"\" must be a non-empty literal"),
    ] {
        let error = Template::parse(bad).unwrap_err();
        assert!(error.starts_with(rule), "{bad}: {error}");
    }
}

#[test]
fn templates_match_and_capture() {
    let t = Template::parse("/v1/{name=shelves/*}/books/{id}").unwrap();
    let values = t.matches("/v1/shelves/s1/books/7").unwrap();
    let values: Vec<(&str, &str)> = values
        .iter()
        .map(|(v, text)| (v.path[0].as_str(), *text))
        .collect();
    assert_eq!(values, [("name", "shelves/s1"), ("id", "7")]);
    assert!(t.matches("/v1/shelves/s1/books").is_none());
    assert!(t.matches("/v1/shelves/s1/books/7/x").is_none());
    assert!(t.matches("/v1/shelves//books/7").is_none());
    assert!(t.matches("/v2/shelves/s1/books/7").is_none());

    let t = Template::parse("/v1/files/{path=**}").unwrap();
    assert_eq!(t.matches("/v1/files/a/b/c").unwrap()[0].1, "a/b/c");
    assert_eq!(t.matches("/v1/files").unwrap()[0].1, "");
    assert!(t.matches("/v1/other/a").is_none());

    let t = Template::parse("/v1/jobs/{id}:cancel").unwrap();
    assert_eq!(t.matches("/v1/jobs/9:cancel").unwrap()[0].1, "9");
    assert!(t.matches("/v1/jobs/9").is_none());
    assert!(t.matches("/v1/jobs/9:run").is_none());
}

#[test]
fn the_library_service_compiles() {
    let service = Service::compile(&library()).unwrap();
    let summary: Vec<(String, String, String)> = service
        .bindings
        .iter()
        .map(|b| {
            let body = match &b.body {
                BodyTarget::None => String::new(),
                BodyTarget::Message => "*".into(),
                BodyTarget::Field(f) => f.name().into(),
            };
            (b.http_method.clone(), b.grpc_path(), body)
        })
        .collect();
    let expected = [
        ("GET", "/meridian.test.v1.Library/GetBook", ""),
        ("GET", "/meridian.test.v1.Library/GetBook", ""),
        ("POST", "/meridian.test.v1.Library/CreateBook", "book"),
        ("PUT", "/meridian.test.v1.Library/UpdateBook", "*"),
        ("GET", "/meridian.test.v1.Library/ListBooks", ""),
        ("GET", "/meridian.test.v1.Library/GetFile", ""),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| ((*a).into(), (*b).into(), (*c).into()))
        .collect();
    assert_eq!(summary, expected);
    assert!(service.bindings[4].method.is_server_streaming());
}

#[test]
fn every_rule_is_checked() {
    // A method without an annotation.
    assert_eq!(
        problems(concat_header!("service S { rpc Get(R) returns (R); }")),
        [
            "service (t.S/Get) has no google.api.http annotation (every unary and server-streaming method needs one)"
        ]
    );
    // Client streaming is left out, so nothing is transcodable.
    assert_eq!(
        problems(concat_header!(
            "service S { rpc Up(stream R) returns (R); }"
        )),
        ["service (t.S) has no method that can be transcoded"]
    );
    // Variables name singular scalar fields.
    assert_eq!(
        problems(concat_header!(
            "service S { rpc Get(R) returns (R) { option (google.api.http) = { get: \"/v1/{nope}\" }; } }"
        )),
        ["service (t.S/Get) path template \"/v1/{nope}\": \"nope\" is not a field of t.R"]
    );
    assert_eq!(
        problems(concat_header!(
            "service S { rpc Get(R) returns (R) { option (google.api.http) = { get: \"/v1/{inner}\" }; } }"
        )),
        [
            "service (t.S/Get) path template \"/v1/{inner}\": \"inner\" is a message or map, which a path value cannot set"
        ]
    );
    assert_eq!(
        problems(concat_header!(
            "service S { rpc Get(R) returns (R) { option (google.api.http) = { get: \"/v1/{tags}\" }; } }"
        )),
        [
            "service (t.S/Get) path template \"/v1/{tags}\": \"tags\" is repeated, which a path value cannot set"
        ]
    );
    // Nested fields are fine.
    assert!(
        problems(concat_header!(
            "service S { rpc Get(R) returns (R) { option (google.api.http) = { get: \"/v1/{inner.key}\" }; } }"
        ))
        .is_empty()
    );
    // The body.
    assert_eq!(
        problems(concat_header!(
            "service S { rpc Get(R) returns (R) { option (google.api.http) = { post: \"/v1\" body: \"nope\" }; } }"
        )),
        ["service (t.S/Get) body \"nope\" is not a field of t.R"]
    );
    assert_eq!(
        problems(concat_header!(
            "service S { rpc Get(R) returns (R) { option (google.api.http) = { get: \"/v1\" body: \"*\" }; } }"
        )),
        ["service (t.S/Get) a GET binding cannot take a body"]
    );
    assert_eq!(
        problems(concat_header!(
            "service S { rpc Get(R) returns (R) { option (google.api.http) = { get: \"/v1\" response_body: \"name\" }; } }"
        )),
        ["service (t.S/Get) uses response_body, which is not supported"]
    );
    // A bad template inside an additional binding.
    assert_eq!(
        problems(concat_header!(
            "service S { rpc Get(R) returns (R) { option (google.api.http) = { get: \"/v1\" additional_bindings { get: \"v2\" } }; } }"
        )),
        ["service (t.S/Get) path template \"v2\" must start with '/'"]
    );
}

#[test]
fn the_descriptor_set_and_service_are_checked() {
    let mut grpc = library();
    grpc.service = "meridian.test.v1.Nope".into();
    let errors = Service::compile(&grpc).unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "service (meridian.test.v1.Nope) must name a service of the descriptor set"
    );

    grpc.descriptor_set = "not base64!".into();
    let errors = Service::compile(&grpc).unwrap_err();
    assert_eq!(errors[0].key, "descriptor_set");
    assert!(
        errors[0].rule.starts_with("must be base64"),
        "{}",
        errors[0]
    );

    grpc.descriptor_set = base64::engine::general_purpose::STANDARD.encode(b"\x0a\x05junk!");
    let errors = Service::compile(&grpc).unwrap_err();
    assert!(
        errors[0]
            .rule
            .starts_with("must be a serialized FileDescriptorSet"),
        "{}",
        errors[0]
    );

    // A set without google/api/annotations.proto has no rules at all.
    let mut compiler = protox::Compiler::with_file_resolver(Inline(
        "syntax = \"proto3\"; package t; message R {} service S { rpc Get(R) returns (R); }",
    ));
    compiler.open_file("t.proto").unwrap();
    let grpc = Grpc {
        descriptor_set: base64::engine::general_purpose::STANDARD
            .encode(compiler.encode_file_descriptor_set()),
        service: "t.S".into(),
        streaming: Streaming::Ndjson,
    };
    let errors = Service::compile(&grpc).unwrap_err();
    assert!(
        errors[0]
            .rule
            .contains("lacks google/api/annotations.proto"),
        "{}",
        errors[0]
    );
}
