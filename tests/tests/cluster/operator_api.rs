//! The SipTrunk/PhoneNumber API against a real kube-apiserver and etcd, and
//! the real operator binary reconciling it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource};
use serde_json::{Value, json};
use switchboard_operator::crd::{PhoneNumber, SipTrunk};
use switchboard_tests::envtest::TestCluster;
use switchboard_tests::operator::Operator;
use switchboard_tests::poll::eventually;

const NS: &str = "default";
const PASSWORD: &str = "pw-Zq81-never-show";
const TOKEN: &str = "agent-token-Xk27-never-show";
const WAIT: Duration = Duration::from_secs(30);

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

async fn cluster() -> (TestCluster, Client) {
    let c = TestCluster::start().await.expect("start test cluster");
    c.install_crds(crds_dir()).await.expect("install crds/");
    let client = c.client().await.expect("admin client");
    (c, client)
}

fn dynamic<K: Resource<DynamicType = ()>>(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<K>(&()))
}

async fn apply(client: &Client, doc: Value) {
    let kind = doc["kind"].as_str().expect("kind").to_string();
    let name = doc["metadata"]["name"].as_str().expect("name").to_string();
    let api: Api<DynamicObject> = match kind.as_str() {
        "SipTrunk" => dynamic::<SipTrunk>(client),
        "PhoneNumber" => dynamic::<PhoneNumber>(client),
        "Secret" => Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<Secret>(&())),
        k => panic!("unexpected kind {k}"),
    };
    api.patch(
        &name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&doc),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

fn trunk(name: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "SipTrunk",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "inbound": {"allowedSources": ["203.0.113.0/24"]},
            "outbound": {"gateways": [{"host": "sip.example.net"}], "auth": {"secretRef": {"name": secret}}}
        }
    })
}

fn number(name: &str, e164: &str, trunk: &str) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "PhoneNumber",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "number": e164, "trunkRef": {"name": trunk},
            "agent": {"url": "wss://agent.example.com/ws", "auth": {"secretRef": {"name": "agent-token"}}}
        }
    })
}

fn basic_auth_secret(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
        "type": "kubernetes.io/basic-auth",
        "stringData": {"username": "carrier-user", "password": PASSWORD}
    })
}

fn token_secret() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "agent-token", "namespace": NS},
        "stringData": {"token": TOKEN}
    })
}

