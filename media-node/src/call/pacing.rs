//! Outbound pacing: a bounded FIFO queue per trunk in front of the outbound
//! engine. A queued call starts when the trunk has a free concurrent slot in
//! this node's share (`share.max_concurrent_calls`, in + out) and the trunk's
//! token bucket (`share.max_calls_per_second`, 0 = unpaced) has a token.
//!
//! One task per trunk owns the queue and the only timer (the wait for the
//! next token), so a thousand queued calls cost one sleeping task, not a
//! thousand. Calls leave the queue in order; a caller that gives up (API
//! hangup, queue timeout) drops its [`Ticket`] and leaves its place at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::{CallDirection, Calls};
use crate::config::RoutingStore;

/// How often the queue re-reads the trunk's share while waiting for a slot:
/// configuration changes (a re-split of the limits) carry no notification.
const SHARE_RECHECK: Duration = Duration::from_millis(500);

/// Why a call cannot be queued or started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacingError {
    /// The trunk's queue holds `size` calls already.
    #[error("the outbound queue of trunk {trunk} is full ({size} calls waiting)")]
    QueueFull {
        /// Trunk id.
        trunk: String,
        /// The queue's capacity.
        size: usize,
    },
    /// The trunk limits concurrent calls and this node's share is 0.
    #[error("trunk {trunk} has no concurrent-call share on this node")]
    NoShare {
        /// Trunk id.
        trunk: String,
    },
    /// The node stopped (the queue task is gone).
    #[error("the outbound queue of trunk {trunk} stopped")]
    Closed {
        /// Trunk id.
        trunk: String,
    },
}

/// A token bucket driven by explicit time, so it is testable without
/// sleeping. Burst is one call: calls start evenly spaced at `1/rate`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilled at `rate` tokens per second (`<= 0`: unpaced).
    pub fn new(rate: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: 1.0,
            last: now,
        }
    }

    /// Changes the rate (a new share), keeping the tokens earned so far.
    pub fn set_rate(&mut self, rate: f64, now: Instant) {
        if (rate - self.rate).abs() > f64::EPSILON {
            self.refill(now);
            self.rate = rate;
        }
    }

    fn refill(&mut self, now: Instant) {
        if self.rate > 0.0 {
            let dt = now.saturating_duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(1.0);
        }
        self.last = now;
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        self.refill(now);
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Gives back a token taken for a caller that left meanwhile.
    pub fn refund(&mut self) {
        if self.rate > 0.0 {
            self.tokens = (self.tokens + 1.0).min(1.0);
        }
    }
}

/// The limits of one trunk on this node, as the queue applies them.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Share {
    /// `None`: the trunk has no concurrent-call limit.
    max_concurrent: Option<usize>,
    /// Calls per second; 0 = unpaced.
    cps: f64,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<Permit>,
}

struct TrunkQueue {
    trunk: String,
    waiters: Mutex<VecDeque<Waiter>>,
    /// Permits granted whose dial has not returned yet.
    setups: Mutex<usize>,
    wake: Notify,
}

/// The per-trunk queues of a node.
#[derive(Clone)]
pub struct Pacing {
    queues: Arc<Mutex<HashMap<String, Arc<TrunkQueue>>>>,
    capacity: usize,
    calls: Calls,
    routing: RoutingStore,
    next_id: Arc<AtomicU64>,
}

/// A place in a trunk's queue; [`Ticket::ready`] waits for the turn.
/// Dropping it leaves the queue.
pub struct Ticket {
    id: u64,
    queue: Arc<TrunkQueue>,
    rx: Option<oneshot::Receiver<Permit>>,
}

/// The right to set up one call on a trunk. Held while the outbound engine
/// dials; the call is counted by the registry from the INVITE on, so the
/// slot stays taken afterwards through the call itself.
pub struct Permit {
    queue: Arc<TrunkQueue>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut n) = self.queue.setups.lock() {
            *n = n.saturating_sub(1);
        }
        self.queue.wake.notify_one();
    }
}

impl Ticket {
    /// Waits until the call may start.
    pub async fn ready(&mut self) -> Result<Permit, PacingError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(PacingError::Closed {
                trunk: self.queue.trunk.clone(),
            });
        };
        let r = rx.await;
        self.rx = None;
        r.map_err(|_| PacingError::Closed {
            trunk: self.queue.trunk.clone(),
        })
    }

    /// The trunk this ticket queues on.
    pub fn trunk(&self) -> &str {
        &self.queue.trunk
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut w) = self.queue.waiters.lock() {
            w.retain(|w| w.id != self.id);
        }
    }
}

