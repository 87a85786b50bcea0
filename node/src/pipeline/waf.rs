//! `waf`: request inspection for SQL injection, XSS, path traversal and
//! command injection. Runs after `route` (the route's `waf` block replaces
//! the global one; `mode: off` turns it off, `detect` only logs and counts).
//!
//! What is inspected, each value on its own and after decoding:
//! - the normalised path, with its remaining escapes decoded;
//! - each query key and value (`+` as space, percent-decoded up to twice to
//!   catch double encoding, then HTML entities);
//! - `User-Agent`, `Referer`, each `Cookie` pair and the headers listed in
//!   `waf.headers` (percent- and entity-decoded); `User-Agent` is also
//!   checked against known attack tools (`scanner-agent`);
//! - the first `waf.body_limit` bytes (default 8 KiB) of bodies typed
//!   `application/x-www-form-urlencoded` (each pair, as a query),
//!   `application/json` or `*+json` (each string, keys included, with JSON
//!   escapes decoded) and `text/plain` (as a whole). Other bodies are not
//!   inspected. The inspected bytes are kept and sent upstream first, then
//!   the rest of the body streams as before: the upstream receives the body
//!   unchanged.
//!
//! Work per request is bounded: at most [`MAX_VALUES`] values, each at most
//! the URI, header or body limit long, each matched once by one linear-time
//! [`regex::bytes::RegexSet`] (no backtracking).
//!
//! Rule ids (see docs/policies.md for what each one catches): `sqli-union`,
//! `sqli-tautology`, `sqli-comment`, `sqli-stacked`, `sqli-function`,
//! `xss-script`, `xss-handler`, `xss-scheme`, `xss-tag`, `traversal-dotdot`,
//! `traversal-file`, `traversal-null`, `cmdi-chain`, `cmdi-subshell`,
//! `scanner-agent`.
//!
//! A match counts `meridian_waf_matches_total{rule, mode}` and logs the rule
//! and where it matched; in `block` mode the answer is 403 `waf_blocked`
//! naming the rule.

use crate::normalize::hex;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, COOKIE, REFERER, USER_AGENT};
use http::{HeaderMap, HeaderName};
use http_body::Body as _;
use raft::model::policy::{WafMode, WafPolicy};
use regex::bytes::{Regex, RegexSet, RegexSetBuilder};

use super::{Flow, Request, RequestCx, Stage, Step, ready, wait};
use crate::body::BufferedPrefix;
use crate::error::{Error, Kind};
use crate::metrics::Metrics;

/// At most this many values (query pairs, cookies, body strings) are
/// inspected per request; the rest is not.
pub const MAX_VALUES: usize = 512;

