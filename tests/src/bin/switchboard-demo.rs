//! `make demo`: a local Switchboard fleet taking real calls.
//!
//! The operator reads examples/ (one trunk, two numbers) in file-source mode
//! and programs two media nodes over gRPC; the demo agent
//! (examples/demo-agent) answers; SIPp calls each number through a different
//! node, and the call API places an outbound call through a SIPp carrier on
//! 127.0.0.1:5080 that checks the demo credentials. The demo prints routing,
//! API and agent events, frames each way and the measured audio round trip,
//! then the resources' status table, and ends with ONE line: `DEMO OK` or
//! `DEMO FAILED` (exit status 1). Everything it started is stopped on exit,
//! including Ctrl-C, unless `--keep` asks to leave the fleet up.
//!
//! Flags: `--keep` (leave the fleet running and print how to call it),
//! `--no-agent` / `--no-carrier` (leave a part out to see a failure).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use switchboard_tests::node::{NodeSpec, free_port, http_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where examples/numbers.yaml points the agent.
const AGENT_ADDR: &str = "127.0.0.1:8765";
/// Where examples/trunk-local.yaml sends outbound calls.
const CARRIER_PORT: u16 = 5080;
/// The token of the demo's call API (a demo value; generate your own).
const API_TOKEN: &str = "demo-api-token";
const NUMBERS: [&str; 2] = ["+14155550100", "+14155550101"];
/// How long each call talks.
const TALK_MS: u64 = 4000;
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Flags {
    keep: bool,
    no_agent: bool,
    no_carrier: bool,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("binary directory")?;
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: build it first (make demo builds every binary)",
            p.display()
        );
    }
    Ok(p)
}

fn say(text: &str) {
    println!("==> {text}");
}

/// An even RTP port whose neighbours are free too (SIPp uses port+2).
fn media_port(len: u16) -> u16 {
    // Blocks from the shared allocator never overlap (a node's RTP range and a SIPp
    // caller's media port once did); skip one that something else on the machine holds.
    for _ in 0..50 {
        let p = switchboard_tests::ports::rtp_block(len);
        if (0..4).all(|i| UdpSocket::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
    switchboard_tests::ports::rtp_block(len)
}

/// Every process the demo started; stopped on drop.
#[derive(Default)]
struct Fleet {
    children: Vec<(String, Child)>,
    keep: bool,
}

impl Fleet {
    fn spawn(&mut self, name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    /// Fails when a process the demo relies on has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, c) in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                bail!("{name} exited ({status})");
            }
        }
        Ok(())
    }

    fn stop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if !self.keep {
            self.stop();
        }
    }
}

struct Node {
    name: String,
    sip: SocketAddr,
    http: SocketAddr,
    api: SocketAddr,
    control: SocketAddr,
    log: PathBuf,
}

/// Call events seen on the nodes' API streams.
type Events = Arc<Mutex<Vec<(String, Value)>>>;

