//! The Helm chart rendered by the real helm binary: lint, template, the
//! values schema, and what the rendered objects say. (The API server's view
//! of them is in chart_apiserver.rs, the RBAC in chart_rbac.rs.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use switchboard_tests::helm::{self, Render, describe, documents, find, of_kind};
use switchboard_tests::operator::{binary, free_port};
use switchboard_tests::poll::eventually;

const NS: &str = "switchboard";
const RELEASE: &str = "sb";
const OPERATOR: &str = "sb-switchboard-operator";
const MEDIA: &str = "sb-switchboard-media-node";

fn render() -> Render {
    Render::new(RELEASE, NS)
}

fn example(name: &str) -> PathBuf {
    helm::repo_root().join("examples/helm").join(name)
}

/// Every render the chart must support: defaults and each example file.
fn all_renders() -> Vec<(String, Render)> {
    let mut renders = vec![("defaults".to_string(), render())];
    for file in helm::example_values() {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        renders.push((name, render().values(&file)));
    }
    renders
}

#[test]
fn chart_crds_are_identical_to_crds_dir() {
    let read_dir = |dir: PathBuf| -> BTreeMap<String, String> {
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| {
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                let text = std::fs::read_to_string(&p).expect("read CRD");
                (name, text)
            })
            .collect()
    };
    let generated = read_dir(helm::repo_root().join("crds"));
    let chart = read_dir(helm::chart_dir().join("crds"));
    assert!(!generated.is_empty(), "crds/ is empty");
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "charts/switchboard/crds/ must hold the same files as crds/: run `make crds`"
    );
    for (name, text) in &generated {
        assert!(
            chart[name] == *text,
            "charts/switchboard/crds/{name} differs from crds/{name}: run `make crds`"
        );
    }
}

#[test]
fn lint_and_template_succeed_with_defaults_and_every_example() {
    let renders = all_renders();
    assert!(
        renders.len() >= 3,
        "expected example values files in examples/helm/"
    );
    for (name, r) in renders {
        if let Err(e) = r.lint() {
            panic!("helm lint --strict with {name} failed:\n{e}");
        }
        let docs = r.documents();
        for kind in [
            "Deployment",
            "ServiceAccount",
            "PodDisruptionBudget",
            "Service",
            "Role",
        ] {
            assert!(!of_kind(&docs, kind).is_empty(), "{name}: no {kind}");
        }
        for d in &docs {
            assert!(
                d["apiVersion"].is_string() && d["metadata"]["name"].is_string(),
                "{name}: malformed document {d}"
            );
        }
    }
}

#[test]
fn bad_values_fail_on_the_schema_naming_the_value() {
    // (what, --set, text the error must contain)
    let cases = [
        ("zero operator replicas", "operator.replicas=0", "replicas"),
        (
            "unknown networking mode",
            "mediaNode.networking.mode=nodePort",
            "mode",
        ),
        ("RTP below 1024", "mediaNode.rtp.portMin=80", "portMin"),
        ("RTP above 65535", "mediaNode.rtp.portMax=70000", "portMax"),
        ("SIP port as text", "mediaNode.sip.port=sip", "port"),
        ("unknown top-level key", "operatorr.replicas=2", "operatorr"),
        ("unknown nested key", "mediaNode.maxCall=5", "maxCall"),
        (
            "short grace period",
            "mediaNode.terminationGracePeriodSeconds=5",
            "terminationGracePeriodSeconds",
        ),
        (
            "unknown autoscaling provider",
            "autoscaling.provider=vpa",
            "provider",
        ),
        (
            "CPU target over 100",
            "autoscaling.cpu.targetUtilization=150",
            "targetUtilization",
        ),
        (
            "bad source CIDR",
            "networkPolicy.sipSources[0]=carrier.example",
            "sipSources",
        ),
        ("log format", "operator.logFormat=xml", "logFormat"),
        (
            "lease name",
            "operator.leaderElection.leaseName=Not_A_Name",
            "leaseName",
        ),
    ];
    for (what, set, needle) in cases {
        let err = render()
            .set(set)
            .template()
            .expect_err(&format!("{what}: --set {set} was accepted"));
        assert!(
            err.contains("schema") && err.contains(needle),
            "{what}: the error does not name {needle:?} (or is not a schema error):\n{err}"
        );
    }
}

