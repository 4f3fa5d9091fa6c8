//! Shared by the call API tests: a node with the API on, an HTTP client
//! with a bearer token, a status-webhook receiver, the demo agent process
//! and a gRPC client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_tests::node::http_request_with_token;

use anyhow::Context;
use serde_json::Value;
use switchboard_proto::v1alpha1::call_service_client::CallServiceClient;
use switchboard_tests::node::{MediaNode, free_port};
use switchboard_tests::sipp::Sipp;

/// The token the tests' nodes expect.
pub const TOKEN: &str = "test-api-token-5f3a";

/// A scenario file next to this module.
pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sip/api_support")
        .join(name)
}

/// SIPp with a scenario from this directory, placeholders replaced; keep
/// the directory alive while SIPp runs.
pub fn local_scenario(name: &str, vars: &[(&str, &str)]) -> (tempfile::TempDir, Sipp) {
    let mut text = std::fs::read_to_string(scenario(name)).expect("scenario");
    for (k, v) in vars {
        text = text.replace(k, v);
    }
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write scenario");
    (dir, Sipp::new(path))
}

/// A media node with the call API on.
pub struct ApiNode {
    /// The node.
    pub node: MediaNode,
    /// The API address (gRPC and HTTP).
    pub api: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ApiNode {
    /// Starts a node with `config` and the API (token [`TOKEN`]).
    pub async fn start(config: &Value, extra: &[&str]) -> ApiNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file = dir.path().join("api-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut args = vec![
            "--api-bind".to_string(),
            api.to_string(),
            "--api-token-file".to_string(),
            token_file.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = MediaNode::start(config, &refs).await.expect("node starts");
        ApiNode {
            node,
            api,
            _dir: dir,
        }
    }

    /// An API request with the right token.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        api_request(self.api, method, path, Some(TOKEN), body)
            .await
            .expect("API request")
    }

    /// Places a call; panics unless 201.
    pub async fn dial(&self, body: Value) -> String {
        let (status, resp) = self.call("POST", "/v1/calls", Some(&body)).await;
        assert_eq!(status, 201, "dial: {resp}");
        resp["call"]["id"].as_str().expect("call id").to_owned()
    }

    /// `POST` with a JSON body and the right token.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(&body)).await
    }

    /// A call's current JSON.
    pub async fn get(&self, id: &str) -> Value {
        let (status, resp) = self.call("GET", &format!("/v1/calls/{id}"), None).await;
        assert_eq!(status, 200, "get {id}: {resp}");
        resp
    }

    /// Waits until the call reaches `state` (e.g. "CALL_STATE_ANSWERED").
    pub async fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let c = self.get(id).await;
            if c["state"] == state {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "call {id} not {state} within {within:?}: {c}\nnode log:\n{}",
                self.node.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A gRPC client with the token.
    pub async fn grpc(&self) -> CallServiceClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.api))
            .expect("endpoint")
            .connect()
            .await
            .expect("gRPC connect");
        CallServiceClient::new(channel)
    }
}

/// An inbound call from SIPp (`media_uac_bye.xml` with `carrier_side` after the ACK) to a
/// node with the call API, answered and bridged to a test agent: everything a call-control
/// test starts from.
pub struct InboundCall {
    /// The agent (kept alive for the call).
    pub agent: switchboard_tests::agent::TestAgent,
    /// The node.
    pub node: ApiNode,
    /// The caller's RTP endpoint.
    pub phone: switchboard_tests::phone::Phone,
    /// SIPp, until it ends.
    pub sipp: tokio::task::JoinHandle<anyhow::Result<switchboard_tests::sipp::SippRun>>,
    /// The agent's connection for the call.
    pub conn: switchboard_tests::agent::AgentConn,
    /// The call's API id.
    pub id: String,
}

impl InboundCall {
    /// Starts the agent and the node (`config` gets the agent URL), places the call and waits
    /// until it is answered.
    pub async fn start(
        config: impl FnOnce(&str) -> Value,
        number: &str,
        carrier_side: &str,
        bye_within: Duration,
    ) -> InboundCall {
        let agent = switchboard_tests::agent::TestAgent::start()
            .await
            .expect("agent");
        let node = ApiNode::start(&config(&agent.url()), &[]).await;
        let phone = switchboard_tests::phone::Phone::start(0, 0xFF).await;
        let sipp = switchboard_tests::sipp::spawn_bye_call(
            node.node.sip,
            number,
            phone.port,
            ("0", "PCMU"),
            carrier_side,
            bye_within,
        );
        let (conn, id) = agent_call(&agent).await;
        node.wait_state(&id, "CALL_STATE_ANSWERED", Duration::from_secs(5))
            .await;
        InboundCall {
            agent,
            node,
            phone,
            sipp,
            conn,
            id,
        }
    }
}

/// The agent's connection for its first call, once `start` arrived, and the call's API id
/// (`callId` in `start.customParameters`).
pub async fn agent_call(
    agent: &switchboard_tests::agent::TestAgent,
) -> (switchboard_tests::agent::AgentConn, String) {
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    conn.wait_until("start", Duration::from_secs(5), |c| {
        !c.events("start").is_empty()
    })
    .await;
    let id = conn.events("start")[0].json["start"]["customParameters"]["callId"]
        .as_str()
        .expect("callId in start")
        .to_owned();
    (conn, id)
}

/// Adds the bearer token to a gRPC request.
pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

/// One HTTP/1.1 request (Connection: close): (status, JSON body or `null`).
pub async fn api_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let (status, body) = http_request_with_token(addr, method, path, token, body).await?;
    let json = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).with_context(|| format!("not JSON: {body}"))?
    };
    Ok((status, json))
}

pub use switchboard_tests::webhook::WebhookReceiver;

/// A binary of the workspace next to the test executable, built on demand.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let path = dir.join(bin);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", bin])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building {bin} failed");
    }
    path
}

/// The demo agent (examples/demo-agent) as a process.
pub struct DemoAgent {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl DemoAgent {
    /// Starts it and waits until it listens.
    pub async fn start() -> DemoAgent {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("agent.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = Command::new(workspace_binary(
            "switchboard-demo-agent",
            "switchboard-demo-agent",
        ))
        .args(["--listen", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the demo agent");
        let agent = DemoAgent {
            child,
            addr,
            log,
            _dir: dir,
        };
        agent.wait_log("listening", Duration::from_secs(20)).await;
        agent
    }

    /// The agent URL for a PhoneNumber.
    pub fn url(&self) -> String {
        format!("ws://{}/agent", self.addr)
    }

    /// What it printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its output contains `text`.
    pub async fn wait_log(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the agent never printed {text:?} within {within:?}; output:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `agent-summary` JSON lines so far.
    pub fn summaries(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| l.strip_prefix("agent-summary "))
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect()
    }
}

impl Drop for DemoAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The transfer steps the agent was told, in order: (status, code).
pub fn agent_steps(conn: &switchboard_tests::agent::AgentConn) -> Vec<(String, u64)> {
    conn.events("transfer")
        .iter()
        .map(|m| {
            (
                m.json["transfer"]["status"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                m.json["transfer"]["code"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}
