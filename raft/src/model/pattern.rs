//! The path and host patterns routes are written with, parsed once here so
//! that validation and the data plane agree on their meaning.

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// `{name}`: matches any one non-empty segment and captures it.
    Param(String),
}

/// A path pattern such as `/users/{id}/orders`.
///
/// A pattern is split on `/`; the leading `/` is required. A trailing `/`
/// produces a final empty literal segment, so `/users/` and `/users` differ
/// as exact paths (as they do in HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// The segments after the leading `/`.
    pub segments: Vec<Segment>,
}

impl PathPattern {
    /// Parses a pattern, naming the rule a bad one breaks.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("must start with '/'".into());
        };
        if text.contains("//") {
            return Err("must not contain an empty segment ('//')".into());
        }
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for raw in rest.split('/') {
            if raw == "." || raw == ".." {
                return Err("must not contain '.' or '..' segments".into());
            }
            if let Some(inner) = raw.strip_prefix('{') {
                let Some(name) = inner.strip_suffix('}') else {
                    return Err(format!("segment {raw:?} opens '{{' without closing it"));
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "parameter {raw:?} must be a name of letters, digits and '_'"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("parameter {{{name}}} appears twice"));
                }
                names.push(name);
                segments.push(Segment::Param(name.to_owned()));
            } else if raw.contains(['{', '}']) {
                return Err(format!(
                    "segment {raw:?}: a parameter must be a whole segment, like {{id}}"
                ));
            } else if let Some(bad) = raw.chars().find(|c| !is_path_char(*c)) {
                return Err(format!("character {bad:?} is not allowed in a path"));
            } else {
                segments.push(Segment::Literal(raw.to_owned()));
            }
        }
        if segments == [Segment::Literal(String::new())] {
            segments.clear();
        }
        Ok(Self { segments })
    }

    /// Number of literal segments (how specific the pattern is).
    pub fn literal_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }
}

/// Characters allowed in a normalised path: RFC 3986 `pchar` without
/// percent-escapes other than those the normaliser keeps (`%` is allowed so
/// patterns can name escaped characters).
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%".contains(c)
}

/// A host condition: exact (`api.example.com`) or a wildcard over any depth
/// of subdomain (`*.example.com`, which does not match `example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// The host, lowercase.
    Exact(String),
    /// The suffix, lowercase, with its leading dot (`.example.com`).
    Wildcard(String),
}

impl HostPattern {
    /// Parses a host pattern.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.is_empty() {
            return Err("must name a host".into());
        }
        if name.contains(':') {
            return Err("must not carry a port (hosts match without the port)".into());
        }
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name.split('.').all(valid_label) {
            return Err("must be a DNS name (or '*.' followed by one)".into());
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(lower)
        })
    }

    /// Whether `host` (lowercase, without port) meets this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }

    /// Rank for route priority: exact hosts first, then longer wildcards.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(host) => (2, host.len()),
            HostPattern::Wildcard(suffix) => (1, suffix.len()),
        }
    }
}

/// Whether `name` is a valid HTTP method token (RFC 9110 §9.1), uppercase.
pub fn is_method(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        })
}

/// Whether `name` is a valid HTTP header name (RFC 9110 token).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
}
