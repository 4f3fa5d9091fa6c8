//! Call benchmarks of one media node (release build), each next to a baseline measured in the
//! same run on the same machine.
//!
//! - `bench-calls setup DIR`: call set-up rate. SIPp places calls (INVITE, 200, ACK, BYE at
//!   once) at increasing rates, a fixed time per step, into (a) a SIPp UAS (the baseline),
//!   (b) a node with `--call-handler logging` (signalling only), (c) a node bridging every call
//!   to an echo agent. Per step: success ratio, INVITE-to-200 p50/p99 (SIPp `-trace_rtt`), 503s,
//!   node CPU. Stops at the first step below 99.9 % success: that step is "one step past".
//!   Writes `DIR/calls-setup.md`.
//! - `bench-calls media DIR`: concurrent calls with G.711 RTP both ways through the agent
//!   bridge. Our own caller (a minimal SIP UAC plus one RTP socket per call, all driven by one
//!   sender and one receiver thread) sends 20 ms PCMU frames whose payload carries a probe
//!   (call, sequence); an in-process echo agent speaking Twilio Media Streams sends every frame
//!   back. Probes are timed at the caller (sent, echoed back) and at the agent (received, sent)
//!   on the wall clock, receive times from the kernel. Per concurrency step: loss, latency
//!   (round trip, added by the node, each leg), the agent's stream checks, node CPU and RSS per
//!   call, harness CPU. Baseline: a minimal UDP echo process at the same packet rate. Then an
//!   impairment run (jitter, reordering, loss, a pause, made by the caller itself). Writes
//!   `DIR/calls-media.md`.
//! - `bench-calls media-impaired DIR`: only the impairment run; writes
//!   `DIR/calls-media-impaired.md`.
//! - `bench-calls udp-echo`: the baseline echo server (prints its port, echoes forever).
//!
//! Knobs: `BENCH_MEDIA_STEPS` (comma separated call counts, default 50,200,500,1000,1500,2000),
//! `BENCH_MEDIA_BUDGET_SECS`, `BENCH_MEDIA_WARM_SECS`, `BENCH_MEDIA_WINDOW_SECS`,
//! `BENCH_MEDIA_SETUP_CPS`, `BENCH_IMPAIRED_CALLS` (default 100, 0 skips the impairment run),
//! `BENCH_IMPAIRED_WINDOW_SECS` (default 20).

#[path = "bench-calls-io/mod.rs"]
mod fastio;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use switchboard_tests::node::cpu_secs;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use fastio::Probes;
use fastio::agent::{AgentShared, StreamStats, start_agent};
use fastio::rtp::{Callers, Impairment, SendReport};
use fastio::sys::now_ns;

const NUMBER: &str = "+15550001111";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ------------------------------------------------------------------------------------------
// Processes: the node, /proc sampling.

/// Resident set size in KiB.
fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

