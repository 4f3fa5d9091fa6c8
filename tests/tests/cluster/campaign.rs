//! CallCampaign end to end: a real API server, the operator, two real media
//! nodes and a SIPp carrier that answers, is busy or never answers by the
//! callee's last digit. The campaign's counters, results ConfigMap and
//! webhooks are checked against what SIPp saw, across a leader fail-over
//! and a suspend/resume in the middle of the campaign.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use switchboard_operator::crd::{CallCampaign, PhoneNumber, SipTrunk};
use switchboard_proto::v1alpha1::{self as pb, call_service_client::CallServiceClient};
use switchboard_tests::agent::TestAgent;
use switchboard_tests::envtest::TestCluster;
use switchboard_tests::fleet::{ControlledNode, register_pod, remove_pod};
use switchboard_tests::node::free_port;
use switchboard_tests::operator::Operator;
use switchboard_tests::poll::eventually;
use switchboard_tests::sipp::Sipp;
use switchboard_tests::webhook::WebhookReceiver;

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(60);
const CALLER: &str = "+15550001111";
const CALLEES: usize = 300;

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

/// The carrier scenario with its hold time filled in, in a temp dir.
fn carrier(dir: &tempfile::TempDir, hold_ms: u64) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cluster/campaign_support/carrier.xml");
    let text = std::fs::read_to_string(&src)
        .expect("carrier scenario")
        .replace("@HOLD_MS@", &hold_ms.to_string());
    let path = dir.path().join("carrier.xml");
    std::fs::write(&path, text).expect("write scenario");
    path
}

fn callee(i: usize) -> String {
    format!("+1415555{i:04}")
}

struct Env {
    cluster: TestCluster,
    client: Client,
    nodes: Vec<ControlledNode>,
    _agent: TestAgent,
    /// Two replicas with leader election, by identity.
    operators: Vec<(String, Operator)>,
}

