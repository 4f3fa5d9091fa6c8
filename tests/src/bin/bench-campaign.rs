//! Campaign benchmarks (`CallCampaign`), against a real kube-apiserver + etcd,
//! the operator and two real media nodes.
//!
//! 1. 100,000 callees in ConfigMaps, a campaign whose calling window is
//!    closed (nothing is dialled): operator RSS before the campaign exists
//!    and once its status shows total=100000, the time from create to that
//!    status, and the size of the CallCampaign object as JSON.
//! 2. A second campaign over the same 100,000 callees that dials through the
//!    2 media nodes to a SIPp carrier (answers, holds 0-200 ms, hangs up) at
//!    50 calls per second, 50 at once, until ~2,000 callees are done; then
//!    `suspend: true`. Achieved dials per second, operator RSS, the object's
//!    size, the results ConfigMaps, and who used the CPU meanwhile.
//!
//! Writes `campaign.md` (a BENCHMARKS.md section) into the directory given
//! as the first argument and prints it. Bounded: every wait has a deadline,
//! and SIPp has its own global timeout. Knobs: BENCH_CAMPAIGN_CPS (default
//! 50), BENCH_CAMPAIGN_DONE (callees done before the suspend, default 2000),
//! BENCH_CAMPAIGN_DIAL_SECS (longest dialling phase, default 120).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, GetParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource as _};
use serde_json::{Value, json};
use switchboard_operator::crd::{CallCampaign, PhoneNumber, SipTrunk};
use switchboard_tests::agent::TestAgent;
use switchboard_tests::envtest::TestCluster;
use switchboard_tests::fleet::{ControlledNode, register_pod};
use switchboard_tests::node::{free_port, proc_status_kib};
use switchboard_tests::operator::{Operator, die_with_parent};

const NS: &str = "default";
const CALLER: &str = "+15550001111";
/// Callees in each list.
const CALLEES: usize = 100_000;
/// Callees per ConfigMap: about 600 KB of CSV each (etcd caps objects near
/// 1.5 MB).
const PER_CONFIGMAP: usize = 25_000;
const CONFIGMAPS: usize = CALLEES / PER_CONFIGMAP;
/// The campaign with a closed window, and the one that dials.
const LOADED: &str = "loaded";
const DIAL: &str = "dial";
/// The carrier's hold time, uniformly between these (ms).
const HOLD_MS: (u32, u32) = (0, 200);
/// Concurrency of the dialling campaign.
const MAX_CONCURRENT: u32 = 50;

/// Callee `i`: distinct, and never ending in 8 or 9 (which the carrier
/// scenario answers busy or lets ring).
fn callee(i: usize) -> String {
    format!("+1415{:06}{}", i / 8, i % 8)
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn kb(bytes: usize) -> String {
    if bytes >= 10_000 {
        format!("{bytes} bytes ({:.0} KB)", bytes as f64 / 1000.0)
    } else {
        format!("{bytes} bytes")
    }
}

// ---------------------------------------------------------------------------
// CPU accounting from /proc: this process's descendants grouped by name, and
// the whole machine (which is shared with other work).

/// The processes below this one (the API server and etcd run under a shell
/// wrapper, so the whole tree is walked).
fn descendants() -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![std::process::id()];
    while let Some(pid) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(t.path().join("children")) else {
                continue;
            };
            for c in text
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                if !out.contains(&c) {
                    out.push(c);
                    todo.push(c);
                }
            }
        }
    }
    out
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The pid of the first descendant whose name starts with `prefix`.
fn find_pid(prefix: &str) -> Option<u32> {
    descendants()
        .into_iter()
        .find(|p| comm(*p).starts_with(prefix))
}

const GROUPS: [(&str, &str); 5] = [
    ("switchboard-ope", "operator"),
    ("switchboard-med", "media nodes (2)"),
    ("sipp", "SIPp carrier (load generator)"),
    ("kube-apiserver", "kube-apiserver"),
    ("etcd", "etcd"),
];
const HARNESS: &str = "this harness (agent, status polling)";