struct Node {
    child: Child,
    sip: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Node {
    async fn start(handler: &str, agent_url: &str, max_calls: usize) -> anyhow::Result<Node> {
        let dir = tempfile::tempdir()?;
        let config = json!({
            "version": "1",
            "trunks": [{
                "id": "bench/carrier",
                "enabled": true,
                "inbound": {"enabled": true, "allowedSources": ["127.0.0.0/8"]},
                "media": {"codecs": ["CODEC_PCMU", "CODEC_PCMA"], "rtpTimeoutSeconds": 60}
            }],
            "numbers": [{
                "id": "bench/echo", "e164": NUMBER, "trunkId": "bench/carrier",
                "inbound": true, "outbound": true,
                "agent": {"url": agent_url}
            }]
        });
        let cfg = dir.path().join("routing.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&config)?)?;
        let log = dir.path().join("node.log");
        let bin = switchboard_tests::operator::target_dir().join("switchboard-media-node");
        anyhow::ensure!(
            bin.exists(),
            "{} missing: cargo build --release",
            bin.display()
        );
        let mut spec = switchboard_tests::node::NodeSpec::new(bin).extra([
            "--rate-limit",
            "0",
            "--max-calls",
            &max_calls.to_string(),
            "--call-handler",
            handler,
        ]);
        spec.config = Some(cfg);
        // Below the ephemeral range our own sockets come from.
        spec.rtp = (10000, 31999);
        spec.rust_log = "warn".into();
        let child = spec
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning switchboard-media-node")?;
        let mut node = Node {
            child,
            sip: spec.sip,
            http: spec.http,
            _dir: dir,
            log,
        };
        switchboard_tests::node::wait_ready(
            node.http,
            &mut node.child,
            Duration::from_secs(20),
            &node.log,
        )
        .await?;
        Ok(node)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn metrics(&self) -> String {
        switchboard_tests::node::http_request(self.http, "GET", "/metrics", None)
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of every sample of `name` whose labels contain `label` (e.g. `code="503"`).
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .fold(0.0, |a, b| a + b)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

// ------------------------------------------------------------------------------------------
// A minimal SIP UAC over one UDP socket.

struct SipMsg {
    status: Option<u16>,
    method: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
    raw: String,
}

impl SipMsg {
    fn parse(raw: &str) -> Option<SipMsg> {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
        let mut lines = head.split("\r\n");
        let first = lines.next()?;
        let (status, method) = if let Some(r) = first.strip_prefix("SIP/2.0 ") {
            (r.get(..3)?.parse().ok(), None)
        } else {
            (None, Some(first.split(' ').next()?.to_owned()))
        };
        let headers = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                let k = k.trim().to_ascii_lowercase();
                let k = match k.as_str() {
                    "i" => "call-id".to_owned(),
                    "t" => "to".to_owned(),
                    "f" => "from".to_owned(),
                    "v" => "via".to_owned(),
                    _ => k,
                };
                Some((k, v.trim().to_owned()))
            })
            .collect();
        Some(SipMsg {
            status,
            method,
            headers,
            body: body.to_owned(),
            raw: raw.to_owned(),
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn cseq_method(&self) -> Option<&str> {
        self.header("cseq")?.split_whitespace().nth(1)
    }
}

struct Uac {
    sock: Arc<UdpSocket>,
    node: SocketAddr,
    local: SocketAddr,
    calls: Mutex<HashMap<String, mpsc::UnboundedSender<SipMsg>>>,
    node_byes: AtomicUsize,
}

struct Dialog {
    call_id: String,
    from_tag: String,
    to: String,
    setup: Duration,
    media: SocketAddr,
}

impl Uac {
    async fn new(node: SocketAddr) -> anyhow::Result<Arc<Uac>> {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let local = sock.local_addr()?;
        let uac = Arc::new(Uac {
            sock: sock.clone(),
            node,
            local,
            calls: Mutex::default(),
            node_byes: AtomicUsize::new(0),
        });
        let me = Arc::downgrade(&uac);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Some(uac) = me.upgrade() else { return };
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let Some(msg) = SipMsg::parse(&text) else {
                    continue;
                };
                if let Some(m) = &msg.method {
                    // Requests from the node (BYE, re-INVITE, OPTIONS): answer 200.
                    if m == "BYE" {
                        uac.node_byes.fetch_add(1, Ordering::Relaxed);
                    }
                    if m != "ACK" {
                        let mut resp = String::from("SIP/2.0 200 OK\r\n");
                        for h in ["via", "from", "to", "call-id", "cseq"] {
                            for (k, v) in msg.headers.iter().filter(|(k, _)| k == h) {
                                let _ = write!(resp, "{k}: {v}\r\n");
                            }
                        }
                        resp.push_str("Content-Length: 0\r\n\r\n");
                        let _ = sock.send_to(resp.as_bytes(), from).await;
                    }
                    continue;
                }
                let id = msg.header("call-id").unwrap_or("").to_owned();
                let tx = uac.calls.lock().expect("lock").get(&id).cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(msg);
                }
            }
        });
        Ok(uac)
    }

    fn register(&self, call_id: &str) -> mpsc::UnboundedReceiver<SipMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.calls
            .lock()
            .expect("lock")
            .insert(call_id.to_owned(), tx);
        rx
    }

    /// INVITE with SDP pointing at `rtp`; returns the dialog once answered (ACK sent).
    async fn invite(&self, call_id: &str, rtp: SocketAddr) -> anyhow::Result<Dialog> {
        let mut rx = self.register(call_id);
        let from_tag = format!("t{}", rand::random::<u32>());
        let branch = format!("z9hG4bK{}", rand::random::<u64>());
        let sdp = format!(
            "v=0\r\no=bench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n",
            rtp.port()
        );
        let invite = format!(
            "INVITE sip:{NUMBER}@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nFrom: <sip:+15559990000@{local}>;tag={from_tag}\r\nTo: <sip:{NUMBER}@{node}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:bench@{local}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len(),
            node = self.node,
            local = self.local,
        );
        let started = Instant::now();
        let deadline = started + Duration::from_secs(16);
        let mut retrans = started + Duration::from_millis(500);
        self.sock.send_to(invite.as_bytes(), self.node).await?;
        let mut got_provisional = false;
        loop {
            let wait = if got_provisional { deadline } else { retrans };
            let msg = match tokio::time::timeout_at(wait.into(), rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => bail!("UAC gone"),
                Err(_) if Instant::now() >= deadline => bail!("no answer to INVITE"),
                Err(_) => {
                    self.sock.send_to(invite.as_bytes(), self.node).await?;
                    retrans = Instant::now() + Duration::from_millis(1000);
                    continue;
                }
            };
            if msg.cseq_method() != Some("INVITE") {
                continue;
            }
            match msg.status {
                Some(s) if s < 200 => got_provisional = true,
                Some(200) => {
                    let setup = started.elapsed();
                    let to = msg.header("to").unwrap_or("").to_owned();
                    let media = sdp_media(&msg.body).context("no media in 200 SDP")?;
                    let ack = format!(
                        "ACK sip:{NUMBER}@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\nFrom: <sip:+15559990000@{local}>;tag={from_tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                        rand::random::<u64>(),
                        node = self.node,
                        local = self.local,
                    );
                    self.sock.send_to(ack.as_bytes(), self.node).await?;
                    return Ok(Dialog {
                        call_id: call_id.to_owned(),
                        from_tag,
                        to,
                        setup,
                        media,
                    });
                }
                Some(s) => {
                    self.calls.lock().expect("lock").remove(call_id);
                    bail!(
                        "INVITE answered {s}: {}",
                        msg.raw.lines().next().unwrap_or("")
                    )
                }
                None => {}
            }
        }
    }

    async fn bye(&self, d: &Dialog) -> anyhow::Result<()> {
        let mut rx = self.register(&d.call_id);
        let bye = format!(
            "BYE sip:{NUMBER}@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\nFrom: <sip:+15559990000@{local}>;tag={}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            rand::random::<u64>(),
            d.from_tag,
            d.to,
            d.call_id,
            node = self.node,
            local = self.local,
        );
        let result = async {
            for _ in 0..6 {
                self.sock.send_to(bye.as_bytes(), self.node).await?;
                let until = Instant::now() + Duration::from_millis(500);
                while let Ok(Some(m)) = tokio::time::timeout_at(until.into(), rx.recv()).await {
                    if m.cseq_method() == Some("BYE") && m.status.is_some_and(|s| s >= 200) {
                        return Ok(());
                    }
                }
            }
            bail!("no answer to BYE")
        }
        .await;
        self.calls.lock().expect("lock").remove(&d.call_id);
        result
    }
}

fn sdp_media(sdp: &str) -> Option<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for l in sdp.lines() {
        if let Some(c) = l.trim().strip_prefix("c=IN IP4 ") {
            ip = Some(c.trim().to_owned());
        }
        if let Some(m) = l.trim().strip_prefix("m=audio ") {
            port = m.split_whitespace().next()?.parse::<u16>().ok();
        }
    }
    format!("{}:{}", ip?, port?).parse().ok()
}

// ------------------------------------------------------------------------------------------
// Part 2: concurrent calls with media.

#[derive(Default, Clone)]
struct MediaResult {
    calls: usize,
    sent: usize,
    lost: usize,
    lost_before_agent: usize,
    rtt: Vec<f64>,
    added: Vec<f64>,
    leg_in: Vec<f64>,
    leg_out: Vec<f64>,
    agent: Vec<f64>,
    /// Impaired runs: planned (clean-line) send time → agent receive.
    in_planned: Vec<f64>,
}