async fn api(
    node: &Node,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut s = tokio::net::TcpStream::connect(node.api).await?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        node.api,
        payload.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Follows a node's `/v1/calls/events` (NDJSON, chunked) and prints each
/// event as it happens.
async fn watch_events(name: String, addr: SocketAddr, events: Events) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let req = format!(
        "GET /v1/calls/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_TOKEN}\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut head_done = false;
    let mut text = Vec::new();
    loop {
        let Ok(n) = s.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        raw.extend_from_slice(&buf[..n]);
        if !head_done {
            let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            raw.drain(..i + 4);
            head_done = true;
        }
        // De-chunk what is complete.
        while let Some(i) = raw.windows(2).position(|w| w == b"\r\n") {
            let size = String::from_utf8_lossy(&raw[..i]).trim().to_owned();
            let Ok(len) = usize::from_str_radix(&size, 16) else {
                return;
            };
            if raw.len() < i + 2 + len + 2 {
                break;
            }
            text.extend_from_slice(&raw[i + 2..i + 2 + len]);
            raw.drain(..i + 2 + len + 2);
        }
        while let Some(i) = text.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = text.drain(..=i).collect();
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let c = &ev["call"];
            let dir = if c["direction"] == "CALL_DIRECTION_INBOUND" {
                "inbound"
            } else {
                "outbound"
            };
            let mut extra = String::new();
            if ev["event"] == "answered" {
                // The routing decision the node took for the call.
                extra = format!(
                    " (number {} on trunk {}, agent {})",
                    c["numberId"].as_str().unwrap_or("?"),
                    c["trunkId"].as_str().unwrap_or("?"),
                    c["agentUrl"].as_str().unwrap_or("-")
                );
            }
            if ev["event"] == "completed" {
                extra = format!(
                    " code {} reason \"{}\" after {:.1}s",
                    c["finalCode"].as_u64().unwrap_or(0),
                    c["reason"].as_str().unwrap_or(""),
                    c["durationSeconds"].as_f64().unwrap_or(0.0)
                );
            }
            println!(
                "    [api {name}] {:<9} {} {dir} {} -> {}{extra}",
                ev["event"].as_str().unwrap_or("?"),
                c["id"].as_str().unwrap_or("?"),
                c["from"].as_str().unwrap_or("?"),
                c["to"].as_str().unwrap_or("?"),
            );
            if let Ok(mut e) = events.lock() {
                e.push((name.clone(), ev));
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sum of a metric's samples (every label set) in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .fold(0.0, |a, b| a + b)
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn run_sipp(args: Vec<String>, log: PathBuf) -> anyhow::Result<bool> {
    let out = std::fs::File::create(&log)?;
    let mut child = tokio::process::Command::new("sipp")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .context("starting sipp (install it with `make test-deps`)")?;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .context("sipp did not finish")??;
    Ok(status.success())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut flags = Flags::default();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--keep" => flags.keep = true,
            "--no-agent" => flags.no_agent = true,
            "--no-carrier" => flags.no_carrier = true,
            other => {
                eprintln!("unknown flag {other}: use --keep, --no-agent, --no-carrier");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let mut fleet = Fleet::default();
    // Logs stay when the demo fails or keeps running, for a closer look.
    let logs = match tempfile::Builder::new()
        .prefix("switchboard-demo-")
        .tempdir()
    {
        Ok(d) => d.keep(),
        Err(e) => {
            println!("DEMO FAILED: cannot create a log directory: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = tokio::select! {
        r = demo(&flags, &mut fleet, &logs) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match result {
        Ok(summary) => {
            if flags.keep {
                fleet.keep = true;
                let pids: Vec<String> = fleet
                    .children
                    .iter()
                    .map(|(_, c)| c.id().to_string())
                    .collect();
                println!(
                    "    the fleet keeps running; stop it with: kill {}",
                    pids.join(" ")
                );
            }
            if !flags.keep {
                let _ = std::fs::remove_dir_all(&logs);
            }
            println!("DEMO OK: {summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            fleet.stop();
            println!("    logs kept in {}", logs.display());
            println!("DEMO FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn demo(flags: &Flags, fleet: &mut Fleet, logs: &Path) -> anyhow::Result<String> {
    let examples = repo().join("examples");
    let scenarios = examples.join("demo-agent/sipp");
    say(&format!("logs in {}", logs.display()));

    for (what, addr) in [
        ("the demo agent", AGENT_ADDR.to_string()),
        ("the demo carrier", format!("127.0.0.1:{CARRIER_PORT}")),
    ] {
        if std::net::TcpListener::bind(&addr).is_err() || UdpSocket::bind(&addr).is_err() {
            bail!("{addr} is in use: examples/ puts {what} there; stop whatever uses it");
        }
    }

    // 1. The agent.
    if flags.no_agent {
        say("NOT starting the demo agent (--no-agent): calls must fail");
    } else {
        say(&format!(
            "starting the demo agent on ws://{AGENT_ADDR}/agent"
        ));
        fleet.spawn(
            "demo agent",
            Command::new(bin("switchboard-demo-agent")?).args(["--listen", AGENT_ADDR]),
            &logs.join("agent.log"),
        )?;
    }

    // 2. Two media nodes, programmed by the operator only.
    let token_file = logs.join("api-token");
    std::fs::write(&token_file, API_TOKEN)?;
    let mut nodes = Vec::new();
    for i in 0..2 {
        let name = format!("media-{i}");
        let port = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let node = Node {
            log: logs.join(format!("{name}.log")),
            sip: port(free_port()),
            http: port(free_port()),
            api: port(free_port()),
            control: port(free_port()),
            name,
        };
        let rtp = media_port(101);
        let mut spec = NodeSpec::new(bin("switchboard-media-node")?).extra([
            "--node-id",
            &node.name,
            "--control-bind",
            &node.control.to_string(),
            "--control-insecure",
            "--api-bind",
            &node.api.to_string(),
            "--api-token-file",
            &token_file.to_string_lossy(),
        ]);
        spec.sip = node.sip;
        spec.http = node.http;
        spec.rtp = (rtp, rtp + 100);
        fleet.spawn(&node.name, &mut spec.command(), &node.log)?;
        say(&format!(
            "media node {} : SIP {} | control (gRPC) {} | call API {}",
            node.name, node.sip, node.control, node.api
        ));
        nodes.push(node);
    }
    let op_log = logs.join("operator.log");
    let routing = logs.join("routing.json");
    let mut op = Command::new(bin("switchboard-operator")?);
    op.arg("--manifests")
        .arg(&examples)
        .arg("--emit-config")
        .arg(&routing)
        .args(["--control-insecure", "--http-bind"])
        .arg(format!("127.0.0.1:{}", free_port()));
    for n in &nodes {
        op.args(["--node", &format!("{}={}", n.name, n.control)]);
    }
    say(&format!(
        "starting the operator: --manifests {} programming both nodes over gRPC",
        examples.display()
    ));
    fleet.spawn("operator", &mut op, &op_log)?;
    for n in &nodes {
        let http = n.http;
        wait_until(
            &format!("{} to be programmed", n.name),
            WAIT,
            || async move {
                matches!(
                    http_request(http, "GET", "/readyz", None).await,
                    Ok((200, _))
                )
            },
        )
        .await
        .with_context(|| format!("operator log:\n{}", tail(&op_log, 20)))?;
    }
    fleet.check_alive()?;

    // 3. Routing as programmed.
    say("routing (from the operator's resolved configuration)");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(&routing).unwrap_or_default())
        .unwrap_or(Value::Null);
    for t in cfg["trunks"].as_array().into_iter().flatten() {
        let gws: Vec<String> = t["outbound"]["gateways"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| format!("{}:{}", g["host"].as_str().unwrap_or("?"), g["port"]))
            .collect();
        println!(
            "    trunk {}: inbound from {}, outbound via {} (digest as {}), limits {} calls / {} cps fleet-wide",
            t["id"].as_str().unwrap_or("?"),
            t["inbound"]["allowedSources"],
            gws.join(", "),
            t["outbound"]["auth"]["username"].as_str().unwrap_or("-"),
            t["limits"]["maxConcurrentCalls"],
            t["limits"]["maxCallsPerSecond"],
        );
    }
    for n in cfg["numbers"].as_array().into_iter().flatten() {
        println!(
            "    number {} ({}) -> trunk {} -> agent {} params {}",
            n["e164"].as_str().unwrap_or("?"),
            n["id"].as_str().unwrap_or("?"),
            n["trunkId"].as_str().unwrap_or("?"),
            n["agent"]["url"].as_str().unwrap_or("-"),
            n["agent"]["parameters"],
        );
    }

    let events: Events = Default::default();
    for n in &nodes {
        tokio::spawn(watch_events(n.name.clone(), n.api, events.clone()));
    }
    // Give the watchers their connection before the calls (poll the
    // listeners rather than sleep: a GET answered means the router is up).
    for n in &nodes {
        let (status, _) = api(n, "GET", "/v1/calls", None).await?;
        anyhow::ensure!(status == 200, "call API on {} answered {status}", n.name);
    }

    // 4. Calls: one inbound call into each number, each through its node,
    // and one outbound call through the API.
    let mut failures = Vec::new();
    let carrier = if flags.no_carrier {
        say("NOT starting the SIPp carrier (--no-carrier): the outbound call must fail");
        None
    } else {
        say(&format!(
            "SIPp carrier on 127.0.0.1:{CARRIER_PORT} (checks our digest against examples/carrier-credentials.yaml, echoes audio)"
        ));
        let args: Vec<String> = [
            "-sf",
            &scenarios.join("carrier.xml").display().to_string(),
            "-i",
            "127.0.0.1",
            "-p",
            &CARRIER_PORT.to_string(),
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port(4).to_string(),
            "-rtp_echo",
            "-m",
            "1",
            "-timeout",
            "60s",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
            "-error_file",
            &logs.join("carrier-errors.log").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Some(tokio::spawn(run_sipp(args, logs.join("carrier.log"))))
    };

    let mut callers = Vec::new();
    for (n, number) in nodes.iter().zip(NUMBERS) {
        say(&format!(
            "SIPp calls {number} through {} ({}), echoing the audio it hears",
            n.name, n.sip
        ));
        let args: Vec<String> = [
            &n.sip.to_string(),
            "-sf",
            &scenarios.join("caller.xml").display().to_string(),
            "-s",
            number.trim_start_matches('+'),
            "-i",
            "127.0.0.1",
            "-p",
            &free_port().to_string(),
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port(4).to_string(),
            "-rtp_echo",
            "-d",
            &TALK_MS.to_string(),
            "-m",
            "1",
            "-timeout",
            "40s",
            "-timeout_error",
            "-nostdin",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = logs.join(format!("caller-{}.log", n.name));
        callers.push((number, n.name.clone(), tokio::spawn(run_sipp(args, log))));
    }

    say(&format!(
        "call API: POST http://{}/v1/calls from {} to +14155550199",
        nodes[0].api, NUMBERS[0]
    ));
    let body = serde_json::json!({"from": NUMBERS[0], "to": "+14155550199",
        "agent": {"parameters": {"campaign": "demo"}}});
    let (status, resp) = api(&nodes[0], "POST", "/v1/calls", Some(&body)).await?;
    let out_id = resp["call"]["id"].as_str().unwrap_or_default().to_owned();
    if status != 201 || out_id.is_empty() {
        failures.push(format!(
            "the call API refused the outbound call: {status} {resp}"
        ));
    } else {
        println!("    -> 201, call {out_id} queued");
        let id = out_id.clone();
        let node = &nodes[0];
        let answered = wait_until(
            "the outbound call to be answered",
            Duration::from_secs(15),
            || {
                let id = id.clone();
                async move {
                    let s = api(node, "GET", &format!("/v1/calls/{id}"), None)
                        .await
                        .map(|(_, c)| c["state"].as_str().unwrap_or("").to_owned())
                        .unwrap_or_default();
                    s == "CALL_STATE_ANSWERED" || s == "CALL_STATE_COMPLETED"
                }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(TALK_MS)).await;
        let (_, c) = api(node, "GET", &format!("/v1/calls/{out_id}"), None).await?;
        match (answered, c["state"].as_str()) {
            (Ok(()), Some("CALL_STATE_ANSWERED")) => {
                say(&format!("call API: DELETE /v1/calls/{out_id} (hang up)"));
                let (status, resp) =
                    api(node, "DELETE", &format!("/v1/calls/{out_id}"), None).await?;
                if status != 202 {
                    failures.push(format!("hanging up the outbound call: {status} {resp}"));
                }
            }
            _ => failures.push(format!(
                "outbound call {out_id} was not up after {TALK_MS} ms: {} ({})",
                c["state"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("")
            )),
        }
        let id = out_id.clone();
        wait_until("the outbound call to complete", WAIT, || {
            let id = id.clone();
            async move {
                api(node, "GET", &format!("/v1/calls/{id}"), None)
                    .await
                    .is_ok_and(|(_, c)| c["state"] == "CALL_STATE_COMPLETED")
            }
        })
        .await?;
    }

    for (number, node, h) in callers {
        match h.await? {
            Ok(true) => println!("    inbound call to {number} via {node}: completed"),
            Ok(false) => {
                let log = logs.join(format!("caller-{node}.log"));
                // The tail says why (a port SIPp could not bind, a timeout, a refusal) even when
                // the logs directory is gone by the time someone reads this.
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                let tail = lines[lines.len().saturating_sub(6)..].join(" | ");
                failures.push(format!(
                    "inbound call to {number} via {node} failed (SIPp log: {}; ends: {tail})",
                    log.display()
                ));
            }
            Err(e) => failures.push(format!("inbound call to {number}: {e:#}")),
        }
    }
    if let Some(h) = carrier {
        match h.await? {
            Ok(true) => println!("    outbound call through the SIPp carrier: completed"),
            Ok(false) => failures.push(format!(
                "the SIPp carrier saw a failed call (errors: {})",
                logs.join("carrier-errors.log").display()
            )),
            Err(e) => failures.push(format!("the SIPp carrier: {e:#}")),
        }
    } else if !out_id.is_empty() {
        let (_, c) = api(&nodes[0], "GET", &format!("/v1/calls/{out_id}"), None).await?;
        if c["answeredAtMs"].is_null() {
            failures.push(format!(
                "outbound call {out_id} failed: {}",
                c["reason"].as_str().unwrap_or("?")
            ));
        }
    }

    // 5. What the agent saw, and the media counters of each node. The
    // agent writes its summary when the node closes the stream, and the
    // API's completed events arrive on their own streams: wait (bounded)
    // for both before judging.
    let expected = 2 + usize::from(!out_id.is_empty());
    let agent_path = logs.join("agent.log");
    if !flags.no_agent {
        let path = agent_path.clone();
        let _ = wait_until(
            "the agent's call summaries",
            Duration::from_secs(10),
            || {
                let path = path.clone();
                async move {
                    std::fs::read_to_string(&path)
                        .unwrap_or_default()
                        .matches("agent-summary ")
                        .count()
                        >= expected
                }
            },
        )
        .await;
    }
    let ev_ref = events.clone();
    let _ = wait_until("the completed events", Duration::from_secs(10), || {
        let ev_ref = ev_ref.clone();
        async move {
            ev_ref
                .lock()
                .map(|e| e.iter().filter(|(_, e)| e["event"] == "completed").count())
                .unwrap_or(0)
                >= expected
        }
    })
    .await;
    say("agent");
    let agent_log = std::fs::read_to_string(&agent_path).unwrap_or_default();
    for l in agent_log.lines().filter(|l| l.starts_with("[agent")) {
        println!("    {l}");
    }
    let summaries: Vec<Value> = agent_log
        .lines()
        .filter_map(|l| l.strip_prefix("agent-summary "))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect();
    let mut rtts = Vec::new();
    say("media");
    for s in &summaries {
        let params = &s["customParameters"];
        let rtt = s["rttMedianMs"]
            .as_f64()
            .map(|r| format!("{r:.1} ms (median of {})", s["rttSamples"]))
            .unwrap_or_else(|| "not measured (no echo came back)".into());
        if let Some(r) = s["rttMedianMs"].as_f64() {
            rtts.push(r);
        }
        println!(
            "    call {}: {} frames node->agent, {} frames agent->node, dtmf {:?}, marks {}, audio round trip {rtt}",
            params["callId"]
                .as_str()
                .unwrap_or(s["callSid"].as_str().unwrap_or("?")),
            s["mediaIn"],
            s["mediaOut"],
            s["dtmf"].as_str().unwrap_or(""),
            s["marks"],
        );
    }
    for n in &nodes {
        if let Ok((_, m)) = http_request(n.http, "GET", "/metrics", None).await {
            println!(
                "    {}: RTP packets in {} / out {}, agent connects {} (failures {}), playout underruns {}",
                n.name,
                metric_sum(&m, "switchboard_rtp_packets_received_total"),
                metric_sum(&m, "switchboard_rtp_packets_sent_total"),
                metric_sum(&m, "switchboard_agent_connect_seconds_count"),
                metric_sum(&m, "switchboard_agent_connect_failures_total"),
                metric_sum(&m, "switchboard_playout_underruns_total"),
            );
        }
    }
    // Every call must have reached the agent, with audio both ways.
    if summaries.len() < expected {
        failures.push(format!(
            "the agent saw {} of {expected} calls",
            summaries.len()
        ));
    }
    for s in &summaries {
        if s["mediaIn"].as_u64().unwrap_or(0) == 0 || s["mediaOut"].as_u64().unwrap_or(0) == 0 {
            failures.push(format!("no audio both ways on stream {}", s["streamSid"]));
        }
    }
    let evs = events.lock().map(|e| e.clone()).unwrap_or_default();
    let completed = evs
        .iter()
        .filter(|(_, e)| e["event"] == "completed")
        .count();
    println!(
        "    call API events seen: {} ({completed} completed)",
        evs.len()
    );

    // 6. The resources as the operator reports them.
    // The operator reprints its table when the nodes' status changes (rate
    // limited): wait (bounded) for the one after the calls ended.
    say("resources (operator status)");
    let last_table = |text: &str| -> Option<String> {
        let tables: Vec<&str> = text.split("KIND ").collect();
        let last = tables.last().filter(|_| tables.len() > 1)?;
        let rows: Vec<&str> = last.lines().take_while(|l| !l.trim().is_empty()).collect();
        Some(format!("KIND {}", rows.join("\n    ")))
    };
    let op = op_log.clone();
    let _ = wait_until(
        "the operator's table after the calls",
        Duration::from_secs(10),
        || {
            let op = op.clone();
            async move {
                let text = std::fs::read_to_string(&op).unwrap_or_default();
                last_table(&text).is_some_and(|t| t.contains(" 0 active calls"))
            }
        },
    )
    .await;
    if let Some(t) = last_table(&std::fs::read_to_string(&op_log).unwrap_or_default()) {
        println!("    {t}");
    }

    if flags.keep {
        println!();
        say("the fleet keeps running (--keep). Call it from a softphone on this machine:");
        for (n, number) in nodes.iter().zip(NUMBERS) {
            println!(
                "    sip:{}@{}   (UDP or TCP; inbound is allowed from 127.0.0.0/8)",
                number.trim_start_matches('+'),
                n.sip
            );
        }
        println!(
            "    place a call: curl -H 'Authorization: Bearer {API_TOKEN}' -d '{{\"from\":\"{}\",\"to\":\"+14155550199\"}}' http://{}/v1/calls",
            NUMBERS[0], nodes[0].api
        );
        println!("    (outbound calls go to 127.0.0.1:{CARRIER_PORT}: run a SIP endpoint there)");
    }

    if !failures.is_empty() {
        for f in &failures {
            println!("    !! {f}");
        }
        for n in &nodes {
            println!("    --- {} log (tail) ---\n{}", n.name, tail(&n.log, 15));
        }
        bail!("{} problem(s): {}", failures.len(), failures.join("; "));
    }
    rtts.sort_by(f64::total_cmp);
    let rtt = rtts
        .get(rtts.len() / 2)
        .map(|r| format!("; audio round trip {r:.0} ms (median over calls)"))
        .unwrap_or_else(|| "; audio round trip unavailable".into());
    Ok(format!(
        "{expected} calls ({} inbound through 2 nodes, {} outbound through the call API) bridged to the agent with audio both ways{rtt}",
        2,
        expected - 2
    ))
}
