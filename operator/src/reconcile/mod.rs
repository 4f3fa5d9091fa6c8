//! The Kubernetes side of the operator: watches SipTrunks, PhoneNumbers and
//! Secrets, resolves them into routing configuration (see [`crate::routing`])
//! and, while leader, writes each object's status by server-side apply and
//! emits Events on condition transitions.
//!
//! Watch events feed the incremental resolver ([`crate::routing::index`]):
//! each batch re-judges only the objects it touches, and the published
//! snapshot tells the fleet and the status writer exactly what changed.

pub(crate) mod conditions;
mod status;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::crd::{PhoneNumber, SipTrunk};
use crate::fleet::view::FleetView;
use crate::metrics::Metrics;
use crate::routing::index::{Event, Index, Snapshot, changed};
use crate::routing::{NumberInput, ObjectKey, SecretData, TrunkInput};

/// Settings of the Kubernetes reconciler.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch one namespace only; `None` watches all.
    pub namespace: Option<String>,
    /// Server-side-apply field manager and Event reporter.
    pub manager: String,
    /// This replica's identity (pod name), for Events.
    pub instance: String,
}

/// Errors that stop the reconciler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A watch cache closed before it was ready.
    #[error("watch cache for {0} closed before it was ready")]
    CacheClosed(&'static str),
}

fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch event of one of the three kinds.
enum Watched {
    Trunk(Box<watcher::Event<SipTrunk>>),
    Number(Box<watcher::Event<PhoneNumber>>),
    Secret(Box<watcher::Event<Secret>>),
}

fn key_of<K: kube::Resource>(o: &K) -> ObjectKey {
    ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any())
}

