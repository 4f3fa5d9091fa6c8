//! Cheap defences applied to every request before the transaction layer:
//! a per-source token bucket and silent drops of known scanners.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// User-Agent fragments of SIP scanners. Matching requests are dropped
/// without an answer, so the scanner learns nothing.
const SCANNERS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipscan",
    "iwar",
    "sundayddr",
    "vaxsipuseragent",
    "smap",
    "pplsip",
    "sivus",
];

/// True when a User-Agent names a known scanner.
pub fn is_scanner(user_agent: &str) -> bool {
    let ua = user_agent.to_ascii_lowercase();
    SCANNERS.iter().any(|s| ua.contains(s))
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per source IP.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Above this many tracked sources, full buckets are forgotten so a flood
/// of spoofed addresses cannot grow the table without bound.
const MAX_SOURCES: usize = 50_000;

impl RateLimiter {
    /// `rate` requests per second sustained, `burst` at once. A rate of 0
    /// disables limiting.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `ip`; false means drop the request.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= MAX_SOURCES {
            let (rate, burst) = (self.rate, self.burst);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn scanners_detected() {
        assert!(is_scanner("friendly-scanner"));
        assert!(is_scanner("SIPVicious 0.3"));
        assert!(!is_scanner("baresip v3"));
        assert!(!is_scanner("SIPp/Linux"));
    }

    #[test]
    fn bucket_limits_and_refills() {
        let rl = RateLimiter::new(10.0, 3.0);
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        let t0 = Instant::now();
        assert!(rl.allow(ip, t0) && rl.allow(ip, t0) && rl.allow(ip, t0));
        assert!(!rl.allow(ip, t0));
        assert!(rl.allow(other, t0), "sources are independent");
        assert!(rl.allow(ip, t0 + Duration::from_millis(150)));
        assert!(RateLimiter::new(0.0, 0.0).allow(ip, t0));
    }
}
