//! The operator programs a fleet of real media-node processes over gRPC,
//! discovered through Pod objects in a real API server; SIPp places the calls.

use std::path::PathBuf;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use switchboard_operator::crd::{PhoneNumber, SipTrunk};
use switchboard_proto::v1alpha1::{
    self as pb, apply_request::Change, apply_response::Result as Outcome,
};
use switchboard_tests::agent::TestAgent;
use switchboard_tests::envtest::TestCluster;
use switchboard_tests::fleet::{ControlledNode, register_pod, remove_pod};
use switchboard_tests::node::free_port;
use switchboard_tests::operator::Operator;
use switchboard_tests::poll::eventually;
use switchboard_tests::sipp::{Sipp, scenario};

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(40);
const NUMBER: &str = "+14155550100";

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

struct Fleet {
    agent: TestAgent,
    cluster: TestCluster,
    client: Client,
    nodes: Vec<ControlledNode>,
    operator: Option<Operator>,
}

impl Fleet {
    async fn start(nodes: usize, node_args: &[&str]) -> Fleet {
        let cluster = TestCluster::start().await.expect("cluster");
        cluster.install_crds(crds_dir()).await.expect("crds");
        let client = cluster.client().await.expect("client");
        let mut list = Vec::new();
        for i in 0..nodes {
            let n = ControlledNode::start(&format!("media-{i}"), node_args);
            register_pod(&client, NS, &n).await;
            list.push(n);
        }
        let agent = TestAgent::start().await.expect("test agent");
        let mut f = Fleet {
            agent,
            cluster,
            client,
            nodes: list,
            operator: None,
        };
        f.start_operator();
        f
    }

    fn start_operator(&mut self) {
        self.operator = Some(Operator::start_kube(
            self.cluster.kubeconfig_path(),
            "op",
            &["--no-leader-election", "--lease-duration-seconds", "4"],
        ));
    }

    fn api<K: kube::Resource<DynamicType = ()>>(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), NS, &ApiResource::erase::<K>(&()))
    }

    async fn apply(&self, doc: Value) {
        let kind = doc["kind"].as_str().expect("kind").to_string();
        let name = doc["metadata"]["name"].as_str().expect("name").to_string();
        let api = if kind == "SipTrunk" {
            self.api::<SipTrunk>()
        } else {
            self.api::<PhoneNumber>()
        };
        api.patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }

    /// Waits for a condition (status, reason) on the object's current generation.
    async fn condition<K: kube::Resource<DynamicType = ()>>(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> DynamicObject {
        let api = self.api::<K>();
        eventually(
            &format!("{name} {type_}={status}/{reason}"),
            WAIT,
            || async {
                let o = api.get(name).await.map_err(|e| e.to_string())?;
                let gen_ = o.metadata.generation.unwrap_or(0);
                let c = o.data["status"]["conditions"]
                    .as_array()
                    .and_then(|a| a.iter().find(|c| c["type"] == type_).cloned())
                    .unwrap_or(Value::Null);
                let ok = c["status"] == status
                    && c["reason"] == reason
                    && c["observedGeneration"] == gen_;
                if ok { Ok(o) } else { Err(c.to_string()) }
            },
        )
        .await
    }
}

fn trunk(name: &str, extra: Value) -> Value {
    let mut spec = json!({"inbound": {"allowedSources": ["127.0.0.0/8"]}, "healthCheck": {"optionsIntervalSeconds": 0}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SipTrunk", "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

impl Fleet {
    /// A PhoneNumber answered by the fleet's test agent.
    fn number(&self, name: &str, e164: &str, trunk: &str) -> Value {
        json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "PhoneNumber",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"number": e164, "trunkRef": {"name": trunk}, "agent": {"url": self.agent.url()}}
        })
    }
}

async fn call(node: &ControlledNode, to: &str) {
    Sipp::new(scenario("uac_call.xml"))
        .args(["-s", to])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp")
        .assert_success(&format!("call to {to} on {}", node.name));
}

async fn rejected(node: &ControlledNode, to: &str, code: &str) {
    Sipp::template("uac_rejected.xml", &[("@CODE@", code)])
        .expect("template")
        .args(["-s", to])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp")
        .assert_success(&format!("{code} for {to} on {}", node.name));
}

