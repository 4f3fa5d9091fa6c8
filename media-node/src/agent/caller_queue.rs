//! The queue of caller events (audio frames, key presses, transfer steps) from a call's media
//! engine and SIP session to its agent session.
//!
//! It behaves like a bounded tokio `mpsc` channel (several senders, one receiver, `try_send`
//! that never waits, `send` that waits for room, `None` once every sender is gone), but its
//! memory follows what is in flight: tokio allocates slots in blocks of 32, which for 176-byte
//! events is 5.6 KiB a block, and a channel that keeps moving holds two; a call's queue rarely
//! holds more than one or two frames.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::sync::Notify;

use super::session::CallerEvent;

/// Slots kept when the queue empties again after growing past them.
const KEEP: usize = 4;

struct Shared {
    queue: Mutex<VecDeque<CallerEvent>>,
    capacity: usize,
    /// The receiver, woken by a new event or by the last sender leaving.
    rx_waker: AtomicWaker,
    /// Senders waiting for room (only [`CallerTx::send`], which rare events use).
    room: Notify,
    senders: AtomicUsize,
    rx_closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, VecDeque<CallerEvent>> {
        // A panic while holding the lock leaves a queue that is still consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why an event was not queued (it is dropped: the media path never keeps one back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError {
    /// The queue holds its capacity.
    #[error("caller event queue full")]
    Full,
    /// The agent session is gone.
    #[error("agent session gone")]
    Closed,
}

/// The sending side; clones share the queue.
pub struct CallerTx(Arc<Shared>);

/// The receiving side.
pub struct CallerRx(Arc<Shared>);

/// A queue holding at most `capacity` events (at least one).
pub fn queue(capacity: usize) -> (CallerTx, CallerRx) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        capacity: capacity.max(1),
        rx_waker: AtomicWaker::new(),
        room: Notify::new(),
        senders: AtomicUsize::new(1),
        rx_closed: AtomicBool::new(false),
    });
    (CallerTx(shared.clone()), CallerRx(shared))
}

impl CallerTx {
    /// Queues `ev` unless the queue is full or the receiver is gone; never waits.
    pub fn try_send(&self, ev: CallerEvent) -> Result<(), TrySendError> {
        if self.0.rx_closed.load(Ordering::Acquire) {
            return Err(TrySendError::Closed);
        }
        match self.push(ev) {
            None => Ok(()),
            Some(_) => Err(TrySendError::Full),
        }
    }

    /// Queues `ev` and wakes the receiver when there is room; hands `ev`
    /// back when the queue is full.
    fn push(&self, ev: CallerEvent) -> Option<CallerEvent> {
        {
            let mut q = self.0.lock();
            if q.len() >= self.0.capacity {
                return Some(ev);
            }
            q.push_back(ev);
        }
        self.0.rx_waker.wake();
        None
    }

    /// Queues `ev`, waiting for room; fails (`Closed`) when the receiver is gone.
    pub async fn send(&self, mut ev: CallerEvent) -> Result<(), TrySendError> {
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            // Registered before the attempt: room made after a failed attempt wakes us.
            room.as_mut().enable();
            if self.0.rx_closed.load(Ordering::Acquire) {
                return Err(TrySendError::Closed);
            }
            match self.push(ev) {
                None => return Ok(()),
                Some(back) => ev = back,
            }
            room.await;
        }
    }
}

impl Clone for CallerTx {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        CallerTx(self.0.clone())
    }
}

impl Drop for CallerTx {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.rx_waker.wake();
        }
    }
}

impl CallerRx {
    /// The next event; `None` once it is empty and every sender is gone.
    pub async fn recv(&mut self) -> Option<CallerEvent> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<CallerEvent>> {
        if let Some(ev) = self.pop() {
            return Poll::Ready(Some(ev));
        }
        self.0.rx_waker.register(cx.waker());
        // Checked again after registering: an event or a last drop in between woke nobody.
        if let Some(ev) = self.pop() {
            return Poll::Ready(Some(ev));
        }
        if self.0.senders.load(Ordering::Acquire) == 0 {
            return Poll::Ready(self.pop());
        }
        Poll::Pending
    }

