//! Runs the real `switchboard-media-node` binary with a routing
//! configuration, on free loopback ports, and kills it on drop.
//!
//! [`NodeSpec`] and [`wait_ready`] are the one harness that starts media
//! nodes: the end-to-end tests ([`MediaNode`]), `make bench` (bench-calls) and
//! `make demo` (switchboard-demo) all build the node's command line with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port free on 127.0.0.1 for both UDP and TCP (SIP uses both), never
/// handed out twice in this process (see [`crate::ports`]).
pub fn free_port() -> u16 {
    crate::ports::free_port()
}

/// A port `p` on 127.0.0.1 free for UDP and TCP whose neighbour `p + 1`
/// is free too: baresip binds its TLS listener on `sip_listen`
/// port + 1, so a lone free port can collide with a concurrent test.
pub fn free_port_pair() -> u16 {
    crate::ports::free_port()
}

/// The media-node binary next to the test executable (built by
/// `make test`; built here on demand otherwise).
pub fn binary() -> PathBuf {
    let dir = crate::operator::target_dir();
    let bin = dir.join("switchboard-media-node");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "switchboard-media-node",
                "--bin",
                "switchboard-media-node",
            ])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building switchboard-media-node failed");
    }
    bin
}

/// Flags that let agents and webhooks on loopback through the node's egress
/// guard: every test agent listens on 127.0.0.1. [`MediaNode::start`] passes
/// them; [`MediaNode::start_with`] lets a test leave them out.
pub const LOOPBACK_EGRESS: [&str; 4] = ["--egress-allow", "127.0.0.0/8", "--egress-allow", "::1"];

/// A media node's command line: addresses, RTP range, configuration file,
/// egress and logging. Callers add their own flags with [`NodeSpec::extra`].
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The binary to run.
    pub binary: PathBuf,
    /// `--sip-bind` (UDP and TCP).
    pub sip: SocketAddr,
    /// `--http-bind` (admin: health, metrics, the call list).
    pub http: SocketAddr,
    /// `--rtp-ports`, inclusive.
    pub rtp: (u16, u16),
    /// `--config` (a proto3-JSON RoutingConfig); `None` for a node
    /// programmed over gRPC.
    pub config: Option<PathBuf>,
    /// Pass [`LOOPBACK_EGRESS`]: agents and webhooks on loopback.
    pub loopback_egress: bool,
    /// `RUST_LOG`.
    pub rust_log: String,
    /// Further flags, after the ones above.
    pub extra: Vec<String>,
}

impl NodeSpec {
    /// A node on free loopback ports with 200 RTP ports of its own.
    pub fn new(binary: PathBuf) -> NodeSpec {
        let rtp = crate::ports::rtp_block(201);
        NodeSpec {
            binary,
            sip: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            rtp: (rtp, rtp + 200),
            config: None,
            loopback_egress: true,
            rust_log: "info".into(),
            extra: Vec::new(),
        }
    }

    /// Appends flags.
    pub fn extra<I, S>(mut self, args: I) -> NodeSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// The command (stdio left to the caller).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(["--sip-bind", &self.sip.to_string()])
            .args(["--http-bind", &self.http.to_string()])
            .args(["--rtp-ports", &format!("{}-{}", self.rtp.0, self.rtp.1)])
            .args(if self.loopback_egress {
                &LOOPBACK_EGRESS[..]
            } else {
                &[]
            })
            .args(&self.extra)
            .env("RUST_LOG", &self.rust_log)
            .env("NO_COLOR", "1");
        cmd
    }
}

/// Polls `GET /readyz` on `http` until it answers 200; fails at once when
/// `child` exits, and after `within`. Errors carry the end of `log`.
pub async fn wait_ready(
    http: SocketAddr,
    child: &mut Child,
    within: Duration,
    log: &Path,
) -> anyhow::Result<()> {
    let tail = || {
        let s = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let deadline = Instant::now() + within;
    loop {
        if let Ok((200, _)) = http_request(http, "GET", "/readyz", None).await {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "media node exited with {status} before ready; log:\n{}",
                tail()
            );
        }
        if Instant::now() > deadline {
            bail!("media node not ready within {within:?}; log:\n{}", tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How [`MediaNode::start_with`] starts a node.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Pass [`LOOPBACK_EGRESS`] (the default).
    pub loopback_egress: bool,
    /// The IP the admin port binds to (default 127.0.0.1).
    pub http_ip: std::net::IpAddr,
    /// The admin port (default: a free one).
    pub http_port: Option<u16>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            loopback_egress: true,
            http_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            http_port: None,
        }
    }
}

/// A field of `/proc/PID/status` in KiB (`"VmRSS:"`, `"VmHWM:"`); 0 when unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process so far, in clock ticks (0 when it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_secs(pid: u32) -> f64 {
    cpu_ticks(pid) as f64 / clk_tck()
}