/// Collects the probes sent in [from, to) (nanoseconds).
fn collect(probes: &Probes, calls: usize, from: u64, to: u64, with_agent: bool) -> MediaResult {
    let mut r = MediaResult {
        calls,
        ..Default::default()
    };
    let ms = |ns: u64| ns as f64 / 1e6;
    let per_call = probes.per_call();
    for i in 0..calls * per_call {
        let sent = probes.sent[i].load(Ordering::Relaxed);
        if sent < from || sent >= to {
            continue;
        }
        r.sent += 1;
        let back = probes.back[i].load(Ordering::Relaxed);
        let a_in = probes.agent_in[i].load(Ordering::Relaxed);
        let a_out = probes.agent_out[i].load(Ordering::Relaxed);
        if with_agent && a_in != 0 {
            r.leg_in.push(ms(a_in.saturating_sub(sent)));
            if let Some(planned) = probes.nominal.get(i).map(|v| v.load(Ordering::Relaxed))
                && planned != 0
            {
                r.in_planned.push(ms(a_in.saturating_sub(planned)));
            }
        }
        if back == 0 {
            r.lost += 1;
            if with_agent && a_in == 0 {
                r.lost_before_agent += 1;
            }
            continue;
        }
        let rtt = ms(back.saturating_sub(sent));
        r.rtt.push(rtt);
        if with_agent && a_in != 0 && a_out != 0 {
            let agent = ms(a_out.saturating_sub(a_in));
            r.agent.push(agent);
            r.leg_out.push(ms(back.saturating_sub(a_out)));
            r.added.push(rtt - agent);
        } else {
            r.added.push(rtt);
        }
    }
    // Sorted once here; the percentiles read them many times.
    for v in [
        &mut r.rtt,
        &mut r.added,
        &mut r.leg_in,
        &mut r.leg_out,
        &mut r.agent,
        &mut r.in_planned,
    ] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    r
}

/// The agent's stream checks of one step, read out.
#[derive(Default, Clone, Copy)]
struct StreamCounts {
    streams: u64,
    media: u64,
    probes: u64,
    silence: u64,
    ts_gaps: u64,
    chunk_gaps: u64,
    out_of_order: u64,
}

impl StreamCounts {
    fn read(s: &StreamStats) -> StreamCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StreamCounts {
            streams: g(&s.streams),
            media: g(&s.media),
            probes: g(&s.probes),
            silence: g(&s.silence),
            ts_gaps: g(&s.ts_gaps),
            chunk_gaps: g(&s.chunk_gaps),
            out_of_order: g(&s.out_of_order),
        }
    }
}

struct MediaRow {
    res: MediaResult,
    cpu_cores: f64,
    gen_cores: f64,
    rss_per_call_kib: f64,
    setup: Vec<f64>,
    setup_failed: usize,
    node_byes: usize,
    send: SendReport,
    streams: StreamCounts,
}

/// Probes per call: the whole run plus room for the tail.
fn probes_per_call(warm: Duration, window: Duration) -> usize {
    ((warm + window).as_millis() / 20 + 200) as usize
}

async fn media_step(
    node: &Node,
    agent: &Arc<AgentShared>,
    calls: usize,
    rss_idle: f64,
    warm: Duration,
    window: Duration,
    impair: Option<Impairment>,
) -> anyhow::Result<MediaRow> {
    let probes = Arc::new(Probes::new(
        calls,
        probes_per_call(warm, window),
        impair.is_some(),
    ));
    let stats = Arc::new(StreamStats::default());
    *agent.probes.lock().expect("lock") = Some(probes.clone());
    *agent.stats.lock().expect("lock") = stats.clone();
    let uac = Uac::new(node.sip).await?;
    // Set-up, paced at 200 calls per second.
    let cps = env_u64("BENCH_MEDIA_SETUP_CPS", 200).max(1);
    let mut pending = Vec::new();
    let mut socks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / cps));
    for i in 0..calls {
        tick.tick().await;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let rtp = sock.local_addr()?;
        socks.push(sock);
        let uac = uac.clone();
        let id = format!("bench-{calls}-{i}-{}", rand::random::<u32>());
        pending.push(tokio::spawn(async move { uac.invite(&id, rtp).await }));
    }
    let mut dialogs = Vec::new();
    let mut legs = Vec::new();
    let mut setup = Vec::new();
    let mut setup_failed = 0;
    let mut first_err = None;
    for (p, sock) in pending.into_iter().zip(socks) {
        match p.await? {
            Ok(d) => {
                setup.push(d.setup.as_secs_f64() * 1000.0);
                // Connected: the node latches to our source (symmetric RTP), and we take only
                // its packets.
                sock.connect(d.media)?;
                legs.push(sock);
                dialogs.push(d);
            }
            Err(e) => {
                setup_failed += 1;
                first_err.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = first_err {
        eprintln!("  {setup_failed} of {calls} set-ups failed, first: {e}");
    }
    let established = legs.len();
    let callers = Callers::start(legs, probes.clone(), impair)?;
    tokio::time::sleep(warm).await;
    let pid = node.pid();
    let me = std::process::id();
    let (c0, g0, t0) = (cpu_secs(pid), cpu_secs(me), Instant::now());
    let from = now_ns();
    tokio::time::sleep(window / 2).await;
    let rss = rss_kib(pid);
    tokio::time::sleep(window / 2).await;
    let to = now_ns();
    let secs = t0.elapsed().as_secs_f64();
    let cpu_cores = (cpu_secs(pid) - c0) / secs;
    let gen_cores = (cpu_secs(me) - g0) / secs;
    // Late echoes: a jitter buffer may hold up to 200 ms, the impairment adds up to 60 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let send = callers.finish();
    let res = collect(&probes, established, from, to, true);
    let node_byes = uac.node_byes.load(Ordering::Relaxed);
    // Tear down, 400 per second.
    let mut byes = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_micros(2_500));
    for d in dialogs {
        tick.tick().await;
        let uac = uac.clone();
        byes.push(tokio::spawn(async move { uac.bye(&d).await }));
    }
    for b in byes {
        let _ = b.await;
    }
    *agent.probes.lock().expect("lock") = None;
    Ok(MediaRow {
        res,
        cpu_cores,
        gen_cores,
        rss_per_call_kib: (rss - rss_idle) / established.max(1) as f64,
        setup: sorted(setup),
        setup_failed,
        node_byes,
        send,
        streams: StreamCounts::read(&stats),
    })
}

async fn echo_step(
    echo_pid: u32,
    echo_addr: SocketAddr,
    calls: usize,
    warm: Duration,
    window: Duration,
) -> anyhow::Result<MediaRow> {
    let probes = Arc::new(Probes::new(calls, probes_per_call(warm, window), false));
    let mut legs = Vec::new();
    for _ in 0..calls {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.connect(echo_addr)?;
        legs.push(s);
    }
    let callers = Callers::start(legs, probes.clone(), None)?;
    tokio::time::sleep(warm).await;
    let me = std::process::id();
    let (c0, g0, t0) = (cpu_secs(echo_pid), cpu_secs(me), Instant::now());
    let from = now_ns();
    tokio::time::sleep(window).await;
    let to = now_ns();
    let secs = t0.elapsed().as_secs_f64();
    let cpu_cores = (cpu_secs(echo_pid) - c0) / secs;
    let gen_cores = (cpu_secs(me) - g0) / secs;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let send = callers.finish();
    let res = collect(&probes, calls, from, to, false);
    Ok(MediaRow {
        res,
        cpu_cores,
        gen_cores,
        rss_per_call_kib: 0.0,
        setup: Vec::new(),
        setup_failed: 0,
        node_byes: 0,
        send,
        streams: StreamCounts::default(),
    })
}

fn f1(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.1}")
    }
}

