//! Small text writers for the request path, where `format!` and `Display`
//! cost more than the work they do (access-log lines, forwarding headers).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Appends `ip` as `Display` writes it: IPv4 from a digit table in one
/// piece, IPv6 (rare on the hot path) through `Display`.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(Ipv4Text::new(v4, None).as_bytes()),
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A connection's peer: its address and, for IPv4, the address as text,
/// written once per connection. Each request on the connection copies the
/// text into its access-log line and forwarding fields instead of writing
/// the address again (three times a request). It is no larger than a
/// `SocketAddr`, which the request path's futures carry by value: IPv6
/// (rare on the hot path, as in [`push_ip`]) keeps no text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(PeerKind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKind {
    V4 {
        addr: SocketAddrV4,
        /// `1.2.3.4:80`, at most 21 bytes, of which the IP is the first
        /// `ip_len`.
        text: [u8; 21],
        len: u8,
        ip_len: u8,
    },
    V6(SocketAddrV6),
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self(match addr {
            SocketAddr::V4(addr) => {
                let mut text = Ipv4Text::new(*addr.ip(), None);
                let ip_len = text.len as u8;
                text.push(b':');
                text.port(addr.port());
                PeerKind::V4 {
                    addr,
                    text: text.buf,
                    len: text.len as u8,
                    ip_len,
                }
            }
            SocketAddr::V6(addr) => PeerKind::V6(addr),
        })
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        match self.0 {
            PeerKind::V4 { addr, .. } => SocketAddr::V4(addr),
            PeerKind::V6(addr) => SocketAddr::V6(addr),
        }
    }

    /// Appends the address as `Display` writes it, without an IPv6 scope
    /// (`1.2.3.4:80`, `[::1]:80`).
    pub fn push_addr(&self, out: &mut Vec<u8>) {
        match &self.0 {
            PeerKind::V4 { text, len, .. } => out.extend_from_slice(&text[..usize::from(*len)]),
            PeerKind::V6(addr) => {
                let _ = write!(out, "[{}]:{}", addr.ip(), addr.port());
            }
        }
    }

    /// Appends `ip` as [`push_ip`] does: copied from the peer's text when it
    /// is the peer's IP.
    pub fn push_ip(&self, out: &mut Vec<u8>, ip: IpAddr) {
        match &self.0 {
            PeerKind::V4 {
                addr, text, ip_len, ..
            } if ip == IpAddr::V4(*addr.ip()) => {
                out.extend_from_slice(&text[..usize::from(*ip_len)]);
            }
            _ => push_ip(out, ip),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr().fmt(f)
    }
}

/// The decimal digits of every byte value (left-aligned), and their count.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut table = [([0; 3], 0); 256];
    let mut n = 0;
    while n < 256 {
        let (digits, count) = &mut table[n];
        let b = n as u8;
        *count = if b >= 100 {
            3
        } else if b >= 10 {
            2
        } else {
            1
        };
        let mut place = *count;
        let mut rest = b;
        while place > 0 {
            place -= 1;
            digits[place as usize] = b'0' + rest % 10;
            rest /= 10;
        }
        n += 1;
    }
    table
};

/// An IPv4 address, and a port, as text on the stack: written in one piece
/// rather than eight (four numbers, three dots, the port).
struct Ipv4Text {
    buf: [u8; 21],
    len: usize,
}

impl Ipv4Text {
    fn new(ip: Ipv4Addr, port: Option<u16>) -> Self {
        let mut text = Self {
            buf: [0; 21],
            len: 0,
        };
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                text.push(b'.');
            }
            text.octet(octet);
        }
        if let Some(port) = port {
            text.push(b':');
            text.port(port);
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    /// Appends `n` in decimal, from the table.
    fn octet(&mut self, n: u8) {
        let (digits, count) = OCTETS[usize::from(n)];
        self.buf[self.len..self.len + 3].copy_from_slice(&digits);
        self.len += usize::from(count);
    }

    /// Appends `n` in decimal.
    fn port(&mut self, n: u16) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n).as_bytes();
        self.buf[self.len..self.len + digits.len()].copy_from_slice(digits);
        self.len += digits.len();
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Appends an HTTP/1.1 field line, `name: value` and CRLF.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The items of a comma-separated field value (RFC 9110 §5.6.1), each
/// trimmed of ASCII whitespace; empty items are kept.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Each byte's two lowercase hex digits: one load a byte instead of two
/// table lookups and the shifts between.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX[b >> 4], HEX[b & 0xf]];
        b += 1;
    }
    pairs
};

/// The two lowercase hex digits of `b`.
#[inline]
pub fn hex_pair(b: u8) -> [u8; 2] {
    HEX_PAIRS[usize::from(b)]
}

/// Writes `bytes` as lowercase hex digits into `out`, two a byte (as many
/// as `out` has room for).
#[inline]
pub fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, &b) in out.as_chunks_mut::<2>().0.iter_mut().zip(bytes) {
        *pair = hex_pair(b);
    }
}

/// The value of `text` if it is 1 to 19 ASCII digits and nothing else (no
/// sign, no space, unlike `str::parse`), as protocol numbers are written.
pub fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// `a.eq_ignore_ascii_case(b)`, eight bytes at a time: field names and
/// tokens are compared on every request, and the byte-wise version costs
/// about eight instructions a byte.
#[inline]
pub fn eq_ignore_ascii_case(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a.eq_ignore_ascii_case(b);
    }
    // Whole words, then the last eight bytes (overlapping the word before).
    let mut at = 0;
    while at + 8 < n {
        if lower_word(&a[at..]) != lower_word(&b[at..]) {
            return false;
        }
        at += 8;
    }
    lower_word(&a[n - 8..]) == lower_word(&b[n - 8..])
}

