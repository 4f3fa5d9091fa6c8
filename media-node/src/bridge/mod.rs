//! The bridge between answered calls and their AI agents: the media node's [`CallHandler`].
//!
//! Per call it runs two tasks:
//! - the media engine ([`engine`]): RTP/RTCP on the call's ports, woken by its entry in the
//!   node's one shared timing wheel (never a runtime timer per call) when its next packet or
//!   deadline is due;
//! - the agent session ([`crate::agent::session`]): the Twilio Media Streams WebSocket.
//!
//! They meet in two bounded places: a caller-event channel (engine -> session, `try_send`, drop
//! and count when full) and the shared playout queue (session fills it and wakes the engine when
//! audio reaches an empty queue; the engine takes one frame per packet under a short lock). A slow or stuck agent therefore never delays its own call's RTP
//! nor any other call.
//!
//! Inbound calls connect the agent in [`CallHandler::prepare`], before the 200 OK, so that an
//! unreachable agent gets the INVITE refused with 503 (or, with
//! [`UnreachablePolicy::AnswerHangup`], the call answered and hung up at once). Outbound calls
//! connect when the callee answers. Every way a call ends because of media or the agent is
//! recorded in `switchboard_call_end_reasons_total` and logged.

pub(crate) mod engine;
pub(crate) mod join;
pub(crate) mod metrics;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::v1alpha1::Agent;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::agent::caller_queue::{CallerRx, CallerTx, TrySendError};
use crate::agent::session::{
    AgentLimits, AgentSession, AgentTarget, CallerEvent, ConnectError, SessionEnd, SharedPlayout,
    caller_channel,
};
use crate::agent::twilio::StreamIds;
use crate::call::{
    AnsweredCall, CallDirection, CallHandler, CallSession, DtmfEvent, HangupHandle, HangupReason,
    MediaParams, PendingCall, PrepareFuture, PrepareReject,
};
use crate::media::playout::DEFAULT_MAX_BYTES;
use crate::media::wheel::TimerWheel;
use engine::{Control, Engine, EngineSettings};
pub use metrics::MediaMetrics;

/// Why the bridge hangs a call up (the `reason` of `switchboard_call_end_reasons_total` and of
/// the call's "call ended" log line).
pub mod reason {
    /// No RTP from the caller for the trunk's `rtpTimeoutSeconds`.
    pub const RTP_TIMEOUT: &str = "rtp_timeout";
    /// The agent closed its WebSocket.
    pub const AGENT_DISCONNECTED: &str = "agent_disconnected";
    /// The agent connection failed mid-call (reset, protocol error).
    pub const AGENT_ERROR: &str = "agent_error";
    /// The agent could not be reached when the call was set up.
    pub const AGENT_UNREACHABLE: &str = "agent_unreachable";
    /// The egress guard refused the agent URL (loopback, link-local, the node itself, ...).
    pub const AGENT_URL_REFUSED: &str = "agent_url_refused";
    /// The node closed the agent's session because the agent went over a limit.
    pub const AGENT_LIMIT: &str = "agent_limit";
    /// The agent ended the call (its `hangup` event).
    pub const AGENT_HANGUP: &str = "agent_hangup";
}

/// Default smallest wait for a missing caller frame: three frames, so that a packet up to two
/// frames out of place is put back in order before the line's reordering has been measured. A
/// clean line never waits; a loss costs the frames behind it this wait minus one frame.
pub const DEFAULT_JITTER_MIN: Duration = Duration::from_millis(60);
/// Default bound of the adaptive wait for a missing caller frame.
pub const DEFAULT_JITTER_MAX: Duration = Duration::from_millis(200);

/// What to do with an inbound call whose agent cannot be reached at set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnreachablePolicy {
    /// Refuse the INVITE with 503 before answering.
    #[default]
    Reject,
    /// Answer, then hang up at once with a BYE.
    AnswerHangup,
}

