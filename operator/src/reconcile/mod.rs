//! The Kubernetes side of the operator: watches SipTrunks, PhoneNumbers and
//! Secrets, resolves them into routing configuration (see [`crate::routing`])
//! and, while leader, writes each object's status by server-side apply and
//! emits Events on condition transitions.
//!
//! Numbers conflict with each other and reference trunks and Secrets, so the
//! whole set is resolved at once from the watch caches whenever anything
//! changes (debounced); only objects whose status differs are written.

pub mod conditions;
mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::crd::{PhoneNumber, SipTrunk};
use crate::fleet::view::FleetView;
use crate::metrics::Metrics;
use crate::routing::{self, Inputs, Resolution, SecretData};

/// Settings of the Kubernetes reconciler.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch one namespace only; `None` watches all.
    pub namespace: Option<String>,
    /// Server-side-apply field manager and Event reporter.
    pub manager: String,
    /// This replica's identity (pod name), for Events.
    pub instance: String,
    /// Quiet time after a change before resolving, to batch bursts.
    pub debounce: Duration,
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

/// Runs until the process ends. `leader` gates every write; `resolved`
/// receives each new resolution (the fleet programmer's input); `fleet`, when
/// a fleet is programmed, brings back what the nodes report.
pub async fn run(
    client: Client,
    opts: Options,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    resolved: watch::Sender<Arc<Resolution>>,
    fleet: Option<watch::Receiver<Arc<FleetView>>>,
) -> Result<(), Error> {
    let changed = Arc::new(Notify::new());

    let (trunks, trunk_writer) = reflector::store::<SipTrunk>();
    let (numbers, number_writer) = reflector::store::<PhoneNumber>();
    let (secrets, secret_writer) = reflector::store::<Secret>();
    let cfg = watcher::Config::default();
    let trunk_events = watcher(api::<SipTrunk>(&client, &opts.namespace), cfg.clone())
        .default_backoff()
        .reflect(trunk_writer)
        .map(|e| e.map(|_| ()).map_err(|e| ("SipTrunk", e)))
        .boxed();
    let number_events = watcher(api::<PhoneNumber>(&client, &opts.namespace), cfg.clone())
        .default_backoff()
        .reflect(number_writer)
        .map(|e| e.map(|_| ()).map_err(|e| ("PhoneNumber", e)))
        .boxed();
    let secret_events = watcher(api::<Secret>(&client, &opts.namespace), cfg)
        .default_backoff()
        .reflect(secret_writer)
        .map(|e| e.map(|_| ()).map_err(|e| ("Secret", e)))
        .boxed();
    let notify = changed.clone();
    let m = metrics.clone();
    tokio::spawn(async move {
        let mut all = stream::select_all([trunk_events, number_events, secret_events]);
        while let Some(ev) = all.next().await {
            if let Err((kind, e)) = ev {
                m.watch_errors.with_label_values(&[kind]).inc();
                warn!(kind, error = %e, "watch error; retrying with backoff");
            }
            notify.notify_one();
        }
    });

    trunks
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheClosed("SipTrunk"))?;
    numbers
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheClosed("PhoneNumber"))?;
    secrets
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheClosed("Secret"))?;
    metrics.ready.set(1);
    info!("watch caches synced");

    // Status is written by its own task, so a burst of thousands of status
    // writes never delays the next resolution (and so the fleet).
    let writer = status::Writer::new(client.clone(), &opts, metrics.clone());
    tokio::spawn(write_statuses(
        writer,
        resolved.subscribe(),
        fleet,
        leader.clone(),
        trunks.clone(),
        numbers.clone(),
    ));
    loop {
        let resolution = Arc::new(resolve_from(&trunks, &numbers, &secrets, &metrics));
        let last_resolve = Instant::now();
        resolved.send_replace(resolution);

        // A lone change is handled at once; in a burst, at most one resolve
        // per debounce interval.
        changed.notified().await;
        let since = last_resolve.elapsed();
        if since < opts.debounce {
            tokio::time::sleep(opts.debounce - since).await;
        }
    }
}

