//! A real one-node Kubernetes cluster (kubelet, containerd, the control plane) for the chart's
//! end-to-end tests: `scripts/cluster-up.sh` starts it inside network namespaces of its own,
//! `scripts/cluster-down.sh` removes it (also when a test panics: [`RealCluster`]'s drop).
//! `kubectl` and `helm` run inside the node's namespace, where the API server listens.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The first node's network namespace (the control plane, that node and its pods).
pub const NODE_NS: &str = "sbk8s-node";
/// The outside world's network namespace (carrier and agent).
pub const EXT_NS: &str = "sbk8s-ext";
/// The first node's address, where the API server listens (hostNetwork pods on it use it too;
/// the second and third nodes are 10.77.0.4 and 10.77.0.5).
pub const NODE_IP: &str = "10.77.0.2";
/// The outside world's address.
pub const EXT_IP: &str = "10.77.0.3";

/// Why the cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A script or tool failed.
    #[error("{what} failed ({status}):\n{output}")]
    Failed {
        /// The command.
        what: String,
        /// Its exit status.
        status: String,
        /// Its output (stdout then stderr, tail).
        output: String,
    },
    /// It could not be started at all.
    #[error("running {what}: {source}")]
    Spawn {
        /// The command.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A running cluster; dropping it tears it down.
#[derive(Debug)]
pub struct RealCluster {
    state: PathBuf,
    down: bool,
    /// How long `cluster-up.sh` took.
    pub startup: Duration,
    /// `cluster-up.sh`'s per-phase timings.
    pub phases: String,
}

fn scripts() -> PathBuf {
    crate::helm::repo_root().join("scripts")
}

fn tail(out: &Output) -> String {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = all.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn run(what: &str, cmd: &mut Command) -> Result<Output, ClusterError> {
    let out = cmd.output().map_err(|source| ClusterError::Spawn {
        what: what.to_owned(),
        source,
    })?;
    if !out.status.success() {
        return Err(ClusterError::Failed {
            what: what.to_owned(),
            status: out.status.to_string(),
            output: tail(&out),
        });
    }
    Ok(out)
}

impl RealCluster {
    /// Tears down any cluster left from an earlier run, then starts one of `nodes` nodes (1 to
    /// 3; seconds, not minutes).
    pub fn up(nodes: u8) -> Result<RealCluster, ClusterError> {
        let state = std::env::temp_dir().join("switchboard-cluster");
        let _ = Command::new(scripts().join("cluster-down.sh"))
            .env("SWITCHBOARD_CLUSTER_DIR", &state)
            .output();
        let started = Instant::now();
        let mut cluster = RealCluster {
            state: state.clone(),
            down: false,
            startup: Duration::ZERO,
            phases: String::new(),
        };
        let out = run(
            "scripts/cluster-up.sh",
            Command::new(scripts().join("cluster-up.sh"))
                .env("SWITCHBOARD_CLUSTER_DIR", &state)
                .env("SWITCHBOARD_CLUSTER_NODES", nodes.to_string()),
        )
        .inspect_err(|_| cluster.keep_logs())?;
        cluster.startup = started.elapsed();
        cluster.phases = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(cluster)
    }

    /// The state directory (logs in `logs/`).
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("admin.kubeconfig")
    }

    /// Imports the workspace's operator and media-node images as `switchboard.local/...:tag`.
    pub fn import_images(&self, tag: &str) -> Result<String, ClusterError> {
        let out = run(
            "scripts/cluster/images.sh",
            Command::new(scripts().join("cluster/images.sh"))
                .arg(tag)
                .env("SWITCHBOARD_CLUSTER_DIR", &self.state),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a tool (`kubectl`, `helm`) inside the node's namespace with the admin kubeconfig.
    pub fn tool(&self, tool: &str, args: &[&str]) -> Result<String, ClusterError> {
        let bin = crate::envtest::tool(tool);
        let out = run(
            &format!("{tool} {}", args.join(" ")),
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{NODE_NS}"))
                .arg("--")
                .arg(&bin)
                .args(args)
                .env("KUBECONFIG", self.kubeconfig())
                // helm keeps its caches under HOME; keep them out of the user's.
                .env("HELM_CACHE_HOME", self.state.join("helm/cache"))
                .env("HELM_CONFIG_HOME", self.state.join("helm/config"))
                .env("HELM_DATA_HOME", self.state.join("helm/data")),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl ARGS`.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, ClusterError> {
        self.tool("kubectl", args)
    }

    /// `helm ARGS`.
    pub fn helm(&self, args: &[&str]) -> Result<String, ClusterError> {
        self.tool("helm", args)
    }

    /// The last lines of a component's log (`kubelet`, `containerd`, `kube-apiserver`...).
    pub fn log(&self, component: &str) -> String {
        let text =
            std::fs::read_to_string(self.state.join("logs").join(format!("{component}.log")))
                .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn keep_logs(&mut self) {
        // A failed start: tear down but keep the logs for the failure message's reader.
        let _ = Command::new(scripts().join("cluster-down.sh"))
            .env("SWITCHBOARD_CLUSTER_DIR", &self.state)
            .env("KEEP_CLUSTER_STATE", "1")
            .output();
        self.down = true;
    }

    /// Tears the cluster down; fails naming anything `cluster-down.sh` could not remove.
    pub fn down(mut self) -> Result<String, ClusterError> {
        self.down = true;
        let out = run(
            "scripts/cluster-down.sh",
            Command::new(scripts().join("cluster-down.sh"))
                .env("SWITCHBOARD_CLUSTER_DIR", &self.state),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        if !self.down {
            // A panicking test: keep the logs (the next run's `up` removes them).
            let _ = Command::new(scripts().join("cluster-down.sh"))
                .env("SWITCHBOARD_CLUSTER_DIR", &self.state)
                .env("KEEP_CLUSTER_STATE", "1")
                .output();
        }
    }
}