fn long_call(node: &ControlledNode, to: &str, hold_ms: u64) -> tokio::task::JoinHandle<()> {
    let sip = node.sip;
    let to = to.to_string();
    tokio::spawn(async move {
        Sipp::template("uac_long.xml", &[("@HOLD_MS@", &hold_ms.to_string())])
            .expect("template")
            .args(["-s", &to])
            .timeout(Duration::from_millis(hold_ms) + Duration::from_secs(20))
            .run_client(sip, free_port())
            .await
            .expect("sipp")
            .assert_success("long call");
    })
}

async fn active_calls(node: &ControlledNode) -> f64 {
    let (_, text) = switchboard_tests::node::http_request(node.http, "GET", "/metrics", None)
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("switchboard_sip_active_calls{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn wait_active(node: &ControlledNode, n: f64) {
    eventually(
        &format!("{} active calls on {}", n, node.name),
        WAIT,
        || async {
            let a = active_calls(node).await;
            if a == n { Ok(()) } else { Err(a.to_string()) }
        },
    )
    .await;
}

#[tokio::test]
async fn numbers_reach_every_node_and_deleting_one_keeps_calls_in_progress() {
    let f = Fleet::start(2, &[]).await;
    // Not ready until programmed.
    assert_eq!(f.nodes[0].readyz().await, Some(503));

    f.apply(trunk("carrier", json!({}))).await;
    f.apply(f.number("main", NUMBER, "carrier")).await;
    let pn = f
        .condition::<PhoneNumber>("main", "Programmed", "True", "Programmed")
        .await;
    // No node count in a number's message: a fleet that grows or restarts
    // rewrites no PhoneNumber status (the trunk carries the counts).
    assert!(
        pn.data["status"]["conditions"]
            .to_string()
            .contains("the media nodes run this generation"),
        "{}",
        pn.data["status"]
    );
    let t = f
        .condition::<SipTrunk>("carrier", "Programmed", "True", "Programmed")
        .await;
    assert_eq!(
        t.data["status"]["nodes"],
        json!({"programmed": 2, "total": 2})
    );
    assert!(
        t.data["status"]["ingress"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{}",
        t.data["status"]
    );
    for n in &f.nodes {
        assert_eq!(
            n.readyz().await,
            Some(200),
            "{} should be ready once programmed",
            n.name
        );
        call(n, NUMBER).await;
    }

    // A call in progress survives the number's deletion; new calls get 404.
    let before = f.nodes[0]
        .metric("switchboard_config_version")
        .await
        .unwrap_or(0.0);
    let held = long_call(&f.nodes[0], NUMBER, 4000);
    wait_active(&f.nodes[0], 1.0).await;
    eventually("trunk to count the active call", WAIT, || async {
        let t = f
            .api::<SipTrunk>()
            .get("carrier")
            .await
            .map_err(|e| e.to_string())?;
        if t.data["status"]["activeCalls"] == 1 {
            Ok(())
        } else {
            Err(t.data["status"]["activeCalls"].to_string())
        }
    })
    .await;
    // Scale-in takes idle pods first: the busy pod costs more to delete.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(f.client.clone(), NS);
    eventually("pod-deletion-cost to follow the calls", WAIT, || async {
        let cost = |p: &k8s_openapi::api::core::v1::Pod| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost").cloned())
                .unwrap_or_default()
        };
        let busy = pods.get("media-0").await.map_err(|e| e.to_string())?;
        let idle = pods.get("media-1").await.map_err(|e| e.to_string())?;
        if cost(&busy) == "1" && cost(&idle) == "0" {
            Ok(())
        } else {
            Err(format!("busy {:?}, idle {:?}", cost(&busy), cost(&idle)))
        }
    })
    .await;
    f.api::<PhoneNumber>()
        .delete("main", &DeleteParams::default())
        .await
        .expect("delete number");
    for n in &f.nodes {
        eventually("the deletion to reach the node", WAIT, || async {
            let v = n.metric("switchboard_config_version").await.unwrap_or(0.0);
            if v > before {
                Ok(())
            } else {
                Err(v.to_string())
            }
        })
        .await;
        rejected(n, NUMBER, "404").await;
    }
    held.await.expect("the call in progress completed normally");
}

#[tokio::test]
async fn restarted_node_is_reprogrammed_and_operator_outage_keeps_calls_flowing() {
    let mut f = Fleet::start(2, &[]).await;
    f.apply(trunk("carrier", json!({}))).await;
    f.apply(f.number("main", NUMBER, "carrier")).await;
    f.condition::<SipTrunk>("carrier", "Programmed", "True", "Programmed")
        .await;

    // A restarted node gets the full configuration again.
    f.nodes[1].restart();
    eventually("the restarted node to become ready", WAIT, || async {
        match f.nodes[1].readyz().await {
            Some(200) => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;
    call(&f.nodes[1], NUMBER).await;
    let t = f
        .condition::<SipTrunk>("carrier", "Programmed", "True", "Programmed")
        .await;
    assert_eq!(
        t.data["status"]["nodes"],
        json!({"programmed": 2, "total": 2})
    );

    // The operator goes away: nodes keep serving their last configuration.
    if let Some(mut op) = f.operator.take() {
        op.kill();
    }
    for n in &f.nodes {
        call(n, NUMBER).await;
    }
    // Changes made meanwhile are pushed when it returns.
    f.apply(f.number("second", "+14155550101", "carrier")).await;
    rejected(&f.nodes[0], "+14155550101", "404").await;
    f.start_operator();
    f.condition::<PhoneNumber>("second", "Programmed", "True", "Programmed")
        .await;
    for n in &f.nodes {
        call(n, "+14155550101").await;
    }
}

#[tokio::test]
async fn a_refused_configuration_shows_the_nodes_reason() {
    let f = Fleet::start(2, &[]).await;
    f.apply(trunk("carrier", json!({}))).await;
    f.apply(f.number("main", NUMBER, "carrier")).await;
    f.condition::<PhoneNumber>("main", "Programmed", "True", "Programmed")
        .await;
    // A CA bundle Secret that holds no certificate: the operator passes it on (it does not
    // parse PEM), the nodes refuse the trunk and say why.
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(f.client.clone(), NS)
        .patch(
            "bad-ca",
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad-ca"},
                "stringData": {"ca.crt": "not a certificate"}
            })),
        )
        .await
        .expect("secret");
    f.apply(trunk(
        "tls",
        json!({"outbound": {
            "gateways": [{"host": "127.0.0.1", "port": 5061, "transport": "tls"}],
            "tls": {"caSecretRef": {"name": "bad-ca"}}
        }}),
    ))
    .await;
    let t = f
        .condition::<SipTrunk>("tls", "Programmed", "False", "NodeRefused")
        .await;
    let msg = t.data["status"]["conditions"].to_string();
    assert!(
        msg.contains("outbound.tls") && msg.contains("media-"),
        "{msg}"
    );
    assert!(
        !msg.contains("not a certificate"),
        "no Secret content in status: {msg}"
    );
    // The nodes keep running their last good configuration.
    call(&f.nodes[0], NUMBER).await;
}

#[tokio::test]
async fn channel_limit_splits_across_nodes_and_moves_when_a_node_goes() {
    let mut f = Fleet::start(2, &[]).await;
    f.apply(trunk(
        "carrier",
        json!({"limits": {"maxConcurrentCalls": 4}}),
    ))
    .await;
    f.apply(f.number("main", NUMBER, "carrier")).await;
    f.condition::<PhoneNumber>("main", "Programmed", "True", "Programmed")
        .await;
    // Shares settle at 2 + 2 once both nodes report in.
    for n in &f.nodes {
        eventually(&format!("{} to accept calls", n.name), WAIT, || async {
            match n.readyz().await {
                Some(200) => Ok(()),
                s => Err(format!("{s:?}")),
            }
        })
        .await;
    }
    let mut held = Vec::new();
    for n in &f.nodes {
        for _ in 0..2 {
            held.push(long_call(n, NUMBER, 8000));
        }
    }
    for n in &f.nodes {
        wait_active(n, 2.0).await;
    }
    // A fifth call anywhere is refused with 486.
    for n in &f.nodes {
        rejected(n, NUMBER, "486").await;
    }

    // Node 1 goes away (its calls die with it): node 0 gets the whole budget.
    f.nodes[1].kill();
    remove_pod(&f.client, NS, "media-1").await;
    eventually("node 0 to accept a third concurrent call", WAIT, || async {
        let r = Sipp::new(scenario("uac_call.xml"))
            .args(["-s", NUMBER])
            .timeout(Duration::from_secs(10))
            .run_client(f.nodes[0].sip, free_port())
            .await
            .map_err(|e| e.to_string())?;
        if r.code == Some(0) {
            Ok(())
        } else {
            Err(format!("sipp exit {:?}", r.code))
        }
    })
    .await;
    // Exactly the whole budget: two more calls fit, a fifth is refused.
    let mut more = vec![
        long_call(&f.nodes[0], NUMBER, 6000),
        long_call(&f.nodes[0], NUMBER, 6000),
    ];
    wait_active(&f.nodes[0], 4.0).await;
    rejected(&f.nodes[0], NUMBER, "486").await;
    for h in more.drain(..) {
        h.await.expect("calls on the remaining node complete");
    }
    held.truncate(2);
    for h in held {
        let _ = h.await;
    }
}

/// A TLS gateway whose certificate does not verify is down for the trunk, and its
/// `Degraded` condition and `status.gateways` say why: one gateway's certificate names
/// another host, the other's expired.
#[tokio::test]
async fn a_tls_gateway_with_a_bad_certificate_shows_the_reason_in_degraded() {
    use switchboard_tests::tls::{TestCa, handshake_only_listener};
    let ca = TestCa::new();
    let (wrong_name, _a) = handshake_only_listener(&ca.issue(&["carrier.example"])).await;
    let (expired, _b) = handshake_only_listener(&ca.issue_expired(&["127.0.0.1"])).await;
    let f = Fleet::start(1, &[]).await;
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(f.client.clone(), NS)
        .patch(
            "carrier-ca",
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "carrier-ca"},
                "stringData": {"ca.crt": ca.pem()}
            })),
        )
        .await
        .expect("secret");
    f.apply(trunk(
        "secure",
        json!({
            "outbound": {
                "gateways": [
                    {"host": "127.0.0.1", "port": wrong_name.port(), "transport": "tls"},
                    {"host": "127.0.0.1", "port": expired.port(), "transport": "tls", "priority": 20}
                ],
                "tls": {"caSecretRef": {"name": "carrier-ca"}}
            },
            "healthCheck": {"optionsIntervalSeconds": 1}
        }),
    ))
    .await;
    let wrong = format!("127.0.0.1:{}", wrong_name.port());
    let old = format!("127.0.0.1:{}", expired.port());
    eventually("both gateways down with a reason", WAIT, || async {
        let o = f
            .api::<SipTrunk>()
            .get("secure")
            .await
            .map_err(|e| e.to_string())?;
        let gateways = o.data["status"]["gateways"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let reasons = gateways
            .iter()
            .filter(|g| g["healthy"] == false && g["error"].is_string())
            .count();
        if reasons == 2 {
            Ok(())
        } else {
            Err(o.data["status"].to_string())
        }
    })
    .await;
    let t = f
        .condition::<SipTrunk>("secure", "Degraded", "True", "GatewayUnhealthy")
        .await
        .data["status"]
        .clone();
    let degraded = t["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == "Degraded"))
        .map(|c| c["message"].as_str().unwrap_or_default().to_lowercase())
        .unwrap_or_default();
    let at = |gw: &str| {
        let start = degraded
            .find(gw)
            .unwrap_or_else(|| panic!("{gw} in {degraded}"));
        degraded[start..]
            .split(", 127.")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        at(&wrong).contains("certificate") && at(&wrong).contains("name"),
        "{degraded}"
    );
    assert!(at(&old).contains("expired"), "{degraded}");
    for g in t["gateways"].as_array().expect("gateways") {
        assert_eq!(g["transport"], "tls", "{g}");
        assert_eq!(g["healthy"], false, "{g}");
    }
}

#[tokio::test]
async fn registration_moves_when_its_node_stops() {
    let registrar_port = free_port();
    let registrar = Sipp::new(scenario("uas_registrar.xml"))
        .timeout(Duration::from_secs(90))
        .spawn_server(registrar_port, 100);
    let f = Fleet::start(2, &[]).await;
    let client = f.client.clone();
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS)
        .patch(
            "reg-creds",
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "reg-creds"},
                "type": "kubernetes.io/basic-auth", "stringData": {"username": "alice", "password": "s3cret"}
            })),
        )
        .await
        .expect("secret");
    f.apply(trunk(
        "reg",
        json!({"outbound": {
            "gateways": [{"host": "127.0.0.1", "port": registrar_port}],
            "auth": {"secretRef": {"name": "reg-creds"}},
            "register": {"enabled": true, "expiresSeconds": 60}
        }}),
    ))
    .await;
    let t = f
        .condition::<SipTrunk>("reg", "Registered", "True", "Registered")
        .await;
    let msg = t.data["status"]["conditions"].to_string();
    let owner = if msg.contains("media-0") { 0 } else { 1 };
    let mut f = f;
    f.nodes[owner].kill();
    remove_pod(&client, NS, &format!("media-{owner}")).await;
    let other = format!("media-{}", 1 - owner);
    eventually("the registration to move", WAIT, || async {
        let t = f
            .api::<SipTrunk>()
            .get("reg")
            .await
            .map_err(|e| e.to_string())?;
        let c = t.data["status"]["conditions"].to_string();
        if c.contains(&format!("registered by media node {other}")) {
            Ok(())
        } else {
            Err(c)
        }
    })
    .await;
    registrar.abort();
}