#[derive(Default)]
struct CpuSample {
    by_group: BTreeMap<&'static str, u64>,
    machine_busy: u64,
    machine_total: u64,
}

fn cpu_sample() -> CpuSample {
    let mut s = CpuSample::default();
    for pid in descendants() {
        let name = comm(pid);
        if let Some((_, g)) = GROUPS.iter().find(|(p, _)| name.starts_with(p)) {
            *s.by_group.entry(g).or_default() += switchboard_tests::node::cpu_ticks(pid);
        }
    }
    s.by_group.insert(
        HARNESS,
        switchboard_tests::node::cpu_ticks(std::process::id()),
    );
    if let Ok(text) = std::fs::read_to_string("/proc/stat")
        && let Some(line) = text.lines().find(|l| l.starts_with("cpu "))
    {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest is in user).
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        s.machine_busy = busy;
        s.machine_total = busy + at(3) + at(4);
    }
    s
}

/// "operator 12.3 s (31% of one core, 25% of the machine's busy time); ..."
fn cpu_report(a: &CpuSample, b: &CpuSample, wall: Duration) -> (String, Option<f64>) {
    let tck = switchboard_tests::node::clk_tck();
    let busy = b.machine_busy.saturating_sub(a.machine_busy) as f64;
    let total = b.machine_total.saturating_sub(a.machine_total) as f64;
    let wall = wall.as_secs_f64().max(1e-3);
    let mut parts = Vec::new();
    let mut ours = 0.0;
    let mut sipp_share = None;
    let names = GROUPS.iter().map(|(_, g)| *g).chain([HARNESS]);
    for g in names {
        let d = b
            .by_group
            .get(g)
            .copied()
            .unwrap_or(0)
            .saturating_sub(a.by_group.get(g).copied().unwrap_or(0)) as f64;
        ours += d;
        let share = if busy > 0.0 { d / busy * 100.0 } else { 0.0 };
        if g.starts_with("SIPp") {
            sipp_share = Some(share);
        }
        parts.push(format!(
            "{g} {:.1} s ({:.0}% of one core, {share:.0}% of busy time)",
            d / tck,
            d / tck / wall * 100.0
        ));
    }
    let other = (busy - ours).max(0.0);
    parts.push(format!(
        "everything else on the machine {:.1} s ({:.0}% of busy time)",
        other / tck,
        if busy > 0.0 {
            other / busy * 100.0
        } else {
            0.0
        }
    ));
    let util = if total > 0.0 {
        busy / total * 100.0
    } else {
        0.0
    };
    (
        format!(
            "{:.0} s wall, machine {util:.0}% busy: {}",
            wall,
            parts.join("; ")
        ),
        sipp_share,
    )
}

// ---------------------------------------------------------------------------
// The SIPp carrier, run directly (no message trace: it would cost the load
// generator more than the calls), bounded by its own global timeout.

struct Carrier {
    child: Child,
    dir: tempfile::TempDir,
}

