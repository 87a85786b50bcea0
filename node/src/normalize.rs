//! Request path normalisation, done once per request.
//!
//! The normalised string is the only path the gateway uses afterwards:
//! routing, every policy, rewrites and the upstream request all read it, so
//! `/api/../admin` reaches exactly what `/admin` reaches. The steps:
//!
//! 1. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded, once; other escapes are kept, with uppercase hex;
//! 2. an escaped `/` or `\`, a raw `\`, and a malformed escape are refused;
//! 3. runs of `/` are merged;
//! 4. `.` and `..` segments are removed (RFC 3986 §5.2.4); `..` never climbs
//!    above the root.
//!
//! A trailing `/` is kept, and a path that ends in a dot segment keeps the
//! directory form (`/a/b/..` becomes `/a/`).

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("the path holds a malformed percent-escape")]
    BadEscape,
    /// `%2F` or `%5C`: an encoded separator that backends disagree on.
    #[error("the path holds an encoded '/' or '\\'")]
    EncodedSeparator,
    /// A raw backslash, which some backends treat as `/`.
    #[error("the path holds a backslash")]
    Backslash,
}

/// Normalises `raw`, borrowing it when it is already normal.
pub fn path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(raw.as_bytes())?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Fast check for the common case: nothing to decode, merge or remove.
fn is_normal(bytes: &[u8]) -> bool {
    let mut previous = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b'/' if previous == b'/' => return false,
            b'.' if previous == b'/' => {
                // `/.` starts a dot segment when followed by `/`, `.` or the end.
                match bytes.get(i + 1) {
                    None | Some(b'/') => return false,
                    Some(b'.') if matches!(bytes.get(i + 2), None | Some(b'/')) => return false,
                    _ => {}
                }
            }
            _ => {}
        }
        previous = b;
    }
    true
}

/// The value of an ASCII hex digit.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = hi << 4 | lo;
                if value == b'/' || value == b'\\' {
                    return Err(PathError::EncodedSeparator);
                }
                if is_unreserved(value) {
                    out.push(value as char);
                } else {
                    out.push('%');
                    out.push(HEX[usize::from(hi)] as char);
                    out.push(HEX[usize::from(lo)] as char);
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b => {
                // The URI parser admits only ASCII; anything else is escaped.
                if b.is_ascii() {
                    out.push(b as char);
                } else {
                    out.push('%');
                    out.push(HEX[usize::from(b >> 4)] as char);
                    out.push(HEX[usize::from(b & 0xf)] as char);
                }
                i += 1;
            }
        }
    }
    Ok(out)
}

fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut directory = false;
    for segment in path.split('/').skip(1) {
        directory = true;
        match segment {
            "" => {}
            "." => {}
            ".." => {
                segments.pop();
            }
            segment => {
                segments.push(segment);
                directory = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if directory || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn check(raw: &str, expected: Result<&str, PathError>) {
        assert_eq!(
            path(raw).as_deref().map_err(|e| *e),
            expected,
            "for {raw:?}"
        );
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for raw in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "/api/v2/users/42"] {
            assert!(matches!(path(raw), Ok(Cow::Borrowed(_))), "{raw}");
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        check("/a//b", Ok("/a/b"));
        check("//", Ok("/"));
        check("/a/./b", Ok("/a/b"));
        check("/a/b/..", Ok("/a/"));
        check("/a/b/.", Ok("/a/b/"));
        check("/..", Ok("/"));
        check("/../../etc/passwd", Ok("/etc/passwd"));
        check("/api/../admin", Ok("/admin"));
        check("/api/v1/../../admin/", Ok("/admin/"));
        check("/a/...", Ok("/a/..."));
    }

    #[test]
    fn escapes() {
        check("/api/%2e%2e/admin", Ok("/admin"));
        check("/api/%2E%2e/admin", Ok("/admin"));
        check("/api/.%2e/admin", Ok("/admin"));
        check("/%41%7e", Ok("/A~"));
        check("/%c3%a9", Ok("/%C3%A9"));
        check("/%25", Ok("/%25"));
        check("/%252e%252e/x", Ok("/%252e%252e/x"));
        check("/a%2fb", Err(PathError::EncodedSeparator));
        check("/a%2Fb", Err(PathError::EncodedSeparator));
        check("/a%5cb", Err(PathError::EncodedSeparator));
        check("/a\\b", Err(PathError::Backslash));
        check("/a%zz", Err(PathError::BadEscape));
        check("/a%2", Err(PathError::BadEscape));
        check("/a%", Err(PathError::BadEscape));
        check("a", Err(PathError::NotAbsolute));
        check("*", Err(PathError::NotAbsolute));
    }

    proptest! {
        #[test]
        fn idempotent_and_clean(raw in "/[a-z./%0-9A-F~]{0,40}") {
            if let Ok(once) = path(&raw) {
                let twice = path(&once).expect("a normal path stays valid");
                prop_assert_eq!(&once, &twice);
                prop_assert!(once.starts_with('/'));
                prop_assert!(!once.contains("//"));
                for segment in once.split('/') {
                    prop_assert!(segment != "." && segment != "..");
                }
            }
        }
    }
}
