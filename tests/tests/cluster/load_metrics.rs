//! The active-calls numbers under load match reality: a short, bounded SIPp load run holds
//! dozens of bridged calls at once, and while they are held each node's
//! `switchboard_sip_active_calls`, the node's status as the operator reads it (NodeControl
//! `WatchStatus`), and in a fleet the SipTrunk's `status.activeCalls` written by the real
//! operator, all equal SIPp's own count of established calls.
//!
//! SIPp's count comes from `-trace_counts` (per-step message counts, written every second):
//! calls it ACKed (answered) minus calls it sent BYE for, i.e. calls established right now.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use switchboard_operator::crd::{PhoneNumber, SipTrunk};
use switchboard_proto::v1alpha1 as pb;
use switchboard_tests::agent::TestAgent;
use switchboard_tests::envtest::TestCluster;
use switchboard_tests::fleet::{ControlledNode, register_pod};
use switchboard_tests::node::{MediaNode, free_port, http_request};
use switchboard_tests::operator::Operator;
use switchboard_tests::poll::eventually;
use switchboard_tests::sipp::scenario;

/// Hold time of each call: long enough to sample while every call is up.
const HOLD: Duration = Duration::from_secs(10);
/// New calls per second SIPp places.
const RATE: u32 = 20;
/// Bound on one SIPp load run (ramp, hold, hang-up).
const RUN_LIMIT: Duration = Duration::from_secs(45);

/// SIPp's per-step message counts (latest row of the `-trace_counts` file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counts {
    /// ACKs sent (calls that were answered).
    acks: u64,
    /// BYEs sent.
    byes: u64,
    /// 200 OKs received for those BYEs.
    bye_ok: u64,
}

#[derive(Debug, thiserror::Error)]
enum CountsError {
    #[error("no counts file yet in {0}")]
    Missing(PathBuf),
    #[error("reading the counts file: {0}")]
    Io(#[from] std::io::Error),
    #[error("counts file has no data row yet")]
    Empty,
    #[error("counts file has no column ending in {0}")]
    Column(&'static str),
    #[error("counts column {0} is not a number: {1:?}")]
    Number(&'static str, String),
}

fn parse_counts(text: &str) -> Result<Counts, CountsError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().ok_or(CountsError::Empty)?.split(';').collect();
    let row: Vec<&str> = lines
        .next_back()
        .ok_or(CountsError::Empty)?
        .split(';')
        .collect();
    let col = |suffix: &'static str| -> Result<u64, CountsError> {
        // Columns are `<step>_<message>_<counter>`, steps in scenario order.
        let idx = header
            .iter()
            .position(|h| h.ends_with(suffix))
            .ok_or(CountsError::Column(suffix))?;
        let v = row.get(idx).copied().unwrap_or_default().trim();
        v.parse()
            .map_err(|_| CountsError::Number(suffix, v.to_owned()))
    };
    // The INVITE's 200 comes before the BYE's: the BYE's is the last `_200_Recv`.
    let bye_ok_idx = header
        .iter()
        .rposition(|h| h.ends_with("_200_Recv"))
        .ok_or(CountsError::Column("_200_Recv"))?;
    let bye_ok_text = row.get(bye_ok_idx).copied().unwrap_or_default().trim();
    Ok(Counts {
        acks: col("_ACK_Sent")?,
        byes: col("_BYE_Sent")?,
        bye_ok: bye_ok_text
            .parse()
            .map_err(|_| CountsError::Number("_200_Recv", bye_ok_text.to_owned()))?,
    })
}

/// One SIPp load run in the background: `calls` calls at `RATE` per second, all held at once
/// for `HOLD`, its counts file readable while it runs.
struct LoadRun {
    what: String,
    calls: u64,
    dir: tempfile::TempDir,
    child: tokio::process::Child,
}

impl Counts {
    /// Established calls: answered (ACKed) and not hung up yet.
    fn established(&self) -> u64 {
        self.acks.saturating_sub(self.byes)
    }
}

impl LoadRun {
    fn spawn(what: &str, node: SocketAddr, number: &str, calls: u32) -> anyhow::Result<LoadRun> {
        let dir = tempfile::tempdir()?;
        let text = std::fs::read_to_string(scenario("load_uac_hold.xml"))?
            .replace("@HOLD_MS@", &HOLD.as_millis().to_string());
        let sf = dir.path().join("load_uac_hold.xml");
        std::fs::write(&sf, text)?;
        let out = std::fs::File::create(dir.path().join("stdout.log"))?;
        let err = std::fs::File::create(dir.path().join("stderr.log"))?;
        let calls_s = calls.to_string();
        let child = tokio::process::Command::new("sipp")
            .arg(node.to_string())
            .args(["-i", "127.0.0.1", "-p", &free_port().to_string()])
            .arg("-sf")
            .arg(&sf)
            .args(["-s", number, "-m", &calls_s, "-l", &calls_s])
            .args(["-r", &RATE.to_string()])
            .args(["-trace_counts", "-fd", "1", "-trace_err", "-nostdin"])
            .args([
                "-timeout",
                &format!("{}s", RUN_LIMIT.as_secs()),
                "-timeout_error",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()?;
        Ok(LoadRun {
            what: what.to_owned(),
            calls: u64::from(calls),
            dir,
            child,
        })
    }

    fn file_ending(&self, suffix: &str) -> Option<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(suffix))
    }