impl Env {
    async fn start(gateway_port: u16) -> Env {
        let cluster = TestCluster::start().await.expect("cluster");
        cluster.install_crds(crds_dir()).await.expect("crds");
        let client = cluster.client().await.expect("client");
        let mut nodes = Vec::new();
        for i in 0..2 {
            let n = ControlledNode::start(&format!("media-{i}"), &[]);
            register_pod(&client, NS, &n).await;
            nodes.push(n);
        }
        let agent = TestAgent::start().await.expect("agent");
        let mut env = Env {
            cluster,
            client,
            nodes,
            _agent: agent,
            operators: Vec::new(),
        };
        env.start_operator("op-1");
        env.start_operator("op-2");
        env.apply::<SipTrunk>(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SipTrunk",
            "metadata": {"name": "carrier", "namespace": NS},
            "spec": {
                "inbound": {"allowedSources": ["127.0.0.0/8"]},
                "healthCheck": {"optionsIntervalSeconds": 0},
                "outbound": {"gateways": [{"host": "127.0.0.1", "port": gateway_port, "transport": "udp"}]},
                "limits": {"maxConcurrentCalls": 100, "maxCallsPerSecond": 50}
            }
        }))
        .await;
        let agent_url = env._agent.url();
        env.apply::<PhoneNumber>(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "PhoneNumber",
            "metadata": {"name": "caller", "namespace": NS},
            "spec": {"number": CALLER, "trunkRef": {"name": "carrier"}, "agent": {"url": agent_url}}
        }))
        .await;
        env
    }

    fn start_operator(&mut self, identity: &str) {
        let op = Operator::start_kube(
            self.cluster.kubeconfig_path(),
            identity,
            &["--lease-duration-seconds", "4"],
        );
        self.operators.push((identity.to_owned(), op));
    }

    /// Kills the replica holding the Lease (SIGKILL: no hand-over); the other
    /// takes over once the Lease expires.
    async fn kill_leader(&mut self) -> String {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NS);
        let holder = eventually("a lease holder", WAIT, || async {
            let l = leases
                .get("switchboard-operator")
                .await
                .map_err(|e| e.to_string())?;
            l.spec
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty())
                .ok_or_else(|| "no holder".to_owned())
        })
        .await;
        let before = self.operators.len();
        self.operators.retain(|(id, _)| *id != holder);
        assert_eq!(
            self.operators.len() + 1,
            before,
            "leader {holder} is not ours"
        );
        holder
    }

    fn api<K: kube::Resource<DynamicType = ()>>(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), NS, &ApiResource::erase::<K>(&()))
    }

    async fn apply<K: kube::Resource<DynamicType = ()>>(&self, doc: Value) {
        let name = doc["metadata"]["name"].as_str().expect("name").to_string();
        self.api::<K>()
            .patch(
                &name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&doc),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }

    async fn status(&self, name: &str) -> Value {
        self.api::<CallCampaign>()
            .get(name)
            .await
            .map(|o| o.data["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Waits until the campaign's status satisfies `ok`.
    async fn wait_status(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        eventually(&format!("campaign {name}: {what}"), WAIT, || async {
            let s = self.status(name).await;
            if ok(&s) { Ok(s) } else { Err(s.to_string()) }
        })
        .await
    }

    async fn condition(&self, name: &str, type_: &str) -> Value {
        let s = self.status(name).await;
        s["conditions"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or(Value::Null)
    }
}

/// The campaign calls a node knows (live and recently completed), through the
/// call service on its control port (which may not listen yet).
async fn try_node_calls(node: &ControlledNode) -> Result<Vec<pb::Call>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", node.control))
        .map_err(|e| e.to_string())?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("{}: {e}", node.name))?;
    let r = CallServiceClient::new(channel)
        .list(pb::ListCallsRequest {
            client_ref_prefix: "camp/".into(),
        })
        .await
        .map_err(|e| format!("{}: {e}", node.name))?;
    Ok(r.into_inner().calls)
}

/// [`try_node_calls`] of a node that is known to listen.
async fn node_calls(node: &ControlledNode) -> Vec<pb::Call> {
    try_node_calls(node).await.expect("the node's call list")
}

fn campaign(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "CallCampaign",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// The 300-callee campaign, suspended or not.
fn spring(hooks: &WebhookReceiver, suspend: bool) -> Value {
    campaign(
        "spring",
        json!({
            "from": ["caller"],
            "callees": {"configMaps": [{"name": "spring-callees"}]},
            "pacing": {"maxConcurrentCalls": 40, "callsPerSecond": 20},
            "retry": {"on": ["busy"], "maxAttempts": 2, "backoffSeconds": 1},
            "ringingTimeoutSeconds": 2,
            "webhook": format!("http://{}/campaign", hooks.addr),
            "suspend": suspend,
        }),
    )
}

fn count(s: &Value, field: &str) -> u64 {
    s[field].as_u64().unwrap_or(0)
}

/// Distinct INVITEs (by Call-ID) SIPp received, per callee number.
fn invites_per_callee(messages: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for block in messages.split("received").skip(1) {
        let mut lines = block.lines().map(str::trim).filter(|l| !l.is_empty());
        // The line after the banner is the start line.
        let Some(start) = lines.find(|l| {
            l.starts_with("INVITE ") || l.starts_with("SIP/2.0") || l.contains(" SIP/2.0")
        }) else {
            continue;
        };
        let Some(uri) = start.strip_prefix("INVITE sip:") else {
            continue;
        };
        let user = uri.split('@').next().unwrap_or("").to_string();
        let call_id = block
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("Call-ID:"))
            .unwrap_or("")
            .trim()
            .to_string();
        let user = if user.starts_with('+') {
            user
        } else {
            format!("+{user}")
        };
        out.entry(user).or_default().insert(call_id);
    }
    out
}

#[tokio::test]
async fn a_campaign_dials_every_callee_once_per_attempt_across_a_fail_over_and_a_suspend() {
    let gw = free_port();
    let dir = tempfile::tempdir().expect("dir");
    // 240 answered, 30 busy twice (retried once), 30 unanswered.
    let expected_calls = CALLEES as u32 + 30;
    let sipp = Sipp::new(carrier(&dir, 500))
        .timeout(Duration::from_secs(150))
        .spawn_server(gw, expected_calls);
    let mut env = Env::start(gw).await;
    let hooks = WebhookReceiver::start(0).await;

    // Specs that cannot run are refused or explained.
    let refused = env
        .api::<CallCampaign>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(campaign(
                "empty",
                json!({"from": ["caller"], "callees": {}}),
            ))
            .expect("object"),
        )
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("callees")),
        "{refused:?}"
    );
    env.apply::<CallCampaign>(campaign(
        "nobody",
        json!({"from": ["missing"], "callees": {"inline": [{"to": "+14155550000"}]}}),
    ))
    .await;
    env.apply::<CallCampaign>(campaign(
        "too-fast",
        json!({"from": ["caller"], "callees": {"inline": [{"to": "+14155550000"}]},
               "pacing": {"maxConcurrentCalls": 500}}),
    ))
    .await;
    env.apply::<CallCampaign>(campaign(
        "mars",
        json!({"from": ["caller"], "callees": {"inline": [{"to": "+14155550000"}]},
               "schedule": {"timeZone": "Mars/Olympus_Mons"}}),
    ))
    .await;
    // A window that opens tomorrow (UTC): the campaign waits for it.
    let tomorrow = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .tomorrow()
        .expect("tomorrow")
        .weekday();
    let day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        [tomorrow.to_monday_zero_offset() as usize];
    env.apply::<CallCampaign>(campaign(
        "tomorrow",
        json!({"from": ["caller"], "callees": {"inline": [{"to": "+14155550000"}]},
               "schedule": {"windows": [{"days": [day], "from": "00:00", "to": "24:00"}]}}),
    ))
    .await;
    for (name, reason) in [
        ("nobody", "UnknownNumber"),
        ("too-fast", "PacingAboveTrunkLimit"),
        ("mars", "InvalidSchedule"),
    ] {
        eventually(&format!("{name}: Ready=False/{reason}"), WAIT, || async {
            let c = env.condition(name, "Ready").await;
            if c["status"] == "False" && c["reason"] == reason {
                Ok(())
            } else {
                Err(c.to_string())
            }
        })
        .await;
    }
    let c = env.condition("too-fast", "Ready").await;
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("maxConcurrentCalls 100")),
        "{c}"
    );
    let s = env
        .wait_status("tomorrow", "waiting for its window", |s| {
            s["phase"] == "WaitingForWindow"
        })
        .await;
    assert_eq!(count(&s, "attempts"), 0, "{s}");

    // The callees in a ConfigMap (CSV with a parameter column).
    let mut csv = String::from("to,id,tier\n");
    for i in 0..CALLEES {
        csv.push_str(&format!(
            "{},lead-{i},{}\n",
            callee(i),
            if i % 2 == 0 { "gold" } else { "silver" }
        ));
    }
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), NS);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "spring-callees"},
            "data": {"callees.csv": csv}
        }))
        .expect("configmap"),
    )
    .await
    .expect("create configmap");
    env.apply::<CallCampaign>(spring(&hooks, false)).await;

    // Part-way: the leading operator is killed; the standby takes over.
    env.wait_status("spring", "a third done", |s| count(s, "done") >= 100)
        .await;
    let killed = env.kill_leader().await;
    let done_then = count(&env.status("spring").await, "done");
    env.wait_status("spring", "progress after the fail-over", |s| {
        count(s, "done") >= done_then + 30
    })
    .await;
    assert!(!killed.is_empty());

    // A drained node finishes its calls and gets no new ones.
    let (code, _) =
        switchboard_tests::node::http_request(env.nodes[1].http, "POST", "/drain", None)
            .await
            .expect("drain");
    assert!(code < 300, "drain answered {code}");
    let drained_at = jiff::Timestamp::now().as_millisecond();
    let on_drained = node_calls(&env.nodes[1]).await.len();
    assert!(
        on_drained > 0,
        "media-1 had no campaign calls before its drain"
    );
    env.wait_status("spring", "progress after the drain", |s| {
        count(s, "done") >= 190
    })
    .await;

    // Suspended: new dials stop within a second, calls in progress finish.
    let before = count(&env.status("spring").await, "attempts");
    env.apply::<CallCampaign>(spring(&hooks, true)).await;
    let s = env
        .wait_status("spring", "suspended with nothing in progress", |s| {
            s["phase"] == "Suspended" && count(s, "inProgress") == 0
        })
        .await;
    let attempts = count(&s, "attempts");
    // The status read before the change may be a second old: at 20 calls
    // per second, two seconds of dials at most.
    assert!(
        attempts <= before + 40,
        "{before} attempts before, {attempts} after: {s}"
    );
    assert!(count(&s, "done") < CALLEES as u64, "{s}");
    // Nothing happens while suspended: an absence can only be watched for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = env.status("spring").await;
    assert_eq!(count(&later, "attempts"), attempts, "{later}");

    // Resumed: it finishes.
    env.apply::<CallCampaign>(spring(&hooks, false)).await;
    let s = env
        .wait_status("spring", "completed", |s| s["phase"] == "Completed")
        .await;
    assert_eq!(count(&s, "total"), CALLEES as u64, "{s}");
    assert_eq!(count(&s, "done"), CALLEES as u64, "{s}");
    assert_eq!(count(&s, "answered"), 240, "{s}");
    assert_eq!(count(&s, "busy"), 30, "{s}");
    assert_eq!(count(&s, "noAnswer"), 30, "{s}");
    assert_eq!(count(&s, "failed"), 0, "{s}");
    assert_eq!(count(&s, "attempts"), 330, "{s}");
    assert!(s["completionTime"].is_string(), "{s}");

    // Nothing was placed on the drained node after its drain; the other
    // node took the rest.
    let late: Vec<_> = node_calls(&env.nodes[1])
        .await
        .into_iter()
        .filter(|c| c.created_at_ms as i64 > drained_at)
        .map(|c| c.client_ref)
        .collect();
    assert!(late.is_empty(), "placed on the drained node: {late:?}");
    let on_other = node_calls(&env.nodes[0]).await;
    assert!(
        on_other.iter().any(|c| c.created_at_ms as i64 > drained_at),
        "nothing placed after the drain"
    );

    // What the carrier saw: every callee once, busy ones twice, never more.
    let run = sipp.await.expect("sipp task").expect("sipp");
    let seen = invites_per_callee(&run.messages);
    assert_eq!(
        seen.len(),
        CALLEES,
        "callees dialled: {:?}",
        seen.keys().take(5).collect::<Vec<_>>()
    );
    for i in 0..CALLEES {
        let want = if i % 10 == 8 { 2 } else { 1 };
        let got = seen.get(&callee(i)).map(BTreeSet::len).unwrap_or(0);
        assert_eq!(got, want, "INVITEs for {}", callee(i));
    }
    run.assert_success("campaign carrier");

    // The results ConfigMap agrees, line by line.
    let results = cms.get("spring-results-0000").await.expect("results");
    let text = results
        .data
        .as_ref()
        .and_then(|d| d.get("results.csv"))
        .cloned()
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(lines.len(), CALLEES, "{text}");
    for l in &lines {
        let f: Vec<&str> = l.split(',').collect();
        let i: usize = f[0].parse().expect("index");
        let (state, attempts) = match i % 10 {
            8 => ("busy", "2"),
            9 => ("no-answer", "1"),
            _ => ("answered", "1"),
        };
        assert_eq!((f[1], f[2]), (state, attempts), "{l}");
        assert_eq!(f[8], callee(i), "{l}");
        assert_eq!(f[9], format!("lead-{i}"), "{l}");
    }

    // One webhook per callee with its final outcome.
    let events = eventually("a webhook per callee", WAIT, || async {
        let e = hooks.events();
        if e.len() >= CALLEES {
            Ok(e)
        } else {
            Err(e.len().to_string())
        }
    })
    .await;
    let mut by_index = BTreeMap::new();
    for e in &events {
        let o = &e["outcome"];
        assert_eq!(e["event"], "campaign.callee", "{e}");
        by_index.insert(o["index"].as_u64().expect("index"), o["outcome"].clone());
    }
    assert_eq!(by_index.len(), CALLEES);
    assert_eq!(by_index.values().filter(|v| *v == "busy").count(), 30);
    assert_eq!(by_index.values().filter(|v| *v == "answered").count(), 240);
}