#[test]
fn inconsistent_values_fail_naming_them() {
    let cases: [(&str, &[&str], &str); 7] = [
        (
            "two replicas without leader election",
            &["operator.leaderElection.enabled=false"],
            "operator.leaderElection.enabled",
        ),
        (
            "empty RTP range",
            &["mediaNode.rtp.portMin=30000", "mediaNode.rtp.portMax=20000"],
            "mediaNode.rtp.portMin",
        ),
        (
            "admin port inside the RTP range",
            &["mediaNode.adminPort=25000"],
            "mediaNode.rtp.portMin-portMax",
        ),
        (
            "load balancer without its address",
            &["mediaNode.networking.mode=loadBalancer"],
            "mediaNode.networking.advertiseAddress",
        ),
        (
            "min above max replicas",
            &["autoscaling.minReplicas=5", "autoscaling.maxReplicas=3"],
            "autoscaling.minReplicas",
        ),
        (
            "KEDA on calls without Prometheus",
            &[
                "autoscaling.provider=keda",
                "autoscaling.activeCalls.enabled=true",
            ],
            "autoscaling.keda.prometheusAddress",
        ),
        (
            "KEDA on campaign calls without Prometheus",
            &[
                "autoscaling.provider=keda",
                "autoscaling.campaigns.enabled=true",
            ],
            "autoscaling.keda.prometheusAddress",
        ),
    ];
    for (what, sets, needle) in cases {
        let mut r = render();
        for s in sets {
            r = r.set(s);
        }
        let err = r.template().expect_err(&format!("{what}: accepted"));
        assert!(
            err.contains(needle),
            "{what}: does not name {needle}:\n{err}"
        );
    }
    // The same values without the mistake render.
    render()
        .set("operator.leaderElection.enabled=false")
        .set("operator.replicas=1")
        .template()
        .expect("one replica without leader election is fine");
}

fn containers(d: &Value) -> Vec<&Value> {
    d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

#[test]
fn workloads_run_non_root_read_only_without_capabilities_and_with_probes() {
    for (name, r) in all_renders() {
        let docs = r.documents();
        let deployments = of_kind(&docs, "Deployment");
        assert_eq!(deployments.len(), 2, "{name}: operator and media node");
        for d in deployments {
            let what = format!("{name}: {}", describe(d));
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
            for c in containers(d) {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{what}"
                );
                assert!(sc["capabilities"]["add"].is_null(), "{what}");
                assert!(c["livenessProbe"].is_object(), "{what}: no liveness probe");
                assert!(
                    c["readinessProbe"].is_object(),
                    "{what}: no readiness probe"
                );
                assert!(
                    c["resources"]["requests"]["cpu"].is_string()
                        && c["resources"]["requests"]["memory"].is_string()
                        && c["resources"]["limits"]["memory"].is_string(),
                    "{what}: resources {}",
                    c["resources"]
                );
            }
        }
    }
}

