//! Cheap defences applied to every request before the transaction layer:
//! per-source token buckets and silent drops of known scanners.
//!
//! Sources inside some trunk's `allowedSources` (the carriers) are budgeted
//! apart from everyone else: their buckets live in their own table, per
//! source and transport (a TCP peer cannot be spoofed, so forged UDP in a
//! carrier's name cannot drain the carrier's TCP budget), and they do not
//! draw on the budget that all unknown sources share. A flood from unknown
//! sources, however many addresses it uses, is capped as a whole and cannot
//! starve the carriers. Each table is bounded: old entries are evicted.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
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

/// One token bucket's budget: `rate` requests per second sustained, `burst`
/// at once. A rate of 0 (or less) disables the bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Tokens per second.
    pub rate: f64,
    /// Bucket size.
    pub burst: f64,
}

impl Budget {
    /// A budget; the burst is at least one request.
    pub fn new(rate: f64, burst: f64) -> Budget {
        Budget {
            rate,
            burst: burst.max(1.0),
        }
    }

    fn enabled(&self) -> bool {
        self.rate > 0.0
    }
}

/// Every budget of the limiter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Per source that no trunk allows.
    pub per_source: Budget,
    /// Per source (and transport) inside some trunk's `allowedSources`.
    pub per_allowed_source: Budget,
    /// All sources that no trunk allows, together.
    pub unknown_total: Budget,
    /// Most sources each table tracks.
    pub max_sources: usize,
}

/// Why a request was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The source's own bucket is empty.
    Source,
    /// The bucket shared by all unknown sources is empty.
    UnknownTotal,
}

