//! One timing wheel for every call on the node.
//!
//! Each call needs to wake at its own instants (its next RTP packet, a gap in the caller's
//! audio, its next RTCP report), and calls must not all wake in one burst. A timer per call
//! would mean thousands of runtime timers re-armed 50 times a second; instead every call owns
//! one [`Timer`] entry in a shared wheel of 1 ms slots, and one driver task sleeps until the
//! next non-empty slot and wakes exactly the calls due in it.
//!
//! Re-arming is cheap: moving a deadline later (the usual case: the next packet is 20 ms after
//! this one) only stores it, without the lock; the entry is moved when its old slot comes up.
//! A slot entry whose timer has moved since is stale and skipped. Deadlines beyond the wheel's
//! horizon wait in an overflow list. A timer may fire early (never late beyond the 1 ms
//! resolution and the driver's own scheduling): callers re-check what is due when it fires.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Slots in the wheel (1 ms each): deadlines up to ~1 s ahead go straight into a slot.
const SLOTS: u64 = 1024;
/// "No tick".
const NONE: u64 = u64::MAX;

/// One call's timer state, shared between the call and the driver.
#[derive(Debug)]
struct Entry {
    /// Tick the owner wants to wake at (NONE when cleared).
    deadline: AtomicU64,
    /// Tick of the slot (or overflow) this entry sits in (NONE when not in the wheel).
    scheduled: AtomicU64,
    fired: AtomicBool,
    waker: AtomicWaker,
}

#[derive(Debug)]
struct State {
    slots: Vec<Vec<Arc<Entry>>>,
    overflow: Vec<Arc<Entry>>,
    /// The next tick the driver has not processed yet.
    next_tick: u64,
    /// The tick the driver sleeps until (NONE: until notified).
    driver_at: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the driver (a new earliest deadline, or shutdown); kept apart so the driver can
    /// wait on it without keeping the wheel alive.
    notify: Arc<Notify>,
    epoch: Instant,
    wakeups: AtomicU64,
    fired: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update below leaves the state consistent between statements.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tick (1 ms, rounded up) of an instant.
    fn tick_of(&self, at: Instant) -> u64 {
        let us = at.saturating_duration_since(self.epoch).as_micros();
        (us.div_ceil(1000)).min(u128::from(NONE - 1)) as u64
    }

    fn current_tick(&self) -> u64 {
        (self.epoch.elapsed().as_micros() / 1000).min(u128::from(NONE - 1)) as u64
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: let the driver see it and exit.
        self.notify.notify_one();
    }
}

/// Places `entry` at `tick` (at least the next unprocessed tick). Returns true when the driver
/// must be woken because it sleeps past it.
fn insert(state: &mut State, entry: &Arc<Entry>, tick: u64) -> bool {
    let tick = tick.max(state.next_tick);
    entry.scheduled.store(tick, Ordering::Relaxed);
    if tick < state.next_tick + SLOTS {
        state.slots[(tick % SLOTS) as usize].push(entry.clone());
    } else {
        state.overflow.push(entry.clone());
    }
    tick < state.driver_at
}

/// Handle to the node's timing wheel. Cheap to clone; the driver task ends once every handle
/// and every [`Timer`] is dropped.
#[derive(Debug, Clone)]
pub struct TimerWheel {
    shared: Arc<Shared>,
}

impl TimerWheel {
    /// Starts the driver task on the current tokio runtime.
    pub fn start() -> (TimerWheel, tokio::task::JoinHandle<()>) {
        let notify = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                slots: (0..SLOTS).map(|_| Vec::new()).collect(),
                overflow: Vec::new(),
                next_tick: 0,
                driver_at: NONE,
            }),
            notify: notify.clone(),
            epoch: Instant::now(),
            wakeups: AtomicU64::new(0),
            fired: AtomicU64::new(0),
        });
        let task = tokio::spawn(drive(Arc::downgrade(&shared), notify));
        (TimerWheel { shared }, task)
    }

    /// A new timer, not armed.
    pub fn timer(&self) -> Timer {
        Timer {
            entry: Arc::new(Entry {
                deadline: AtomicU64::new(NONE),
                scheduled: AtomicU64::new(NONE),
                fired: AtomicBool::new(false),
                waker: AtomicWaker::new(),
            }),
            shared: self.shared.clone(),
        }
    }

    #[cfg(test)]
    /// Timers fired so far.
    pub fn fired(&self) -> u64 {
        self.shared.fired.load(Ordering::Relaxed)
    }
}

/// One call's timer in the shared wheel: armed with [`Timer::set`], awaited with
/// [`Timer::fired`]. Dropping it disarms it.
#[derive(Debug)]
pub struct Timer {
    entry: Arc<Entry>,
    shared: Arc<Shared>,
}

