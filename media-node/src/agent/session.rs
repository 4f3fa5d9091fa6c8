//! One call's WebSocket session with its agent (Twilio Media Streams).
//!
//! [`AgentSession::connect`] opens the socket (ws:// or wss:// with rustls, `Authorization:
//! Bearer` when a token is given, bounded by a connect timeout) so that an unreachable agent can
//! be refused before the call is answered. [`AgentSession::run`] then sends `connected` and
//! `start`, forwards caller events (audio frames, DTMF) from a bounded channel, feeds agent
//! media/mark/clear into the call's [`SharedPlayout`], echoes marks as their audio is played, and
//! on hang-up sends `stop` and closes. It ends with a typed [`SessionEnd`].
//!
//! The media path never waits for the agent: it pushes caller frames with `try_send` (a full
//! channel drops the frame and counts it) and takes playout frames under a short, never-awaited
//! lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header::AUTHORIZATION};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::twilio::{AgentEvent, StreamIds, StreamWriter, parse_agent_message};
use crate::media::playout::{FRAME_BYTES, FrameFill, PlayoutQueue};

/// Default bound on opening the WebSocket (TCP, TLS and HTTP upgrade together).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Caller events the session may have outstanding before the media path starts dropping.
pub const CALLER_CHANNEL_CAPACITY: usize = 64;

/// Where and how to reach the agent.
#[derive(Clone)]
pub struct AgentTarget {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// Bearer token from the number's agent Secret, if any.
    pub bearer_token: Option<String>,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// TLS settings for wss://; None uses the OS trust store (Mozilla roots as fallback).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Which addresses the URL may resolve to (the bridge always sets it; None connects
    /// unchecked, for in-process tests).
    pub egress: Option<crate::egress::Egress>,
}

impl std::fmt::Debug for AgentTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("AgentTarget")
            .field("url", &self.url)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl AgentTarget {
    /// A target with the default timeout and TLS settings.
    pub fn new(url: impl Into<String>, bearer_token: Option<String>) -> Self {
        AgentTarget {
            url: url.into(),
            bearer_token,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: None,
            egress: None,
        }
    }
}

/// Why the agent could not be reached.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The URL is not a usable ws:// or wss:// URL.
    #[error("invalid agent URL: {0}")]
    InvalidUrl(String),
    /// The token cannot be sent as a header value.
    #[error("agent token is not a valid header value")]
    InvalidToken,
    /// No answer within the connect timeout.
    #[error("agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent answered the upgrade with an HTTP error.
    #[error("agent refused the WebSocket upgrade: {status} {reason}")]
    Http {
        /// HTTP status.
        status: u16,
        /// Reason phrase.
        reason: String,
    },
    /// TCP or TLS failure (refused, unreachable, certificate).
    #[error("agent connection failed: {0}")]
    Transport(String),
    /// The egress guard refused the addresses the URL resolves to.
    #[error("agent {0}")]
    Refused(crate::egress::EgressError),
}

/// What the call's media path sends to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerEvent {
    /// 20 ms of caller audio (μ-law) at `timestamp_ms` since the stream started.
    Audio {
        /// The frame.
        frame: [u8; FRAME_BYTES],
        /// Milliseconds since the stream started.
        timestamp_ms: u64,
    },
    /// A key press.
    Dtmf(char),
    /// The call ended: send `stop` and close.
    Hangup,
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// We ended it (hang-up, or the call dropped its sender): `stop` was sent and the socket
    /// closed.
    CallEnded,
    /// The agent closed the socket (a socket that closes ends the call).
    AgentClosed {
        /// Close code, if the agent sent a close frame.
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
    /// The connection failed mid-call (reset, TLS or protocol violation).
    Transport(String),
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Media messages sent to the agent.
    pub media_sent: u64,
    /// Agent media messages received.
    pub media_received: u64,
    /// Marks echoed.
    pub marks_sent: u64,
    /// DTMF messages sent.
    pub dtmf_sent: u64,
    /// Agent messages with an unknown `event` (ignored).
    pub unknown_events: u64,
    /// Agent frames that could not be parsed (ignored).
    pub malformed_frames: u64,
    /// Binary frames from the agent (ignored; the protocol is text).
    pub binary_frames: u64,
}

