//! Configuration at scale against a real kube-apiserver and real media-node
//! processes: an operator restart with 10,000 numbers in place, a
//! deleted winning PhoneNumber handing its number over, and a forced
//! leader hand-over, each watched on the nodes' own gauges.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use switchboard_operator::crd::{PhoneNumber, SipTrunk};
use switchboard_tests::envtest::TestCluster;
use switchboard_tests::fleet::{ControlledNode, register_pod};
use switchboard_tests::operator::Operator;
use switchboard_tests::poll::eventually;

const NS: &str = "default";

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

async fn cluster() -> (TestCluster, Client) {
    let c = TestCluster::start().await.expect("cluster");
    c.install_crds(crds_dir()).await.expect("crds");
    let client = c.client().await.expect("client");
    (c, client)
}

fn api<K: kube::Resource<DynamicType = ()>>(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<K>(&()))
}

async fn apply<K: kube::Resource<DynamicType = ()>>(client: &Client, doc: &Value) {
    let name = doc["metadata"]["name"].as_str().expect("name").to_string();
    let mut last = String::new();
    // The API server may throttle a burst; retry a few times.
    for _ in 0..5 {
        match api::<K>(client)
            .patch(
                &name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(doc),
            )
            .await
        {
            Ok(_) => return,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("apply {name}: {last}");
}

fn trunk(name: &str) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "SipTrunk",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"inbound": {"allowedSources": ["127.0.0.0/8"]}, "healthCheck": {"optionsIntervalSeconds": 0}}
    })
}

fn number(name: &str, e164: &str, trunk: &str) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "PhoneNumber",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"number": e164, "trunkRef": {"name": trunk}, "agent": {"url": "wss://agent.example.com/ws"}}
    })
}

async fn numbers_on(node: &ControlledNode) -> Option<f64> {
    node.metric("switchboard_config_numbers").await
}

async fn version_on(node: &ControlledNode) -> Option<f64> {
    node.metric("switchboard_config_version").await
}

async fn start_nodes(client: &Client, n: usize) -> Vec<ControlledNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = ControlledNode::start(&format!("media-{i}"), &[]);
        register_pod(client, NS, &node).await;
        nodes.push(node);
    }
    nodes
}

async fn wait_numbers(nodes: &[ControlledNode], want: f64, within: Duration) {
    for n in nodes {
        eventually(&format!("{want} numbers on {}", n.name), within, || async {
            match numbers_on(n).await {
                Some(v) if v == want => Ok(()),
                v => Err(format!("{v:?}")),
            }
        })
        .await;
    }
}

