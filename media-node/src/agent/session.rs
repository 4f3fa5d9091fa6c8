//! One call's WebSocket session with its agent (Twilio Media Streams).
//!
//! [`AgentSession::connect`] opens the socket (ws:// or wss:// with rustls, `Authorization:
//! Bearer` when a token is given, bounded by a connect timeout) so that an unreachable agent can
//! be refused before the call is answered. [`AgentSession::run`] then sends `connected` and
//! `start`, forwards caller events (audio frames, DTMF) from a bounded queue
//! ([`super::caller_queue`]), feeds agent media/mark/clear into the call's [`SharedPlayout`],
//! echoes marks as their audio is played, and on hang-up sends `stop` and closes. It ends
//! with a typed [`SessionEnd`].
//!
//! The media path never waits for the agent: it pushes caller frames with `try_send` (a full
//! queue drops the frame and counts it) and takes playout frames under a short, never-awaited
//! lock.
//!
//! The agent is not trusted with the node's memory ([`AgentLimits`]): WebSocket messages and
//! frames are bounded (a larger one closes the session with 1009), marks held per call and mark
//! names are bounded (excess is refused and counted; an agent that keeps exceeding has its
//! session closed with 1008), media payloads decode in fixed steps straight into the bounded
//! playout queue (overflow counted). A session closed for its limits ends the call as an agent
//! disconnect does. A bearer token is never sent over plain `ws://` except to loopback.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use prometheus::IntCounter;
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header::AUTHORIZATION};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::caller_queue::{CallerRx, CallerTx};
use super::twilio::{AgentEvent, StreamIds, StreamWriter, decode_payload, parse_agent_message};
use crate::media::playout::{DEFAULT_MAX_MARKS, FRAME_BYTES, FrameFill, PlayoutQueue};
use crate::media::signal::Signal;

/// Default bound on opening the WebSocket (TCP, TLS and HTTP upgrade together).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Caller events the session may have outstanding before the media path starts dropping.
pub const CALLER_CHANNEL_CAPACITY: usize = 32;
/// Default bound on one WebSocket message (and frame) from the agent. Twilio media messages
/// are about 300 bytes; 256 KiB holds a media message of 24 s of audio. Frames get the same
/// bound because nearly every client sends a message as one frame: a smaller frame bound
/// would be the real message bound.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Default bound on a mark name (Twilio's are short labels).
pub const DEFAULT_MAX_MARK_NAME_BYTES: usize = 256;
/// Default number of refused messages (over a mark limit) a session tolerates before it is
/// closed: a well-behaved agent never reaches any limit, so this many is persistence, not an
/// edge case.
pub const DEFAULT_MAX_VIOLATIONS: u64 = 100;
/// How long closing a session for its limits may take (stop, close frame, and reading what
/// the agent still sends so the close frame is not lost to a TCP reset).
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Longest close reason (a close frame's payload is at most 125 bytes with the code).
const MAX_CLOSE_REASON: usize = 120;

/// Label values of `switchboard_agent_limit_exceeded_total{limit}`.
pub mod limit {
    /// A mark refused because the call held the maximum of pending marks.
    pub const PENDING_MARKS: &str = "pending_marks";
    /// A mark refused because its name was too long.
    pub const MARK_NAME: &str = "mark_name";
    /// A WebSocket message or frame over the size bound (closes the session).
    pub const MESSAGE_SIZE: &str = "message_size";
    /// A media message whose audio did not all fit in the playout queue (the rest dropped).
    pub const PLAYOUT_QUEUE: &str = "playout_queue";
}

/// Label values of `switchboard_agent_messages_ignored_total{reason}`.
pub mod ignored {
    /// An `event` the node does not handle.
    pub const UNKNOWN_EVENT: &str = "unknown_event";
    /// Not JSON, or missing what its event needs, or bad base64.
    pub const MALFORMED: &str = "malformed";
    /// A binary frame (the protocol is text).
    pub const BINARY: &str = "binary";
}

/// What an agent may make the node hold for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLimits {
    /// Largest WebSocket message and frame accepted from the agent, in bytes.
    pub max_message_bytes: usize,
    /// Marks held per call (waiting for their audio, or completed and not yet echoed).
    pub max_pending_marks: usize,
    /// Longest mark name, in bytes.
    pub max_mark_name_bytes: usize,
    /// Refused messages tolerated before the session is closed.
    pub max_violations: u64,
}