/// The playout queue shared between the session (which fills it) and the media path (which
/// takes a frame per tick). The lock is held only for queue operations, never across an await.
#[derive(Debug, Default)]
pub struct SharedPlayout {
    queue: Mutex<PlayoutQueue>,
    marks_ready: Notify,
}

impl SharedPlayout {
    /// A shared queue with the given bound in bytes.
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(SharedPlayout {
            queue: Mutex::new(PlayoutQueue::new(max_bytes)),
            marks_ready: Notify::new(),
        })
    }

    /// Locks the queue (for inspection or direct use).
    pub fn lock(&self) -> MutexGuard<'_, PlayoutQueue> {
        // Queue operations cannot panic halfway in a way that breaks its invariants.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next 20 ms frame for the caller (called by the media path each tick) and wakes
    /// the session when marks have completed.
    pub fn next_frame(&self, out: &mut [u8; FRAME_BYTES]) -> FrameFill {
        let (fill, marks_done) = {
            let mut q = self.lock();
            let fill = q.next_frame(out);
            (fill, q.done_marks() > 0)
        };
        if marks_done {
            self.marks_ready.notify_one();
        }
        fill
    }
}

/// An open session, ready to run.
pub struct AgentSession {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    writer: StreamWriter,
}

impl std::fmt::Debug for AgentSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSession")
            .field("stream", self.writer.ids())
            .finish()
    }
}

/// The TLS client configuration for wss:// agents, built once: the OS trust store (it carries
/// any private CA an operator installed), or the Mozilla roots when the OS has none (minimal
/// container images). The ring provider is named explicitly so no process-wide default is needed.
fn default_tls() -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(ConnectError::Transport)
}