#[tokio::test]
async fn calls_lost_with_their_node_are_retried_on_another() {
    const N: usize = 12;
    let gw = free_port();
    let dir = tempfile::tempdir().expect("dir");
    // Long calls, so some are up on the node that dies. The carrier's BYEs to
    // the dead node fail: SIPp's own verdict is not checked.
    let _sipp = Sipp::new(carrier(&dir, 6000))
        .timeout(Duration::from_secs(90))
        .spawn_server(gw, 100);
    let mut env = Env::start(gw).await;
    let inline: Vec<Value> = (0..N)
        // Last digits 0-7 only: every callee answers.
        .map(|i| json!({"to": callee(i / 8 * 10 + i % 8)}))
        .collect();
    env.apply::<CallCampaign>(campaign(
        "lost",
        json!({
            "from": ["caller"],
            "callees": {"inline": inline},
            "pacing": {"maxConcurrentCalls": N, "callsPerSecond": 50},
            "retry": {"on": ["failed"], "maxAttempts": 2, "backoffSeconds": 0},
        }),
    ))
    .await;
    // Both nodes carry calls, then media-1 dies and its Pod goes away.
    eventually("calls up on both nodes", WAIT, || async {
        let (a, b) = (
            try_node_calls(&env.nodes[0]).await?,
            try_node_calls(&env.nodes[1]).await?,
        );
        let up = |v: &[pb::Call]| {
            v.iter()
                .filter(|c| c.state() == pb::CallState::Answered)
                .count()
        };
        if up(&a) > 0 && up(&b) > 0 && up(&a) + up(&b) == N {
            Ok(())
        } else {
            Err(format!("{} + {}", up(&a), up(&b)))
        }
    })
    .await;
    let lost: BTreeSet<String> = node_calls(&env.nodes[1])
        .await
        .into_iter()
        .map(|c| c.client_ref)
        .collect();
    env.nodes[1].kill();
    remove_pod(&env.client, NS, "media-1").await;

    let s = env
        .wait_status("lost", "completed", |s| s["phase"] == "Completed")
        .await;
    assert_eq!(count(&s, "answered"), N as u64, "{s}");
    assert_eq!(count(&s, "failed"), 0, "{s}");
    // Each call lost with the node was tried once more, on the live node.
    assert_eq!(
        count(&s, "attempts"),
        (N + lost.len()) as u64,
        "{s} lost {lost:?}"
    );
    let retried: BTreeSet<String> = node_calls(&env.nodes[0])
        .await
        .into_iter()
        .filter_map(|c| c.client_ref.strip_suffix("/2").map(str::to_owned))
        .collect();
    let lost_callees: BTreeSet<String> = lost
        .iter()
        .filter_map(|r| r.strip_suffix("/1").map(str::to_owned))
        .collect();
    assert_eq!(retried, lost_callees);
}