impl Carrier {
    fn start(port: u16, timeout: Duration) -> anyhow::Result<Carrier> {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/cluster/campaign_support/carrier.xml");
        let text =
            std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
        anyhow::ensure!(
            text.contains(r#"milliseconds="@HOLD_MS@""#),
            "{} has no @HOLD_MS@ pause",
            src.display()
        );
        let text = text.replace(
            r#"milliseconds="@HOLD_MS@""#,
            &format!(
                r#"distribution="uniform" min="{}" max="{}""#,
                HOLD_MS.0, HOLD_MS.1
            ),
        );
        let dir = tempfile::tempdir()?;
        let scenario = dir.path().join("carrier.xml");
        std::fs::write(&scenario, text)?;
        let out = std::fs::File::create(dir.path().join("stdout.log"))?;
        let err = std::fs::File::create(dir.path().join("stderr.log"))?;
        let mut cmd = Command::new("sipp");
        cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()])
            // More calls than the campaign can place: SIPp ends by the
            // harness's SIGUSR1 (soft quit) or by its global timeout.
            .args(["-m", &CALLEES.to_string()])
            .arg("-sf")
            .arg(&scenario)
            .args(["-timeout", &format!("{}s", timeout.as_secs().max(1))])
            .args(["-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .arg("-nostdin")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .context("spawning sipp (is it installed? see scripts/test-deps.sh)")?;
        Ok(Carrier { child, dir })
    }

    /// Asks SIPp to finish (SIGUSR1: no new calls, exit when the calls in
    /// progress end), waits up to `within`, then kills it. The "Successful
    /// call" total of its final screen, if found.
    async fn stop(mut self, within: Duration) -> (Option<u64>, String) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(pid, libc::SIGUSR1);
        }
        let deadline = Instant::now() + within;
        let mut how = "exited after SIGUSR1".to_string();
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    how = format!("{how} ({s})");
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    how = format!("killed: still running {within:?} after SIGUSR1");
                    break;
                }
            }
        }
        let stdout =
            std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
        let successful = stdout
            .lines()
            .rev()
            .find(|l| l.contains("Successful call"))
            .and_then(|l| l.rsplit('|').map(str::trim).find(|f| !f.is_empty()))
            .and_then(|f| f.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        (successful, how)
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The cluster.

fn dyn_api<K: kube::Resource<DynamicType = ()>>(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<K>(&()))
}

async fn apply<K: kube::Resource<DynamicType = ()>>(
    client: &Client,
    doc: Value,
) -> anyhow::Result<()> {
    let name = doc["metadata"]["name"]
        .as_str()
        .context("metadata.name")?
        .to_string();
    dyn_api::<K>(client)
        .patch(
            &name,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&doc),
        )
        .await
        .with_context(|| format!("applying {name}"))?;
    Ok(())
}

async fn status(client: &Client, name: &str) -> Value {
    dyn_api::<CallCampaign>(client)
        .get(name)
        .await
        .map(|o| o.data["status"].clone())
        .unwrap_or(Value::Null)
}

fn count(s: &Value, field: &str) -> u64 {
    s[field].as_u64().unwrap_or(0)
}

/// Polls the campaign's status every `every` until `ok`; the time since
/// `since` and the status.
async fn wait_status(
    client: &Client,
    name: &str,
    what: &str,
    since: Instant,
    limit: Duration,
    every: Duration,
    ok: impl Fn(&Value) -> bool,
) -> anyhow::Result<(Duration, Value)> {
    loop {
        let s = status(client, name).await;
        if ok(&s) {
            return Ok((since.elapsed(), s));
        }
        if since.elapsed() > limit {
            anyhow::bail!("campaign {name}: {what} not within {limit:?}; last status: {s}");
        }
        tokio::time::sleep(every).await;
    }
}

/// The CallCampaign as the API server returns it on GET, in bytes.
async fn object_bytes(client: &Client, name: &str) -> anyhow::Result<usize> {
    let req = kube::core::Request::new(CallCampaign::url_path(&(), Some(NS)))
        .get(name, &GetParams::default())?;
    Ok(client.request_text(req).await?.len())
}

fn campaign(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "CallCampaign",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn callee_sources() -> Value {
    Value::Array(
        (0..CONFIGMAPS)
            .map(|c| json!({"name": format!("callees-{c}")}))
            .collect(),
    )
}

/// Creates the callee ConfigMaps; the largest one's size as JSON.
async fn create_callees(client: &Client) -> anyhow::Result<usize> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let mut largest = 0;
    for c in 0..CONFIGMAPS {
        let mut csv = String::with_capacity(PER_CONFIGMAP * 26 + 8);
        csv.push_str("to,id\n");
        for i in c * PER_CONFIGMAP..(c + 1) * PER_CONFIGMAP {
            let _ = writeln!(csv, "{},lead-{i}", callee(i));
        }
        let cm: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("callees-{c}"), "namespace": NS},
            "data": {"callees.csv": csv}
        }))?;
        let size = serde_json::to_vec(&cm)?.len();
        anyhow::ensure!(size < 900_000, "callee ConfigMap of {size} bytes");
        largest = largest.max(size);
        cms.create(&PostParams::default(), &cm)
            .await
            .with_context(|| format!("creating ConfigMap callees-{c}"))?;
    }
    Ok(largest)
}

