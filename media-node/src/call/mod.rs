//! Calls: the seam towards media and agents ([`CallHandler`]), the registry
//! of live calls, and the inbound/outbound call flows.

mod admission;
pub(crate) mod dispatch;
pub mod dtmf;
pub(crate) mod inbound;
pub(crate) mod outbound;
pub(crate) mod pacing;
pub(crate) mod passthrough;
pub(crate) mod ports;
pub(crate) mod session;
pub(crate) mod transfer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_proto::v1alpha1::{Agent, Codec};
use tokio::sync::{mpsc, watch};

use crate::config::RoutingStore;
use crate::health::GatewayHealth;
use crate::metrics::Metrics;
use crate::register::Registrations;
use crate::sdp::Direction;
use crate::sip::digest::DigestServer;
use crate::sip::message::Message;
use crate::sip::transaction::{ServerRequest, ServerTxnId, SipHandle};

/// Inbound or outbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallDirection {
    /// The carrier called us.
    Inbound,
    /// We called out through the carrier.
    Outbound,
}

impl CallDirection {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CallDirection::Inbound => "inbound",
            CallDirection::Outbound => "outbound",
        }
    }
}

/// The negotiated media of a call, as the media engine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaParams {
    /// The codec both sides use.
    pub codec: Codec,
    /// Its RTP payload type.
    pub payload_type: u8,
    /// RFC 4733 telephone-event payload type, when negotiated.
    pub dtmf_payload_type: Option<u8>,
    /// Where the peer wants RTP; `None` while it holds with 0.0.0.0.
    pub remote: Option<SocketAddr>,
    /// Our direction: `RecvOnly`/`Inactive` mean do not send (on hold).
    pub direction: Direction,
    /// Packetisation time in milliseconds (always 20).
    pub ptime_ms: u32,
    /// SRTP keys when the call's media is encrypted.
    pub srtp: Option<SrtpKeys>,
}

/// Packetisation time of every stream the node sends (RFC 3551's default for G.711).
pub const PTIME_MS: u32 = 20;

impl MediaParams {
    /// Before any answer (an offerless INVITE we offer in our 2xx, or an
    /// offer of ours still unanswered): our first codec, no peer address.
    pub(crate) fn unanswered(codec: Codec, dtmf_payload_type: Option<u8>) -> Self {
        MediaParams {
            codec,
            payload_type: crate::sdp::static_pt(codec),
            dtmf_payload_type,
            remote: None,
            direction: Direction::SendRecv,
            ptime_ms: PTIME_MS,
            srtp: None,
        }
    }

    /// What an offer/answer exchange agreed; `direction` is ours.
    pub(crate) fn negotiated(
        n: &crate::sdp::Negotiated,
        direction: Direction,
        srtp: Option<SrtpKeys>,
    ) -> Self {
        MediaParams {
            codec: n.codec,
            payload_type: n.pt,
            dtmf_payload_type: n.dtmf_pt,
            remote: n.remote,
            direction,
            ptime_ms: PTIME_MS,
            srtp,
        }
    }
}

/// An encrypted call's SDES keys (their `Debug` shows only the suite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    /// Ours: we send with it.
    pub local: crate::media::srtp::MasterKey,
    /// The peer's: it sends with it.
    pub remote: crate::media::srtp::MasterKey,
}

impl SrtpKeys {
    /// The keys after negotiating `offered`: our key is kept when the peer kept its own
    /// (a re-INVITE that changes nothing keeps the streams' state), else a fresh one.
    pub fn after(current: Option<&SrtpKeys>, offered: &crate::sdes::Offered) -> SrtpKeys {
        match current {
            Some(k) if k.remote == offered.key => k.clone(),
            _ => SrtpKeys {
                local: crate::media::srtp::MasterKey::random(offered.key.suite()),
                remote: offered.key.clone(),
            },
        }
    }
}