fn args(d: &Value) -> Vec<String> {
    containers(d)[0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

#[test]
fn operator_runs_two_replicas_with_leader_election_in_its_namespace() {
    let docs = render().documents();
    let d = find(&docs, "Deployment", OPERATOR);
    assert_eq!(d["spec"]["replicas"], 2);
    let a = args(d);
    assert!(
        a.contains(&"--lease-name=switchboard-operator".to_string()),
        "{a:?}"
    );
    assert!(
        !a.iter().any(|x| x.starts_with("--no-leader-election")),
        "{a:?}"
    );
    let env = containers(d)[0]["env"].to_string();
    for var in ["POD_NAMESPACE", "POD_NAME"] {
        assert!(env.contains(var), "{var} not set: {env}");
    }
    let pdb = find(&docs, "PodDisruptionBudget", OPERATOR);
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // One replica without leader election says so to the binary.
    let docs = render()
        .set("operator.replicas=1")
        .set("operator.leaderElection.enabled=false")
        .documents();
    let a = args(find(&docs, "Deployment", OPERATOR));
    assert!(a.contains(&"--no-leader-election".to_string()), "{a:?}");
    // ...and needs no Lease permissions.
    let role = find(&docs, "Role", OPERATOR);
    assert!(!role["rules"].to_string().contains("leases"), "{role}");
}

#[test]
fn host_network_mode_advertises_the_node_address_one_pod_per_node() {
    let docs = render()
        .values(example("hostnetwork-dedicated-nodes.yaml"))
        .documents();
    let d = find(&docs, "Deployment", MEDIA);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let a = args(d);
    assert!(a.contains(&"--advertise=$(NODE_IP)".to_string()), "{a:?}");
    assert!(a.contains(&"--rtp-ports=20000-30000".to_string()), "{a:?}");
    let env = containers(d)[0]["env"].to_string();
    assert!(env.contains("status.hostIP"), "{env}");
    let anti =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(anti[0]["topologyKey"], "kubernetes.io/hostname", "{pod}");
    assert_eq!(pod["nodeSelector"]["switchboard.dev/media"], "true");
    // No SIP LoadBalancer in this mode.
    assert!(
        !of_kind(&docs, "Service")
            .iter()
            .any(|s| s["spec"]["type"] == "LoadBalancer")
    );
}

#[test]
fn load_balancer_mode_keeps_source_addresses_and_advertises_the_balancer() {
    let docs = render().values(example("loadbalancer.yaml")).documents();
    let svc = find(&docs, "Service", &format!("{MEDIA}-sip"));
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    let ports: Vec<(String, i64)> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["protocol"].as_str().expect("protocol").to_string(),
                p["port"].as_i64().expect("port"),
            )
        })
        .collect();
    assert_eq!(ports, vec![("UDP".into(), 5060), ("TCP".into(), 5060)]);
    let d = find(&docs, "Deployment", MEDIA);
    assert!(d["spec"]["template"]["spec"]["hostNetwork"].is_null());
    let a = args(d);
    assert!(a.contains(&"--advertise=203.0.113.10".to_string()), "{a:?}");
    // The example turns the NetworkPolicy on: the control port only from the operator.
    let np = find(&docs, "NetworkPolicy", MEDIA);
    let control = np["spec"]["ingress"]
        .as_array()
        .expect("ingress")
        .iter()
        .find(|r| r["ports"][0]["port"] == 9443)
        .expect("a rule for the control port");
    assert_eq!(
        control["from"],
        serde_json::json!([{"podSelector": {"matchLabels": {
            "app.kubernetes.io/name": "switchboard",
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "operator"
        }}}])
    );
    let sip = &np["spec"]["ingress"][0];
    assert_eq!(sip["ports"][2]["endPort"], 30000, "{sip}");
    assert_eq!(sip["from"][0]["ipBlock"]["cidr"], "192.0.2.0/24", "{sip}");
}

#[test]
fn media_nodes_drain_with_a_long_grace_period_and_a_pre_stop_hook() {
    let docs = render().documents();
    let d = find(&docs, "Deployment", MEDIA);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 3600);
    let c = containers(d)[0];
    // POST /drain with the admin token, from inside the container (an
    // httpGet hook can only GET, which /drain refuses).
    assert_eq!(
        c["lifecycle"]["preStop"]["exec"]["command"],
        serde_json::json!([
            "switchboard-media-node",
            "--send-drain",
            "--admin-token-file=/etc/switchboard/admin-token/token"
        ])
    );
    assert!(
        c["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "SWITCHBOARD_HTTP_BIND" && e["value"] == "$(POD_IP):9090"),
        "the hook finds the admin port through the environment: {}",
        c["env"]
    );
    assert!(args(d).contains(&"--admin-token-file=/etc/switchboard/admin-token/token".to_string()));
    let token = find(
        &docs,
        "Secret",
        &format!("{RELEASE}-switchboard-admin-token"),
    );
    assert!(
        token["data"]["token"]
            .as_str()
            .is_some_and(|t| t.len() >= 48),
        "a generated admin token: {token}"
    );
    assert!(
        pod["volumes"]
            .to_string()
            .contains("\"secretName\":\"sb-switchboard-admin-token\""),
        "{}",
        pod["volumes"]
    );
    let docs = render()
        .set("adminToken.existingSecret=my-admin")
        .documents();
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"] == "sb-switchboard-admin-token"),
        "no generated Secret with existingSecret"
    );
    let pod = &find(&docs, "Deployment", MEDIA)["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .to_string()
            .contains("\"secretName\":\"my-admin\"")
    );
    // The node gives up on remaining calls before the kubelet kills it.
    assert!(args(d).contains(&"--drain-grace-secs=3570".to_string()));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let pdb = find(&docs, "PodDisruptionBudget", MEDIA);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    // Rollouts never reduce capacity by default.
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
}

