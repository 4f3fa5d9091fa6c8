//! The chart's RBAC is enough and no more: the real operator runs under the
//! chart's ServiceAccount (a signed token, bound only by the chart's
//! Role/ClusterRole), with the arguments the chart renders, through the same
//! scenario as operator_api.rs; and that identity is refused everything the
//! operator does not use.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource};
use serde_json::{Value, json};
use switchboard_operator::crd::{PhoneNumber, SipTrunk};
use switchboard_tests::envtest::{TestCluster, User};
use switchboard_tests::helm::{self, Render, find};
use switchboard_tests::operator::Operator;
use switchboard_tests::poll::eventually;

/// Where the chart is installed (the Lease lives here).
const RELEASE_NS: &str = "switchboard";
/// Where the trunks and numbers live.
const APP_NS: &str = "telephony";
const PASSWORD: &str = "pw-Rb4c-never-show";
const WAIT: Duration = Duration::from_secs(30);

struct Installed {
    cluster: TestCluster,
    admin: Client,
    /// The chart's operator ServiceAccount name.
    account: String,
    /// The operator container's rendered arguments.
    args: Vec<String>,
    /// A client authenticated as that ServiceAccount.
    operator: Client,
    kubeconfig: PathBuf,
    /// Everything the chart rendered.
    docs: Vec<Value>,
}

fn is_operator_rbac(d: &Value) -> bool {
    matches!(
        d["kind"].as_str(),
        Some("ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding")
    ) && d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
}

/// Starts a cluster, installs the chart's CRDs, applies the chart's operator
/// ServiceAccount and RBAC for `render`, and authenticates as it.
async fn install(release: &str, render: Render) -> Installed {
    let cluster = TestCluster::start().await.expect("start test cluster");
    cluster
        .install_crds(helm::chart_dir().join("crds"))
        .await
        .expect("install the chart's CRDs");
    let admin = cluster.client().await.expect("admin client");
    let namespaces: Vec<Value> = [RELEASE_NS, APP_NS, "elsewhere"]
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
        .collect();
    assert_eq!(
        helm::apply(&admin, &namespaces, false).await,
        Vec::<String>::new()
    );

    let docs = render.documents();
    let rbac: Vec<Value> = docs
        .iter()
        .filter(|d| is_operator_rbac(d))
        .cloned()
        .collect();
    assert!(rbac.len() >= 5, "operator RBAC not rendered: {rbac:?}");
    let errors = helm::apply(&admin, &rbac, false).await;
    assert!(errors.is_empty(), "applying the chart's RBAC: {errors:?}");

    let deployment = find(
        &docs,
        "Deployment",
        &format!("{release}-switchboard-operator"),
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let account = pod["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName")
        .to_string();
    let args = pod["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg").to_string())
        .collect();
    let token = cluster
        .service_account_token(RELEASE_NS, &account)
        .await
        .expect("ServiceAccount token");
    let user = User::new(format!("system:serviceaccount:{RELEASE_NS}:{account}")).with_token(token);
    let kubeconfig = cluster.write_kubeconfig_for(&user).expect("kubeconfig");
    let operator = cluster
        .client_for(user.token())
        .await
        .expect("ServiceAccount client");
    Installed {
        cluster,
        admin,
        account,
        args,
        operator,
        kubeconfig,
        docs,
    }
}

fn dynamic<K: Resource<DynamicType = ()>>(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<K>(&()))
}

async fn apply(client: &Client, doc: Value) {
    let errors = helm::apply(client, std::slice::from_ref(&doc), false).await;
    assert!(errors.is_empty(), "{errors:?}");
}

fn trunk(secret: &str) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "SipTrunk",
        "metadata": {"name": "carrier", "namespace": APP_NS},
        "spec": {
            "inbound": {"allowedSources": ["203.0.113.0/24"]},
            "outbound": {"gateways": [{"host": "sip.example.net"}], "auth": {"secretRef": {"name": secret}}}
        }
    })
}

fn number() -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "PhoneNumber",
        "metadata": {"name": "main", "namespace": APP_NS},
        "spec": {"number": "+14155550100", "trunkRef": {"name": "carrier"},
                 "agent": {"url": "wss://agent.example.com/ws"}}
    })
}

fn basic_auth(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": APP_NS},
        "type": "kubernetes.io/basic-auth",
        "stringData": {"username": "carrier-user", "password": PASSWORD}
    })
}