/// Our keys and our `a=crypto` for answering a negotiated offer (both `None` for plain RTP);
/// `current` are the call's keys so far (a re-offer keeping the peer's key keeps ours).
pub fn answer_srtp(
    n: &crate::sdp::Negotiated,
    current: Option<&SrtpKeys>,
) -> (Option<SrtpKeys>, Option<crate::sdp::LocalCrypto>) {
    let Some(offered) = n.srtp.as_ref() else {
        return (None, None);
    };
    let keys = SrtpKeys::after(current, offered);
    let crypto = crate::sdp::LocalCrypto {
        tag: offered.tag,
        key: keys.local.clone(),
        savp: n.savp,
    };
    (Some(keys), Some(crypto))
}

/// The trunk's SRTP rule for a call whose SIP uses `proto`: SDES keys may be exchanged only
/// over TLS, or anywhere when the trunk's `allowSdesWithoutTls` says so.
pub fn srtp_policy_of(
    trunk: &switchboard_proto::v1alpha1::Trunk,
    proto: crate::sip::transport::Proto,
) -> crate::sdp::SrtpPolicy {
    use crate::sdp::{Encryption, SrtpPolicy};
    use switchboard_proto::v1alpha1::MediaEncryption;
    let Some(m) = trunk.media.as_ref() else {
        return SrtpPolicy::PLAIN;
    };
    let encryption = match m.encryption() {
        MediaEncryption::Unspecified | MediaEncryption::Disabled => Encryption::Disabled,
        MediaEncryption::Optional => Encryption::Optional,
        MediaEncryption::Required => Encryption::Required,
    };
    // Exhaustive on purpose: a TLS transport must say that it protects keys.
    let over_tls = match proto {
        crate::sip::transport::Proto::Udp | crate::sip::transport::Proto::Tcp => false,
        crate::sip::transport::Proto::Tls => true,
    };
    SrtpPolicy {
        encryption,
        keys_allowed: over_tls || m.allow_sdes_without_tls,
    }
}

/// A DTMF digit received with SIP INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfEvent {
    /// `0-9`, `*`, `#`, `A-D`.
    pub digit: char,
    /// Duration in milliseconds (default 160 when not given).
    pub duration_ms: u32,
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HangupReason {
    /// The peer sent BYE.
    RemoteBye,
    /// We hung up (handler, API or drain).
    Local(String),
    /// The peer stopped refreshing the session (RFC 4028).
    SessionExpired,
    /// Our 2xx was never acknowledged.
    NoAck,
    /// The peer cancelled before the answer.
    Cancelled,
    /// The maximum call duration was reached.
    MaxDuration,
}

/// Messages to a call's task.
#[derive(Debug)]
pub enum CallMsg {
    /// A request inside the dialog (boxed, like the ACK: every call's channel
    /// reserves a block of 32 messages, so the enum's size is paid per call).
    Request(Box<ServerRequest>),
    /// A CANCEL found our INVITE unanswered: the transaction layer has
    /// answered it with 487 (and will drop our own answer if one is on its
    /// way), so the call ends without a dialog.
    Cancelled,
    /// The ACK for our 2xx.
    Ack(Box<Message>),
    /// Our 2xx was retransmitted for 64*T1 without an ACK.
    AckTimeout,
    /// Hang up (BYE, or reject if not answered yet).
    Hangup(String),
    /// Send these DTMF digits to the peer (call API): the call's media
    /// handler queues them and sends them by the path [`dtmf_path`] picks.
    SendDtmf(String),
    /// Send this digit to the peer as SIP INFO (from the media handler, when
    /// [`dtmf_path`] says INFO).
    InfoDtmf(char),
    /// Transfer the call to this target (checked again against the trunk's
    /// policy), waiting this long for the outcome.
    Transfer {
        /// The target as given.
        target: String,
        /// How long the carrier (refer) or the target (dial) may take.
        timeout: Duration,
        /// The mode the request named (None: the trunk's).
        how: Option<transfer::How>,
        /// Extra headers for the REFER or the target's INVITE (validated by the call API).
        headers: Vec<(String, String)>,
    },
    /// The new leg of this call's dial-through transfer moved on.
    Leg(Box<LegEvent>),
    /// This call is the new leg of a dial-through transfer and the caller's
    /// leg is ready: bridge our media to it.
    Join(MediaLink),
}

