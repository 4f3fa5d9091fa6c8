//! One task per call: answering (inbound), then everything inside the
//! dialog until it ends — BYE either way, re-INVITE/UPDATE (hold, resume,
//! session refresh), INFO DTMF, RFC 4028 refreshes and expiry.

use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::v1alpha1::{Agent, Codec, PhoneNumber, Trunk};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::transfer::{How, TransferState};
use super::{
    AnsweredCall, CallDirection, CallGuard, CallMsg, CallSession, Ctx, HangupHandle, HangupReason,
    LegEvent, MediaLink, MediaParams,
};
use crate::sdp::{self, Direction, LocalMedia, Sdp};
use crate::sip::dialog::{Dialog, InDialog, Outstanding, carries_sdp};
use crate::sip::headers::has_option_tag;
use crate::sip::message::{Message, Method, reason_phrase};
use crate::sip::session_timer::{self, Due, RefreshClock, Role, SessionTimer};
use crate::sip::transaction::{ClientEvent, ClientTxnId, ServerRequest};

/// The hang-up reason when the peer's SDP asks for RTP at a refused address.
pub const MEDIA_ADDRESS_REFUSED: &str = "refused media address";

/// Most digits waiting to go out as INFO.
const MAX_INFO_QUEUE: usize = 32;

/// The Duration= of the INFO digits we send, in milliseconds.
const INFO_DTMF_MS: u32 = 100;

/// Far enough in the future to mean "never" for a disabled timer.
const NEVER: Duration = Duration::from_secs(86400 * 365);

/// What a call's session uses of the node: the transaction layer, the call
/// registry, metrics, the media handler and two tunables. Narrower than
/// [`Ctx`] on purpose: a session never touches routing, ports, digest or
/// pacing state itself; the one thing it does with the whole node is hand a
/// dial-through transfer's new leg to the outbound engine ([`SessionEnv::dialer`]).
pub(crate) struct SessionEnv {
    pub sip: crate::sip::transaction::SipHandle,
    pub calls: super::Calls,
    pub metrics: crate::metrics::Metrics,
    pub handler: Arc<dyn super::CallHandler>,
    pub opts: SessionOptions,
    /// The node, for [`super::outbound::dial_with`] (weak: the node owns its calls).
    pub dialer: std::sync::Weak<Ctx>,
}

/// The call-layer tunables a session reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionOptions {
    /// How long an inbound call rings before we answer.
    pub answer_delay: Duration,
    /// The smallest Session-Expires accepted in re-INVITEs and UPDATEs (RFC 4028 Min-SE).
    pub min_se: u32,
}

impl SessionEnv {
    fn of(ctx: &Arc<Ctx>) -> SessionEnv {
        SessionEnv {
            dialer: Arc::downgrade(ctx),
            sip: ctx.sip.clone(),
            calls: ctx.calls.clone(),
            metrics: ctx.metrics.clone(),
            handler: ctx.handler.clone(),
            opts: SessionOptions {
                answer_delay: ctx.opts.answer_delay,
                min_se: ctx.opts.min_se,
            },
        }
    }
}

/// The state of one call.
pub struct Session {
    pub(crate) env: SessionEnv,
    pub(crate) dialog: Dialog,
    pub(crate) direction: CallDirection,
    pub(crate) trunk_id: String,
    pub(crate) number_id: String,
    pub(crate) from_user: String,
    pub(crate) to_user: String,
    pub(crate) agent: Option<Agent>,
    pub(crate) local: LocalMedia,
    pub(crate) socket: Arc<super::ports::MediaSocket>,
    pub(crate) media: MediaParams,
    pub(crate) prefs: Vec<Codec>,
    pub(crate) want_dtmf: bool,
    /// The RFC 4028 session timer and its refresh clock (dialog layer).
    pub(crate) clock: RefreshClock,
    pub(crate) rx: mpsc::UnboundedReceiver<CallMsg>,
    pub(crate) tx: mpsc::UnboundedSender<CallMsg>,
    pub(crate) guard: CallGuard,
    pub(crate) peer_allows_update: bool,
    pub(crate) max_duration: Option<Duration>,
    /// The SDP we last sent (answer or offer), for refreshes.
    pub(crate) local_sdp: String,
    pub(crate) handler: Option<Box<dyn CallSession>>,
    /// What the handler prepared before the answer (inbound), handed over on answer.
    pub(crate) prepared: Option<super::Prepared>,
    /// The trunk's RTP timeout, for the media side.
    pub(crate) rtp_timeout: Option<Duration>,
    /// When set-up began: INVITE received (inbound) or sent (outbound).
    pub(crate) started: std::time::Instant,
    /// Networks the call's media must stay in (trunk `mediaSource`); empty: any.
    pub(crate) media_networks: Vec<crate::routing::acl::Cidr>,
    /// INVITE headers passed to the agent (inbound; empty outbound).
    pub(crate) sip_headers: Vec<(String, String)>,
    /// The trunk's SRTP rule for this call's offers and answers.
    pub(crate) srtp_policy: sdp::SrtpPolicy,
    /// Inbound: our 2xx is out but its ACK has not arrived, so media and the
    /// agent have not started yet.
    pub(crate) awaiting_ack: bool,
    /// Our 2xx's INVITE transaction until its ACK arrives.
    pub(crate) unanswered_invite: Option<crate::sip::transaction::ServerTxnId>,
    /// The trunk's `media.dtmf`, handed to the media side.
    pub(crate) dtmf_mode: switchboard_proto::v1alpha1::DtmfMode,
    /// The trunk's `spec.transfer`.
    pub(crate) transfer_policy: Option<switchboard_proto::v1alpha1::Transfer>,
    /// The host in our REFERs' Refer-To: the trunk's first gateway, else the
    /// address the dialog's peer signals from.
    pub(crate) refer_host: String,
    /// Transfers started in this call (bounded by [`MAX_TRANSFERS_PER_CALL`]).
    pub(crate) transfers: u32,
    /// The other leg of an in-node bridge: for the caller's leg, the target's
    /// call once bridged; for a transfer's new leg, the caller's leg from the start.
    pub(crate) partner: Option<HangupHandle>,
    /// This call is a dial-through transfer's new leg.
    pub(crate) transfer_leg: bool,
    /// The transfer's new leg: bridged to the caller's leg (it joined us).
    pub(crate) bridged: bool,
    /// The caller's leg: a dial-through transfer under way (the new leg dialling or ringing).
    pub(crate) dialling: Option<DialLeg>,
}

