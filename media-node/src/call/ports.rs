//! RTP ports for calls: a simple round-robin over an even-numbered range,
//! binding a real socket so the port written into SDP is ours. (The media
//! engine brings its own allocator with quarantine later.)

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// Errors allocating a media port.
#[derive(Debug, thiserror::Error)]
#[error("no free RTP port in {start}-{end}")]
pub struct NoPort {
    start: u16,
    end: u16,
}

/// Hands out UDP sockets on even ports of a range.
pub struct PortAllocator {
    start: u16,
    end: u16,
    next: Mutex<u16>,
}

impl PortAllocator {
    /// A range `start..=end` (rounded to even ports).
    pub fn new(start: u16, end: u16) -> Self {
        let start = start + start % 2;
        PortAllocator {
            start,
            end: end.max(start),
            next: Mutex::new(start),
        }
    }

    /// Binds a socket on `ip` at the next free even port.
    pub fn allocate(&self, ip: IpAddr) -> Result<tokio::net::UdpSocket, NoPort> {
        let slots = usize::from((self.end - self.start) / 2 + 1);
        for _ in 0..slots {
            let port = {
                let Ok(mut n) = self.next.lock() else { break };
                let p = *n;
                *n = if p.saturating_add(2) > self.end {
                    self.start
                } else {
                    p + 2
                };
                p
            };
            if let Ok(s) = std::net::UdpSocket::bind(SocketAddr::new(ip, port))
                && s.set_nonblocking(true).is_ok()
                && let Ok(t) = tokio::net::UdpSocket::from_std(s)
            {
                return Ok(t);
            }
        }
        Err(NoPort {
            start: self.start,
            end: self.end,
        })
    }
}

/// Parses `START-END`.
pub fn parse_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b && a > 0).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allocates_distinct_even_ports_and_reports_exhaustion() {
        let a = PortAllocator::new(41001, 41005);
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let s1 = a.allocate(ip).expect("first");
        let s2 = a.allocate(ip).expect("second");
        let (p1, p2) = (
            s1.local_addr().expect("addr").port(),
            s2.local_addr().expect("addr").port(),
        );
        assert!(p1 % 2 == 0 && p2 % 2 == 0 && p1 != p2);
        assert!(a.allocate(ip).is_err(), "only two even ports in range");
        drop(s1);
        assert!(a.allocate(ip).is_ok(), "freed port is reused");
        assert_eq!(parse_range("20000-30000"), Some((20000, 30000)));
        assert_eq!(parse_range("3-1"), None);
    }
}
