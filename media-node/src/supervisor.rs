//! Supervision of the node's long-lived tasks. A task that panics or returns (none of them
//! should) becomes a log line, `switchboard_task_failures_total{task, kind}` and readiness
//! false at once, then one of two things, chosen per task:
//!
//! - [`Supervisor::spawn_restarting`]: tasks whose state lives elsewhere (socket readers,
//!   accept loops, health checks, registrations, certificate reloads) start again after a
//!   back-off (1 s doubling to 30 s); readiness returns once the new run has lasted
//!   [`HEALTHY_AFTER`].
//! - [`Supervisor::spawn_critical`]: tasks that own state nothing else can rebuild (the SIP
//!   transaction actor and the dispatcher hold every transaction and the channel between
//!   them) make the node drain and exit ([`Supervisor::fatal`]): calls in progress keep their
//!   media until they end or the drain grace passes, new calls go to other nodes, and
//!   Kubernetes starts a fresh process.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{Notify, watch};

/// How long a restarted task must run before the node is ready again.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(5);
/// First wait before a restart; doubles per failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Owns the node's long-lived tasks; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    failures: IntCounterVec,
    failing_gauge: IntGauge,
    /// Tasks down or not yet healthy again, with why.
    failing: Mutex<HashMap<String, String>>,
    fatal: watch::Sender<Option<String>>,
    /// Per task, a trigger that makes it panic (tests and `POST /debug/panic`).
    inject: Mutex<HashMap<String, Arc<Notify>>>,
}

/// How a supervised run ended.
fn ending(r: Result<(), tokio::task::JoinError>) -> (&'static str, String) {
    match r {
        Ok(()) => ("exit", "returned".to_owned()),
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_owned());
            ("panic", format!("panicked: {msg}"))
        }
        Err(_) => ("exit", "cancelled".to_owned()),
    }
}

