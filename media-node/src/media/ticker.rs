//! One shared 20 ms ticker for every call on the node.
//!
//! A timer per call would mean thousands of timers firing at unrelated instants; instead one task
//! wakes every period and polls every registered sink. Sinks must not block: the provided channel
//! sink uses `try_send` on a small bounded channel, so a call whose task is slow misses ticks (and
//! sees the gap in [`TickBatch::first_index`]) instead of delaying the others.
//!
//! Schedule: tick `k` is due at `start + k x period`, so the ticker never drifts. When it wakes
//! late (a stalled runtime), the ticks it owes are delivered as one batch of at most
//! `max_catch_up` frames; older owed ticks are skipped and reported, so calls can advance their
//! RTP timestamps without sending a burst.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The usual packetisation interval.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(20);
/// Default catch-up bound, in frames.
pub const DEFAULT_MAX_CATCH_UP: u32 = 3;

/// The ticks delivered at one wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickBatch {
    /// Index of the first tick in this batch (ticks count from 0 at start).
    pub first_index: u64,
    /// Frames to produce now (1 normally, up to the catch-up bound after a late wake-up).
    pub frames: u32,
    /// Owed ticks dropped before `first_index` because the ticker was too late to catch up.
    pub skipped: u64,
}

impl TickBatch {
    /// Index of the last tick in this batch.
    pub fn last_index(&self) -> u64 {
        self.first_index + self.frames as u64 - 1
    }
}

/// The pure schedule: which ticks are due at a given elapsed time.
#[derive(Debug, Clone)]
pub struct TickSchedule {
    period: Duration,
    max_catch_up: u32,
    next_index: u64,
}

impl TickSchedule {
    /// A schedule with the given period (at least 1 ms) and catch-up bound (at least 1).
    pub fn new(period: Duration, max_catch_up: u32) -> Self {
        TickSchedule {
            period: period.max(Duration::from_millis(1)),
            max_catch_up: max_catch_up.max(1),
            next_index: 0,
        }
    }

    /// Elapsed time (since start) at which the next tick is due.
    pub fn next_deadline(&self) -> Duration {
        self.period
            .saturating_mul(self.next_index.min(u32::MAX as u64) as u32)
    }

    /// The batch due at `elapsed` since start, or None if the next tick is not due yet.
    pub fn poll(&mut self, elapsed: Duration) -> Option<TickBatch> {
        let due = (elapsed.as_nanos() / self.period.as_nanos()) as u64;
        if due < self.next_index {
            return None;
        }
        let owed = due - self.next_index + 1;
        let frames = owed.min(self.max_catch_up as u64);
        let batch = TickBatch {
            first_index: due + 1 - frames,
            frames: frames as u32,
            skipped: owed - frames,
        };
        self.next_index = due + 1;
        Some(batch)
    }
}

/// Whether a sink stays registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkControl {
    /// Keep polling this sink.
    Continue,
    /// Remove it (its call is gone).
    Remove,
}

/// Something polled on every tick. Must return quickly and never block.
pub trait TickSink: Send + Sync + 'static {
    /// Called once per wake-up with the ticks due.
    fn on_tick(&self, batch: &TickBatch) -> SinkControl;
}

/// A sink that forwards batches into a bounded channel with `try_send`.
#[derive(Debug)]
pub struct ChannelSink {
    tx: mpsc::Sender<TickBatch>,
    overruns: AtomicU64,
}

impl ChannelSink {
    /// Batches this sink could not deliver because the receiver was behind.
    pub fn overruns(&self) -> u64 {
        self.overruns.load(Ordering::Relaxed)
    }
}

impl TickSink for ChannelSink {
    fn on_tick(&self, batch: &TickBatch) -> SinkControl {
        match self.tx.try_send(*batch) {
            Ok(()) => SinkControl::Continue,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overruns.fetch_add(1, Ordering::Relaxed);
                SinkControl::Continue
            }
            Err(mpsc::error::TrySendError::Closed(_)) => SinkControl::Remove,
        }
    }
}

