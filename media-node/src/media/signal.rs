//! A wake-up flag for one waiting task: set from anywhere, awaited by its owner.
//!
//! `tokio::sync::Notify` registers and unregisters a waiter under a lock every time a
//! `notified()` future is created and dropped, which a media task's `select!` loop does on
//! every packet. This flag costs two atomic operations per wait instead.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// A flag that one task waits on (see the module documentation).
#[derive(Debug, Default)]
pub struct Signal {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// A flag, not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes the waiting task (a set flag stays set until awaited).
    pub fn notify(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once the flag is set, and clears it. Only one task may wait at a time.
    pub fn wait(&self) -> Wait<'_> {
        Wait { signal: self }
    }
}

/// Future of [`Signal::wait`].
#[derive(Debug)]
pub struct Wait<'a> {
    signal: &'a Signal,
}

impl std::future::Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let s = self.signal;
        if s.set.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        s.waker.register(cx.waker());
        if s.set.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_set_flag_is_seen_once_and_wakes_a_waiter() {
        let s = Arc::new(Signal::new());
        s.notify();
        s.wait().await;
        // Cleared: a second wait needs a second notify.
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.notify();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("no panic");
    }
}
