//! Outbound campaigns (`CallCampaign`): the leading operator dials each
//! campaign's callees through the media nodes' call service, paced, within
//! calling windows, with retries, and keeps per-callee results in
//! ConfigMaps. See docs/campaigns.md.
//!
//! - [`progress`]: the sans-IO state of one campaign (who is pending,
//!   dialling, retrying, done; the counters);
//! - [`schedule`]: calling windows and start/end times;
//! - [`callees`]: callee lists from the spec and from ConfigMaps;
//! - [`results`]: the results ConfigMaps (also the durable attempt record);
//! - [`nodes`]: dial, list and event streams on the nodes;
//! - [`runner`]: one campaign's I/O loop;
//! - [`webhook`]: outcome webhooks.
//!
//! At most one dial per attempt: an attempt is written to the results
//! (state `dialing`, with its node) before it is dialled, and its dial
//! carries an idempotency key (`client_ref`) the node places at most one
//! call for. A new leader reads the results and asks the recorded node
//! about every `dialing` attempt before it dials anything.

pub mod callees;
pub mod nodes;
pub mod progress;
pub mod results;
pub mod runner;
pub mod schedule;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::crd::CallCampaign;
use progress::Counters;
use runner::Shared;

/// The phases of `status.phase`.
pub mod phase {
    /// Not started: waiting for its start time or for a usable spec.
    pub const PENDING: &str = "Pending";
    /// Dialling.
    pub const RUNNING: &str = "Running";
    /// `spec.suspend` is set: no new dials.
    pub const SUSPENDED: &str = "Suspended";
    /// Every calling window is closed now.
    pub const WAITING_FOR_WINDOW: &str = "WaitingForWindow";
    /// Every callee is done.
    pub const COMPLETED: &str = "Completed";
    /// The campaign cannot continue (its callee list changed).
    pub const FAILED: &str = "Failed";
}

/// The campaigns' metrics (`switchboard_campaign_*`, by namespace and
/// campaign name).
pub struct CampaignMetrics {
    pending: IntGaugeVec,
    in_progress: IntGaugeVec,
    upcoming: IntGaugeVec,
    dials: IntCounterVec,
    outcomes: IntCounterVec,
    /// Outcome webhook deliveries by result.
    pub webhooks: IntCounterVec,
}

impl CampaignMetrics {
    /// Creates the metrics in `registry`.
    pub fn new(registry: &Registry) -> Result<CampaignMetrics, prometheus::Error> {
        // Not "namespace": Prometheus sets that label to the operator pod's
        // namespace when it scrapes.
        let labels = &["campaign_namespace", "campaign"];
        let pending = IntGaugeVec::new(
            Opts::new(
                "switchboard_campaign_pending_calls",
                "Callees of a campaign still to be dialled (not attempted yet, or waiting for a retry): the demand an autoscaler can read",
            ),
            labels,
        )?;
        let in_progress = IntGaugeVec::new(
            Opts::new(
                "switchboard_campaign_calls_in_progress",
                "Calls of a campaign in progress on the media nodes",
            ),
            labels,
        )?;
        let upcoming = IntGaugeVec::new(
            Opts::new(
                "switchboard_campaign_upcoming_calls",
                "Calls a running campaign is about to add to the fleet: its concurrency limit (or the callees left, if fewer) minus its calls in progress",
            ),
            labels,
        )?;
        let dials = IntCounterVec::new(
            Opts::new(
                "switchboard_campaign_dials_total",
                "Dial requests by result (placed, not_placed, refused, unknown)",
            ),
            &["campaign_namespace", "campaign", "result"],
        )?;
        let outcomes = IntCounterVec::new(
            Opts::new(
                "switchboard_campaign_outcomes_total",
                "Callees finished, by outcome",
            ),
            &["campaign_namespace", "campaign", "outcome"],
        )?;
        let webhooks = IntCounterVec::new(
            Opts::new(
                "switchboard_campaign_webhook_deliveries_total",
                "Campaign outcome webhook deliveries by result (ok, retried, failed, dropped)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(in_progress.clone()))?;
        registry.register(Box::new(upcoming.clone()))?;
        registry.register(Box::new(dials.clone()))?;
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(webhooks.clone()))?;
        Ok(CampaignMetrics {
            pending,
            in_progress,
            upcoming,
            dials,
            outcomes,
            webhooks,
        })
    }

    /// Sets a campaign's gauges; `limit` is its concurrency limit while it
    /// may dial (0 while suspended, waiting or done).
    pub fn observe(&self, ns: &str, name: &str, c: &Counters, limit: u64) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let left = c.pending + c.retrying;
        self.pending.with_label_values(&[ns, name]).set(gauge(left));
        self.in_progress
            .with_label_values(&[ns, name])
            .set(gauge(c.in_progress));
        let wanted = limit.min(c.in_progress + left);
        self.upcoming
            .with_label_values(&[ns, name])
            .set(gauge(wanted.saturating_sub(c.in_progress)));
    }