impl Supervisor {
    /// A supervisor whose metrics go into `registry`.
    pub fn new(registry: &Registry) -> Supervisor {
        let failures = IntCounterVec::new(
            Opts::new(
                "switchboard_task_failures_total",
                "Long-lived tasks that panicked or returned, by task and kind (panic, exit)",
            ),
            &["task", "kind"],
        )
        .unwrap_or_else(|e| unreachable!("constant metric definition: {e}"));
        let failing_gauge = IntGauge::new(
            "switchboard_tasks_failing",
            "Long-lived tasks down or restarted less than 5 s ago (the node is not ready meanwhile)",
        )
        .unwrap_or_else(|e| unreachable!("constant metric definition: {e}"));
        for c in [
            Box::new(failures.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failing_gauge.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "task metrics not registered");
            }
        }
        let (fatal, _) = watch::channel(None);
        Supervisor {
            inner: Arc::new(Inner {
                failures,
                failing_gauge,
                failing: Mutex::default(),
                fatal,
                inject: Mutex::default(),
            }),
        }
    }

    fn trigger(&self, name: &str) -> Arc<Notify> {
        self.inner
            .inject
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// `fut` with the test trigger: it panics, as the task, when the trigger fires.
    fn armed<F>(&self, name: &str, fut: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let trigger = self.trigger(name);
        let name = name.to_owned();
        async move {
            tokio::select! {
                () = fut => {}
                () = trigger.notified() => panic!("injected panic in task {name}"),
            }
        }
    }

    fn set_failing(&self, name: &str, why: Option<String>) {
        let mut failing = self.inner.failing.lock().unwrap_or_else(|p| p.into_inner());
        match why {
            Some(w) => {
                failing.insert(name.to_owned(), w);
            }
            None => {
                failing.remove(name);
            }
        }
        self.inner.failing_gauge.set(failing.len() as i64);
    }

    fn record(&self, name: &str, kind: &str, why: &str) {
        self.inner.failures.with_label_values(&[name, kind]).inc();
        tracing::error!(task = %name, kind, why, "supervised task failed");
    }

    /// Runs a task that cannot be restarted; if it ends, the node drains and exits.
    pub fn spawn_critical<F>(&self, name: &str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        let name = name.to_owned();
        let run = tokio::spawn(self.armed(&name, fut));
        tokio::spawn(async move {
            let (kind, why) = ending(run.await);
            this.record(&name, kind, &why);
            let reason = format!("task {name} {why}");
            this.set_failing(&name, Some(why));
            this.inner.fatal.send_replace(Some(reason));
        });
    }

    /// Runs `make()`, and again after a back-off each time the run ends.
    pub fn spawn_restarting<M, F>(&self, name: &str, mut make: M)
    where
        M: FnMut() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let mut run = tokio::spawn(this.armed(&name, make()));
                let ended = tokio::select! {
                    r = &mut run => Some(r),
                    () = tokio::time::sleep(HEALTHY_AFTER) => None,
                };
                let ended = match ended {
                    Some(r) => r,
                    None => {
                        // Ran long enough: healthy (again), and the next failure starts
                        // the back-off afresh.
                        this.set_failing(&name, None);
                        backoff = FIRST_BACKOFF;
                        run.await
                    }
                };
                let (kind, why) = ending(ended);
                this.record(&name, kind, &why);
                this.set_failing(&name, Some(why));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                tracing::info!(task = %name, "restarting supervised task");
            }
        });
    }

    /// `Err` with the failing tasks and why while any is down or not yet healthy again.
    pub fn readiness(&self) -> Result<(), String> {
        let failing = self.inner.failing.lock().unwrap_or_else(|p| p.into_inner());
        if failing.is_empty() {
            return Ok(());
        }
        let mut list: Vec<String> = failing.iter().map(|(t, w)| format!("{t} {w}")).collect();
        list.sort();
        Err(list.join("; "))
    }

    /// Resolves when a critical task failed, with why: the node should drain and exit.
    pub async fn fatal(&self) -> String {
        let mut rx = self.inner.fatal.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`; this cannot happen while we are borrowed.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Makes the named task panic (for tests, through `POST /debug/panic`); false when no
    /// such task runs.
    pub fn inject_panic(&self, name: &str) -> bool {
        let inject = self.inner.inject.lock().unwrap_or_else(|p| p.into_inner());
        match inject.get(name) {
            Some(t) => {
                t.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Names of the supervised tasks.
    pub fn tasks(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .inject
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_restarting_task_that_panics_is_not_ready_until_it_ran_long_enough() {
        let s = Supervisor::new(&Registry::new());
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        s.spawn_restarting("pinger", move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>()
        });
        tokio::task::yield_now().await;
        assert!(s.readiness().is_ok());
        assert!(s.inject_panic("pinger"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let why = s.readiness().expect_err("not ready after the panic");
        assert!(
            why.contains("pinger") && why.contains("injected panic"),
            "{why}"
        );
        assert_eq!(
            s.inner
                .failures
                .with_label_values(&["pinger", "panic"])
                .get(),
            1
        );
        // Restarted after the back-off, ready once it lasted HEALTHY_AFTER.
        tokio::time::sleep(FIRST_BACKOFF + Duration::from_millis(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(s.readiness().is_err());
        tokio::time::sleep(HEALTHY_AFTER).await;
        assert!(s.readiness().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_doubles_while_a_task_keeps_failing() {
        let s = Supervisor::new(&Registry::new());
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        // Returns at once every time: an unexpected exit.
        s.spawn_restarting("flaky", move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {}
        });
        // Runs at 0, 1, 3, 7 s (waits 1, 2, 4).
        tokio::time::sleep(Duration::from_millis(7500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(
            s.inner.failures.with_label_values(&["flaky", "exit"]).get(),
            4
        );
        assert!(s.readiness().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_task_that_ends_is_fatal() {
        let s = Supervisor::new(&Registry::new());
        s.spawn_critical("dispatch", std::future::pending::<()>());
        tokio::task::yield_now().await;
        assert!(s.inject_panic("dispatch"));
        let reason = tokio::time::timeout(Duration::from_secs(1), s.fatal())
            .await
            .expect("fatal resolves");
        assert!(
            reason.contains("dispatch") && reason.contains("panicked"),
            "{reason}"
        );
        assert!(s.readiness().is_err());
        assert!(!s.inject_panic("nonexistent"));
    }
}