/// Tells whether a source IP is inside some trunk's `allowedSources`.
pub type AllowedSources = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(b: Budget, now: Instant) -> Bucket {
        Bucket {
            tokens: b.burst,
            last: now,
        }
    }

    fn take(&mut self, b: Budget, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * b.rate).min(b.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-source buckets in two generations of at most `cap / 2` entries
/// each: a source seen again moves to the current generation, and when
/// that fills up the previous one is dropped whole. Memory is bounded by
/// `cap` entries and each request costs O(1), whatever a flood of spoofed
/// addresses does; an evicted source merely starts again with a full
/// bucket, which the shared unknown-source budget still caps.
#[derive(Debug)]
struct Table<K> {
    current: HashMap<K, Bucket>,
    previous: HashMap<K, Bucket>,
    cap: usize,
}

impl<K: Hash + Eq + Copy> Table<K> {
    fn new(cap: usize) -> Self {
        Table {
            current: HashMap::new(),
            previous: HashMap::new(),
            cap: cap.max(2),
        }
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    fn take(&mut self, key: K, b: Budget, now: Instant) -> bool {
        if let Some(bucket) = self.current.get_mut(&key) {
            return bucket.take(b, now);
        }
        let bucket = self
            .previous
            .remove(&key)
            .unwrap_or_else(|| Bucket::full(b, now));
        if self.current.len() >= self.cap / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.entry(key).or_insert(bucket).take(b, now)
    }
}

#[derive(Debug)]
struct State {
    unknown: Table<IpAddr>,
    allowed: Table<(IpAddr, bool)>,
    unknown_total: Bucket,
}

/// Token buckets per source IP, with carriers budgeted apart.
pub struct RateLimiter {
    limits: RateLimits,
    allowed: Option<AllowedSources>,
    state: Mutex<State>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Sources each table tracks by default (about 64 bytes each).
pub const MAX_SOURCES: usize = 50_000;

impl RateLimiter {
    /// `rate` requests per second sustained, `burst` at once, for every
    /// source alike, with no shared cap. A rate of 0 disables limiting.
    pub fn new(rate: f64, burst: f64) -> Self {
        let b = Budget::new(rate, burst);
        Self::with_limits(RateLimits {
            per_source: b,
            per_allowed_source: b,
            unknown_total: Budget::new(0.0, 0.0),
            max_sources: MAX_SOURCES,
        })
    }

    /// A limiter with every budget given.
    pub fn with_limits(limits: RateLimits) -> Self {
        RateLimiter {
            state: Mutex::new(State {
                unknown: Table::new(limits.max_sources),
                allowed: Table::new(limits.max_sources),
                unknown_total: Bucket::full(limits.unknown_total, Instant::now()),
            }),
            limits,
            allowed: None,
        }
    }

    /// Whether `ip` is one of the carriers' sources (an `allowedSources`
    /// entry of some trunk).
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        self.allowed.as_ref().is_some_and(|f| f(ip))
    }

    /// Sets how to recognise the carriers' sources (without it, every
    /// source is unknown).
    pub fn allowed_sources(mut self, allowed: AllowedSources) -> Self {
        self.allowed = Some(allowed);
        self
    }

    /// Takes a token for a request from `ip` (`reliable`: over TCP);
    /// `Err` means drop it.
    pub fn allow(&self, ip: IpAddr, reliable: bool, now: Instant) -> Result<(), Limited> {
        let l = &self.limits;
        let allowed = self.is_allowed(ip);
        if allowed && !l.per_allowed_source.enabled()
            || !allowed && !l.per_source.enabled() && !l.unknown_total.enabled()
        {
            return Ok(());
        }
        // The buckets stay consistent whatever panicked while they were
        // held (each update is one assignment), so a poisoned lock is
        // recovered rather than turning rate limiting off.
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if allowed {
            return if st.allowed.take((ip, reliable), l.per_allowed_source, now) {
                Ok(())
            } else {
                Err(Limited::Source)
            };
        }
        // The source's own bucket first, so one noisy source does not
        // spend the budget every unknown source shares.
        if l.per_source.enabled() && !st.unknown.take(ip, l.per_source, now) {
            return Err(Limited::Source);
        }
        if l.unknown_total.enabled() && !st.unknown_total.take(l.unknown_total, now) {
            return Err(Limited::UnknownTotal);
        }
        Ok(())
    }

    /// Sources tracked right now (unknown, allowed).
    pub fn tracked(&self) -> (usize, usize) {
        self.state
            .lock()
            .map(|s| (s.unknown.len(), s.allowed.len()))
            .unwrap_or((0, 0))
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
        let ok = |ip| rl.allow(ip, false, t0).is_ok();
        assert!(ok(ip) && ok(ip) && ok(ip));
        assert!(!ok(ip));
        assert!(ok(other), "sources are independent");
        assert!(rl.allow(ip, false, t0 + Duration::from_millis(150)).is_ok());
        assert!(RateLimiter::new(0.0, 0.0).allow(ip, false, t0).is_ok());
    }

    fn limits() -> RateLimits {
        RateLimits {
            per_source: Budget::new(1.0, 2.0),
            per_allowed_source: Budget::new(1.0, 5.0),
            unknown_total: Budget::new(1.0, 10.0),
            max_sources: 1000,
        }
    }

    #[test]
    fn allowed_sources_have_their_own_budget() {
        let carrier: IpAddr = "192.0.2.1".parse().expect("ip");
        let rl =
            RateLimiter::with_limits(limits()).allowed_sources(Arc::new(move |ip| ip == carrier));
        let t0 = Instant::now();
        // A flood from many unknown sources, each within its own bucket,
        // empties the shared unknown budget...
        let mut admitted = 0;
        for i in 0..100u8 {
            let ip = IpAddr::from([198, 51, 100, i]);
            admitted += usize::from(rl.allow(ip, false, t0).is_ok());
        }
        assert_eq!(admitted, 10, "unknown sources share one budget");
        assert_eq!(
            rl.allow(IpAddr::from([198, 51, 100, 200]), false, t0),
            Err(Limited::UnknownTotal)
        );
        // ...and leaves the carrier its whole burst.
        for _ in 0..5 {
            assert_eq!(rl.allow(carrier, false, t0), Ok(()));
        }
        assert_eq!(rl.allow(carrier, false, t0), Err(Limited::Source));
        // Forged UDP in the carrier's name does not drain its TCP budget.
        assert_eq!(rl.allow(carrier, true, t0), Ok(()));
        // One noisy unknown source is stopped by its own bucket and does
        // not spend the shared one.
        let rl = RateLimiter::with_limits(limits());
        let noisy = IpAddr::from([203, 0, 113, 1]);
        let passed = (0..50)
            .filter(|_| rl.allow(noisy, false, t0).is_ok())
            .count();
        assert_eq!(passed, 2);
        let others = (0..20u8)
            .filter(|i| {
                rl.allow(IpAddr::from([203, 0, 113, 10 + i]), false, t0)
                    .is_ok()
            })
            .count();
        assert_eq!(others, 8, "10 shared tokens minus the noisy source's 2");
    }

    #[test]
    fn tables_are_bounded_and_keep_recent_sources() {
        let rl = RateLimiter::with_limits(RateLimits {
            unknown_total: Budget::new(0.0, 0.0),
            max_sources: 100,
            ..limits()
        });
        let t0 = Instant::now();
        let regular = IpAddr::from([10, 1, 1, 1]);
        assert!(rl.allow(regular, false, t0).is_ok());
        assert!(rl.allow(regular, false, t0).is_ok());
        assert_eq!(rl.allow(regular, false, t0), Err(Limited::Source));
        for i in 0..10_000u32 {
            let [_, a, b, c] = i.to_be_bytes();
            let _ = rl.allow(IpAddr::from([10, a, b, c]), false, t0);
            // A source active during the flood keeps its (empty) bucket.
            if i % 10 == 0 {
                assert_eq!(rl.allow(regular, false, t0), Err(Limited::Source));
            }
            assert!(rl.tracked().0 <= 100, "table bounded at 100");
        }
    }
}