impl Default for AgentLimits {
    fn default() -> Self {
        AgentLimits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_pending_marks: DEFAULT_MAX_MARKS,
            max_mark_name_bytes: DEFAULT_MAX_MARK_NAME_BYTES,
            max_violations: DEFAULT_MAX_VIOLATIONS,
        }
    }
}

/// Where a session counts what it refused or ignored: Prometheus counters resolved once, so
/// counting is an atomic add. [`LimitCounters::default`] counts into unregistered counters.
#[derive(Clone)]
pub struct LimitCounters {
    /// Marks refused: too many pending.
    pub pending_marks: IntCounter,
    /// Marks refused: name too long.
    pub mark_name: IntCounter,
    /// Messages or frames over the size bound.
    pub message_size: IntCounter,
    /// Media messages that overflowed the playout queue.
    pub playout_queue: IntCounter,
    /// Bytes of agent audio dropped because the playout queue was full.
    pub playout_overflow_bytes: IntCounter,
    /// Messages with an unknown event.
    pub unknown_event: IntCounter,
    /// Malformed messages.
    pub malformed: IntCounter,
    /// Binary frames.
    pub binary: IntCounter,
}

impl LimitCounters {
    /// Counters from the node's metric families: `exceeded` by `limit`, `ignored` by
    /// `reason`, and the overflow byte counter.
    pub fn new(
        exceeded: &prometheus::IntCounterVec,
        ignored_messages: &prometheus::IntCounterVec,
        playout_overflow_bytes: &IntCounter,
    ) -> Self {
        let e = |l: &str| exceeded.with_label_values(&[l]);
        let i = |r: &str| ignored_messages.with_label_values(&[r]);
        LimitCounters {
            pending_marks: e(limit::PENDING_MARKS),
            mark_name: e(limit::MARK_NAME),
            message_size: e(limit::MESSAGE_SIZE),
            playout_queue: e(limit::PLAYOUT_QUEUE),
            playout_overflow_bytes: playout_overflow_bytes.clone(),
            unknown_event: i(ignored::UNKNOWN_EVENT),
            malformed: i(ignored::MALFORMED),
            binary: i(ignored::BINARY),
        }
    }
}

impl Default for LimitCounters {
    fn default() -> Self {
        // A fixed, valid name: creating the counter cannot fail.
        let c = || {
            IntCounter::new("switchboard_unregistered", "not exported")
                .unwrap_or_else(|e| panic!("static counter definition: {e}"))
        };
        LimitCounters {
            pending_marks: c(),
            mark_name: c(),
            message_size: c(),
            playout_queue: c(),
            playout_overflow_bytes: c(),
            unknown_event: c(),
            malformed: c(),
            binary: c(),
        }
    }
}

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
    /// What the agent may make the node hold.
    pub limits: AgentLimits,
    /// Where refusals are counted.
    pub counters: LimitCounters,
}

impl std::fmt::Debug for AgentTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token, nor what in the URL may carry one.
        f.debug_struct("AgentTarget")
            .field("url", &crate::redact::url(&self.url))
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("limits", &self.limits)
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
            limits: AgentLimits::default(),
            counters: LimitCounters::default(),
        }
    }
}