fn f2(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2}")
    }
}

/// Percentile of an already sorted sample.
fn pct(v: &[f64], q: f64) -> f64 {
    percentile(v, q)
}

/// The impairment run: the same calls on a clean line (reference) and impaired.
struct ImpairedRun {
    impair: Impairment,
    window: Duration,
    clean: MediaRow,
    impaired: MediaRow,
}

/// Which parts `media_bench` runs.
#[derive(Clone, Copy, PartialEq)]
enum MediaParts {
    /// Clean steps, then the impairment run.
    All,
    /// Only the impairment run.
    Impaired,
}

fn print_row(what: &str, row: &MediaRow) {
    let r = &row.res;
    println!(
        "  {what}: sent {} lost {} (before agent {}), rtt p50 {} / added p50 {} p99 {} / in p50 {} p99 {} / out p50 {} p99 {} ms, \
         streams: ts gaps {} chunk gaps {} out of order {} silence {}, node {:.2} cores, {:.1} KiB/call, harness {:.2} cores, caller late>2ms {}",
        r.sent,
        r.lost,
        r.lost_before_agent,
        f2(pct(&r.rtt, 50.0)),
        f2(pct(&r.added, 50.0)),
        f2(pct(&r.added, 99.0)),
        f2(pct(&r.leg_in, 50.0)),
        f2(pct(&r.leg_in, 99.0)),
        f2(pct(&r.leg_out, 50.0)),
        f2(pct(&r.leg_out, 99.0)),
        row.streams.ts_gaps,
        row.streams.chunk_gaps,
        row.streams.out_of_order,
        row.streams.silence,
        row.cpu_cores,
        row.rss_per_call_kib,
        row.gen_cores,
        row.send.late_over_2ms,
    );
}

async fn media_bench(dir: &Path, parts: MediaParts) -> anyhow::Result<()> {
    let warm = Duration::from_secs(env_u64("BENCH_MEDIA_WARM_SECS", 3));
    let window = Duration::from_secs(env_u64("BENCH_MEDIA_WINDOW_SECS", 8));
    let steps: Vec<usize> = match parts {
        MediaParts::Impaired => Vec::new(),
        MediaParts::All => std::env::var("BENCH_MEDIA_STEPS")
            .ok()
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![50, 200, 500, 1000, 1500, 2000]),
    };
    let budget = Duration::from_secs(env_u64("BENCH_MEDIA_BUDGET_SECS", 420));
    let impaired_calls = env_u64("BENCH_IMPAIRED_CALLS", 100) as usize;
    let impaired_window = Duration::from_secs(env_u64("BENCH_IMPAIRED_WINDOW_SECS", 20).max(2));
    let started = Instant::now();
    fastio::sys::raise_nofile();
    let agent = Arc::new(AgentShared::default());
    let url = start_agent(agent.clone())?;
    let max = steps.iter().copied().max().unwrap_or(0).max(impaired_calls) + 100;
    let node = Node::start("bridge", &url, max).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib(node.pid());
    println!("media: node idle RSS {rss_idle} KiB");

    // Baseline: the UDP echo process.
    let exe = std::env::current_exe()?;
    let mut echo = Command::new(&exe)
        .arg("udp-echo")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    {
        use std::io::BufRead as _;
        let out = echo.stdout.take().context("echo stdout")?;
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let echo_addr: SocketAddr = line.trim().parse().context("echo address")?;

    let mut rows: Vec<(MediaRow, Option<MediaRow>)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for &n in &steps {
        if started.elapsed() > budget {
            let msg = format!(
                "time budget ({} s) spent before {n} calls",
                budget.as_secs()
            );
            println!("media: {msg}");
            notes.push(msg);
            break;
        }
        println!("media: {n} concurrent calls");
        let row = match media_step(&node, &agent, n, rss_idle, warm, window, None).await {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("the {n}-call step could not run: {e:#}");
                println!("media: {msg}");
                notes.push(msg);
                break;
            }
        };
        print_row("node", &row);
        let base = match echo_step(echo.id(), echo_addr, n, Duration::from_secs(1), window).await {
            Ok(b) => {
                println!(
                    "  echo baseline: sent {} lost {}, rtt p99 {} ms, echo {:.2} cores, harness {:.2} cores",
                    b.res.sent,
                    b.res.lost,
                    f2(pct(&b.res.rtt, 99.0)),
                    b.cpu_cores,
                    b.gen_cores
                );
                Some(b)
            }
            Err(e) => {
                notes.push(format!(
                    "the echo baseline at {n} calls could not run: {e:#}"
                ));
                None
            }
        };
        // The run goes on until calls lose packets or fail to set up, or the budget is spent.
        let bad = row.res.lost > 0 || row.setup_failed > 0;
        rows.push((row, base));
        if bad {
            let msg =
                format!("{n} calls lost packets or set-ups: one step past the limit, stopping");
            println!("media: {msg}");
            notes.push(msg);
            break;
        }
    }
    let mut impaired = None;
    if impaired_calls > 0 {
        let impair = Impairment {
            max_delay: Duration::from_millis(60),
            swap: 0.02,
            drop: 0.01,
            pause: Duration::from_millis(500),
            // Inside the measured window, the whole half second in it.
            pause_start: (
                warm,
                warm + impaired_window.saturating_sub(Duration::from_secs(1)),
            ),
        };
        println!("media: {impaired_calls} calls, clean reference then impaired caller stream");
        let run = async {
            let clean =
                media_step(&node, &agent, impaired_calls, rss_idle, warm, window, None).await?;
            print_row("clean", &clean);
            let imp = media_step(
                &node,
                &agent,
                impaired_calls,
                rss_idle,
                warm,
                impaired_window,
                Some(impair),
            )
            .await?;
            print_row("impaired", &imp);
            anyhow::Ok((clean, imp))
        };
        match run.await {
            Ok((clean, imp)) => {
                impaired = Some(ImpairedRun {
                    impair,
                    window: impaired_window,
                    clean,
                    impaired: imp,
                })
            }
            Err(e) => notes.push(format!("the impairment run could not run: {e:#}")),
        }
    }
    let _ = echo.kill();
    let _ = echo.wait();
    println!(
        "media: agent: {} connections, {} dropped, {} reads without a kernel timestamp",
        agent.connections.load(Ordering::Relaxed),
        agent.dropped.load(Ordering::Relaxed),
        agent.untimed_reads.load(Ordering::Relaxed)
    );
    let metrics = node.metrics().await;
    let md = media_markdown(
        &rows,
        agent.realtime.load(Ordering::Relaxed),
        impaired.as_ref(),
        &notes,
        rss_idle,
        warm,
        window,
        &metrics,
    );
    let file = match parts {
        MediaParts::All => "calls-media.md",
        MediaParts::Impaired => "calls-media-impaired.md",
    };
    std::fs::write(dir.join(file), md)?;
    println!("media: wrote {}", dir.join(file).display());
    Ok(())
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

