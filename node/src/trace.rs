//! Request ids and W3C trace context (`traceparent`, Trace Context Level 1).
//!
//! A request's `x-request-id` is kept when the client's value is sane
//! (1–128 visible characters from a conservative set) and generated
//! otherwise. A valid `traceparent` is continued: the trace id and flags are
//! kept and the gateway's own span id becomes the parent the upstream sees.
//! An invalid or missing one starts a new trace. Both go upstream and back
//! to the client.

use http::{HeaderName, HeaderValue};

use crate::text::write_hex;

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `traceparent` (W3C Trace Context).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace context of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The trace id (never all zeros once set).
    pub trace_id: [u8; 16],
    /// The gateway's span id, sent upstream as the parent.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl Context {
    /// Continues the client's `traceparent` when valid, or starts a trace.
    pub fn continue_or_start(header: Option<&HeaderValue>) -> Self {
        let mut span_id = fastrand::u64(1..).to_be_bytes();
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        if let Some((trace_id, flags)) = header.and_then(|h| parse(h.as_bytes())) {
            return Self {
                trace_id,
                span_id,
                flags,
            };
        }
        Self {
            trace_id: fastrand::u128(1..).to_be_bytes(),
            span_id,
            flags: 0,
        }
    }

    /// The `traceparent` value naming the gateway's span.
    pub fn traceparent(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        write_hex(&mut out[3..35], &self.trace_id);
        out[35] = b'-';
        write_hex(&mut out[36..52], &self.span_id);
        out[52] = b'-';
        write_hex(&mut out[53..55], &[self.flags]);
        shared_value(out)
    }

    /// The trace id, displayed as 32 hex digits (for logs).
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }
}

/// A trace id that displays as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy)]
pub struct TraceId([u8; 16]);

impl TraceId {
    /// The 32 hex digits.
    pub fn hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        write_hex(&mut out, &self.0);
        out
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = self.hex();
        f.write_str(std::str::from_utf8(&hex).map_err(|_| std::fmt::Error)?)
    }
}

fn parse_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Parses `version-traceid-parentid-flags`; returns the trace id and flags.
fn parse(value: &[u8]) -> Option<([u8; 16], u8)> {
    if value.len() < 55 {
        return None;
    }
    let version = parse_hex::<1>(&value[0..2])?[0];
    // Version 00 is exactly 55 bytes; later versions may append fields.
    if version == 0xff
        || (version == 0 && value.len() != 55)
        || (version > 0 && value.len() > 55 && value[55] != b'-')
    {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = parse_hex::<16>(&value[3..35])?;
    let parent_id = parse_hex::<8>(&value[36..52])?;
    let flags = parse_hex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, flags))
}

/// The longest request id kept from a client.
pub const MAX_REQUEST_ID: usize = 128;

/// The request id: the client's when sane, otherwise a new UUIDv4.
pub fn request_id(client: Option<&HeaderValue>) -> HeaderValue {
    if let Some(value) = client {
        let bytes = value.as_bytes();
        let sane = !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b));
        if sane {
            return value.clone();
        }
    }
    let mut id = fastrand::u128(..).to_be_bytes();
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    // 8-4-4-4-12 hex digits, on the stack.
    let mut out = [b'-'; 36];
    write_hex(&mut out[0..8], &id[0..4]);
    write_hex(&mut out[9..13], &id[4..6]);
    write_hex(&mut out[14..18], &id[6..8]);
    write_hex(&mut out[19..23], &id[8..10]);
    write_hex(&mut out[24..36], &id[10..16]);
    shared_value(out)
}

/// `text` (hex digits and dashes) as a field value that is shared from the
/// start: it goes upstream, back to the client and into the access log,
/// and a value copied from a slice would allocate again when first cloned.
fn shared_value<const N: usize>(text: [u8; N]) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .expect("hex digits and dashes are valid header bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let cx = Context::continue_or_start(Some(&HeaderValue::from_static(VALID)));
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.flags, 1);
        let out = cx.traceparent();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!out.contains("00f067aa0ba902b7"));
        assert!(out.ends_with("-01"));
        assert_eq!(parse(out.as_bytes()).map(|(_, f)| f), Some(1));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
        let cx = Context::continue_or_start(Some(&HeaderValue::from_static("garbage")));
        assert_ne!(cx.trace_id, [0; 16]);
        assert!(parse(cx.traceparent().as_bytes()).is_some());
    }

    #[test]
    fn future_versions_may_carry_more_fields() {
        let future = format!("01{}-what", &VALID[2..]);
        assert!(parse(future.as_bytes()).is_some());
    }

    #[test]
    fn request_ids() {
        let kept = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&kept)), kept);
        for bad in ["", "has space", "semi;colon"] {
            let generated = request_id(Some(&HeaderValue::from_str(bad).unwrap()));
            assert_ne!(generated, bad);
        }
        let long = HeaderValue::from_str(&"a".repeat(129)).unwrap();
        let generated = request_id(Some(&long));
        assert_eq!(generated.len(), 36);
        let generated = request_id(None);
        let text = generated.to_str().unwrap();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        let groups: Vec<usize> = text.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(text.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
        assert_ne!(request_id(None), request_id(None));
    }
}
