//! Rate limits as users write them, on plans and on routes.
//!
//! ```yaml
//! plans:
//!   gold:
//!     limits:
//!       - { name: burst, algorithm: token_bucket, rate: 100/s, burst: 200 }
//!       - { name: daily, algorithm: fixed_window, limit: 100000, per: 1d }
//! routes:
//!   - name: reports
//!     limits:
//!       - { key: [consumer, { header: X-Tenant }], algorithm: sliding_window_counter, limit: 60, per: 1m }
//!       - { key: route, algorithm: leaky_bucket, rate: 20/s, queue: 50, max_wait: 2s }
//! ```
//! The algorithms and their parameters are in [`Algorithm`]; what a request
//! is counted under is its [`LimitKey`]. A plan's limits apply to every
//! request of a consumer on that plan, on every route; a route's limits to
//! every request it serves. All that apply are checked, and a request one of
//! them rejects is charged to none.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Name in the `RateLimit-Policy` header and in metrics; defaults to
    /// `<plan or route>-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What requests are counted under (default: `consumer`).
    #[serde(default, skip_serializing_if = "LimitKey::is_default")]
    pub key: LimitKey,
    /// How requests are counted.
    pub algorithm: Algorithm,
    /// `token_bucket` and `leaky_bucket`: the sustained rate, `100/s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// `token_bucket`: the bucket's capacity (default: the rate's count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Window algorithms: requests admitted per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Window algorithms: the window (`1m`, `1d`; `month` for `fixed_window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Period>,
    /// `leaky_bucket`: how many requests may wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// `leaky_bucket`: the longest a request may wait (default: the time
    /// a full queue takes to drain).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_wait: Option<Duration>,
    /// Where the counts live.
    #[serde(default)]
    pub scope: Scope,
}

/// The five algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// `rate` + `burst`: a burst up to the capacity, then the sustained rate.
    TokenBucket,
    /// `limit` per `per`, exact: one timestamp per admitted request.
    SlidingWindowLog,
    /// `limit` per `per`, estimated from the previous and current window:
    /// `previous × overlap + current`, constant memory per key.
    SlidingWindowCounter,
    /// `limit` per calendar-aligned `per` (second … month), for quotas.
    FixedWindow,
    /// Requests wait in a queue of `queue` and leave at `rate`.
    LeakyBucket,
}

impl Algorithm {
    /// The name used in configuration and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::SlidingWindowLog => "sliding_window_log",
            Algorithm::SlidingWindowCounter => "sliding_window_counter",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::LeakyBucket => "leaky_bucket",
        }
    }

    /// Whether the algorithm counts `limit` requests per window `per`.
    pub fn is_window(self) -> bool {
        matches!(
            self,
            Algorithm::SlidingWindowLog | Algorithm::SlidingWindowCounter | Algorithm::FixedWindow
        )
    }
}

/// Where a limit's counts live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// On each node, without coordination.
    #[default]
    Local,
    /// Counted on every node and shared with the others over the peer
    /// plane: each decision is local, the global count is within a stated
    /// bound. Token bucket, sliding window counter and fixed window.
    Global,
    /// In one Redis shared by every node (exact; one round trip per
    /// decision). Token bucket, sliding window counter and fixed window.
    Redis,
}

impl Scope {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Global => "global",
            Scope::Redis => "redis",
        }
    }
}

// === keys ===

/// What a request is counted under: one part or several (each distinct
/// combination of values has its own count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey(pub Vec<KeyPart>);

/// One part of a [`LimitKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// The consumer; callers without one are counted by token subject, else
    /// by client IP.
    Consumer,
    /// The API key; callers without one are counted by client IP.
    ApiKey,
    /// The client IP; IPv6 addresses count by their /64.
    Ip,
    /// The route (one count for everyone on it).
    Route,
    /// The value of a request header (absent: the empty value).
    Header(String),
}