impl Pacing {
    /// Queues of at most `capacity` calls per trunk.
    pub fn new(capacity: usize, calls: Calls, routing: RoutingStore) -> Pacing {
        Pacing {
            queues: Default::default(),
            capacity,
            calls,
            routing,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Calls waiting in a trunk's queue.
    pub fn queued(&self, trunk: &str) -> usize {
        self.queues
            .lock()
            .ok()
            .and_then(|q| q.get(trunk).cloned())
            .and_then(|q| q.waiters.lock().ok().map(|w| w.len()))
            .unwrap_or(0)
    }

    fn share(routing: &RoutingStore, trunk: &str) -> Share {
        let Some(t) = routing.read(|table| table.trunk(trunk).cloned()) else {
            return Share {
                max_concurrent: Some(0),
                cps: 0.0,
            };
        };
        let Some(t) = t else {
            // Unknown trunk: let the call through; the outbound engine
            // reports the real problem.
            return Share {
                max_concurrent: None,
                cps: 0.0,
            };
        };
        let limited = t
            .limits
            .as_ref()
            .is_some_and(|l| l.max_concurrent_calls > 0);
        let share = t.share.unwrap_or_default();
        Share {
            max_concurrent: limited.then_some(share.max_concurrent_calls as usize),
            cps: share.max_calls_per_second.max(0.0),
        }
    }

    /// Takes a place at the end of the trunk's queue, or fails at once when
    /// the queue is full or the node may place no calls on the trunk.
    pub fn enqueue(&self, trunk: &str) -> Result<Ticket, PacingError> {
        if Self::share(&self.routing, trunk).max_concurrent == Some(0) {
            return Err(PacingError::NoShare {
                trunk: trunk.to_owned(),
            });
        }
        let queue = {
            let Ok(mut qs) = self.queues.lock() else {
                return Err(PacingError::Closed {
                    trunk: trunk.to_owned(),
                });
            };
            match qs.get(trunk) {
                Some(q) => q.clone(),
                None => {
                    let q = Arc::new(TrunkQueue {
                        trunk: trunk.to_owned(),
                        waiters: Mutex::new(VecDeque::new()),
                        setups: Mutex::new(0),
                        wake: Notify::new(),
                    });
                    qs.insert(trunk.to_owned(), q.clone());
                    tokio::spawn(run_queue(
                        q.clone(),
                        self.calls.clone(),
                        self.routing.clone(),
                    ));
                    q
                }
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let Ok(mut w) = queue.waiters.lock() else {
                return Err(PacingError::Closed {
                    trunk: trunk.to_owned(),
                });
            };
            if w.len() >= self.capacity {
                return Err(PacingError::QueueFull {
                    trunk: trunk.to_owned(),
                    size: self.capacity,
                });
            }
            w.push_back(Waiter { id, grant: tx });
        }
        queue.wake.notify_one();
        Ok(Ticket {
            id,
            queue,
            rx: Some(rx),
        })
    }
}

/// Calls on the trunk right now, counting each call once: the registry
/// counts outbound calls from their INVITE on, and our permits count setups
/// from the grant on, so outbound calls still in setup are taken from the
/// registry's count and counted as permits instead.
fn in_use(calls: &Calls, queue: &TrunkQueue) -> usize {
    let (on_trunk, setting_up) = calls
        .list()
        .iter()
        .filter(|c| c.trunk_id == queue.trunk)
        .fold((0usize, 0usize), |(all, setup), c| {
            let s = usize::from(c.direction == CallDirection::Outbound && c.state == "setup");
            (all + 1, setup + s)
        });
    let permits = queue.setups.lock().map(|n| *n).unwrap_or(0);
    on_trunk.saturating_sub(setting_up) + permits
}

async fn run_queue(queue: Arc<TrunkQueue>, calls: Calls, routing: RoutingStore) {
    let mut bucket = TokenBucket::new(0.0, Instant::now());
    let mut total = calls.watch_total();
    loop {
        // Wait for someone to queue.
        let empty = queue.waiters.lock().map(|w| w.is_empty()).unwrap_or(true);
        if empty {
            queue.wake.notified().await;
            continue;
        }
        // Wait for a concurrent slot: calls ending change the registry's
        // total; our own setups ending notify `wake`.
        let share = Pacing::share(&routing, &queue.trunk);
        if let Some(max) = share.max_concurrent
            && in_use(&calls, &queue) >= max
        {
            tokio::select! {
                _ = total.changed() => {}
                _ = queue.wake.notified() => {}
                _ = tokio::time::sleep(SHARE_RECHECK) => {}
            }
            continue;
        }
        // Wait for a token: the one timer of this queue.
        bucket.set_rate(share.cps, Instant::now());
        if let Err(wait) = bucket.take(Instant::now()) {
            tokio::time::sleep(wait).await;
            continue;
        }
        let next = queue.waiters.lock().ok().and_then(|mut w| w.pop_front());
        let Some(waiter) = next else {
            // The caller left while we waited for the token.
            bucket.refund();
            continue;
        };
        if let Ok(mut n) = queue.setups.lock() {
            *n += 1;
        }
        let permit = Permit {
            queue: queue.clone(),
        };
        if waiter.grant.send(permit).is_err() {
            // Its ticket was dropped between the pop and the send; the
            // returned permit is dropped here and frees the slot.
            bucket.refund();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_spaces_calls_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, t0);
        assert!(b.take(t0).is_ok(), "starts with one token");
        let wait = b.take(t0).expect_err("second call must wait");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(b.take(t0 + Duration::from_millis(499)).is_err());
        assert!(b.take(t0 + Duration::from_millis(500)).is_ok());
        // A long idle period earns one token, never a burst.
        let later = t0 + Duration::from_secs(10);
        assert!(b.take(later).is_ok());
        assert!(b.take(later).is_err());
    }

    #[test]
    fn unpaced_bucket_never_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.0, t0);
        for _ in 0..1000 {
            assert!(b.take(t0).is_ok());
        }
    }

    #[test]
    fn refund_returns_the_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, t0);
        assert!(b.take(t0).is_ok());
        b.refund();
        assert!(b.take(t0).is_ok());
    }

    #[test]
    fn rate_change_keeps_earned_tokens() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, t0);
        assert!(b.take(t0).is_ok());
        b.set_rate(10.0, t0 + Duration::from_millis(500));
        // Half a token earned at 1/s, the other half takes 50 ms at 10/s.
        let wait = b
            .take(t0 + Duration::from_millis(500))
            .expect_err("needs more");
        assert!((wait.as_secs_f64() - 0.05).abs() < 1e-6, "{wait:?}");
    }
}
