//! The chart on a real cluster: kubelet and containerd run the pods (scripts/cluster-up.sh, one
//! node inside network namespaces of its own), the real `helm` installs charts/switchboard with
//! images built from this workspace, `kubectl` applies a SipTrunk and a PhoneNumber, and SIPp (the
//! carrier) calls a media-node pod from the "outside" namespace; the call is bridged to a real
//! WebSocket agent there with audio both ways.
//!
//! One test binary, one test: the cluster (fixed namespace names, one kubelet) cannot be shared
//! by tests running in parallel.

use std::time::{Duration, Instant};

use switchboard_tests::cluster::{EXT_IP, EXT_NS, NODE_IP, RealCluster};
use switchboard_tests::phone::{FRAME, Phone, ulaw_pattern};
use switchboard_tests::sipp::Sipp;

const NAMESPACE: &str = "switchboard";
const RELEASE: &str = "sb";

/// Chart values for this cluster: the locally imported images (never pulled), small requests
/// (one node, two cores), and the API server's real address (no kube-proxy runs, so the
/// `kubernetes` Service's cluster IP leads nowhere).
fn values() -> String {
    format!(
        r#"
operator:
  image: {{repository: switchboard.local/switchboard-operator, tag: dev, pullPolicy: Never}}
  replicas: 2
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}}}
  extraEnv:
    - {{name: KUBERNETES_SERVICE_HOST, value: "{NODE_IP}"}}
    - {{name: KUBERNETES_SERVICE_PORT, value: "6443"}}
mediaNode:
  image: {{repository: switchboard.local/switchboard-media-node, tag: dev, pullPolicy: Never}}
  replicas: 1
  resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
"#
    )
}

fn manifests(agent_url: &str) -> String {
    format!(
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: SipTrunk
metadata: {{name: carrier, namespace: {NAMESPACE}}}
spec:
  inbound:
    allowedSources: ["{EXT_IP}/32"]
  media:
    codecs: [PCMU]
  agentEgress:
    allowedNetworks: ["{EXT_IP}/32"]
  healthCheck:
    optionsIntervalSeconds: 0
---
apiVersion: switchboard.dev/v1alpha1
kind: PhoneNumber
metadata: {{name: support, namespace: {NAMESPACE}}}
spec:
  number: "+14155550100"
  trunkRef: {{name: carrier}}
  agent:
    url: {agent_url}
"#
    )
}

