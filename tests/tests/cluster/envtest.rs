//! Tests of the envtest harness against the real etcd and kube-apiserver
//! binaries (`make test-deps` installs them).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, ObjectMeta, PostParams};
use switchboard_tests::envtest::{self, ADMIN_USER, ClusterOptions, TestCluster, User};

const WIDGET_CRD: &str = r#"
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.envtest.switchboard.dev
spec:
  group: envtest.switchboard.dev
  scope: Namespaced
  names:
    kind: Widget
    plural: widgets
    singular: widget
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size:
                  type: integer
                  minimum: 1
"#;

/// Runs kubectl/helm against a kubeconfig; panics with stderr on failure.
async fn run_tool(name: &str, kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let bin = envtest::tool(name);
    let output = tokio::process::Command::new(&bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {} (make test-deps installs it): {e}", bin.display()));
    assert!(
        output.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn is_forbidden(result: &Result<impl std::fmt::Debug, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

#[tokio::test]
async fn cluster_starts_and_admin_lists_namespaces() {
    let cluster = TestCluster::start().await.expect("start the test cluster");
    eprintln!(
        "envtest start-up: {:?} ({})",
        cluster.startup_time(),
        cluster.server_url()
    );
    let client = cluster.client().await.expect("admin client");

    let version = client.apiserver_version().await.expect("GET /version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "35"),
        "kube-apiserver must report its release (built with version ldflags): {version:?}"
    );

    let namespaces: Api<Namespace> = Api::all(client);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .expect("list namespaces")
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    for expected in ["default", "kube-system", "kube-public"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    assert_eq!(cluster.user(ADMIN_USER), Some(cluster.admin()));
}

#[tokio::test]
async fn kubeconfig_works_with_kubectl_and_teardown_stops_the_server() {
    let cluster = TestCluster::start().await.expect("start the test cluster");
    let kubectl = run_tool(
        "kubectl",
        cluster.kubeconfig_path(),
        &["get", "namespace", "kube-system", "-o", "name"],
    )
    .await;
    assert_eq!(kubectl.trim(), "namespace/kube-system");
    // Helm reads the same kubeconfig; no releases exist yet.
    let helm = run_tool(
        "helm",
        cluster.kubeconfig_path(),
        &["list", "--all-namespaces", "-o", "json"],
    )
    .await;
    assert_eq!(helm.trim(), "[]");

    let dir = cluster.dir().to_path_buf();
    let url = cluster.server_url().to_owned();
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in server URL");
    drop(cluster);
    assert!(!dir.exists(), "{} must be removed on drop", dir.display());
    // Drop waits for the processes, so the port is free again at once.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "kube-apiserver still listening on {port} after drop"
    );
}

#[tokio::test]
async fn inline_crd_installs_and_is_served() {
    let cluster = TestCluster::start().await.expect("start the test cluster");
    let names = cluster
        .install_crd_yaml(WIDGET_CRD)
        .await
        .expect("install the Widget CRD");
    assert_eq!(names, ["widgets.envtest.switchboard.dev"]);

    let client = cluster.client().await.expect("admin client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .get("widgets.envtest.switchboard.dev")
        .await
        .expect("get the CRD");
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established, "install_crd_yaml returned before Established");

    // Established means served: a custom object can be created, and the schema
    // is enforced.
    let resource = ApiResource {
        group: "envtest.switchboard.dev".into(),
        version: "v1".into(),
        api_version: "envtest.switchboard.dev/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
    let mut widget = DynamicObject::new("w1", &resource);
    widget.data = serde_json::json!({ "spec": { "size": 3 } });
    widgets
        .create(&PostParams::default(), &widget)
        .await
        .expect("create a Widget");
    let mut invalid = DynamicObject::new("w2", &resource);
    invalid.data = serde_json::json!({ "spec": { "size": 0 } });
    let refused = widgets.create(&PostParams::default(), &invalid).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422),
        "schema minimum not enforced: {refused:?}"
    );

    // Installing the same CRD again from a directory is idempotent.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("widgets.yaml"), WIDGET_CRD).expect("write CRD file");
    std::fs::write(dir.path().join("README.md"), "not YAML").expect("write other file");
    let names = cluster
        .install_crds(dir.path())
        .await
        .expect("install from a directory");
    assert_eq!(names, ["widgets.envtest.switchboard.dev"]);
}

#[tokio::test]
async fn non_admin_is_forbidden_until_rbac_grants_access() {
    let alice = User::new("alice");
    let cluster = TestCluster::start_with(ClusterOptions::default().user(alice.clone()))
        .await
        .expect("start the test cluster");
    let admin = cluster.client().await.expect("admin client");
    let as_alice = cluster
        .client_for(alice.token())
        .await
        .expect("alice's client");
    let alice_configmaps: Api<ConfigMap> = Api::namespaced(as_alice.clone(), "default");

    let before = alice_configmaps.list(&ListParams::default()).await;
    assert!(
        is_forbidden(&before),
        "expected 403 before RBAC: {before:?}"
    );

    // An unknown token is not a user at all: 401, not 403.
    let stranger = cluster.client_for("not-a-token").await.expect("client");
    let unknown = Api::<ConfigMap>::namespaced(stranger, "default")
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&unknown, Err(kube::Error::Api(s)) if s.code == 401),
        "expected 401 for an unknown token: {unknown:?}"
    );

    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        ..Default::default()
    };
    let role = Role {
        metadata: meta("configmap-reader"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &role)
        .await
        .expect("create Role");
    let binding = RoleBinding {
        metadata: meta("alice-reads-configmaps"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "configmap-reader".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: "alice".into(),
            namespace: None,
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, "default")
        .create(&PostParams::default(), &binding)
        .await
        .expect("create RoleBinding");

    // The RBAC authorizer reads bindings from an informer: allow it to catch up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match alice_configmaps.list(&ListParams::default()).await {
            Ok(list) => {
                assert!(
                    list.items
                        .iter()
                        .any(|cm| cm.metadata.name.as_deref() == Some("kube-root-ca.crt"))
                        || list.items.is_empty(),
                    "unexpected list result"
                );
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(
                    is_forbidden(&Err::<(), _>(e)),
                    "unexpected error while waiting for RBAC"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("RoleBinding not effective within 10s: {e}"),
        }
    }

    // The grant is exactly the Role: reads, not writes, and only in `default`.
    let write = alice_configmaps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: meta("by-alice"),
                ..Default::default()
            },
        )
        .await;
    assert!(
        is_forbidden(&write),
        "create must stay forbidden: {write:?}"
    );
    let elsewhere = Api::<ConfigMap>::namespaced(as_alice, "kube-system")
        .list(&ListParams::default())
        .await;
    assert!(
        is_forbidden(&elsewhere),
        "other namespaces must stay forbidden: {elsewhere:?}"
    );
}

