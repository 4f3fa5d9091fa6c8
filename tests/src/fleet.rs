//! A fleet on loopback: media-node processes programmed over their control
//! port (no configuration file), and the Pod objects that make the operator
//! find them in a test API server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::node::{binary, free_port, http_request};

/// Label the operator selects media-node pods by (its default).
pub const NODE_LABEL: (&str, &str) = ("app.kubernetes.io/component", "media-node");

/// A media node that takes its configuration from the operator.
pub struct ControlledNode {
    /// Node id (the Pod name).
    pub name: String,
    /// SIP address (UDP and TCP).
    pub sip: SocketAddr,
    /// Admin HTTP address.
    pub http: SocketAddr,
    /// Control (gRPC) address.
    pub control: SocketAddr,
    rtp: u16,
    control_args: Vec<String>,
    extra: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ControlledNode {
    /// Starts a node with plaintext control (development mode) and extra flags.
    pub fn start(name: &str, extra: &[&str]) -> ControlledNode {
        Self::start_with_control(name, &["--control-insecure"], extra)
    }

    /// Starts a node with explicit control-channel flags (TLS, token).
    pub fn start_with_control(name: &str, control: &[&str], extra: &[&str]) -> ControlledNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("node.log");
        let mut n = ControlledNode {
            name: name.to_string(),
            sip: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            control: SocketAddr::from(([127, 0, 0, 1], free_port())),
            rtp: crate::ports::rtp_block(201),
            control_args: control.iter().map(|s| s.to_string()).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            log,
            _dir: dir,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = Command::new(binary());
        cmd.args(["--node-id", &self.name])
            .args(["--sip-bind", &self.sip.to_string()])
            .args(["--http-bind", &self.http.to_string()])
            .args(["--control-bind", &self.control.to_string()])
            .args(&self.control_args)
            .args(["--rtp-ports", &format!("{}-{}", self.rtp, self.rtp + 200)])
            // Test agents and webhooks listen on loopback (refused by default).
            .args(crate::node::LOOPBACK_EGRESS)
            .args(&self.extra)
            .env("RUST_LOG", "info,switchboard_media_node=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        crate::operator::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn switchboard-media-node");
        self.child = Some(child);
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

    /// Kills the process (SIGKILL): its calls die with it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The node's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// HTTP status of `/readyz`, if the node answers.
    pub async fn readyz(&self) -> Option<u16> {
        http_request(self.http, "GET", "/readyz", None)
            .await
            .ok()
            .map(|(s, _)| s)
    }

    /// A Prometheus sample's value (exact series text), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = http_request(self.http, "GET", "/metrics", None)
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }
}

impl Drop for ControlledNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates the node's Pod in `namespace` and sets its status to Running on
/// 127.0.0.1, with the control port in the annotation the operator reads.
pub async fn register_pod(client: &Client, namespace: &str, node: &ControlledNode) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": node.name,
            "labels": {NODE_LABEL.0: NODE_LABEL.1},
            "annotations": {"switchboard.dev/control-port": node.control.port().to_string()}
        },
        "spec": {"containers": [{"name": "media-node", "image": "switchboard-media-node:test"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let status = json!({"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}});
    pods.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
}

/// Deletes a node's Pod at once (the node "goes away" for the operator).
pub async fn remove_pod(client: &Client, namespace: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.delete(
        name,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("delete pod");
}
