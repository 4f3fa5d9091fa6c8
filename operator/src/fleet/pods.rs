//! Media-node discovery from Pods (label selector, pod IP and control port),
//! and the pod-deletion-cost annotation that makes scale-in remove idle pods
//! first.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::Endpoints;
use super::view::FleetView;

/// Annotation on a media-node pod overriding the control port.
pub const CONTROL_PORT_ANNOTATION: &str = "switchboard.dev/control-port";
/// The annotation the ReplicaSet controller reads when scaling in.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// A pod's control address, if it runs and has an IP.
pub fn endpoint(pod: &Pod, default_port: u16) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    let port = pod
        .annotations()
        .get(CONTROL_PORT_ANNOTATION)
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(default_port);
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

/// Coarse buckets of active calls: pods in the same bucket are equally
/// cheap to delete, so the annotation changes rarely.
pub fn deletion_cost(active_calls: u32) -> i32 {
    match active_calls {
        0 => 0,
        1..=4 => 1,
        5..=19 => 2,
        20..=99 => 3,
        100..=499 => 4,
        _ => 5,
    }
}

/// Watches media-node pods and publishes their control endpoints.
pub async fn discover(
    client: Client,
    namespace: String,
    selector: String,
    default_port: u16,
    out: watch::Sender<Endpoints>,
) {
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let (store, writer) = reflector::store::<Pod>();
    let mut events = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .reflect(writer)
        .boxed();
    while let Some(ev) = events.next().await {
        if let Err(e) = ev {
            warn!(error = %e, "media-node pod watch error; retrying");
            continue;
        }
        let eps: Endpoints = store
            .state()
            .iter()
            .filter_map(|p| endpoint(p, default_port).map(|e| (p.name_any(), e)))
            .collect();
        out.send_if_modified(|old| {
            if *old == eps {
                false
            } else {
                *old = eps;
                true
            }
        });
    }
}

/// Keeps each media-node pod's deletion cost in step with its calls, while
/// this replica leads.
pub async fn maintain_deletion_cost(
    client: Client,
    namespace: String,
    mut view: watch::Receiver<Arc<FleetView>>,
    leader: watch::Receiver<bool>,
) {
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let mut written: BTreeMap<String, i32> = BTreeMap::new();
    let params = PatchParams::default();
    loop {
        if *leader.borrow() {
            let calls = view.borrow_and_update().node_calls.clone();
            written.retain(|k, _| calls.contains_key(k));
            for (pod, n) in calls {
                let cost = deletion_cost(n);
                if written.get(&pod) == Some(&cost) {
                    continue;
                }
                let patch = json!({"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost.to_string()}}});
                match api.patch(&pod, &params, &Patch::Merge(&patch)).await {
                    Ok(_) => {
                        debug!(%pod, cost, "pod-deletion-cost updated");
                        written.insert(pod, cost);
                    }
                    Err(e) => warn!(%pod, error = %e, "cannot update pod-deletion-cost"),
                }
            }
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, ip: Option<&str>, port: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "mn-1", "annotations": port.map(|p| json!({CONTROL_PORT_ANNOTATION: p})).unwrap_or(json!({}))},
            "status": {"phase": phase, "podIP": ip}
        }))
        .expect("pod")
    }

    #[test]
    fn endpoints_need_a_running_pod_with_an_ip() {
        assert_eq!(
            endpoint(&pod("Running", Some("10.1.2.3"), None), 9443).as_deref(),
            Some("10.1.2.3:9443")
        );
        assert_eq!(
            endpoint(&pod("Running", Some("127.0.0.1"), Some("7001")), 9443).as_deref(),
            Some("127.0.0.1:7001")
        );
        assert_eq!(
            endpoint(&pod("Running", Some("fd00::1"), None), 9443).as_deref(),
            Some("[fd00::1]:9443")
        );
        assert_eq!(
            endpoint(&pod("Pending", Some("10.1.2.3"), None), 9443),
            None
        );
        assert_eq!(endpoint(&pod("Running", None, None), 9443), None);
    }

    #[test]
    fn deletion_cost_buckets_are_coarse_and_monotonic() {
        let costs: Vec<i32> = [0, 1, 4, 5, 19, 20, 99, 100, 499, 500, 10_000]
            .map(deletion_cost)
            .to_vec();
        assert_eq!(costs, vec![0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
    }
}