/// The media side's end of a call that can be bridged to another call in
/// the node (a dial-through transfer): opaque to the SIP layer, made and
/// understood by the [`CallHandler`] (see [`CallSession::link`]).
pub type MediaLink = Arc<dyn std::any::Any + Send + Sync>;

/// What the new leg of a dial-through transfer tells the caller's leg.
#[derive(Debug)]
pub enum LegEvent {
    /// The target rings (its first provisional answer above 100).
    Ringing(u16),
    /// The target answered: its media end and its call's handle.
    Answered {
        /// The new leg's media, to bridge the caller's to.
        link: MediaLink,
        /// Ends the new leg (or bridges it with [`HangupHandle::join`]).
        leg: HangupHandle,
    },
    /// The new leg did not connect.
    Failed {
        /// The deciding SIP status (None for timeouts and local errors).
        code: Option<u16>,
        /// Why, from the outbound engine.
        reason: String,
    },
}

/// How DTMF we send reaches the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfPath {
    /// RFC 4733 events in the call's RTP.
    Rtp,
    /// SIP INFO requests in the dialog, one per digit.
    Info,
}

/// The path for DTMF we send, from the trunk's `media.dtmf` and whether the
/// peer negotiated telephone-event; `None`: the trunk allows only RFC 4733
/// and the peer has none (the digits are dropped and logged).
pub fn dtmf_path(
    mode: switchboard_proto::v1alpha1::DtmfMode,
    negotiated: bool,
) -> Option<DtmfPath> {
    use switchboard_proto::v1alpha1::DtmfMode;
    match mode {
        DtmfMode::Info => Some(DtmfPath::Info),
        DtmfMode::Rfc4733 => negotiated.then_some(DtmfPath::Rtp),
        DtmfMode::Both | DtmfMode::Unspecified => Some(if negotiated {
            DtmfPath::Rtp
        } else {
            DtmfPath::Info
        }),
    }
}

/// Hangs up a call from outside the SIP layer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HangupHandle(mpsc::UnboundedSender<CallMsg>);

impl HangupHandle {
    /// Ends the call with a BYE (or a final error response when it is not
    /// answered yet). Returns false when the call is already over.
    pub fn hangup(&self, reason: &str) -> bool {
        self.0.send(CallMsg::Hangup(reason.to_owned())).is_ok()
    }

    /// Queues DTMF digits (already validated) for the peer. Returns false
    /// when the call is already over.
    pub fn send_dtmf(&self, digits: &str) -> bool {
        self.0.send(CallMsg::SendDtmf(digits.to_owned())).is_ok()
    }

    /// Asks the SIP side to send one digit as INFO.
    pub fn send_info_dtmf(&self, digit: char) -> bool {
        self.0.send(CallMsg::InfoDtmf(digit)).is_ok()
    }

    /// Asks for a transfer to `target` (see [`transfer`]); the outcome
    /// reaches [`CallSession::on_transfer`]. Returns false when the call is over.
    pub fn transfer(
        &self,
        target: &str,
        timeout: Duration,
        how: Option<transfer::How>,
        headers: Vec<(String, String)>,
    ) -> bool {
        self.0
            .send(CallMsg::Transfer {
                target: target.to_owned(),
                timeout,
                how,
                headers,
            })
            .is_ok()
    }

    /// Reports a dial-through transfer's new leg to the caller's leg.
    /// Returns false when the caller's leg is over.
    pub fn leg_event(&self, ev: LegEvent) -> bool {
        self.0.send(CallMsg::Leg(Box::new(ev))).is_ok()
    }

    /// Tells a dial-through transfer's new leg to bridge its media to `link`.
    /// Returns false when that leg is over.
    pub fn join(&self, link: MediaLink) -> bool {
        self.0.send(CallMsg::Join(link)).is_ok()
    }
}