/// The rules: id and pattern (ASCII case-insensitive, on bytes).
const RULES: &[(&str, &str)] = &[
    (
        "sqli-union",
        r"\bunion(?:\s|/\*.*?\*/|\()+(?:(?:all|distinct)(?:\s|/\*.*?\*/|\()+)?select\b",
    ),
    (
        "sqli-tautology",
        r#"['"`]\s*\)*\s*(?:(?:or|and|xor)\b|\|\||&&)\s*\(*\s*['"`]?[\w.-]*['"`]?\s*(?:=|<>|!=|<|>|\blike\b|\bis\b|\bbetween\b|\bregexp\b)"#,
    ),
    (
        "sqli-comment",
        r#"['"`]\s*\)*\s*(?:--(?:\s|$)|#\s*$|/\*|;\s*--)"#,
    ),
    (
        "sqli-stacked",
        r";\s*(?:drop\s+(?:table|database)|truncate\s+table|delete\s+from|insert\s+into|update\s+\w+\s+set|shutdown\b|exec(?:ute)?\s+(?:xp_|sp_|master\.)|declare\s+@)",
    ),
    (
        "sqli-function",
        r#"\b(?:sleep|pg_sleep|benchmark)\s*\(\s*\d|\b(?:extractvalue|updatexml|load_file)\s*\(|\bwaitfor\s+delay\s+['"]|\binto\s+(?:out|dump)file\b|\binformation_schema\b|\bxp_cmdshell\b|@@version\b"#,
    ),
    ("xss-script", r"<\s*/?\s*script\b"),
    ("xss-handler", r#"<[a-z!/][^>]*?[\s/"'`]on[a-z]{3,}\s*="#),
    (
        "xss-scheme",
        r#"^\s*(?:java|vb|live)script:\S|['"=(]\s*(?:java|vb|live)script\s*:|data\s*:\s*text/html"#,
    ),
    (
        "xss-tag",
        r"<\s*(?:iframe|object|embed|applet|frameset|frame|base|meta|isindex)\b",
    ),
    (
        "traversal-dotdot",
        r"(?:^|[/\\=])\.\.(?:[/\\;]|$|\xc0[\xaf\x9c]|\xe0\x80\xaf)",
    ),
    (
        "traversal-file",
        r"/etc/(?:passwd|shadow|group|hosts|issue)\b|/proc/self/|\b(?:boot|win|system)\.ini\b|\b[a-z]:\\+(?:windows|winnt|boot)\b|\bweb-inf/|/\.ssh/|/\.env\b|/\.git/|/\.htaccess\b",
    ),
    ("traversal-null", r"\x00"),
    (
        "cmdi-chain",
        r#"(?:[;&|\n\r\x60]|\$\()\s*(?:cat|ls|id|whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|zsh|ksh|python[23]?|perl|ruby|php|ping|rm|chmod|chown|kill|nslookup|ifconfig|powershell|cmd(?:\.exe)?)(?:\s+(?:[-/$~.'"`]|(?:https?|ftp)://)|\s*$|\s*[;&|<>)`])"#,
    ),
    (
        "cmdi-subshell",
        r"\$\{ifs\}|\$ifs\b|\$\(\s*(?:sleep|echo|printf|base64)\b|\x60\s*(?:sleep|echo)\s+\S[^\x60]*\x60",
    ),
];

/// Known attack tools in `User-Agent`.
const SCANNER_AGENT: &str = r"\b(?:sqlmap|nikto|nmap|masscan|acunetix|w3af|dirbuster|gobuster|nessus|openvas|wpscan|zgrab|nuclei|havij|netsparker|fimap|commix)\b";

struct Engine {
    set: RegexSet,
    scanner: Regex,
}

static ENGINE: LazyLock<Engine> = LazyLock::new(|| Engine {
    set: RegexSetBuilder::new(RULES.iter().map(|(_, pattern)| format!("(?i-u){pattern}")))
        .dfa_size_limit(16 << 20)
        .build()
        .expect("the WAF rules compile"),
    scanner: Regex::new(&format!("(?i-u){SCANNER_AGENT}")).expect("the scanner rule compiles"),
});

/// Every rule id, in table order (`scanner-agent` last).
pub fn rule_ids() -> impl Iterator<Item = &'static str> {
    RULES
        .iter()
        .map(|(id, _)| *id)
        .chain(std::iter::once("scanner-agent"))
}

/// Where a rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// The rule id.
    pub rule: &'static str,
    /// `path`, `query`, `header`, `cookie` or `body`.
    pub location: &'static str,
}

/// The kind of body the WAF reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/json`, `*+json`.
    Json,
    /// `text/plain`.
    Text,
    /// `application/xml`, `text/xml`, `*+xml`: text and attribute values.
    Xml,
    /// `multipart/form-data` with this boundary: each part's name, file
    /// name and, unless it is a file of another type, its content.
    Multipart(Vec<u8>),
}