type SinkList = Vec<(u64, Arc<dyn TickSink>)>;

struct Inner {
    sinks: Mutex<SinkList>,
    next_id: AtomicU64,
    wakeups: AtomicU64,
    skipped: AtomicU64,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, SinkList> {
        // A panic while holding the lock cannot leave the list half-updated (push/retain), so a
        // poisoned lock is still usable.
        self.sinks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dispatch(&self, batch: &TickBatch, scratch: &mut SinkList) {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
        self.skipped.fetch_add(batch.skipped, Ordering::Relaxed);
        scratch.clear();
        // Copy the list so sinks run without the lock (they may register or drop others).
        scratch.extend(self.lock().iter().cloned());
        let mut removed = false;
        for (id, sink) in scratch.iter_mut() {
            if sink.on_tick(batch) == SinkControl::Remove {
                removed = true;
            } else {
                *id = u64::MAX;
            }
        }
        if removed {
            let mut list = self.lock();
            for (id, _) in scratch.iter().filter(|(id, _)| *id != u64::MAX) {
                list.retain(|(other, _)| other != id);
            }
        }
        // Do not keep sinks alive until the next tick.
        scratch.clear();
    }
}

/// Handle to the shared ticker. Cheap to clone; the ticker task ends at its next wake-up once
/// every `Ticker` handle is dropped (registrations do not keep it alive).
#[derive(Clone)]
pub struct Ticker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticker")
            .field("sinks", &self.len())
            .finish()
    }
}

/// Keeps a sink registered; dropping it unregisters the sink.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    inner: Weak<Inner>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.lock().retain(|(id, _)| *id != self.id);
        }
    }
}