/// An answered call handed to the media side.
pub struct AnsweredCall {
    /// Our identifier of the call (the SIP Call-ID).
    pub call_id: String,
    /// Direction.
    pub direction: CallDirection,
    /// Trunk the call runs on.
    pub trunk_id: String,
    /// The PhoneNumber involved (called number inbound, caller ID outbound).
    pub number_id: String,
    /// Caller (user part of From).
    pub from: String,
    /// Callee (the dialled/called number).
    pub to: String,
    /// The agent to bridge to: the number's, else the trunk's default.
    pub agent: Option<Agent>,
    /// Negotiated media.
    pub media: MediaParams,
    /// The call's RTP socket, bound to the port written into our SDP.
    pub rtp_socket: Arc<ports::MediaSocket>,
    /// Hangs the call up.
    pub hangup: HangupHandle,
    /// What [`CallHandler::prepare`] returned for this call (inbound calls;
    /// `None` for outbound calls, which are prepared on answer).
    pub prepared: Option<Prepared>,
    /// Hang up when no RTP arrives for this long (the trunk's
    /// `media.rtpTimeoutSeconds`); `None` disables the check.
    pub rtp_timeout: Option<Duration>,
    /// Networks RTP may come from (the trunk's `media.mediaSource:
    /// SignallingNetwork`); empty: any source the learning rules accept.
    pub media_networks: Vec<crate::routing::acl::Cidr>,
    /// The IP the call's SIP came from (inbound) or went to (outbound): RTP from it is
    /// trusted like the SDP address when the source is learned.
    pub signalling_ip: Option<std::net::IpAddr>,
    /// INVITE headers the trunk passes to the agent (`sip_<Header>`, value), inbound only.
    pub sip_headers: Vec<(String, String)>,
    /// The trunk's DTMF setting, for digits we send ([`dtmf_path`]).
    pub dtmf_mode: switchboard_proto::v1alpha1::DtmfMode,
    /// The new leg of a dial-through transfer: no agent; it is bridged to the
    /// caller's leg ([`CallSession::join`]).
    pub transfer_leg: bool,
}

/// The option tags of a request's `Require` that the node does not support (RFC 3261
/// 8.2.2.3): it supports `timer` (RFC 4028) only.
pub(crate) fn unsupported_requirements(msg: &crate::sip::message::Message) -> Vec<String> {
    msg.headers_named("Require")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("timer"))
        .collect()
}

/// The networks a call's media must come from and go to under the trunk's
/// `media.mediaSource`: empty for `Any` (the default); for
/// `SignallingNetwork`, the trunk's inbound allowed sources plus the address
/// the call's signalling came from or went to.
pub fn media_networks_of(
    trunk: &switchboard_proto::v1alpha1::Trunk,
    signalling: std::net::IpAddr,
) -> Vec<crate::routing::acl::Cidr> {
    use crate::routing::acl::{Cidr, normalize};
    use switchboard_proto::v1alpha1::MediaSource;
    let strict = trunk
        .media
        .as_ref()
        .is_some_and(|m| m.media_source() == MediaSource::SignallingNetwork);
    if !strict {
        return Vec::new();
    }
    let mut nets: Vec<Cidr> = trunk
        .inbound
        .iter()
        .flat_map(|i| i.allowed_sources.iter())
        .filter_map(|s| Cidr::parse(s).ok())
        .collect();
    if let Ok(host) = Cidr::parse(&normalize(signalling).to_string()) {
        nets.push(host);
    }
    nets
}

/// The trunk's RTP timeout: `media.rtpTimeoutSeconds`, 30 s when unset
/// (the CRD's default).
pub fn rtp_timeout_of(trunk: &switchboard_proto::v1alpha1::Trunk) -> Option<Duration> {
    let secs = trunk
        .media
        .as_ref()
        .map(|m| m.rtp_timeout_seconds)
        .filter(|s| *s > 0)
        .unwrap_or(30);
    Some(Duration::from_secs(u64::from(secs)))
}

/// A call that is about to be answered, as [`CallHandler::prepare`] sees it.
#[derive(Debug, Clone)]
pub struct PendingCall {
    /// Our identifier of the call (the SIP Call-ID).
    pub call_id: String,
    /// Direction.
    pub direction: CallDirection,
    /// Trunk the call runs on.
    pub trunk_id: String,
    /// The PhoneNumber involved.
    pub number_id: String,
    /// Caller (user part of From).
    pub from: String,
    /// Callee.
    pub to: String,
    /// The agent to bridge to: the number's, else the trunk's default.
    pub agent: Option<Agent>,
}

