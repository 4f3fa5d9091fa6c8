//! Writes statuses by server-side apply and emits Events on transitions.
//! Only objects whose desired status differs from what they carry are
//! written, so an unchanged world costs no API calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, stream};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, warn};

use super::Options;
use super::conditions::{Fleet, number_status, transitions, trunk_status};
use crate::crd::{PhoneNumber, SipTrunk};
use crate::fleet::view::FleetView;
use crate::metrics::Metrics;
use crate::routing::ObjectKey;
use crate::routing::index::Snapshot;
use kube::runtime::reflector::{self, ObjectRef};

/// Concurrent status writes; bounds the load on the API server.
const CONCURRENCY: usize = 32;

/// How one write went.
pub(super) enum Written {
    Ok,
    /// The API server asked us to slow down (429).
    Throttled,
    Failed,
}

/// What a round of number writes left to do.
#[derive(Default)]
pub(super) struct Round {
    /// Writes that failed, to retry.
    pub(super) failed: Vec<(ObjectKey, Instant)>,
    /// Numbers held back while nodes apply them.
    pub(super) held: Vec<(ObjectKey, Instant)>,
    /// Some write was throttled.
    pub(super) throttled: bool,
}

pub(super) struct Writer {
    client: Client,
    params: PatchParams,
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

fn key_of<K: Resource>(o: &K) -> ObjectKey {
    ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any())
}

impl Writer {
    pub(super) fn new(client: Client, opts: &Options, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: opts.manager.clone(),
            instance: Some(opts.instance.clone()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            params: PatchParams::apply(&opts.manager).force(),
            metrics,
        }
    }

    /// Writes every trunk status that changed; returns the number of failures.
    pub(super) async fn write_trunks(
        &self,
        r: &Snapshot,
        fleet: Option<&FleetView>,
        trunks: &[Arc<SipTrunk>],
    ) -> usize {
        let now = jiff::Timestamp::now();
        let mut jobs = Vec::new();
        for t in trunks {
            let key = key_of(t.as_ref());
            let Some(v) = r.trunks.get(&key) else {
                continue;
            };
            let f = match fleet {
                None => Fleet::Off,
                Some(f) => Fleet::On(f.trunks.get(&key.id())),
            };
            let want = trunk_status(v, f, now, t.status.as_ref());
            if t.status.as_ref() != Some(&want) {
                let old = t
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                let body = json!({
                    "apiVersion": "switchboard.dev/v1alpha1", "kind": "SipTrunk",
                    "status": want,
                });
                let new = want.conditions.clone();
                jobs.push(self.write::<SipTrunk>(t.clone(), body, old, new).boxed());
            }
        }
        stream::iter(jobs)
            .buffer_unordered(CONCURRENCY)
            .filter(|w| std::future::ready(!matches!(w, Written::Ok)))
            .count()
            .await
    }

    /// Writes the statuses of these numbers that differ from what they
    /// carry, computed from the state now (so a backlog is coalesced).
    /// A number Pending only because nodes have not applied it yet is held
    /// back until it has been dirty for `hold`.
    pub(super) async fn write_numbers(
        &self,
        r: &Snapshot,
        fleet: Option<&FleetView>,
        store: &reflector::Store<PhoneNumber>,
        keys: Vec<(ObjectKey, Instant)>,
        hold: Duration,
    ) -> Round {
        let now = jiff::Timestamp::now();
        let mut out = Round::default();
        let mut jobs = Vec::new();
        for (key, dirty_since) in keys {
            let Some(n) = store.get(&ObjectRef::new(&key.name).within(&key.namespace)) else {
                continue;
            };
            let Some(v) = r.numbers.get(&key) else {
                continue;
            };
            let programmed = fleet.map(|f| f.number(&key.id()));
            if let Some(Some(p)) = &programmed
                && !p.ok
                && p.reason == crate::fleet::view::reason::PENDING
                && v.usable()
                && dirty_since.elapsed() < hold
            {
                out.held.push((key, dirty_since));
                continue;
            }
            let f = match &programmed {
                None => Fleet::Off,
                Some(p) => Fleet::On(p.as_ref()),
            };
            let want = number_status(v, f, now, n.status.as_ref());
            if n.status.as_ref() != Some(&want) {
                let old = n
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                let body = json!({
                    "apiVersion": "switchboard.dev/v1alpha1", "kind": "PhoneNumber",
                    "status": want,
                });
                let new = want.conditions.clone();
                jobs.push(
                    self.write::<PhoneNumber>(n.clone(), body, old, new)
                        .map(move |w| (key, dirty_since, w))
                        .boxed(),
                );
            }
        }
        let results: Vec<_> = stream::iter(jobs)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (key, since, w) in results {
            match w {
                Written::Ok => {}
                Written::Throttled => {
                    out.throttled = true;
                    out.failed.push((key, since));
                }
                Written::Failed => out.failed.push((key, since)),
            }
        }
        out
    }

    async fn write<K>(
        &self,
        obj: Arc<K>,
        body: serde_json::Value,
        old: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
        new: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    ) -> Written
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let kind = K::kind(&()).to_string();
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        match api
            .patch_status(&name, &self.params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                self.metrics
                    .status_writes
                    .with_label_values(&[&kind, "ok"])
                    .inc();
                debug!(%kind, %ns, %name, "status written");
            }
            Err(e) => {
                let throttled = matches!(&e, kube::Error::Api(s) if s.code == 429);
                self.metrics
                    .status_writes
                    .with_label_values(&[
                        kind.as_str(),
                        if throttled { "throttled" } else { "error" },
                    ])
                    .inc();
                if throttled {
                    debug!(%kind, %ns, %name, "status write throttled (429); backing off");
                    return Written::Throttled;
                }
                warn!(%kind, %ns, %name, error = %e, "status write failed; will retry");
                return Written::Failed;
            }
        }
        let reference = obj.object_ref(&());
        for c in transitions(&old, &new) {
            let ev = Event {
                type_: if c.status == "True" {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: c.reason.clone(),
                note: Some(format!("{} is {}: {}", c.type_, c.status, c.message)),
                action: format!("Set{}", c.type_),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &reference).await {
                warn!(%kind, %ns, %name, error = %e, "event not recorded");
            }
        }
        Written::Ok
    }
}