impl AgentSession {
    /// Opens the WebSocket to the agent.
    pub async fn connect(target: &AgentTarget, ids: StreamIds) -> Result<Self, ConnectError> {
        let scheme_ok = target.url.starts_with("ws://") || target.url.starts_with("wss://");
        if !scheme_ok {
            return Err(ConnectError::InvalidUrl(target.url.clone()));
        }
        let mut request = target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::InvalidUrl(e.to_string()))?;
        if let Some(token) = &target.bearer_token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ConnectError::InvalidToken)?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let connector = if target.url.starts_with("wss://") {
            Connector::Rustls(match &target.tls {
                Some(config) => config.clone(),
                None => default_tls()?,
            })
        } else {
            Connector::Plain
        };
        // TCP to an address the egress guard checked, then TLS and the upgrade on that socket.
        let connecting = async {
            let tcp = crate::egress::connect(target.egress.as_ref(), request.uri()).await?;
            tokio_tungstenite::client_async_tls_with_config(
                request,
                tcp,
                Some(ws_config()),
                Some(connector),
            )
            .await
            .map_err(connect_error)
        };
        let (ws, _response) = tokio::time::timeout(target.connect_timeout, connecting)
            .await
            .map_err(|_| ConnectError::Timeout(target.connect_timeout))??;
        Ok(AgentSession {
            ws,
            writer: StreamWriter::new(ids),
        })
    }

    /// Runs the session until the call or the agent ends it. `caller` carries the call's audio
    /// and DTMF; `playout` receives the agent's audio and marks.
    pub async fn run(
        mut self,
        custom_parameters: BTreeMap<String, String>,
        mut caller: mpsc::Receiver<CallerEvent>,
        playout: Arc<SharedPlayout>,
    ) -> (SessionEnd, SessionStats) {
        let mut stats = SessionStats::default();
        let mut audio = Vec::with_capacity(4096);
        let end = 'session: {
            let connected = self.writer.connected().to_owned();
            if let Err(e) = self.ws.send(Message::text(connected)).await {
                break 'session transport_end(e);
            }
            let start = self.writer.start(custom_parameters).to_owned();
            if let Err(e) = self.ws.send(Message::text(start)).await {
                break 'session transport_end(e);
            }
            loop {
                tokio::select! {
                    ev = caller.recv() => {
                        let text = match ev {
                            Some(CallerEvent::Audio { frame, timestamp_ms }) => {
                                stats.media_sent += 1;
                                self.writer.media(&frame, timestamp_ms)
                            }
                            Some(CallerEvent::Dtmf(d)) => {
                                stats.dtmf_sent += 1;
                                self.writer.dtmf(d)
                            }
                            Some(CallerEvent::Hangup) | None => {
                                break 'session self.finish().await;
                            }
                        };
                        // tungstenite takes ownership of the text: one copy of the buffer.
                        let msg = Message::text(text);
                        if let Err(e) = self.ws.send(msg).await {
                            break 'session transport_end(e);
                        }
                    }
                    _ = playout.marks_ready.notified() => {
                        if let Err(e) = self.send_done_marks(&playout, &mut stats).await {
                            break 'session transport_end(e);
                        }
                    }
                    incoming = self.ws.next() => {
                        let msg = match incoming {
                            None => break 'session SessionEnd::AgentClosed { code: None, reason: String::new() },
                            Some(Err(e)) => break 'session transport_end(e),
                            Some(Ok(m)) => m,
                        };
                        match msg {
                            Message::Text(text) => {
                                let sent = match apply_agent_text(text.as_str(), &mut audio, &playout, &mut stats) {
                                    AfterAgentFrame::Nothing => Ok(()),
                                    AfterAgentFrame::EchoDone => self.send_done_marks(&playout, &mut stats).await,
                                    AfterAgentFrame::EchoCleared(marks) => self.send_marks(marks, &mut stats).await,
                                };
                                if let Err(e) = sent {
                                    break 'session transport_end(e);
                                }
                            }
                            Message::Binary(_) => stats.binary_frames += 1,
                            Message::Close(frame) => {
                                let (code, reason) = frame
                                    .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                                    .unwrap_or((None, String::new()));
                                // Complete the closing handshake; the socket is done either way.
                                let _ = self.ws.close(None).await;
                                break 'session SessionEnd::AgentClosed { code, reason };
                            }
                            // Pings are answered by tungstenite on the next write or flush.
                            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                                if let Err(e) = self.ws.flush().await {
                                    break 'session transport_end(e);
                                }
                            }
                        }
                    }
                }
            }
        };
        (end, stats)
    }

    async fn send_done_marks(
        &mut self,
        playout: &SharedPlayout,
        stats: &mut SessionStats,
    ) -> Result<(), tungstenite::Error> {
        loop {
            // Take one mark at a time so the lock is never held across the send.
            let Some(name) = playout.lock().pop_done_mark() else {
                return Ok(());
            };
            let text = self.writer.mark(&name).to_owned();
            stats.marks_sent += 1;
            self.ws.send(Message::text(text)).await?;
        }
    }

    async fn send_marks(
        &mut self,
        marks: Vec<String>,
        stats: &mut SessionStats,
    ) -> Result<(), tungstenite::Error> {
        for name in marks {
            let text = self.writer.mark(&name).to_owned();
            stats.marks_sent += 1;
            self.ws.send(Message::text(text)).await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> SessionEnd {
        let stop = self.writer.stop().to_owned();
        if let Err(e) = self.ws.send(Message::text(stop)).await {
            return transport_end(e);
        }
        // Best effort: the agent may already be gone.
        let _ = self.ws.close(None).await;
        SessionEnd::CallEnded
    }
}

/// What the session must do after an agent frame.
enum AfterAgentFrame {
    Nothing,
    /// Marks completed (a mark with nothing queued before it): echo them.
    EchoDone,
    /// A clear returned these marks, in order: echo them.
    EchoCleared(Vec<String>),
}

/// Applies one agent text frame to the playout queue.
fn apply_agent_text(
    text: &str,
    audio: &mut Vec<u8>,
    playout: &SharedPlayout,
    stats: &mut SessionStats,
) -> AfterAgentFrame {
    match parse_agent_message(text, audio) {
        Ok(AgentEvent::Media) => {
            stats.media_received += 1;
            playout.lock().push_audio(audio);
            AfterAgentFrame::Nothing
        }
        Ok(AgentEvent::Mark { name }) => {
            let mut q = playout.lock();
            q.push_mark(name.into_owned());
            if q.done_marks() > 0 {
                AfterAgentFrame::EchoDone
            } else {
                AfterAgentFrame::Nothing
            }
        }
        Ok(AgentEvent::Clear) => AfterAgentFrame::EchoCleared(playout.lock().clear()),
        Ok(AgentEvent::Unknown { event }) => {
            stats.unknown_events += 1;
            tracing::debug!(event = %event, "ignoring unknown agent event");
            AfterAgentFrame::Nothing
        }
        Err(e) => {
            stats.malformed_frames += 1;
            tracing::debug!(error = %e, "ignoring malformed agent frame");
            AfterAgentFrame::Nothing
        }
    }
}

fn transport_end(e: tungstenite::Error) -> SessionEnd {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            SessionEnd::AgentClosed {
                code: None,
                reason: String::new(),
            }
        }
        other => SessionEnd::Transport(other.to_string()),
    }
}

