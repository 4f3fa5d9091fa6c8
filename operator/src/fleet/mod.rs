//! Programming the media-node fleet: one connection per node pushes that
//! node's configuration (snapshot first, deltas after), the nodes' status
//! streams come back, and the manager turns both into per-node shares of the
//! trunks' limits, registration ownership and the fleet view that the
//! resources' status shows.

pub mod client;
mod encode;
mod node;
mod owners;
mod plan;
pub mod pods;
mod send;
mod shares;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::v1alpha1 as pb;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::metrics::Metrics;
use crate::routing::index::{Snapshot, changed};
use client::ControlClient;
use encode::NumbersEncoding;
use node::{Desired, Report};
use plan::{NodeFacts, Planner, mark_acked_changes};
use view::{FleetView, NodeView, Since};

/// Media nodes to program: node id -> `host:port` of its control service.
pub type Endpoints = BTreeMap<String, String>;

struct Slot {
    addr: String,
    task: JoinHandle<()>,
    desired: watch::Sender<Arc<Desired>>,
    connected: bool,
    acked: Option<Arc<Desired>>,
    status: Option<pb::NodeStatus>,
    refused: Option<(u64, String)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Slot {
    fn live(&self) -> bool {
        self.connected && self.status.as_ref().is_some_and(|s| !s.draining)
    }
}

/// The fleet manager's state.
struct Manager {
    client: Arc<ControlClient>,
    /// Leadership term sent with every push (0: unfenced).
    term: u64,
    reports: mpsc::UnboundedSender<(String, Report)>,
    metrics: Arc<Metrics>,
    base: Snapshot,
    /// The encoding of the base's numbers, shared by every node's snapshot.
    encoding: NumbersEncoding,
    planner: Planner,
    /// Trunks to re-plan: changed in the base or in a node's acknowledged
    /// table since the last plan.
    dirty: BTreeSet<String>,
    since: Since,
    last_version: u64,
    nodes: BTreeMap<String, Slot>,
}

impl Manager {
    /// Versions keep increasing across operator restarts: they start from
    /// the wall clock in milliseconds.
    fn next_version(last: &mut u64) -> u64 {
        let now = u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
        *last = (*last + 1).max(now);
        *last
    }

    /// Takes a new resolution. The snapshots share what did not change, so
    /// finding the change costs its size, not the world's.
    fn set_base(&mut self, new: Snapshot) {
        let old = std::mem::replace(&mut self.base, new);
        if !old.number_configs.ptr_eq(&self.base.number_configs) {
            self.encoding = NumbersEncoding::default();
        }
        // The next version pushed carries these objects' new content.
        let v = self.last_version + 1;
        for (id, new) in old
            .trunk_configs
            .diff(&self.base.trunk_configs)
            .map(changed)
        {
            self.dirty.insert(id.clone());
            self.since.update(id, new.map(|_| v));
        }
        for (id, new) in old
            .number_configs
            .diff(&self.base.number_configs)
            .map(changed)
        {
            self.since.update(id, new.map(|_| v));
        }
    }

    fn set_endpoints(&mut self, eps: &Endpoints) {
        self.nodes
            .retain(|id, slot| eps.get(id) == Some(&slot.addr));
        for (id, addr) in eps {
            if self.nodes.contains_key(id) {
                continue;
            }
            info!(node = %id, %addr, "media node discovered");
            let (tx, rx) = watch::channel(Arc::new(Desired::default()));
            let task = tokio::spawn(node::drive(
                id.clone(),
                addr.clone(),
                self.client.clone(),
                self.term,
                rx,
                self.reports.clone(),
            ));
            self.nodes.insert(
                id.clone(),
                Slot {
                    addr: addr.clone(),
                    task,
                    desired: tx,
                    connected: false,
                    acked: None,
                    status: None,
                    refused: None,
                },
            );
        }
        self.metrics
            .fleet_nodes
            .set(i64::try_from(self.nodes.len()).unwrap_or(i64::MAX));
    }

    fn on_report(&mut self, id: &str, r: Report) {
        let Some(slot) = self.nodes.get_mut(id) else {
            return;
        };
        match r {
            Report::Connected => slot.connected = true,
            Report::Acked(d) => {
                let old = slot
                    .acked
                    .as_ref()
                    .map(|a| a.trunks.clone())
                    .unwrap_or_default();
                mark_acked_changes(&old, &d.trunks, &mut self.dirty);
                slot.acked = Some(d);
                slot.refused = None;
            }
            Report::Refused(v, why) => slot.refused = Some((v, why)),
            Report::StaleTerm(v, why) => {
                // The connection task has stopped: this node follows a newer
                // leader now.
                slot.connected = false;
                slot.refused = Some((v, why));
            }
            Report::Status(s) => slot.status = Some(*s),
            Report::Disconnected => {
                slot.connected = false;
                if let Some(old) = slot.acked.take() {
                    mark_acked_changes(&old.trunks, &Default::default(), &mut self.dirty);
                }
            }
            Report::Sent(snapshot, bytes) => {
                let kind = if snapshot { "snapshot" } else { "delta" };
                self.metrics.pushes.with_label_values(&[kind]).inc();
                self.metrics
                    .push_bytes
                    .with_label_values(&[kind])
                    .inc_by(bytes as u64);
            }
        }
    }