/// A dial-through transfer's new leg while it is dialled (caller's side).
pub(crate) struct DialLeg {
    target: String,
    /// Cancels the dial (the caller hung up first).
    cancel: tokio_util::sync::CancellationToken,
}

/// Most transfers one call may start: an agent looping on declined transfers
/// must not turn the call into a REFER or INVITE generator.
pub(crate) const MAX_TRANSFERS_PER_CALL: u32 = 5;

/// A REFER of ours under way (RFC 3515): its transaction until answered,
/// then the NOTIFYs until the outcome or the deadline.
struct Referral {
    target: String,
    events: Option<mpsc::UnboundedReceiver<ClientEvent>>,
    deadline: Instant,
}

/// How an in-dialog request ends the call.
enum Ended {
    /// The peer ended it (BYE): nothing to send.
    ByPeer(HangupReason),
    /// We end it: BYE first.
    ByUs(HangupReason),
}

/// What differs between an inbound and an outbound call when its session is
/// created; [`Session::new`] derives the rest, so the two directions cannot
/// drift apart.
pub(crate) struct SessionSetup<'a> {
    pub dialog: Dialog,
    pub direction: CallDirection,
    pub trunk: &'a Trunk,
    pub number: &'a PhoneNumber,
    pub from_user: String,
    pub to_user: String,
    pub agent: Option<Agent>,
    pub local: LocalMedia,
    pub socket: super::ports::MediaSocket,
    pub media: MediaParams,
    pub prefs: Vec<Codec>,
    pub want_dtmf: bool,
    pub timer: Option<SessionTimer>,
    /// The call's message channel (registered with the call registry by the caller).
    pub channel: (
        mpsc::UnboundedSender<CallMsg>,
        mpsc::UnboundedReceiver<CallMsg>,
    ),
    pub guard: CallGuard,
    /// The peer's INVITE (inbound) or 2xx (outbound): its Allow says whether
    /// refreshes may use UPDATE.
    pub peer_msg: &'a Message,
    /// A limit set for this call (outbound API), before the number's and the trunk's.
    pub max_duration: Option<Duration>,
    /// The SDP we sent so far (outbound: our offer).
    pub local_sdp: String,
    pub started: std::time::Instant,
    pub media_networks: Vec<crate::routing::acl::Cidr>,
    pub sip_headers: Vec<(String, String)>,
    pub srtp_policy: sdp::SrtpPolicy,
    /// A dial-through transfer's new leg: the caller's leg, to bridge with.
    pub transfer_of: Option<HangupHandle>,
}

struct Pending {
    id: ClientTxnId,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    method: Method,
    cseq: u32,
}

impl Pending {
    /// What this request means for glare.
    fn outstanding(&self) -> Outstanding {
        match self.method {
            Method::Invite => Outstanding::Invite,
            // Our refreshes by UPDATE carry no SDP.
            _ => Outstanding::Update { offer: false },
        }
    }
}

impl Session {
    /// The session of a call whose dialog exists (inbound: before the answer;
    /// outbound: answered).
    pub(crate) fn new(ctx: &Arc<Ctx>, s: SessionSetup<'_>) -> Session {
        let (tx, rx) = s.channel;
        // The number's limit, else the trunk's; 0 means none.
        let max_secs = match s.number.max_call_duration_seconds {
            0 => s
                .trunk
                .limits
                .as_ref()
                .map_or(0, |l| l.max_call_duration_seconds),
            n => n,
        };
        let max_duration = s
            .max_duration
            .or((max_secs > 0).then(|| Duration::from_secs(u64::from(max_secs))));
        let refer_host = s
            .trunk
            .outbound
            .as_ref()
            .and_then(|o| o.gateways.first())
            .map(|g| g.host.clone())
            .unwrap_or_else(|| crate::sip::headers::uri_host(&s.dialog.peer.addr.ip()));
        Session {
            env: SessionEnv::of(ctx),
            peer_allows_update: s
                .peer_msg
                .headers_named("Allow")
                .any(|a| a.to_ascii_uppercase().contains("UPDATE")),
            dialog: s.dialog,
            direction: s.direction,
            trunk_id: s.trunk.id.clone(),
            number_id: s.number.id.clone(),
            from_user: s.from_user,
            to_user: s.to_user,
            agent: s.agent,
            local: s.local,
            socket: Arc::new(s.socket),
            media: s.media,
            prefs: s.prefs,
            want_dtmf: s.want_dtmf,
            clock: RefreshClock::new(s.timer),
            rx,
            tx,
            guard: s.guard,
            max_duration,
            local_sdp: s.local_sdp,
            handler: None,
            prepared: None,
            rtp_timeout: super::rtp_timeout_of(s.trunk),
            started: s.started,
            media_networks: s.media_networks,
            sip_headers: s.sip_headers,
            srtp_policy: s.srtp_policy,
            awaiting_ack: false,
            unanswered_invite: None,
            dtmf_mode: s
                .trunk
                .media
                .as_ref()
                .map_or_else(Default::default, |m| m.dtmf()),
            transfer_policy: s.trunk.transfer.clone(),
            refer_host,
            transfers: 0,
            transfer_leg: s.transfer_of.is_some(),
            partner: s.transfer_of,
            bridged: false,
            dialling: None,
        }
    }