    fn counts(&self) -> Result<Counts, CountsError> {
        let path = self
            .file_ending("_counts.csv")
            .ok_or_else(|| CountsError::Missing(self.dir.path().to_owned()))?;
        parse_counts(&std::fs::read_to_string(path)?)
    }

    /// True when SIPp holds every call of the run, established, none hung up yet.
    fn all_held(&self) -> Result<Counts, String> {
        let c = self.counts().map_err(|e| e.to_string())?;
        if c.established() == self.calls && c.acks == self.calls && c.byes == 0 {
            Ok(c)
        } else {
            Err(format!("{}: {c:?}", self.what))
        }
    }

    async fn wait_all_held(&self) -> Counts {
        eventually(
            &format!("SIPp ({}) to hold all {} calls", self.what, self.calls),
            Duration::from_secs(20),
            || async { self.all_held() },
        )
        .await
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Waits for SIPp to exit; asserts every call succeeded and every BYE got its 200.
    async fn finish(mut self) {
        let status = tokio::time::timeout(RUN_LIMIT + Duration::from_secs(10), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("SIPp ({}) did not exit", self.what))
            .expect("waiting for sipp");
        let errors = self
            .file_ending("_errors.log")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        assert_eq!(
            status.code(),
            Some(0),
            "SIPp ({}) failed calls: stderr:\n{}\nerrors:\n{}",
            self.what,
            self.read("stderr.log"),
            errors
        );
        let c = self.counts().expect("final counts");
        assert_eq!(
            (c.acks, c.byes, c.bye_ok, c.established()),
            (self.calls, self.calls, self.calls, 0),
            "SIPp ({}) final counts {c:?}",
            self.what
        );
    }
}

/// Every `switchboard_sip_active_calls` series of a node summed (the per-node total).
async fn node_active_calls(http: SocketAddr) -> Result<u64, String> {
    let (code, text) = http_request(http, "GET", "/metrics", None)
        .await
        .map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("/metrics answered {code}"));
    }
    let mut total = 0.0;
    for l in text
        .lines()
        .filter(|l| l.starts_with("switchboard_sip_active_calls{"))
    {
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("bad sample {l:?}"))?;
        total += v;
    }
    Ok(total as u64)
}

/// The node's status as the operator reads it: the first message of a fresh `WatchStatus`
/// stream, sent at once with the current numbers.
async fn node_status(control: SocketAddr) -> Result<pb::NodeStatus, String> {
    let fut = async {
        let mut client =
            pb::node_control_client::NodeControlClient::connect(format!("http://{control}"))
                .await
                .map_err(|e| e.to_string())?;
        let mut stream = client
            .watch_status(pb::WatchStatusRequest {})
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        stream
            .message()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "status stream ended".to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| "status stream timed out".to_owned())?
}

fn trunk_calls(status: &pb::NodeStatus, trunk: &str) -> u32 {
    status
        .trunks
        .iter()
        .filter(|t| t.trunk_id == trunk)
        .map(|t| t.inbound + t.outbound)
        .sum()
}

#[tokio::test]
async fn load_active_calls_metric_matches_sipp_established_calls() {
    const CALLS: u32 = 40;
    let agent = TestAgent::start().await.expect("agent");
    let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier", "enabled": true,
            "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]},
            "media": {"codecs": ["CODEC_PCMU"], "rtpTimeoutSeconds": 60}
        }],
        "numbers": [{
            "id": "demo/support", "e164": "+15550001111", "trunkId": "demo/carrier",
            "inbound": true, "outbound": true, "agent": {"url": agent.url()}
        }]
    });
    let node = MediaNode::start(
        &config,
        &["--control-bind", &control.to_string(), "--control-insecure"],
    )
    .await
    .expect("node starts");
    let series = r#"switchboard_sip_active_calls{direction="inbound",trunk="demo/carrier"}"#;
    assert_eq!(node.metric(series).await, 0.0);

    let run = LoadRun::spawn("single node", node.sip, "15550001111", CALLS).expect("sipp");
    run.wait_all_held().await;
    // Sample while SIPp reports every call established (its count bracketing each sample).
    let mut samples = 0;
    for _ in 0..5 {
        let before = run.all_held().expect("calls still held before the sample");
        let metric = node.metric(series).await;
        let total = node_active_calls(node.http).await.expect("metrics");
        let status = node_status(control).await.expect("node status");
        let after = run.all_held().expect("calls still held after the sample");
        assert_eq!(before, after);
        let sipp = after.established();
        assert_eq!(metric as u64, sipp, "active calls metric vs SIPp {after:?}");
        assert_eq!(total, sipp, "per-node total vs SIPp {after:?}");
        assert_eq!(
            u64::from(status.active_calls),
            sipp,
            "operator's view vs SIPp"
        );
        assert_eq!(
            u64::from(trunk_calls(&status, "demo/carrier")),
            sipp,
            "{status:?}"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(samples, 5);
    assert_eq!(agent.connections(), CALLS as usize, "every call bridged");

    run.finish().await;
    eventually(
        "active calls back to 0",
        Duration::from_secs(10),
        || async {
            let v = node.metric(series).await;
            if v == 0.0 { Ok(()) } else { Err(v.to_string()) }
        },
    )
    .await;
    assert_eq!(
        node.metric(
            r#"switchboard_sip_calls_total{code="200",direction="inbound",result="answered"}"#
        )
        .await,
        f64::from(CALLS)
    );
    let status = node_status(control).await.expect("node status");
    assert_eq!(status.active_calls, 0, "{status:?}");
}

// --- fleet: real API server, operator and two media nodes --------------------------------

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(40);

fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

fn dynamic_api<K: kube::Resource<DynamicType = ()>>(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<K>(&()))
}

