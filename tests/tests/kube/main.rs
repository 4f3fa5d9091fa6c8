//! The chart on a real cluster: kubelets and containerd run the pods (scripts/cluster-up.sh,
//! three nodes inside network namespaces of their own), the real `helm` installs charts/switchboard
//! with images built from this workspace, `kubectl` applies a SipTrunk and a PhoneNumber, and SIPp
//! (the carrier) calls the media-node pods from the "outside" namespace, bridged to a real
//! WebSocket agent there. Then, on the same cluster: a rolling upgrade with 20 calls up, scale-in
//! with calls on one pod, the operator leader's pod deleted, a media-node pod killed mid-call (its
//! carrier registration moves to another pod), and the HPA scaling the media nodes out on CPU
//! under call load and back in.
//!
//! One test binary, one test: the cluster (fixed namespace names) cannot be shared by tests
//! running in parallel, and starting it once keeps the run short.

use std::time::{Duration, Instant};

use serde_json::Value;
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
  replicas: 2
  resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
autoscaling: {{enabled: false}}
"#
    )
}

fn manifests(agent_url: &str, registrar_port: u16) -> String {
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
    # The load calls (SIPp) send no RTP; the calls outlast the default 30 s.
    rtpTimeoutSeconds: 300
  outbound:
    gateways:
      - host: {EXT_IP}
        port: {registrar_port}
    register:
      expiresSeconds: 60
      contactUser: switchboard
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

/// A media-node pod as the test sees it.
#[derive(Debug, Clone)]
struct MediaPod {
    name: String,
    /// hostNetwork: its node's address.
    ip: String,
    ready: bool,
    terminating: bool,
    /// The operator's `controller.kubernetes.io/pod-deletion-cost`.
    cost: Option<i64>,
    image: String,
}

fn media_pods(c: &RealCluster) -> Vec<MediaPod> {
    let out = c
        .kubectl(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/component=media-node",
            "-o",
            "json",
        ])
        .expect("kubectl get pods");
    let v: Value = serde_json::from_str(&out).expect("pods JSON");
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|p| MediaPod {
                    name: p["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                    ip: p["status"]["podIP"].as_str().unwrap_or("").to_owned(),
                    ready: p["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    }),
                    terminating: !p["metadata"]["deletionTimestamp"].is_null(),
                    cost:
                        p["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"]
                            .as_str()
                            .and_then(|c| c.parse().ok()),
                    image: p["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Local SIP and media ports in the outside namespace, never reused in this run.
fn ext_ports() -> (u16, u16) {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(20000);
    // SIPp binds its media port and the three above it (RTCP, video).
    let p = NEXT.fetch_add(10, std::sync::atomic::Ordering::Relaxed);
    (p, p + 4)
}

/// `calls` calls to the media node at `ip`, each up for `hold_ms` and ended by the caller's own
/// BYE: any call the node drops (its BYE, a refusal) fails the run.
fn long_calls(
    ip: &str,
    calls: u32,
    hold_ms: u32,
) -> tokio::task::JoinHandle<anyhow::Result<switchboard_tests::sipp::SippRun>> {
    let (sip, media) = ext_ports();
    let n = calls.to_string();
    let sipp = Sipp::template("uac_long.xml", &[("@HOLD_MS@", &hold_ms.to_string())])
        .expect("scenario")
        .netns(EXT_NS)
        .args([
            "-s",
            "14155550100",
            "-m",
            &n,
            "-l",
            &n,
            "-r",
            "20",
            "-mp",
            &media.to_string(),
        ])
        .timeout(Duration::from_millis(u64::from(hold_ms)) + Duration::from_secs(30));
    let to: std::net::SocketAddr = format!("{ip}:5060").parse().expect("addr");
    tokio::spawn(async move { sipp.run_client_from(to, EXT_IP, sip).await })
}

/// One short call to `ip`: `Ok(true)` answered, `Ok(false)` refused with 503 and Retry-After
/// (a draining node), `Err` anything else (with SIPp's account of it).
async fn probe(ip: &str) -> Result<bool, String> {
    let (sip, media) = ext_ports();
    let sipp = Sipp::new(switchboard_tests::sipp::scenario("uac_probe.xml"))
        .netns(EXT_NS)
        .args(["-s", "14155550100", "-mp", &media.to_string()])
        .timeout(Duration::from_secs(8));
    let to: std::net::SocketAddr = format!("{ip}:5060").parse().expect("addr");
    match sipp.run_client_from(to, EXT_IP, sip).await {
        Ok(run) if run.code == Some(0) => Ok(!run.messages.contains("SIP/2.0 503")),
        Ok(run) => Err(format!("{ip}: {}\n{}", run.errors, run.stdout)),
        Err(e) => Err(format!("{ip}: {e}")),
    }
}

/// A carrier registrar in the outside namespace: answers every request 200 (REGISTER with the
/// Contact and expiry asked for) and records each REGISTER's source address and Call-ID.
struct Registrar {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String, String)>>>,
}

impl Registrar {
    fn start() -> Registrar {
        let sock = switchboard_tests::netns::bind_in(EXT_NS, || {
            std::net::UdpSocket::bind(format!("{EXT_IP}:0"))
        })
        .expect("registrar socket");
        sock.set_nonblocking(true).expect("nonblocking");
        let port = sock.local_addr().expect("addr").port();
        let sock = tokio::net::UdpSocket::from_std(sock).expect("tokio socket");
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String, String)>>> =
            Default::default();
        let log = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let Some(first) = text.lines().next() else {
                    continue;
                };
                if first.starts_with("SIP/2.0") || first.starts_with("ACK ") {
                    continue;
                }
                let header = |name: &str| {
                    text.lines()
                        .filter(|l| {
                            l.split(':')
                                .next()
                                .is_some_and(|h| h.trim().eq_ignore_ascii_case(name))
                        })
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                };
                let mut resp = String::from("SIP/2.0 200 OK\r\n");
                for name in ["Via", "From", "Call-ID", "CSeq"] {
                    for l in header(name) {
                        resp.push_str(&l);
                        resp.push_str("\r\n");
                    }
                }
                for l in header("To") {
                    resp.push_str(&l);
                    if !l.contains("tag=") {
                        resp.push_str(";tag=reg1");
                    }
                    resp.push_str("\r\n");
                }
                if first.starts_with("REGISTER") {
                    for l in header("Contact") {
                        resp.push_str(&l);
                        resp.push_str(";expires=60\r\n");
                    }
                    let call_id = header("Call-ID").first().cloned().unwrap_or_default();
                    log.lock().expect("lock").push((
                        Instant::now(),
                        from.ip().to_string(),
                        call_id,
                    ));
                }
                resp.push_str("Content-Length: 0\r\n\r\n");
                let _ = sock.send_to(resp.as_bytes(), from).await;
            }
        });
        Registrar { port, seen }
    }

    /// REGISTERs seen since `since`: (source IP, Call-ID).
    fn since(&self, since: Instant) -> Vec<(String, String)> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(t, _, _)| *t >= since)
            .map(|(_, ip, id)| (ip.clone(), id.clone()))
            .collect()
    }
}