#[allow(clippy::too_many_arguments)]
fn media_markdown(
    rows: &[(MediaRow, Option<MediaRow>)],
    agent_realtime: bool,
    impaired: Option<&ImpairedRun>,
    notes: &[String],
    rss_idle: f64,
    warm: Duration,
    window: Duration,
    metrics: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Concurrent calls: G.711 RTP both ways through the agent bridge\n"
    );
    let _ = writeln!(
        s,
        "Harness: `scripts/bench.d/calls-media.sh` (`tests/src/bin/bench-calls.rs media`, load generator in \
         `tests/src/bin/bench-calls-io/`). One media node (release, `--call-handler bridge`, `RUST_LOG=warn`, \
         `--rate-limit 0`) with a routing file: trunk allowing 127.0.0.0/8, one number whose agent is an echo \
         agent in the harness process (Twilio Media Streams over WebSocket: a minimal WebSocket server on one \
         epoll thread that finds the `media` payload by a byte search and sends it straight back in a \
         preformatted `media` message). The caller is our own: a minimal SIP UAC (INVITE/ACK/BYE over UDP, \
         200 set-ups per second) and one connected UDP socket per call; one sender thread sends every call a \
         160-byte PCMU frame every 20 ms on an absolute schedule, the calls' phases spread evenly over the \
         20 ms period (as independent callers' are), each payload starting with a probe (call, sequence); \
         the sender runs at real-time priority (SCHED_FIFO 10{}) so that its packets leave on time however \
         busy the node keeps the cores, as a network's would arrive, and so does the agent thread (as an \
         agent on another machine would, it answers without waiting for the node's cores; both sleep \
         between bursts); \
         one receiver thread (epoll) takes the echoes. Each probe is timed on the wall clock four times: \
         caller send (just before `send`), agent receive and caller receive (the kernel's receive timestamps, \
         `SO_TIMESTAMPNS`, so the harness's own scheduling delay is not counted against the node), agent send \
         (just before `write`). Per step: {}s warm-up, then a {}s window; a probe sent in the window and \
         never echoed is lost. Node CPU is utime+stime of the node from `/proc/<pid>/stat` over the window \
         (harness CPU the same for the harness process: caller, agent and SIP together); CPU per call = node \
         cores ÷ calls × 100 (% of one core); memory per call is (RSS during the window − RSS of the idle \
         node, {:.0} KiB) ÷ calls. Baseline at each step: a minimal UDP echo process (`bench-calls udp-echo`, \
         one socket, recv/send loop) receiving the same packets per second from the same caller code. Steps \
         stop after the first one with loss or a failed set-up (one past the limit), or when the time budget \
         is spent; every step reached is in the table.\n",
        if rows.iter().all(|(r, _)| r.send.realtime) && agent_realtime {
            ""
        } else {
            ", where the kernel allowed it"
        },
        warm.as_secs(),
        window.as_secs(),
        rss_idle
    );
    let _ = writeln!(
        s,
        "Latency columns (ms): *round trip* = caller send → echo back at the caller as RTP; *agent* = the \
         echo agent's own time (receive → send, including its wait for its thread); *added* = round trip − \
         agent: what the node and the loopback network add, both ways; *in* = caller send → agent receives \
         (caller to agent through the node's jitter buffer); *out* = agent send → caller receives (agent to \
         caller through the node's playout). *Stream checks* (per call, by the agent, over the whole call): \
         `timestamp` not 20 ms after the previous / `chunk` not +1 / probe sequence not increasing; all 0 \
         means every call's frames reached the agent in order and 20 ms apart. *Caller late* counts sends \
         more than 2 ms behind their schedule (0 means the load generator kept its pace).\n"
    );
    if rows.is_empty() {
        for n in notes {
            let _ = writeln!(s, "Note: {n}.\n");
        }
        return impaired_only(s, impaired, metrics);
    }
    let _ = writeln!(
        s,
        "| calls | pkts/s each way | probes sent | lost (before agent) | set-up p50/p99 ms | round trip p50 / p99 | added p50 / p99 | in p50 / p99 | out p50 / p99 | agent p99 | stream checks ts / chunk / order | node CPU cores | CPU per call % of a core | calls per core | RSS/call KiB | node BYEs | harness CPU cores | caller late |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (r, _) in rows {
        let cpc = r.res.calls as f64 / r.cpu_cores.max(1e-9);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} ({}){} | {} / {} | {} / {} | {} / {} | {} / {} | {} / {} | {} | {} / {} / {} | {:.2} | {:.3} | {:.0} | {:.1} | {} | {:.2} | {} |",
            r.res.calls,
            r.res.calls * 50,
            r.res.sent,
            r.res.lost,
            r.res.lost_before_agent,
            if r.setup_failed > 0 {
                format!(", {} set-ups failed", r.setup_failed)
            } else {
                String::new()
            },
            f1(pct(&r.setup, 50.0)),
            f1(pct(&r.setup, 99.0)),
            f2(pct(&r.res.rtt, 50.0)),
            f2(pct(&r.res.rtt, 99.0)),
            f2(pct(&r.res.added, 50.0)),
            f2(pct(&r.res.added, 99.0)),
            f2(pct(&r.res.leg_in, 50.0)),
            f2(pct(&r.res.leg_in, 99.0)),
            f2(pct(&r.res.leg_out, 50.0)),
            f2(pct(&r.res.leg_out, 99.0)),
            f2(pct(&r.res.agent, 99.0)),
            r.streams.ts_gaps,
            r.streams.chunk_gaps,
            r.streams.out_of_order,
            r.cpu_cores,
            r.cpu_cores / r.res.calls.max(1) as f64 * 100.0,
            cpc,
            r.rss_per_call_kib,
            r.node_byes,
            r.gen_cores,
            r.send.late_over_2ms,
        );
    }
    let _ = writeln!(s, "\nBaseline, UDP echo at the same packet rates:\n");
    let _ = writeln!(
        s,
        "| calls | probes sent | lost | round trip p50 / p99 ms | echo CPU cores | harness CPU cores | node CPU ÷ echo CPU |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for (r, b) in rows {
        let Some(b) = b else { continue };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} | {:.2} | {:.2} | {:.1}× |",
            b.res.calls,
            b.res.sent,
            b.res.lost,
            f2(pct(&b.res.rtt, 50.0)),
            f2(pct(&b.res.rtt, 99.0)),
            b.cpu_cores,
            b.gen_cores,
            r.cpu_cores / b.cpu_cores.max(1e-9),
        );
    }
    for n in notes {
        let _ = writeln!(s, "\nNote: {n}.");
    }
    // Against the targets of issue 11.
    if !rows.is_empty() {
        let clean: Vec<&MediaRow> = rows
            .iter()
            .map(|(r, _)| r)
            .take_while(|r| r.res.lost == 0 && r.setup_failed == 0)
            .collect();
        let _ = writeln!(s, "\nAgainst the targets (issue 11):\n");
        match rows.iter().map(|(r, _)| r).find(|r| r.res.calls == 1000) {
            Some(r) => {
                let (a50, a99) = (pct(&r.res.added, 50.0), pct(&r.res.added, 99.0));
                let _ = writeln!(
                    s,
                    "- Added latency at 1,000 calls: p50 {} ms (≤ 2: {}), p99 {} ms (≤ 10: {}).",
                    f2(a50),
                    met(a50 <= 2.0),
                    f2(a99),
                    met(a99 <= 10.0)
                );
            }
            None => {
                let _ = writeln!(s, "- Added latency at 1,000 calls: step not reached.");
            }
        }
        match clean.last() {
            Some(best) => {
                let per_call = best.cpu_cores / best.res.calls.max(1) as f64 * 100.0;
                let ratio = rows
                    .iter()
                    .find(|(r, _)| r.res.calls == best.res.calls)
                    .and_then(|(r, b)| b.as_ref().map(|b| r.cpu_cores / b.cpu_cores.max(1e-9)));
                let _ = writeln!(
                    s,
                    "- Highest step with no loss and no failed set-up: **{} calls** (≥ 1,500: {}).",
                    best.res.calls,
                    met(best.res.calls >= 1500)
                );
                let _ = writeln!(
                    s,
                    "- Node CPU per call there: {:.3} % of a core, {:.0} calls per core (≤ 0.045 %: {}); node ÷ echo CPU {} (≤ 2.5×: {}).",
                    per_call,
                    best.res.calls as f64 / best.cpu_cores.max(1e-9),
                    met(per_call <= 0.045),
                    ratio
                        .map(|x| format!("{x:.1}×"))
                        .unwrap_or_else(|| "-".into()),
                    met(ratio.is_some_and(|x| x <= 2.5)),
                );
            }
            None => {
                let _ = writeln!(s, "- No step ran without loss.");
            }
        }
        let gens: Vec<f64> = rows.iter().map(|(r, _)| r.gen_cores).collect();
        let gmax = gens.iter().cloned().fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "- The load generator (caller, echo agent and SIP UAC, one process) used at most {gmax:.2} of the 2 cores (per step in the *harness CPU* column)."
        );
    }
    impaired_only(s, impaired, metrics)
}