async fn apply<K: kube::Resource<DynamicType = ()>>(client: &Client, doc: Value) {
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    dynamic_api::<K>(client)
        .patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

async fn trunk_status(client: &Client, name: &str) -> Result<Value, String> {
    let t = dynamic_api::<SipTrunk>(client)
        .get(name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(t.data["status"].clone())
}

#[tokio::test]
async fn load_fleet_trunk_active_calls_sum_the_nodes() {
    const NUMBER: &str = "+14155550100";
    let per_node: [u32; 2] = [24, 16];
    let cluster = TestCluster::start().await.expect("cluster");
    cluster.install_crds(crds_dir()).await.expect("crds");
    let client = cluster.client().await.expect("client");
    let mut nodes = Vec::new();
    for i in 0..per_node.len() {
        let n = ControlledNode::start(&format!("media-{i}"), &[]);
        register_pod(&client, NS, &n).await;
        nodes.push(n);
    }
    let agent = TestAgent::start().await.expect("agent");
    let _operator = Operator::start_kube(
        cluster.kubeconfig_path(),
        "op",
        &["--no-leader-election", "--lease-duration-seconds", "4"],
    );
    apply::<SipTrunk>(
        &client,
        json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SipTrunk",
               "metadata": {"name": "carrier", "namespace": NS},
               "spec": {"inbound": {"allowedSources": ["127.0.0.0/8"]},
                        "media": {"rtpTimeoutSeconds": 60},
                        "healthCheck": {"optionsIntervalSeconds": 0}}}),
    )
    .await;
    apply::<PhoneNumber>(
        &client,
        json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "PhoneNumber",
               "metadata": {"name": "main", "namespace": NS},
               "spec": {"number": NUMBER, "trunkRef": {"name": "carrier"},
                        "agent": {"url": agent.url()}}}),
    )
    .await;
    for n in &nodes {
        eventually(&format!("{} programmed", n.name), WAIT, || async {
            match n.readyz().await {
                Some(200) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    eventually("the trunk programmed on both nodes", WAIT, || async {
        let s = trunk_status(&client, "carrier").await?;
        if s["nodes"] == json!({"programmed": 2, "total": 2}) && s["activeCalls"] == 0 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;

    let runs: Vec<LoadRun> = nodes
        .iter()
        .zip(per_node)
        .map(|(n, calls)| LoadRun::spawn(&n.name, n.sip, NUMBER, calls).expect("sipp"))
        .collect();
    for r in &runs {
        r.wait_all_held().await;
    }
    // Each node's metric equals what SIPp holds on it.
    for ((n, r), calls) in nodes.iter().zip(&runs).zip(per_node) {
        let before = r.all_held().expect("held");
        let total = node_active_calls(n.http).await.expect("metrics");
        let after = r.all_held().expect("held");
        assert_eq!(before, after);
        assert_eq!(after.established(), u64::from(calls));
        assert_eq!(
            total,
            after.established(),
            "{} metric vs SIPp {after:?}",
            n.name
        );
    }
    // The operator sums the nodes into the trunk's status while the calls are still held.
    let want: u32 = per_node.iter().sum();
    let status = eventually(
        &format!("SipTrunk status.activeCalls = {want}"),
        Duration::from_secs(8),
        || async {
            let s = trunk_status(&client, "carrier").await?;
            if s["activeCalls"] == want {
                Ok(s)
            } else {
                Err(s["activeCalls"].to_string())
            }
        },
    )
    .await;
    for r in &runs {
        r.all_held()
            .unwrap_or_else(|e| panic!("calls ended before the status was read: {e}; {status}"));
    }

    for r in runs {
        r.finish().await;
    }
    eventually("SipTrunk status.activeCalls back to 0", WAIT, || async {
        let s = trunk_status(&client, "carrier").await?;
        if s["activeCalls"] == 0 {
            Ok(())
        } else {
            Err(s["activeCalls"].to_string())
        }
    })
    .await;
    for n in &nodes {
        assert_eq!(node_active_calls(n.http).await, Ok(0), "{}", n.name);
    }
}
