//! Canonical HTTP/1.1 heads, scanned without `httparse`.
//!
//! Nearly every head a gateway reads is canonical: `CRLF` line ends, one
//! space between the parts of the start line, field names of token
//! characters followed straight by the colon, no obsolete line folding, no
//! empty values. [`request`] and [`response`] take exactly such heads and
//! answer `None` for anything else, an incomplete head included; their
//! callers (`server::fast`, `proxy::h1`) then parse with `httparse`, as
//! before. What these functions accept is a strict subset of what
//! `httparse` accepts, and for it they find what `httparse` finds: the same
//! length, start line and field spans (proptested below against
//! `httparse` itself). So the grammar, its errors and its leniencies stay
//! `httparse`'s; only the common case is quicker.
//!
//! Why: `httparse` spends about 230 instructions per field of a small
//! response head (docs/benchmarks.md), most of them walking names and
//! values a byte at a time. Here a value is checked eight bytes at a time
//! and a name through one table.

use http::HeaderName;

/// Where a field's name and value lie in the head: start and end offsets
/// of each.
pub(crate) type Span = [usize; 4];

/// A canonical request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RequestLine {
    /// The head's length, up to and including its empty line.
    pub(crate) len: usize,
    /// Start and end of the method.
    pub(crate) method: (usize, usize),
    /// Start and end of the request target.
    pub(crate) target: (usize, usize),
}

/// A canonical response head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StatusLine {
    /// The head's length, up to and including its empty line.
    pub(crate) len: usize,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor: u8,
    /// The status code, three digits.
    pub(crate) code: u16,
}

/// Scans `method SP target SP "HTTP/1.1" CRLF` and at most `max` fields at
/// the start of `buf`; `fields` receives the fields' spans.
pub(crate) fn request(buf: &[u8], max: usize, fields: &mut Vec<Span>) -> Option<RequestLine> {
    let method_end = token_end(buf, 0);
    if method_end == 0 || *buf.get(method_end)? != b' ' {
        return None;
    }
    let target_start = method_end + 1;
    // Target bytes: visible ASCII and obs-text, as httparse's.
    let target_end = target_start + visible(&buf[target_start..], b'!');
    if target_end == target_start || buf.get(target_end..target_end + 11)? != b" HTTP/1.1\r\n" {
        return None;
    }
    let len = scan_fields(buf, target_end + 11, max, fields)?;
    Some(RequestLine {
        len,
        method: (0, method_end),
        target: (target_start, target_end),
    })
}

/// Scans `"HTTP/1." digit SP 3digit SP reason CRLF` and at most `max`
/// fields at the start of `buf`; `fields` receives the fields' spans.
pub(crate) fn response(buf: &[u8], max: usize, fields: &mut Vec<Span>) -> Option<StatusLine> {
    let line = buf.get(..13)?;
    if !line.starts_with(b"HTTP/1.") || line[8] != b' ' || line[12] != b' ' {
        return None;
    }
    let minor = match line[7] {
        minor @ (b'0' | b'1') => minor - b'0',
        _ => return None,
    };
    // Three digits: 0 to 999.
    let code = u16::try_from(crate::text::digits(&line[9..12])?).ok()?;
    // The reason phrase: HTAB, SP, visible ASCII and obs-text.
    let reason_end = line_end(buf, 13)?;
    let len = scan_fields(buf, reason_end + 2, max, fields)?;
    Some(StatusLine { len, minor, code })
}

