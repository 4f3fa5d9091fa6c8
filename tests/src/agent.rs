//! A test agent: a WebSocket server on 127.0.0.1 speaking the Twilio Media Streams protocol
//! from the agent's side (docs: shared AGENT-PROTOCOL.md).
//!
//! Every connection (one per call) records every message the node sends, with its arrival time,
//! and can be told to send `media`, `mark` and `clear`, or to close. It never answers anything
//! on its own, so tests see exactly what the node did.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

/// One message from the node, as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// The parsed JSON (`Value::Null` for a frame that was not JSON text).
    pub json: Value,
}

#[derive(Default)]
struct ConnState {
    messages: Vec<Received>,
    authorization: Option<String>,
    closed: bool,
}

enum Outgoing {
    Text(String),
    Close,
}

/// One accepted connection (one call).
#[derive(Clone)]
pub struct AgentConn {
    state: Arc<Mutex<ConnState>>,
    out: mpsc::UnboundedSender<Outgoing>,
}

/// The agent server.
pub struct TestAgent {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<AgentConn>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestAgent {
    /// Listens on a free port of 127.0.0.1.
    // The handshake callback's signature (and its large error type) is tungstenite's.
    #[allow(clippy::result_large_err)]
    pub async fn start() -> anyhow::Result<TestAgent> {
        Self::start_on(std::net::TcpListener::bind("127.0.0.1:0")?)
    }

    /// Serves on an already bound listener (e.g. one bound inside a test network namespace,
    /// see [`crate::netns`]).
    #[allow(clippy::result_large_err)]
    pub fn start_on(listener: std::net::TcpListener) -> anyhow::Result<TestAgent> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<AgentConn>>> = Arc::default();
        let list = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state: Arc<Mutex<ConnState>> = Arc::default();
                let (tx, rx) = mpsc::unbounded_channel();
                let conn = AgentConn {
                    state: state.clone(),
                    out: tx,
                };
                let seen_auth = state.clone();
                let handshake = tokio_tungstenite::accept_hdr_async(
                    tcp,
                    move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                        seen_auth.lock().expect("lock").authorization = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        Ok(resp)
                    },
                );
                let Ok(ws) = handshake.await else { continue };
                list.lock().expect("lock").push(conn);
                tokio::spawn(serve(ws, state, rx));
            }
        });
        Ok(TestAgent { addr, conns, task })
    }

    /// The `ws://` URL of the agent.
    pub fn url(&self) -> String {
        format!("ws://{}/agent", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.lock().expect("lock").len()
    }

    /// Waits for the `n`th connection (0-based).
    pub async fn connection(&self, n: usize, within: Duration) -> AgentConn {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.conns.lock().expect("lock").get(n) {
                return c.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no agent connection #{n} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn serve(ws: Ws, state: Arc<Mutex<ConnState>>, mut out: mpsc::UnboundedReceiver<Outgoing>) {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let json = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    state.lock().expect("lock").messages.push(Received { at: Instant::now(), json });
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            cmd = out.recv() => match cmd {
                Some(Outgoing::Text(t)) => {
                    if sink.send(Message::text(t)).await.is_err() {
                        break;
                    }
                }
                Some(Outgoing::Close) | None => {
                    let _ = sink.send(Message::Close(None)).await;
                    let _ = sink.close().await;
                    break;
                }
            }
        }
    }
    state.lock().expect("lock").closed = true;
}

impl AgentConn {
    /// Every message so far.
    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().expect("lock").messages.clone()
    }

    /// The Authorization header of the upgrade request.
    pub fn authorization(&self) -> Option<String> {
        self.state.lock().expect("lock").authorization.clone()
    }

    /// True once the socket is closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.state.lock().expect("lock").closed
    }

    /// Messages with this `event`.
    pub fn events(&self, event: &str) -> Vec<Received> {
        self.messages()
            .into_iter()
            .filter(|m| m.json["event"] == event)
            .collect()
    }

    /// The `streamSid` of the `start` message (empty before it).
    pub fn stream_sid(&self) -> String {
        self.events("start")
            .first()
            .and_then(|m| m.json["streamSid"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The decoded μ-law of every `media` message, concatenated in order.
    pub fn audio(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for m in self.events("media") {
            let payload = m.json["media"]["payload"].as_str().unwrap_or_default();
            out.extend(BASE64.decode(payload).unwrap_or_default());
        }
        out
    }

    /// DTMF digits received, in order.
    pub fn digits(&self) -> String {
        self.events("dtmf")
            .iter()
            .filter_map(|m| m.json["dtmf"]["digit"].as_str().map(str::to_owned))
            .collect()
    }

    /// Names of the marks echoed, in order.
    pub fn marks(&self) -> Vec<String> {
        self.events("mark")
            .iter()
            .filter_map(|m| m.json["mark"]["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Polls until `check` holds on the messages, or panics after `within` naming `what`.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&AgentConn) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; agent saw {} messages: {:?}",
                self.messages().len(),
                self.messages()
                    .iter()
                    .rev()
                    .take(5)
                    .map(|m| m.json["event"].to_string())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends μ-law audio as one `media` message.
    pub fn send_media(&self, ulaw: &[u8]) {
        let msg = json!({"event": "media", "streamSid": self.stream_sid(), "media": {"payload": BASE64.encode(ulaw)}});
        let _ = self.out.send(Outgoing::Text(msg.to_string()));
    }

    /// Sends a `mark`.
    pub fn send_mark(&self, name: &str) {
        let msg = json!({"event": "mark", "streamSid": self.stream_sid(), "mark": {"name": name}});
        let _ = self.out.send(Outgoing::Text(msg.to_string()));
    }

    /// Sends `clear`.
    pub fn send_clear(&self) {
        let msg = json!({"event": "clear", "streamSid": self.stream_sid()});
        let _ = self.out.send(Outgoing::Text(msg.to_string()));
    }

    /// Sends raw text (for unknown or malformed events).
    pub fn send_raw(&self, text: &str) {
        let _ = self.out.send(Outgoing::Text(text.to_owned()));
    }

    /// Closes the socket (the node must end the call).
    pub fn close(&self) {
        let _ = self.out.send(Outgoing::Close);
    }
}