#[tokio::test]
async fn the_chart_runs_on_a_real_cluster_and_answers_a_call_bridged_to_the_agent() {
    let cluster = tokio::task::spawn_blocking(RealCluster::up)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("cluster up: {e}"));
    eprintln!("{}", cluster.phases);
    let images = cluster.import_images("dev").expect("images");
    eprintln!("{images}");

    let dir = tempfile::tempdir().expect("dir");
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, values()).expect("values");
    let chart = switchboard_tests::helm::chart_dir();
    let t = Instant::now();
    let detail = |c: &RealCluster| {
        format!(
            "pods:\n{}\nevents:\n{}\nkubelet:\n{}",
            c.kubectl(&["get", "pods", "-A", "-o", "wide"])
                .unwrap_or_else(|e| e.to_string()),
            c.kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"])
                .unwrap_or_else(|e| e.to_string()),
            c.log("kubelet")
        )
    };
    if let Err(e) = cluster.helm(&[
        "install",
        RELEASE,
        &chart.display().to_string(),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--values",
        &values_file.display().to_string(),
        "--wait",
        "--timeout",
        "180s",
    ]) {
        panic!("helm install: {e}\n{}", detail(&cluster));
    }
    eprintln!("helm install --wait: {:?}", t.elapsed());

    // Two operator pods, one of them the leader; the media node Running and Ready.
    let pods = cluster
        .kubectl(&["get", "pods", "-n", NAMESPACE, "-o", "wide"])
        .expect("pods");
    eprintln!("{pods}");
    let lease = cluster
        .kubectl(&[
            "get",
            "lease",
            "-n",
            NAMESPACE,
            "switchboard-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .expect("lease");
    assert!(
        pods.lines()
            .any(|l| l.starts_with(lease.trim()) && l.contains("Running")),
        "the lease holder {lease:?} is a running operator pod:\n{pods}"
    );

    // The agent and the caller's RTP endpoint live outside, like a carrier's.
    let agent_listener = switchboard_tests::netns::bind_in(EXT_NS, || {
        std::net::TcpListener::bind(format!("{EXT_IP}:0"))
    })
    .expect("agent socket");
    let agent = switchboard_tests::agent::TestAgent::start_on(agent_listener).expect("agent");
    let rtp = switchboard_tests::netns::bind_in(EXT_NS, || {
        std::net::UdpSocket::bind(format!("{EXT_IP}:0"))
    })
    .expect("phone socket");
    let phone = Phone::start_on(rtp, 0, 0xFF);

    let manifest = dir.path().join("resources.yaml");
    std::fs::write(&manifest, manifests(&agent.url())).expect("manifests");
    cluster
        .kubectl(&["apply", "-f", &manifest.display().to_string()])
        .expect("kubectl apply");
    for obj in ["siptrunk/carrier", "phonenumber/support"] {
        cluster
            .kubectl(&[
                "wait",
                "-n",
                NAMESPACE,
                "--for=condition=Programmed",
                obj,
                "--timeout=60s",
            ])
            .unwrap_or_else(|e| panic!("{obj} Programmed: {e}\n{}", detail(&cluster)));
    }

    // The carrier calls the media-node pod (hostNetwork: the node's address).
    let sipp = Sipp::template(
        "media_uac_bye.xml",
        &[
            ("@INFO@", ""),
            ("@RTP_IP@", EXT_IP),
            ("@RTP_PORT@", &phone.port.to_string()),
            ("@PT@", "0"),
            ("@CODEC@", "PCMU"),
            ("@BYE_WITHIN_MS@", "30000"),
        ],
    )
    .expect("scenario")
    .netns(EXT_NS)
    .args(["-s", "14155550100", "-mp", "16000"])
    .timeout(Duration::from_secs(50));
    let node_sip: std::net::SocketAddr = format!("{NODE_IP}:5060").parse().expect("addr");
    let call = tokio::spawn(async move { sipp.run_client_from(node_sip, EXT_IP, 15060).await });

    let conn = agent.connection(0, Duration::from_secs(20)).await;
    conn.wait_until("start", Duration::from_secs(10), |c| {
        !c.events("start").is_empty()
    })
    .await;
    // Caller -> agent.
    let to_agent = ulaw_pattern(25, 11);
    phone.send_audio(&to_agent);
    conn.wait_until(
        "the caller's audio at the agent",
        Duration::from_secs(10),
        |c| c.audio().windows(to_agent.len()).any(|w| w == to_agent),
    )
    .await;
    // Agent -> caller.
    let to_caller = ulaw_pattern(25, 12);
    conn.send_media(&to_caller);
    phone
        .wait_packets(
            "the agent's audio at the caller",
            Duration::from_secs(10),
            |p| {
                let got: Vec<u8> = p
                    .iter()
                    .filter(|r| r.pt == 0)
                    .flat_map(|r| r.payload.clone())
                    .collect();
                got.windows(FRAME * 25).any(|w| w == to_caller)
            },
        )
        .await;
    // The agent hangs up: the carrier gets the BYE.
    conn.send_raw(r#"{"event":"hangup"}"#);
    let run = call.await.expect("join").expect("sipp");
    run.assert_success("a call to the media-node pod, answered, bridged and hung up");

    let pods_after = cluster
        .kubectl(&["get", "pods", "-n", NAMESPACE])
        .expect("pods");
    assert!(
        !pods_after.contains("CrashLoopBackOff") && !pods_after.contains("Error"),
        "{pods_after}"
    );
    let down = tokio::task::spawn_blocking(move || cluster.down())
        .await
        .expect("join")
        .expect("cluster down leaves nothing behind");
    eprintln!("{down}");
}