impl Timer {
    /// Arms the timer for `at` (replacing any earlier setting). A deadline already past fires
    /// at once.
    pub fn set(&self, at: Instant) {
        let e = &self.entry;
        if at <= Instant::now() {
            e.deadline.store(NONE, Ordering::Relaxed);
            e.fired.store(true, Ordering::Release);
            e.waker.wake();
            return;
        }
        let tick = self.shared.tick_of(at);
        let scheduled = e.scheduled.load(Ordering::Acquire);
        let current = e.deadline.load(Ordering::Relaxed);
        if scheduled != NONE && scheduled <= tick && (current == NONE || current <= tick) {
            // Later than where it sits: the driver moves it when that slot comes up. (If the
            // driver is taking it out right now it may fire at the old time: an early wake.)
            e.deadline.store(tick, Ordering::Release);
            if e.scheduled.load(Ordering::Acquire) != NONE {
                return;
            }
        }
        let wake = {
            let mut state = self.shared.lock();
            e.deadline.store(tick, Ordering::Release);
            let scheduled = e.scheduled.load(Ordering::Acquire);
            if scheduled != NONE && scheduled <= tick {
                false
            } else {
                let wake = insert(&mut state, e, tick);
                if wake {
                    state.driver_at = state.driver_at.min(tick);
                }
                wake
            }
        };
        if wake {
            self.shared.notify.notify_one();
        }
    }

    /// Disarms the timer (a fire already delivered stays delivered).
    pub fn clear(&self) {
        self.entry.deadline.store(NONE, Ordering::Release);
    }

    /// Resolves once the timer has fired since it was last awaited.
    pub fn fired(&self) -> Fired<'_> {
        Fired { timer: self }
    }

    fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.entry.fired.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.entry.waker.register(cx.waker());
        if self.entry.fired.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Future of [`Timer::fired`].
#[derive(Debug)]
pub struct Fired<'a> {
    timer: &'a Timer,
}

impl std::future::Future for Fired<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.timer.poll_fired(cx)
    }
}

/// Processes every tick up to `now_tick`: fires due entries (into `fire`), moves re-armed ones,
/// pulls overflow entries into range. Returns the tick of the next non-empty slot (or NONE).
fn advance(state: &mut State, now_tick: u64, fire: &mut Vec<Arc<Entry>>) -> u64 {
    let start = state.next_tick;
    if now_tick >= start {
        // After a long sleep every slot is visited once.
        let from = start.max((now_tick + 1).saturating_sub(SLOTS));
        let mut moved: Vec<(Arc<Entry>, u64)> = Vec::new();
        for t in from..=now_tick {
            let slot = std::mem::take(&mut state.slots[(t % SLOTS) as usize]);
            for e in slot {
                let s = e.scheduled.load(Ordering::Acquire);
                if s == NONE || s % SLOTS != t % SLOTS {
                    continue; // stale: moved or already taken
                }
                if s > now_tick {
                    // Not due yet (cannot happen within the horizon; kept rather than lost).
                    moved.push((e, s));
                    continue;
                }
                e.scheduled.store(NONE, Ordering::Release);
                let d = e.deadline.load(Ordering::Acquire);
                if d == NONE {
                    continue;
                }
                if d <= now_tick {
                    e.deadline.store(NONE, Ordering::Relaxed);
                    fire.push(e);
                } else {
                    moved.push((e, d));
                }
            }
        }
        state.next_tick = now_tick + 1;
        for (e, d) in moved {
            insert(state, &e, d);
        }
        // Overflow entries now within the horizon go into their slots.
        if !state.overflow.is_empty() {
            let horizon = state.next_tick + SLOTS;
            let overflow = std::mem::take(&mut state.overflow);
            for e in overflow {
                let s = e.scheduled.load(Ordering::Acquire);
                let d = e.deadline.load(Ordering::Acquire);
                if s == NONE || d == NONE || s >= horizon && d >= horizon {
                    if s != NONE && d != NONE {
                        state.overflow.push(e);
                    } else {
                        e.scheduled.store(NONE, Ordering::Release);
                    }
                    continue;
                }
                if d <= now_tick {
                    e.scheduled.store(NONE, Ordering::Release);
                    e.deadline.store(NONE, Ordering::Relaxed);
                    fire.push(e);
                } else {
                    insert(state, &e, d);
                }
            }
        }
    }
    for k in 0..SLOTS {
        let t = state.next_tick + k;
        if !state.slots[(t % SLOTS) as usize].is_empty() {
            return t;
        }
    }
    if state.overflow.is_empty() {
        NONE
    } else {
        // Look again half a horizon later to pull overflow entries in.
        state.next_tick + SLOTS / 2
    }
}