#[test]
fn autoscaling_scales_up_fast_and_down_slowly_on_calls_or_cpu() {
    // Defaults: an HPA on CPU only, the Deployment leaves replicas to it.
    let docs = render().documents();
    let d = find(&docs, "Deployment", MEDIA);
    assert!(d["spec"]["replicas"].is_null(), "replicas fight the HPA");
    let hpa = find(&docs, "HorizontalPodAutoscaler", MEDIA);
    let b = &hpa["spec"]["behavior"];
    assert_eq!(b["scaleUp"]["stabilizationWindowSeconds"], 0);
    assert!(b["scaleDown"]["stabilizationWindowSeconds"].as_i64() >= Some(300));
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0]["resource"]["name"], "cpu");

    // Active calls per pod through custom metrics, CPU as fallback.
    let docs = render()
        .values(example("hostnetwork-dedicated-nodes.yaml"))
        .documents();
    let hpa = find(&docs, "HorizontalPodAutoscaler", MEDIA);
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    assert_eq!(metrics[0]["type"], "Pods");
    assert_eq!(
        metrics[0]["pods"]["metric"]["name"],
        "switchboard_active_calls"
    );
    assert_eq!(metrics[0]["pods"]["target"]["averageValue"], "250");
    assert_eq!(metrics[1]["type"], "Resource");
    assert_eq!(of_kind(&docs, "ServiceMonitor").len(), 1);

    // KEDA: a ScaledObject with the same behavior, and no HPA of ours.
    let docs = render()
        .values(example("keda-autoscaling.yaml"))
        .documents();
    assert!(of_kind(&docs, "HorizontalPodAutoscaler").is_empty());
    let so = find(&docs, "ScaledObject", MEDIA);
    assert_eq!(so["spec"]["scaleTargetRef"]["name"], MEDIA);
    let query = so["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .expect("query");
    assert!(query.contains("switchboard_sip_active_calls"), "{query}");
    assert!(query.contains(NS), "{query}");
    assert_eq!(
        so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"],
        0
    );

    // Campaign demand: the calls campaigns are about to place count with
    // the active calls, in KEDA's query and as the HPA's External metric.
    let docs = render()
        .values(example("keda-autoscaling.yaml"))
        .set("autoscaling.campaigns.enabled=true")
        .documents();
    let so = find(&docs, "ScaledObject", MEDIA);
    let triggers = so["spec"]["triggers"].as_array().expect("triggers");
    let campaign = triggers
        .iter()
        .filter_map(|t| t["metadata"]["query"].as_str())
        .find(|q| q.contains("switchboard_campaign_upcoming_calls"))
        .expect("a campaign trigger");
    assert!(
        campaign.contains("switchboard_sip_active_calls"),
        "{campaign}"
    );
    let docs = render()
        .set("autoscaling.campaigns.enabled=true")
        .documents();
    let hpa = find(&docs, "HorizontalPodAutoscaler", MEDIA);
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    assert!(
        metrics.iter().any(|m| m["type"] == "External"
            && m["external"]["metric"]["name"] == "switchboard_fleet_wanted_calls"),
        "{metrics:?}"
    );

    // Without autoscaling the Deployment has its replicas.
    let docs = render()
        .set("autoscaling.enabled=false")
        .set("mediaNode.replicas=3")
        .documents();
    assert_eq!(find(&docs, "Deployment", MEDIA)["spec"]["replicas"], 3);
    assert!(of_kind(&docs, "HorizontalPodAutoscaler").is_empty());
}