/// Tunables of the bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Bound on opening the agent WebSocket (TCP, TLS and upgrade).
    pub connect_timeout: Duration,
    /// Inbound calls whose agent is unreachable.
    pub unreachable: UnreachablePolicy,
    /// Smallest wait for a missing caller frame before it is concealed (in-order audio is
    /// never held).
    pub jitter_min: Duration,
    /// Largest wait for a missing caller frame (the bound of the adaptive hold).
    pub jitter_max: Duration,
    /// Bound of each call's playout queue, in bytes of μ-law (8000 per second).
    pub playout_max_bytes: usize,
    /// Where agent URLs may point (the default refuses every internal range).
    pub egress: Arc<crate::egress::EgressPolicy>,
    /// What an agent may make the node hold per call (message size, marks).
    pub agent_limits: AgentLimits,
    /// Strict RTP source learning (window, head start of the signalled address, probation).
    pub learning: crate::media::source::LearningConfig,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            connect_timeout: crate::agent::session::DEFAULT_CONNECT_TIMEOUT,
            unreachable: UnreachablePolicy::Reject,
            jitter_min: DEFAULT_JITTER_MIN,
            jitter_max: DEFAULT_JITTER_MAX,
            playout_max_bytes: DEFAULT_MAX_BYTES,
            egress: Arc::default(),
            agent_limits: AgentLimits::default(),
            learning: crate::media::source::LearningConfig::default(),
        }
    }
}

/// What [`BridgeHandler::prepare`] leaves for the answer.
enum BridgePrepared {
    /// The agent's socket is open.
    Connected(Box<AgentSession>),
    /// The agent could not be reached and the policy says answer and hang up.
    Unreachable,
}

/// The media engine and agent bridge, as the node's [`CallHandler`].
pub struct BridgeHandler {
    cfg: BridgeConfig,
    wheel: TimerWheel,
    metrics: MediaMetrics,
}

impl BridgeHandler {
    /// Starts the shared timing wheel; must be called inside the tokio runtime.
    pub fn new(cfg: BridgeConfig) -> Self {
        // The wheel's driver lives as long as this handler and the calls' timers.
        let (wheel, _task) = TimerWheel::start();
        let metrics = MediaMetrics::new();
        // Series that alerts watch exist from the start (at 0), not from their first event.
        for r in [
            reason::RTP_TIMEOUT,
            reason::AGENT_DISCONNECTED,
            reason::AGENT_UNREACHABLE,
            reason::AGENT_URL_REFUSED,
            reason::AGENT_LIMIT,
            reason::AGENT_HANGUP,
        ] {
            metrics.call_ends.with_label_values(&[r]);
        }
        BridgeHandler {
            cfg,
            wheel,
            metrics,
        }
    }

    /// The bridge's metrics.
    pub fn metrics(&self) -> &MediaMetrics {
        &self.metrics
    }

    fn target(&self, agent: &Agent) -> AgentTarget {
        let token = (!agent.bearer_token.is_empty()).then(|| agent.bearer_token.clone());
        let mut t = AgentTarget::new(agent.url.clone(), token);
        t.connect_timeout = self.cfg.connect_timeout;
        t.egress = Some(crate::egress::Egress::new(
            self.cfg.egress.clone(),
            &agent.egress_allowed_networks,
        ));
        t.limits = self.cfg.agent_limits;
        t.counters = self.metrics.limit_counters();
        t
    }
}