/// `(status, reason, lastTransitionTime)` of a condition, if present.
fn condition(obj: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["lastTransitionTime"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
}

/// Waits until the object's condition has the status and reason, with the
/// status describing the object's current generation.
async fn wait_condition(
    api: &Api<DynamicObject>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> DynamicObject {
    eventually(
        &format!("{name} {type_}={status} ({reason})"),
        WAIT,
        || async {
            let o = api.get(name).await.map_err(|e| e.to_string())?;
            let generation = o.metadata.generation.unwrap_or(0);
            let observed = o.data["status"]["observedGeneration"]
                .as_i64()
                .unwrap_or(-1);
            match condition(&o, type_) {
                Some((s, r, _)) if s == status && r == reason && observed == generation => Ok(o),
                other => Err(format!(
                    "{other:?}, observedGeneration {observed} of {generation}"
                )),
            }
        },
    )
    .await
}

#[tokio::test]
async fn crds_install_and_bad_specs_are_refused_naming_the_field() {
    let (_c, client) = cluster().await;
    let trunks = dynamic::<SipTrunk>(&client);
    let numbers = dynamic::<PhoneNumber>(&client);
    let pp = PostParams::default();

    let bad_trunks: Vec<(&str, Value, &str)> = vec![
        ("no sources", json!({"inbound": {}}), "allowedSources"),
        (
            "bad cidr",
            json!({"inbound": {"allowedSources": ["10.0.0.0/99"]}}),
            "allowedSources",
        ),
        (
            "no gateways",
            json!({"outbound": {"gateways": []}}),
            "gateways",
        ),
        (
            "port",
            json!({"outbound": {"gateways": [{"host": "a.example", "port": 70000}]}}),
            "port",
        ),
        (
            "priority",
            json!({"outbound": {"gateways": [{"host": "a.example", "priority": -1}]}}),
            "priority",
        ),
        (
            "17 gateways",
            json!({"outbound": {"gateways": vec![json!({"host": "a.example"}); 17]}}),
            "gateways",
        ),
        (
            "transport",
            json!({"outbound": {"gateways": [{"host": "a.example", "transport": "sctp"}]}}),
            "transport",
        ),
        (
            "dup codecs",
            json!({"media": {"codecs": ["PCMU", "PCMU"]}}),
            "codecs",
        ),
        ("empty codecs", json!({"media": {"codecs": []}}), "codecs"),
        (
            "codec enum",
            json!({"media": {"codecs": ["G729"]}}),
            "codecs",
        ),
        (
            "failover",
            json!({"outbound": {"gateways": [{"host": "a.example"}], "failoverOn": ["sometimes"]}}),
            "failoverOn",
        ),
        (
            "transfer anywhere",
            json!({"transfer": {"mode": "refer"}}),
            "allowedTargets",
        ),
        (
            "transfer target",
            json!({"transfer": {"mode": "refer", "allowedTargets": ["sip:x@y"]}}),
            "allowedTargets",
        ),
    ];
    for (what, spec, field) in bad_trunks {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SipTrunk",
            "metadata": {"name": "bad"}, "spec": spec
        }))
        .expect("object");
        let err = trunks.create(&pp, &obj).await.expect_err(what).to_string();
        assert!(
            err.contains(field),
            "{what}: error does not name {field}: {err}"
        );
    }

    let bad_numbers: Vec<(&str, Value, &str)> = vec![
        (
            "not e164",
            json!({"number": "4155550100", "trunkRef": {"name": "t"}}),
            "spec.number",
        ),
        (
            "leading zero",
            json!({"number": "+0155550100", "trunkRef": {"name": "t"}}),
            "spec.number",
        ),
        ("no trunk", json!({"number": "+14155550100"}), "trunkRef"),
        (
            "agent url",
            json!({"number": "+14155550100", "trunkRef": {"name": "t"}, "agent": {"url": "http://x"}}),
            "agent.url",
        ),
        (
            "self fallback",
            json!({"number": "+14155550100", "trunkRef": {"name": "t"}, "fallbackTrunks": ["t"]}),
            "fallbackTrunks",
        ),
    ];
    for (what, spec, field) in bad_numbers {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "PhoneNumber",
            "metadata": {"name": "bad"}, "spec": spec
        }))
        .expect("object");
        let err = numbers.create(&pp, &obj).await.expect_err(what).to_string();
        assert!(
            err.contains(field),
            "{what}: error does not name {field}: {err}"
        );
    }

    // A valid pair is admitted, with schema defaults applied by the server.
    apply(&client, trunk("good", "creds")).await;
    let t = trunks.get("good").await.expect("trunk");
    // No port default in the schema: the operator uses 5060, or 5061 for tls.
    assert!(t.data["spec"]["outbound"]["gateways"][0]["port"].is_null());
    assert_eq!(t.data["spec"]["media"]["codecs"], json!(["PCMU", "PCMA"]));
    assert_eq!(
        t.data["spec"]["outbound"]["failoverOn"],
        json!(["timeout", "408", "478", "5xx"])
    );
    apply(&client, number("good", "+14155550100", "good")).await;

    // The number is immutable.
    let err = numbers
        .patch(
            "good",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&number("good", "+14155550199", "good")),
        )
        .await
        .expect_err("number change");
    assert!(err.to_string().contains("immutable"), "{err}");
}