/// The spans of the fields `httparse` found in `buf`, into `fields`.
pub(crate) fn spans_of(buf: &[u8], headers: &[httparse::Header<'_>], fields: &mut Vec<Span>) {
    let offset = |part: &[u8]| part.as_ptr() as usize - buf.as_ptr() as usize;
    fields.clear();
    fields.extend(headers.iter().map(|field| {
        let (name, value) = (offset(field.name.as_bytes()), offset(field.value));
        [
            name,
            name + field.name.len(),
            value,
            value + field.value.len(),
        ]
    }));
}

/// Scans `name ":" OWS value OWS CRLF` lines from `at` to the empty line;
/// the offset after it.
fn scan_fields(buf: &[u8], mut at: usize, max: usize, fields: &mut Vec<Span>) -> Option<usize> {
    fields.clear();
    loop {
        if buf.get(at..at + 2)? == b"\r\n" {
            return Some(at + 2);
        }
        if fields.len() == max {
            return None;
        }
        let name_end = token_end(buf, at);
        if name_end == at || *buf.get(name_end)? != b':' {
            return None;
        }
        let mut start = name_end + 1;
        while matches!(buf.get(start), Some(b' ' | b'\t')) {
            start += 1;
        }
        let mut end = line_end(buf, start)?;
        let next = end + 2;
        while end > start && matches!(buf[end - 1], b' ' | b'\t') {
            end -= 1;
        }
        // An empty value is left to httparse, which places it oddly.
        if end == start {
            return None;
        }
        fields.push([at, name_end, start, end]);
        at = next;
    }
}

/// Where the `CRLF` ending a line of field-value bytes (HTAB, SP, visible
/// ASCII, obs-text) that starts at `at` lies.
fn line_end(buf: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at += visible(&buf[at..], b' ');
        match buf.get(at)? {
            b'\t' => at += 1,
            b'\r' if *buf.get(at + 1)? == b'\n' => return Some(at),
            _ => return None,
        }
    }
}

/// The length of the run at the start of `bytes` of bytes at least `low`
/// (at most 0x80) other than DEL: eight at a time.
fn visible(bytes: &[u8], low: u8) -> usize {
    let mut n = 0;
    while let Some(word) = bytes[n..].first_chunk::<8>() {
        let stops = stops(u64::from_le_bytes(*word), low);
        if stops != 0 {
            // Little-endian: the lowest flag is the first byte.
            return n + stops.trailing_zeros() as usize / 8;
        }
        n += 8;
    }
    while let Some(&b) = bytes.get(n) {
        if b < low || b == 0x7f {
            break;
        }
        n += 1;
    }
    n
}

/// The high bit of each byte of `word` below `low` (at most 0x80) or equal
/// to DEL, by the "has less than" and "has zero byte" bit tricks. A borrow
/// only runs upwards, so the lowest flag is exact (higher ones may not be).
const fn stops(word: u64, low: u8) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = ONES * 0x80;
    let below = word.wrapping_sub(ONES * low as u64) & !word;
    let del = word ^ (ONES * 0x7f);
    let del = del.wrapping_sub(ONES) & !del;
    (below | del) & HIGHS
}

/// The end of the run of token characters (RFC 9110 §5.6.2) from `at`.
fn token_end(buf: &[u8], mut at: usize) -> usize {
    while let Some(&b) = buf.get(at) {
        if !TOKEN[usize::from(b)] {
            break;
        }
        at += 1;
    }
    at
}

/// `tchar`: the bytes of a token.
const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let marks = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < marks.len() {
        table[marks[i] as usize] = true;
        i += 1;
    }
    table
};

/// The `HeaderName` of a request field's name as it came, in any case.
/// The common ones (the standard ones a client sends most, and the
/// gateway's own, whose copies share a static name) are found by comparing
/// with the names they must be, lengths first; the rest go through
/// `HeaderName::from_bytes`, which folds the name into a scratch buffer and
/// matches it against every standard name (about 360 instructions for
/// `Connection`, docs/benchmarks.md). `None` when the name is no valid
/// field name.
pub(crate) fn field_name(name: &[u8]) -> Option<HeaderName> {
    match COMMON
        .iter()
        .find(|(text, _)| crate::text::eq_ignore_ascii_case(text.as_bytes(), name))
    {
        Some((_, known)) => Some(known.clone()),
        None => HeaderName::from_bytes(name).ok(),
    }
}