/// The results ConfigMaps of a campaign: how many, the bytes of their
/// `results.csv`, and their size as JSON.
async fn results_configmaps(client: &Client, name: &str) -> anyhow::Result<(usize, usize, usize)> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let list = cms
        .list(&ListParams::default().labels(&format!("switchboard.dev/campaign={name}")))
        .await?;
    let mut csv = 0;
    let mut json = 0;
    for cm in &list.items {
        csv += cm
            .data
            .as_ref()
            .and_then(|d| d.get("results.csv"))
            .map_or(0, String::len);
        json += serde_json::to_vec(cm)?.len();
    }
    Ok((list.items.len(), csv, json))
}

/// A weekday that is not today (UTC) and will not be for six days:
/// yesterday's.
fn closed_day() -> anyhow::Result<&'static str> {
    let yesterday = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .yesterday()?
        .weekday();
    Ok(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        [yesterday.to_monday_zero_offset() as usize])
}

struct Row(String, String);

struct Dialled {
    rows: Vec<Row>,
    cpu: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let out_dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("bench/results"));
    let load_start = loadavg();
    let cps: f64 = env_num("BENCH_CAMPAIGN_CPS", 50.0);
    let target_done: u64 = env_num("BENCH_CAMPAIGN_DONE", 2000);
    let dial_secs: u64 = env_num("BENCH_CAMPAIGN_DIAL_SECS", 120);
    let started = Instant::now();

    eprintln!("bench-campaign: starting kube-apiserver + etcd, 2 media nodes, the operator");
    let cluster = TestCluster::start().await?;
    cluster
        .install_crds(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds"))
        .await?;
    let client = cluster.client().await?;
    let mut nodes = Vec::new();
    for i in 0..2 {
        let n = ControlledNode::start(&format!("media-{i}"), &[]);
        register_pod(&client, NS, &n).await;
        nodes.push(n);
    }
    let agent = TestAgent::start().await?;
    // As `Operator::start_kube` starts it, but logging at info (the tests'
    // debug level would put a log write on every step of every call).
    let op = Operator::start(
        vec![
            "--identity".into(),
            "bench".into(),
            "--lease-namespace".into(),
            NS.into(),
            "--control-insecure".into(),
            "--no-leader-election".into(),
        ],
        &[
            ("KUBECONFIG", cluster.kubeconfig_path().as_os_str()),
            ("RUST_LOG", std::ffi::OsStr::new("info")),
        ],
    );
    let gateway = free_port();
    // Room above the campaign's pace: the limits are split between the nodes.
    let trunk_cps = (cps.ceil() as u64 * 2).max(2);
    apply::<SipTrunk>(
        &client,
        json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SipTrunk",
            "metadata": {"name": "carrier", "namespace": NS},
            "spec": {
                "inbound": {"allowedSources": ["127.0.0.0/8"]},
                "healthCheck": {"optionsIntervalSeconds": 0},
                "outbound": {"gateways": [{"host": "127.0.0.1", "port": gateway, "transport": "udp"}]},
                "limits": {"maxConcurrentCalls": MAX_CONCURRENT * 4, "maxCallsPerSecond": trunk_cps}
            }
        }),
    )
    .await?;
    apply::<PhoneNumber>(
        &client,
        json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "PhoneNumber",
            "metadata": {"name": "caller", "namespace": NS},
            "spec": {"number": CALLER, "trunkRef": {"name": "carrier"}, "agent": {"url": agent.url()}}
        }),
    )
    .await?;
    let numbers = dyn_api::<PhoneNumber>(&client);
    let t = Instant::now();
    loop {
        let o = numbers.get("caller").await?;
        let programmed = o.data["status"]["conditions"].as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c["type"] == "Programmed" && c["status"] == "True")
        });
        if programmed {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "PhoneNumber caller never Programmed: {}",
            o.data["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("bench-campaign: creating {CALLEES} callees in {CONFIGMAPS} ConfigMaps");
    let t = Instant::now();
    let largest_cm = create_callees(&client).await?;
    let cm_secs = t.elapsed();
    // The operator does not watch ConfigMaps; settle after start-up anyway.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let op_pid = find_pid("switchboard-ope");
    let baseline = op.rss_kib();

    // 1. Loaded, window closed.
    eprintln!("bench-campaign: campaign {LOADED} ({CALLEES} callees, window closed)");
    let day = closed_day()?;
    let t = Instant::now();
    apply::<CallCampaign>(
        &client,
        campaign(
            LOADED,
            json!({
                "from": ["caller"],
                "callees": {"configMaps": callee_sources()},
                "pacing": {"maxConcurrentCalls": MAX_CONCURRENT, "callsPerSecond": cps},
                "schedule": {"timeZone": "UTC", "windows": [{"days": [day], "from": "00:00", "to": "24:00"}]}
            }),
        ),
    )
    .await?;
    let (load_time, s1) = wait_status(
        &client,
        LOADED,
        "status total=100000",
        t,
        Duration::from_secs(120),
        Duration::from_millis(20),
        |s| count(s, "total") == CALLEES as u64,
    )
    .await?;
    let loaded_rss = op.rss_kib();
    let loaded_hwm = op_pid.map(|p| proc_status_kib(p, "VmHWM:"));
    let (_, s1) = wait_status(
        &client,
        LOADED,
        "phase WaitingForWindow",
        Instant::now(),
        Duration::from_secs(30),
        Duration::from_millis(100),
        |s| s["phase"] == "WaitingForWindow",
    )
    .await
    .unwrap_or((Duration::ZERO, s1));
    let loaded_bytes = object_bytes(&client, LOADED).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded_rss_later = op.rss_kib();
    let s1_later = status(&client, LOADED).await;
    anyhow::ensure!(
        count(&s1_later, "attempts") == 0,
        "the closed-window campaign dialled: {s1_later}"
    );

    // 2. Dialling.
    let dialled = dial_run(
        &client,
        &op,
        op_pid,
        &nodes,
        gateway,
        cps,
        target_done,
        Duration::from_secs(dial_secs),
        baseline,
    )
    .await?;
    let load_end = loadavg();

    let mut rows = vec![
        Row(
            "callees".into(),
            format!(
                "{CALLEES} in {CONFIGMAPS} ConfigMaps of {PER_CONFIGMAP} (CSV `to,id`, largest {}; created in {:.1} s)",
                kb(largest_cm),
                cm_secs.as_secs_f64()
            ),
        ),
        Row("operator RSS, no campaign (baseline)".into(), mib(baseline)),
        Row(
            format!("campaign `{LOADED}` (window closed): create to status total={CALLEES}"),
            format!("{:.2} s", load_time.as_secs_f64()),
        ),
        Row(
            format!("operator RSS, `{LOADED}` loaded (at total={CALLEES}; 2 s later)"),
            format!(
                "{} (+{}); {} (+{}){}",
                mib(loaded_rss),
                mib(loaded_rss.saturating_sub(baseline)),
                mib(loaded_rss_later),
                mib(loaded_rss_later.saturating_sub(baseline)),
                loaded_hwm
                    .map(|h| format!("; peak so far (VmHWM) {}", mib(h)))
                    .unwrap_or_default()
            ),
        ),
        Row(
            format!(
                "CallCampaign `{LOADED}` as JSON (GET), phase {}",
                s1["phase"].as_str().unwrap_or("?")
            ),
            kb(loaded_bytes),
        ),
    ];
    rows.extend(dialled.rows);
    let mut md = String::new();
    let _ = writeln!(md, "### Campaigns (CallCampaign)\n");
    let _ = writeln!(md, "| what | value |\n| --- | --- |");
    for Row(what, value) in &rows {
        let _ = writeln!(md, "| {what} | {value} |");
    }
    let _ = writeln!(
        md,
        "\nMethod: a real kube-apiserver and etcd on loopback, the release operator (`--no-leader-election`, log level info) \
         and two release media nodes registered as Pods; the callees are {CALLEES} CSV lines in {CONFIGMAPS} ConfigMaps, \
         and both campaigns use the same list. `{LOADED}` has one calling window on yesterday's weekday (UTC), so it \
         loads and waits; `{DIAL}` dials through the nodes to a SIPp carrier (`tests/tests/cluster/campaign_support/carrier.xml`, \
         every callee answered, held uniformly {}-{} ms, then hung up by the carrier) until {target_done} callees are done, then gets \
         `suspend: true`; times and dial rates come from polling the status (written by the operator at most once a second), \
         memory from `/proc/PID/status`, CPU from `/proc/PID/stat` and `/proc/stat`. Command: \
         `cargo build --release --workspace --bins && ./target/release/bench-campaign DIR`.\n",
        HOLD_MS.0, HOLD_MS.1
    );
    let _ = writeln!(md, "CPU while `{DIAL}` dialled: {}.\n", dialled.cpu);
    let _ = writeln!(
        md,
        "Machine load average (1/5/15 min) when this harness started: {load_start}; when it ended: {load_end} \
         (2 means both cores busy). Whole run: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    print!("{md}");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("campaign.md"), md)?;
    drop(agent);
    drop(op);
    drop(nodes);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn dial_run(
    client: &Client,
    op: &Operator,
    op_pid: Option<u32>,
    nodes: &[ControlledNode],
    gateway: u16,
    cps: f64,
    target_done: u64,
    limit: Duration,
    baseline: u64,
) -> anyhow::Result<Dialled> {
    eprintln!(
        "bench-campaign: campaign {DIAL}: {cps} calls/s, {MAX_CONCURRENT} at once, until {target_done} done"
    );
    let carrier = Carrier::start(gateway, limit + Duration::from_secs(90))?;
    // SIPp up before the campaign starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spec = |suspend: bool| {
        json!({
            "from": ["caller"],
            "callees": {"configMaps": callee_sources()},
            "pacing": {"maxConcurrentCalls": MAX_CONCURRENT, "callsPerSecond": cps},
            "retry": {"maxAttempts": 1},
            "ringingTimeoutSeconds": 10,
            "maxCallDurationSeconds": 30,
            "suspend": suspend,
        })
    };
    let cpu0 = cpu_sample();
    let cpu_t0 = Instant::now();
    let t = Instant::now();
    apply::<CallCampaign>(client, campaign(DIAL, spec(false))).await?;
    let (load_time, _) = wait_status(
        client,
        DIAL,
        "loaded",
        t,
        Duration::from_secs(120),
        Duration::from_millis(50),
        |s| count(s, "total") == CALLEES as u64,
    )
    .await?;
    // (seconds since create, attempts, done, in progress), at every change.
    let mut samples: Vec<(f64, u64, u64, u64)> = Vec::new();
    let mut max_in_progress = 0;
    let (reached, last) = loop {
        let s = status(client, DIAL).await;
        let (a, d, p) = (
            count(&s, "attempts"),
            count(&s, "done"),
            count(&s, "inProgress"),
        );
        max_in_progress = max_in_progress.max(p);
        if samples.last().is_none_or(|l| (l.1, l.2, l.3) != (a, d, p)) {
            samples.push((t.elapsed().as_secs_f64(), a, d, p));
        }
        if d >= target_done {
            break (true, s);
        }
        if t.elapsed() > limit {
            break (false, s);
        }
        if s["phase"] == "Failed" || s["phase"] == "Completed" {
            break (false, s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu1 = cpu_sample();
    let cpu_wall = cpu_t0.elapsed();
    let before_suspend = count(&last, "attempts");
    let t_suspend = Instant::now();
    dyn_api::<CallCampaign>(client)
        .patch(
            DIAL,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .context("suspending")?;
    let (suspend_time, end) = wait_status(
        client,
        DIAL,
        "Suspended with nothing in progress",
        t_suspend,
        Duration::from_secs(60),
        Duration::from_millis(50),
        |s| s["phase"] == "Suspended" && count(s, "inProgress") == 0,
    )
    .await?;
    let (sipp_calls, sipp_exit) = carrier.stop(Duration::from_secs(15)).await;
    let end_rss = op.rss_kib();
    let end_hwm = op_pid.map(|p| proc_status_kib(p, "VmHWM:"));
    let end_bytes = object_bytes(client, DIAL).await?;
    let (results, results_csv, results_json) = results_configmaps(client, DIAL).await?;
    let node_rss: Vec<String> = nodes.iter().map(|n| mib(n.rss_kib())).collect();

    for (secs, a, d, p) in &samples {
        eprintln!("  t={secs:6.2}s attempts={a} done={d} inProgress={p}");
    }
    let first = samples.iter().find(|s| s.1 > 0).copied();
    let lastp = samples.last().copied();
    let rate = match (first, lastp) {
        (Some(f), Some(l)) if l.0 > f.0 => {
            Some(((l.1 - f.1) as f64 / (l.0 - f.0), l.1 - f.1, l.0 - f.0))
        }
        _ => None,
    };
    let (cpu, sipp_share) = cpu_report(&cpu0, &cpu1, cpu_wall);
    let mut rows = vec![
        Row(
            format!("campaign `{DIAL}`: pacing asked"),
            format!(
                "callsPerSecond {cps}, maxConcurrentCalls {MAX_CONCURRENT} (trunk: maxCallsPerSecond {}, maxConcurrentCalls {}); 2 media nodes; SIPp holds {}-{} ms",
                (cps.ceil() as u64 * 2).max(2),
                MAX_CONCURRENT * 4,
                HOLD_MS.0,
                HOLD_MS.1
            ),
        ),
        Row(
            format!("campaign `{DIAL}`: create to status total={CALLEES}"),
            format!("{:.2} s", load_time.as_secs_f64()),
        ),
        Row(
            "achieved dials per second (status attempts over time)".into(),
            match rate {
                Some((r, n, secs)) => format!(
                    "{r:.1} ({n} attempts in {secs:.1} s, first to last status change{})",
                    if reached {
                        String::new()
                    } else {
                        format!(
                            "; stopped at the {}s limit before {target_done} done",
                            limit.as_secs()
                        )
                    }
                ),
                None => "no dials observed".into(),
            },
        ),
        Row(
            "most calls in progress seen in the status".into(),
            max_in_progress.to_string(),
        ),
        Row(
            "suspend: patch to phase Suspended with 0 in progress".into(),
            format!(
                "{:.2} s; attempts {before_suspend} when suspended, {} after",
                suspend_time.as_secs_f64(),
                count(&end, "attempts")
            ),
        ),
        Row(
            "outcomes at the end".into(),
            format!(
                "done {}, answered {}, busy {}, noAnswer {}, failed {}; SIPp carrier: {} successful calls, {sipp_exit}",
                count(&end, "done"),
                count(&end, "answered"),
                count(&end, "busy"),
                count(&end, "noAnswer"),
                count(&end, "failed"),
                sipp_calls.map_or_else(|| "?".into(), |n| n.to_string()),
            ),
        ),
        Row(
            "operator RSS at the end (both campaigns loaded)".into(),
            format!(
                "{} (+{} over baseline){}",
                mib(end_rss),
                mib(end_rss.saturating_sub(baseline)),
                end_hwm
                    .map(|h| format!("; peak (VmHWM) {}", mib(h)))
                    .unwrap_or_default()
            ),
        ),
        Row(
            format!("CallCampaign `{DIAL}` as JSON (GET) at the end"),
            kb(end_bytes),
        ),
        Row(
            format!("results ConfigMaps of `{DIAL}`"),
            format!(
                "{results} ({} of `results.csv`, {} as JSON)",
                kb(results_csv),
                kb(results_json)
            ),
        ),
        Row("media node RSS at the end".into(), node_rss.join(", ")),
    ];
    if let Some(share) = sipp_share {
        rows.push(Row(
            "load generator's share of the machine's busy CPU while dialling".into(),
            format!("{share:.0}% (SIPp)"),
        ));
    }
    Ok(Dialled { rows, cpu })
}