/// The impairment section and the node's counters.
fn impaired_only(mut s: String, impaired: Option<&ImpairedRun>, metrics: &str) -> String {
    if let Some(im) = impaired {
        impaired_markdown(&mut s, im);
    }
    let interesting = [
        "switchboard_rtp_packets_dropped_total",
        "switchboard_agent_events_dropped_total",
        "switchboard_media_tick_overruns_total",
        "switchboard_playout_underruns_total",
        "switchboard_rtp_packets_lost_total",
        "switchboard_caller_frames_concealed_total",
        "switchboard_caller_packets_late_total",
        "switchboard_playout_overflow_bytes_total",
    ];
    let _ = writeln!(s, "\nNode counters at the end of the run:\n");
    for name in interesting {
        if metrics.contains(name) {
            let _ = writeln!(s, "- `{name}`: {}", metric_sum(metrics, name, ""));
        }
    }
    s
}

fn impaired_markdown(s: &mut String, im: &ImpairedRun) {
    let i = im.impair;
    let _ = writeln!(s, "\n### Impaired caller stream\n");
    let _ = writeln!(
        s,
        "The same caller, its RTP toward the node spoiled by the caller itself (no netem): each packet \
         delayed by a uniform random {} to {} ms (which reorders packets by itself), {:.0} % of packets sent \
         right after the next one (explicit swaps), {:.0} % never sent, and once per call a {} ms pause in \
         the window (the packets of that stretch held, then sent together: a burst). {} calls, {}s window, \
         after a clean reference run of the same calls. What the agent must see: per call, frames in order \
         (probe sequence increasing), `timestamp` 20 ms apart and `chunk` +1 (counted as violations), \
         losses concealed as silence frames (all 0xFF). *In* is caller send → agent receive (the node's \
         buffering, on top of the caller's own delay); *in from planned* is the packet's clean-line send time \
         → agent receive, i.e. including the impairment's own delay. *Added round trip* also holds the \
         agent → caller direction, where the echo of a burst is played out at the 20 ms pace.\n",
        0,
        i.max_delay.as_millis(),
        i.swap * 100.0,
        i.drop * 100.0,
        i.pause.as_millis(),
        im.impaired.res.calls,
        im.window.as_secs(),
    );
    let _ = writeln!(
        s,
        "| run | calls | packets sent | dropped by caller | swapped | held by pause | probes at agent | probes sent in the window, never at agent | silence frames at agent | out of order | timestamp not +20 ms | chunk not +1 | in p50 / p99 / max ms | in from planned p50 / p99 / max ms | added round trip p50 / p99 ms | node CPU cores |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (name, r) in [("clean", &im.clean), ("impaired", &im.impaired)] {
        let planned = if r.res.in_planned.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{} / {} / {}",
                f1(pct(&r.res.in_planned, 50.0)),
                f1(pct(&r.res.in_planned, 99.0)),
                f1(pct(&r.res.in_planned, 100.0))
            )
        };
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {planned} | {} / {} | {:.2} |",
            r.res.calls,
            r.send.sent,
            r.send.dropped,
            r.send.swapped,
            r.send.held,
            r.streams.probes,
            r.res.lost_before_agent,
            r.streams.silence,
            r.streams.out_of_order,
            r.streams.ts_gaps,
            r.streams.chunk_gaps,
            f1(pct(&r.res.leg_in, 50.0)),
            f1(pct(&r.res.leg_in, 99.0)),
            f1(pct(&r.res.leg_in, 100.0)),
            f1(pct(&r.res.added, 50.0)),
            f1(pct(&r.res.added, 99.0)),
            r.cpu_cores,
        );
    }
    let r = &im.impaired;
    let ok = r.streams.out_of_order == 0 && r.streams.ts_gaps == 0 && r.streams.chunk_gaps == 0;
    let _ = writeln!(
        s,
        "\nUnder impairment: frames in order and 20 ms apart: **{}** ({} out of order, {} timestamp and {} chunk violations over {} media frames on {} streams); \
         {} packets dropped by the caller vs {} silence frames at the agent (clean run: {}); \
         added latency caller send → agent: p50 {} / p99 {} / max {} ms, against {} / {} / {} ms on the clean line.",
        if ok { "yes" } else { "no" },
        r.streams.out_of_order,
        r.streams.ts_gaps,
        r.streams.chunk_gaps,
        r.streams.media,
        r.streams.streams,
        r.send.dropped,
        r.streams.silence,
        im.clean.streams.silence,
        f1(pct(&r.res.leg_in, 50.0)),
        f1(pct(&r.res.leg_in, 99.0)),
        f1(pct(&r.res.leg_in, 100.0)),
        f1(pct(&im.clean.res.leg_in, 50.0)),
        f1(pct(&im.clean.res.leg_in, 99.0)),
        f1(pct(&im.clean.res.leg_in, 100.0)),
    );
}

