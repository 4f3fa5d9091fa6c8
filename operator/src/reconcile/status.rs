//! Writes statuses by server-side apply and emits Events on transitions.
//! Only objects whose desired status differs from what they carry are
//! written, so an unchanged world costs no API calls.

use std::sync::Arc;

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
use crate::routing::{ObjectKey, Resolution};

/// Concurrent status writes; bounds the load on the API server.
const CONCURRENCY: usize = 16;

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

    /// Writes every status that changed; returns the number of failures.
    pub(super) async fn write_all(
        &self,
        r: &Resolution,
        fleet: Option<&FleetView>,
        trunks: &[Arc<SipTrunk>],
        numbers: &[Arc<PhoneNumber>],
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
        for n in numbers {
            let key = key_of(n.as_ref());
            let Some(v) = r.numbers.get(&key) else {
                continue;
            };
            let programmed = fleet.map(|f| f.number(&key.id()));
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
                jobs.push(self.write::<PhoneNumber>(n.clone(), body, old, new).boxed());
            }
        }
        stream::iter(jobs)
            .buffer_unordered(CONCURRENCY)
            .filter(|ok| std::future::ready(!ok))
            .count()
            .await
    }

    async fn write<K>(
        &self,
        obj: Arc<K>,
        body: serde_json::Value,
        old: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
        new: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    ) -> bool
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
                self.metrics
                    .status_writes
                    .with_label_values(&[&kind, "error"])
                    .inc();
                warn!(%kind, %ns, %name, error = %e, "status write failed; will retry");
                return false;
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
        true
    }
}
