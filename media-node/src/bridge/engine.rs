//! The media engine of one call: one task that owns every piece of per-call media state.
//!
//! It waits on five things at once: RTP datagrams on the call's socket, RTCP on port+1, its
//! timer in the node's shared [`TimerWheel`], the agent's "audio arrived" signal, and control
//! messages from the SIP side (media updates, stop). Keeping all state in one task means no
//! locks between receive and send paths; the only shared state is the agent's playout queue,
//! locked briefly per frame and never across an await.
//!
//! Caller -> agent: packets are validated (payload type, source per the strict learning rules of
//! [`crate::media::source`], RFC 3550 A.1 sequence checks), telephone-events go to the RFC 4733
//! detector (one DTMF message per key press), audio goes into the reorder buffer
//! ([`crate::media::jitter`]), and every frame it releases is transcoded to μ-law and handed to
//! the agent session at once, with `try_send` (a slow agent loses frames, counted, and never
//! delays this call or any other). In-order audio is therefore forwarded on arrival; only a gap
//! waits, for at most the buffer's adaptive hold, before it is concealed with silence.
//!
//! Agent -> caller: one RTP packet per 20 ms frame, with continuous sequence numbers and
//! timestamps, timed by the call's own [`Pacer`]: silence on the call's grid, agent audio that
//! reaches an empty queue at once and the audio behind it 20 ms apart. The engine wakes only when
//! something is due (its next packet, a gap's deadline, its next RTCP report): calls spread over
//! the 20 ms period instead of waking together. While on hold (our direction recvonly/inactive)
//! nothing is sent, the timestamp advances with real time and the RTP timeout is suspended.
//!
//! The hot path (per packet, per frame) allocates nothing: buffers live in the task, metrics are
//! pre-resolved counters. (Encrypted calls are the exception: the SRTP library returns each
//! protected or unprotected packet in a buffer of its own.)
//!
//! An encrypted call ([`MediaParams::srtp`]) authenticates and decrypts every datagram before
//! anything else looks at it, and encrypts every packet it sends; it never sends or accepts
//! plain RTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchboard_proto::v1alpha1::Codec;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use prometheus::IntCounter;

use super::join::JoinPort;
use super::metrics::{MediaMetrics, drop_reason};
use super::reason;
use crate::agent::caller_queue::{CallerTx, TrySendError};
use crate::agent::session::{CallerEvent, SharedPlayout};
use crate::call::{DtmfPath, HangupHandle, MediaParams, SrtpKeys};
use crate::media::dtmf::{DtmfDetector, EventGenerator};
use crate::media::g711::{self, Law};
use crate::media::jitter::{JitterBuffer, JitterConfig, Output, Pushed};
use crate::media::pacer::{Next, Pacer};
use crate::media::playout::FRAME_BYTES;
use crate::media::rtcp::{self, LastSenderReport, Report, ReportBlock, RtcpPacket, SenderInfo};
use crate::media::rtp::{ReceiverStats, RtpPacket, RtpSender, SeqUpdate, looks_like_rtcp};
use crate::media::source::{LearningConfig, SourceLearner, Verdict};
use crate::media::srtp::{self, SrtpError};
use crate::media::wheel::{Timer, TimerWheel};
use crate::routing::acl::{Cidr, normalize};
use crate::sdp::Direction;

/// Samples (and bytes) per 20 ms frame of 8 kHz G.711.
const FRAME_SAMPLES: u32 = FRAME_BYTES as u32;
/// Milliseconds per frame.
const FRAME_MS: u64 = 20;
/// Static payload type of comfort noise (RFC 3389): valid, but we have nothing to do with it.
const PT_COMFORT_NOISE: u8 = 13;
/// RTCP report interval (5 s, RFC 3550 6.2 minimum), randomised by ±50% per report.
const RTCP_INTERVAL_MS: u64 = 5000;
/// How often the engine wakes while it sends nothing (hold): RTCP, DTMF end, media timeout.
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// Largest datagram we read.
const MAX_DATAGRAM: usize = 2048;
/// Datagrams read per wake before the engine's other work gets its turn.
const DRAIN_BATCH: usize = 16;
/// How long each digit the agent sends lasts (RFC 4733 events).
const DTMF_DIGIT: Duration = Duration::from_millis(100);
/// Frames (20 ms) of pause between digits.
const DTMF_PAUSE_FRAMES: u8 = 2;
/// How long a bridged leg's sender waits for a late frame from the other leg before it sends
/// silence instead: the other leg's frames arrive with that line's jitter, which the agent's
/// real-time audio does not have.
const JOINED_GRACE: Duration = Duration::from_millis(40);