/// The names [`field_name`] finds without `HeaderName::from_bytes`, each
/// with its text: `HeaderName::as_str` is a call per name, which a scan
/// that compares lengths first cannot afford (a test checks each text).
static COMMON: [(&str, HeaderName); 21] = {
    use http::header;
    [
        ("te", header::TE),
        ("host", header::HOST),
        ("accept", header::ACCEPT),
        ("cookie", header::COOKIE),
        ("origin", header::ORIGIN),
        ("referer", header::REFERER),
        ("upgrade", header::UPGRADE),
        ("connection", header::CONNECTION),
        ("user-agent", header::USER_AGENT),
        ("traceparent", HeaderName::from_static("traceparent")),
        ("content-type", header::CONTENT_TYPE),
        ("x-request-id", HeaderName::from_static("x-request-id")),
        ("authorization", header::AUTHORIZATION),
        ("cache-control", header::CACHE_CONTROL),
        ("if-none-match", header::IF_NONE_MATCH),
        ("content-length", header::CONTENT_LENGTH),
        ("accept-encoding", header::ACCEPT_ENCODING),
        ("accept-language", header::ACCEPT_LANGUAGE),
        (
            "x-forwarded-for",
            HeaderName::from_static("x-forwarded-for"),
        ),
        ("if-modified-since", header::IF_MODIFIED_SINCE),
        ("transfer-encoding", header::TRANSFER_ENCODING),
    ]
};

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    use super::*;

    /// httparse's answer for a request head, in this module's terms.
    fn httparse_request(buf: &[u8]) -> Option<(RequestLine, Vec<Span>)> {
        let mut parsed = [const { MaybeUninit::uninit() }; 64];
        let mut request = httparse::Request::new(&mut []);
        let Ok(httparse::Status::Complete(len)) =
            request.parse_with_uninit_headers(buf, &mut parsed)
        else {
            return None;
        };
        let offset = |part: &[u8]| part.as_ptr() as usize - buf.as_ptr() as usize;
        let span = |part: &[u8]| (offset(part), offset(part) + part.len());
        if request.version != Some(1) {
            return None;
        }
        let line = RequestLine {
            len,
            method: span(request.method?.as_bytes()),
            target: span(request.path?.as_bytes()),
        };
        Some((line, spans(buf, request.headers)))
    }

    /// httparse's answer for a response head, in this module's terms.
    fn httparse_response(buf: &[u8]) -> Option<(StatusLine, Vec<Span>)> {
        let mut parsed = [const { MaybeUninit::uninit() }; 64];
        let mut response = httparse::Response::new(&mut []);
        let Ok(httparse::Status::Complete(len)) = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut response, buf, &mut parsed)
        else {
            return None;
        };
        let line = StatusLine {
            len,
            minor: response.version?,
            code: response.code?,
        };
        Some((line, spans(buf, response.headers)))
    }

    fn spans(buf: &[u8], headers: &[httparse::Header<'_>]) -> Vec<Span> {
        let mut fields = Vec::new();
        spans_of(buf, headers, &mut fields);
        fields
    }

    #[test]
    fn each_common_name_has_its_own_text() {
        for (text, name) in &COMMON {
            assert_eq!(*text, name.as_str());
        }
    }

    #[test]
    fn canonical_heads_are_scanned() {
        let mut fields = Vec::new();
        let head = b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nX-A:\t1 \t2 \r\n\r\nbody";
        let line = request(head, 64, &mut fields).expect("canonical");
        assert_eq!(line.len, head.len() - 4);
        assert_eq!(&head[line.method.0..line.method.1], b"GET");
        assert_eq!(&head[line.target.0..line.target.1], b"/a?b=c");
        let values: Vec<&[u8]> = fields.iter().map(|f| &head[f[2]..f[3]]).collect();
        assert_eq!(values, [&b"example.com"[..], b"1 \t2"]);

        let head = b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let line = response(head, 64, &mut fields).expect("canonical");
        assert_eq!((line.len, line.minor, line.code), (head.len(), 0, 404));
        assert_eq!(&head[fields[0][0]..fields[0][1]], b"Content-Length");
    }

    #[test]
    fn anything_else_is_left_to_httparse() {
        let mut fields = Vec::new();
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n"[..],             // incomplete
            b"GET / HTTP/1.1\nHost: a\n\n",                    // bare LF
            b"GET  / HTTP/1.1\r\n\r\n",                        // two spaces
            b"GET / HTTP/1.0\r\n\r\n",                         // HTTP/1.0
            b"\r\nGET / HTTP/1.1\r\n\r\n",                     // leading empty line
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",             // space before colon
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",           // obsolete folding
            b"GET / HTTP/1.1\r\nX:\r\n\r\n",                   // empty value
            b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",            // DEL
            b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",              // NUL
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",              // bare CR
            b"GET /\x7f HTTP/1.1\r\n\r\n",                     // DEL in the target
            b"GET / HTTP/1.1\r\nX: 1\r\nY: 2\r\nZ: 3\r\n\r\n", // more than `max`
        ] {
            assert_eq!(
                request(head, 2, &mut fields),
                None,
                "{:?}",
                head.escape_ascii()
            );
        }
        for head in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"HTTP/1.1 200\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 20x OK\r\n\r\n",
            b"HTTP/1.1 200 OK\n\n",
        ] {
            assert_eq!(
                response(head, 2, &mut fields),
                None,
                "{:?}",
                head.escape_ascii()
            );
        }
    }

    /// Lines built from pieces that are canonical (mostly) or just not:
    /// every separator and byte class either side of the rules above.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        fn one_of(pieces: &[&'static [u8]]) -> impl Strategy<Value = &'static [u8]> + use<> {
            prop::sample::select(pieces.to_vec())
        }
        let name = prop_oneof![
            4 => one_of(&[b"Host", b"content-length", b"X-Y_z~1"]),
            1 => one_of(&[b"Bad Name", b"", b"\xc3\xa9", b"a\x7f"]),
        ];
        let colon = prop_oneof![
            4 => one_of(&[b":", b": ", b":\t "]),
            1 => one_of(&[b" :", b""]),
        ];
        let benign =
            prop::sample::select(vec![b'a', b'Z', b'0', b' ', b'\t', b'"', b'~', 0x80, 0xff]);
        let any = prop::sample::select(vec![b'a', b' ', b'\t', 0x7f, 0x80, 0, b'\r', b'\n']);
        let value = prop_oneof![
            4 => prop::collection::vec(benign, 0..24),
            1 => prop::collection::vec(any, 0..24),
        ];
        let end = prop_oneof![
            6 => one_of(&[b"\r\n", b" \r\n"]),
            1 => one_of(&[b"\n", b"\r", b""]),
        ];
        (name, colon, value, end)
            .prop_map(|(name, colon, value, end)| [name, colon, &value, end].concat())
    }

    fn head(start: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(start.to_vec()),
            prop::collection::vec(line(), 0..6),
            prop_oneof![4 => Just(&b"\r\n"[..]), 1 => prop::sample::select(vec![&b"\n"[..], b"", b"\r"])],
        )
            .prop_map(|(start, lines, end)| [start, &lines.concat(), end].concat())
    }

    const REQUEST_LINES: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n",
        b"POST /a/b?c=d%20e HTTP/1.1\r\n",
        b"GET /\xe2\x82\xac HTTP/1.1\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"GET / HTTP/1.0\r\n",
        b"G\xc3\xa9T / HTTP/1.1\r\n",
        b"GET / HTTP/1.1\n",
    ];

    const STATUS_LINES: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 503 Service \tUnavailable\r\n",
        b"HTTP/1.1 200 \xc3\xa9\r\n",
        b"HTTP/1.1 200\r\n",
        b"HTTP/1.1 200 OK\n",
        b"HTTP/1.1 2000 OK\r\n",
    ];

    /// The agreement tests below would pass vacuously if the scan took
    /// nothing: a fixed sample of their inputs shows it takes heads with
    /// several fields, and leaves others.
    #[test]
    fn the_generated_heads_reach_both_ways() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut scanned, mut several, mut left) = (0, 0, 0);
        let mut fields = Vec::new();
        for _ in 0..1000 {
            let head = head(REQUEST_LINES)
                .new_tree(&mut runner)
                .expect("a head")
                .current();
            match request(&head, 64, &mut fields) {
                Some(_) => {
                    scanned += 1;
                    several += usize::from(fields.len() >= 2);
                }
                None => left += 1,
            }
        }
        assert!(
            scanned >= 80 && several >= 15 && left >= 100,
            "{scanned} {several} {left}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// A field name comes out as `HeaderName::from_bytes` makes it,
        /// common or not, in any case, valid or not.
        #[test]
        fn field_names_are_what_http_makes(
            name in prop_oneof![
                prop::sample::select(vec![
                    "TE", "Host", "Accept", "Cookie", "Origin", "Referer", "Upgrade",
                    "Connection", "User-Agent", "Content-Type", "Authorization",
                    "Cache-Control", "If-None-Match", "Content-Length", "Accept-Encoding",
                    "Accept-Language", "X-Forwarded-For", "If-Modified-Since",
                    "Transfer-Encoding", "X-Request-Id", "Traceparent", "X-Real-Ip",
                    "hostname", "Hosts", "H\u{f6}st", "Conn ection", "Acc:ept", "",
                ])
                .prop_map(String::from),
                "[A-Za-z:\\- ]{0,18}",
            ],
            flips in prop::collection::vec(any::<bool>(), 18),
        ) {
            // Any mix of cases.
            let name: String = name
                .chars()
                .zip(flips.iter().cycle())
                .map(|(c, &flip)| if flip { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect();
            prop_assert_eq!(field_name(name.as_bytes()), HeaderName::from_bytes(name.as_bytes()).ok());
        }

        /// What the scan takes, httparse takes, with the same parts.
        #[test]
        fn requests_agree_with_httparse(head in head(REQUEST_LINES)) {
            let mut fields = Vec::new();
            if let Some(line) = request(&head, 64, &mut fields) {
                prop_assert_eq!(httparse_request(&head), Some((line, fields)));
            }
        }

        #[test]
        fn responses_agree_with_httparse(head in head(STATUS_LINES)) {
            let mut fields = Vec::new();
            if let Some(line) = response(&head, 64, &mut fields) {
                prop_assert_eq!(httparse_response(&head), Some((line, fields)));
            }
        }

        /// The word-wise run ends where a byte-wise one does.
        #[test]
        fn runs_end_at_the_first_stop(
            bytes in prop::collection::vec(prop::sample::select(vec![0u8, 9, 0x1f, 0x20, 0x21, 0x7e, 0x7f, 0x80, 0xff, b'a']), 0..40),
            low in prop::sample::select(vec![b' ', b'!']),
        ) {
            let expected = bytes.iter().position(|&b| b < low || b == 0x7f).unwrap_or(bytes.len());
            prop_assert_eq!(visible(&bytes, low), expected);
        }

        /// Canonical heads do take the quick way.
        #[test]
        fn canonical_heads_are_taken(
            names in prop::collection::vec("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}", 0..8),
            values in prop::collection::vec("[!-~\u{80}-\u{ff}]([ \t!-~\u{80}-\u{ff}]{0,30}[!-~])?", 8),
        ) {
            let fields: Vec<u8> = names
                .iter()
                .zip(&values)
                .flat_map(|(name, value)| [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"].concat())
                .collect();
            let mut spans = Vec::new();
            let head = [&b"GET /x HTTP/1.1\r\n"[..], &fields, b"\r\n"].concat();
            prop_assert!(request(&head, 64, &mut spans).is_some());
            prop_assert_eq!(spans.len(), names.len());
            let head = [&b"HTTP/1.1 200 OK\r\n"[..], &fields, b"\r\n"].concat();
            prop_assert!(response(&head, 64, &mut spans).is_some());
        }
    }
}