/// Whatever a handler prepared before the answer (an open agent socket, for
/// instance). Opaque to the SIP side, handed back in [`AnsweredCall::prepared`].
pub type Prepared = Box<dyn std::any::Any + Send>;

/// A handler's refusal of a call before the answer: the INVITE gets `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} ({reason})")]
pub struct PrepareReject {
    /// Final SIP status for the INVITE (503 for an unreachable agent).
    pub code: u16,
    /// Why, as a metric label (`switchboard_sip_rejected_requests_total`).
    pub reason: &'static str,
    /// Retry-After seconds to send with the response, if any.
    pub retry_after: Option<u32>,
}

/// The future [`CallHandler::prepare`] returns.
pub type PrepareFuture =
    futures::future::BoxFuture<'static, Result<Option<Prepared>, PrepareReject>>;

/// Receives the events of one answered call. Methods are called from the
/// call's SIP task and must not block: hand work to your own tasks.
pub trait CallSession: Send + 'static {
    /// A DTMF digit arrived via SIP INFO.
    fn on_dtmf(&mut self, _event: DtmfEvent) {}
    /// The media changed (hold, resume, new remote address or codec).
    fn on_media_update(&mut self, _media: &MediaParams) {}
    /// Digits (validated: 0-9 * # A-D) to send to the peer; the handler
    /// sends them in its RTP or hands them back with
    /// [`HangupHandle::send_info_dtmf`] by [`dtmf_path`]. No default: a
    /// wrapping session that forgot to forward it would drop digits silently.
    fn send_dtmf(&mut self, digits: &str);
    /// A transfer moved on (requested, accepted, ringing, succeeded, failed).
    /// On success the call ends next (BYE); on failure it goes on.
    fn on_transfer(&mut self, update: &transfer::TransferUpdate);
    /// The call is over; release media resources.
    fn on_hangup(&mut self, _reason: &HangupReason) {}
    /// Makes this call's end of an in-node bridge (a dial-through transfer):
    /// where the other call's audio is to be delivered. `None`: this handler
    /// cannot bridge calls.
    fn link(&mut self) -> Option<MediaLink>;
    /// Bridges this call's media to another call's `peer` link (made by
    /// [`CallSession::link`] on the other call): the agent, if any, leaves
    /// (its pending marks and `stop` are sent), the caller's audio and DTMF
    /// go to the peer and the peer's to the caller. False: not bridged.
    fn join(&mut self, peer: MediaLink) -> bool;
}

/// Plugs media and agent bridging into answered calls.
pub trait CallHandler: Send + Sync + 'static {
    /// Called for inbound calls after 180 Ringing and before the 200 OK, so
    /// that work which can fail (connecting the agent) happens while the
    /// call can still be refused. `Err` rejects the INVITE with its code;
    /// `Ok` carries what was prepared into [`AnsweredCall::prepared`]. The
    /// future is dropped if the caller cancels first. The default prepares
    /// nothing and always succeeds.
    fn prepare(&self, _call: &PendingCall) -> PrepareFuture {
        Box::pin(std::future::ready(Ok(None)))
    }
    /// Registers the handler's own metrics in the node's registry (called
    /// once at start-up).
    fn register_metrics(&self, _registry: &prometheus::Registry) {}
    /// Called once per call right after it is answered (inbound: 200 sent;
    /// outbound: 2xx received). The returned session gets the call's events.
    fn on_answered(&self, call: AnsweredCall) -> Box<dyn CallSession>;
}

/// The handler used until the media engine exists: it keeps the RTP socket
/// open (so the SDP stays honest) and logs events.
pub struct LoggingHandler;

struct LoggingSession {
    call_id: String,
    _socket: Arc<ports::MediaSocket>,
}

impl CallHandler for LoggingHandler {
    fn on_answered(&self, call: AnsweredCall) -> Box<dyn CallSession> {
        tracing::info!(call_id = %call.call_id, direction = call.direction.as_str(), trunk = %call.trunk_id,
            codec = ?call.media.codec, "call answered");
        Box::new(LoggingSession {
            call_id: call.call_id,
            _socket: call.rtp_socket,
        })
    }
}

