//! Every manifest the chart renders, for the default values, every example
//! values file and the optional features, is accepted by a real
//! kube-apiserver in a server-side dry run: Kubernetes itself validates the
//! Deployments, HPA, PDBs, RBAC, Services and NetworkPolicies.
//!
//! ServiceMonitor and ScaledObject are CRD kinds: minimal stand-ins for their
//! CRDs (tests/fixtures/crds/) are installed first, so those documents are
//! checked for kind and structure only, not against the real operators'
//! schemas.

use serde_json::{Value, json};
use switchboard_tests::envtest::TestCluster;
use switchboard_tests::helm::{self, Render, describe, find};

const NS: &str = "switchboard";

async fn cluster() -> (TestCluster, kube::Client) {
    let c = TestCluster::start().await.expect("start test cluster");
    // The chart's own copies: they must install.
    c.install_crds(helm::chart_dir().join("crds"))
        .await
        .expect("install the chart's CRDs");
    c.install_crds(helm::repo_root().join("tests/fixtures/crds"))
        .await
        .expect("install the ServiceMonitor/ScaledObject stand-ins");
    let client = c.client().await.expect("admin client");
    let namespaces: Vec<Value> = [NS, "telephony"]
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
        .collect();
    let errors = helm::apply(&client, &namespaces, false).await;
    assert!(errors.is_empty(), "{errors:?}");
    (c, client)
}

#[tokio::test]
async fn every_rendered_manifest_passes_a_server_side_dry_run() {
    let (_c, client) = cluster().await;
    let mut renders: Vec<(String, Render)> = vec![("defaults".into(), Render::new("sb", NS))];
    for file in helm::example_values() {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        renders.push((name, Render::new("sb", NS).values(&file)));
    }
    let features = [
        (
            "no pod-deletion-cost, own control Secrets",
            vec![
                "operator.podDeletionCost.enabled=false",
                "controlTLS.existingSecret=my-control-tls",
                "controlToken.existingSecret=my-control-token",
            ],
        ),
        (
            "one watched namespace",
            vec!["operator.watchNamespace=telephony"],
        ),
        (
            "network policy, host network",
            vec![
                "networkPolicy.enabled=true",
                "networkPolicy.sipSources[0]=192.0.2.0/24",
            ],
        ),
        (
            "no autoscaling, no TLS, single operator",
            vec![
                "autoscaling.enabled=false",
                "controlTLS.enabled=false",
                "operator.replicas=1",
                "operator.leaderElection.enabled=false",
                "mediaNode.preStop.enabled=false",
            ],
        ),
        (
            "active calls and service monitor",
            vec![
                "autoscaling.activeCalls.enabled=true",
                "metrics.serviceMonitor.enabled=true",
            ],
        ),
    ];
    for (name, sets) in features {
        let mut r = Render::new("sb", NS);
        for s in sets {
            r = r.set(s);
        }
        renders.push((name.into(), r));
    }

    let mut kinds = std::collections::BTreeSet::new();
    for (name, r) in &renders {
        let docs = r.documents();
        let errors = helm::apply(&client, &docs, true).await;
        assert!(
            errors.is_empty(),
            "{name}: the API server refused:\n{}",
            errors.join("\n")
        );
        kinds.extend(
            docs.iter()
                .map(|d| d["kind"].as_str().unwrap_or("").to_string()),
        );
    }
    for kind in [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "Service",
        "Secret",
        "NetworkPolicy",
        "ServiceMonitor",
        "ScaledObject",
    ] {
        assert!(
            kinds.contains(kind),
            "no render produced a {kind}: {kinds:?}"
        );
    }
}

/// The dry run is a real check: the same documents with one broken field
/// each are refused, naming the field.
#[tokio::test]
async fn the_dry_run_refuses_broken_manifests() {
    let (_c, client) = cluster().await;
    let docs = Render::new("sb", NS)
        .set("autoscaling.activeCalls.enabled=true")
        .documents();
    let deployment = find(&docs, "Deployment", "sb-switchboard-media-node").clone();
    let hpa = find(
        &docs,
        "HorizontalPodAutoscaler",
        "sb-switchboard-media-node",
    )
    .clone();
    let pdb = find(&docs, "PodDisruptionBudget", "sb-switchboard-operator").clone();
    let role = find(&docs, "Role", "sb-switchboard-operator").clone();

    let mut broken: Vec<(Value, &str)> = Vec::new();
    let mut d = deployment.clone();
    d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(70000);
    broken.push((d, "containerPort"));
    let mut d = deployment.clone();
    // hostNetwork: a host port must equal the container port.
    d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(1234);
    broken.push((d, "hostPort"));
    let mut d = deployment;
    d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = json!("other");
    broken.push((d, "selector"));
    let mut h = hpa.clone();
    h["spec"]["behavior"]["scaleUp"]["policies"][0]["value"] = json!(0);
    broken.push((h, "value"));
    let mut h = hpa;
    h["spec"]["maxReplicas"] = json!(1);
    broken.push((h, "maxReplicas"));
    let mut p = pdb;
    p["spec"]["maxUnavailable"] = json!(1);
    broken.push((p, "maxUnavailable"));
    let mut r = role;
    r["rules"][0]["verbs"] = json!([]);
    broken.push((r, "verbs"));

    for (doc, field) in broken {
        let errors = helm::apply(&client, std::slice::from_ref(&doc), true).await;
        assert_eq!(
            errors.len(),
            1,
            "{} with a broken {field} was accepted",
            describe(&doc)
        );
        assert!(errors[0].contains(field), "{}", errors[0]);
    }
}

/// examples/carriers/: every SipTrunk and PhoneNumber passes the CRDs'
/// validation; the credentials appear only as a `kubectl create secret`
/// command in a comment, never as an object.
#[tokio::test]
async fn carrier_examples_are_valid_and_carry_no_credentials() {
    let (_c, client) = cluster().await;
    let dir = helm::repo_root().join("examples/carriers");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/carriers")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected Twilio, Telnyx, Plivo and a REGISTER carrier"
    );
    let mut registering = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let name = file.display().to_string();
        let docs = helm::documents(&text);
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert!(
            kinds.contains(&"SipTrunk") && kinds.contains(&"PhoneNumber"),
            "{name}: {kinds:?}"
        );
        assert!(!kinds.contains(&"Secret"), "{name}: holds a Secret object");
        for d in docs.iter().filter(|d| d["kind"] == "SipTrunk") {
            let secret = d["spec"]["outbound"]["auth"]["secretRef"]["name"]
                .as_str()
                .expect("outbound.auth.secretRef");
            assert!(
                text.contains(&format!("kubectl create secret generic {secret}"))
                    && text.contains("--type=kubernetes.io/basic-auth"),
                "{name}: no kubectl command for Secret {secret}"
            );
            if d["spec"]["outbound"]["register"]["enabled"] == true {
                registering += 1;
            }
        }
        let errors = helm::apply(&client, &docs, true).await;
        assert!(errors.is_empty(), "{name}: refused:\n{}", errors.join("\n"));
    }
    assert!(registering >= 1, "no example keeps a registration");
}