impl BodyKind {
    /// The kind for a `Content-Type`, if the WAF reads such bodies.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
        Self::of_type(value)
    }

    /// The kind for a content type such as `multipart/form-data; boundary=x`.
    fn of_type(value: &str) -> Option<Self> {
        let mut params = value.split(';');
        let essence = params.next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-www-form-urlencoded" => Some(Self::Form),
            "application/json" => Some(Self::Json),
            "text/plain" => Some(Self::Text),
            "application/xml" | "text/xml" => Some(Self::Xml),
            "multipart/form-data" => params.find_map(|p| {
                let (name, value) = p.split_once('=')?;
                (name.trim().eq_ignore_ascii_case("boundary"))
                    .then(|| Self::Multipart(value.trim().trim_matches('"').as_bytes().to_vec()))
            }),
            other if other.starts_with("application/") && other.ends_with("+json") => {
                Some(Self::Json)
            }
            other if other.starts_with("application/") && other.ends_with("+xml") => {
                Some(Self::Xml)
            }
            _ => None,
        }
    }
}

/// A compiled `waf` block.
#[derive(Debug, Clone)]
pub struct Waf {
    /// Block, detect or off.
    pub mode: WafMode,
    body_limit: usize,
    headers: Vec<HeaderName>,
    /// Bit `i` set: rule `i` of [`rule_ids`] is off.
    disabled: u32,
}

impl Waf {
    /// Compiles a validated block.
    pub fn new(policy: &WafPolicy) -> Self {
        let disabled = rule_ids()
            .enumerate()
            .filter(|(_, id)| policy.disabled_rules.iter().any(|d| d == id))
            .fold(0u32, |bits, (i, _)| bits | (1 << i));
        Self {
            mode: policy.mode,
            body_limit: usize::try_from(policy.body_limit.bytes()).unwrap_or(usize::MAX),
            headers: policy
                .headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            disabled,
        }
    }

    fn enabled(&self, index: usize) -> bool {
        self.disabled & (1 << index) == 0
    }