impl CallSession for LoggingSession {
    fn link(&mut self) -> Option<MediaLink> {
        None
    }
    fn join(&mut self, _peer: MediaLink) -> bool {
        false
    }
    fn on_dtmf(&mut self, event: DtmfEvent) {
        tracing::info!(call_id = %self.call_id, digit = %event.digit, duration_ms = event.duration_ms, "DTMF");
    }
    fn send_dtmf(&mut self, digits: &str) {
        tracing::info!(call_id = %self.call_id, digits = digits.len(), "DTMF to send, but no media engine (logging handler); dropped");
    }
    fn on_transfer(&mut self, update: &transfer::TransferUpdate) {
        tracing::info!(call_id = %self.call_id, target = %update.target, state = update.state.as_str(), code = update.code, "transfer");
    }
    fn on_media_update(&mut self, media: &MediaParams) {
        tracing::info!(call_id = %self.call_id, direction = media.direction.as_str(), "media updated");
    }
    fn on_hangup(&mut self, reason: &HangupReason) {
        tracing::info!(call_id = %self.call_id, ?reason, "call ended");
    }
}

/// Tunables of the call layer.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Most concurrent calls on this node (503 above).
    pub max_calls: usize,
    /// Time between 180 Ringing and 200 OK for inbound calls.
    pub answer_delay: Duration,
    /// Retry-After seconds on 503.
    pub retry_after_secs: u32,
    /// Session interval we ask for / grant (RFC 4028).
    pub session_expires: u32,
    /// Smallest session interval we accept.
    pub min_se: u32,
    /// Lifetime of inbound digest nonces.
    pub nonce_lifetime: Duration,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            max_calls: 1000,
            answer_delay: Duration::from_millis(0),
            retry_after_secs: 30,
            session_expires: 1800,
            min_se: 90,
            nonce_lifetime: Duration::from_secs(300),
        }
    }
}

/// A live call as listed by the admin endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallInfo {
    /// Call-ID.
    pub call_id: String,
    /// Direction.
    pub direction: CallDirection,
    /// Trunk id.
    pub trunk_id: String,
    /// State: ringing, answered.
    pub state: &'static str,
    /// Last media direction we answered with.
    pub media_direction: &'static str,
}

#[derive(Default)]
struct Registry {
    /// (Call-ID, our tag) -> call task.
    /// Dialogs by (Call-ID, our tag), with the peer's tag: the full dialog
    /// id (RFC 3261 12) is checked, not just the half the peer chose.
    dialogs: HashMap<(String, String), (String, mpsc::UnboundedSender<CallMsg>)>,
    /// Pending inbound INVITE transaction -> call task (for CANCEL).
    invites: HashMap<ServerTxnId, mpsc::UnboundedSender<CallMsg>>,
    /// Calls per (trunk, direction).
    active: HashMap<(String, CallDirection), usize>,
    info: HashMap<String, CallInfo>,
    total: usize,
}

/// The registry of live calls.
#[derive(Clone)]
pub struct Calls {
    inner: Arc<Mutex<Registry>>,
    count: watch::Sender<usize>,
    metrics: Metrics,
}

/// Keeps a call counted while alive.
pub struct CallGuard {
    calls: Calls,
    trunk: String,
    direction: CallDirection,
    call_id: String,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let total = {
            let Ok(mut r) = self.calls.inner.lock() else {
                return;
            };
            if let Some(n) = r.active.get_mut(&(self.trunk.clone(), self.direction)) {
                *n = n.saturating_sub(1);
            }
            r.total = r.total.saturating_sub(1);
            r.info.remove(&self.call_id);
            r.total
        };
        self.calls
            .metrics
            .active_calls
            .with_label_values(&[&self.trunk, self.direction.as_str()])
            .dec();
        self.calls.count.send_replace(total);
    }
}

impl Calls {
    /// An empty registry.
    pub fn new(metrics: Metrics) -> Calls {
        Calls {
            inner: Arc::new(Mutex::new(Registry::default())),
            count: watch::channel(0).0,
            metrics,
        }
    }

    /// Calls on this node right now.
    pub fn total(&self) -> usize {
        self.inner.lock().map(|r| r.total).unwrap_or(0)
    }