    /// Re-plans what changed (see [`Planner`]) and pushes every node whose
    /// configuration differs from what it was last given.
    fn replan(&mut self) {
        let nodes = self.nodes.iter().map(|(id, s)| (id, s.live()));
        if self.planner.has_work(nodes, &self.dirty) {
            let facts: BTreeMap<String, NodeFacts> = self
                .nodes
                .iter()
                .map(|(id, s)| {
                    let f = NodeFacts {
                        live: s.live(),
                        acked_trunks: s
                            .acked
                            .as_ref()
                            .map(|a| a.trunks.clone())
                            .unwrap_or_default(),
                        active: s
                            .status
                            .iter()
                            .flat_map(|st| st.trunks.iter())
                            .map(|c| (c.trunk_id.clone(), c.inbound + c.outbound))
                            .collect(),
                    };
                    (id.clone(), f)
                })
                .collect();
            let dirty = std::mem::take(&mut self.dirty);
            self.planner
                .update(&self.base.trunk_configs, &dirty, &facts);
            self.metrics
                .trunks_planned
                .inc_by(self.planner.planned() as u64);
        }
        let mut version = None;
        for (id, slot) in &self.nodes {
            let trunks = self.planner.table(id);
            let current = slot.desired.borrow().clone();
            if current.version != 0
                && current.trunks.ptr_eq(&trunks)
                && current.numbers.ptr_eq(&self.base.number_configs)
            {
                continue;
            }
            let v = match version {
                Some(v) => v,
                None => {
                    let v = Self::next_version(&mut self.last_version);
                    version = Some(v);
                    v
                }
            };
            slot.desired.send_replace(Arc::new(Desired {
                version: v,
                trunks,
                numbers: self.base.number_configs.clone(),
                encoding: self.encoding.clone(),
            }));
        }
        if let Some(v) = version {
            self.metrics
                .config_version
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    fn view(&self) -> FleetView {
        let nodes: Vec<NodeView> = self
            .nodes
            .iter()
            .map(|(id, s)| NodeView {
                id: id.clone(),
                acked_version: s.acked.as_ref().map(|a| a.version).unwrap_or(0),
                status: s.status.clone(),
                refused: s.refused.clone(),
            })
            .collect();
        view::build(
            self.base.trunk_configs.values().map(Arc::as_ref),
            &self.since,
            &nodes,
        )
    }
}

/// Runs the fleet manager until its inputs close. `term` is the leadership
/// term sent with every push (0 without leader election). `resolution` must
/// not have been read yet: its first value after the initial one is the first
/// configuration pushed.
pub async fn run(
    client: Arc<ControlClient>,
    term: u64,
    mut resolution: watch::Receiver<Snapshot>,
    mut endpoints: watch::Receiver<Endpoints>,
    view_tx: watch::Sender<Arc<FleetView>>,
    metrics: Arc<Metrics>,
) {
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let mut m = Manager {
        client,
        term,
        reports: reports_tx,
        metrics,
        base: Snapshot::default(),
        encoding: NumbersEncoding::default(),
        planner: Planner::default(),
        dirty: BTreeSet::new(),
        since: Since::default(),
        last_version: 0,
        nodes: BTreeMap::new(),
    };
    // Connect at once, so that the connections are up while the first
    // resolution is still being made (a large inventory takes a second),
    // but never program nodes before it: a connection pushes nothing while
    // its configuration is the empty initial one, and pushing that would
    // withdraw every number from a running fleet each time the operator
    // starts.
    m.set_endpoints(&endpoints.borrow_and_update().clone());
    loop {
        tokio::select! {
            r = resolution.changed() => {
                if r.is_err() { return; }
                break;
            }
            r = endpoints.changed() => {
                if r.is_err() { return; }
                let eps = endpoints.borrow_and_update().clone();
                m.set_endpoints(&eps);
            }
            Some((id, r)) = reports.recv() => m.on_report(&id, r),
        }
    }
    m.set_base(resolution.borrow_and_update().clone());
    loop {
        m.replan();
        let v = m.view();
        view_tx.send_if_modified(|old| {
            if old.as_ref() == &v {
                false
            } else {
                *old = Arc::new(v);
                true
            }
        });
        tokio::select! {
            r = resolution.changed() => {
                if r.is_err() { return; }
                let base = resolution.borrow_and_update().clone();
                m.set_base(base);
            }
            r = endpoints.changed() => {
                if r.is_err() { return; }
                let eps = endpoints.borrow_and_update().clone();
                m.set_endpoints(&eps);
            }
            Some((id, r)) = reports.recv() => {
                m.on_report(&id, r);
                // Drain whatever else arrived, then plan once.
                while let Ok((id, r)) = reports.try_recv() {
                    m.on_report(&id, r);
                }
            }
        }
    }
}

/// How long the status writer waits between fleet-driven updates of one
/// object (call counts change constantly).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