async fn drive(shared: Weak<Shared>, notify: Arc<Notify>) {
    let mut fire: Vec<Arc<Entry>> = Vec::new();
    loop {
        let (epoch, next) = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let now_tick = shared.current_tick();
            let next = {
                let mut state = shared.lock();
                let next = advance(&mut state, now_tick, &mut fire);
                state.driver_at = next;
                next
            };
            shared.wakeups.fetch_add(1, Ordering::Relaxed);
            shared.fired.fetch_add(fire.len() as u64, Ordering::Relaxed);
            for e in fire.drain(..) {
                e.fired.store(true, Ordering::Release);
                e.waker.wake();
            }
            (shared.epoch, next)
        };
        if next == NONE {
            notify.notified().await;
        } else {
            let at = epoch + Duration::from_millis(next);
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = notify.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(deadline: u64) -> Arc<Entry> {
        Arc::new(Entry {
            deadline: AtomicU64::new(deadline),
            scheduled: AtomicU64::new(NONE),
            fired: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        })
    }

    fn state() -> State {
        State {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            overflow: Vec::new(),
            next_tick: 0,
            driver_at: NONE,
        }
    }

    #[test]
    fn entries_fire_in_their_own_slot_only() {
        let mut s = state();
        let a = entry(5);
        let b = entry(12);
        insert(&mut s, &a, 5);
        insert(&mut s, &b, 12);
        let mut fire = Vec::new();
        assert_eq!(advance(&mut s, 4, &mut fire), 5);
        assert!(fire.is_empty());
        assert_eq!(advance(&mut s, 5, &mut fire), 12);
        assert_eq!(fire.len(), 1);
        assert!(Arc::ptr_eq(&fire[0], &a));
        fire.clear();
        assert_eq!(advance(&mut s, 20, &mut fire), NONE);
        assert!(Arc::ptr_eq(&fire[0], &b));
    }

    #[test]
    fn a_later_deadline_moves_the_entry_and_a_cleared_one_never_fires() {
        let mut s = state();
        let a = entry(5);
        insert(&mut s, &a, 5);
        a.deadline.store(25, Ordering::Relaxed);
        let c = entry(6);
        insert(&mut s, &c, 6);
        c.deadline.store(NONE, Ordering::Relaxed);
        let mut fire = Vec::new();
        assert_eq!(advance(&mut s, 10, &mut fire), 25, "moved to its new slot");
        assert!(fire.is_empty());
        advance(&mut s, 25, &mut fire);
        assert_eq!(fire.len(), 1);
        assert_eq!(a.scheduled.load(Ordering::Relaxed), NONE);
    }

    #[test]
    fn far_deadlines_wait_in_overflow_and_a_long_sleep_visits_every_slot() {
        let mut s = state();
        let far = entry(5000);
        insert(&mut s, &far, 5000);
        assert_eq!(s.overflow.len(), 1);
        let near = entry(3);
        insert(&mut s, &near, 3);
        let mut fire = Vec::new();
        // The driver slept for a long time.
        advance(&mut s, 4500, &mut fire);
        assert_eq!(fire.len(), 1, "the near one fired");
        assert!(s.overflow.is_empty(), "the far one is in range now");
        fire.clear();
        advance(&mut s, 5000, &mut fire);
        assert_eq!(fire.len(), 1);
    }

    #[tokio::test]
    async fn calls_wake_at_their_own_instants() {
        let (wheel, _task) = TimerWheel::start();
        let t1 = wheel.timer();
        let t2 = wheel.timer();
        let start = Instant::now();
        t1.set(start + Duration::from_millis(30));
        t2.set(start + Duration::from_millis(5));
        t2.fired().await;
        let first = start.elapsed();
        t1.fired().await;
        let second = start.elapsed();
        assert!(first >= Duration::from_millis(4), "{first:?}");
        assert!(second >= Duration::from_millis(29), "{second:?}");
        // Re-armed later and then cleared: never fires.
        t1.set(Instant::now() + Duration::from_millis(10));
        t1.set(Instant::now() + Duration::from_millis(20));
        t1.clear();
        t2.set(Instant::now() + Duration::from_millis(40));
        t2.fired().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(1), t1.fired())
                .await
                .is_err()
        );
        // A deadline in the past fires at once.
        t1.set(Instant::now() - Duration::from_millis(1));
        t1.fired().await;
        assert!(wheel.fired() >= 3);
    }

    #[tokio::test]
    async fn driver_ends_when_the_wheel_is_gone() {
        let (wheel, task) = TimerWheel::start();
        let t = wheel.timer();
        t.set(Instant::now() + Duration::from_millis(2));
        t.fired().await;
        drop((t, wheel));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("driver exits")
            .expect("no panic");
    }
}