    /// Counts a dial request.
    pub fn dials(&self, ns: &str, name: &str, result: &str) {
        self.dials.with_label_values(&[ns, name, result]).inc();
    }

    /// Counts a finished callee.
    pub fn outcome(&self, ns: &str, name: &str, outcome: &str) {
        self.outcomes.with_label_values(&[ns, name, outcome]).inc();
    }

    /// Drops a deleted campaign's gauges.
    pub fn forget(&self, ns: &str, name: &str) {
        let _ = self.pending.remove_label_values(&[ns, name]);
        let _ = self.in_progress.remove_label_values(&[ns, name]);
        let _ = self.upcoming.remove_label_values(&[ns, name]);
    }
}

struct Running {
    uid: String,
    spec: watch::Sender<Arc<CallCampaign>>,
    task: JoinHandle<()>,
    nodes: Arc<nodes::NodeCalls>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
        // An aborted runner cannot unsubscribe itself.
        self.nodes.unsubscribe(&self.uid);
    }
}

/// Runs the campaigns while this replica leads: a runner per campaign,
/// all stopped when leadership is lost (the next leader resumes them from
/// their results).
pub async fn run(
    shared: Arc<Shared>,
    namespace: Option<String>,
    mut leader: watch::Receiver<bool>,
) {
    tokio::spawn(shared.nodes.clone().follow());
    loop {
        while !*leader.borrow_and_update() {
            if leader.changed().await.is_err() {
                return;
            }
        }
        info!("leading: running campaigns");
        tokio::select! {
            _ = run_leading(shared.clone(), namespace.clone()) => {}
            _ = async {
                while *leader.borrow_and_update() {
                    if leader.changed().await.is_err() {
                        break;
                    }
                }
            } => info!("no longer leader: campaigns stopped (calls in progress finish on their nodes)"),
        }
    }
}

async fn run_leading(shared: Arc<Shared>, namespace: Option<String>) {
    let api: Api<CallCampaign> = match &namespace {
        Some(ns) => Api::namespaced(shared.kube.clone(), ns),
        None => Api::all(shared.kube.clone()),
    };
    let mut running: HashMap<(String, String), Running> = HashMap::new();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                warn!(error = %e, "watching CallCampaigns");
                continue;
            }
        };
        match ev {
            watcher::Event::Apply(c) | watcher::Event::InitApply(c) => {
                apply(&shared, &mut running, c);
            }
            watcher::Event::Delete(c) => {
                let key = (c.namespace().unwrap_or_default(), c.name_any());
                if running.remove(&key).is_some() {
                    info!(campaign = %format!("{}/{}", key.0, key.1), "campaign deleted: stopped");
                    shared.metrics.forget(&key.0, &key.1);
                }
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
}

fn apply(shared: &Arc<Shared>, running: &mut HashMap<(String, String), Running>, c: CallCampaign) {
    let key = (c.namespace().unwrap_or_default(), c.name_any());
    let uid = c.uid().unwrap_or_default();
    let c = Arc::new(c);
    if let Some(r) = running.get(&key)
        && r.uid == uid
        && !r.task.is_finished()
    {
        // Status writes come back as events too: only spec changes matter.
        if r.spec.borrow().metadata.generation != c.metadata.generation {
            r.spec.send_replace(c);
        }
        return;
    }
    // The old runner (a finished one, or a deleted campaign's namesake)
    // goes first: its drop ends its subscription, which must not be the new
    // runner's.
    drop(running.remove(&key));
    let (tx, rx) = watch::channel(c);
    let task = tokio::spawn(runner::run(shared.clone(), rx));
    running.insert(
        key,
        Running {
            uid,
            spec: tx,
            task,
            nodes: shared.nodes.clone(),
        },
    );
}