/// The status a fresh `WatchStatus` stream opens with.
async fn node_status(
    client: &mut pb::node_control_client::NodeControlClient<tonic::transport::Channel>,
) -> pb::NodeStatus {
    client
        .watch_status(pb::WatchStatusRequest {})
        .await
        .expect("watch status")
        .into_inner()
        .message()
        .await
        .expect("status message")
        .expect("status stream open")
}

/// Leadership-term fencing on a real node, driven by a raw control client
/// (no operator): a deposed leader's snapshot or delta changes nothing and is
/// not a refusal; the next leader's delta applies in place.
#[tokio::test]
async fn a_deposed_leaders_configuration_changes_nothing_on_the_node() {
    const OTHER: &str = "+14155550199";
    let agent = TestAgent::start().await.expect("test agent");
    let node = ControlledNode::start("media-fenced", &[]);
    let url = format!("http://{}", node.control);
    let mut client = eventually("the control port", WAIT, || {
        let url = url.clone();
        async move {
            pb::node_control_client::NodeControlClient::connect(url)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let trunk = pb::Trunk {
        id: "default/carrier".into(),
        enabled: true,
        inbound: Some(pb::Inbound {
            enabled: true,
            allowed_sources: vec!["127.0.0.0/8".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let number = |name: &str, e164: &str| pb::PhoneNumber {
        id: format!("default/{name}"),
        e164: e164.into(),
        trunk_id: trunk.id.clone(),
        inbound: true,
        agent: Some(pb::Agent {
            url: agent.url(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let snapshot = |version: u64, numbers: Vec<pb::PhoneNumber>| {
        Change::Snapshot(pb::RoutingConfig {
            version,
            trunks: vec![trunk.clone()],
            numbers,
        })
    };
    let remove_main = |base: u64, upsert: Vec<pb::PhoneNumber>| {
        Change::Delta(pb::ConfigDelta {
            base_version: base,
            version: base + 1,
            remove_numbers: vec!["default/main".into()],
            upsert_numbers: upsert,
            ..Default::default()
        })
    };
    let control = client.clone();
    let apply = async |change: Change, term: u64| {
        control
            .clone()
            .apply(pb::ApplyRequest {
                change: Some(change),
                term,
            })
            .await
            .expect("apply")
            .into_inner()
    };

    let r = apply(snapshot(1, vec![number("main", NUMBER)]), 4).await;
    assert_eq!(
        (r.result(), r.applied_version, r.term),
        (Outcome::Applied, 1, 4)
    );
    call(&node, NUMBER).await;

    // The leader of term 3, and an operator without leader election.
    for (change, term) in [
        (snapshot(2, vec![]), 3),
        (remove_main(1, vec![]), 3),
        (remove_main(1, vec![]), 0),
    ] {
        let r = apply(change, term).await;
        assert_eq!(
            (r.result(), r.applied_version, r.term),
            (Outcome::StaleTerm, 1, 4)
        );
        assert!(
            r.reason.contains(&format!("term {term}")) && r.reason.contains("no longer the leader"),
            "{}",
            r.reason
        );
    }
    call(&node, NUMBER).await;
    assert_eq!(
        node.metric("switchboard_config_stale_term_total").await,
        Some(3.0)
    );
    assert_eq!(
        node.metric("switchboard_config_refused_total").await,
        Some(0.0)
    );
    let s = node_status(&mut client).await;
    assert_eq!(
        (
            s.config_version,
            s.config_term,
            s.refused_version,
            s.refused_reason.as_str()
        ),
        (1, 4, 0, "")
    );

    // A new leader's delta on the same base.
    let r = apply(remove_main(1, vec![number("other", OTHER)]), 5).await;
    assert_eq!(
        (r.result(), r.applied_version, r.term),
        (Outcome::Applied, 2, 5)
    );
    rejected(&node, NUMBER, "404").await;
    call(&node, OTHER).await;
    assert_eq!(node.metric("switchboard_config_numbers").await, Some(1.0));
    assert_eq!(node.metric("switchboard_config_version").await, Some(2.0));
    assert_eq!(node_status(&mut client).await.config_term, 5);
}
