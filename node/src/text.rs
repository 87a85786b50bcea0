//! Small text writers for the request path, where `format!` and `Display`
//! cost more than the work they do (access-log lines, forwarding headers).

use std::fmt::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Appends `ip` as `Display` writes it: IPv4 from a digit table in one
/// piece, IPv6 (rare on the hot path) through `Display`.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(Ipv4Text::new(v4, None).as_bytes()),
        IpAddr::V6(v6) => {
            let _ = write!(Bytes(out), "{v6}");
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
            let _ = write!(Bytes(out), "[{}]:{}", v6.ip(), v6.port());
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
        let n = u32::from(n);
        let digits = [
            n / 10_000,
            n / 1_000 % 10,
            n / 100 % 10,
            n / 10 % 10,
            n % 10,
        ];
        let first = match n {
            0..=9 => 4,
            10..=99 => 3,
            100..=999 => 2,
            1_000..=9_999 => 1,
            _ => 0,
        };
        for digit in &digits[first..] {
            self.push(b'0' + *digit as u8);
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A `fmt::Write` over a byte buffer.
struct Bytes<'a>(&'a mut Vec<u8>);

impl Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
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