/// The stream identity of a call: `accountSid` names the trunk, `callSid` the call.
fn stream_ids(call_id: &str, trunk_id: &str) -> StreamIds {
    StreamIds {
        stream_sid: format!(
            "MZ{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        ),
        account_sid: trunk_id.to_owned(),
        call_sid: call_id.to_owned(),
    }
}

/// `customParameters`: the number's agent parameters plus the call facts (which win on a
/// clash, so an agent can trust them).
fn custom_parameters(call: &AnsweredCall) -> BTreeMap<String, String> {
    let mut p: BTreeMap<String, String> = call
        .agent
        .as_ref()
        .map(|a| {
            a.parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    // Below the call facts, which are inserted after and win on a clash.
    for (k, v) in &call.sip_headers {
        p.insert(k.clone(), v.clone());
    }
    p.insert("from".into(), call.from.clone());
    p.insert("to".into(), call.to.clone());
    p.insert("trunk".into(), call.trunk_id.clone());
    p.insert("number".into(), call.number_id.clone());
    p.insert("direction".into(), call.direction.as_str().into());
    p.insert("sipCallId".into(), call.call_id.clone());
    p
}

fn connect_failure_label(e: &ConnectError) -> &'static str {
    match e {
        ConnectError::InvalidUrl(_) => "invalid_url",
        ConnectError::InvalidToken => "invalid_token",
        ConnectError::InsecureToken { .. } => "insecure_token",
        ConnectError::Timeout(_) => "timeout",
        ConnectError::Http { .. } => "http",
        ConnectError::Transport(_) => "transport",
        ConnectError::Refused(_) => "refused",
    }
}

/// Opens the agent socket, recording latency or the failure.
async fn connect(
    target: AgentTarget,
    ids: StreamIds,
    metrics: &MediaMetrics,
) -> Result<AgentSession, ConnectError> {
    let started = Instant::now();
    match AgentSession::connect(&target, ids).await {
        Ok(s) => {
            metrics
                .agent_connect
                .observe(started.elapsed().as_secs_f64());
            Ok(s)
        }
        Err(e) => {
            metrics
                .agent_connect_failures
                .with_label_values(&[connect_failure_label(&e)])
                .inc();
            Err(e)
        }
    }
}

impl CallHandler for BridgeHandler {
    fn prepare(&self, call: &PendingCall) -> PrepareFuture {
        let Some(agent) = call.agent.as_ref() else {
            return Box::pin(std::future::ready(Ok(None)));
        };
        let target = self.target(agent);
        let ids = stream_ids(&call.call_id, &call.trunk_id);
        let metrics = self.metrics.clone();
        let policy = self.cfg.unreachable;
        let call_id = call.call_id.clone();
        Box::pin(async move {
            match connect(target, ids, &metrics).await {
                Ok(s) => Ok(Some(
                    Box::new(BridgePrepared::Connected(Box::new(s))) as crate::call::Prepared
                )),
                Err(ConnectError::Refused(e)) => {
                    // A policy refusal, not an outage: no answer-and-hang-up either.
                    tracing::warn!(%call_id, error = %e, "agent URL refused by the egress guard");
                    metrics
                        .call_ends
                        .with_label_values(&[reason::AGENT_URL_REFUSED])
                        .inc();
                    Err(PrepareReject {
                        code: 503,
                        reason: reason::AGENT_URL_REFUSED,
                        retry_after: None,
                    })
                }
                Err(e) => {
                    tracing::warn!(%call_id, error = %e, ?policy, "agent unreachable at call set-up");
                    match policy {
                        UnreachablePolicy::Reject => {
                            metrics
                                .call_ends
                                .with_label_values(&[reason::AGENT_UNREACHABLE])
                                .inc();
                            Err(PrepareReject {
                                code: 503,
                                reason: reason::AGENT_UNREACHABLE,
                                retry_after: None,
                            })
                        }
                        UnreachablePolicy::AnswerHangup => Ok(Some(Box::new(
                            BridgePrepared::Unreachable,
                        )
                            as crate::call::Prepared)),
                    }
                }
            }
        })
    }

    fn register_metrics(&self, registry: &prometheus::Registry) {
        if let Err(e) = self.metrics.register(registry) {
            tracing::error!(error = %e, "registering media metrics failed");
        }
    }

    fn on_answered(&self, mut call: AnsweredCall) -> Box<dyn CallSession> {
        let prepared = call
            .prepared
            .take()
            .and_then(|p| p.downcast::<BridgePrepared>().ok())
            .map(|b| *b);
        let playout = SharedPlayout::new(self.cfg.playout_max_bytes);
        let (caller_tx, caller_rx) = caller_channel();
        let (control_tx, control_rx) = mpsc::channel(16);
        let settings = EngineSettings {
            rtp_timeout: call.rtp_timeout,
            jitter_min: self.cfg.jitter_min,
            jitter_max: self.cfg.jitter_max,
            learning: self.cfg.learning,
            networks: std::mem::take(&mut call.media_networks),
            signalling_ip: call.signalling_ip,
            dtmf_mode: call.dtmf_mode,
        };
        // The allocator reserved RTP port + 1 for RTCP with the call.
        let rtcp = call.rtp_socket.take_rtcp();
        let engine = Engine::new(
            call.call_id.clone(),
            call.media.clone(),
            settings,
            playout.clone(),
            caller_tx.clone(),
            self.metrics.clone(),
            call.hangup.clone(),
        );
        tokio::spawn(engine.run(
            call.rtp_socket.clone(),
            rtcp,
            control_rx,
            self.wheel.clone(),
        ));

        let agent_task = AgentTask {
            call_id: call.call_id.clone(),
            params: custom_parameters(&call),
            caller: caller_rx,
            playout,
            hangup: call.hangup.clone(),
            metrics: self.metrics.clone(),
        };
        match (prepared, call.agent.as_ref()) {
            (Some(BridgePrepared::Connected(session)), _) => {
                tokio::spawn(agent_task.run(*session));
            }
            (Some(BridgePrepared::Unreachable), _) => {
                tracing::info!(call_id = %call.call_id, "answered with the agent unreachable; hanging up");
                call.hangup.hangup(reason::AGENT_UNREACHABLE);
            }
            (None, Some(agent)) => {
                // Outbound (or a handler that prepared nothing): connect now.
                let target = self.target(agent);
                let ids = stream_ids(&call.call_id, &call.trunk_id);
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    match connect(target, ids, &metrics).await {
                        Ok(session) => agent_task.run(session).await,
                        Err(e) => {
                            let why = match e {
                                ConnectError::Refused(_) => reason::AGENT_URL_REFUSED,
                                _ => reason::AGENT_UNREACHABLE,
                            };
                            tracing::warn!(call_id = %agent_task.call_id, error = %e, "agent unreachable on answer; hanging up");
                            agent_task.hangup.hangup(why);
                        }
                    }
                });
            }
            (None, None) if call.transfer_leg => {
                // Bridged to the caller's leg once that leg joins it.
                tracing::debug!(call_id = %call.call_id, "transfer leg answered; waiting to be bridged");
            }
            (None, None) => {
                // Nothing to bridge to: the call still gets RTP (silence) and the media checks.
                tracing::warn!(call_id = %call.call_id, "no agent configured for this call");
            }
        }
        Box::new(BridgeSession {
            call_id: call.call_id,
            control: control_tx,
            caller: Some(caller_tx),
            metrics: self.metrics.clone(),
            direction: call.direction,
            law: engine::law_of(call.media.codec),
            port: None,
        })
    }
}