    fn respond(&self, req: &ServerRequest, code: u16) {
        let resp = req
            .msg
            .response(code, reason_phrase(code), Some(&self.dialog.local_tag));
        self.env.sip.respond(&req.id, resp);
    }

    fn with_common_headers(&self, resp: &mut Message) {
        resp.add("Contact", self.dialog.contact.clone());
        resp.add("Allow", crate::sip::ALLOW);
        resp.add("Supported", "timer");
    }

    /// Builds our SDP for the current media, bumping the o= version only
    /// when the description changed (RFC 3264 8).
    fn build_sdp(&mut self, offer: Option<&Sdp>, n: Option<&sdp::Negotiated>) -> String {
        let render = |local: &LocalMedia| match (offer, n) {
            (Some(o), Some(n)) => sdp::build_answer(local, o, n),
            _ => {
                let fmts: Vec<(u8, &str)> =
                    vec![(self.media.payload_type, sdp::name(self.media.codec))];
                sdp::build(
                    local,
                    &fmts,
                    self.media.dtmf_payload_type,
                    self.media.direction,
                )
            }
        };
        let body = render(&self.local);
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with("o="))
                .collect::<Vec<_>>()
                .join("\n")
        };
        if !self.local_sdp.is_empty() && strip(&body) != strip(&self.local_sdp) {
            self.local.version += 1;
            let body = render(&self.local);
            self.local_sdp = body.clone();
            return body;
        }
        self.local_sdp = body.clone();
        body
    }

    /// Inbound: ring, then answer with `answer_sdp` unless cancelled.
    pub(crate) async fn run_inbound(&mut self, invite: ServerRequest, answer_sdp: String) {
        let ringing_until = Instant::now() + self.env.opts.answer_delay;
        loop {
            tokio::select! {
                _ = sleep_until(ringing_until) => break,
                msg = self.rx.recv() => match msg {
                    Some(CallMsg::Cancelled) => {
                        self.env.metrics.calls.with_label_values(&["inbound", "cancelled", "487"]).inc();
                        self.cleanup(&invite, HangupReason::Cancelled, false);
                        return;
                    }
                    Some(CallMsg::Hangup(reason)) => {
                        tracing::info!(call_id = %self.dialog.call_id, %reason, "rejected before answer");
                        self.respond(&invite, 480);
                        self.env.metrics.calls.with_label_values(&["inbound", "rejected", "480"]).inc();
                        self.cleanup(&invite, HangupReason::Local(reason), false);
                        return;
                    }
                    Some(CallMsg::Request(r)) => {
                        // Nothing but CANCEL is valid from the caller in an early dialog we created.
                        self.respond(&r, if r.msg.method() == Some(Method::Bye) { 481 } else { 491 });
                    }
                    Some(_) => {}
                    None => return,
                }
            }
        }
        let mut ok = invite.msg.response(200, "OK", Some(&self.dialog.local_tag));
        self.with_common_headers(&mut ok);
        if let Some(t) = self.clock.timer() {
            ok.add("Session-Expires", t.header(Role::Uas));
            if t.peer_supports {
                ok.add("Require", "timer");
            }
        }
        self.local_sdp = answer_sdp.clone();
        ok.set_body("application/sdp", answer_sdp.into_bytes());
        self.env.sip.respond(&invite.id, ok);
        // Registered until the ACK: a CANCEL that overtook this 200 must
        // still find the call (see `CallMsg::Cancelled`).
        self.unanswered_invite = Some(invite.id.clone());
        self.env
            .metrics
            .calls
            .with_label_values(&["inbound", "answered", "200"])
            .inc();
        self.observe_setup();
        // Media and the agent's `start` wait for the ACK: a 2xx to a spoofed INVITE is never
        // acknowledged, so it never makes us stream RTP to the spoofed SDP address.
        self.awaiting_ack = true;
        self.run_established().await;
    }

    fn observe_setup(&self) {
        self.env
            .metrics
            .setup_seconds
            .with_label_values(&[self.direction.as_str()])
            .observe(self.started.elapsed().as_secs_f64());
    }

    /// The ACK for our 2xx (inbound): the call is confirmed; start media. An
    /// offerless INVITE gets its SDP answer here (RFC 3264 section 4).
    fn on_ack(&mut self, ack: &Message) -> Option<HangupReason> {
        if !self.awaiting_ack {
            return None;
        }
        self.awaiting_ack = false;
        if let Some(id) = self.unanswered_invite.take() {
            self.env.calls.unregister_invite(&id);
        }
        if self.media.remote.is_none() && carries_sdp(ack) {
            let answer = Sdp::parse(&String::from_utf8_lossy(&ack.body));
            let policy = self.srtp_policy;
            match answer.and_then(|a| sdp::negotiate_with(&a, &self.prefs, self.want_dtmf, policy))
            {
                Ok(n) => {
                    if let Err(e) = sdp::check_remote(
                        n.remote,
                        self.dialog.peer.addr.ip(),
                        &self.media_networks,
                    ) {
                        tracing::warn!(call_id = %self.dialog.call_id, error = %e, "SDP answer in ACK refused");
                        self.env.metrics.reject("media_address");
                        return Some(HangupReason::Local(MEDIA_ADDRESS_REFUSED.into()));
                    }
                    // We offered in the 2xx: the answer brings the peer's key for ours.
                    let srtp = match (&self.local.crypto, &n.srtp) {
                        (Some(ours), Some(theirs)) => Some(super::SrtpKeys {
                            local: ours.key.clone(),
                            remote: theirs.key.clone(),
                        }),
                        _ => None,
                    };
                    self.media = MediaParams::negotiated(&n, n.answer, srtp);
                    if self.local.crypto.is_some() && self.media.srtp.is_none() {
                        tracing::warn!(call_id = %self.dialog.call_id, "SDP answer in ACK has no SRTP key; the trunk requires SRTP");
                        self.env.metrics.reject("srtp_required");
                        return Some(HangupReason::Local("SRTP required".into()));
                    }
                }
                Err(e) => {
                    tracing::debug!(call_id = %self.dialog.call_id, error = %e, "unusable SDP answer in ACK");
                    if self.local.crypto.is_some() {
                        // We offered SRTP because the trunk requires it: no plain fallback.
                        self.env.metrics.reject("srtp_required");
                        return Some(HangupReason::Local("SRTP required".into()));
                    }
                }
            }
        }
        self.answered();
        None
    }

    /// Hands the answered (inbound: acknowledged) call to the media side.
    pub(crate) fn answered(&mut self) {
        if self.direction == CallDirection::Outbound {
            self.observe_setup();
        }
        self.env.calls.set_state(
            &self.dialog.call_id,
            "answered",
            self.media.direction.as_str(),
        );
        let call = AnsweredCall {
            call_id: self.dialog.call_id.clone(),
            direction: self.direction,
            trunk_id: self.trunk_id.clone(),
            number_id: self.number_id.clone(),
            from: self.from_user.clone(),
            to: self.to_user.clone(),
            agent: self.agent.clone(),
            media: self.media.clone(),
            rtp_socket: self.socket.clone(),
            hangup: HangupHandle(self.tx.clone()),
            prepared: self.prepared.take(),
            rtp_timeout: self.rtp_timeout,
            media_networks: self.media_networks.clone(),
            signalling_ip: Some(self.dialog.peer.addr.ip()),
            sip_headers: std::mem::take(&mut self.sip_headers),
            dtmf_mode: self.dtmf_mode,
            transfer_leg: self.transfer_leg,
        };
        let mut handler = self.env.handler.on_answered(call);
        if self.transfer_leg {
            // Tell the caller's leg where our media is; it bridges to it and sends us its own.
            let told = match (handler.link(), self.partner.as_ref()) {
                (Some(link), Some(caller)) => caller.leg_event(LegEvent::Answered {
                    link,
                    leg: HangupHandle(self.tx.clone()),
                }),
                _ => false,
            };
            if !told {
                tracing::info!(call_id = %self.dialog.call_id, "transfer target answered after the caller left; hanging up");
                let _ = self.tx.send(CallMsg::Hangup("the caller is gone".into()));
            }
        }
        self.handler = Some(handler);
    }

    /// When the refresh clock next needs us ("never" when it does not).
    fn timer_deadline(&self) -> Instant {
        self.clock
            .deadline()
            .unwrap_or_else(|| Instant::now() + NEVER)
    }

    /// Acts on what the refresh clock says; `true`: the session expired.
    fn on_due(&mut self, due: Due, pending: &mut Option<Pending>) -> bool {
        match due {
            Due::Nothing => false,
            Due::Refresh(t) => {
                *pending = Some(self.send_refresh(t));
                false
            }
            Due::Expired => true,
        }
    }

    /// The confirmed dialog until it ends.
    pub(crate) async fn established(mut self) {
        self.run_established().await
    }

    /// The body of [`established`](Self::established). It borrows the session so that a
    /// caller's future holds the session once: a by-value `self` moved into an awaited
    /// `async fn` stays allocated in the caller's future too, and a call's task (alive for
    /// the whole call) would hold two or three copies of it.
    async fn run_established(&mut self) {
        self.clock.start(Instant::now());
        let mut timer_at = self.timer_deadline();
        let end_at = Instant::now() + self.max_duration.unwrap_or(NEVER);
        let mut pending: Option<Pending> = None;
        // DTMF by INFO: one request outstanding at a time keeps the digits in order.
        let mut info: Option<Pending> = None;
        let mut info_queue: std::collections::VecDeque<char> = Default::default();
        let mut referral: Option<Referral> = None;
        let reason = loop {
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    None => break HangupReason::Local("registry closed".into()),
                    Some(CallMsg::Ack(ack)) => {
                        if let Some(end) = self.on_ack(&ack) {
                            self.bye().await;
                            break end;
                        }
                    }
                    Some(CallMsg::AckTimeout) => {
                        tracing::warn!(call_id = %self.dialog.call_id, "no ACK for our 2xx; hanging up");
                        self.bye().await;
                        break HangupReason::NoAck;
                    }
                    Some(CallMsg::Hangup(reason)) => {
                        self.bye().await;
                        break HangupReason::Local(reason);
                    }
                    Some(CallMsg::SendDtmf(digits)) => match self.handler.as_mut() {
                        Some(h) => h.send_dtmf(&digits),
                        None => tracing::debug!(call_id = %self.dialog.call_id, "DTMF before the call is up; dropped"),
                    },
                    Some(CallMsg::Transfer { target, timeout, how, headers }) => {
                        referral = self.start_transfer(&target, timeout, how, headers, referral);
                    }
                    Some(CallMsg::Leg(ev)) => {
                        if let Some(end) = self.on_leg(*ev) {
                            self.bye().await;
                            break end;
                        }
                    }
                    Some(CallMsg::Join(link)) => {
                        if !self.on_join(link) {
                            self.bye().await;
                            break HangupReason::Local("the caller's leg could not be bridged".into());
                        }
                    }
                    Some(CallMsg::InfoDtmf(digit)) => {
                        if info_queue.len() >= MAX_INFO_QUEUE {
                            tracing::debug!(call_id = %self.dialog.call_id, "INFO DTMF queue full; digit dropped");
                        } else {
                            info_queue.push_back(digit);
                        }
                        if info.is_none() {
                            info = info_queue.pop_front().map(|d| self.send_info_dtmf(d));
                        }
                    }
                    Some(CallMsg::Cancelled) => {
                        // The CANCEL reached the transaction layer before our
                        // 200, which it dropped: the caller has a 487, not a call.
                        self.env.metrics.calls.with_label_values(&["inbound", "cancelled", "487"]).inc();
                        break HangupReason::Cancelled;
                    }
                    Some(CallMsg::Request(r)) => {
                        let ours = pending.as_ref().map_or(Outstanding::Nothing, Pending::outstanding);
                        match self.on_request(*r, ours, &mut referral) {
                            Some(Ended::ByPeer(end)) => break end,
                            Some(Ended::ByUs(end)) => {
                                self.bye().await;
                                break end;
                            }
                            None => {}
                        }
                        timer_at = self.timer_deadline();
                    }
                },
                ev = async { match pending.as_mut() { Some(p) => p.events.recv().await, None => std::future::pending().await } } => {
                    let Some(p) = pending.take() else { continue };
                    // `None`: timed out or the transport failed.
                    let answer = match &ev {
                        Some(ClientEvent::Response(resp)) => Some(resp),
                        _ => None,
                    };
                    let code = answer.and_then(|r| r.code());
                    if code.is_some_and(|c| c < 200) {
                        pending = Some(p);
                        continue;
                    }
                    if code.is_some_and(|c| (200..300).contains(&c)) && p.method == Method::Invite {
                        let ack = self.dialog.ack(p.cseq);
                        self.env.sip.ack(Some(&p.id), ack, self.dialog.next_hop());
                    }
                    let due = self.clock.refresh_answered(answer, Instant::now());
                    if self.on_due(due, &mut pending) {
                        tracing::info!(call_id = %self.dialog.call_id, code = code.unwrap_or(0), "session refresh refused or unanswered; session gone");
                        self.bye().await;
                        break HangupReason::SessionExpired;
                    }
                    timer_at = self.timer_deadline();
                }
                step = async {
                    match referral.as_mut() {
                        Some(r) => {
                            let deadline = r.deadline;
                            match r.events.as_mut() {
                                Some(rx) => tokio::select! {
                                    ev = rx.recv() => Some(ev),
                                    _ = sleep_until(deadline) => None,
                                },
                                None => {
                                    sleep_until(deadline).await;
                                    None
                                }
                            }
                        }
                        None => std::future::pending().await,
                    }
                } => {
                    // `None`: the deadline passed without an outcome.
                    let Some(ev) = step else {
                        if let Some(r) = referral.take() {
                            self.report_transfer(&r.target, TransferState::Failed, 0, "no outcome from the carrier in time");
                        }
                        continue;
                    };
                    if let Some(end) = self.on_refer_answer(ev, &mut referral) {
                        self.bye().await;
                        break end;
                    }
                }
                ev = async { match info.as_mut() { Some(p) => p.events.recv().await, None => std::future::pending().await } } => {
                    if let Some(ClientEvent::Response(resp)) = &ev
                        && resp.code().is_some_and(|c| c < 200)
                    {
                        continue;
                    }
                    match ev {
                        Some(ClientEvent::Response(resp)) if resp.code().is_some_and(|c| c == 481 || c == 408) => {
                            // RFC 3261 12.2.1.2: the dialog is gone.
                            tracing::info!(call_id = %self.dialog.call_id, "INFO answered 481/408; the dialog is gone");
                            self.bye().await;
                            break HangupReason::Local("dialog gone (INFO)".into());
                        }
                        Some(ClientEvent::Response(resp)) if resp.code().is_some_and(|c| c >= 300) => {
                            tracing::info!(call_id = %self.dialog.call_id, code = resp.code().unwrap_or(0), "INFO DTMF refused by the peer");
                            self.env.metrics.dtmf_info_failed.inc();
                        }
                        Some(ClientEvent::Response(_)) => {}
                        _ => self.env.metrics.dtmf_info_failed.inc(),
                    }
                    info = info_queue.pop_front().map(|d| self.send_info_dtmf(d));
                }
                _ = sleep_until(timer_at) => {
                    let due = self.clock.on_deadline(Instant::now());
                    if self.on_due(due, &mut pending) {
                        tracing::info!(call_id = %self.dialog.call_id, "session expired without refresh");
                        self.bye().await;
                        break HangupReason::SessionExpired;
                    }
                    timer_at = self.timer_deadline();
                }
                _ = sleep_until(end_at) => {
                    self.bye().await;
                    break HangupReason::MaxDuration;
                }
            }
        };
        self.finish(reason);
    }

    fn send_refresh(&mut self, t: SessionTimer) -> Pending {
        let method = if self.peer_allows_update {
            Method::Update
        } else {
            Method::Invite
        };
        let mut req = self.dialog.request(method.clone());
        // We send this request: the refresher is named as its UAC or UAS.
        req.add("Session-Expires", t.header(Role::Uac));
        req.add("Supported", "timer");
        if method == Method::Invite {
            // An unchanged offer: same o= version (RFC 4028 7.4).
            req.set_body("application/sdp", self.local_sdp.clone().into_bytes());
        }
        let cseq = self.dialog.local_cseq;
        let (id, events) = self.env.sip.request(req, self.dialog.next_hop());
        Pending {
            id,
            events,
            method,
            cseq,
        }
    }

    /// Checks a transfer request and sends its REFER or dials its new leg; the
    /// referral under way (the old one when this one is refused because another
    /// is running).
    fn start_transfer(
        &mut self,
        target: &str,
        timeout: Duration,
        asked: Option<How>,
        headers: Vec<(String, String)>,
        current: Option<Referral>,
    ) -> Option<Referral> {
        let busy = if self.transfer_leg || self.bridged || self.partner.is_some() {
            Some("the call is bridged to a transfer target")
        } else if current.is_some() || self.dialling.is_some() {
            Some("a transfer is already under way")
        } else {
            None
        };
        if let Some(why) = busy {
            self.report_transfer(target, TransferState::Failed, 0, why);
            return current;
        }
        let (target, how) =
            match super::transfer::check(self.transfer_policy.as_ref(), target, asked) {
                Ok(t) => t,
                Err(e) => {
                    tracing::info!(call_id = %self.dialog.call_id, error = %e, "transfer refused");
                    self.report_transfer(target, TransferState::Failed, 0, &e.to_string());
                    return None;
                }
            };
        if self.transfers >= MAX_TRANSFERS_PER_CALL {
            self.report_transfer(
                &target,
                TransferState::Failed,
                0,
                "too many transfer attempts in this call",
            );
            return None;
        }
        self.transfers += 1;
        if how == How::Dial {
            self.start_dial(target, timeout, headers);
            return None;
        }
        let mut req = self.dialog.request(Method::Other("REFER".into()));
        req.add("Refer-To", format!("<sip:{target}@{}>", self.refer_host));
        req.add("Referred-By", self.dialog.contact.clone());
        if self.transfer_policy.as_ref().is_some_and(|p| p.no_progress) {
            // RFC 4488: no implicit subscription, so no NOTIFY progress.
            req.add("Refer-Sub", "false");
            req.add("Supported", "norefersub");
        }
        for (name, value) in headers {
            req.add(&name, value);
        }
        let (_, events) = self.env.sip.request(req, self.dialog.next_hop());
        tracing::info!(call_id = %self.dialog.call_id, %target, "transfer: REFER sent");
        self.report_transfer(&target, TransferState::Requested, 0, "");
        Some(Referral {
            target,
            events: Some(events),
            deadline: Instant::now() + timeout,
        })
    }

    /// Dials a dial-through transfer's new leg through this call's number and
    /// trunk (the outbound engine's gateways, failover, digest, limits and
    /// pacing); the leg reports back by [`CallMsg::Leg`]. The agent stays on
    /// the call while it rings.
    fn start_dial(&mut self, target: String, timeout: Duration, headers: Vec<(String, String)>) {
        let Some(ctx) = self.env.dialer.upgrade() else {
            self.report_transfer(
                &target,
                TransferState::Failed,
                0,
                "the node is shutting down",
            );
            return;
        };
        let caller_id = match self.transfer_policy.as_ref().map(|p| p.caller_id.trim()) {
            Some(id) if !id.is_empty() => id.to_owned(),
            // The original caller's number, when it is one (it comes from the carrier's From).
            _ => super::outbound::caller_id_of(&self.from_user).unwrap_or_default(),
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let me = HangupHandle(self.tx.clone());
        let ringing = me.clone();
        // The new leg waits in the trunk's pacing queue like any outbound call (both legs count
        // against its channels), but not longer than the transfer's timeout.
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dialling = started.clone();
        let hooks = super::outbound::DialHooks {
            cancel: Some(cancel.clone()),
            ringing_timeout: Some(timeout),
            progress: Some(Arc::new(move |p| match p {
                super::outbound::DialProgress::Started => {
                    dialling.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                super::outbound::DialProgress::Ringing { code } => {
                    ringing.leg_event(LegEvent::Ringing(code));
                }
                super::outbound::DialProgress::Attempt { .. } => {}
            })),
            headers,
            transfer: Some(super::outbound::TransferLeg {
                caller: me.clone(),
                caller_id,
            }),
            ..Default::default()
        };
        let req = super::outbound::DialRequest {
            number_id: self.number_id.clone(),
            to: target.clone(),
        };
        tracing::info!(call_id = %self.dialog.call_id, %target, "transfer: dialling the target");
        let queue_limit = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(timeout) => {
                    if !started.load(std::sync::atomic::Ordering::Relaxed) {
                        queue_limit.cancel();
                    }
                }
                _ = queue_limit.cancelled() => {}
            }
        });
        let queue_limit = cancel.clone();
        tokio::spawn(async move {
            let out = super::outbound::dial_with(ctx, req, hooks).await;
            // Ends the queue timer too.
            queue_limit.cancel();
            if let super::outbound::DialOutcome::Failed { code, reason, .. } = out {
                me.leg_event(LegEvent::Failed { code, reason });
            }
        });
        self.report_transfer(&target, TransferState::Requested, 0, "");
        self.dialling = Some(DialLeg { target, cancel });
    }

    /// The dial-through transfer's new leg moved on (caller's side); `Some`:
    /// the call ends (BYE first).
    fn on_leg(&mut self, ev: LegEvent) -> Option<HangupReason> {
        match ev {
            LegEvent::Ringing(code) => {
                if let Some(target) = self.dialling.as_ref().map(|d| d.target.clone()) {
                    self.report_transfer(&target, TransferState::Ringing, code, "");
                }
                None
            }
            LegEvent::Answered { link, leg } => {
                let Some(d) = self.dialling.take() else {
                    // Not ours any more (a late answer): that call has no one to talk to.
                    leg.hangup("the caller's leg moved on");
                    return None;
                };
                let Some(own) = self.handler.as_mut().and_then(|h| h.link()) else {
                    leg.hangup("the caller's leg cannot be bridged");
                    self.report_transfer(
                        &d.target,
                        TransferState::Failed,
                        0,
                        "the calls cannot be bridged",
                    );
                    return None;
                };
                // Told before the bridge, while the agent is still there to hear it.
                self.report_transfer(&d.target, TransferState::Succeeded, 200, "");
                if !self.handler.as_mut().is_some_and(|h| h.join(link)) {
                    leg.hangup("the caller's leg could not be bridged");
                    self.report_transfer(
                        &d.target,
                        TransferState::Failed,
                        0,
                        "the calls could not be bridged",
                    );
                    return None;
                }
                // Our agent has left: from here the call is the caller and the target.
                if !leg.join(own) {
                    return Some(HangupReason::Local("the transfer target hung up".into()));
                }
                tracing::info!(call_id = %self.dialog.call_id, target = %d.target, "transfer answered; caller bridged to the target");
                self.partner = Some(leg);
                None
            }
            LegEvent::Failed { code, reason } => {
                if self.partner.is_some() {
                    // The new leg ended after we bridged to it.
                    return Some(HangupReason::Local("the transfer target hung up".into()));
                }
                if let Some(d) = self.dialling.take() {
                    let why = super::transfer::dial_failure(code, &reason);
                    tracing::info!(call_id = %self.dialog.call_id, target = %d.target, code = code.unwrap_or(0), %reason, "transfer: the target's call did not connect; the caller stays with the agent");
                    self.report_transfer(&d.target, TransferState::Failed, code.unwrap_or(0), &why);
                }
                None
            }
        }
    }

    /// A transfer's new leg: the caller's leg is ready; false: not bridged.
    fn on_join(&mut self, link: MediaLink) -> bool {
        if !self.transfer_leg || self.bridged {
            return !self.transfer_leg;
        }
        self.bridged = self.handler.as_mut().is_some_and(|h| h.join(link));
        self.bridged
    }

    /// An event of our REFER's transaction (`None`: it ended without an answer);
    /// `Some`: the transfer succeeded and the call ends (BYE first).
    fn on_refer_answer(
        &mut self,
        ev: Option<ClientEvent>,
        referral: &mut Option<Referral>,
    ) -> Option<HangupReason> {
        let answer = match &ev {
            Some(ClientEvent::Response(resp)) => Some(resp),
            _ => None,
        };
        let code = answer.map_or(408, |r| r.code().unwrap_or(500));
        let r = referral.as_mut()?;
        if code < 200 {
            return None;
        }
        r.events = None;
        let target = r.target.clone();
        if !(200..300).contains(&code) {
            *referral = None;
            let why = if answer.is_some() {
                "REFER refused by the carrier"
            } else {
                "REFER unanswered"
            };
            self.report_transfer(&target, TransferState::Failed, code, why);
            return None;
        }
        let no_subscription = answer
            .and_then(|resp| resp.header("Refer-Sub"))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
        if !no_subscription {
            self.report_transfer(&target, TransferState::Accepted, code, "");
            return None;
        }
        // The carrier agreed to RFC 4488's no-progress mode: it has the caller.
        *referral = None;
        self.report_transfer(&target, TransferState::Succeeded, code, "");
        Some(HangupReason::Local(format!("transferred to {target}")))
    }

    /// A NOTIFY in the dialog: the progress of our REFER (RFC 3515 2.4.5).
    fn on_notify(&mut self, r: &ServerRequest, referral: &mut Option<Referral>) -> Option<Ended> {
        use super::transfer::{is_refer_event, sipfrag_status, state_of};
        let Some(rf) = referral
            .as_mut()
            .filter(|_| is_refer_event(r.msg.header("Event")))
        else {
            self.respond(r, 481);
            return None;
        };
        self.respond(r, 200);
        // A NOTIFY can overtake the REFER's 202 (UDP): it implies acceptance.
        rf.events = None;
        let terminated = r
            .msg
            .header("Subscription-State")
            .is_some_and(|s| s.trim().to_ascii_lowercase().starts_with("terminated"));
        let target = rf.target.clone();
        match sipfrag_status(&r.msg.body).map(|c| (c, state_of(c))) {
            Some((code, TransferState::Succeeded)) => {
                *referral = None;
                self.report_transfer(&target, TransferState::Succeeded, code, "");
                tracing::info!(call_id = %self.dialog.call_id, %target, "transfer succeeded; leaving the call");
                Some(Ended::ByUs(HangupReason::Local(format!(
                    "transferred to {target}"
                ))))
            }
            Some((code, TransferState::Failed)) => {
                *referral = None;
                self.report_transfer(
                    &target,
                    TransferState::Failed,
                    code,
                    "the target did not answer",
                );
                None
            }
            _ if terminated => {
                *referral = None;
                self.report_transfer(
                    &target,
                    TransferState::Failed,
                    0,
                    "the carrier ended the transfer without an outcome",
                );
                None
            }
            Some((code, state)) => {
                self.report_transfer(&target, state, code, "");
                None
            }
            None => None,
        }
    }

    fn report_transfer(&mut self, target: &str, state: TransferState, code: u16, reason: &str) {
        let update = super::transfer::TransferUpdate {
            target: target.to_owned(),
            state,
            code,
            reason: reason.to_owned(),
        };
        if let Some(h) = self.handler.as_mut() {
            h.on_transfer(&update);
        }
    }

    /// Sends one digit as INFO (application/dtmf-relay).
    fn send_info_dtmf(&mut self, digit: char) -> Pending {
        let mut req = self.dialog.request(Method::Info);
        req.set_body(
            super::dtmf::RELAY_CONTENT_TYPE,
            super::dtmf::relay_body(digit, INFO_DTMF_MS).into_bytes(),
        );
        let cseq = self.dialog.local_cseq;
        let (id, events) = self.env.sip.request(req, self.dialog.next_hop());
        self.env.metrics.dtmf_info_sent.inc();
        Pending {
            id,
            events,
            method: Method::Info,
            cseq,
        }
    }

    /// Handles one in-dialog request (the dialog layer says what it is);
    /// `Some` ends the call.
    fn on_request(
        &mut self,
        r: ServerRequest,
        ours: Outstanding,
        referral: &mut Option<Referral>,
    ) -> Option<Ended> {
        match self.dialog.classify(&r.msg, ours) {
            InDialog::Refuse(code) => {
                self.respond(&r, code);
                None
            }
            InDialog::Bye => {
                self.respond(&r, 200);
                Some(Ended::ByPeer(HangupReason::RemoteBye))
            }
            InDialog::Notify => self.on_notify(&r, referral),
            InDialog::Offer => {
                let method = r.msg.method().unwrap_or(Method::Invite);
                self.on_offer(r, method);
                None
            }
            InDialog::Info => {
                let ct = r.msg.header("Content-Type").unwrap_or("");
                match super::dtmf::parse(ct, &r.msg.body) {
                    Some(ev) => {
                        if let Some(h) = self.handler.as_mut() {
                            h.on_dtmf(ev);
                        }
                        self.respond(&r, 200);
                    }
                    None if r.msg.body.is_empty() => self.respond(&r, 200),
                    None => self.respond(&r, 415),
                }
                None
            }
            InDialog::Options => {
                let mut resp = r.msg.response(200, "OK", Some(&self.dialog.local_tag));
                self.with_common_headers(&mut resp);
                resp.add("Accept", "application/sdp");
                self.env.sip.respond(&r.id, resp);
                None
            }
        }
    }

    /// re-INVITE or UPDATE: a new offer (hold/resume/codec change) or
    /// just a session refresh.
    fn on_offer(&mut self, r: ServerRequest, method: Method) {
        // The refresher is named by its role in this transaction, whichever side
        // sent the dialog's first INVITE (RFC 4028 4).
        let timer = match session_timer::uas_negotiate(&r.msg, self.env.opts.min_se) {
            Ok(t) => t,
            Err(min_se) => {
                let mut resp =
                    r.msg
                        .response(422, reason_phrase(422), Some(&self.dialog.local_tag));
                resp.add("Min-SE", min_se.to_string());
                self.env.sip.respond(&r.id, resp);
                return;
            }
        };
        let mut body = None;
        if carries_sdp(&r.msg) {
            let offer = match Sdp::parse(&String::from_utf8_lossy(&r.msg.body)) {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(call_id = %self.dialog.call_id, error = %e, "bad SDP in re-offer");
                    self.respond(&r, 488);
                    return;
                }
            };
            let n = match sdp::negotiate_with(&offer, &self.prefs, self.want_dtmf, self.srtp_policy)
            {
                Ok(n) => n,
                Err(e) => {
                    // The call goes on with its current media (and keys).
                    tracing::debug!(call_id = %self.dialog.call_id, error = %e, "re-offer refused");
                    self.respond(&r, 488);
                    return;
                }
            };
            if let Err(e) = sdp::check_remote(n.remote, r.peer.addr.ip(), &self.media_networks) {
                // The call goes on with its current media.
                tracing::warn!(call_id = %self.dialog.call_id, error = %e, "re-offer refused");
                self.env.metrics.reject("media_address");
                self.respond(&r, 488);
                return;
            }
            // A re-offer that keeps the peer's key keeps ours (and the streams' state); a
            // new key from the peer is a rekey, answered with a new key of ours.
            let (srtp, crypto) = super::answer_srtp(&n, self.media.srtp.as_ref());
            self.local.crypto = crypto;
            let media = MediaParams::negotiated(&n, n.answer, srtp);
            let changed = media != self.media;
            self.media = media;
            body = Some(self.build_sdp(Some(&offer), Some(&n)));
            if changed {
                tracing::info!(call_id = %self.dialog.call_id, direction = n.answer.as_str(), "media updated by peer");
                self.env.calls.set_state(
                    &self.dialog.call_id,
                    "answered",
                    self.media.direction.as_str(),
                );
                if let Some(h) = self.handler.as_mut() {
                    h.on_media_update(&self.media);
                }
            }
        } else if method == Method::Invite {
            // An offerless re-INVITE: we offer our current description and
            // take the answer from the ACK. Offer sendrecv again.
            if self.media.direction != Direction::SendRecv {
                self.media.direction = Direction::SendRecv;
            }
            body = Some(self.build_sdp(None, None));
        }
        self.dialog.refresh_target(&r.msg);
        // Our 2xx refreshes the session (RFC 4028 10).
        self.clock.peer_refreshed(timer, Instant::now());
        let mut ok = r.msg.response(200, "OK", Some(&self.dialog.local_tag));
        self.with_common_headers(&mut ok);
        if let Some(t) = self.clock.timer() {
            ok.add("Session-Expires", t.header(Role::Uas));
            if has_option_tag(r.msg.headers_named("Supported"), "timer") {
                ok.add("Require", "timer");
            }
        }
        if let Some(b) = body {
            ok.set_body("application/sdp", b.into_bytes());
        }
        self.env.sip.respond(&r.id, ok);
    }

    /// Sends BYE and waits (bounded) for its answer, still answering the
    /// peer's own BYE if they cross.
    async fn bye(&mut self) {
        let bye = self.dialog.request(Method::Bye);
        let (_, mut events) = self.env.sip.request(bye, self.dialog.next_hop());
        let deadline = Instant::now() + crate::sip::transaction::T64 + Duration::from_secs(1);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ClientEvent::Response(r)) if r.code().is_some_and(|c| c < 200) => {}
                    _ => return,
                },
                msg = self.rx.recv() => match msg {
                    Some(CallMsg::Request(r)) => {
                        let code = if r.msg.method() == Some(Method::Bye) { 200 } else { 481 };
                        self.respond(&r, code);
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = sleep_until(deadline) => return,
            }
        }
    }

    fn cleanup(&mut self, invite: &ServerRequest, reason: HangupReason, _answered: bool) {
        self.env.calls.unregister_invite(&invite.id);
        self.finish(reason);
    }

    fn finish(&mut self, reason: HangupReason) {
        if let Some(id) = self.unanswered_invite.take() {
            self.env.calls.unregister_invite(&id);
        }
        self.env
            .calls
            .unregister_dialog(&self.dialog.call_id, &self.dialog.local_tag);
        tracing::info!(call_id = %self.dialog.call_id, trunk = %self.trunk_id, ?reason, "call ended");
        if let Some(d) = self.dialling.take() {
            // The caller left while the target was being dialled: ringing attempts get a CANCEL.
            d.cancel.cancel();
        }
        if let Some(p) = self.partner.take() {
            // One side of a bridge ended: so does the other (a transfer leg that was never
            // bridged tells the caller's leg, which stays with its agent).
            if self.transfer_leg && !self.bridged {
                p.leg_event(LegEvent::Failed {
                    code: None,
                    reason: "the target's call ended before it was bridged".into(),
                });
            } else if self.transfer_leg {
                p.hangup("the transfer target hung up");
            } else {
                p.hangup("the caller hung up");
            }
        }
        if let Some(mut h) = self.handler.take() {
            h.on_hangup(&reason);
        }
        let _ = &self.guard;
    }
}