    /// The first rule matching `input` (already decoded).
    fn scan(&self, input: &[u8]) -> Option<&'static str> {
        if input.is_empty() || !ENGINE.set.is_match(input) {
            return None;
        }
        ENGINE
            .set
            .matches(input)
            .into_iter()
            .find(|i| self.enabled(*i))
            .map(|i| RULES[i].0)
    }

    /// Inspects the request head: path, query and the selected headers.
    pub fn inspect_head(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<Finding> {
        let mut scratch = Scratch::default();
        let mut budget = MAX_VALUES;
        let found = |rule| Some(Finding { rule, location: "" });
        let at = |location| move |f: Finding| Finding { location, ..f };
        if let Some(rule) = self.scan(scratch.decode(path.as_bytes(), false)) {
            return found(rule).map(at("path"));
        }
        if let Some(query) = query
            && let Some(rule) = self.scan_pairs(&mut scratch, query.as_bytes(), b'&', &mut budget)
        {
            return found(rule).map(at("query"));
        }
        if let Some(agent) = headers.get(USER_AGENT) {
            let index = RULES.len();
            if self.enabled(index) && ENGINE.scanner.is_match(agent.as_bytes()) {
                return found("scanner-agent").map(at("header"));
            }
        }
        let named = [&USER_AGENT, &REFERER]
            .into_iter()
            .chain(self.headers.iter());
        for name in named {
            for value in headers.get_all(name) {
                if let Some(rule) = self.scan(scratch.decode(value.as_bytes(), false)) {
                    return found(rule).map(at("header"));
                }
            }
        }
        for value in headers.get_all(COOKIE) {
            if let Some(rule) = self.scan_pairs(&mut scratch, value.as_bytes(), b';', &mut budget) {
                return found(rule).map(at("cookie"));
            }
        }
        None
    }

    /// Inspects (a prefix of) a body of `kind`.
    pub fn inspect_body(&self, kind: &BodyKind, body: &[u8]) -> Option<Finding> {
        let mut scratch = Scratch::default();
        let mut budget = MAX_VALUES;
        self.scan_body(kind, body, &mut scratch, &mut budget)
            .map(|rule| Finding {
                rule,
                location: "body",
            })
    }

    fn scan_body(
        &self,
        kind: &BodyKind,
        body: &[u8],
        scratch: &mut Scratch,
        budget: &mut usize,
    ) -> Option<&'static str> {
        match kind {
            BodyKind::Form => self.scan_pairs(scratch, body, b'&', budget),
            BodyKind::Text => self.scan(body),
            BodyKind::Json => {
                let mut rule = None;
                let Scratch { json, decoded } = scratch;
                for_each_json_string(body, json, |text| {
                    if *budget == 0 {
                        return false;
                    }
                    *budget -= 1;
                    rule = self.scan(decode(text, false, decoded));
                    rule.is_none()
                });
                rule
            }
            BodyKind::Xml => {
                let mut rule = None;
                for_each_xml_text(body, |text| {
                    if *budget == 0 {
                        return false;
                    }
                    *budget -= 1;
                    rule = self.scan(decode(text, false, &mut scratch.decoded));
                    rule.is_none()
                });
                rule
            }
            BodyKind::Multipart(boundary) => {
                for part in multipart_parts(body, boundary) {
                    if *budget == 0 {
                        return None;
                    }
                    *budget -= 1;
                    for value in [part.name, part.filename].into_iter().flatten() {
                        if let Some(rule) = self.scan(scratch.decode(value, false)) {
                            return Some(rule);
                        }
                    }
                    // A field, or a file of a kind the WAF reads; other
                    // files (images, archives) are not inspected.
                    let kind = match (part.filename, part.content_type) {
                        (_, Some(content_type)) => BodyKind::of_type(content_type),
                        (None, None) => Some(BodyKind::Text),
                        (Some(_), None) => None,
                    };
                    if let Some(kind) = kind
                        && !matches!(kind, BodyKind::Multipart(_))
                        && let Some(rule) = self.scan_body(&kind, part.body, scratch, budget)
                    {
                        return Some(rule);
                    }
                }
                None
            }
        }
    }

    /// Each `key=value` pair split on `separator`: key and value decoded
    /// (`+` as space) and inspected on their own.
    fn scan_pairs(
        &self,
        scratch: &mut Scratch,
        text: &[u8],
        separator: u8,
        budget: &mut usize,
    ) -> Option<&'static str> {
        for pair in text.split(|b| *b == separator) {
            if *budget == 0 {
                return None;
            }
            *budget -= 1;
            let (key, value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            let plus = separator == b'&';
            for part in [key, value] {
                if let Some(rule) = self.scan(scratch.decode(part, plus)) {
                    return Some(rule);
                }
            }
        }
        None
    }
}

/// Each text (its references resolved) and attribute value of an XML
/// prefix, until `f` says stop; a malformed or cut-off construct ends the
/// walk (what came before it was inspected).
fn for_each_xml_text(body: &[u8], mut f: impl FnMut(&[u8]) -> bool) {
    use quick_xml::XmlVersion;
    use quick_xml::events::Event;
    let mut reader = quick_xml::reader::Reader::from_reader(body);
    let mut text = String::new();
    let flush = |text: &mut String, f: &mut dyn FnMut(&[u8]) -> bool| {
        let go = text.trim().is_empty() || f(text.as_bytes());
        text.clear();
        go
    };
    loop {
        let go = match reader.read_event() {
            Ok(Event::Start(element) | Event::Empty(element)) => {
                flush(&mut text, &mut f)
                    && element.attributes().flatten().all(|attribute| {
                        attribute
                            .normalized_value(XmlVersion::Implicit1_0)
                            .map_or(true, |value| f(value.as_bytes()))
                    })
            }
            Ok(Event::End(_)) => flush(&mut text, &mut f),
            Ok(Event::Text(content)) => {
                text.push_str(&content.xml10_content());
                true
            }
            Ok(Event::CData(data)) => {
                text.push_str(&data.xml10_content());
                true
            }
            Ok(Event::GeneralRef(reference)) => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(ch)) => Some(ch),
                    _ => super::transform::xml::predefined(&reference),
                };
                if let Some(ch) = resolved {
                    text.push(ch);
                }
                true
            }
            Ok(Event::Eof) | Err(_) => {
                flush(&mut text, &mut f);
                return;
            }
            Ok(_) => true,
        };
        if !go {
            return;
        }
    }
}