/// The agent side of one call.
struct AgentTask {
    call_id: String,
    params: BTreeMap<String, String>,
    caller: CallerRx,
    playout: Arc<SharedPlayout>,
    hangup: HangupHandle,
    metrics: MediaMetrics,
}

impl AgentTask {
    async fn run(self, mut session: AgentSession) {
        // In place: this task holds the session (1.6 KB) once for the whole call.
        session.set_call(self.hangup.clone());
        let (end, stats) = session
            .run_borrowed(self.params, self.caller, self.playout)
            .await;
        let label = match &end {
            SessionEnd::CallEnded => "call_ended",
            SessionEnd::Left => "left",
            SessionEnd::AgentClosed { .. } => "agent_closed",
            SessionEnd::AgentHangup { .. } => "agent_hangup",
            SessionEnd::Transport(_) => "transport_error",
            SessionEnd::LimitExceeded { .. } => "limit_exceeded",
        };
        self.metrics
            .agent_disconnects
            .with_label_values(&[label])
            .inc();
        tracing::info!(
            call_id = %self.call_id,
            end = ?end,
            media_sent = stats.media_sent,
            media_received = stats.media_received,
            marks_sent = stats.marks_sent,
            dtmf_sent = stats.dtmf_sent,
            unknown_events = stats.unknown_events,
            malformed_frames = stats.malformed_frames,
            marks_refused = stats.marks_refused,
            playout_overflow_bytes = stats.overflow_bytes,
            limit_violations = stats.limit_violations,
            "agent session ended"
        );
        // A socket that closes ends the call (the protocol's rule); `hangup` is a no-op when
        // the call is already over.
        match end {
            SessionEnd::CallEnded | SessionEnd::Left => {}
            SessionEnd::AgentClosed { .. } => {
                self.hangup.hangup(reason::AGENT_DISCONNECTED);
            }
            SessionEnd::AgentHangup { .. } => {
                self.hangup.hangup(reason::AGENT_HANGUP);
            }
            SessionEnd::Transport(_) => {
                self.hangup.hangup(reason::AGENT_ERROR);
            }
            // Ends like an agent disconnect, with its own reason.
            SessionEnd::LimitExceeded { .. } => {
                self.hangup.hangup(reason::AGENT_LIMIT);
            }
        }
    }
}

/// The SIP side's handle on a bridged call.
struct BridgeSession {
    call_id: String,
    control: mpsc::Sender<Control>,
    /// For SIP INFO DTMF; dropped at hang-up so the agent session sees the end.
    caller: Option<CallerTx>,
    metrics: MediaMetrics,
    direction: CallDirection,
    /// The call's codec, for its bridge port.
    law: crate::media::g711::Law,
    /// Our receiving end of an in-node bridge, once [`CallSession::link`] made it.
    port: Option<Arc<join::JoinPort>>,
}