#[tokio::test]
async fn the_chart_on_a_real_cluster_takes_calls_upgrades_without_dropping_any_and_scales_in_keeping_busy_pods()
 {
    let cluster = tokio::task::spawn_blocking(|| RealCluster::up(3))
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
    let registrar = Registrar::start();
    std::fs::write(&manifest, manifests(&agent.url(), registrar.port)).expect("manifests");
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

    // The carrier calls a media-node pod (hostNetwork: its node's address).
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
    // The scheduler put the two media nodes on two of the three nodes.
    let first = media_pods(&cluster)
        .into_iter()
        .find(|p| p.ready)
        .expect("a ready media node");
    let node_sip: std::net::SocketAddr = format!("{}:5060", first.ip).parse().expect("addr");
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

    let first_connections = agent.connections();

    // ---- Rolling upgrade with 20 calls up: a new image tag for the media nodes.
    let before = media_pods(&cluster);
    assert_eq!(before.iter().filter(|p| p.ready).count(), 2, "{before:?}");
    let images = cluster.import_images("dev2").expect("images dev2");
    eprintln!("{images}");
    let mut calls: Vec<_> = before
        .iter()
        .map(|p| long_calls(&p.ip, 10, 15000))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.connections() < first_connections + 20 {
        if let Some(i) = calls.iter().position(|c| c.is_finished()) {
            let run = calls.swap_remove(i).await.expect("join");
            panic!("calls ended before the upgrade: {run:?}");
        }
        assert!(
            Instant::now() < deadline,
            "20 calls bridged to the agent before the upgrade (agent connections: {})",
            agent.connections()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let upgrade_started = Instant::now();
    let upgrade = {
        let values_file = values_file.clone();
        let chart = chart.clone();
        let kubeconfig = cluster.kubeconfig();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("nsenter")
                .arg(format!(
                    "--net=/run/netns/{}",
                    switchboard_tests::cluster::NODE_NS
                ))
                .arg("--")
                .arg(switchboard_tests::envtest::tool("helm"))
                .args([
                    "upgrade",
                    RELEASE,
                    &chart.display().to_string(),
                    "--namespace",
                    NAMESPACE,
                    "--values",
                    &values_file.display().to_string(),
                    "--set",
                    "mediaNode.image.tag=dev2",
                ])
                .env("KUBECONFIG", kubeconfig)
                .output()
        })
    };
    let old: std::collections::HashSet<String> = before.iter().map(|p| p.name.clone()).collect();
    let (mut answered, mut refused_by_draining, mut answered_before_drain) = (0, 0, 0);
    let mut refusals: Vec<String> = Vec::new();
    let rollout_done = loop {
        let pods = media_pods(&cluster);
        let done = pods.iter().all(|p| !old.contains(&p.name))
            && pods
                .iter()
                .filter(|p| p.ready && p.image.ends_with(":dev2"))
                .count()
                == 2;
        if done {
            break upgrade_started.elapsed();
        }
        assert!(
            upgrade_started.elapsed() < Duration::from_secs(120),
            "rollout not done in 120 s: {pods:?}\n{}",
            detail(&cluster)
        );
        let calls_up = calls.iter().any(|c| !c.is_finished());
        for p in &pods {
            if p.ready && !p.terminating {
                match probe(&p.ip).await {
                    Ok(true) => answered += 1,
                    // It started draining since the listing.
                    Ok(false) => refusals.push(p.name.clone()),
                    Err(e) => panic!("a new call to ready pod {} failed: {e}", p.name),
                }
            } else if p.terminating && calls_up && old.contains(&p.name) {
                // A terminating pod that still has calls is listening. Once its preStop hook
                // has started the drain it refuses new calls; in the moment between the
                // deletion and the hook it may still answer one (and keeps it to its end).
                match probe(&p.ip).await {
                    Ok(false) => refused_by_draining += 1,
                    Ok(true) => answered_before_drain += 1,
                    Err(e) => panic!(
                        "terminating pod {} did not answer or refuse cleanly: {e}",
                        p.name
                    ),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    eprintln!(
        "rollout with 20 calls up: {rollout_done:?}; probes during it: {answered} answered, \
         {refused_by_draining} refused by draining pods, {} refused by pods that began draining, \
         {answered_before_drain} answered by terminating pods before their drain began",
        refusals.len()
    );
    for name in &refusals {
        assert!(
            old.contains(name),
            "only old (draining) pods refuse calls: {name}"
        );
    }
    assert!(answered > 0, "new calls were answered during the rollout");
    assert!(
        refused_by_draining > 0,
        "a draining pod refused a new call with 503 + Retry-After"
    );
    for c in calls {
        c.await
            .expect("join")
            .expect("sipp")
            .assert_success("10 calls up through the upgrade, each ended by its own BYE");
    }
    let helm_out = upgrade.await.expect("join").expect("helm upgrade");
    assert!(
        helm_out.status.success(),
        "helm upgrade: {}",
        String::from_utf8_lossy(&helm_out.stderr)
    );

    // ---- Scale-in keeps the busy pod.
    cluster
        .kubectl(&[
            "scale",
            "-n",
            NAMESPACE,
            "deployment/sb-switchboard-media-node",
            "--replicas=3",
        ])
        .expect("scale to 3");
    cluster
        .kubectl(&[
            "rollout",
            "status",
            "-n",
            NAMESPACE,
            "deployment/sb-switchboard-media-node",
            "--timeout=60s",
        ])
        .expect("3 replicas");
    let three = media_pods(&cluster);
    assert_eq!(three.iter().filter(|p| p.ready).count(), 3, "{three:?}");
    let busy = three[1].clone();
    let busy_calls = long_calls(&busy.ip, 3, 25000);
    // The operator marks the busy pod as costly to delete.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pods = media_pods(&cluster);
        let busy_cost = pods
            .iter()
            .find(|p| p.name == busy.name)
            .and_then(|p| p.cost);
        let idle_max = pods
            .iter()
            .filter(|p| p.name != busy.name)
            .filter_map(|p| p.cost)
            .max();
        if busy_cost.is_some_and(|b| idle_max.is_none_or(|i| b > i)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deletion costs never favoured the busy pod: {pods:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cluster
        .kubectl(&[
            "scale",
            "-n",
            NAMESPACE,
            "deployment/sb-switchboard-media-node",
            "--replicas=1",
        ])
        .expect("scale to 1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let survivor = loop {
        let pods = media_pods(&cluster);
        if pods.len() == 1 {
            break pods[0].clone();
        }
        assert!(Instant::now() < deadline, "scale-in not done: {pods:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        survivor.name, busy.name,
        "the ReplicaSet kept the pod with calls"
    );

    // ---- The operator leader's pod deleted: the other replica takes over within the lease.
    let holder = |c: &RealCluster| {
        c.kubectl(&[
            "get",
            "lease",
            "-n",
            NAMESPACE,
            "switchboard-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap_or_default()
        .trim()
        .to_owned()
    };
    let leader = holder(&cluster);
    let deleted_at = Instant::now();
    cluster
        .kubectl(&["delete", "pod", "-n", NAMESPACE, &leader, "--wait=false"])
        .expect("delete the leader");
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        let h = holder(&cluster);
        if !h.is_empty() && h != leader {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader 30 s after deleting {leader}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let takeover = deleted_at.elapsed();
    eprintln!("leader {leader} deleted; {new_leader} leads after {takeover:?}");
    assert!(
        takeover <= Duration::from_secs(15),
        "the new leader took over within the 15 s lease: {takeover:?}"
    );
    // Calls were unaffected: the busy pod's calls end with their own BYEs, and a new call is
    // answered under the new leader.
    busy_calls
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("3 calls through scale-in and the leader's loss");
    assert_eq!(
        probe(&survivor.ip).await,
        Ok(true),
        "a new call after the hand-over"
    );

    // ---- A media-node pod killed mid-call: only its calls are affected, and the carrier
    // registration it held moves to another pod.
    cluster
        .kubectl(&[
            "scale",
            "-n",
            NAMESPACE,
            "deployment/sb-switchboard-media-node",
            "--replicas=2",
        ])
        .expect("scale to 2");
    cluster
        .kubectl(&[
            "rollout",
            "status",
            "-n",
            NAMESPACE,
            "deployment/sb-switchboard-media-node",
            "--timeout=60s",
        ])
        .expect("2 replicas");
    let two: Vec<MediaPod> = media_pods(&cluster)
        .into_iter()
        .filter(|p| p.ready)
        .collect();
    assert_eq!(two.len(), 2, "{two:?}");
    // Which pod registers: the one whose address the registrar hears from.
    let deadline = Instant::now() + Duration::from_secs(30);
    let start = Instant::now();
    let (owner_ip, owner_call_id) = loop {
        if let Some((ip, id)) = registrar
            .since(start)
            .into_iter()
            .find(|(ip, _)| two.iter().any(|p| &p.ip == ip))
        {
            break (ip, id);
        }
        assert!(
            Instant::now() < deadline,
            "no REGISTER from the media nodes: {two:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let owner = two
        .iter()
        .find(|p| p.ip == owner_ip)
        .expect("owner")
        .clone();
    let other = two
        .iter()
        .find(|p| p.ip != owner_ip)
        .expect("other")
        .clone();
    let doomed = long_calls(&owner.ip, 3, 15000);
    let spared = long_calls(&other.ip, 3, 15000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let connections = agent.connections();
    while agent.connections() < connections + 6 {
        assert!(Instant::now() < deadline, "6 calls bridged before the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed_at = Instant::now();
    cluster
        .kubectl(&[
            "delete",
            "pod",
            "-n",
            NAMESPACE,
            &owner.name,
            "--grace-period=0",
            "--force",
        ])
        .expect("kill the registering pod");
    let deadline = Instant::now() + Duration::from_secs(45);
    let moved = loop {
        if let Some(r) = registrar
            .since(killed_at)
            .into_iter()
            .find(|(_, id)| *id != owner_call_id)
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the registration did not move within 45 s of the kill: {:?}",
            registrar.since(killed_at)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "registration moved to {} {:?} after the kill",
        moved.0,
        killed_at.elapsed()
    );
    spared
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("the other pod's calls are untouched by the kill");
    let lost = doomed.await.expect("join").expect("sipp");
    assert_ne!(
        lost.code,
        Some(0),
        "the killed pod's calls could not end normally"
    );

    // ---- Autoscaling: the chart's HPA scales the media nodes out on CPU under call load and
    // back in (metrics-server; the active-calls metric needs prometheus-adapter, not available
    // here).
    let autoscale = dir.path().join("autoscale.yaml");
    std::fs::write(
        &autoscale,
        r#"
autoscaling:
  enabled: true
  minReplicas: 1
  maxReplicas: 3
  cpu: {enabled: true, targetUtilization: 25}
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 0
      policies: [{type: Pods, value: 2, periodSeconds: 5}]
    scaleDown:
      stabilizationWindowSeconds: 10
      policies: [{type: Pods, value: 2, periodSeconds: 5}]
"#,
    )
    .expect("autoscale values");
    cluster
        .helm(&[
            "upgrade",
            RELEASE,
            &chart.display().to_string(),
            "--namespace",
            NAMESPACE,
            "--values",
            &values_file.display().to_string(),
            "--values",
            &autoscale.display().to_string(),
            "--set",
            "mediaNode.image.tag=dev2",
        ])
        .expect("helm upgrade with autoscaling");
    let replicas = |c: &RealCluster| -> (usize, String) {
        let pods = media_pods(c);
        let hpa = c
            .kubectl(&[
                "get",
                "hpa",
                "-n",
                NAMESPACE,
                "sb-switchboard-media-node",
                "-o",
                "jsonpath={.status.currentReplicas} {.status.desiredReplicas} {.status.currentMetrics[0].resource.current.averageUtilization}%",
            ])
            .unwrap_or_default();
        (
            pods.iter().filter(|p| p.ready && !p.terminating).count(),
            hpa,
        )
    };
    // Idle: the HPA reads the pods' CPU and settles at one replica.
    let deadline = Instant::now() + Duration::from_secs(90);
    let idle = loop {
        let (n, hpa) = replicas(&cluster);
        if n == 1 && media_pods(&cluster).len() == 1 && hpa.ends_with('%') && !hpa.ends_with(" %") {
            break media_pods(&cluster).remove(0);
        }
        assert!(
            Instant::now() < deadline,
            "HPA never settled at 1 replica: {n} ready, hpa {hpa}\n{}",
            cluster.log("metrics-server")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Load: 30 calls on the one media node; the HPA adds nodes.
    let load_started = Instant::now();
    let load = long_calls(&idle.ip, 30, 45000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let scaled_out = loop {
        let (n, hpa) = replicas(&cluster);
        if n >= 2 {
            break (n, hpa, load_started.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "no scale-out under 30 calls: {n} ready, hpa {hpa}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "HPA scale-out under 30 calls: {} ready pods after {:?} (hpa: {})",
        scaled_out.0, scaled_out.2, scaled_out.1
    );
    load.await
        .expect("join")
        .expect("sipp")
        .assert_success("30 calls through the scale-out, each ended by its own BYE");
    // The calls ended: back to one replica.
    let ended = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (n, hpa) = replicas(&cluster);
        if n == 1 && media_pods(&cluster).len() == 1 {
            eprintln!(
                "HPA scale-in to 1 replica {:?} after the calls ended (hpa: {hpa})",
                ended.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scale-in after the load: {n} ready, hpa {hpa}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let down = tokio::task::spawn_blocking(move || cluster.down())
        .await
        .expect("join")
        .expect("cluster down leaves nothing behind");
    eprintln!("{down}");
}