/// Messages from the SIP side to the engine.
#[derive(Debug)]
pub(crate) enum Control {
    /// The negotiated media changed (hold, resume, new address or codec). Boxed: the
    /// channel reserves 32 slots per call and this is the large, rare message.
    Media(Box<MediaParams>),
    /// Digits to send to the caller (call API), queued with the agent's.
    Dtmf(String),
    /// Bridge this call to another call in the node (a dial-through transfer):
    /// from now on our caller's audio and DTMF go to `peer`, and what we send
    /// our caller comes from `own` instead of the agent.
    Join {
        /// Our receiving end (the other engine delivers into it).
        own: Arc<JoinPort>,
        /// The other call's receiving end.
        peer: Arc<JoinPort>,
    },
    /// The call is over.
    Stop,
}

/// Per-call settings.
#[derive(Debug, Clone)]
pub(crate) struct EngineSettings {
    /// Hang up after this long without RTP (not while on hold).
    pub rtp_timeout: Option<Duration>,
    /// The trunk's DTMF setting, for the digits we send.
    pub dtmf_mode: switchboard_proto::v1alpha1::DtmfMode,
    /// Smallest wait for a missing caller frame before it is concealed.
    pub jitter_min: Duration,
    /// Largest wait for a missing caller frame before it is concealed.
    pub jitter_max: Duration,
    /// Source learning (window, head start, probation).
    pub learning: LearningConfig,
    /// RTP and RTCP only from these networks (the trunk's `mediaSource: SignallingNetwork`);
    /// empty accepts any source the learning rules accept.
    pub networks: Vec<Cidr>,
    /// The IP of the call's SIP peer (trusted like the SDP address when learning).
    pub signalling_ip: Option<std::net::IpAddr>,
}

/// The drop counters, resolved once per call so that a flood of dropped packets costs an
/// atomic add each, not a label lookup.
struct Drops {
    malformed: IntCounter,
    payload_type: IntCounter,
    source: IntCounter,
    sequence: IntCounter,
    srtp_auth: IntCounter,
    srtp_replay: IntCounter,
    srtcp_unencrypted: IntCounter,
    srtp_other: IntCounter,
}

impl Drops {
    fn new(m: &MediaMetrics) -> Self {
        let c = |r: &str| m.rtp_dropped.with_label_values(&[r]);
        Drops {
            malformed: c(drop_reason::MALFORMED),
            payload_type: c(drop_reason::PAYLOAD_TYPE),
            source: c(drop_reason::SOURCE),
            sequence: c(drop_reason::SEQUENCE),
            srtp_auth: c(drop_reason::SRTP_AUTH),
            srtp_replay: c(drop_reason::SRTP_REPLAY),
            srtcp_unencrypted: c(drop_reason::SRTCP_UNENCRYPTED),
            srtp_other: c(drop_reason::SRTP_OTHER),
        }
    }
}

/// The source we receive from: its SSRC and RFC 3550 statistics.
struct Source {
    ssrc: u32,
    stats: ReceiverStats,
    /// Loss already added to the loss counter.
    lost_counted: i64,
    /// The last SR it sent us (for LSR/DLSR in our reports).
    last_sr: Option<LastSenderReport>,
}

pub(crate) fn law_of(codec: Codec) -> Law {
    match codec {
        Codec::Pcma => Law::Alaw,
        _ => Law::Ulaw,
    }
}

fn jitter_config(law: Law, s: &EngineSettings) -> JitterConfig {
    JitterConfig {
        min_hold: s.jitter_min,
        max_hold: s.jitter_max.max(s.jitter_min),
        // Gaps are filled in the call's own codec so that transcoding yields μ-law silence.
        silence: law.silence(),
        ..JitterConfig::default()
    }
}

/// Our direction says whether we may send: recvonly/inactive mean the peer put us on hold.
fn is_hold(direction: Direction) -> bool {
    matches!(direction, Direction::RecvOnly | Direction::Inactive)
}

/// One call's media state. Built by the bridge, consumed by [`Engine::run`].
pub(crate) struct Engine {
    call_id: String,
    media: MediaParams,
    law: Law,
    settings: EngineSettings,
    /// Which source we accept RTP from and send ours to (strict learning).
    learner: SourceLearner,
    /// Where the peer's RTCP comes from (its source address is where we send ours).
    rtcp_remote: Option<SocketAddr>,
    drops: Drops,
    source: Option<Source>,
    jitter: JitterBuffer,
    /// Frames handed to the agent so far: the next one's `timestamp` is this times 20 ms
    /// (continuous across a restarted caller stream).
    agent_frames: u64,
    dtmf: DtmfDetector,
    /// The digit being sent to the caller (RFC 4733), and frames of pause left after one.
    dtmf_out: Option<EventGenerator>,
    dtmf_pause: u8,
    sender: RtpSender,
    pacer: Pacer,
    sent_since_report: bool,
    playout: Arc<SharedPlayout>,
    caller: CallerTx,
    metrics: MediaMetrics,
    hangup: HangupHandle,
    epoch: Instant,
    last_rx: Duration,
    next_rtcp: Duration,
    /// The instant the timer is armed for (to skip re-arming it for the same instant).
    armed: Option<Duration>,
    cname: String,
    frame: [u8; FRAME_BYTES],
    packet: [u8; 256],
    rtcp_out: [u8; 512],
    /// The call's SRTP contexts when [`MediaParams::srtp`] is set (`None` then means the
    /// keys were unusable: nothing is sent or accepted).
    srtp: Option<srtp::Session>,
    /// Bridged to another call in the node: our end and the other call's.
    joined: Option<(Arc<JoinPort>, Arc<JoinPort>)>,
}