/// Writes the status of every object whose desired status changed, while
/// this replica leads: on each new resolution, on fleet changes (at most once
/// per STATUS_INTERVAL), and again after failures.
async fn write_statuses(
    writer: status::Writer,
    mut resolution: watch::Receiver<Arc<Resolution>>,
    mut fleet: Option<watch::Receiver<Arc<FleetView>>>,
    mut leader: watch::Receiver<bool>,
    trunks: reflector::Store<SipTrunk>,
    numbers: reflector::Store<PhoneNumber>,
) {
    // Retry soon after a failed write even if nothing else changes.
    let retry = Duration::from_secs(2);
    let mut pending_retry = false;
    let mut last_fleet_write = Instant::now()
        .checked_sub(crate::fleet::STATUS_INTERVAL)
        .unwrap_or_else(Instant::now);
    let mut written_view: Option<Arc<FleetView>> = None;
    // Numbers' statuses depend on the resolution and on Programmed only;
    // a change of call counts alone rewrites (and recomputes) trunks only.
    let mut numbers_due = true;
    loop {
        if *leader.borrow_and_update() {
            let r = resolution.borrow_and_update().clone();
            let view = fleet.as_mut().map(|f| f.borrow_and_update().clone());
            written_view = view.clone();
            let number_objects = if numbers_due {
                numbers.state()
            } else {
                Vec::new()
            };
            let trunk_objects = trunks.state();
            let write = writer.write_all(&r, view.as_deref(), &trunk_objects, &number_objects);
            // A batch can be long: losing leadership abandons it at once
            // rather than writing on as a deposed leader.
            let lost = async {
                while *leader.borrow() {
                    if leader.changed().await.is_err() {
                        break;
                    }
                }
            };
            pending_retry = tokio::select! {
                failures = write => failures > 0,
                _ = lost => false,
            };
        }
        numbers_due = true;
        tokio::select! {
            r = resolution.changed() => {
                if r.is_err() {
                    return;
                }
            }
            r = leader.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(retry), if pending_retry => {}
            open = fleet_changed(&mut fleet) => {
                if !open {
                    fleet = None;
                }
                // Conditions (Programmed, Registered, Degraded) go out at
                // once; call counts change all the time and are written at
                // most this often.
                let now = fleet.as_ref().map(|f| f.borrow().clone());
                let conditions_changed = match (&now, &written_view) {
                    (Some(n), Some(w)) => n.conditions_differ(w),
                    _ => true,
                };
                let since = last_fleet_write.elapsed();
                if !conditions_changed && since < crate::fleet::STATUS_INTERVAL {
                    tokio::time::sleep(crate::fleet::STATUS_INTERVAL - since).await;
                }
                numbers_due = conditions_changed;
                last_fleet_write = Instant::now();
            }
        }
    }
}

/// Builds the resolver's inputs from the watch caches and resolves them.
fn resolve_from(
    trunks: &reflector::Store<SipTrunk>,
    numbers: &reflector::Store<PhoneNumber>,
    secrets: &reflector::Store<Secret>,
    metrics: &Metrics,
) -> Resolution {
    let mut inputs = Inputs::default();
    for t in trunks.state() {
        inputs.add_trunk(&t);
    }
    for n in numbers.state() {
        inputs.add_number(&n);
    }
    let wanted = inputs.referenced_secrets();
    for s in secrets.state() {
        let key = routing::ObjectKey::new(
            s.metadata.namespace.clone().unwrap_or_default(),
            s.metadata.name.clone().unwrap_or_default(),
        );
        if wanted.contains(&key) {
            inputs.secrets.insert(key, SecretData::from(s.as_ref()));
        }
    }
    let started = Instant::now();
    let resolution = routing::resolve(&inputs);
    metrics
        .resolve_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.observe(&resolution);
    resolution
}

/// Waits for the fleet view to change; pending forever without a fleet.
async fn fleet_changed(f: &mut Option<watch::Receiver<Arc<FleetView>>>) -> bool {
    match f {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}
