//! RTP ports for calls: even RTP ports with RTCP on the next port, taken
//! from a configured range by the quarantining allocator in
//! [`crate::media::ports`]. A call's ports go back to the range (after the
//! quarantine, so late packets of an old call never reach a new one) when the
//! last holder of its [`MediaSocket`] drops it.

use std::net::IpAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::media::ports::{self as alloc, PortError};

/// How long freed ports rest before another call may take them.
pub const QUARANTINE: Duration = Duration::from_secs(3);

/// Errors allocating a media port.
#[derive(Debug, thiserror::Error)]
#[error("no free RTP port in {start}-{end}: {reason}")]
pub struct NoPort {
    start: u16,
    end: u16,
    reason: String,
}

struct Shared {
    epoch: Instant,
    inner: Mutex<Option<alloc::PortAllocator>>,
}

impl Shared {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// Hands out RTP/RTCP socket pairs on even ports of a range.
pub struct PortAllocator {
    start: u16,
    end: u16,
    shared: Arc<Shared>,
}

impl PortAllocator {
    /// A range `start..=end` (rounded to even ports; a pair needs both ports
    /// inside it). An empty range allocates nothing.
    pub fn new(start: u16, end: u16) -> Self {
        let inner = alloc::PortAllocator::new(start, end, QUARANTINE).ok();
        PortAllocator {
            start,
            end,
            shared: Arc::new(Shared {
                epoch: Instant::now(),
                inner: Mutex::new(inner),
            }),
        }
    }

    /// Binds the RTP and RTCP sockets of a new call on `ip`.
    pub fn allocate(&self, ip: IpAddr) -> Result<MediaSocket, NoPort> {
        let no_port = |reason: String| NoPort {
            start: self.start,
            end: self.end,
            reason,
        };
        let pair = {
            let mut guard = self
                .shared
                .inner
                .lock()
                .map_err(|_| no_port("allocator lock poisoned".into()))?;
            let a = guard
                .as_mut()
                .ok_or_else(|| no_port("the range holds no port pair".into()))?;
            alloc::bind_pair(a, ip, self.shared.now())
                .map_err(|e: PortError| no_port(e.to_string()))?
        };
        let port = pair.port;
        match pair.into_tokio() {
            Ok((port, rtp, rtcp)) => Ok(MediaSocket {
                rtp,
                rtcp: Mutex::new(Some(rtcp)),
                lease: Lease {
                    port,
                    shared: self.shared.clone(),
                },
            }),
            Err(e) => {
                Lease {
                    port,
                    shared: self.shared.clone(),
                }
                .release();
                Err(no_port(e.to_string()))
            }
        }
    }
}

/// Returns a pair to the allocator when dropped.
struct Lease {
    port: u16,
    shared: Arc<Shared>,
}

impl Lease {
    fn release(&self) {
        let now = self.shared.now();
        if let Ok(mut g) = self.shared.inner.lock()
            && let Some(a) = g.as_mut()
        {
            let _ = a.release(self.port, now);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

/// A call's RTP socket (dereferences to it), its RTCP socket on the next
/// port, and the lease on both ports.
pub struct MediaSocket {
    rtp: tokio::net::UdpSocket,
    rtcp: Mutex<Option<tokio::net::UdpSocket>>,
    lease: Lease,
}

impl MediaSocket {
    /// The RTCP socket (RTP port + 1), for whoever runs RTCP; `None` once
    /// taken.
    pub fn take_rtcp(&self) -> Option<tokio::net::UdpSocket> {
        self.rtcp.lock().ok().and_then(|mut r| r.take())
    }

    /// The even RTP port.
    pub fn port(&self) -> u16 {
        self.lease.port
    }
}

impl Deref for MediaSocket {
    type Target = tokio::net::UdpSocket;
    fn deref(&self) -> &Self::Target {
        &self.rtp
    }
}

impl std::fmt::Debug for MediaSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSocket")
            .field("port", &self.lease.port)
            .finish()
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
    async fn pairs_are_even_distinct_and_quarantined_after_release() {
        let a = PortAllocator::new(41001, 41008);
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let s1 = a.allocate(ip).expect("first");
        let s2 = a.allocate(ip).expect("second");
        let (p1, p2) = (s1.port(), s2.port());
        assert!(p1 % 2 == 0 && p2 % 2 == 0 && p1 != p2);
        assert_eq!(s1.local_addr().expect("addr").port(), p1);
        let rtcp = s1.take_rtcp().expect("rtcp");
        assert_eq!(rtcp.local_addr().expect("addr").port(), p1 + 1);
        assert!(s1.take_rtcp().is_none());
        let s3 = a.allocate(ip).expect("third");
        // 41002, 41004, 41006 are in use (41008 has no 41009 in range).
        assert!(a.allocate(ip).is_err(), "range exhausted");
        drop(s1);
        // Freed, but quarantined: still nothing to allocate.
        assert!(a.allocate(ip).is_err(), "a freed pair rests first");
        drop((s2, s3));
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("20000-30000"), Some((20000, 30000)));
        assert_eq!(parse_range("3-1"), None);
        assert_eq!(parse_range("x"), None);
    }
}