/// True for hosts that are this machine: `localhost`, 127.0.0.0/8, ::1 (also IPv4-mapped).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Why the agent could not be reached.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The URL is not a usable ws:// or wss:// URL (the text is redacted).
    #[error("invalid agent URL: {0}")]
    InvalidUrl(String),
    /// The token cannot be sent as a header value.
    #[error("agent token is not a valid header value")]
    InvalidToken,
    /// A bearer token would travel in clear text: plain ws:// to a host that is not loopback.
    #[error(
        "refusing to send the agent's bearer token over plain ws:// to {host} (not loopback): use wss://"
    )]
    InsecureToken {
        /// The agent's host.
        host: String,
    },
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
    /// A transfer moved on.
    Transfer(Box<crate::call::transfer::TransferUpdate>),
    /// The call was bridged to another call (a dial-through transfer): the agent leaves.
    /// Audio still queued for the caller is dropped, its pending marks are returned, then
    /// `stop` and the socket closes; the call goes on without the agent.
    Leave,
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// We ended it (hang-up, or the call dropped its sender): `stop` was sent and the socket
    /// closed.
    CallEnded,
    /// The call was bridged elsewhere ([`CallerEvent::Leave`]): marks and `stop` were sent and
    /// the socket closed; the call goes on.
    Left,
    /// The agent asked to end the call (`hangup` event): `stop` was sent and the socket
    /// closed; the call ends with a BYE.
    AgentHangup {
        /// The agent's reason, clipped.
        reason: String,
    },
    /// The agent closed the socket (a socket that closes ends the call).
    AgentClosed {
        /// Close code, if the agent sent a close frame.
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
    /// The connection failed mid-call (reset, TLS or protocol violation).
    Transport(String),
    /// We closed it: the agent went over a limit (an oversized message at once, or refused
    /// messages beyond [`AgentLimits::max_violations`]).
    LimitExceeded {
        /// Which limit ([`limit`] label value).
        limit: &'static str,
        /// The reason sent in the close frame and logged.
        reason: String,
    },
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
    /// Marks refused (too many pending, or name too long).
    pub marks_refused: u64,
    /// Bytes of agent audio dropped because the playout queue was full.
    pub overflow_bytes: u64,
    /// Messages refused for a limit (the session closes past [`AgentLimits::max_violations`]).
    pub limit_violations: u64,
}

/// The playout queue shared between the session (which fills it) and the media path (which
/// takes a frame per tick). The lock is held only for queue operations, never across an await.
#[derive(Debug, Default)]
pub struct SharedPlayout {
    queue: Mutex<PlayoutQueue>,
    /// Digits the agent asked to send to the caller, oldest first.
    digits: Mutex<std::collections::VecDeque<char>>,
    /// How many: the media path looks at it every frame, so without taking the lock.
    queued_digits: std::sync::atomic::AtomicUsize,
    marks_ready: Signal,
    /// Wakes the media path when audio reaches an empty queue (it may leave at once).
    audio_ready: Signal,
}

impl SharedPlayout {
    /// A shared queue with the given bound in bytes.
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(SharedPlayout {
            queue: Mutex::new(PlayoutQueue::new(max_bytes)),
            digits: Mutex::default(),
            queued_digits: Default::default(),
            marks_ready: Signal::new(),
            audio_ready: Signal::new(),
        })
    }

    /// Locks the queue (for inspection or direct use).
    pub fn lock(&self) -> MutexGuard<'_, PlayoutQueue> {
        // Queue operations cannot panic halfway in a way that breaks its invariants.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues agent audio; returns the bytes accepted. Audio reaching an empty queue wakes
    /// the media path, which may send it at once.
    pub fn push_audio(&self, bytes: &[u8]) -> usize {
        let (accepted, was_empty) = {
            let mut q = self.lock();
            let was_empty = q.queued_bytes() == 0;
            (q.push_audio(bytes), was_empty)
        };
        if was_empty && accepted > 0 {
            self.audio_ready.notify();
        }
        accepted
    }

    /// Queues DTMF digits for the caller (only `0-9 * # A-D`; at most [`MAX_QUEUED_DIGITS`]
    /// waiting); returns how many were taken. Wakes the media path.
    pub fn push_digits(&self, digits: &str) -> usize {
        let taken = {
            let mut q = self.digits.lock().unwrap_or_else(|e| e.into_inner());
            let before = q.len();
            for d in digits.chars() {
                if q.len() >= MAX_QUEUED_DIGITS {
                    break;
                }
                if crate::media::dtmf::digit_to_event(d).is_some() {
                    q.push_back(d.to_ascii_uppercase());
                }
            }
            self.queued_digits
                .store(q.len(), std::sync::atomic::Ordering::Release);
            q.len() - before
        };
        if taken > 0 {
            self.audio_ready.notify();
        }
        taken
    }

    /// The next digit to send, if any.
    pub fn next_digit(&self) -> Option<char> {
        if self
            .queued_digits
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
        {
            return None;
        }
        let mut q = self.digits.lock().unwrap_or_else(|e| e.into_inner());
        let d = q.pop_front();
        self.queued_digits
            .store(q.len(), std::sync::atomic::Ordering::Release);
        d
    }

    /// True when agent audio is queued.
    pub fn has_audio(&self) -> bool {
        self.lock().queued_bytes() > 0
    }

    /// Resolves when audio has reached an empty queue since the last call.
    pub fn audio_ready(&self) -> crate::media::signal::Wait<'_> {
        self.audio_ready.wait()
    }

    /// Takes the next 20 ms frame for the caller (called by the media path for each packet)
    /// and wakes the session when marks have completed. Also says how much audio is left.
    pub fn next_frame(&self, out: &mut [u8; FRAME_BYTES]) -> (FrameFill, usize) {
        let (fill, marks_done) = {
            let mut q = self.lock();
            let fill = q.next_frame(out);
            ((fill, q.queued_bytes()), q.done_marks() > 0)
        };
        if marks_done {
            self.marks_ready.notify();
        }
        fill
    }
}