impl Ticker {
    /// Starts the ticker task on the current tokio runtime.
    pub fn start(period: Duration, max_catch_up: u32) -> (Ticker, JoinHandle<()>) {
        let inner = Arc::new(Inner {
            sinks: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        let handle = tokio::spawn(run(weak, TickSchedule::new(period, max_catch_up)));
        (Ticker { inner }, handle)
    }

    /// Registers a sink, polled from the next tick on.
    pub fn register(&self, sink: Arc<dyn TickSink>) -> Registration {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.lock().push((id, sink));
        Registration {
            id,
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Registers a channel sink with room for `capacity` undelivered batches; returns the
    /// registration, the receiver, and the sink (for its overrun count).
    pub fn register_channel(
        &self,
        capacity: usize,
    ) -> (Registration, mpsc::Receiver<TickBatch>, Arc<ChannelSink>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sink = Arc::new(ChannelSink {
            tx,
            overruns: AtomicU64::new(0),
        });
        let reg = self.register(sink.clone());
        (reg, rx, sink)
    }

    /// Number of registered sinks.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// True when no sink is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wake-ups so far.
    pub fn wakeups(&self) -> u64 {
        self.inner.wakeups.load(Ordering::Relaxed)
    }

    /// Ticks skipped because the ticker woke too late to catch up.
    pub fn skipped_ticks(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }
}

async fn run(inner: Weak<Inner>, mut schedule: TickSchedule) {
    let start = tokio::time::Instant::now();
    let mut scratch: SinkList = Vec::new();
    loop {
        tokio::time::sleep_until(start + schedule.next_deadline()).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Some(batch) = schedule.poll(start.elapsed()) {
            inner.dispatch(&batch, &mut scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn schedule_on_time() {
        let mut s = TickSchedule::new(ms(20), 3);
        assert_eq!(s.next_deadline(), ms(0));
        assert_eq!(
            s.poll(ms(0)),
            Some(TickBatch {
                first_index: 0,
                frames: 1,
                skipped: 0
            })
        );
        assert_eq!(s.poll(ms(19)), None);
        assert_eq!(s.next_deadline(), ms(20));
        let b = s.poll(ms(21)).expect("due");
        assert_eq!((b.first_index, b.frames, b.skipped), (1, 1, 0));
        assert_eq!(s.next_deadline(), ms(40));
    }

    #[test]
    fn schedule_catches_up_a_few_and_skips_the_rest_without_drift() {
        let mut s = TickSchedule::new(ms(20), 3);
        s.poll(ms(0));
        // Woke at 50 ms: ticks 1 and 2 are owed.
        let b = s.poll(ms(50)).expect("due");
        assert_eq!((b.first_index, b.frames, b.skipped), (1, 2, 0));
        assert_eq!(b.last_index(), 2);
        // Stalled until 205 ms: ticks 3..=10 owed, only the last 3 are played.
        let b = s.poll(ms(205)).expect("due");
        assert_eq!((b.first_index, b.frames, b.skipped), (8, 3, 5));
        // The schedule stays on the original grid.
        assert_eq!(s.next_deadline(), ms(220));
        assert_eq!(s.poll(ms(219)), None);
        let b = s.poll(ms(220)).expect("due");
        assert_eq!((b.first_index, b.frames), (11, 1));
    }

    #[test]
    fn every_tick_accounted_for() {
        let mut s = TickSchedule::new(ms(20), 2);
        let mut next = 0u64;
        let wakeups = [0u64, 20, 45, 61, 130, 131, 140, 400, 401, 420];
        for w in wakeups {
            if let Some(b) = s.poll(ms(w)) {
                assert_eq!(b.first_index, next + b.skipped, "no gaps or repeats");
                next = b.last_index() + 1;
            }
        }
        assert_eq!(next, 420 / 20 + 1);
    }

    struct Blocking;
    impl TickSink for Blocking {
        fn on_tick(&self, _: &TickBatch) -> SinkControl {
            SinkControl::Continue
        }
    }

    struct RemoveMe;
    impl TickSink for RemoveMe {
        fn on_tick(&self, _: &TickBatch) -> SinkControl {
            SinkControl::Remove
        }
    }

    #[tokio::test]
    async fn slow_call_does_not_hold_up_others() {
        let (ticker, task) = Ticker::start(ms(5), 3);
        // A call that never reads its channel.
        let (_slow_reg, _slow_rx, slow) = ticker.register_channel(1);
        let (_reg, mut rx, _) = ticker.register_channel(4);
        let _other = ticker.register(Arc::new(Blocking));
        assert_eq!(ticker.len(), 3);
        let mut last: Option<u64> = None;
        for _ in 0..5 {
            let b = rx.recv().await.expect("ticks keep coming");
            if let Some(l) = last {
                assert!(b.first_index > l, "ticks move forward");
            }
            last = Some(b.last_index());
        }
        assert!(slow.overruns() >= 1, "the slow call missed ticks instead");
        drop(ticker);
        drop((_slow_reg, _reg, _other));
        task.await.expect("ticker task ends once unused");
    }

    #[tokio::test]
    async fn registrations_come_and_go() {
        let (ticker, task) = Ticker::start(ms(5), 3);
        let (reg, mut rx, _) = ticker.register_channel(2);
        let _self_removing = ticker.register(Arc::new(RemoveMe));
        rx.recv().await.expect("tick");
        // Both have been polled at least once: the self-removing sink is gone.
        assert_eq!(ticker.len(), 1);
        drop(reg);
        assert!(ticker.is_empty());
        // A closed receiver removes its sink on the next tick.
        let (_reg2, rx2, _) = ticker.register_channel(1);
        drop(rx2);
        let (_reg3, mut rx3, _) = ticker.register_channel(1);
        rx3.recv().await.expect("tick");
        rx3.recv().await.expect("tick");
        assert_eq!(ticker.len(), 1);
        assert!(ticker.wakeups() >= 2);
        drop((ticker, _reg2, _reg3, _self_removing));
        task.await.expect("ends");
    }
}