#[test]
fn control_tls_is_generated_once_or_taken_from_an_existing_secret() {
    let docs = render().documents();
    let secret = find(&docs, "Secret", "sb-switchboard-control-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(
            secret["data"][key].as_str().is_some_and(|v| v.len() > 100),
            "{key} missing"
        );
    }
    // Both workloads mount it, and restart when it changes.
    let sums: Vec<&Value> = of_kind(&docs, "Deployment")
        .into_iter()
        .map(|d| {
            assert!(
                d["spec"]["template"]["spec"]["volumes"]
                    .to_string()
                    .contains("sb-switchboard-control-tls"),
                "{}",
                describe(d)
            );
            &d["spec"]["template"]["metadata"]["annotations"]["checksum/control-tls"]
        })
        .collect();
    assert!(sums[0].is_string() && sums[0] == sums[1], "{sums:?}");

    let docs = render()
        .set("controlTLS.existingSecret=my-control-tls")
        .documents();
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "Secret" && d.to_string().contains("control-tls")),
        "a Secret was generated although one was named"
    );
    for d in of_kind(&docs, "Deployment") {
        assert!(
            d["spec"]["template"]["spec"]["volumes"]
                .to_string()
                .contains("\"secretName\":\"my-control-tls\""),
            "{}",
            describe(d)
        );
    }
}

fn rules(doc: &Value) -> String {
    doc["rules"].to_string()
}