#[tokio::test]
async fn service_account_tokens_authenticate_as_the_account() {
    let cluster = TestCluster::start().await.expect("start the test cluster");
    let token = cluster
        .service_account_token("default", "operator")
        .await
        .expect("TokenRequest");
    let client = cluster.client_for(&token).await.expect("client");
    // Authenticated (signature checked against the harness's EC key) but not
    // authorized for anything: 403 rather than 401.
    let result = Api::<ConfigMap>::namespaced(client, "default")
        .list(&ListParams::default())
        .await;
    match &result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status
                    .message
                    .contains("system:serviceaccount:default:operator"),
                "403 must name the account: {}",
                status.message
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
}

/// Streaming lists (`sendInitialEvents=true`) need etcd's RequestWatchProgress,
/// which Debian's etcd 3.4.23 lacks (the API server then answers 500); this is
/// why `make test-deps` builds etcd 3.6.
#[tokio::test]
async fn streaming_list_watch_is_served() {
    use futures::StreamExt as _;
    use kube::runtime::watcher;

    let cluster = TestCluster::start().await.expect("start the test cluster");
    let namespaces: Api<Namespace> = Api::all(cluster.client().await.expect("admin client"));
    let mut events = watcher(namespaces, watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    let deadline = Duration::from_secs(20);
    tokio::time::timeout(deadline, async {
        while let Some(event) = events.next().await {
            match event.expect("streaming list watch must not fail") {
                watcher::Event::InitApply(ns) => seen.extend(ns.metadata.name),
                watcher::Event::InitDone => return,
                _ => {}
            }
        }
        panic!("watch stream ended before InitDone");
    })
    .await
    .expect("InitDone within 20s");
    assert!(
        seen.iter().any(|n| n == "kube-system"),
        "initial events: {seen:?}"
    );
}