/// Builds the SRTP contexts for a call's keys.
fn srtp_session(call_id: &str, keys: Option<&SrtpKeys>) -> Option<srtp::Session> {
    let keys = keys?;
    srtp::Session::new(&keys.local, keys.remote.clone())
        .map_err(|e| tracing::error!(%call_id, error = %e, "SRTP keys unusable; media stopped"))
        .ok()
}

/// A randomised RTCP interval (RFC 3550 6.3.1: 0.5 to 1.5 times the nominal one).
fn rtcp_interval() -> Duration {
    Duration::from_millis(RTCP_INTERVAL_MS / 2 + rand::random::<u64>() % RTCP_INTERVAL_MS)
}

impl Engine {
    /// Sets up the media state of a call that was just answered.
    pub(crate) fn new(
        call_id: String,
        media: MediaParams,
        settings: EngineSettings,
        playout: Arc<SharedPlayout>,
        caller: CallerTx,
        metrics: MediaMetrics,
        hangup: HangupHandle,
    ) -> Self {
        let law = law_of(media.codec);
        // RFC 3550 5.1: random SSRC, initial sequence number and timestamp.
        let ssrc: u32 = rand::random();
        let sender = RtpSender::new(ssrc, media.payload_type, rand::random(), rand::random());
        // The learning window opens now: the engine starts when the call is confirmed (ACK).
        let learner = SourceLearner::new(settings.learning, media.remote, Duration::ZERO)
            .restrict_to(settings.networks.clone())
            .trust_signalling(settings.signalling_ip);
        let srtp = srtp_session(&call_id, media.srtp.as_ref());
        Engine {
            srtp,
            call_id,
            law,
            jitter: JitterBuffer::new(jitter_config(law, &settings)),
            agent_frames: 0,
            settings,
            media,
            learner,
            rtcp_remote: None,
            drops: Drops::new(&metrics),
            source: None,
            dtmf: DtmfDetector::default(),
            dtmf_out: None,
            dtmf_pause: 0,
            sender,
            pacer: Pacer::new(),
            sent_since_report: false,
            playout,
            caller,
            metrics,
            hangup,
            epoch: Instant::now(),
            last_rx: Duration::ZERO,
            next_rtcp: rtcp_interval(),
            armed: None,
            cname: format!("switchboard-{ssrc:08x}"),
            frame: [0; FRAME_BYTES],
            packet: [0; 256],
            rtcp_out: [0; 512],
            joined: None,
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn on_hold(&self) -> bool {
        is_hold(self.media.direction)
    }

    /// Where our RTP goes: the learned source, else the address in the peer's SDP.
    fn remote(&self) -> Option<SocketAddr> {
        self.learner.current()
    }

    /// Runs until the call stops (control channel) or the engine hangs up (RTP timeout).
    pub(crate) async fn run(
        mut self,
        socket: Arc<crate::call::ports::MediaSocket>,
        rtcp: Option<UdpSocket>,
        mut control: mpsc::Receiver<Control>,
        wheel: TimerWheel,
    ) {
        self.metrics.active_media.inc();
        let timer = wheel.timer();
        let mut playout = self.playout.clone();
        // The first packet (silence, or the agent's greeting) leaves at once.
        let mut running = self.service(&socket, rtcp.as_ref(), &timer).await;
        while running {
            tokio::select! {
                c = control.recv() => match c {
                    Some(Control::Media(m)) => {
                        self.update_media(*m);
                        running = self.service(&socket, rtcp.as_ref(), &timer).await;
                    }
                    Some(Control::Dtmf(digits)) => {
                        let taken = self.playout.push_digits(&digits);
                        if taken < digits.len() {
                            tracing::debug!(call_id = %self.call_id, taken, "DTMF queue full; digits dropped");
                        }
                        running = self.service(&socket, rtcp.as_ref(), &timer).await;
                    }
                    Some(Control::Join { own, peer }) => {
                        self.join(own, peer);
                        running = self.service(&socket, rtcp.as_ref(), &timer).await;
                    }
                    Some(Control::Stop) | None => break,
                },
                r = socket.readable() => match r {
                    Ok(()) => self.drain(&socket, "RTP", |me, data, from| {
                        // RFC 5761 multiplexing: some peers send RTCP on the RTP port.
                        if me.on_datagram(data, from, looks_like_rtcp(data)) {
                            me.forward_caller(&timer);
                        }
                    }),
                    Err(e) => tracing::debug!(call_id = %self.call_id, error = %e, "RTP socket error"),
                },
                r = readable_opt(rtcp.as_ref()) => {
                    if let (Ok(()), Some(rtcp)) = (r, rtcp.as_ref()) {
                        self.drain(rtcp, "RTCP", |me, data, from| {
                            me.on_datagram(data, from, true);
                        });
                    }
                }
                _ = timer.fired() => {
                    self.armed = None;
                    running = self.service(&socket, rtcp.as_ref(), &timer).await;
                }
                _ = playout.audio_ready() => {
                    running = self.service(&socket, rtcp.as_ref(), &timer).await;
                }
            }
            if !Arc::ptr_eq(&playout, &self.playout) {
                // Joined: our audio now comes from the other call.
                playout = self.playout.clone();
            }
        }
        drop(timer);
        self.finish(rtcp.as_ref()).await;
        self.metrics.active_media.dec();
    }

    /// Reads what `socket` holds (at most [`DRAIN_BATCH`] datagrams, then the loop lets the
    /// other branches run) and hands each datagram to `handle` as it comes. The receive
    /// buffer lives on this synchronous call's stack, not in the engine's future: a call
    /// then keeps no 2 KiB buffers between packets.
    fn drain(
        &mut self,
        socket: &UdpSocket,
        what: &'static str,
        mut handle: impl FnMut(&mut Self, &[u8], SocketAddr),
    ) {
        let mut buf = [0u8; MAX_DATAGRAM];
        for _ in 0..DRAIN_BATCH {
            match socket.try_recv_from(&mut buf) {
                Ok((n, from)) => handle(self, buf.get(..n).unwrap_or_default(), from),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // ICMP errors surface on the next receive; they are not fatal for RTP.
                Err(e) => {
                    tracing::debug!(call_id = %self.call_id, error = %e, "{what} receive error")
                }
            }
        }
    }

    /// Arms the timer for the earliest of `at` and the caller audio's gap deadline.
    fn arm(&mut self, timer: &Timer, at: Duration) {
        let at = match self.jitter.deadline() {
            Some(d) => d.min(at),
            None => at,
        };
        if self.armed != Some(at) {
            self.armed = Some(at);
            timer.set(self.epoch + at);
        }
    }

    /// Bridges this call to another call's media (see [`Control::Join`]): the agent's queue
    /// is left behind (the agent session is leaving) and the agent hears nothing more.
    fn join(&mut self, own: Arc<JoinPort>, peer: Arc<JoinPort>) {
        own.set_law(self.law);
        self.playout = own.playout.clone();
        // A sender whose receiver is gone: `to_agent` becomes a no-op.
        let (closed, _) = crate::agent::caller_queue::queue(1);
        self.caller = closed;
        self.pacer.set_grace(JOINED_GRACE);
        tracing::info!(call_id = %self.call_id, "media bridged to another call");
        self.joined = Some((own, peer));
    }

    /// Caller -> agent (or the bridged call): hands every frame the reorder buffer releases
    /// on at once.
    fn forward_caller(&mut self, timer: &Timer) {
        let now = self.now();
        if let Some((_, peer)) = &self.joined {
            while let Some(out) = self.jitter.pop(now) {
                let mut frame = [self.law.silence(); FRAME_BYTES];
                if let Output::Frame { data, .. } = out {
                    let n = data.len().min(FRAME_BYTES);
                    frame[..n].copy_from_slice(&data[..n]);
                } else {
                    self.metrics.caller_frames_concealed.inc();
                }
                g711::transcode_in_place(self.law, peer.law(), &mut frame);
                if !peer.deliver(&frame) {
                    self.metrics.bridge_frames_dropped.inc();
                }
            }
        } else {
            self.forward_to_agent(now);
        }
        // A gap now waiting for its deadline needs the timer earlier than the next packet out.
        if let Some(armed) = self.armed {
            self.arm(timer, armed);
        }
    }

    /// Caller -> agent: every released frame in μ-law with its stream timestamp, at once.
    fn forward_to_agent(&mut self, now: Duration) {
        while let Some(out) = self.jitter.pop(now) {
            let mut frame = [0u8; FRAME_BYTES];
            match out {
                Output::Frame { data, .. } => {
                    let n = data.len().min(FRAME_BYTES);
                    frame[..n].copy_from_slice(&data[..n]);
                    frame[n..].fill(self.law.silence());
                    g711::to_ulaw_in_place(self.law, &mut frame);
                }
                // A lost frame with audio after it: the agent's stream keeps its 20 ms steps.
                Output::Concealed { .. } => {
                    self.metrics.caller_frames_concealed.inc();
                    frame.fill(g711::ULAW_SILENCE);
                }
            }
            let timestamp_ms = self.agent_frames.saturating_mul(FRAME_MS);
            self.agent_frames += 1;
            self.to_agent(CallerEvent::Audio {
                frame,
                timestamp_ms,
            });
        }
    }

    /// Does whatever is due now (caller frames past their gap deadline, the next RTP packet,
    /// DTMF end, RTP timeout, RTCP) and arms the timer for the next thing. Returns false when
    /// the call must end.
    async fn service(
        &mut self,
        socket: &UdpSocket,
        rtcp: Option<&UdpSocket>,
        timer: &Timer,
    ) -> bool {
        let now = self.now();
        self.forward_caller(timer);
        let mut next = now + IDLE_WAKE;
        if !self.on_hold() {
            loop {
                let queued = self.playout.has_audio();
                match self.pacer.poll(now, queued) {
                    Next::Send { skip_frames } => {
                        if skip_frames > 0 {
                            // The task woke late (a stalled runtime): the RTP clock moves on so
                            // the peer sees a gap in time, not a burst.
                            self.metrics.tick_overruns.inc_by(u64::from(skip_frames));
                            self.sender.skip(FRAME_SAMPLES.wrapping_mul(skip_frames));
                        }
                        let (audio, backlog) = self.send_frame(socket).await;
                        self.pacer.sent(now, skip_frames, audio, backlog);
                    }
                    Next::At(t) => {
                        next = t;
                        break;
                    }
                }
            }
        }
        self.dtmf.poll(now);
        if !self.on_hold()
            && let Some(limit) = self.settings.rtp_timeout
        {
            let expires = self.last_rx + limit;
            if now >= expires {
                tracing::warn!(call_id = %self.call_id, timeout = ?limit, "no RTP from the caller; hanging up");
                self.hangup.hangup(reason::RTP_TIMEOUT);
                return false;
            }
            next = next.min(expires);
        }
        if now >= self.next_rtcp {
            self.next_rtcp = now + rtcp_interval();
            self.send_report(rtcp, false).await;
        }
        next = next.min(self.next_rtcp);
        self.arm(timer, next);
        true
    }

    fn update_media(&mut self, m: MediaParams) {
        let was_hold = self.on_hold();
        if m.srtp != self.media.srtp {
            // New keys (a rekey, or encryption switched on or off): new contexts.
            self.srtp = srtp_session(&self.call_id, m.srtp.as_ref());
        }
        if m.codec != self.media.codec || m.payload_type != self.media.payload_type {
            self.law = law_of(m.codec);
            if let Some((own, _)) = &self.joined {
                own.set_law(self.law);
            }
            self.sender.payload_type = m.payload_type;
            // Frames already buffered are in the old codec: start afresh (rare, so allocating
            // a new buffer here is fine).
            self.jitter = JitterBuffer::new(jitter_config(self.law, &self.settings));
        }
        if m.remote.is_some() && m.remote != self.media.remote {
            // A new address in the SDP: its RTCP address is unknown again.
            self.rtcp_remote = None;
        }
        // A re-INVITE or UPDATE that changed the media: the peer may have moved, so the
        // learning window opens again (the signalled address keeps its preference).
        self.learner.media_changed(m.remote, self.now());
        self.media = m;
        if was_hold && !self.on_hold() {
            // The RTP timeout was suspended during hold: it starts again now. Our timestamp
            // advances by the time on hold and the next packet (marked) leaves at once.
            let now = self.now();
            self.last_rx = now;
            let skipped = self.pacer.resume(now);
            self.sender.skip(FRAME_SAMPLES.wrapping_mul(skipped));
        }
        tracing::debug!(call_id = %self.call_id, hold = self.on_hold(), remote = ?self.remote(), "media updated");
    }

    /// Applies the source rules to a packet (see [`crate::media::source`]).
    fn accept_source(&mut self, from: SocketAddr, ssrc: u32, seq: u16, now: Duration) -> bool {
        match self.learner.on_packet(from, ssrc, seq, now) {
            Verdict::Accept => true,
            Verdict::Learned => {
                let signalled = self.learner.signalled();
                tracing::info!(call_id = %self.call_id, %from, ?signalled, "RTP source learned");
                if Some(normalize(from.ip())) != signalled.map(|a| a.ip()) {
                    self.metrics.rtp_sources_learned.inc();
                }
                // The peer's RTCP address is tied to its RTP address: learn it afresh.
                self.rtcp_remote = None;
                true
            }
            Verdict::Drop => false,
        }
    }

    /// Handles one received datagram, RTP or RTCP, unprotecting it first on an encrypted
    /// call; true when it added audio to the reorder buffer.
    fn on_datagram(&mut self, data: &[u8], from: SocketAddr, is_rtcp: bool) -> bool {
        if self.media.srtp.is_none() {
            if is_rtcp {
                self.on_rtcp(data, from);
                return false;
            }
            return self.on_rtp(data, from);
        }
        let Some(s) = self.srtp.as_mut() else {
            self.drops.srtp_other.inc();
            return false;
        };
        let plain = if is_rtcp {
            s.unprotect_rtcp(data)
        } else {
            s.unprotect_rtp(data)
        };
        match plain {
            Ok(p) if is_rtcp => {
                self.on_rtcp(&p, from);
                false
            }
            Ok(p) => self.on_rtp(&p, from),
            Err(e) => {
                tracing::debug!(call_id = %self.call_id, %from, rtcp = is_rtcp, len = data.len(), head = ?data.get(..data.len().min(12)), error = %e, "SRTP datagram dropped");
                match e {
                    SrtpError::Auth => self.drops.srtp_auth.inc(),
                    SrtpError::Replay => self.drops.srtp_replay.inc(),
                    SrtpError::Unencrypted => self.drops.srtcp_unencrypted.inc(),
                    _ => self.drops.srtp_other.inc(),
                }
                false
            }
        }
    }

    /// Sends one RTP or RTCP packet, protected on an encrypted call.
    async fn send_packet(
        &mut self,
        socket: &UdpSocket,
        rtcp: bool,
        n: usize,
        to: SocketAddr,
    ) -> bool {
        let plain = if rtcp {
            &self.rtcp_out[..n]
        } else {
            &self.packet[..n]
        };
        let sent = if self.media.srtp.is_none() {
            socket.send_to(plain, to).await
        } else {
            let Some(s) = self.srtp.as_mut() else {
                return false;
            };
            let wire = if rtcp {
                s.protect_rtcp(plain)
            } else {
                s.protect_rtp(plain)
            };
            match wire {
                Ok(w) => socket.send_to(&w, to).await,
                Err(e) => {
                    tracing::debug!(call_id = %self.call_id, error = %e, "SRTP protect failed");
                    return false;
                }
            }
        };
        match sent {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(call_id = %self.call_id, error = %e, "RTP send failed");
                false
            }
        }
    }

    /// Handles one RTP datagram; true when it added audio to the reorder buffer.
    fn on_rtp(&mut self, buf: &[u8], from: SocketAddr) -> bool {
        let Ok(pkt) = RtpPacket::parse(buf) else {
            self.drops.malformed.inc();
            return false;
        };
        let is_audio = pkt.payload_type == self.media.payload_type;
        let is_dtmf = self.media.dtmf_payload_type == Some(pkt.payload_type);
        if !is_audio && !is_dtmf && pkt.payload_type != PT_COMFORT_NOISE {
            self.drops.payload_type.inc();
            return false;
        }
        let now = self.now();
        if !self.accept_source(from, pkt.ssrc, pkt.sequence, now) {
            self.drops.source.inc();
            return false;
        }
        if self.source.as_ref().is_none_or(|s| s.ssrc != pkt.ssrc) {
            if let Some(old) = self.source.take() {
                // A new stream (the peer restarted it): its timestamps and sequence numbers
                // have nothing to do with the old ones.
                tracing::debug!(call_id = %self.call_id, old = old.ssrc, new = pkt.ssrc, "RTP SSRC changed");
                self.account_loss_of(&old);
                self.jitter = JitterBuffer::new(jitter_config(self.law, &self.settings));
                self.dtmf = DtmfDetector::default();
            }
            self.source = Some(Source {
                ssrc: pkt.ssrc,
                stats: ReceiverStats::new(8000),
                lost_counted: 0,
                last_sr: None,
            });
        }
        let Some(source) = self.source.as_mut() else {
            return false;
        };
        match source.stats.update(pkt.sequence, pkt.timestamp, now) {
            SeqUpdate::Valid { .. } => {}
            SeqUpdate::Probation | SeqUpdate::BadJump => {
                self.drops.sequence.inc();
                return false;
            }
        }
        self.last_rx = now;
        self.metrics.rtp_in.inc();
        if is_audio {
            if self
                .jitter
                .push(pkt.sequence, pkt.timestamp, pkt.payload, now)
                == Pushed::Late
            {
                self.metrics.caller_packets_late.inc();
            }
            return true;
        } else if is_dtmf {
            match self.dtmf.on_packet(pkt.timestamp, pkt.payload, now) {
                Ok(Some(press)) => {
                    if let Some(digit) = press.digit {
                        self.metrics.dtmf.with_label_values(&["rfc4733"]).inc();
                        tracing::debug!(call_id = %self.call_id, %digit, "RFC 4733 DTMF");
                        match &self.joined {
                            // Bridged: the digit goes on to the other call, by its own path.
                            Some((_, peer)) => {
                                peer.playout.push_digits(digit.encode_utf8(&mut [0; 4]));
                            }
                            None => self.to_agent(CallerEvent::Dtmf(digit)),
                        }
                    }
                }
                Ok(None) => {}
                Err(_) => self.drops.malformed.inc(),
            }
        }
        false
    }

    fn on_rtcp(&mut self, buf: &[u8], from: SocketAddr) {
        // Only from the host of the RTP source we accept (never from anywhere before we have
        // one), and inside the trunk's networks when restricted.
        let from = SocketAddr::new(normalize(from.ip()), from.port());
        let Some(remote) = self.remote() else {
            self.drops.source.inc();
            return;
        };
        if remote.ip() != from.ip() || !self.learner.allowed_ip(from) {
            self.drops.source.inc();
            return;
        }
        let now = self.now();
        // Where our RTCP goes: RTP port + 1 by default (RFC 3550), the RTP port itself when
        // multiplexed; another port of that host (NAT) only while the learning window is open,
        // so that a stray socket there cannot take our reports later.
        let usual = from.port() == remote.port().wrapping_add(1) || from.port() == remote.port();
        let may_move = usual || self.learner.learning(now) || self.rtcp_remote == Some(from);
        self.metrics.rtcp_in.inc();
        let mut valid = false;
        for p in rtcp::parse_compound(buf) {
            let Ok(p) = p else { break };
            valid = true;
            if let RtcpPacket::SenderReport { ssrc, info, .. } = p
                && let Some(source) = self.source.as_mut()
                && source.ssrc == ssrc
            {
                source.last_sr = Some(LastSenderReport::new(&info, now));
            }
        }
        if valid && may_move && from.port() != remote.port() {
            self.rtcp_remote = Some(from);
        }
    }

    /// Hands an event to the agent session without ever waiting for it.
    fn to_agent(&self, ev: CallerEvent) {
        match self.caller.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full) => self.metrics.agent_events_dropped.inc(),
            // No agent (none configured, or its session already ended): nothing to do.
            Err(TrySendError::Closed) => {}
        }
    }

    /// Agent -> caller: the next 20 ms of the playout queue as one RTP packet (silence when
    /// empty). Returns whether it carried agent audio and whether more is queued. With nowhere
    /// to send yet, the frame is taken and the RTP clock moves on, as if sent.
    async fn send_frame(&mut self, socket: &UdpSocket) -> (bool, bool) {
        if self.send_dtmf(socket).await {
            // The event takes this frame's place; the agent's audio waits behind it.
            return (false, false);
        }
        let (fill, left) = self.playout.next_frame(&mut self.frame);
        let backlog = left > 0;
        if fill.audio_bytes > 0 && fill.audio_bytes < FRAME_BYTES {
            self.metrics.playout_underruns.inc();
        }
        let audio = fill.audio_bytes > 0;
        let Some(to) = self.remote() else {
            self.sender.skip(FRAME_SAMPLES);
            return (audio, backlog);
        };
        match &self.joined {
            // The other call delivered in our law already; silence is ours too.
            Some(_) => self.frame[fill.audio_bytes.min(FRAME_BYTES)..].fill(self.law.silence()),
            None => g711::from_ulaw_in_place(self.law, &mut self.frame),
        }
        let Ok(n) = self
            .sender
            .write_audio(&self.frame, FRAME_SAMPLES, &mut self.packet)
        else {
            return (audio, backlog);
        };
        self.sent_since_report = true;
        if self.send_packet(socket, false, n, to).await {
            self.metrics.rtp_out.inc();
        }
        (audio, backlog)
    }

    /// Agent -> caller DTMF: when a digit is queued (or one is being sent), this frame's
    /// packet is its next RFC 4733 event packet (one per 20 ms, the event's start timestamp,
    /// the audio clock moving on); digits are 100 ms with 40 ms between them. When
    /// [`crate::call::dtmf_path`] says INFO the digits go to the SIP side instead, and with no
    /// path at all they are dropped. True when a packet took the frame.
    async fn send_dtmf(&mut self, socket: &UdpSocket) -> bool {
        let pt = self.media.dtmf_payload_type;
        let path = crate::call::dtmf_path(self.settings.dtmf_mode, pt.is_some());
        let Some(pt) = pt.filter(|_| path == Some(DtmfPath::Rtp)) else {
            // INFO is the SIP side's: hand the digits over in order; without a path, drop.
            while let Some(d) = self.playout.next_digit() {
                if path == Some(DtmfPath::Info) {
                    self.hangup.send_info_dtmf(d);
                } else {
                    tracing::debug!(call_id = %self.call_id, "DTMF dropped: the trunk allows only RFC 4733 and none was negotiated");
                }
            }
            return false;
        };
        if self.dtmf_out.is_none() {
            if self.dtmf_pause > 0 {
                self.dtmf_pause -= 1;
                return false;
            }
            let Some(d) = self.playout.next_digit() else {
                return false;
            };
            self.dtmf_out = EventGenerator::digit(d, self.sender.next_timestamp(), DTMF_DIGIT);
        }
        let Some(p) = self.dtmf_out.as_mut().and_then(Iterator::next) else {
            self.dtmf_out = None;
            self.dtmf_pause = DTMF_PAUSE_FRAMES;
            return false;
        };
        let written =
            self.sender
                .write_other(pt, p.marker, p.timestamp, &p.payload, &mut self.packet);
        self.sender.skip(FRAME_SAMPLES);
        let (Ok(n), Some(to)) = (written, self.remote()) else {
            return true;
        };
        self.sent_since_report = true;
        if self.send_packet(socket, false, n, to).await {
            self.metrics.rtp_out.inc();
        }
        true
    }

    fn account_loss_of(&self, source: &Source) {
        let lost = source.stats.lost();
        if lost > source.lost_counted {
            self.metrics
                .rtp_lost
                .inc_by(lost.saturating_sub(source.lost_counted) as u64);
        }
    }

    /// Sends an RTCP compound packet: SR when we sent RTP since the last report, else RR; with
    /// a report block on the source we receive; with a BYE when leaving.
    async fn send_report(&mut self, rtcp: Option<&UdpSocket>, bye: bool) {
        let now = self.now();
        let block = match self.source.as_mut() {
            Some(s) => {
                let report = s.stats.report();
                self.metrics
                    .rtp_jitter
                    .observe(s.stats.jitter_duration().as_secs_f64());
                let lost = s.stats.lost();
                if lost > s.lost_counted {
                    self.metrics
                        .rtp_lost
                        .inc_by(lost.saturating_sub(s.lost_counted) as u64);
                    s.lost_counted = lost;
                }
                Some(ReportBlock::from_reception(
                    s.ssrc,
                    &report,
                    s.last_sr.as_ref(),
                    now,
                ))
            }
            None => None,
        };
        let (Some(sock), Some(to)) = (
            rtcp,
            self.rtcp_remote.or_else(|| {
                self.remote()
                    .map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
            }),
        ) else {
            return;
        };
        let info = SenderInfo {
            ntp_timestamp: rtcp::ntp_timestamp(SystemTime::now()),
            // The RTP time that corresponds to "now" on our stream.
            rtp_timestamp: self.sender.next_timestamp(),
            packet_count: self.sender.packet_count(),
            octet_count: self.sender.octet_count(),
        };
        let report = if self.sent_since_report {
            Report::Sender(&info)
        } else {
            Report::Receiver
        };
        self.sent_since_report = false;
        let bye = bye.then_some(None);
        let Ok(n) = rtcp::write_compound(
            self.sender.ssrc,
            report,
            block.as_ref(),
            &self.cname,
            bye,
            &mut self.rtcp_out,
        ) else {
            return;
        };
        if self.send_packet(sock, true, n, to).await {
            self.metrics.rtcp_out.inc();
        }
    }

    async fn finish(&mut self, rtcp: Option<&UdpSocket>) {
        // The last report carries a BYE (RFC 3550 6.6); it also accounts the final loss/jitter.
        self.send_report(rtcp, true).await;
        let (received, lost, jitter) = self.source.as_ref().map_or((0, 0, Duration::ZERO), |s| {
            (
                s.stats.received(),
                s.stats.lost(),
                s.stats.jitter_duration(),
            )
        });
        let js = self.jitter.stats();
        tracing::info!(
            call_id = %self.call_id,
            rtp_received = received,
            rtp_lost = lost,
            jitter_ms = jitter.as_secs_f64() * 1000.0,
            rtp_sent = self.sender.packet_count(),
            jb_late = js.late,
            jb_concealed_frames = js.concealed_frames,
            jb_waited_frames = js.waited_frames,
            jb_hold_ms = self.jitter.hold().as_secs_f64() * 1000.0,
            "call media ended"
        );
    }
}

/// Waits until `socket` is readable; never, without a socket.
async fn readable_opt(socket: Option<&UdpSocket>) -> std::io::Result<()> {
    match socket {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_directions_pause_sending() {
        assert!(is_hold(Direction::RecvOnly));
        assert!(is_hold(Direction::Inactive));
        assert!(!is_hold(Direction::SendRecv));
        assert!(!is_hold(Direction::SendOnly));
    }

    #[test]
    fn codecs_map_to_laws_and_silence() {
        assert_eq!(law_of(Codec::Pcma), Law::Alaw);
        assert_eq!(law_of(Codec::Pcmu), Law::Ulaw);
        let s = EngineSettings {
            rtp_timeout: None,
            jitter_min: Duration::from_millis(40),
            jitter_max: Duration::from_millis(10),
            learning: LearningConfig::default(),
            networks: Vec::new(),
            signalling_ip: None,
            dtmf_mode: Default::default(),
        };
        let c = jitter_config(Law::Alaw, &s);
        assert_eq!(c.silence, g711::ALAW_SILENCE);
        assert!(c.max_hold >= c.min_hold);
    }
}