impl KeyPart {
    /// The name used in configuration.
    pub fn describe(&self) -> String {
        match self {
            KeyPart::Consumer => "consumer".into(),
            KeyPart::ApiKey => "api_key".into(),
            KeyPart::Ip => "ip".into(),
            KeyPart::Route => "route".into(),
            KeyPart::Header(name) => format!("header:{name}"),
        }
    }
}

impl Default for LimitKey {
    fn default() -> Self {
        Self(vec![KeyPart::Consumer])
    }
}

impl LimitKey {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Serialize for LimitKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(serializer),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for LimitKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            One(KeyPart),
            Many(Vec<KeyPart>),
        }
        match Shape::deserialize(deserializer) {
            Ok(Shape::One(part)) => Ok(Self(vec![part])),
            Ok(Shape::Many(parts)) => Ok(Self(parts)),
            Err(_) => Err(serde::de::Error::custom(
                "a limit key is one of consumer, api_key, ip, route, {header: NAME}, or a list of them",
            )),
        }
    }
}

// === rates and periods ===

/// `count` requests per `per`, written `100/s`, `5/m`, `1000/h`, `10/2s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests per period.
    pub count: u64,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Time between two requests at this rate.
    pub fn interval(&self) -> Duration {
        let nanos = self.per.as_nanos() / u128::from(self.count.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (count, per) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not a rate like 100/s"))?;
        let count = count
            .trim()
            .parse()
            .map_err(|_| format!("`{count}` is not a whole number of requests"))?;
        let per = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => humantime::parse_duration(other)
                .map_err(|_| format!("`{other}` is not a period like s, m, h, d or 10s"))?,
        };
        Ok(Self { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => write!(f, "{}/s", self.count),
            60 if self.per.subsec_nanos() == 0 => write!(f, "{}/m", self.count),
            3600 if self.per.subsec_nanos() == 0 => write!(f, "{}/h", self.count),
            86_400 if self.per.subsec_nanos() == 0 => write!(f, "{}/d", self.count),
            _ => write!(f, "{}/{}", self.count, humantime::format_duration(self.per)),
        }
    }
}

/// A window: a duration (windows align to multiples of it since the Unix
/// epoch, so `1d` windows start at 00:00 UTC), or a calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// A fixed length.
    Fixed(Duration),
    /// A calendar month in UTC.
    Month,
}

impl Period {
    /// The period's length; a month counts as 31 days (the longest).
    pub fn max_len(&self) -> Duration {
        match self {
            Period::Fixed(d) => *d,
            Period::Month => Duration::from_secs(31 * 86_400),
        }
    }
}

impl FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "month" | "1month" | "1 month" | "1mo" => Ok(Period::Month),
            "second" => Ok(Period::Fixed(Duration::from_secs(1))),
            "minute" => Ok(Period::Fixed(Duration::from_secs(60))),
            "hour" => Ok(Period::Fixed(Duration::from_secs(3600))),
            "day" => Ok(Period::Fixed(Duration::from_secs(86_400))),
            "week" => Ok(Period::Fixed(Duration::from_secs(7 * 86_400))),
            other => humantime::parse_duration(other)
                .map(Period::Fixed)
                .map_err(|_| format!("`{other}` is not a period like 1s, 1m, 1h, 1d or month")),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Fixed(d) => write!(f, "{}", humantime::format_duration(*d)),
            Period::Month => f.write_str("month"),
        }
    }
}

macro_rules! serde_via_str {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_via_str!(Rate);
serde_via_str!(Period);

/// The gateway-wide `rate_limit` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Send the IETF `RateLimit-Policy` and `RateLimit` headers.
    pub ietf_headers: bool,
    /// Send `X-RateLimit-Limit`, `-Remaining` and `-Reset` as well.
    pub legacy_headers: bool,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            ietf_headers: true,
            legacy_headers: false,
        }
    }
}

impl RateLimitSettings {
    /// Whether nothing differs from the defaults (not written out).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}
