//! Small text writers for the request path, where `format!` and `Display`
//! cost more than the work they do (access-log lines, forwarding headers).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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

/// Appends `addr` as `Display` writes it (`1.2.3.4:80`, `[::1]:80`).
pub fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            out.extend_from_slice(Ipv4Text::new(*v4.ip(), Some(v4.port())).as_bytes());
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "[{}]:{}", v6.ip(), v6.port());
        }
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

/// The value of `text` if it is 1 to 19 ASCII digits and nothing else (no
/// sign, no space, unlike `str::parse`), as protocol numbers are written.
pub fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
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
            push_socket_addr(&mut out, addr);
            assert_eq!(out, addr.to_string().as_bytes());
            let mut out = Vec::new();
            push_ip(&mut out, addr.ip());
            assert_eq!(out, addr.ip().to_string().as_bytes());
        }
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

    proptest::proptest! {
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
                let mut out = Vec::new();
                push_socket_addr(&mut out, addr);
                proptest::prop_assert_eq!(String::from_utf8(out.clone()).unwrap(), addr.to_string());
                let mut out = Vec::new();
                push_ip(&mut out, addr.ip());
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), addr.ip().to_string());
            }
        }
    }
}