#[tokio::test]
async fn operator_resolves_references_reports_and_recovers_without_leaking_secrets() {
    let (c, client) = cluster().await;
    let mut op = Operator::start_kube(
        c.kubeconfig_path(),
        "op-a",
        &["--lease-duration-seconds", "4"],
    );
    let trunks = dynamic::<SipTrunk>(&client);
    let numbers = dynamic::<PhoneNumber>(&client);

    // A number whose trunk does not exist yet.
    apply(&client, token_secret()).await;
    apply(&client, number("main", "+14155550100", "carrier")).await;
    wait_condition(&numbers, "main", "ResolvedRefs", "False", "TrunkNotFound").await;
    wait_condition(&numbers, "main", "Accepted", "True", "Accepted").await;

    // The trunk appears, naming a Secret that does not exist.
    apply(&client, trunk("carrier", "carrier-creds")).await;
    let t = wait_condition(
        &trunks,
        "carrier",
        "ResolvedRefs",
        "False",
        "SecretNotFound",
    )
    .await;
    let msg = t.data["status"]["conditions"].to_string();
    assert!(msg.contains("carrier-creds"), "{msg}");
    wait_condition(&numbers, "main", "ResolvedRefs", "False", "TrunkNotReady").await;

    // A malformed Secret is named as such.
    apply(&client, json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "carrier-creds", "namespace": NS},
        "type": "kubernetes.io/basic-auth", "stringData": {"password": PASSWORD}
    }))
    .await;
    wait_condition(&trunks, "carrier", "ResolvedRefs", "False", "InvalidSecret").await;

    // Fixing the Secret recovers both, without a restart.
    Api::<Secret>::namespaced(client.clone(), NS)
        .delete("carrier-creds", &DeleteParams::default())
        .await
        .expect("delete secret");
    apply(&client, basic_auth_secret("carrier-creds")).await;
    let t = wait_condition(&trunks, "carrier", "ResolvedRefs", "True", "ResolvedRefs").await;
    wait_condition(&trunks, "carrier", "Accepted", "True", "Accepted").await;
    let n = wait_condition(&numbers, "main", "ResolvedRefs", "True", "ResolvedRefs").await;
    wait_condition(&numbers, "main", "Accepted", "True", "Accepted").await;
    eventually("trunk counts one number", WAIT, || async {
        let t = trunks.get("carrier").await.map_err(|e| e.to_string())?;
        if t.data["status"]["numbers"] == 1 {
            Ok(())
        } else {
            Err(t.data["status"].to_string())
        }
    })
    .await;
    assert!(op.running(), "operator exited:\n{}", op.log());

    // observedGeneration follows a spec change; lastTransitionTime does not
    // move when the status stays the same.
    let accepted_before = condition(&t, "Accepted").expect("Accepted").2;
    let mut changed = trunk("carrier", "carrier-creds");
    changed["spec"]["outbound"]["ringingTimeoutSeconds"] = json!(30);
    apply(&client, changed).await;
    let t2 = wait_condition(&trunks, "carrier", "Accepted", "True", "Accepted").await;
    assert_eq!(t2.metadata.generation, Some(2));
    assert_eq!(t2.data["status"]["observedGeneration"], 2);
    assert_eq!(
        condition(&t2, "Accepted").expect("Accepted").2,
        accepted_before
    );
    assert_eq!(condition(&n, "Accepted").map(|c| c.0), Some("True".into()));

    // Events were recorded for the transitions.
    let events: Vec<Event> = Api::<Event>::namespaced(client.clone(), NS)
        .list(&Default::default())
        .await
        .expect("events")
        .items;
    let reasons: Vec<_> = events.iter().filter_map(|e| e.reason.clone()).collect();
    for r in [
        "SecretNotFound",
        "InvalidSecret",
        "ResolvedRefs",
        "TrunkNotFound",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }

    // No credential value anywhere a user or a log collector can see.
    let statuses = format!(
        "{} {}",
        serde_json::to_string(&trunks.list(&Default::default()).await.expect("trunks"))
            .expect("json"),
        serde_json::to_string(&numbers.list(&Default::default()).await.expect("numbers"))
            .expect("json")
    );
    let events = serde_json::to_string(&events).expect("json");
    let log = op.log();
    assert!(
        log.contains("status written"),
        "debug log not captured:\n{log}"
    );
    for secret in [PASSWORD, TOKEN] {
        assert!(!statuses.contains(secret), "secret in status");
        assert!(!events.contains(secret), "secret in events");
        assert!(!log.contains(secret), "secret in the operator log");
    }
    let (code, metrics) = op.get("/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    for secret in [PASSWORD, TOKEN] {
        assert!(!metrics.contains(secret), "secret in metrics");
    }
    assert_eq!(op.get("/readyz").await.expect("readyz").0, 200);
    assert_eq!(op.get("/healthz").await.expect("healthz").0, 200);
}

