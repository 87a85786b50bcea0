//! Small text writers for the request path, where `format!` and `Display`
//! cost more than the work they do (access-log lines, forwarding headers).

use std::fmt::{self, Write};
use std::net::{IpAddr, SocketAddr};

/// Writes `ip` as text: IPv4 with integer formatting, IPv6 (rare on the
/// hot path) through `Display`.
pub fn push_ip(out: &mut impl Write, ip: IpAddr) -> fmt::Result {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.write_char('.')?;
                }
                out.write_str(digits.format(octet))?;
            }
            Ok(())
        }
        IpAddr::V6(v6) => write!(out, "{v6}"),
    }
}

/// Writes `addr` as `Display` does (`1.2.3.4:80`, `[::1]:80`).
pub fn push_socket_addr(out: &mut impl Write, addr: SocketAddr) -> fmt::Result {
    match addr {
        SocketAddr::V4(v4) => push_ip(out, IpAddr::V4(*v4.ip()))?,
        SocketAddr::V6(v6) => write!(out, "[{}]", v6.ip())?,
    }
    out.write_char(':')?;
    out.write_str(itoa::Buffer::new().format(addr.port()))
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
}