#[test]
fn rbac_grants_pods_only_in_the_release_namespace_and_namespaces_with_watch_namespace() {
    let docs = render().documents();
    let all: String = docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        .map(rules)
        .collect();
    assert!(!all.contains('*'), "wildcard in {all}");
    let cr = find(&docs, "ClusterRole", &format!("{NS}-{OPERATOR}"));
    assert!(
        !rules(cr).contains("pods"),
        "pods granted cluster-wide: {cr}"
    );
    for verb in ["create", "update", "delete", "deletecollection"] {
        assert!(
            !cr["rules"]
                .as_array()
                .expect("rules")
                .iter()
                .any(|r| r["resources"].to_string().contains("secrets")
                    && r["verbs"].to_string().contains(verb)),
            "secrets {verb} granted"
        );
    }
    // Pods (discovery, and pod-deletion-cost by default) only in the
    // release namespace.
    let role = find(&docs, "Role", OPERATOR);
    assert_eq!(role["metadata"]["namespace"], NS);
    let r = rules(role);
    assert!(
        r.contains("pods") && r.contains("patch") && r.contains("watch"),
        "{r}"
    );
    assert!(!args(find(&docs, "Deployment", OPERATOR)).contains(&"--no-deletion-cost".to_string()));

    // Without pod-deletion-cost: no patch, and the operator is told so.
    let docs = render()
        .set("operator.podDeletionCost.enabled=false")
        .documents();
    let r = rules(find(&docs, "Role", OPERATOR));
    assert!(r.contains("pods") && !r.contains("patch"), "{r}");
    assert!(args(find(&docs, "Deployment", OPERATOR)).contains(&"--no-deletion-cost".to_string()));

    let docs = render()
        .set("operator.watchNamespace=telephony")
        .documents();
    assert!(of_kind(&docs, "ClusterRole").is_empty());
    assert!(of_kind(&docs, "ClusterRoleBinding").is_empty());
    let watch = find(&docs, "Role", &format!("{OPERATOR}-watch"));
    assert_eq!(watch["metadata"]["namespace"], "telephony");
    let a = args(find(&docs, "Deployment", OPERATOR));
    assert!(a.contains(&"--namespace=telephony".to_string()), "{a:?}");

    // rbac.watchNamespaces: Secrets (and the CRs) only there, no ClusterRole.
    let docs = render()
        .set("operator.rbac.watchNamespaces={tenant-a}")
        .documents();
    assert!(of_kind(&docs, "ClusterRole").is_empty());
    assert!(of_kind(&docs, "ClusterRoleBinding").is_empty());
    let watch: Vec<&Value> = of_kind(&docs, "Role")
        .into_iter()
        .filter(|r| r["metadata"]["name"] == format!("{OPERATOR}-watch"))
        .collect();
    assert_eq!(watch.len(), 1);
    assert_eq!(watch[0]["metadata"]["namespace"], "tenant-a");
    let r = rules(watch[0]);
    assert!(r.contains("secrets") && r.contains("siptrunks"), "{r}");
    let binding = of_kind(&docs, "RoleBinding")
        .into_iter()
        .find(|b| b["metadata"]["name"] == format!("{OPERATOR}-watch"))
        .expect("RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], "tenant-a");
    assert_eq!(binding["subjects"][0]["namespace"], NS);
    let a = args(find(&docs, "Deployment", OPERATOR));
    assert!(a.contains(&"--namespace=tenant-a".to_string()), "{a:?}");
    // The operator watches one namespace or all: more is refused, clearly.
    let err = render()
        .set("operator.rbac.watchNamespaces={a,b}")
        .template()
        .expect_err("two namespaces");
    assert!(
        err.contains("operator.rbac.watchNamespaces lists 2 namespaces"),
        "{err}"
    );
    let err = render()
        .set("operator.rbac.watchNamespaces={a}")
        .set("operator.watchNamespace=b")
        .template()
        .expect_err("both values");
    assert!(err.contains("not both"), "{err}");
}

#[test]
fn operator_dials_this_releases_media_nodes_over_tls_with_a_token() {
    let docs = render().documents();
    let a = args(find(&docs, "Deployment", OPERATOR));
    for want in [
        "--media-node-selector=app.kubernetes.io/instance=sb,app.kubernetes.io/component=media-node",
        "--control-port=9443",
        "--control-ca=/etc/switchboard/control-tls/ca.crt",
        "--control-server-name=sb-switchboard-media-node",
        "--control-token-file=/etc/switchboard/control-token/token",
    ] {
        assert!(a.contains(&want.to_string()), "{want} not in {a:?}");
    }
    assert!(!a.contains(&"--control-insecure".to_string()));
    let token = find(&docs, "Secret", "sb-switchboard-control-token");
    assert!(
        token["data"]["token"]
            .as_str()
            .is_some_and(|t| t.len() >= 48)
    );
    // The selector matches the media-node pod template's labels.
    let labels = &find(&docs, "Deployment", MEDIA)["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/instance"], "sb");
    assert_eq!(labels["app.kubernetes.io/component"], "media-node");

    let docs = render()
        .set("controlTLS.enabled=false")
        .set("controlToken.existingSecret=my-token")
        .documents();
    let a = args(find(&docs, "Deployment", OPERATOR));
    assert!(a.contains(&"--control-insecure".to_string()), "{a:?}");
    assert!(!a.iter().any(|x| x.starts_with("--control-ca")), "{a:?}");
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "Secret" && d.to_string().contains("control-")),
        "a control Secret was generated"
    );
}