    fn pop(&self) -> Option<CallerEvent> {
        let (ev, was_full) = {
            let mut q = self.0.lock();
            let was_full = q.len() >= self.0.capacity;
            let ev = q.pop_front();
            if q.is_empty() && q.capacity() > KEEP {
                // A burst is over: its slots go back.
                q.shrink_to(KEEP);
            }
            (ev, was_full)
        };
        if was_full && ev.is_some() {
            self.0.room.notify_waiters();
        }
        ev
    }

    /// Events waiting, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().len()
    }
}

impl Drop for CallerRx {
    fn drop(&mut self) {
        self.0.rx_closed.store(true, Ordering::Release);
        let dropped = std::mem::take(&mut *self.0.lock());
        drop(dropped);
        self.0.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn audio(ts: u64) -> CallerEvent {
        CallerEvent::Audio {
            frame: [0xFF; crate::media::playout::FRAME_BYTES],
            timestamp_ms: ts,
        }
    }

    #[tokio::test]
    async fn events_arrive_in_order_and_a_full_queue_refuses_without_waiting() {
        let (tx, mut rx) = queue(3);
        for ts in [0, 20, 40] {
            tx.try_send(audio(ts)).expect("room");
        }
        assert_eq!(tx.try_send(audio(60)), Err(TrySendError::Full));
        assert_eq!(rx.len(), 3);
        for ts in [0, 20, 40] {
            assert_eq!(rx.recv().await, Some(audio(ts)));
        }
        tx.try_send(audio(80)).expect("room again");
        assert_eq!(rx.recv().await, Some(audio(80)));
    }

    #[tokio::test]
    async fn the_receiver_wakes_for_an_event_sent_after_it_waited() {
        let (tx, mut rx) = queue(4);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send(CallerEvent::Dtmf('5')).expect("room");
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got, Some(CallerEvent::Dtmf('5')));
    }

    #[tokio::test]
    async fn recv_ends_after_the_last_sender_once_the_queue_is_drained() {
        let (tx, mut rx) = queue(4);
        let second = tx.clone();
        tx.try_send(CallerEvent::Dtmf('1')).expect("room");
        drop(tx);
        second.try_send(CallerEvent::Dtmf('2')).expect("room");
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(ev) = rx.recv().await {
                got.push(ev);
            }
            got
        });
        tokio::task::yield_now().await;
        drop(second);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("ended")
            .expect("task");
        assert_eq!(got, vec![CallerEvent::Dtmf('1'), CallerEvent::Dtmf('2')]);
    }

    #[tokio::test]
    async fn send_waits_for_room_and_fails_once_the_receiver_is_gone() {
        let (tx, mut rx) = queue(1);
        tx.try_send(CallerEvent::Dtmf('1')).expect("room");
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(CallerEvent::Leave).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room yet");
        assert_eq!(rx.recv().await, Some(CallerEvent::Dtmf('1')));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("room made")
            .expect("task")
            .expect("sent");
        assert_eq!(rx.recv().await, Some(CallerEvent::Leave));

        tx.try_send(CallerEvent::Dtmf('2')).expect("room");
        let tx3 = tx.clone();
        let blocked = tokio::spawn(async move { tx3.send(CallerEvent::Dtmf('3')).await });
        tokio::task::yield_now().await;
        drop(rx);
        let back = tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .expect("released")
            .expect("task");
        assert_eq!(back, Err(TrySendError::Closed));
        assert_eq!(
            tx.try_send(CallerEvent::Dtmf('4')),
            Err(TrySendError::Closed)
        );
    }

    #[tokio::test]
    async fn a_burst_gives_its_slots_back_when_drained() {
        let (tx, mut rx) = queue(32);
        for ts in 0..32 {
            tx.try_send(audio(ts * 20)).expect("room");
        }
        assert!(rx.0.lock().capacity() >= 32);
        for _ in 0..32 {
            rx.recv().await.expect("event");
        }
        assert!(rx.0.lock().capacity() <= KEEP, "slots given back");
    }
}