/// The first eight bytes of `bytes` (it has eight) as a word, with the
/// ASCII capitals made small (what `u8::to_ascii_lowercase` does, to each).
#[inline]
fn lower_word(bytes: &[u8]) -> u64 {
    const ONES: u64 = u64::MAX / 0xff;
    let word = u64::from_le_bytes(bytes.first_chunk().copied().unwrap_or_default());
    let heptets = word & (ONES * 0x7f);
    // A byte's high bit, set where its low seven bits are at least `A`,
    // and where they are past `Z` (no sum carries into the next byte).
    let from_a = heptets + ONES * u64::from(0x80 - b'A');
    let past_z = heptets + ONES * u64::from(0x7f - b'Z');
    let capital = from_a & !past_z & !word & (ONES * 0x80);
    word | capital >> 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for text in [
            "0.0.0.0:0",
            "127.0.0.1:8080",
            "255.255.255.255:65535",
            "10.0.100.9:10000",
            "1.20.255.0:9999",
            "[::1]:443",
            "[2001:db8::7]:1",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, addr.ip());
            assert_eq!(out, addr.ip().to_string().as_bytes());
            let peer = Peer::new(addr);
            assert_eq!(peer.addr(), addr);
            let mut out = Vec::new();
            peer.push_addr(&mut out);
            assert_eq!(out, addr.to_string().as_bytes());
            let mut out = Vec::new();
            peer.push_ip(&mut out, addr.ip());
            assert_eq!(out, addr.ip().to_string().as_bytes());
        }
    }

    #[test]
    fn a_peer_writes_other_ips_afresh() {
        let peer = Peer::new("10.0.0.1:443".parse().unwrap());
        let mut out = Vec::new();
        peer.push_ip(&mut out, "10.0.0.2".parse().unwrap());
        assert_eq!(out, b"10.0.0.2");
        let mapped = Peer::new("[::ffff:10.0.0.1]:443".parse().unwrap());
        let mut out = Vec::new();
        mapped.push_addr(&mut out);
        assert_eq!(out, b"[::ffff:10.0.0.1]:443");
        let mut out = Vec::new();
        // The canonical form of a mapped address is another IP.
        mapped.push_ip(&mut out, mapped.addr().ip().to_canonical());
        assert_eq!(out, b"10.0.0.1");
    }

    #[test]
    fn a_peer_is_no_larger_than_its_address() {
        // The request path's futures carry it by value.
        assert!(std::mem::size_of::<Peer>() <= std::mem::size_of::<SocketAddr>());
    }

    #[test]
    fn digits_are_nothing_but_digits() {
        assert_eq!(digits(b"0"), Some(0));
        assert_eq!(
            digits(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1a",
            b"10000000000000000000",
        ] {
            assert_eq!(digits(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_compare_in_any_case() {
        for (a, b, same) in [
            (&b"Content-Length"[..], &b"content-length"[..], true),
            (b"CONTENT-LENGTH", b"content-length", true),
            (b"content-lengtH", b"content-length", true),
            (b"content-lengti", b"content-length", false),
            (b"Transfer-Encoding", b"transfer-encoding", true),
            (b"connection", b"Connection", true),
            (b"connectio\x00", b"connection", false),
            (b"\xc3\x89tat-ABC", b"\xc3\xa9tat-abc", false),
            (b"[\\]^_`@{", b"{|}~\x7f@`[", false),
            (b"date", b"DATE", true),
            (b"date", b"dates", false),
        ] {
            assert_eq!(eq_ignore_ascii_case(a, b), same, "{a:?} {b:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn hex_digits_are_what_format_writes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..20)) {
            let mut out = vec![0; bytes.len() * 2];
            write_hex(&mut out, &bytes);
            let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
        }

        #[test]
        fn comparing_in_any_case_agrees_with_std(
            a in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            flips in proptest::collection::vec(proptest::bool::ANY, 40),
            other: u8,
            at: proptest::sample::Index,
        ) {
            // The same bytes with some cases flipped, and once more with
            // one byte changed.
            let mut b: Vec<u8> = a
                .iter()
                .zip(&flips)
                .map(|(&c, &flip)| if flip { c ^ (0x20 * u8::from(c.is_ascii_alphabetic())) } else { c })
                .collect();
            proptest::prop_assert_eq!(eq_ignore_ascii_case(&a, &b), a.eq_ignore_ascii_case(&b));
            if !b.is_empty() {
                let i = at.index(b.len());
                b[i] = other;
                proptest::prop_assert_eq!(eq_ignore_ascii_case(&a, &b), a.eq_ignore_ascii_case(&b));
            }
        }

        #[test]
        fn any_address_reads_as_display_writes_it(
            octets: [u8; 4],
            segments: [u16; 8],
            port: u16,
        ) {
            for addr in [
                SocketAddr::from((octets, port)),
                SocketAddr::from((segments, port)),
            ] {
                let peer = Peer::new(addr);
                let mut out = Vec::new();
                peer.push_addr(&mut out);
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
                let mut out = Vec::new();
                push_ip(&mut out, addr.ip());
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), addr.ip().to_string());
                let mut out = Vec::new();
                peer.push_ip(&mut out, addr.ip());
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), addr.ip().to_string());
            }
        }
    }
}