/// A running media node.
pub struct MediaNode {
    child: Child,
    /// SIP address (UDP and TCP).
    pub sip: SocketAddr,
    /// Admin HTTP address.
    pub http: SocketAddr,
    /// The configuration file (rewrite it and call [`MediaNode::reload`]).
    pub config_path: PathBuf,
    /// Log file of the node (stderr).
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl MediaNode {
    /// Starts a node with `config` (a proto3-JSON RoutingConfig) and extra
    /// flags, and waits for `/readyz` (at most 20 s).
    pub async fn start(config: &serde_json::Value, extra: &[&str]) -> anyhow::Result<MediaNode> {
        Self::start_with(config, extra, StartOptions::default()).await
    }

    /// [`MediaNode::start`] with explicit [`StartOptions`].
    pub async fn start_with(
        config: &serde_json::Value,
        extra: &[&str],
        opts: StartOptions,
    ) -> anyhow::Result<MediaNode> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("routing.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(config)?)?;
        let log_path = dir.path().join("node.log");
        let log = std::fs::File::create(&log_path)?;
        let mut spec = NodeSpec::new(binary()).extra(extra.iter().copied());
        spec.http = SocketAddr::new(opts.http_ip, opts.http_port.unwrap_or_else(free_port));
        spec.config = Some(config_path.clone());
        spec.loopback_egress = opts.loopback_egress;
        spec.rust_log = "info,switchboard_media_node=debug".into();
        let mut cmd = spec.command();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        crate::operator::die_with_parent(&mut cmd);
        let child = cmd.spawn().context("spawning switchboard-media-node")?;
        let mut node = MediaNode {
            child,
            sip: spec.sip,
            http: spec.http,
            config_path,
            log_path,
            _dir: dir,
        };
        wait_ready(
            node.http,
            &mut node.child,
            Duration::from_secs(20),
            &node.log_path,
        )
        .await?;
        Ok(node)
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The node's resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit; `None` when it is still running at
    /// the deadline.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A minimal HTTP/1.1 request to the admin endpoint: (status, body).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        http_request(self.http, method, path, body).await
    }

    /// The value of a Prometheus sample (exact series text), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let Ok((_, text)) = self.http("GET", "/metrics", None).await else {
            return 0.0;
        };
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

impl Drop for MediaNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`, bounded to 60 s.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    http_request_with_token(addr, method, path, None, body).await
}

/// [`http_request`] with an optional `Authorization: Bearer` token.
pub async fn http_request_with_token(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).to_string();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status")?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        // Chunked bodies (axum streams JSON this way sometimes): de-chunk simply.
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .context("HTTP request timed out")?
}

/// Decodes an HTTP/1.1 chunked body (enough for tests).
pub fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A raw SIP peer on a UDP socket, for exact control over what is sent
/// (retransmissions, malformed messages).
pub struct RawSip {
    /// The socket.
    pub sock: tokio::net::UdpSocket,
    /// Where the node listens.
    pub node: SocketAddr,
}

impl RawSip {
    /// Binds on 127.0.0.1 (any port).
    pub async fn new(node: SocketAddr) -> anyhow::Result<RawSip> {
        Ok(RawSip {
            sock: tokio::net::UdpSocket::bind("127.0.0.1:0").await?,
            node,
        })
    }

    /// Our local address.
    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().expect("bound socket")
    }

    /// Sends raw bytes.
    pub async fn send(&self, data: &[u8]) {
        let _ = self.sock.send_to(data, self.node).await;
    }

    /// Receives messages until `pred` accepts one (returned) or `within`
    /// passes (None). Every message seen is appended to `seen`.
    pub async fn recv_until(
        &self,
        within: Duration,
        seen: &mut Vec<String>,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = vec![0u8; 65536];
        loop {
            let r = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf)).await;
            let Ok(Ok((n, _))) = r else { return None };
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            seen.push(text.clone());
            if pred(&text) {
                return Some(text);
            }
        }
    }
}

/// The status code of a SIP response text.
pub fn status_of(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// A header value from SIP message text (first occurrence, case-insensitive).
pub fn header_of<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