#[tokio::test]
async fn duplicate_numbers_the_older_wins_every_time() {
    let (c, client) = cluster().await;
    let numbers = dynamic::<PhoneNumber>(&client);
    apply(&client, token_secret()).await;
    apply(&client, basic_auth_secret("creds")).await;
    apply(&client, trunk("carrier", "creds")).await;

    // "zz-old" is created first; "aa-new" sorts first by name but is newer.
    apply(&client, number("zz-old", "+14155550100", "carrier")).await;
    let created = numbers
        .get("zz-old")
        .await
        .expect("zz-old")
        .metadata
        .creation_timestamp
        .expect("created")
        .0;
    // creationTimestamp has one-second resolution: make the second object
    // visibly newer.
    eventually(
        "the clock to pass the first object's second",
        WAIT,
        || async {
            let now = jiff::Timestamp::now();
            if now.as_second() > created.as_second() {
                Ok(())
            } else {
                Err(format!("{now}"))
            }
        },
    )
    .await;
    apply(&client, number("aa-new", "+14155550100", "carrier")).await;

    for round in 0..2 {
        let mut op = Operator::start_kube(
            c.kubeconfig_path(),
            &format!("op-{round}"),
            &["--no-leader-election"],
        );
        wait_condition(&numbers, "zz-old", "Accepted", "True", "Accepted").await;
        let loser = wait_condition(&numbers, "aa-new", "Accepted", "False", "Conflict").await;
        assert!(
            loser.data["status"]["conditions"]
                .to_string()
                .contains("zz-old")
        );
        op.kill();
    }
}

async fn writes(op: &Operator) -> f64 {
    op.metric(r#"switchboard_operator_status_writes_total{kind="PhoneNumber",result="ok"}"#)
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn only_the_leader_writes_and_a_killed_leader_hands_over_within_the_lease() {
    let (c, client) = cluster().await;
    let lease_secs = 4;
    let arg = lease_secs.to_string();
    let mut a = Operator::start_kube(
        c.kubeconfig_path(),
        "op-a",
        &["--lease-duration-seconds", &arg],
    );
    let mut b = Operator::start_kube(
        c.kubeconfig_path(),
        "op-b",
        &["--lease-duration-seconds", &arg],
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let holder = || async {
        let l = leases
            .get("switchboard-operator")
            .await
            .map_err(|e| e.to_string())?;
        l.spec
            .and_then(|s| s.holder_identity)
            .ok_or_else(|| "no holder".to_string())
    };
    let first = eventually("a lease holder", WAIT, holder).await;
    let (leader, follower) = if first == "op-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    eventually("leader metrics", WAIT, || async {
        let l = leader.metric("switchboard_operator_leader").await?;
        let f = follower.metric("switchboard_operator_leader").await?;
        if l == 1.0 && f == 0.0 {
            Ok(())
        } else {
            Err(format!("leader={l} follower={f}"))
        }
    })
    .await;

    apply(&client, token_secret()).await;
    apply(&client, basic_auth_secret("creds")).await;
    apply(&client, trunk("carrier", "creds")).await;
    apply(&client, number("main", "+14155550100", "carrier")).await;
    let numbers = dynamic::<PhoneNumber>(&client);
    wait_condition(&numbers, "main", "ResolvedRefs", "True", "ResolvedRefs").await;
    assert!(writes(leader).await >= 1.0);
    assert_eq!(writes(follower).await, 0.0, "the follower wrote status");
    // The follower resolved the same objects (its caches are warm); its watch may see the
    // number a moment after the leader's status write, so this is awaited, not sampled.
    eventually("the follower to resolve the number", WAIT, || async {
        let v = follower
            .metric(r#"switchboard_operator_objects{kind="PhoneNumber",state="usable"}"#)
            .await;
        if v == Ok(1.0) {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await;

    leader.kill();
    let killed = Instant::now();
    let new_holder = eventually("a new lease holder", WAIT, || async {
        let h = holder().await?;
        if h != first { Ok(h) } else { Err(h) }
    })
    .await;
    let took = killed.elapsed();
    assert_ne!(new_holder, first);
    assert!(
        took <= Duration::from_secs(lease_secs) + Duration::from_millis(500),
        "handover took {took:?}, lease is {lease_secs}s"
    );
    eventually("new leader metric", WAIT, || async {
        let v = follower.metric("switchboard_operator_leader").await?;
        if v == 1.0 { Ok(()) } else { Err(v.to_string()) }
    })
    .await;

    // The new leader reconciles changes.
    apply(&client, number("second", "+14155550101", "carrier")).await;
    wait_condition(&numbers, "second", "ResolvedRefs", "True", "ResolvedRefs").await;
    assert!(writes(follower).await >= 1.0);
}