    /// Calls on a trunk (both directions).
    pub fn on_trunk(&self, trunk: &str) -> usize {
        self.inner
            .lock()
            .map(|r| {
                r.active
                    .iter()
                    .filter(|((t, _), _)| t == trunk)
                    .map(|(_, n)| *n)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Watches the number of live calls (for draining).
    pub fn watch_total(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// Counts a call atomically against the node and trunk limits.
    /// `Err(true)` = node full, `Err(false)` = trunk share exhausted.
    pub fn admit(
        &self,
        trunk: &str,
        direction: CallDirection,
        call_id: &str,
        node_max: usize,
        trunk_max: Option<usize>,
    ) -> Result<CallGuard, bool> {
        let total = {
            let Ok(mut r) = self.inner.lock() else {
                return Err(true);
            };
            if r.total >= node_max {
                return Err(true);
            }
            let on_trunk: usize = r
                .active
                .iter()
                .filter(|((t, _), _)| t == trunk)
                .map(|(_, n)| *n)
                .sum();
            if trunk_max.is_some_and(|m| on_trunk >= m) {
                return Err(false);
            }
            *r.active.entry((trunk.to_owned(), direction)).or_insert(0) += 1;
            r.total += 1;
            r.info.insert(
                call_id.to_owned(),
                CallInfo {
                    call_id: call_id.to_owned(),
                    direction,
                    trunk_id: trunk.to_owned(),
                    state: "setup",
                    media_direction: "sendrecv",
                },
            );
            r.total
        };
        self.metrics
            .active_calls
            .with_label_values(&[trunk, direction.as_str()])
            .inc();
        self.count.send_replace(total);
        Ok(CallGuard {
            calls: self.clone(),
            trunk: trunk.to_owned(),
            direction,
            call_id: call_id.to_owned(),
        })
    }

    /// Updates the listing of a call.
    pub fn set_state(&self, call_id: &str, state: &'static str, media_direction: &'static str) {
        if let Ok(mut r) = self.inner.lock()
            && let Some(i) = r.info.get_mut(call_id)
        {
            i.state = state;
            i.media_direction = media_direction;
        }
    }

    /// Every live call.
    pub fn list(&self) -> Vec<CallInfo> {
        self.inner
            .lock()
            .map(|r| r.info.values().cloned().collect())
            .unwrap_or_default()
    }

    fn register_dialog(
        &self,
        call_id: &str,
        local_tag: &str,
        remote_tag: &str,
        tx: mpsc::UnboundedSender<CallMsg>,
    ) {
        if let Ok(mut r) = self.inner.lock() {
            r.dialogs.insert(
                (call_id.to_owned(), local_tag.to_owned()),
                (remote_tag.to_owned(), tx),
            );
        }
    }

    fn unregister_dialog(&self, call_id: &str, local_tag: &str) {
        if let Ok(mut r) = self.inner.lock() {
            r.dialogs
                .remove(&(call_id.to_owned(), local_tag.to_owned()));
        }
    }

    fn register_invite(&self, id: ServerTxnId, tx: mpsc::UnboundedSender<CallMsg>) {
        if let Ok(mut r) = self.inner.lock() {
            r.invites.insert(id, tx);
        }
    }

    fn unregister_invite(&self, id: &ServerTxnId) {
        if let Ok(mut r) = self.inner.lock() {
            r.invites.remove(id);
        }
    }

    /// The dialog with this id. `remote_tag` is the peer's tag as a request
    /// from the peer carries it (its From tag; `None` for our own timer
    /// events, which our unique tag identifies alone).
    fn dialog(
        &self,
        call_id: &str,
        local_tag: &str,
        remote_tag: Option<&str>,
    ) -> Option<mpsc::UnboundedSender<CallMsg>> {
        let r = self.inner.lock().ok()?;
        let (theirs, tx) = r.dialogs.get(&(call_id.to_owned(), local_tag.to_owned()))?;
        if remote_tag.is_some_and(|t| t != theirs) {
            return None;
        }
        Some(tx.clone())
    }

    fn by_call_id(&self, call_id: &str) -> Vec<mpsc::UnboundedSender<CallMsg>> {
        self.inner
            .lock()
            .map(|r| {
                r.dialogs
                    .iter()
                    .filter(|((c, _), _)| c == call_id)
                    .map(|(_, (_, tx))| tx.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True when a live call (admitted and not yet ended) uses `call_id`.
    fn has_call_id(&self, call_id: &str) -> bool {
        self.inner
            .lock()
            .is_ok_and(|r| r.info.contains_key(call_id))
    }

    fn invite(&self, id: &ServerTxnId) -> Option<mpsc::UnboundedSender<CallMsg>> {
        self.inner.lock().ok()?.invites.get(id).cloned()
    }

    /// Hangs up one call by Call-ID. False when no such call.
    pub fn hangup(&self, call_id: &str, reason: &str) -> bool {
        let txs = self.by_call_id(call_id);
        let found = !txs.is_empty();
        for tx in txs {
            let _ = tx.send(CallMsg::Hangup(reason.to_owned()));
        }
        found
    }

    /// Hangs up every call (end of the drain grace period).
    pub fn hangup_all(&self, reason: &str) {
        let txs: Vec<_> = self
            .inner
            .lock()
            .map(|r| r.dialogs.values().map(|(_, tx)| tx.clone()).collect())
            .unwrap_or_default();
        for tx in txs {
            let _ = tx.send(CallMsg::Hangup(reason.to_owned()));
        }
    }
}

/// Everything the call flows share.
pub struct Ctx {
    /// The transaction layer.
    pub sip: SipHandle,
    /// Routing configuration.
    pub routing: RoutingStore,
    /// Metrics.
    pub metrics: Metrics,
    /// Live calls.
    pub calls: Calls,
    /// The media/agent seam.
    pub handler: Arc<dyn CallHandler>,
    /// RTP ports.
    pub ports: ports::PortAllocator,
    /// Inbound digest authentication.
    pub digest: DigestServer,
    /// Tunables.
    pub opts: CallOptions,
    /// True once SIGTERM started the drain.
    pub draining: AtomicBool,
    /// Gateway health from OPTIONS pings.
    pub health: GatewayHealth,
    /// Registration states.
    pub registrations: Registrations,
    /// Per-trunk outbound queues (concurrent share and CPS pacing).
    pub pacing: pacing::Pacing,
    /// The node's supervised long-lived tasks (readiness follows them).
    pub tasks: crate::supervisor::Supervisor,
}

impl Ctx {
    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Our Contact for a peer: a `sip:` URI with the transport, or a `sips:` one when the
    /// peer's request asked for SIPS over TLS (RFC 5630: `sips:` means TLS, no
    /// `transport=tls` with it).
    pub fn contact(&self, user: &str, peer: &crate::sip::transport::Peer, sips: bool) -> String {
        let hp = self.sip.transport.advertised_hostport(peer);
        let user = if user.is_empty() {
            "switchboard".to_owned()
        } else {
            user.to_owned()
        };
        if sips && peer.proto == crate::sip::transport::Proto::Tls {
            return format!("<sips:{user}@{hp}>");
        }
        match peer.proto.uri_param() {
            Some(t) => format!("<sip:{user}@{hp};transport={t}>"),
            None => format!("<sip:{user}@{hp}>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{DtmfPath, dtmf_path};
    use switchboard_proto::v1alpha1::DtmfMode;

    #[test]
    fn dtmf_path_follows_the_trunk_and_the_negotiation() {
        let table = [
            (DtmfMode::Rfc4733, true, Some(DtmfPath::Rtp)),
            (DtmfMode::Rfc4733, false, None),
            (DtmfMode::Info, true, Some(DtmfPath::Info)),
            (DtmfMode::Info, false, Some(DtmfPath::Info)),
            (DtmfMode::Both, true, Some(DtmfPath::Rtp)),
            (DtmfMode::Both, false, Some(DtmfPath::Info)),
            (DtmfMode::Unspecified, true, Some(DtmfPath::Rtp)),
            (DtmfMode::Unspecified, false, Some(DtmfPath::Info)),
        ];
        for (mode, negotiated, want) in table {
            assert_eq!(
                dtmf_path(mode, negotiated),
                want,
                "{mode:?} negotiated={negotiated}"
            );
        }
    }
}