async fn wait_condition(
    op: &Operator,
    api: &Api<DynamicObject>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) {
    eventually(
        &format!("{name} {type_}={status} ({reason})"),
        WAIT,
        || async {
            let o = api.get(name).await.map_err(|e| e.to_string())?;
            let generation = o.metadata.generation.unwrap_or(0);
            let status_obj = &o.data["status"];
            let found = status_obj["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
                .cloned();
            match found {
                Some(c)
                    if c["status"] == status
                        && c["reason"] == reason
                        && status_obj["observedGeneration"] == generation =>
                {
                    Ok(())
                }
                other => Err(format!(
                    "{other:?}, status {status_obj}; operator log tail:\n{}",
                    tail(&op.log())
                )),
            }
        },
    )
    .await;
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The admin-run scenario of operator_api.rs, with the operator running as
/// the chart's ServiceAccount and the chart's arguments.
async fn run_scenario(release: &str, render: Render) {
    let i = install(release, render).await;
    // The chart mounts the control-channel CA and token from its Secrets;
    // here they are files with the same (rendered) contents.
    let mounts = tempfile::tempdir().expect("tempdir");
    let from_secret = |secret: &str, key: &str, file: &str| -> String {
        let doc = find(
            &i.docs,
            "Secret",
            &format!("{release}-switchboard-{secret}"),
        );
        let bytes: ByteString =
            serde_json::from_value(doc["data"][key].clone()).expect("base64 Secret data");
        let path = mounts.path().join(file);
        std::fs::write(&path, bytes.0).expect("write mount");
        path.to_string_lossy().into_owned()
    };
    let (ca, token) = (
        from_secret("control-tls", "ca.crt", "ca.crt"),
        from_secret("control-token", "token", "token"),
    );
    let args: Vec<String> = i
        .args
        .iter()
        .map(|a| {
            if a.starts_with("--control-ca=") {
                format!("--control-ca={ca}")
            } else if a.starts_with("--control-token-file=") {
                format!("--control-token-file={token}")
            } else {
                a.clone()
            }
        })
        .collect();
    assert!(args.contains(&format!("--control-ca={ca}")), "{args:?}");
    let pod_name = format!("{release}-switchboard-operator-7d9f8-abcde");
    let mut op = Operator::start(
        args,
        &[
            ("KUBECONFIG", i.kubeconfig.as_os_str()),
            // What the chart's Deployment sets from the downward API.
            ("POD_NAMESPACE", std::ffi::OsStr::new(RELEASE_NS)),
            ("POD_NAME", std::ffi::OsStr::new(&pod_name)),
        ],
    );
    let trunks = dynamic::<SipTrunk>(&i.admin, APP_NS);
    let numbers = dynamic::<PhoneNumber>(&i.admin, APP_NS);

    // A trunk naming a missing Secret, then the Secret: both transitions
    // are written as status and recorded as Events.
    apply(&i.admin, trunk("carrier-creds")).await;
    apply(&i.admin, number()).await;
    wait_condition(
        &op,
        &trunks,
        "carrier",
        "ResolvedRefs",
        "False",
        "SecretNotFound",
    )
    .await;
    wait_condition(
        &op,
        &numbers,
        "main",
        "ResolvedRefs",
        "False",
        "TrunkNotReady",
    )
    .await;
    apply(&i.admin, basic_auth("carrier-creds")).await;
    wait_condition(
        &op,
        &trunks,
        "carrier",
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    )
    .await;
    wait_condition(&op, &trunks, "carrier", "Accepted", "True", "Accepted").await;
    wait_condition(
        &op,
        &numbers,
        "main",
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    )
    .await;
    wait_condition(&op, &numbers, "main", "Accepted", "True", "Accepted").await;

    let events: Api<Event> = Api::namespaced(i.admin.clone(), APP_NS);
    eventually("Events for both transitions", WAIT, || async {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        if ["SecretNotFound", "ResolvedRefs"]
            .iter()
            .all(|r| reasons.iter().any(|x| x == r))
        {
            Ok(())
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await;

    // The Lease in the release namespace, held by the pod's name.
    let leases: Api<Lease> = Api::namespaced(i.admin.clone(), RELEASE_NS);
    let lease_name = i
        .args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name="))
        .expect("the chart names the Lease")
        .to_string();
    let holder = eventually("the Lease holder", WAIT, || async {
        leases
            .get(&lease_name)
            .await
            .map_err(|e| e.to_string())?
            .spec
            .and_then(|s| s.holder_identity)
            .ok_or_else(|| "no holder".to_string())
    })
    .await;
    assert_eq!(holder, pod_name);
    assert_eq!(op.metric("switchboard_operator_leader").await, Ok(1.0));
    assert_eq!(op.get("/readyz").await.map(|r| r.0), Ok(200));

    assert!(op.running(), "operator exited:\n{}", op.log());
    let log = op.log();
    assert!(
        log.contains("status written"),
        "debug log not captured:\n{log}"
    );
    // Not one request was refused: the RBAC covers everything it does.
    let lower = log.to_lowercase();
    assert!(
        // "403" alone would match timestamps; refusals always say forbidden.
        !lower.contains("forbidden") && !lower.contains("code: 403"),
        "the operator was refused something:\n{log}"
    );
    assert!(!log.contains(PASSWORD), "secret in the operator log");
    op.kill();
    drop(i.cluster);
}

#[tokio::test]
async fn operator_runs_under_the_chart_service_account_watching_all_namespaces() {
    run_scenario("sb", Render::new("sb", RELEASE_NS)).await;
}

#[tokio::test]
async fn operator_runs_under_the_chart_service_account_watching_one_namespace() {
    run_scenario(
        "scoped",
        Render::new("scoped", RELEASE_NS).set(&format!("operator.watchNamespace={APP_NS}")),
    )
    .await;
}

#[tokio::test]
async fn operator_runs_under_the_chart_service_account_with_rbac_watch_namespaces() {
    run_scenario(
        "listed",
        Render::new("listed", RELEASE_NS)
            .set(&format!("operator.rbac.watchNamespaces={{{APP_NS}}}")),
    )
    .await;
}

/// Whether the API server refused the request as forbidden.
fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> bool {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => true,
        Err(e) => panic!("{what}: expected 403 or success, got {e}"),
        Ok(_) => false,
    }
}

/// Polls until the request is (or stops being) forbidden: RBAC changes reach
/// the authorizer through a watch, a moment after they are written.
async fn expect_allowed<T, F, Fut>(what: &str, allowed: bool, f: F)
where
    T: std::fmt::Debug,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    eventually(what, WAIT, || async {
        let denied = forbidden(what, f().await);
        if denied != allowed {
            Ok(())
        } else {
            Err(format!("allowed={}", !denied))
        }
    })
    .await;
}

#[tokio::test]
async fn chart_service_account_is_refused_what_the_operator_does_not_use() {
    let i = install("sb", Render::new("sb", RELEASE_NS)).await;
    let op = i.operator.clone();
    let lp = ListParams::default();
    let dry = PatchParams {
        dry_run: true,
        ..PatchParams::apply("probe").force()
    };
    let post_dry = PostParams {
        dry_run: true,
        ..Default::default()
    };

    // What it uses is allowed (the controls for the denials below).
    let secrets_all: Api<Secret> = Api::all(op.clone());
    expect_allowed("list secrets everywhere", true, || secrets_all.list(&lp)).await;
    let trunks_app = dynamic::<SipTrunk>(&op, APP_NS);
    expect_allowed("list trunks", true, || trunks_app.list(&lp)).await;

    // Pods: only in the release namespace (where the media nodes run).
    let pods_release: Api<Pod> = Api::namespaced(op.clone(), RELEASE_NS);
    let pods_all: Api<Pod> = Api::all(op.clone());
    let pods_app: Api<Pod> = Api::namespaced(op.clone(), APP_NS);
    expect_allowed("list pods in the release namespace", true, || {
        pods_release.list(&lp)
    })
    .await;
    assert!(forbidden("list pods everywhere", pods_all.list(&lp).await));
    assert!(forbidden("list pods elsewhere", pods_app.list(&lp).await));

    // Secrets are read-only.
    let secrets_app: Api<Secret> = Api::namespaced(op.clone(), APP_NS);
    let secret: Secret = serde_json::from_value(basic_auth("x")).expect("secret");
    assert!(forbidden(
        "create secret",
        secrets_app.create(&post_dry, &secret).await
    ));
    assert!(forbidden(
        "patch secret",
        secrets_app
            .patch("x", &dry, &Patch::Apply(&basic_auth("x")))
            .await
    ));
    assert!(forbidden(
        "delete secret",
        secrets_app
            .delete("x", &DeleteParams::default().dry_run())
            .await
    ));

    // Trunks and numbers: status only, never the spec.
    apply(&i.admin, trunk("creds")).await;
    assert!(forbidden(
        "patch a trunk's spec",
        trunks_app
            .patch("carrier", &dry, &Patch::Apply(&trunk("other")))
            .await
    ));
    assert!(forbidden(
        "delete a trunk",
        trunks_app
            .delete("carrier", &DeleteParams::default().dry_run())
            .await
    ));
    let status = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SipTrunk",
                        "status": {"activeCalls": 0}});
    assert!(!forbidden(
        "patch a trunk's status",
        trunks_app
            .patch_status("carrier", &dry, &Patch::Apply(&status))
            .await
    ));

    // Leases: only its own, only in its namespace, never deleted.
    let leases: Api<Lease> = Api::namespaced(op.clone(), RELEASE_NS);
    assert!(forbidden(
        "get another Lease",
        leases.get("someone-else").await
    ));
    assert!(forbidden(
        "delete its Lease",
        leases
            .delete("switchboard-operator", &DeleteParams::default())
            .await
    ));
    let elsewhere: Api<Lease> = Api::namespaced(op.clone(), APP_NS);
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "switchboard-operator"}}))
            .expect("lease");
    assert!(forbidden(
        "create a Lease elsewhere",
        elsewhere.create(&post_dry, &lease).await
    ));

    // ConfigMaps: campaign callee lists and results (read, created and
    // patched; never deleted: owner references remove results with their
    // campaign).
    let cms: Api<ConfigMap> = Api::all(op.clone());
    assert!(!forbidden(
        "list configmaps",
        cms.list(&ListParams::default()).await
    ));
    let cms_app: Api<ConfigMap> = Api::namespaced(op.clone(), APP_NS);
    assert!(forbidden(
        "delete a configmap",
        cms_app.delete("anything", &DeleteParams::default()).await
    ));
    // Nothing else: core Events, reading Events back.
    let core_events: Api<CoreEvent> = Api::namespaced(op.clone(), APP_NS);
    assert!(forbidden(
        "list core events",
        core_events.list(&ListParams::default()).await
    ));
    let events: Api<Event> = Api::namespaced(op.clone(), APP_NS);
    assert!(forbidden(
        "list events",
        events.list(&ListParams::default()).await
    ));

    // pod-deletion-cost (on by default): patch media-node Pods in the
    // release namespace; never delete them.
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sb-switchboard-media-node-0", "namespace": RELEASE_NS},
        "spec": {"containers": [{"name": "media-node", "image": "example.invalid/media-node"}]}});
    apply(&i.admin, pod).await;
    let cost =
        json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "10"}}});
    let (merge, plain) = (Patch::Merge(&cost), PatchParams::default());
    let patch_cost = || pods_release.patch("sb-switchboard-media-node-0", &plain, &merge);
    expect_allowed("patch pod-deletion-cost", true, patch_cost).await;
    assert!(forbidden(
        "delete a pod",
        pods_release
            .delete(
                "sb-switchboard-media-node-0",
                &DeleteParams::default().dry_run()
            )
            .await
    ));

    // Without the feature the patch permission goes away.
    let render = Render::new("sb", RELEASE_NS).set("operator.podDeletionCost.enabled=false");
    let rbac: Vec<Value> = render
        .documents()
        .into_iter()
        .filter(is_operator_rbac)
        .collect();
    assert!(helm::apply(&i.admin, &rbac, false).await.is_empty());
    expect_allowed(
        "patch pod-deletion-cost without the feature",
        false,
        patch_cost,
    )
    .await;
    expect_allowed("list pods in the release namespace", true, || {
        pods_release.list(&lp)
    })
    .await;
    assert_eq!(i.account, "sb-switchboard-operator");
}

