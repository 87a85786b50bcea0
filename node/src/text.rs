//! Small text writers for the request path, where `format!` and `Display`
//! cost more than the work they do (access-log lines, forwarding headers).

use std::fmt::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Writes `ip` as text: IPv4 digit by digit into one piece, IPv6 (rare on
/// the hot path) through `Display`.
pub fn push_ip(out: &mut impl Write, ip: IpAddr) -> fmt::Result {
    match ip {
        IpAddr::V4(v4) => out.write_str(Ipv4Text::new(v4, None).as_str()),
        IpAddr::V6(v6) => write!(out, "{v6}"),
    }
}

/// Writes `addr` as `Display` does (`1.2.3.4:80`, `[::1]:80`).
pub fn push_socket_addr(out: &mut impl Write, addr: SocketAddr) -> fmt::Result {
    match addr {
        SocketAddr::V4(v4) => out.write_str(Ipv4Text::new(*v4.ip(), Some(v4.port())).as_str()),
        SocketAddr::V6(v6) => {
            write!(out, "[{}]:", v6.ip())?;
            out.write_str(itoa::Buffer::new().format(v6.port()))
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

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// A `fmt::Write` over a byte buffer.
pub struct Bytes<'a>(pub &'a mut Vec<u8>);

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
            let mut out = String::new();
            push_socket_addr(&mut out, addr).unwrap();
            assert_eq!(out, addr.to_string());
            let mut out = String::new();
            push_ip(&mut out, addr.ip()).unwrap();
            assert_eq!(out, addr.ip().to_string());
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
                let mut out = String::new();
                push_socket_addr(&mut out, addr).unwrap();
                proptest::prop_assert_eq!(&out, &addr.to_string());
                out.clear();
                push_ip(&mut out, addr.ip()).unwrap();
                proptest::prop_assert_eq!(&out, &addr.ip().to_string());
            }
        }
    }
}