/// One part of a `multipart/form-data` body.
struct Part<'a> {
    name: Option<&'a [u8]>,
    filename: Option<&'a [u8]>,
    content_type: Option<&'a str>,
    body: &'a [u8],
}

/// The parts of (a prefix of) a multipart body; a cut-off last part is
/// returned with what arrived.
fn multipart_parts<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<Part<'a>> {
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    let mut parts = Vec::new();
    let mut rest = match memchr::memmem::find(body, &delimiter) {
        Some(at) => &body[at + delimiter.len()..],
        None => return parts,
    };
    let mut next_delimiter = b"\r\n".to_vec();
    next_delimiter.extend_from_slice(&delimiter);
    while !rest.starts_with(b"--") {
        let Some(head_end) = memchr::memmem::find(rest, b"\r\n\r\n") else {
            break;
        };
        let head = &rest[..head_end];
        let after = &rest[head_end + 4..];
        let (content, next) = match memchr::memmem::find(after, &next_delimiter) {
            Some(at) => (&after[..at], Some(&after[at + next_delimiter.len()..])),
            None => (after, None),
        };
        let mut part = Part {
            name: None,
            filename: None,
            content_type: None,
            body: content,
        };
        for line in head.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if name.eq_ignore_ascii_case(b"content-disposition") {
                part.name = disposition_parameter(value, b"name");
                part.filename = disposition_parameter(value, b"filename");
            } else if name.eq_ignore_ascii_case(b"content-type") {
                part.content_type = std::str::from_utf8(value).ok().map(str::trim);
            }
        }
        parts.push(part);
        match next {
            Some(next) => rest = next,
            None => break,
        }
    }
    parts
}

/// The value of `parameter` (`name="x"`) in a `Content-Disposition` value.
fn disposition_parameter<'a>(value: &'a [u8], parameter: &[u8]) -> Option<&'a [u8]> {
    value.split(|b| *b == b';').skip(1).find_map(|p| {
        let p = p.trim_ascii();
        let eq = p.iter().position(|b| *b == b'=')?;
        if !p[..eq].trim_ascii().eq_ignore_ascii_case(parameter) {
            return None;
        }
        let v = p[eq + 1..].trim_ascii();
        Some(
            v.strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v),
        )
    })
}

/// Reusable buffers for decoding.
#[derive(Default)]
struct Scratch {
    decoded: Vec<u8>,
    json: Vec<u8>,
}

impl Scratch {
    fn decode(&mut self, input: &[u8], plus: bool) -> &[u8] {
        decode(input, plus, &mut self.decoded)
    }
}

/// Percent-decodes `input` (twice at most, for double encoding; `+` as a
/// space when `plus`), then decodes HTML character references. Invalid
/// escapes are kept as they are.
pub fn decode<'a>(input: &[u8], plus: bool, out: &'a mut Vec<u8>) -> &'a [u8] {
    out.clear();
    percent_decode(input, plus, out);
    if out.contains(&b'%') {
        let once = std::mem::take(out);
        percent_decode(&once, false, out);
    }
    if out.contains(&b'&') {
        let escaped = std::mem::take(out);
        html_decode(&escaped, out);
    }
    out
}

fn percent_decode(input: &[u8], plus: bool, out: &mut Vec<u8>) {
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(if plus && b == b'+' { b' ' } else { b });
        i += 1;
    }
}