/// Most digits waiting to be sent to the caller; more are dropped (an agent cannot queue
/// minutes of tones).
pub const MAX_QUEUED_DIGITS: usize = 32;

/// An open session, ready to run.
pub struct AgentSession {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    writer: StreamWriter,
    limits: AgentLimits,
    counters: LimitCounters,
    /// The call, for the agent's `transfer` requests (none: they are ignored).
    call: Option<crate::call::HangupHandle>,
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
            return Err(ConnectError::InvalidUrl(crate::redact::url(&target.url)));
        }
        let mut request = target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::InvalidUrl(e.to_string()))?;
        if target.bearer_token.is_some() && target.url.starts_with("ws://") {
            let host = request.uri().host().unwrap_or_default();
            if !is_loopback_host(host) {
                return Err(ConnectError::InsecureToken {
                    host: host.to_owned(),
                });
            }
        }
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
                Some(ws_config(&target.limits)),
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
            limits: target.limits,
            counters: target.counters.clone(),
            call: None,
        })
    }

    /// Lets the agent's `transfer` events reach the call.
    pub fn set_call(&mut self, call: crate::call::HangupHandle) {
        self.call = Some(call);
    }

    /// Runs the session until the call or the agent ends it. `caller` carries the call's audio
    /// and DTMF; `playout` receives the agent's audio and marks.
    pub async fn run(
        mut self,
        custom_parameters: BTreeMap<String, String>,
        caller: CallerRx,
        playout: Arc<SharedPlayout>,
    ) -> (SessionEnd, SessionStats) {
        self.run_borrowed(custom_parameters, caller, playout).await
    }

    /// [`run`](Self::run) on a borrowed session: a task that owns the session (and lives as
    /// long as the call) then holds it once, where a by-value session moved into an awaited
    /// `async fn` would be held twice.
    pub async fn run_borrowed(
        &mut self,
        custom_parameters: BTreeMap<String, String>,
        mut caller: CallerRx,
        playout: Arc<SharedPlayout>,
    ) -> (SessionEnd, SessionStats) {
        let mut stats = SessionStats::default();
        playout.lock().set_max_marks(self.limits.max_pending_marks);
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
                            Some(CallerEvent::Transfer(u)) => self.writer.transfer(&u),
                            Some(CallerEvent::Leave) => {
                                let marks = playout.lock().clear();
                                if let Err(e) = self.send_marks(marks, &mut stats).await {
                                    break 'session transport_end(e);
                                }
                                break 'session match self.finish().await {
                                    SessionEnd::CallEnded => SessionEnd::Left,
                                    other => other,
                                };
                            }
                            // The call ended (it dropped its sender): `stop`, then close.
                            None => {
                                break 'session self.finish().await;
                            }
                        };
                        // tungstenite takes ownership of the text: one copy of the buffer.
                        let msg = Message::text(text);
                        if let Err(e) = self.ws.send(msg).await {
                            break 'session transport_end(e);
                        }
                    }
                    _ = playout.marks_ready.wait() => {
                        if let Err(e) = self.send_done_marks(&playout, &mut stats).await {
                            break 'session transport_end(e);
                        }
                    }
                    incoming = self.ws.next() => {
                        let msg = match incoming {
                            None => break 'session SessionEnd::AgentClosed { code: None, reason: String::new() },
                            Some(Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                                // The stream cannot be resynchronised after an oversized frame.
                                self.counters.message_size.inc();
                                stats.limit_violations += 1;
                                let reason = format!("message of {size} bytes over the limit of {max_size} bytes");
                                break 'session self.close_for_limit(limit::MESSAGE_SIZE, CloseCode::Size, reason).await;
                            }
                            Some(Err(e)) => break 'session transport_end(e),
                            Some(Ok(m)) => m,
                        };
                        match msg {
                            Message::Text(text) => {
                                let after = apply_agent_text(text.as_str(), &playout, &self.limits, &self.counters, &mut stats);
                                drop(text);
                                let sent = match after {
                                    AfterAgentFrame::Nothing => Ok(()),
                                    AfterAgentFrame::EchoDone => self.send_done_marks(&playout, &mut stats).await,
                                    AfterAgentFrame::EchoCleared(marks) => self.send_marks(marks, &mut stats).await,
                                    AfterAgentFrame::Transfer(target) => {
                                        match &self.call {
                                            // The call checks the trunk's policy; the outcome comes back as transfer events.
                                            Some(call) => {
                                                call.transfer(&target, std::time::Duration::from_secs(u64::from(crate::api::DEFAULT_TRANSFER_TIMEOUT_SECS)), None, Vec::new());
                                            }
                                            None => tracing::debug!("agent transfer ignored: no call attached"),
                                        }
                                        Ok(())
                                    }
                                    AfterAgentFrame::Hangup(reason) => {
                                        break 'session match self.finish().await {
                                            SessionEnd::CallEnded => SessionEnd::AgentHangup { reason },
                                            other => other,
                                        };
                                    }
                                    AfterAgentFrame::Refused(what) => {
                                        stats.limit_violations += 1;
                                        if stats.limit_violations > self.limits.max_violations {
                                            let reason = format!(
                                                "{} messages over the node's limits (last: {})",
                                                stats.limit_violations,
                                                describe(what, &self.limits)
                                            );
                                            break 'session self.close_for_limit(what, CloseCode::Policy, reason).await;
                                        }
                                        Ok(())
                                    }
                                };
                                if let Err(e) = sent {
                                    break 'session transport_end(e);
                                }
                            }
                            Message::Binary(_) => {
                                stats.binary_frames += 1;
                                self.counters.binary.inc();
                            }
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

    /// Ends the session because the agent went over a limit: `stop`, a close frame with
    /// `code` and `reason`, then whatever the agent still sends is read and discarded until it
    /// closes, so that the close frame is not lost to a TCP reset. All of it within
    /// [`CLOSE_GRACE`]: an agent that stops reading cannot hold the session open.
    async fn close_for_limit(
        &mut self,
        limit: &'static str,
        code: CloseCode,
        mut reason: String,
    ) -> SessionEnd {
        truncate_at_char(&mut reason, MAX_CLOSE_REASON);
        tracing::warn!(
            call_id = %self.writer.ids().call_sid,
            limit,
            reason = %reason,
            "closing agent session: the agent went over the node's limits"
        );
        let stop = self.writer.stop().to_owned();
        let frame = CloseFrame {
            code,
            reason: reason.clone().into(),
        };
        let ws = &mut self.ws;
        let _ = tokio::time::timeout(CLOSE_GRACE, async move {
            let _ = ws.send(Message::text(stop)).await;
            if ws.close(Some(frame)).await.is_err() {
                return;
            }
            // Past this point tungstenite's framing is of no use (it may be mid-way through an
            // oversized frame): read raw bytes into a small buffer until the agent closes.
            // On the heap, and only here: a buffer in the future itself would cost every call
            // its size for a path almost none takes.
            let mut sink = vec![0u8; 4096];
            while let Ok(n) = ws.get_mut().read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        SessionEnd::LimitExceeded { limit, reason }
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
    /// The message was refused for this limit (counted already).
    Refused(&'static str),
    /// The agent asks to end the call, for this reason.
    Hangup(String),
    /// The agent asks to transfer the call to this target.
    Transfer(String),
}

/// A limit in words, for a close reason.
fn describe(what: &str, limits: &AgentLimits) -> String {
    match what {
        limit::PENDING_MARKS => format!("more than {} pending marks", limits.max_pending_marks),
        limit::MARK_NAME => format!("mark name longer than {} bytes", limits.max_mark_name_bytes),
        other => other.to_owned(),
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// At most `max` bytes of `s`, on a character boundary (agent text in debug logs).
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Applies one agent text frame to the playout queue.
fn apply_agent_text(
    text: &str,
    playout: &SharedPlayout,
    limits: &AgentLimits,
    counters: &LimitCounters,
    stats: &mut SessionStats,
) -> AfterAgentFrame {
    match parse_agent_message(text) {
        Ok(AgentEvent::Media { payload }) => {
            let mut dropped = 0u64;
            // Lock per decoded piece (a few KiB): the media path never waits long.
            let decoded = decode_payload(&payload, |piece| {
                let accepted = playout.push_audio(piece);
                dropped += (piece.len() - accepted) as u64;
            });
            if dropped > 0 {
                stats.overflow_bytes += dropped;
                counters.playout_queue.inc();
                counters.playout_overflow_bytes.inc_by(dropped);
            }
            match decoded {
                Ok(_) => stats.media_received += 1,
                Err(e) => {
                    stats.malformed_frames += 1;
                    counters.malformed.inc();
                    tracing::debug!(error = %e, "agent media payload is not valid base64");
                }
            }
            AfterAgentFrame::Nothing
        }
        Ok(AgentEvent::Mark { name }) => {
            if name.len() > limits.max_mark_name_bytes {
                stats.marks_refused += 1;
                counters.mark_name.inc();
                return AfterAgentFrame::Refused(limit::MARK_NAME);
            }
            let mut q = playout.lock();
            if !q.push_mark(name.into_owned()) {
                stats.marks_refused += 1;
                counters.pending_marks.inc();
                return AfterAgentFrame::Refused(limit::PENDING_MARKS);
            }
            if q.done_marks() > 0 {
                AfterAgentFrame::EchoDone
            } else {
                AfterAgentFrame::Nothing
            }
        }
        Ok(AgentEvent::Clear) => AfterAgentFrame::EchoCleared(playout.lock().clear()),
        Ok(AgentEvent::Dtmf { digits }) => {
            let taken = playout.push_digits(&digits);
            if taken < digits.chars().count() {
                tracing::debug!(
                    taken,
                    "agent DTMF: digits refused (not 0-9*#A-D, or the queue is full)"
                );
            }
            AfterAgentFrame::Nothing
        }
        Ok(AgentEvent::Hangup { reason }) => {
            AfterAgentFrame::Hangup(clip(&reason, MAX_CLOSE_REASON).to_owned())
        }
        Ok(AgentEvent::Transfer { target }) => {
            AfterAgentFrame::Transfer(clip(&target, 40).to_owned())
        }
        Ok(AgentEvent::Unknown { event }) => {
            stats.unknown_events += 1;
            counters.unknown_event.inc();
            tracing::debug!(event = %clip(&event, 64), "ignoring unknown agent event");
            AfterAgentFrame::Nothing
        }
        Err(e) => {
            stats.malformed_frames += 1;
            counters.malformed.inc();
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
pub fn caller_channel() -> (CallerTx, CallerRx) {
    super::caller_queue::queue(CALLER_CHANNEL_CAPACITY)
}

/// WebSocket buffers sized for one call's audio: tungstenite's defaults
/// (128 KiB each way) would cost more memory per call than everything else
/// in the call together. Messages larger than a buffer still work; the
/// bounds keep a hostile or stuck agent from growing memory without limit
/// (tungstenite reserves a frame's full length once it has read its header,
/// so the frame bound is also what one announced frame can make us allocate).
fn ws_config(limits: &AgentLimits) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    let max = limits.max_message_bytes.max(1024);
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
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
            let (fill, _) = playout.next_frame(&mut frame);
            played.extend_from_slice(&frame[..fill.audio_bytes]);
            if fill.audio_bytes == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(played, vec![2u8; 200]);
        let m2 = recv_json(&mut agent).await;
        assert_eq!(m2["mark"]["name"], "m2");
        assert_eq!(m2["sequenceNumber"], "5");

        // Hang-up (the call drops its sender): stop, then close.
        drop(tx);
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
        let t = AgentTarget::new(
            "wss://user:urlsecret@agent.example/ws?token=urlsecret",
            Some("topsecret".into()),
        );
        let s = format!("{t:?}");
        assert!(!s.contains("topsecret"));
        assert!(!s.contains("urlsecret"), "{s}");
        assert!(s.contains("wss://agent.example/ws"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "::1",
            "localhost",
            "LocalHost",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "10.0.0.1",
            "agent.example.com",
            "localhost.example.com",
            "[::2]",
            "0.0.0.0",
            "",
            "128.0.0.1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[tokio::test]
    async fn bearer_token_is_never_sent_over_plain_ws_to_a_remote_host() {
        // Refused before any connection is attempted (these hosts are never contacted).
        for url in [
            "ws://agent.example.com/media",
            "ws://10.1.2.3:8080/a?x=1",
            "ws://[2001:db8::1]/a",
            "ws://user:pw@agent.example.com/a",
        ] {
            let err =
                AgentSession::connect(&AgentTarget::new(url, Some("Zq9-secret".into())), ids())
                    .await
                    .expect_err("refused");
            match &err {
                ConnectError::InsecureToken { host } => {
                    assert!(!host.is_empty() && !host.contains("pw"), "{host}");
                }
                other => panic!("{url}: unexpected {other:?}"),
            }
            let text = err.to_string();
            assert!(text.contains("wss://") && !text.contains("Zq9"), "{text}");
        }
        // Loopback ws:// with a token stays allowed (local agents, tests, the demo).
        let (url, server) = agent_server().await;
        let url = url.replace("127.0.0.1", "localhost");
        let session =
            AgentSession::connect(&AgentTarget::new(url, Some("tok".into())), ids()).await;
        assert!(session.is_ok(), "{session:?}");
        let (_agent, auth) = server.await.expect("server");
        assert_eq!(auth.as_deref(), Some("Bearer tok"));
    }

    #[tokio::test]
    async fn invalid_url_errors_are_redacted() {
        let err = AgentSession::connect(
            &AgentTarget::new("http://user:s3cret@agent.example/p?token=s3cret", None),
            ids(),
        )
        .await
        .expect_err("invalid");
        let text = err.to_string();
        assert!(matches!(err, ConnectError::InvalidUrl(_)));
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("http://agent.example/p"), "{text}");
    }

    /// Connects with `limits`, runs the session, and reads connected + start.
    async fn limited_session(
        limits: AgentLimits,
    ) -> (
        ServerWs,
        Arc<SharedPlayout>,
        CallerTx,
        LimitCounters,
        tokio::task::JoinHandle<(SessionEnd, SessionStats)>,
    ) {
        let (url, server) = agent_server().await;
        let mut target = AgentTarget::new(url, None);
        target.limits = limits;
        let counters = target.counters.clone();
        let session = AgentSession::connect(&target, ids())
            .await
            .expect("connect");
        let (mut agent, _) = server.await.expect("server");
        let playout = SharedPlayout::new(16000);
        let (tx, rx) = caller_channel();
        let run = tokio::spawn(session.run(BTreeMap::new(), rx, playout.clone()));
        recv_json(&mut agent).await;
        recv_json(&mut agent).await;
        (agent, playout, tx, counters, run)
    }

    /// Reads until the node's close frame: (code, reason).
    async fn close_frame(ws: &mut ServerWs) -> (u16, String) {
        loop {
            match ws.next().await.expect("open").expect("frame") {
                Message::Close(Some(f)) => return (u16::from(f.code), f.reason.to_string()),
                Message::Close(None) => panic!("close without a code"),
                _ => continue,
            }
        }
    }

    #[tokio::test]
    async fn marks_over_the_limit_are_refused_then_the_session_closes() {
        let limits = AgentLimits {
            max_pending_marks: 5,
            max_mark_name_bytes: 16,
            max_violations: 3,
            ..AgentLimits::default()
        };
        let (mut agent, playout, _tx, counters, run) = limited_session(limits).await;
        // Audio queued, so marks wait.
        send(
            &mut agent,
            serde_json::json!({"event":"media","media":{"payload": BASE64.encode([1u8; 1600])}}),
        )
        .await;
        for i in 0..5 {
            send(
                &mut agent,
                serde_json::json!({"event":"mark","mark":{"name": format!("m{i}")}}),
            )
            .await;
        }
        // A name over 16 bytes, then one mark too many: refused, counted, session still open.
        send(
            &mut agent,
            serde_json::json!({"event":"mark","mark":{"name": "n".repeat(17)}}),
        )
        .await;
        send(
            &mut agent,
            serde_json::json!({"event":"mark","mark":{"name": "m5"}}),
        )
        .await;
        send(
            &mut agent,
            serde_json::json!({"event":"mark","mark":{"name": "m6"}}),
        )
        .await;
        // The session applies frames in order: once clear echoes, the above were applied.
        send(&mut agent, serde_json::json!({"event":"clear"})).await;
        let mut echoed = Vec::new();
        while echoed.len() < 5 {
            let m = recv_json(&mut agent).await;
            assert_eq!(m["event"], "mark");
            echoed.push(m["mark"]["name"].as_str().expect("name").to_owned());
        }
        assert_eq!(
            echoed,
            ["m0", "m1", "m2", "m3", "m4"],
            "refused marks are not echoed"
        );
        assert_eq!(counters.mark_name.get(), 1);
        assert_eq!(counters.pending_marks.get(), 2);
        assert!(playout.lock().is_idle());
        // A fourth violation closes the session with 1008 and a reason.
        send(
            &mut agent,
            serde_json::json!({"event":"media","media":{"payload": BASE64.encode([1u8; 1600])}}),
        )
        .await;
        for i in 0..6 {
            send(
                &mut agent,
                serde_json::json!({"event":"mark","mark":{"name": format!("x{i}")}}),
            )
            .await;
        }
        let stop = recv_json(&mut agent).await;
        assert_eq!(stop["event"], "stop");
        let (code, reason) = close_frame(&mut agent).await;
        assert_eq!(code, 1008);
        assert_eq!(
            reason,
            "4 messages over the node's limits (last: more than 5 pending marks)"
        );
        let (end, stats) = run.await.expect("task");
        assert_eq!(
            end,
            SessionEnd::LimitExceeded {
                limit: limit::PENDING_MARKS,
                reason
            }
        );
        assert_eq!(stats.limit_violations, 4);
        assert_eq!(stats.marks_refused, 4);
        assert_eq!(counters.pending_marks.get(), 3);
    }

    #[tokio::test]
    async fn oversized_message_closes_with_1009() {
        let limits = AgentLimits {
            max_message_bytes: 4096,
            ..AgentLimits::default()
        };
        let (mut agent, _playout, _tx, counters, run) = limited_session(limits).await;
        // At the bound is fine.
        let pad = "x".repeat(4096 - r#"{"event":"pad","p":""}"#.len());
        agent
            .send(Message::text(format!(r#"{{"event":"pad","p":"{pad}"}}"#)))
            .await
            .expect("send");
        // Over it is not, however it is framed.
        agent
            .send(Message::text(format!(r#"{{"event":"pad","p":"{pad}x"}}"#)))
            .await
            .expect("send");
        let stop = recv_json(&mut agent).await;
        assert_eq!(stop["event"], "stop");
        let (code, reason) = close_frame(&mut agent).await;
        assert_eq!(code, 1009);
        assert!(
            reason.contains("4097") && reason.contains("4096"),
            "{reason}"
        );
        let (end, stats) = run.await.expect("task");
        assert!(
            matches!(
                end,
                SessionEnd::LimitExceeded {
                    limit: limit::MESSAGE_SIZE,
                    ..
                }
            ),
            "{end:?}"
        );
        assert_eq!(stats.unknown_events, 1, "the message at the bound was read");
        assert_eq!(counters.message_size.get(), 1);
        assert_eq!(counters.unknown_event.get(), 1);
    }

    #[tokio::test]
    async fn playout_overflow_is_counted_not_silent() {
        let (mut agent, playout, _tx, counters, run) =
            limited_session(AgentLimits::default()).await;
        // The queue holds 16000 bytes; send 20000.
        for _ in 0..2 {
            send(&mut agent, serde_json::json!({"event":"media","media":{"payload": BASE64.encode([1u8; 10000])}})).await;
        }
        send(
            &mut agent,
            serde_json::json!({"event":"mark","mark":{"name":"after"}}),
        )
        .await;
        // The mark is applied after both media messages.
        while playout.lock().pending_marks() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(playout.lock().queued_bytes(), 16000);
        assert_eq!(counters.playout_overflow_bytes.get(), 4000);
        assert_eq!(counters.playout_queue.get(), 1);
        agent.close(None).await.expect("close");
        let (_, stats) = run.await.expect("task");
        assert_eq!(stats.overflow_bytes, 4000);
        assert_eq!(
            stats.limit_violations, 0,
            "overflow alone never closes the session"
        );
    }

    #[test]
    fn default_tls_config_builds() {
        assert!(default_tls().is_ok());
    }
}