/// 10,000 numbers, then the operator is killed and a new one starts:
/// the nodes keep every number throughout (a new operator must not push an
/// empty or partial configuration while its caches fill), and the new
/// operator does take over (it pushes a newer version).
#[tokio::test]
async fn an_operator_restart_with_ten_thousand_numbers_never_blanks_or_flaps_a_node() {
    const COUNT: usize = 10_000;
    let (cluster, client) = cluster().await;
    let nodes = start_nodes(&client, 2).await;
    apply::<SipTrunk>(&client, &trunk("carrier")).await;
    let docs: Vec<Value> = (0..COUNT)
        .map(|i| number(&format!("n{i:05}"), &format!("+1415{i:07}"), "carrier"))
        .collect();
    stream::iter(docs.iter())
        .for_each_concurrent(32, |d| {
            let client = client.clone();
            async move { apply::<PhoneNumber>(&client, d).await }
        })
        .await;
    let mut op = Operator::start_kube(cluster.kubeconfig_path(), "op-1", &["--no-leader-election"]);
    wait_numbers(&nodes, COUNT as f64, Duration::from_secs(240)).await;
    let before: Vec<f64> = {
        let mut v = Vec::new();
        for n in &nodes {
            v.push(version_on(n).await.expect("version"));
        }
        v
    };

    op.kill();
    let _op2 = Operator::start_kube(cluster.kubeconfig_path(), "op-2", &["--no-leader-election"]);
    // Sample the nodes until the new operator has pushed to both, and a
    // little longer.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut samples = 0usize;
    let mut taken_over_at: Option<Instant> = None;
    loop {
        let mut all_newer = true;
        for (n, old) in nodes.iter().zip(&before) {
            let count = numbers_on(n).await;
            assert_eq!(
                count,
                Some(COUNT as f64),
                "{} lost numbers during the operator restart (sample {samples})",
                n.name
            );
            if version_on(n).await.is_none_or(|v| v <= *old) {
                all_newer = false;
            }
        }
        samples += 1;
        if all_newer && taken_over_at.is_none() {
            taken_over_at = Some(Instant::now());
        }
        if taken_over_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new operator never programmed both nodes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(samples > 10, "too few samples ({samples}) to mean anything");
}

/// The older of two PhoneNumbers claiming one number is deleted: the
/// next-oldest claimant takes it over in the same change, so the nodes never
/// run without the number.
#[tokio::test]
async fn a_deleted_winner_hands_its_number_to_the_next_oldest_claimant_without_a_gap() {
    let (cluster, client) = cluster().await;
    let nodes = start_nodes(&client, 2).await;
    apply::<SipTrunk>(&client, &trunk("carrier")).await;
    // Creation timestamps have one-second resolution: space the claims.
    for name in ["first", "second", "third"] {
        apply::<PhoneNumber>(&client, &number(name, "+14155550100", "carrier")).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let _op = Operator::start_kube(cluster.kubeconfig_path(), "op", &["--no-leader-election"]);
    wait_numbers(&nodes, 1.0, Duration::from_secs(40)).await;
    let numbers = api::<PhoneNumber>(&client);
    let accepted = |name: &'static str, want: &'static str| {
        let numbers = numbers.clone();
        async move {
            eventually(
                &format!("{name} Accepted={want}"),
                Duration::from_secs(30),
                || async {
                    let o = numbers.get(name).await.map_err(|e| e.to_string())?;
                    let c = o.data["status"]["conditions"]
                        .as_array()
                        .and_then(|a| a.iter().find(|c| c["type"] == "Accepted").cloned())
                        .unwrap_or(Value::Null);
                    if c["status"] == want {
                        Ok(c)
                    } else {
                        Err(c.to_string())
                    }
                },
            )
            .await
        }
    };
    accepted("first", "True").await;
    let lost = accepted("third", "False").await;
    assert!(
        lost["message"]
            .as_str()
            .unwrap_or("")
            .contains("default/first"),
        "{lost}"
    );

    let versions: Vec<f64> = {
        let mut v = Vec::new();
        for n in &nodes {
            v.push(version_on(n).await.expect("version"));
        }
        v
    };
    numbers
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete the winner");
    // Until both nodes run a newer version, and after: always one number.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut newer = true;
        for (n, old) in nodes.iter().zip(&versions) {
            assert_eq!(
                numbers_on(n).await,
                Some(1.0),
                "{} ran without the number during the hand-over",
                n.name
            );
            newer &= version_on(n).await.is_some_and(|v| v > *old);
        }
        if newer {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hand-over never reached the nodes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    accepted("second", "True").await;
    let still = accepted("third", "False").await;
    assert!(
        still["message"]
            .as_str()
            .unwrap_or("")
            .contains("default/second"),
        "{still}"
    );
}

/// Two operators, and the Lease is handed to the second by force while the
/// first still believes it leads: the nodes' configuration term only ever
/// grows, ends at the new leader's, and the new leader's changes arrive.
#[tokio::test]
async fn a_forced_lease_handover_never_leaves_a_node_on_an_older_term() {
    let (cluster, client) = cluster().await;
    let nodes = start_nodes(&client, 2).await;
    apply::<SipTrunk>(&client, &trunk("carrier")).await;
    apply::<PhoneNumber>(&client, &number("a", "+14155550101", "carrier")).await;
    let lease_args = ["--lease-duration-seconds", "6"];
    let a = Operator::start_kube(cluster.kubeconfig_path(), "op-a", &lease_args);
    wait_numbers(&nodes, 1.0, Duration::from_secs(40)).await;
    let b = Operator::start_kube(cluster.kubeconfig_path(), "op-b", &lease_args);
    let term_of = |n: &ControlledNode| {
        let http = n.http;
        async move {
            let (_, text) = switchboard_tests::node::http_request(http, "GET", "/metrics", None)
                .await
                .unwrap_or_default();
            text.lines()
                .find(|l| l.starts_with("switchboard_config_term "))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        }
    };
    let first_term = term_of(&nodes[0]).await.expect("term metric");
    assert!(first_term >= 1.0, "{first_term}");

    // Hand the Lease to op-b behind op-a's back.
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let mut lease = leases.get("switchboard-operator").await.expect("lease");
    let spec = lease.spec.as_mut().expect("spec");
    spec.holder_identity = Some("op-b".into());
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        jiff::Timestamp::now(),
    ));
    leases
        .replace("switchboard-operator", &Default::default(), &lease)
        .await
        .expect("force the hand-over");
    // A change while both may believe they lead.
    apply::<PhoneNumber>(&client, &number("b", "+14155550102", "carrier")).await;

    // Sample the nodes' term: never lower than before, until both run
    // op-b's term with both numbers.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = vec![first_term; nodes.len()];
    loop {
        let mut done = true;
        for (i, n) in nodes.iter().enumerate() {
            let t = term_of(n).await.unwrap_or(0.0);
            assert!(
                t >= last[i],
                "{} went back from term {} to {t}",
                n.name,
                last[i]
            );
            last[i] = t;
            done &= t > first_term && numbers_on(n).await == Some(2.0);
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never ran the new leader's configuration (terms {last:?})\nop-a:\n{}\nop-b:\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And it stays so while op-a notices it lost.
    for _ in 0..50 {
        for (i, n) in nodes.iter().enumerate() {
            let t = term_of(n).await.unwrap_or(0.0);
            assert!(t >= last[i], "{} went back to term {t}", n.name);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}