// ------------------------------------------------------------------------------------------
// Part 1: call set-up rate with SIPp.

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Uas,
    Logging,
    Bridge,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Uas => "SIPp UAS (`-sn uas`, baseline)",
            Target::Logging => "media node, `--call-handler logging`",
            Target::Bridge => "media node, echo agent bridge",
        }
    }
}

struct SetupRow {
    rate: u64,
    attempted: u64,
    ok: u64,
    failed: u64,
    rejected_503: f64,
    retrans: u64,
    p50: f64,
    p99: f64,
    max: f64,
    cpu: f64,
    elapsed: f64,
    rss_kib: f64,
}

fn scenario_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts/bench.d/sipp/uac_setup.xml")
}

fn stat_last(path: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(head) = lines.next() else {
        return HashMap::new();
    };
    let Some(last) = lines.next_back() else {
        return HashMap::new();
    };
    head.split(';')
        .map(str::to_owned)
        .zip(last.split(';').map(str::to_owned))
        .collect()
}

async fn setup_step(
    target: Target,
    rate: u64,
    secs: u64,
    agent_url: &str,
) -> anyhow::Result<SetupRow> {
    let dir = tempfile::tempdir()?;
    let calls = rate * secs;
    let mut node = None;
    let mut uas = None;
    let remote: SocketAddr;
    let pid: u32;
    match target {
        Target::Uas => {
            let port = switchboard_tests::node::free_port();
            let child = Command::new("sipp")
                .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &port.to_string()])
                .args(["-nostdin", "-bind_local"])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawning sipp uas")?;
            pid = child.id();
            uas = Some(child);
            remote = format!("127.0.0.1:{port}").parse()?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Target::Logging | Target::Bridge => {
            let h = if target == Target::Logging {
                "logging"
            } else {
                "bridge"
            };
            let n = Node::start(h, agent_url, 1000).await?;
            pid = n.pid();
            remote = n.sip;
            node = Some(n);
        }
    }
    let c0 = cpu_secs(pid);
    let t0 = Instant::now();
    let out = tokio::process::Command::new("sipp")
        .arg(remote.to_string())
        .arg("-sf")
        .arg(scenario_path())
        .args(["-s", NUMBER, "-i", "127.0.0.1"])
        .args(["-p", &switchboard_tests::node::free_port().to_string()])
        .args(["-r", &rate.to_string(), "-m", &calls.to_string()])
        .args(["-l", "100000", "-recv_timeout", "8000"])
        .args(["-timeout", &format!("{}s", secs + 25)])
        .args(["-trace_stat", "-stf", "stat.csv", "-fd", "1"])
        .args(["-trace_rtt", "-rtt_freq", "1", "-nostdin"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(secs + 40), out)
        .await
        .context("sipp did not exit")??;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_secs(pid) - c0) / elapsed;
    let rss_kib = rss_kib(pid);
    let stat = stat_last(&dir.path().join("stat.csv"));
    let num = |k: &str| -> u64 { stat.get(k).and_then(|v| v.trim().parse().ok()).unwrap_or(0) };
    let ok = num("SuccessfulCall(C)");
    let failed = num("FailedCall(C)");
    let retrans = num("Retransmissions(C)");
    if stat.is_empty() {
        eprintln!(
            "sipp wrote no statistics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut rtts = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir.path()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with("_rtt.csv") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                rtts.extend(
                    text.lines()
                        .skip(1)
                        .filter_map(|l| l.split(';').nth(1)?.trim().parse::<f64>().ok()),
                );
            }
        }
    }
    let rtts = sorted(rtts);
    let rejected_503 = match &node {
        Some(n) => metric_sum(
            &n.metrics().await,
            "switchboard_sip_calls_total",
            "code=\"503\"",
        ),
        None => 0.0,
    };
    // SIPp counts a call that ended on our 503 branch as successful: it is not.
    let ok = ok.saturating_sub(rejected_503 as u64);
    let failed = failed + rejected_503 as u64;
    if let Some(mut c) = uas {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(node);
    Ok(SetupRow {
        rate,
        attempted: calls,
        ok,
        failed,
        rejected_503,
        retrans,
        p50: percentile(&rtts, 50.0),
        p99: percentile(&rtts, 99.0),
        max: rtts.last().copied().unwrap_or(f64::NAN),
        cpu,
        elapsed,
        rss_kib,
    })
}

