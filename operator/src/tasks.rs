//! The operator's long-lived tasks (fleet programming, pod discovery, deletion costs): a
//! panic or an unexpected return is logged, counted in
//! `switchboard_operator_task_failures_total{task, kind}`, turns `/readyz` false and ends the
//! process with a failure status. The operator keeps no state the API server does not: a
//! fresh process rebuilds it, and a standby replica takes the lease meanwhile.

use std::future::Future;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::mpsc;

/// Spawns and watches the critical tasks.
pub struct Tasks {
    failures: IntCounterVec,
    ready: IntGauge,
    tx: mpsc::UnboundedSender<String>,
    rx: mpsc::UnboundedReceiver<String>,
}

impl Tasks {
    /// Registers the failure counter in `registry`; `ready` is the readiness gauge that a
    /// failure clears.
    pub fn new(registry: &Registry, ready: IntGauge) -> Result<Tasks, prometheus::Error> {
        let failures = IntCounterVec::new(
            Opts::new(
                "task_failures_total",
                "Long-lived tasks that panicked or returned, by task and kind (panic, exit)",
            ),
            &["task", "kind"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Tasks {
            failures,
            ready,
            tx,
            rx,
        })
    }

    /// Runs `fut`; if it ever ends, [`Tasks::failed`] says which and why.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let run = tokio::spawn(fut);
        let (failures, ready, tx) = (self.failures.clone(), self.ready.clone(), self.tx.clone());
        tokio::spawn(async move {
            let (kind, why) = match run.await {
                Ok(()) => ("exit", "returned".to_owned()),
                Err(e) if e.is_panic() => ("panic", "panicked".to_owned()),
                Err(_) => ("exit", "was cancelled".to_owned()),
            };
            failures.with_label_values(&[name, kind]).inc();
            ready.set(0);
            tracing::error!(task = name, kind, "operator task failed; exiting");
            let _ = tx.send(format!("task {name} {why}"));
        });
    }

    /// Resolves with the first failure.
    pub async fn failed(&mut self) -> String {
        // The sender lives in `self`: the channel never closes while we wait.
        self.rx
            .recv()
            .await
            .unwrap_or_else(|| "task supervisor closed".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_reported_counted_and_clears_readiness() {
        let registry = Registry::new();
        let ready = IntGauge::new("ready", "ready").expect("gauge");
        ready.set(1);
        let mut tasks = Tasks::new(&registry, ready.clone()).expect("tasks");
        tasks.spawn("steady", std::future::pending());
        tasks.spawn("fleet", async { panic!("bug") });
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), tasks.failed())
            .await
            .expect("reported");
        assert_eq!(why, "task fleet panicked");
        assert_eq!(ready.get(), 0);
        assert_eq!(
            tasks.failures.with_label_values(&["fleet", "panic"]).get(),
            1
        );
        assert_eq!(
            tasks.failures.with_label_values(&["steady", "panic"]).get(),
            0
        );
    }
}