/// The media-node flags block names real flags: the binary starts with the
/// rendered arguments and becomes ready.
#[tokio::test]
async fn media_node_binary_accepts_the_rendered_arguments() {
    let (sip, admin, control, api) = (free_port(), free_port(), free_port(), free_port());
    let docs = render()
        .set(&format!("mediaNode.callApiPort={api}"))
        .set(&format!("mediaNode.sip.port={sip}"))
        .set(&format!("mediaNode.adminPort={admin}"))
        .set(&format!("mediaNode.controlPort={control}"))
        .set("mediaNode.rtp.portMin=41000")
        .set("mediaNode.rtp.portMax=41100")
        .documents();
    let d = find(&docs, "Deployment", MEDIA);
    let dir = tempfile::tempdir().expect("tempdir");
    // The control-channel TLS material and token the chart generated,
    // written where the rendered arguments expect them (remapped to temp).
    let tls = find(
        &docs,
        "Secret",
        &format!("{RELEASE}-switchboard-control-tls"),
    );
    let token = find(
        &docs,
        "Secret",
        &format!("{RELEASE}-switchboard-control-token"),
    );
    let b64 = |v: &serde_json::Value| -> Vec<u8> {
        use base64::Engine as _;
        match v.as_str() {
            Some(s) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .expect("base64"),
            None => Vec::new(),
        }
    };
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::write(dir.path().join(key), b64(&tls["data"][key])).expect("write tls");
    }
    let token_text = token["data"]["token"]
        .as_str()
        .map(|_| b64(&token["data"]["token"]))
        .or_else(|| {
            token["stringData"]["token"]
                .as_str()
                .map(|t| t.as_bytes().to_vec())
        })
        .expect("token");
    std::fs::write(dir.path().join("token"), token_text).expect("write token");
    let api_token = find(
        &docs,
        "Secret",
        &format!("{RELEASE}-switchboard-call-api-token"),
    );
    let api_dir = dir.path().join("api");
    std::fs::create_dir(&api_dir).expect("mkdir");
    std::fs::write(api_dir.join("token"), b64(&api_token["data"]["token"]))
        .expect("write api token");
    let admin_token = find(
        &docs,
        "Secret",
        &format!("{RELEASE}-switchboard-admin-token"),
    );
    let admin_dir = dir.path().join("admin");
    std::fs::create_dir(&admin_dir).expect("mkdir");
    std::fs::write(admin_dir.join("token"), b64(&admin_token["data"]["token"]))
        .expect("write admin token");
    let remap = |a: &str| -> String {
        a.replace(
            "/etc/switchboard/control-tls",
            &dir.path().display().to_string(),
        )
        .replace(
            "/etc/switchboard/control-token",
            &dir.path().display().to_string(),
        )
        .replace(
            "/etc/switchboard/call-api-token",
            &api_dir.display().to_string(),
        )
        .replace(
            "/etc/switchboard/admin-token",
            &admin_dir.display().to_string(),
        )
        .replace("$(NODE_IP)", "127.0.0.1")
        .replace("$(POD_IP)", "127.0.0.1")
        .replace("0.0.0.0:", "127.0.0.1:")
    };
    let node_args: Vec<String> = args(d).into_iter().map(|a| remap(&a)).collect();
    assert!(
        !node_args.iter().any(|a| a.starts_with("--config")),
        "nodes are programmed by the operator: {node_args:?}"
    );
    let log = dir.path().join("media-node.log");
    let file = std::fs::File::create(&log).expect("log");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let node = std::sync::Mutex::new(Kill(
        std::process::Command::new(binary("switchboard-media-node"))
            .args(&node_args)
            .env("POD_NAME", "media-0")
            .stdout(file.try_clone().expect("fd"))
            .stderr(file)
            .spawn()
            .expect("start switchboard-media-node"),
    ));
    let url = format!("127.0.0.1:{admin}");
    let status_is = |code: &'static str| {
        let (node, log, args, url) = (&node, &log, &node_args, &url);
        move || async move {
            let exited = node.lock().expect("lock").0.try_wait();
            if let Ok(Some(status)) = exited {
                return Err(format!(
                    "exited {status} with {args:?}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                ));
            }
            let body = http_get(url, "/readyz").await?;
            if body.starts_with(&format!("HTTP/1.0 {code}"))
                || body.starts_with(&format!("HTTP/1.1 {code}"))
            {
                Ok(())
            } else {
                Err(body)
            }
        }
    };
    // Up, but not ready until programmed.
    eventually(
        "the media node to answer /readyz 503",
        Duration::from_secs(20),
        status_is("503"),
    )
    .await;

    // The operator, with the chart's CA, server name and token, programs it
    // over TLS (file source standing in for the cluster).
    let op_deploy = find(
        &docs,
        "Deployment",
        &format!("{RELEASE}-switchboard-operator"),
    );
    let op_args = args(op_deploy);
    let server_name = op_args
        .iter()
        .find_map(|a| a.strip_prefix("--control-server-name="))
        .expect("--control-server-name rendered")
        .to_string();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    std::fs::write(
        manifests.join("trunk.yaml"),
        "apiVersion: switchboard.dev/v1alpha1\nkind: SipTrunk\nmetadata: {name: t}\nspec:\n  inbound: {allowedSources: [\"127.0.0.1/32\"]}\n",
    )
    .expect("write");
    let mut operator = std::process::Command::new(binary("switchboard-operator"))
        .arg("--manifests")
        .arg(&manifests)
        .arg(format!("--node=media-0=127.0.0.1:{control}"))
        .arg(format!(
            "--control-ca={}",
            dir.path().join("ca.crt").display()
        ))
        .arg(format!(
            "--control-token-file={}",
            dir.path().join("token").display()
        ))
        .arg(format!("--control-server-name={server_name}"))
        .arg(format!("--http-bind=127.0.0.1:{}", free_port()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start operator");
    eventually(
        "the operator to program the node over TLS",
        Duration::from_secs(20),
        status_is("200"),
    )
    .await;
    let _ = operator.kill();
    let _ = operator.wait();

    // The rendered preStop hook, run as the kubelet would (in the container,
    // with its environment): the node drains.
    let c = containers(d)[0];
    let hook: Vec<String> = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .expect("exec hook")
        .iter()
        .map(|v| remap(v.as_str().expect("string")))
        .collect();
    let bind = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "SWITCHBOARD_HTTP_BIND")
        .and_then(|e| e["value"].as_str())
        .map(remap)
        .expect("SWITCHBOARD_HTTP_BIND");
    assert_eq!(hook[0], "switchboard-media-node");
    let out = std::process::Command::new(binary("switchboard-media-node"))
        .args(&hook[1..])
        .env("SWITCHBOARD_HTTP_BIND", &bind)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the preStop hook");
    assert!(
        out.status.success(),
        "preStop hook failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the preStop hook to drain the node",
        Duration::from_secs(10),
        status_is("503"),
    )
    .await;
}

async fn http_get(addr: &str, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

#[test]
fn rendered_yaml_parses_into_distinct_objects() {
    // Two objects with the same kind, namespace and name would silently
    // overwrite each other on install.
    for (name, r) in all_renders() {
        let docs = r.documents();
        let mut seen = std::collections::HashSet::new();
        for d in &docs {
            let key = format!(
                "{}/{}/{}",
                d["kind"],
                d["metadata"]["namespace"].as_str().unwrap_or(""),
                d["metadata"]["name"]
            );
            assert!(seen.insert(key.clone()), "{name}: duplicate {key}");
        }
        assert_eq!(documents(&r.template().expect("render")).len(), docs.len());
    }
}

/// `mediaNode.sip.tls.secretName` turns on SIP over TLS: the Secret is mounted as a
/// directory (so renewals reach the node), the node gets its flags, 5061 is a container port,
/// a load-balancer port and allowed by the NetworkPolicy; without it none of that renders.
#[test]
fn sip_tls_mounts_the_certificate_and_opens_its_port() {
    let docs = render()
        .values(example("loadbalancer.yaml"))
        .set("mediaNode.sip.tls.secretName=sip-cert")
        .documents();
    let d = find(&docs, "Deployment", MEDIA);
    let a = args(d);
    for want in [
        "--tls-bind=0.0.0.0:5061",
        "--tls-cert=/etc/switchboard/sip-tls/tls.crt",
        "--tls-key=/etc/switchboard/sip-tls/tls.key",
    ] {
        assert!(a.contains(&want.to_string()), "{want} missing: {a:?}");
    }
    let pod = &d["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "sip-tls")
        .expect("the sip-tls volume");
    assert_eq!(volume["secret"]["secretName"], "sip-cert");
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "sip-tls")
        .expect("the sip-tls mount");
    assert!(
        mount["subPath"].is_null(),
        "a subPath mount never sees renewals"
    );
    assert!(
        container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == "sip-tls" && p["containerPort"] == 5061)
    );
    let svc = find(&docs, "Service", &format!("{MEDIA}-sip"));
    assert!(
        svc["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["port"] == 5061 && p["protocol"] == "TCP")
    );
    let np = find(&docs, "NetworkPolicy", MEDIA);
    assert!(
        np["spec"]["ingress"][0]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["port"] == 5061)
    );
    let plain = render().documents();
    let a = args(find(&plain, "Deployment", MEDIA));
    assert!(!a.iter().any(|s| s.starts_with("--tls-")), "{a:?}");
}