/// The metric label of a call's end.
fn end_label(reason: &HangupReason) -> &'static str {
    match reason {
        HangupReason::RemoteBye => "remote_bye",
        HangupReason::SessionExpired => "session_expired",
        HangupReason::NoAck => "no_ack",
        HangupReason::Cancelled => "cancelled",
        HangupReason::MaxDuration => "max_duration",
        HangupReason::Local(r) => match r.as_str() {
            reason::RTP_TIMEOUT => reason::RTP_TIMEOUT,
            reason::AGENT_DISCONNECTED => reason::AGENT_DISCONNECTED,
            reason::AGENT_ERROR => reason::AGENT_ERROR,
            reason::AGENT_UNREACHABLE => reason::AGENT_UNREACHABLE,
            reason::AGENT_URL_REFUSED => reason::AGENT_URL_REFUSED,
            reason::AGENT_LIMIT => reason::AGENT_LIMIT,
            reason::AGENT_HANGUP => reason::AGENT_HANGUP,
            // Free text from the API or the drain: not a label value.
            _ => "local",
        },
    }
}

impl CallSession for BridgeSession {
    fn on_dtmf(&mut self, event: DtmfEvent) {
        self.metrics.dtmf.with_label_values(&["info"]).inc();
        if let Some(tx) = &self.caller
            && let Err(TrySendError::Full) = tx.try_send(CallerEvent::Dtmf(event.digit))
        {
            self.metrics.agent_events_dropped.inc();
        }
    }

    fn on_transfer(&mut self, update: &crate::call::transfer::TransferUpdate) {
        tracing::info!(call_id = %self.call_id, target = %update.target, state = update.state.as_str(), code = update.code, reason = %update.reason, "transfer");
        // The agent hears every step (it stays on the call until the transfer succeeds).
        if let Some(tx) = &self.caller
            && tx
                .try_send(CallerEvent::Transfer(Box::new(update.clone())))
                .is_err()
        {
            self.metrics.agent_events_dropped.inc();
        }
    }

    fn send_dtmf(&mut self, digits: &str) {
        if self
            .control
            .try_send(Control::Dtmf(digits.to_owned()))
            .is_err()
        {
            tracing::warn!(call_id = %self.call_id, "media engine busy or gone; DTMF not sent");
        }
    }

    fn link(&mut self) -> Option<crate::call::MediaLink> {
        let port = self
            .port
            .get_or_insert_with(|| join::JoinPort::new(self.law))
            .clone();
        Some(port)
    }

    fn join(&mut self, peer: crate::call::MediaLink) -> bool {
        let Ok(peer) = peer.downcast::<join::JoinPort>() else {
            return false;
        };
        let Some(own) = self
            .link()
            .and_then(|l| l.downcast::<join::JoinPort>().ok())
        else {
            return false;
        };
        // The engine's control channel is small and rarely busy; a full one is a stuck
        // engine, which cannot bridge anyway.
        if self.control.try_send(Control::Join { own, peer }).is_err() {
            tracing::warn!(call_id = %self.call_id, "media engine busy or gone; not bridged");
            return false;
        }
        self.metrics.bridged_legs.inc();
        // The agent leaves: its session sends the marks still pending and `stop`. Sent
        // without waiting here; the session reads it after the audio already queued.
        if let Some(tx) = self.caller.take() {
            tokio::spawn(async move {
                let _ = tx.send(CallerEvent::Leave).await;
            });
        }
        true
    }

    fn on_media_update(&mut self, media: &MediaParams) {
        self.law = engine::law_of(media.codec);
        if self
            .control
            .try_send(Control::Media(Box::new(media.clone())))
            .is_err()
        {
            tracing::warn!(call_id = %self.call_id, "media engine busy or gone; media update not applied");
        }
    }

    fn on_hangup(&mut self, why: &HangupReason) {
        let label = end_label(why);
        self.metrics.call_ends.with_label_values(&[label]).inc();
        tracing::info!(call_id = %self.call_id, direction = self.direction.as_str(), reason = label, "bridged call ended");
        self.caller = None;
        // If the channel is full the engine still stops: this session (the last sender) is
        // dropped right after.
        let _ = self.control.try_send(Control::Stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_labels_are_bounded() {
        assert_eq!(end_label(&HangupReason::RemoteBye), "remote_bye");
        assert_eq!(
            end_label(&HangupReason::Local(reason::RTP_TIMEOUT.into())),
            "rtp_timeout"
        );
        assert_eq!(
            end_label(&HangupReason::Local("operator asked nicely".into())),
            "local"
        );
        assert_eq!(end_label(&HangupReason::MaxDuration), "max_duration");
    }

    #[test]
    fn stream_ids_name_trunk_and_call() {
        let ids = stream_ids("abc@host", "ns/trunk");
        assert_eq!(ids.call_sid, "abc@host");
        assert_eq!(ids.account_sid, "ns/trunk");
        assert!(ids.stream_sid.starts_with("MZ") && ids.stream_sid.len() == 34);
    }
}