#[tokio::test]
async fn one_watched_namespace_grants_nothing_outside_it() {
    one_namespace_only(
        Render::new("scoped", RELEASE_NS).set(&format!("operator.watchNamespace={APP_NS}")),
    )
    .await;
}

#[tokio::test]
async fn rbac_watch_namespaces_grant_no_secret_outside_them() {
    one_namespace_only(
        Render::new("scoped", RELEASE_NS)
            .set(&format!("operator.rbac.watchNamespaces={{{APP_NS}}}")),
    )
    .await;
}

/// The operator's identity reads Secrets and trunks in APP_NS and nowhere else.
async fn one_namespace_only(render: Render) {
    let i = install("scoped", render).await;
    let op = i.operator.clone();
    let lp = ListParams::default();
    let in_app: Api<Secret> = Api::namespaced(op.clone(), APP_NS);
    expect_allowed("list secrets in the watched namespace", true, || {
        in_app.list(&lp)
    })
    .await;
    let elsewhere: Api<Secret> = Api::namespaced(op.clone(), "elsewhere");
    assert!(forbidden(
        "list secrets elsewhere",
        elsewhere.list(&ListParams::default()).await
    ));
    let all: Api<Secret> = Api::all(op.clone());
    assert!(forbidden(
        "list secrets everywhere",
        all.list(&ListParams::default()).await
    ));
    let trunks_all: Api<DynamicObject> =
        Api::all_with(op.clone(), &ApiResource::erase::<SipTrunk>(&()));
    assert!(forbidden(
        "list trunks everywhere",
        trunks_all.list(&ListParams::default()).await
    ));
    let in_release: Api<Secret> = Api::namespaced(op, RELEASE_NS);
    assert!(forbidden(
        "list secrets in the release namespace",
        in_release.list(&ListParams::default()).await
    ));
}