/// Decodes `&lt;`, `&gt;`, `&quot;`, `&apos;`, `&amp;`, `&colon;`,
/// `&lpar;`, `&rpar;`, `&sol;`, `&Tab;`, `&NewLine;` and numeric references
/// (`&#60;`, `&#x3c;`, with or without `;`).
fn html_decode(input: &[u8], out: &mut Vec<u8>) {
    const NAMED: &[(&[u8], u8)] = &[
        (b"lt", b'<'),
        (b"gt", b'>'),
        (b"quot", b'"'),
        (b"apos", b'\''),
        (b"amp", b'&'),
        (b"colon", b':'),
        (b"lpar", b'('),
        (b"rpar", b')'),
        (b"sol", b'/'),
        (b"tab", b'\t'),
        (b"newline", b'\n'),
    ];
    let mut i = 0;
    'outer: while i < input.len() {
        if input[i] != b'&' {
            out.push(input[i]);
            i += 1;
            continue;
        }
        let rest = &input[i + 1..];
        if let Some(numeric) = rest.strip_prefix(b"#") {
            let (radix, digits) = match numeric.first() {
                Some(b'x' | b'X') => (16, &numeric[1..]),
                _ => (10, numeric),
            };
            let len = digits
                .iter()
                .take(8)
                .take_while(|b| {
                    if radix == 16 {
                        b.is_ascii_hexdigit()
                    } else {
                        b.is_ascii_digit()
                    }
                })
                .count();
            if len > 0 {
                let text = std::str::from_utf8(&digits[..len]).unwrap_or("0");
                let value = u32::from_str_radix(text, radix).unwrap_or(0xFFFD);
                let ch = char::from_u32(value).unwrap_or('\u{FFFD}');
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                let consumed = 1 + usize::from(radix == 16) + len;
                i += 1 + consumed;
                if input.get(i) == Some(&b';') {
                    i += 1;
                }
                continue;
            }
        } else {
            for (name, byte) in NAMED {
                if rest.len() > name.len()
                    && rest[..name.len()].eq_ignore_ascii_case(name)
                    && rest[name.len()] == b';'
                {
                    out.push(*byte);
                    i += 2 + name.len();
                    continue 'outer;
                }
            }
        }
        out.push(b'&');
        i += 1;
    }
}

/// Calls `visit` with every string literal of (a possibly truncated) JSON
/// text, escapes decoded, until it returns `false`.
fn for_each_json_string(json: &[u8], buf: &mut Vec<u8>, mut visit: impl FnMut(&[u8]) -> bool) {
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        buf.clear();
        while i < json.len() && json[i] != b'"' {
            if json[i] == b'\\' && i + 1 < json.len() {
                let escaped = json[i + 1];
                i += 2;
                match escaped {
                    b'n' => buf.push(b'\n'),
                    b'r' => buf.push(b'\r'),
                    b't' => buf.push(b'\t'),
                    b'b' | b'f' => buf.push(b' '),
                    b'u' => {
                        let code = json
                            .get(i..i + 4)
                            .and_then(|h| std::str::from_utf8(h).ok())
                            .and_then(|h| u32::from_str_radix(h, 16).ok());
                        match code {
                            Some(code) => {
                                let ch = char::from_u32(code).unwrap_or('\u{FFFD}');
                                let mut utf8 = [0u8; 4];
                                buf.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                                i += 4;
                            }
                            None => buf.push(b'u'),
                        }
                    }
                    other => buf.push(other),
                }
                continue;
            }
            buf.push(json[i]);
            i += 1;
        }
        i += 1;
        if !visit(buf) {
            return;
        }
    }
}

/// Reads up to `limit` bytes of the request body (whole frames, as they
/// come), leaving the rest in the request: what was read, and the bytes to
/// inspect. A client that stalls past `idle` gets 408.
async fn read_prefix(
    req: &mut Request,
    limit: usize,
    idle: Duration,
) -> Result<(BufferedPrefix, Bytes), Error> {
    let mut prefix = BufferedPrefix::default();
    let mut seen = BytesMut::new();
    while seen.len() < limit && !req.body().is_end_stream() {
        let Some(frame) = crate::body::next_request_frame(req.body_mut(), idle).await? else {
            break;
        };
        match frame.into_data() {
            Ok(data) => {
                let take = data.len().min(limit - seen.len());
                seen.extend_from_slice(&data[..take]);
                prefix.data.push(data);
            }
            Err(frame) => {
                prefix.trailers = frame.into_trailers().ok();
                break;
            }
        }
    }
    Ok((prefix, seen.freeze()))
}