fn connect_error(e: tungstenite::Error) -> ConnectError {
    match e {
        tungstenite::Error::Http(response) => ConnectError::Http {
            status: response.status().as_u16(),
            reason: response
                .status()
                .canonical_reason()
                .unwrap_or_default()
                .to_string(),
        },
        tungstenite::Error::Url(u) => ConnectError::InvalidUrl(u.to_string()),
        other => ConnectError::Transport(other.to_string()),
    }
}

/// Creates the caller-event channel for a session.
pub fn caller_channel() -> (mpsc::Sender<CallerEvent>, mpsc::Receiver<CallerEvent>) {
    mpsc::channel(CALLER_CHANNEL_CAPACITY)
}

/// WebSocket buffers sized for one call's audio: tungstenite's defaults
/// (128 KiB each way) would cost more memory per call than everything else
/// in the call together. Messages larger than a buffer still work; the
/// bounds keep a hostile or stuck agent from growing memory without limit.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(8 * 1024 * 1024))
        .max_frame_size(Some(8 * 1024 * 1024))
}

#[cfg(test)]
// The handshake callbacks' signature (and its large error type) is tungstenite's.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde_json::Value;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    type ServerWs = WebSocketStream<TcpStream>;

    fn ids() -> StreamIds {
        StreamIds {
            stream_sid: "MZtest".into(),
            account_sid: "ACns".into(),
            call_sid: "CA1".into(),
        }
    }

    /// A one-connection agent server; returns its URL and the accepted socket plus the
    /// Authorization header it saw.
    async fn agent_server() -> (String, tokio::task::JoinHandle<(ServerWs, Option<String>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/agent", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut auth = None;
            let ws = tokio_tungstenite::accept_hdr_async(
                tcp,
                |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                    auth = req
                        .headers()
                        .get(AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    Ok(resp)
                },
            )
            .await
            .expect("handshake");
            (ws, auth)
        });
        (url, task)
    }

    async fn recv_json(ws: &mut ServerWs) -> Value {
        loop {
            match ws.next().await.expect("open").expect("frame") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
                Message::Close(_) => panic!("closed early"),
                _ => continue,
            }
        }
    }

    async fn send(ws: &mut ServerWs, v: Value) {
        ws.send(Message::text(v.to_string())).await.expect("send");
    }

    #[tokio::test]
    async fn full_call_flow_against_a_real_websocket_agent() {
        let (url, server) = agent_server().await;
        let target = AgentTarget::new(url, Some("s3cret".into()));
        let session = AgentSession::connect(&target, ids())
            .await
            .expect("connect");
        let (mut agent, auth) = server.await.expect("server");
        assert_eq!(auth.as_deref(), Some("Bearer s3cret"));

        let playout = SharedPlayout::new(16000);
        let (tx, rx) = caller_channel();
        let mut params = BTreeMap::new();
        params.insert("from".to_string(), "+15550001111".to_string());
        let run = tokio::spawn(session.run(params, rx, playout.clone()));

        let connected = recv_json(&mut agent).await;
        assert_eq!(connected["event"], "connected");
        let start = recv_json(&mut agent).await;
        assert_eq!(start["event"], "start");
        assert_eq!(start["sequenceNumber"], "1");
        assert_eq!(start["start"]["callSid"], "CA1");
        assert_eq!(start["start"]["customParameters"]["from"], "+15550001111");

        // Caller audio and a key press reach the agent.
        tx.send(CallerEvent::Audio {
            frame: [0x55; FRAME_BYTES],
            timestamp_ms: 0,
        })
        .await
        .expect("send");
        tx.send(CallerEvent::Dtmf('7')).await.expect("send");
        let media = recv_json(&mut agent).await;
        assert_eq!(media["event"], "media");
        assert_eq!(media["sequenceNumber"], "2");
        assert_eq!(media["media"]["chunk"], "1");
        let payload = BASE64
            .decode(media["media"]["payload"].as_str().expect("payload"))
            .expect("base64");
        assert_eq!(payload, vec![0x55; FRAME_BYTES]);
        let dtmf = recv_json(&mut agent).await;
        assert_eq!(dtmf["dtmf"]["digit"], "7");
        assert_eq!(dtmf["sequenceNumber"], "3");

        // Agent audio, a mark, noise that must be ignored, and a mark with nothing before it.
        send(
            &mut agent,
            serde_json::json!({"event":"media","streamSid":"MZtest","media":{"payload": BASE64.encode([1u8; 320])}}),
        )
        .await;
        send(
            &mut agent,
            serde_json::json!({"event":"mark","streamSid":"MZtest","mark":{"name":"m1"}}),
        )
        .await;
        send(
            &mut agent,
            serde_json::json!({"event":"transcript","text":"hi"}),
        )
        .await;
        agent.send(Message::text("{not json")).await.expect("send");
        agent
            .send(Message::binary(vec![1u8, 2, 3]))
            .await
            .expect("send");
        // The session handles frames in order, so once this mark echoes, everything before it
        // has been applied.
        send(
            &mut agent,
            serde_json::json!({"event":"clear","streamSid":"MZtest"}),
        )
        .await;
        // clear returns m1 (its audio never played).
        let m1 = recv_json(&mut agent).await;
        assert_eq!(m1["event"], "mark");
        assert_eq!(m1["mark"]["name"], "m1");
        assert_eq!(playout.lock().queued_bytes(), 0);

        // Now audio that is played out by the media path, then its mark echoes.
        send(
            &mut agent,
            serde_json::json!({"event":"media","media":{"payload": BASE64.encode([2u8; 200])}}),
        )
        .await;
        send(
            &mut agent,
            serde_json::json!({"event":"mark","mark":{"name":"m2"}}),
        )
        .await;
        // A mark with nothing before it in the queue is echoed at once only when the queue is
        // empty; here it waits for the 200 bytes. Drive the playout until the queue has taken
        // the audio and marks (the session may not have applied the frames yet).
        let mut frame = [0u8; FRAME_BYTES];
        let mut played = Vec::new();
        while played.len() < 200 {
            let fill = playout.next_frame(&mut frame);
            played.extend_from_slice(&frame[..fill.audio_bytes]);
            if fill.audio_bytes == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(played, vec![2u8; 200]);
        let m2 = recv_json(&mut agent).await;
        assert_eq!(m2["mark"]["name"], "m2");
        assert_eq!(m2["sequenceNumber"], "5");

        // Hang-up: stop, then close.
        tx.send(CallerEvent::Hangup).await.expect("send");
        let stop = recv_json(&mut agent).await;
        assert_eq!(stop["event"], "stop");
        assert_eq!(stop["stop"]["callSid"], "CA1");
        assert_eq!(stop["sequenceNumber"], "6");
        loop {
            match agent.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            }
        }
        let (end, stats) = run.await.expect("session task");
        assert_eq!(end, SessionEnd::CallEnded);
        assert_eq!(stats.unknown_events, 1);
        assert_eq!(stats.malformed_frames, 1);
        assert_eq!(stats.binary_frames, 1);
        assert_eq!(stats.media_received, 2);
        assert_eq!(stats.marks_sent, 2);
        assert_eq!(stats.media_sent, 1);
        assert_eq!(stats.dtmf_sent, 1);
    }

    #[tokio::test]
    async fn agent_closing_ends_the_session() {
        let (url, server) = agent_server().await;
        let session = AgentSession::connect(&AgentTarget::new(url, None), ids())
            .await
            .expect("connect");
        let (mut agent, auth) = server.await.expect("server");
        assert_eq!(auth, None, "no token, no header");
        let (_tx, rx) = caller_channel();
        let run = tokio::spawn(session.run(BTreeMap::new(), rx, SharedPlayout::new(1600)));
        recv_json(&mut agent).await;
        recv_json(&mut agent).await;
        agent
            .close(Some(tungstenite::protocol::CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await
            .expect("close");
        let (end, _) = run.await.expect("task");
        assert_eq!(
            end,
            SessionEnd::AgentClosed {
                code: Some(1000),
                reason: "bye".into()
            }
        );
    }

    #[tokio::test]
    async fn dropped_caller_channel_sends_stop() {
        let (url, server) = agent_server().await;
        let session = AgentSession::connect(&AgentTarget::new(url, None), ids())
            .await
            .expect("connect");
        let (mut agent, _) = server.await.expect("server");
        let (tx, rx) = caller_channel();
        let run = tokio::spawn(session.run(BTreeMap::new(), rx, SharedPlayout::new(1600)));
        recv_json(&mut agent).await;
        recv_json(&mut agent).await;
        drop(tx);
        assert_eq!(recv_json(&mut agent).await["event"], "stop");
        let (end, _) = run.await.expect("task");
        assert_eq!(end, SessionEnd::CallEnded);
    }

    #[tokio::test]
    async fn http_refusal_is_reported_with_status() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let _ = tokio_tungstenite::accept_hdr_async(
                tcp,
                |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
                    let mut resp = ErrorResponse::new(Some("no".into()));
                    *resp.status_mut() = tungstenite::http::StatusCode::FORBIDDEN;
                    Err(resp)
                },
            )
            .await;
        });
        let err = AgentSession::connect(&AgentTarget::new(url, Some("bad".into())), ids())
            .await
            .expect_err("refused");
        match err {
            ConnectError::Http { status, reason } => {
                assert_eq!(status, 403);
                assert_eq!(reason, "Forbidden");
            }
            other => panic!("unexpected {other:?}"),
        }
        server.await.expect("server");
    }

    #[tokio::test]
    async fn unreachable_silent_and_invalid_targets() {
        // Nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let err = AgentSession::connect(
            &AgentTarget::new(format!("ws://127.0.0.1:{port}/"), None),
            ids(),
        )
        .await
        .expect_err("refused");
        assert!(matches!(err, ConnectError::Transport(_)), "{err:?}");

        // Accepts TCP but never answers the upgrade.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/", listener.local_addr().expect("addr"));
        let holder = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            // Keep the connection open until the client gives up.
            let mut buf = [0u8; 1024];
            let mut tcp = tcp;
            use tokio::io::AsyncReadExt;
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
        let mut target = AgentTarget::new(url, None);
        target.connect_timeout = Duration::from_millis(100);
        let err = AgentSession::connect(&target, ids())
            .await
            .expect_err("timeout");
        assert!(matches!(err, ConnectError::Timeout(_)), "{err:?}");
        holder.await.expect("holder");

        for bad in ["http://example.invalid/", "ws://", "not a url"] {
            let err = AgentSession::connect(&AgentTarget::new(bad, None), ids())
                .await
                .expect_err("invalid");
            assert!(matches!(err, ConnectError::InvalidUrl(_)), "{bad}: {err:?}");
        }
        let err = AgentSession::connect(
            &AgentTarget::new("ws://127.0.0.1:1/", Some("bad\ntoken".into())),
            ids(),
        )
        .await
        .expect_err("token");
        assert!(matches!(err, ConnectError::InvalidToken));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let t = AgentTarget::new("wss://agent.example/ws", Some("topsecret".into()));
        let s = format!("{t:?}");
        assert!(!s.contains("topsecret"));
        assert!(s.contains("redacted"));
    }

    #[test]
    fn default_tls_config_builds() {
        assert!(default_tls().is_ok());
    }
}