/// A watch event with its object mapped.
fn map_event<K, T>(e: watcher::Event<K>, f: impl FnOnce(K) -> T) -> watcher::Event<T> {
    match e {
        watcher::Event::Apply(k) => watcher::Event::Apply(f(k)),
        watcher::Event::Delete(k) => watcher::Event::Delete(f(k)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(k) => watcher::Event::InitApply(f(k)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Turns watch events into index events. A re-list (after a watch
/// expired) names only the objects that exist: what the index holds and the
/// re-list did not name was deleted in the gap.
#[derive(Default)]
struct Translator {
    relist: [Option<HashSet<ObjectKey>>; 3],
    synced: [bool; 3],
    pending: Vec<Event>,
}

impl Translator {
    fn all_synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// Handles one watch event; returns true when the index must absorb the
    /// pending events before the next one (a re-list ended).
    fn handle(&mut self, w: Watched, index: &Index) -> Option<usize> {
        let (kind, ev) = match w {
            Watched::Trunk(e) => (
                0,
                map_event(*e, |t| {
                    (
                        key_of(&t),
                        Event::Trunk(Box::new(TrunkInput::from_object(&t))),
                    )
                }),
            ),
            Watched::Number(e) => (
                1,
                map_event(*e, |n| {
                    (
                        key_of(&n),
                        Event::Number(Arc::new(NumberInput::from_object(&n))),
                    )
                }),
            ),
            Watched::Secret(e) => (
                2,
                map_event(*e, |s| {
                    let k = key_of(&s);
                    (k.clone(), Event::Secret(k, SecretData::from(&s)))
                }),
            ),
        };
        match ev {
            watcher::Event::Init => self.relist[kind] = Some(HashSet::new()),
            watcher::Event::InitApply((k, e)) => {
                if let Some(seen) = self.relist[kind].as_mut() {
                    seen.insert(k.clone());
                }
                self.push(kind, k, e, index);
            }
            watcher::Event::Apply((k, e)) => self.push(kind, k, e, index),
            watcher::Event::Delete((k, _)) => self.pending.push(match kind {
                0 => Event::TrunkDeleted(k),
                1 => Event::NumberDeleted(k),
                _ => Event::SecretDeleted(k),
            }),
            watcher::Event::InitDone => {
                self.synced[kind] = true;
                return Some(kind);
            }
        }
        None
    }

    fn push(&mut self, kind: usize, key: ObjectKey, e: Event, index: &Index) {
        // Most Secrets in a namespace are not ours; a referenced one that
        // arrives before its user is read from the cache when needed.
        if kind == 2 && !index.references_secret(&key) {
            return;
        }
        self.pending.push(e);
    }

    /// Deletions implied by a finished re-list; the pending events must have
    /// been applied first.
    fn relist_done(&mut self, kind: usize, index: &Index) {
        let Some(seen) = self.relist[kind].take() else {
            return;
        };
        let gone: Vec<Event> = match kind {
            0 => index
                .trunk_keys()
                .filter(|k| !seen.contains(*k))
                .map(|k| Event::TrunkDeleted(k.clone()))
                .collect(),
            1 => index
                .number_keys()
                .filter(|k| !seen.contains(*k))
                .map(|k| Event::NumberDeleted(k.clone()))
                .collect(),
            _ => index
                .secret_keys()
                .filter(|k| !seen.contains(*k))
                .map(|k| Event::SecretDeleted(k.clone()))
                .collect(),
        };
        self.pending.extend(gone);
    }
}

/// Most watch events absorbed in one batch (bounds the time between
/// publications during a large initial list).
const MAX_BATCH: usize = 20_000;

/// Runs until the process ends. `leader` gates every write; `resolved`
/// receives each new snapshot (the fleet programmer's input); `fleet`, when
/// a fleet is programmed, brings back what the nodes report.
pub async fn run(
    client: Client,
    opts: Options,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    resolved: watch::Sender<Snapshot>,
    fleet: Option<watch::Receiver<Arc<FleetView>>>,
) -> Result<(), Error> {
    let (trunks, trunk_writer) = reflector::store::<SipTrunk>();
    let (numbers, number_writer) = reflector::store::<PhoneNumber>();
    let (secrets, secret_writer) = reflector::store::<Secret>();
    let cfg = watcher::Config::default();
    let trunk_events = watcher(api::<SipTrunk>(&client, &opts.namespace), cfg.clone())
        .default_backoff()
        .reflect(trunk_writer)
        .map(|e| {
            e.map(|e| Watched::Trunk(Box::new(e)))
                .map_err(|e| ("SipTrunk", e))
        })
        .boxed();
    let number_events = watcher(api::<PhoneNumber>(&client, &opts.namespace), cfg.clone())
        .default_backoff()
        .reflect(number_writer)
        .map(|e| {
            e.map(|e| Watched::Number(Box::new(e)))
                .map_err(|e| ("PhoneNumber", e))
        })
        .boxed();
    let secret_events = watcher(api::<Secret>(&client, &opts.namespace), cfg)
        .default_backoff()
        .reflect(secret_writer)
        .map(|e| {
            e.map(|e| Watched::Secret(Box::new(e)))
                .map_err(|e| ("Secret", e))
        })
        .boxed();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let m = metrics.clone();
    tokio::spawn(async move {
        let mut all = stream::select_all([trunk_events, number_events, secret_events]);
        while let Some(ev) = all.next().await {
            match ev {
                Ok(w) => {
                    if tx.send(w).is_err() {
                        return;
                    }
                }
                Err((kind, e)) => {
                    m.watch_errors.with_label_values(&[kind]).inc();
                    warn!(kind, error = %e, "watch error; retrying with backoff");
                }
            }
        }
    });

    let mut index = Index::new();
    let mut tr = Translator::default();
    let mut published: Option<Snapshot> = None;
    loop {
        let Some(first) = rx.recv().await else {
            return Err(Error::CacheClosed("watch streams"));
        };
        let mut next = Some(first);
        let mut taken = 0usize;
        while let Some(w) = next.take() {
            taken += 1;
            if let Some(kind) = tr.handle(w, &index) {
                absorb(&mut index, &mut tr, &secrets, &metrics);
                tr.relist_done(kind, &index);
            }
            if taken < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        // Nothing is published before every kind is listed: numbers read
        // before their trunks would withdraw them from running nodes.
        if !tr.all_synced() {
            continue;
        }
        absorb(&mut index, &mut tr, &secrets, &metrics);
        let snap = index.snapshot();
        if published.as_ref().is_some_and(|p| p.same(&snap)) {
            continue;
        }
        if published.is_none() {
            metrics.ready.set(1);
            info!("watch caches synced");
            // Status is written by its own task, so a burst of thousands of
            // status writes never delays the next resolution (and the fleet).
            let writer = status::Writer::new(client.clone(), &opts, metrics.clone());
            tokio::spawn(write_statuses(
                writer,
                resolved.subscribe(),
                fleet.clone(),
                leader.clone(),
                trunks.clone(),
                numbers.clone(),
            ));
        }
        resolved.send_replace(snap.clone());
        published = Some(snap);
        // Let the fleet programmer run first (it sits in this worker's LIFO
        // slot, which the other worker cannot steal).
        tokio::task::yield_now().await;
    }
}

/// Applies the pending events to the index.
fn absorb(
    index: &mut Index,
    tr: &mut Translator,
    secrets: &reflector::Store<Secret>,
    metrics: &Metrics,
) {
    if tr.pending.is_empty() {
        return;
    }
    let started = Instant::now();
    let source = |k: &ObjectKey| {
        secrets
            .get(&ObjectRef::new(&k.name).within(&k.namespace))
            .map(|s| SecretData::from(s.as_ref()))
    };
    index.apply(std::mem::take(&mut tr.pending), &source);
    metrics
        .resolve_seconds
        .observe(started.elapsed().as_secs_f64());
    let (t, n) = index.counts();
    metrics.observe(t, n);
}

/// Numbers written per round; between rounds newer snapshots are taken in,
/// so a long backlog is always written from the latest state (coalesced).
const STATUS_CHUNK: usize = 1000;
/// A number that is Pending only because nodes have not applied its change
/// yet is written after this long, not at once: nodes usually apply within
/// it, and the status then goes straight to Programmed (one write, not two).
const PENDING_HOLD: Duration = Duration::from_millis(1500);

/// Writes the status of every object whose desired status changed, while
/// this replica leads. Which numbers to look at follows from the snapshots'
/// and the fleet views' differences (O(change)); trunks are few and are all
/// looked at when anything changes.
async fn write_statuses(
    writer: status::Writer,
    mut resolution: watch::Receiver<Snapshot>,
    mut fleet: Option<watch::Receiver<Arc<FleetView>>>,
    mut leader: watch::Receiver<bool>,
    trunks: reflector::Store<SipTrunk>,
    numbers: reflector::Store<PhoneNumber>,
) {
    // Retry soon after a failed write even if nothing else changes.
    let retry = Duration::from_secs(2);
    let mut last_fleet_write = Instant::now()
        .checked_sub(crate::fleet::STATUS_INTERVAL)
        .unwrap_or_else(Instant::now);
    let mut seen_snap: Option<Snapshot> = None;
    let mut seen_view: Option<Arc<FleetView>> = None;
    // Numbers to look at, with when they first needed it.
    let mut dirty: BTreeMap<ObjectKey, Instant> = BTreeMap::new();
    let mut trunks_due = true;
    let mut was_leader = false;
    loop {
        let leading = *leader.borrow_and_update();
        let snap = resolution.borrow_and_update().clone();
        let view = fleet.as_mut().map(|f| f.borrow_and_update().clone());
        let mut wake_in: Option<Duration> = None;
        if leading {
            let now = Instant::now();
            let mut mark = |k: ObjectKey| {
                dirty.entry(k).or_insert(now);
            };
            match (&seen_snap, was_leader) {
                (Some(old), true) => {
                    for d in old.numbers.diff(&snap.numbers) {
                        mark(changed(d).0.clone());
                    }
                    for d in old.number_configs.diff(&snap.number_configs) {
                        let id: &String = changed(d).0;
                        if let Some(k) = ObjectKey::from_id(id) {
                            mark(k);
                        }
                    }
                }
                // A new leader looks at everything once.
                _ => {
                    for k in snap.numbers.keys() {
                        mark(k.clone());
                    }
                    trunks_due = true;
                }
            }
            if let (Some(v), Some(w)) = (&view, &seen_view)
                && was_leader
            {
                for id in v.programmed_changes(w) {
                    if let Some(k) = ObjectKey::from_id(&id) {
                        mark(k);
                    }
                }
            }
            seen_snap = Some(snap.clone());
            seen_view = view.clone();
            if trunks_due {
                trunks_due = writer
                    .write_trunks(&snap, view.as_deref(), &trunks.state())
                    .await
                    > 0;
                if trunks_due {
                    wake_in = Some(retry);
                }
            }
            // The backlog in rounds, from the latest state.
            let mut held: Vec<(ObjectKey, Instant)> = Vec::new();
            while !dirty.is_empty() {
                let mut round = Vec::with_capacity(STATUS_CHUNK);
                while round.len() < STATUS_CHUNK {
                    let Some(e) = dirty.pop_first() else { break };
                    round.push(e);
                }
                let write =
                    writer.write_numbers(&snap, view.as_deref(), &numbers, round, PENDING_HOLD);
                // A round can be long: losing leadership abandons it at once
                // rather than writing on as a deposed leader.
                let lost = async {
                    while *leader.borrow() {
                        if leader.changed().await.is_err() {
                            break;
                        }
                    }
                };
                let out = tokio::select! {
                    out = write => out,
                    _ = lost => break,
                };
                held.extend(out.held);
                let failed = !out.failed.is_empty();
                dirty.extend(out.failed);
                if failed {
                    // Throttled or failing: back off before the rest.
                    let pause = if out.throttled {
                        Duration::from_secs(1)
                    } else {
                        retry
                    };
                    wake_in = Some(wake_in.map_or(pause, |w| w.min(pause)));
                    break;
                }
                let newer = resolution.has_changed().unwrap_or(false)
                    || leader.has_changed().unwrap_or(false)
                    || fleet
                        .as_ref()
                        .is_some_and(|f| f.has_changed().unwrap_or(false));
                if newer {
                    break;
                }
            }
            if let Some(first) = held.iter().map(|(_, t)| *t).min() {
                let due = (first + PENDING_HOLD).saturating_duration_since(Instant::now());
                let due = due.max(Duration::from_millis(50));
                wake_in = Some(wake_in.map_or(due, |w| w.min(due)));
            }
            dirty.extend(held);
            if !dirty.is_empty() && wake_in.is_none() {
                wake_in = Some(Duration::ZERO);
            }
        } else {
            dirty.clear();
            seen_snap = None;
            seen_view = None;
        }
        was_leader = leading;
        tokio::select! {
            r = resolution.changed() => {
                if r.is_err() {
                    return;
                }
                trunks_due = true;
            }
            r = leader.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(wake_in.unwrap_or(retry)), if wake_in.is_some() => {}
            open = fleet_changed(&mut fleet) => {
                if !open {
                    fleet = None;
                }
                // Conditions (Programmed, Registered, Degraded) go out at
                // once; call counts change all the time and are written at
                // most this often.
                let now = fleet.as_ref().map(|f| f.borrow().clone());
                let conditions_changed = match (&now, &seen_view) {
                    (Some(n), Some(w)) => n.conditions_differ(w),
                    _ => true,
                };
                let since = last_fleet_write.elapsed();
                if !conditions_changed && since < crate::fleet::STATUS_INTERVAL {
                    tokio::time::sleep(crate::fleet::STATUS_INTERVAL - since).await;
                }
                trunks_due = true;
                last_fleet_write = Instant::now();
            }
        }
    }
}

/// Waits for the fleet view to change; pending forever without a fleet.
async fn fleet_changed(f: &mut Option<watch::Receiver<Arc<FleetView>>>) -> bool {
    match f {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}