/// The `waf` stage.
pub struct WafStage {
    metrics: Arc<Metrics>,
}

impl WafStage {
    /// The stage, counting matches in `metrics`.
    pub fn new(metrics: &Arc<Metrics>) -> Self {
        Self {
            metrics: metrics.clone(),
        }
    }

    /// Counts and logs a finding; the error to answer with in `block` mode.
    fn found(&self, cx: &RequestCx, waf: &Waf, finding: Finding) -> Result<Flow, Error> {
        let mode = match waf.mode {
            WafMode::Block => "block",
            _ => "detect",
        };
        self.metrics
            .counter(
                "meridian_waf_matches_total",
                &[("rule", finding.rule.to_owned()), ("mode", mode.to_owned())],
            )
            .increment(1);
        tracing::warn!(
            rule = finding.rule,
            location = finding.location,
            mode,
            client = %cx.client_ip,
            request_id = ?cx.request_id,
            route = cx.route.as_ref().map_or("none", |r| r.name.as_str()),
            "waf rule matched"
        );
        if waf.mode == WafMode::Block {
            return Err(Kind::Forbidden {
                code: "waf_blocked",
                message: format!("the request was blocked by WAF rule {}", finding.rule).into(),
            }
            .into());
        }
        Ok(Flow::Continue)
    }

    /// Inspects the head, then as much of the body as the policy asks.
    async fn inspect(&self, cx: &mut RequestCx, req: &mut Request) -> Result<Flow, Error> {
        let snapshot = cx.snapshot.clone();
        let Some(waf) = enforced(&snapshot, cx.route.as_deref()) else {
            return Ok(Flow::Continue);
        };
        // The normalised path (dot segments are gone, so traversal shows
        // up in the query, headers and body), decoded further here.
        if let Some(finding) = waf.inspect_head(&cx.path, req.uri().query(), req.headers()) {
            return self.found(cx, waf, finding);
        }
        let Some(kind) = BodyKind::of(req.headers()) else {
            return Ok(Flow::Continue);
        };
        if waf.body_limit == 0 || req.body().is_end_stream() {
            return Ok(Flow::Continue);
        }
        let idle = cx.route.as_ref().map_or(Duration::from_secs(60), |r| {
            r.upstream.definition().timeouts.idle
        });
        let (prefix, seen) = read_prefix(req, waf.body_limit, idle).await?;
        req.extensions_mut().insert(prefix);
        if let Some(finding) = waf.inspect_body(&kind, &seen) {
            return self.found(cx, waf, finding);
        }
        Ok(Flow::Continue)
    }
}

impl Stage for WafStage {
    fn name(&self) -> &'static str {
        "waf"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request) -> Step<'a, Flow> {
        if enforced(&cx.snapshot, cx.route.as_deref()).is_none() {
            return ready(Ok(Flow::Continue));
        }
        wait(self.inspect(cx, req))
    }

    fn acts_on(&self, route: &super::route::Route, snapshot: &crate::snapshot::Snapshot) -> bool {
        enforced(snapshot, Some(route)).is_some()
    }
}

/// The WAF policy in force for `route`, unless there is none or it is off.
fn enforced<'s>(
    snapshot: &'s crate::snapshot::Snapshot,
    route: Option<&super::route::Route>,
) -> Option<&'s Waf> {
    snapshot
        .policies
        .waf(route)
        .filter(|waf| waf.mode != WafMode::Off)
}

#[cfg(test)]
mod tests;
