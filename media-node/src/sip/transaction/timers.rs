//! The transaction layer's timers: one ordered structure for every timer of
//! every transaction, driven by the caller's clock (so tests run it on a
//! virtual one, and the I/O shell sleeps only until the earliest deadline).

use std::collections::BTreeMap;
use std::time::Instant;

/// Names one armed timer; unique for the life of the structure, so a key
/// kept after its timer fired or was cancelled never hits another timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerKey {
    at: Instant,
    seq: u64,
}

/// Timers ordered by deadline (then by arming order).
#[derive(Debug)]
pub(crate) struct Timers<T> {
    queue: BTreeMap<TimerKey, T>,
    seq: u64,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            queue: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<T> Timers<T> {
    /// Arms `timer` to fire at `at`.
    pub(crate) fn insert(&mut self, at: Instant, timer: T) -> TimerKey {
        self.seq += 1;
        let key = TimerKey { at, seq: self.seq };
        self.queue.insert(key, timer);
        key
    }

    /// Cancels a timer; nothing happens if it already fired.
    pub(crate) fn remove(&mut self, key: &TimerKey) -> Option<T> {
        self.queue.remove(key)
    }

    /// The earliest deadline, if any timer is armed.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|(k, _)| k.at)
    }

    /// Takes the earliest timer due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(TimerKey, T)> {
        if self.next_deadline()? > now {
            return None;
        }
        self.queue.pop_first()
    }

    /// How many timers are armed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fire_in_deadline_order_and_cancel() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let late = t.insert(t0 + Duration::from_secs(2), "late");
        let _early = t.insert(t0 + Duration::from_secs(1), "early");
        let _same = t.insert(t0 + Duration::from_secs(1), "same instant, armed later");
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(t.pop_due(t0).is_none());
        let due = t0 + Duration::from_secs(1);
        assert_eq!(t.pop_due(due).map(|(_, v)| v), Some("early"));
        assert_eq!(
            t.pop_due(due).map(|(_, v)| v),
            Some("same instant, armed later")
        );
        assert!(t.pop_due(due).is_none());
        assert_eq!(t.remove(&late), Some("late"));
        assert_eq!(t.remove(&late), None);
        assert_eq!(t.len(), 0);
        assert_eq!(t.next_deadline(), None);
    }
}
