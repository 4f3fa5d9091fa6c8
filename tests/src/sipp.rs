//! Runs SIPp scenarios (from `tests/sipp/`) against a node, bounded in time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

/// Path of a scenario file in `tests/sipp/`.
pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("sipp")
        .join(name)
}

/// What a SIPp run produced.
#[derive(Debug)]
pub struct SippRun {
    /// Exit code (0: every call succeeded).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The error log (`-trace_err`), if any.
    pub errors: String,
    /// Every message sent and received (`-trace_msg`).
    pub messages: String,
}

impl SippRun {
    /// Panics with everything SIPp said unless it exited 0.
    pub fn assert_success(&self, what: &str) {
        assert_eq!(
            self.code,
            Some(0),
            "SIPp {what} failed: stderr:\n{}\nerrors:\n{}\nstdout tail:\n{}",
            self.stderr,
            self.errors,
            tail(&self.stdout)
        );
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A SIPp invocation.
pub struct Sipp {
    _dir: Option<tempfile::TempDir>,
    scenario: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    netns: Option<String>,
}

impl Sipp {
    /// SIPp with a scenario, one call, a 30 s global timeout.
    pub fn new(scenario: PathBuf) -> Sipp {
        Sipp {
            _dir: None,
            scenario,
            args: Vec::new(),
            timeout: Duration::from_secs(30),
            netns: None,
        }
    }

    /// Runs SIPp inside the named network namespace (`/run/netns/NAME`, through `nsenter`).
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_owned());
        self
    }

    /// SIPp with a scenario from `tests/sipp/` whose placeholders
    /// (`@CODE@`...) are replaced.
    pub fn template(name: &str, vars: &[(&str, &str)]) -> anyhow::Result<Sipp> {
        let mut text = std::fs::read_to_string(scenario(name))
            .with_context(|| format!("reading scenario {name}"))?;
        for (k, v) in vars {
            text = text.replace(k, v);
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        let mut s = Sipp::new(path);
        s._dir = Some(dir);
        Ok(s)
    }

    /// Adds raw arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets the overall timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Runs SIPp as a UAC towards `remote` from 127.0.0.1 on `port`.
    pub async fn run_client(self, remote: SocketAddr, port: u16) -> anyhow::Result<SippRun> {
        self.run_client_from(remote, "127.0.0.1", port).await
    }

    /// Runs SIPp as a UAC towards `remote` from `local_ip:port`.
    pub async fn run_client_from(
        self,
        remote: SocketAddr,
        local_ip: &str,
        port: u16,
    ) -> anyhow::Result<SippRun> {
        let mut args = vec![remote.to_string()];
        args.extend([
            "-i".into(),
            local_ip.into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            "1".into(),
        ]);
        self.run(args).await
    }

    /// Runs SIPp as a server on `port` (for `calls` calls).
    pub async fn run_server(self, port: u16, calls: u32) -> anyhow::Result<SippRun> {
        let args = vec![
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            calls.to_string(),
        ];
        self.run(args).await
    }

    /// Spawns the run in the background.
    pub fn spawn_server(
        self,
        port: u16,
        calls: u32,
    ) -> tokio::task::JoinHandle<anyhow::Result<SippRun>> {
        tokio::spawn(self.run_server(port, calls))
    }

    async fn run(self, mut base: Vec<String>) -> anyhow::Result<SippRun> {
        let dir = tempfile::tempdir()?;
        let err_file = dir.path().join("errors.log");
        let msg_file = dir.path().join("messages.log");
        let secs = self.timeout.as_secs().max(1);
        base.extend([
            "-sf".into(),
            self.scenario.display().to_string(),
            "-timeout".into(),
            format!("{secs}s"),
            "-timeout_error".into(),
            "-trace_err".into(),
            "-error_file".into(),
            err_file.display().to_string(),
            "-trace_msg".into(),
            "-message_file".into(),
            msg_file.display().to_string(),
            "-nostdin".into(),
        ]);
        base.extend(self.args);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg("sipp");
                c
            }
            None => tokio::process::Command::new("sipp"),
        };
        let child = cmd
            .args(&base)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning sipp (is it installed? see scripts/test-deps.sh)")?;
        let out = tokio::time::timeout(
            self.timeout + Duration::from_secs(10),
            child.wait_with_output(),
        )
        .await
        .context("sipp did not exit")??;
        Ok(SippRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
            errors: std::fs::read_to_string(&err_file).unwrap_or_default(),
            messages: std::fs::read_to_string(&msg_file).unwrap_or_default(),
        })
    }
}

/// A caller whose call the node ends: SIPp (`media_uac_bye.xml`) calls `number` at `node` with
/// its SDP pointing at the test's own RTP endpoint on `phone_port` (payload type `pt` =
/// `codec`), runs `info` (scenario XML, e.g. SIP INFO DTMF) after the ACK, and answers the
/// node's BYE, which must come within `bye_within`. The call runs in the background.
pub fn spawn_bye_call(
    node: SocketAddr,
    number: &str,
    phone_port: u16,
    (pt, codec): (&str, &str),
    info: &str,
    bye_within: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<SippRun>> {
    let bye_ms = bye_within.as_millis().to_string();
    let sipp = Sipp::template(
        "media_uac_bye.xml",
        &[
            ("@INFO@", info),
            ("@RTP_IP@", "127.0.0.1"),
            ("@RTP_PORT@", &phone_port.to_string()),
            ("@PT@", pt),
            ("@CODEC@", codec),
            ("@BYE_WITHIN_MS@", &bye_ms),
        ],
    )
    .expect("template")
    .args(["-s", number, "-mp", &crate::node::free_port().to_string()])
    .timeout(bye_within + Duration::from_secs(20));
    tokio::spawn(async move { sipp.run_client(node, crate::node::free_port()).await })
}