async fn setup_bench(dir: &Path) -> anyhow::Result<()> {
    let secs = env_u64("BENCH_SETUP_STEP_SECS", 10);
    let rates: Vec<u64> = std::env::var("BENCH_SETUP_RATES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 200, 400, 700, 1000, 1400, 2000, 2800, 4000]);
    let budget = Duration::from_secs(env_u64("BENCH_SETUP_BUDGET_SECS", 420));
    let started = Instant::now();
    let agent = Arc::new(AgentShared::default());
    let url = start_agent(agent)?;
    let mut tables: Vec<(Target, Vec<SetupRow>)> = Vec::new();
    let targets = [Target::Uas, Target::Logging, Target::Bridge];
    for (ti, target) in targets.into_iter().enumerate() {
        let mut rows = Vec::new();
        for &rate in &rates {
            // Leave each later target a fair share of the budget.
            let share = budget.as_secs_f64() * (ti + 1) as f64 / targets.len() as f64;
            if started.elapsed().as_secs_f64() > share {
                println!(
                    "setup: {}: time budget spent before {rate}/s",
                    target.label()
                );
                break;
            }
            let row = setup_step(target, rate, secs, &url).await?;
            let ratio = row.ok as f64 / row.attempted.max(1) as f64;
            println!(
                "setup: {} at {rate}/s: {}/{} ok ({:.2} %), 503 {}, p50 {} p99 {} ms, CPU {:.2} cores",
                target.label(),
                row.ok,
                row.attempted,
                ratio * 100.0,
                row.rejected_503,
                row.p50,
                row.p99,
                row.cpu
            );
            rows.push(row);
            if ratio < 0.999 {
                break;
            }
        }
        tables.push((target, rows));
    }
    std::fs::write(dir.join("calls-setup.md"), setup_markdown(&tables, secs))?;
    Ok(())
}

fn setup_markdown(tables: &[(Target, Vec<SetupRow>)], secs: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Call set-up rate\n");
    let _ = writeln!(
        s,
        "Harness: `scripts/bench.d/calls-setup.sh` (`tests/src/bin/bench-calls.rs setup`). SIPp \
         (`scripts/bench.d/sipp/uac_setup.xml`: INVITE, 200, ACK, BYE at once; a 503 is ACKed and counted \
         failed from the node's `switchboard_sip_calls_total{{code=\"503\"}}`, as SIPp counts that branch a success) places `rate × {secs}` calls at each rate (`sipp -r RATE -m N -recv_timeout 8000`), against a fresh \
         target per step: a SIPp UAS (baseline), a media node with `--call-handler logging` (signalling \
         only: no agent, no RTP engine), and a media node bridging each call to an echo agent (WebSocket \
         opened before the 200, RTP engine started). Nodes: release build, routing file with one trunk \
         allowing 127.0.0.0/8, `--rate-limit 0`, `--max-calls 1000`, `RUST_LOG=warn`. Success = SIPp's \
         `SuccessfulCall` / calls attempted; set-up latency = INVITE sent → 200 received (SIPp `rtd`, \
         `-trace_rtt`, millisecond resolution: 0 means under 1 ms). Target CPU = utime+stime of the target \
         process over the SIPp run ÷ its wall time. Rates step up until success falls below 99.9 %; that \
         last step is shown as *one step past the limit*. SIPp itself is one process sharing the two cores.\n"
    );
    for (t, rows) in tables {
        let _ = writeln!(s, "### {}\n", t.label());
        let _ = writeln!(
            s,
            "| rate /s | attempted | ok | failed | success % | 503 sent | retransmissions | set-up p50 / p99 / max ms | target CPU cores | set-ups/s per core | run s | RSS MiB |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in rows {
            let ratio = r.ok as f64 / r.attempted.max(1) as f64 * 100.0;
            let _ = writeln!(
                s,
                "| {}{} | {} | {} | {} | {:.2} | {} | {} | {} / {} / {} | {:.2} | {:.0} | {:.1} | {:.1} |",
                r.rate,
                if ratio < 99.9 {
                    " (past the limit)"
                } else {
                    ""
                },
                r.attempted,
                r.ok,
                r.failed,
                ratio,
                if *t == Target::Uas {
                    "-".to_string()
                } else {
                    format!("{}", r.rejected_503)
                },
                r.retrans,
                r.p50,
                r.p99,
                r.max,
                r.cpu,
                r.rate as f64 / r.cpu.max(1e-9),
                r.elapsed,
                r.rss_kib / 1024.0,
            );
        }
        let best = rows
            .iter()
            .filter(|r| r.ok as f64 / r.attempted.max(1) as f64 >= 0.999)
            .max_by_key(|r| r.rate);
        match best {
            Some(b) => {
                let _ = writeln!(
                    s,
                    "\nHighest rate with ≥ 99.9 % success: **{}/s** (set-up p99 {} ms, {:.2} cores → {:.0} set-ups/s per core).\n",
                    b.rate,
                    b.p99,
                    b.cpu,
                    b.rate as f64 / b.cpu.max(1e-9)
                );
            }
            None => {
                let _ = writeln!(s, "\nNo rate reached 99.9 % success.\n");
            }
        }
    }
    s
}

// ------------------------------------------------------------------------------------------

fn udp_echo() -> anyhow::Result<()> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    // Room for a burst from thousands of callers; the echo loop itself stays minimal.
    fastio::sys::set_rcvbuf(std::os::fd::AsRawFd::as_raw_fd(&sock), 8 << 20);
    println!("{}", sock.local_addr()?);
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let _ = sock.send_to(&buf[..n], from);
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    if mode == "udp-echo" {
        return udp_echo();
    }
    let dir = PathBuf::from(args.get(2).map(String::as_str).unwrap_or("bench/results"));
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match mode {
            "setup" => setup_bench(&dir).await,
            "media" => media_bench(&dir, MediaParts::All).await,
            "media-impaired" => media_bench(&dir, MediaParts::Impaired).await,
            _ => bail!(
                "usage: bench-calls setup|media|media-impaired RESULTS_DIR | bench-calls udp-echo"
            ),
        }
    })
}
