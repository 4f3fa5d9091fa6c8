//! Runs the real `switchboard-operator` binary against a test cluster (or a
//! manifest directory), capturing its log so tests can search it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Path of a binary built by `cargo build --workspace --bins`, next to the
/// test executable's `deps/` directory.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!(
        "SWITCHBOARD_BIN_{}",
        name.to_uppercase().replace('-', "_")
    )) {
        return PathBuf::from(p);
    }
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// The directory holding the workspace's binaries: the test executable's
/// (`target/<profile>/deps/..`), or the running binary's own directory.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Makes a child process die when the process that started it dies, so a
/// test or benchmark killed midway leaves no servers behind.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A free port on 127.0.0.1, never handed out twice in this process.
pub fn free_port() -> u16 {
    crate::ports::free_port()
}

/// A running operator process; killed on drop.
pub struct Operator {
    child: Option<Child>,
    log: PathBuf,
    /// Address of /metrics, /healthz, /readyz.
    pub http: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Operator {
    /// Starts the operator against the cluster whose kubeconfig is given.
    pub fn start_kube(kubeconfig: &Path, identity: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "--identity".to_string(),
            identity.to_string(),
            "--lease-namespace".into(),
            "default".into(),
        ];
        // Tests dial media nodes on loopback in plaintext unless they pass
        // TLS flags themselves.
        if !extra.contains(&"--control-ca") {
            args.push("--control-insecure".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start(args, &[("KUBECONFIG", kubeconfig.as_os_str())])
    }

    /// Starts the operator with arbitrary arguments (`--http-bind` is added).
    pub fn start(args: Vec<String>, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("operator.log");
        let file = std::fs::File::create(&log).expect("log file");
        let http = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut cmd = Command::new(binary("switchboard-operator"));
        cmd.args(&args)
            .arg("--http-bind")
            .arg(http.to_string())
            .env(
                "RUST_LOG",
                "debug,kube=info,hyper=info,tower=info,rustls=info,h2=info",
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn switchboard-operator");
        Self {
            child: Some(child),
            log,
            http,
            _dir: dir,
        }
    }

    /// CPU seconds (user + system) the process has used (0 when not running).
    pub fn cpu_secs(&self) -> f64 {
        self.child
            .as_ref()
            .map(|c| crate::node::cpu_secs(c.id()))
            .unwrap_or(0.0)
    }

    /// The process's resident memory in KiB (VmRSS; 0 when not running).
    pub fn rss_kib(&self) -> u64 {
        self.child
            .as_ref()
            .map(|c| crate::node::proc_status_kib(c.id(), "VmRSS:"))
            .unwrap_or(0)
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GETs a path on the HTTP port; `Err` while it is not up.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        crate::node::http_request(self.http, "GET", path, None)
            .await
            .map_err(|e| e.to_string())
    }

    /// The value of an unlabelled or labelled metric sample line, e.g.
    /// `switchboard_operator_leader` or `switchboard_operator_status_writes_total{kind="SipTrunk",result="ok"}`.
    pub async fn metric(&self, sample: &str) -> Result<f64, String> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("{sample} not in /metrics"))
    }

    /// Sends SIGKILL and waits for the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Waits up to `within` for the process to exit by itself; its exit code.
    pub async fn wait_exit(&mut self, within: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return status.code();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        None
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child
            .take()
            .and_then(|mut c| c.wait().ok())
            .and_then(|s| s.code())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}
