//! The outbound engine: INVITE through a trunk's gateways by priority and
//! weight, digest on 401/407, failover on timeouts/408/478/5xx (or the
//! trunk's policy), then the number's fallback trunks in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use switchboard_proto::v1alpha1::{
    Agent, FailoverPolicy, Gateway, Outbound, PhoneNumber, Transport, Trunk,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::pacing::Ticket;
use super::session::{Session, SessionSetup};
use super::{CallDirection, Ctx, MediaParams};
use crate::routing;
use crate::sdp::{self, LocalMedia, Sdp};
use crate::sip::dialog::Dialog;
use crate::sip::digest::{self, Challenge};
use crate::sip::message::{Message, Method};
use crate::sip::session_timer;
use crate::sip::transaction::{ClientEvent, random_token};
use crate::sip::transport::{Peer, Proto};

/// What to dial.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DialRequest {
    /// The PhoneNumber id used as caller ID (its trunk carries the call).
    pub number_id: String,
    /// The callee, E.164 (with or without `+`).
    pub to: String,
}

/// Progress of a dial, reported to the call API as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialProgress {
    /// The pacing queue let the call start.
    Started,
    /// An INVITE goes to a gateway with this SIP Call-ID.
    Attempt {
        /// SIP Call-ID of the attempt.
        sip_call_id: String,
        /// Trunk id.
        trunk_id: String,
        /// `host:port`.
        gateway: String,
    },
    /// The first provisional answer above 100 (180/183) of the attempt.
    Ringing {
        /// Its status code.
        code: u16,
    },
}

/// Per-call controls the call API passes to [`dial_with`]; the default
/// (what [`dial`] uses) changes nothing.
#[derive(Default)]
pub struct DialHooks {
    /// A place in the trunk's pacing queue taken beforehand (so a full queue
    /// is refused synchronously); without one, [`dial_with`] queues itself.
    pub ticket: Option<Ticket>,
    /// Receives progress events, synchronously (an attempt is reported
    /// before its INVITE leaves, so its answer always finds the caller's
    /// bookkeeping in place). Must not block.
    #[allow(clippy::type_complexity)]
    pub progress: Option<Arc<dyn Fn(DialProgress) + Send + Sync>>,
    /// Cancels the dial: ringing attempts get a CANCEL, no further gateway
    /// is tried. (Before the first provisional answer RFC 3261 9.1 forbids
    /// CANCEL, so the attempt is abandoned to its transaction timeout.)
    pub cancel: Option<tokio_util::sync::CancellationToken>,
    /// Replaces the number's agent for this call.
    pub agent: Option<Agent>,
    /// Replaces the trunk's ringing timeout.
    pub ringing_timeout: Option<Duration>,
    /// Replaces the number's/trunk's maximum call duration.
    pub max_duration: Option<Duration>,
    /// Extra headers for every INVITE of the dial (validated by the call API).
    pub headers: Vec<(String, String)>,
    /// This dial is a dial-through transfer's new leg: no agent, bridged to
    /// the caller's leg when it answers.
    pub transfer: Option<TransferLeg>,
}

/// What makes a dial a dial-through transfer's new leg.
#[derive(Debug, Clone)]
pub struct TransferLeg {
    /// The caller's leg (it learns of the answer and bridges).
    pub caller: super::HangupHandle,
    /// The caller ID to present (E.164); empty: the number's.
    pub caller_id: String,
}

/// A caller's number usable as the caller ID of a new call (`+` and up to
/// 15 digits), or `None` (an anonymous or non-numeric From).
pub fn caller_id_of(from_user: &str) -> Option<String> {
    let digits = from_user.strip_prefix('+').unwrap_or(from_user);
    (!digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| from_user.to_owned())
}

impl DialHooks {
    fn report(&self, p: DialProgress) {
        if let Some(f) = &self.progress {
            f(p);
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }
}

/// Sleeps until `deadline`, or less when the dial is cancelled.
async fn deadline_or_cancel(deadline: Instant, hooks: &DialHooks) {
    match &hooks.cancel {
        Some(c) => {
            tokio::select! {
                _ = sleep_until(deadline) => {}
                _ = c.cancelled() => {}
            }
        }
        None => sleep_until(deadline).await,
    }
}

/// One gateway tried.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attempt {
    /// Trunk id.
    pub trunk_id: String,
    /// `host:port`.
    pub gateway: String,
    /// Final status, if any.
    pub code: Option<u16>,
    /// `answered`, `rejected`, `timeout`, `ringing_timeout`, `error`...
    pub result: String,
    /// For `error`: what failed locally (a TLS certificate refused, no route...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of [`dial`].
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum DialOutcome {
    /// The callee answered; the call runs until a BYE.
    Answered {
        /// SIP Call-ID of the established call.
        call_id: String,
        /// Trunk that carried it.
        trunk_id: String,
        /// Gateway that answered.
        gateway: String,
        /// Every attempt, in order.
        attempts: Vec<Attempt>,
    },
    /// No gateway connected the call.
    Failed {
        /// The deciding SIP status (None for timeouts and local errors).
        code: Option<u16>,
        /// Human-readable reason.
        reason: String,
        /// Every attempt, in order.
        attempts: Vec<Attempt>,
    },
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// A final non-2xx status.
    Status(u16),
    /// No final answer in time (or the transport failed).
    Timeout,
}

/// The default policy when the trunk sets none: timeout, 408, 478, 5xx.
pub fn should_failover(policy: Option<&FailoverPolicy>, end: AttemptEnd) -> bool {
    match policy {
        None => match end {
            AttemptEnd::Timeout => true,
            AttemptEnd::Status(c) => c == 408 || c == 478 || (500..600).contains(&c),
        },
        Some(p) => match end {
            AttemptEnd::Timeout => p.on_timeout,
            AttemptEnd::Status(c) => {
                p.status_codes.contains(&u32::from(c))
                    || p.status_classes.contains(&u32::from(c / 100))
            }
        },
    }
}

/// Orders gateways: by priority, weighted-random among equal priorities,
/// and gateways known to be down dropped while any other is up.
pub fn order_gateways<R: Rng>(
    gws: &[Gateway],
    healthy: impl Fn(&Gateway) -> bool,
    rng: &mut R,
) -> Vec<Gateway> {
    let up: Vec<&Gateway> = gws.iter().filter(|g| healthy(g)).collect();
    let pool: Vec<&Gateway> = if up.is_empty() {
        gws.iter().collect()
    } else {
        up
    };
    let mut prios: Vec<u32> = pool.iter().map(|g| g.priority).collect();
    prios.sort_unstable();
    prios.dedup();
    let mut out = Vec::with_capacity(pool.len());
    for p in prios {
        let mut group: Vec<&Gateway> = pool.iter().copied().filter(|g| g.priority == p).collect();
        while !group.is_empty() {
            // Weight 0 still gets a small chance so it is tried eventually.
            let total: u64 = group.iter().map(|g| u64::from(g.weight.max(1))).sum();
            let mut pick = rng.random_range(0..total);
            let mut idx = 0;
            for (i, g) in group.iter().enumerate() {
                let w = u64::from(g.weight.max(1));
                if pick < w {
                    idx = i;
                    break;
                }
                pick -= w;
            }
            out.push(group.remove(idx).clone());
        }
    }
    out
}

/// The Request-URI user for a callee: tech prefix, optional `+`, digits.
pub fn request_user(to: &str, out: &Outbound) -> String {
    let digits: String = to.chars().filter(|c| c.is_ascii_digit()).collect();
    format!(
        "{}{}{digits}",
        out.tech_prefix,
        if out.leading_plus { "+" } else { "" }
    )
}

/// A gateway's port: its own, else 5061 for TLS and 5060 otherwise.
/// For a TLS gateway, a connection whose certificate verified against the gateway's
/// configured host (rustls: the name the trunk names, not an address from DNS), opened
/// unless one is open, before any request goes out: calls, registrations and health checks
/// then fail at once with the handshake's reason. Nothing to do for other transports.
pub(crate) async fn connect_gateway_tls(
    ctx: &Ctx,
    g: &Gateway,
    dest: &Peer,
    tls: Option<&switchboard_proto::v1alpha1::TlsClient>,
) -> Result<(), String> {
    if dest.proto != Proto::Tls {
        return Ok(());
    }
    let default = switchboard_proto::v1alpha1::TlsClient::default();
    let config = crate::sip::transport::tls::cached_client_config(tls.unwrap_or(&default))
        .map_err(|e| format!("TLS settings: {e}"))?;
    let name = g.host.trim_start_matches('[').trim_end_matches(']');
    ctx.sip
        .transport
        .connect_tls(dest.addr, name, config)
        .await
        .map_err(|e| e.to_string())
}

pub(crate) fn gateway_port(g: &Gateway) -> u16 {
    let default = if g.transport() == Transport::Tls {
        5061
    } else {
        5060
    };
    if g.port == 0 {
        default
    } else {
        u16::try_from(g.port).unwrap_or(default)
    }
}

/// Resolves a gateway to a transport address (first address of the name).
pub async fn resolve(g: &Gateway) -> Option<Peer> {
    let proto = match g.transport() {
        Transport::Tcp => Proto::Tcp,
        Transport::Tls => Proto::Tls,
        _ => Proto::Udp,
    };
    let port = gateway_port(g);
    let host = g.host.trim_start_matches('[').trim_end_matches(']');
    let addr: SocketAddr = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::net::lookup_host((host, port)).await.ok()?.next()?,
    };
    Some(Peer { proto, addr })
}

enum TryResult {
    Answered(String),
    End(AttemptEnd),
    RingingTimeout,
    Error(String),
}

/// Places a call. Returns once it is answered or every route failed.
pub async fn dial(ctx: Arc<Ctx>, req: DialRequest) -> DialOutcome {
    dial_with(ctx, req, DialHooks::default()).await
}

/// [`dial`] with the call API's controls: waits for its turn in the
/// primary trunk's pacing queue, then dials.
pub async fn dial_with(ctx: Arc<Ctx>, req: DialRequest, mut hooks: DialHooks) -> DialOutcome {
    let fail = |code: Option<u16>, reason: &str, attempts: Vec<Attempt>| DialOutcome::Failed {
        code,
        reason: reason.to_owned(),
        attempts,
    };
    if ctx.is_draining() {
        return fail(None, "node is draining", vec![]);
    }
    let Some(number) = ctx
        .routing
        .read(|t| t.number_by_id(&req.number_id).map(Arc::new))
    else {
        return fail(None, "not programmed", vec![]);
    };
    let Some(number) = number else {
        return fail(None, "unknown number", vec![]);
    };
    // A transfer's new leg is allowed by the trunk's transfer policy instead.
    if !number.outbound && hooks.transfer.is_none() {
        return fail(None, "number is not allowed as caller ID", vec![]);
    }
    if !req.to.chars().any(|c| c.is_ascii_digit()) {
        return fail(None, "invalid destination", vec![]);
    }
    // Wait for a concurrent slot and a CPS token on the primary trunk; the
    // permit is held until the dial returns (the registry counts the call
    // from then on).
    let ticket = match hooks.ticket.take() {
        Some(t) => Ok(t),
        None => ctx.pacing.enqueue(&number.trunk_id),
    };
    let _permit = match ticket {
        Ok(mut t) => {
            let cancel = hooks.cancel.clone().unwrap_or_default();
            tokio::select! {
                p = t.ready() => match p {
                    Ok(p) => p,
                    Err(e) => return fail(None, &e.to_string(), vec![]),
                },
                _ = cancel.cancelled() => return fail(None, "cancelled while queued", vec![]),
            }
        }
        Err(e) => return fail(None, &e.to_string(), vec![]),
    };
    hooks.report(DialProgress::Started);
    let mut attempts = Vec::new();
    let mut last_code = None;
    let trunk_ids: Vec<String> = std::iter::once(number.trunk_id.clone())
        .chain(number.fallback_trunk_ids.iter().cloned())
        .collect();
    for trunk_id in trunk_ids {
        // Looked up now, after the queue wait: the trunk as configured at
        // dial time.
        let Some(trunk) = ctx.routing.trunk(&trunk_id) else {
            continue;
        };
        let Some(out) = trunk
            .outbound
            .clone()
            .filter(|o| o.enabled && trunk.enabled)
        else {
            attempts.push(Attempt {
                trunk_id,
                gateway: String::new(),
                code: None,
                result: "disabled".into(),
                error: None,
            });
            continue;
        };
        let gws = {
            let mut rng = rand::rng();
            order_gateways(
                &out.gateways,
                |g| {
                    ctx.health
                        .is_healthy(&trunk.id, &format!("{}:{}", g.host, gateway_port(g)))
                },
                &mut rng,
            )
        };
        for g in gws {
            if hooks.cancelled() {
                return fail(None, "cancelled", attempts);
            }
            let name = format!("{}:{}", g.host, gateway_port(&g));
            let result = attempt(&ctx, &trunk, &out, &g, &number, &req.to, &hooks).await;
            let mut error = None;
            let (code, label, stop) = match &result {
                TryResult::Answered(call_id) => {
                    attempts.push(Attempt {
                        trunk_id: trunk.id.clone(),
                        gateway: name.clone(),
                        code: Some(200),
                        result: "answered".into(),
                        error: None,
                    });
                    ctx.metrics
                        .calls
                        .with_label_values(&["outbound", "answered", "200"])
                        .inc();
                    return DialOutcome::Answered {
                        call_id: call_id.clone(),
                        trunk_id: trunk.id.clone(),
                        gateway: name,
                        attempts,
                    };
                }
                TryResult::End(AttemptEnd::Status(c)) => (
                    Some(*c),
                    "rejected",
                    !should_failover(out.failover.as_ref(), AttemptEnd::Status(*c)),
                ),
                TryResult::End(AttemptEnd::Timeout) => (
                    None,
                    "timeout",
                    !should_failover(out.failover.as_ref(), AttemptEnd::Timeout),
                ),
                // The callee did not pick up: another route would not help.
                TryResult::RingingTimeout => (Some(487), "ringing_timeout", true),
                TryResult::Error(e) => {
                    tracing::warn!(trunk = %trunk.id, gateway = %name, error = %e, "outbound attempt failed locally");
                    error = Some(e.clone());
                    (None, "error", false)
                }
            };
            attempts.push(Attempt {
                trunk_id: trunk.id.clone(),
                gateway: name,
                code,
                result: label.into(),
                error: error.take(),
            });
            if code.is_some() {
                last_code = code;
            }
            if stop {
                let c = code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
                ctx.metrics
                    .calls
                    .with_label_values(&["outbound", "failed", &c])
                    .inc();
                let reason = if hooks.cancelled() {
                    "cancelled"
                } else if label == "ringing_timeout" {
                    "ringing timeout"
                } else {
                    "rejected by the carrier"
                };
                return fail(code, reason, attempts);
            }
        }
    }
    let c = last_code
        .map(|c| c.to_string())
        .unwrap_or_else(|| "none".into());
    ctx.metrics
        .calls
        .with_label_values(&["outbound", "failed", &c])
        .inc();
    fail(last_code, "every gateway failed", attempts)
}

async fn attempt(
    ctx: &Arc<Ctx>,
    trunk: &Trunk,
    out: &Outbound,
    g: &Gateway,
    number: &PhoneNumber,
    to: &str,
    hooks: &DialHooks,
) -> TryResult {
    let Some(dest) = resolve(g).await else {
        return TryResult::Error(format!(
            "cannot resolve or unsupported transport for {}",
            g.host
        ));
    };
    // Our offer carries a key when the trunk encrypts and keys may travel here; a trunk
    // that requires SRTP never gets a plain offer.
    let srtp_policy = super::srtp_policy_of(trunk, dest.proto);
    let offer_crypto = match (srtp_policy.encryption, srtp_policy.keys_allowed) {
        (sdp::Encryption::Disabled, _) | (sdp::Encryption::Optional, false) => None,
        (sdp::Encryption::Required, false) => {
            return TryResult::Error(
                "the trunk requires SRTP but its keys would travel in unencrypted SIP \
                 (use TLS or set media.allowSdesWithoutTls)"
                    .into(),
            );
        }
        (e, true) => Some(sdp::LocalCrypto {
            tag: 1,
            key: crate::media::srtp::MasterKey::random(
                crate::media::srtp::Suite::AesCm128HmacSha1_80,
            ),
            // Optional: RTP/AVP with a key (best-effort SRTP, RFC 8643), which most peers
            // without SRTP answer in plain RTP; one that refuses it with 488 or 606 gets the
            // same INVITE again without the key (below).
            savp: e == sdp::Encryption::Required,
        }),
    };
    // A wrong certificate fails this attempt now, with the reason, and the next gateway is
    // tried.
    if let Err(e) = connect_gateway_tls(ctx, g, &dest, out.tls.as_ref()).await {
        tracing::warn!(gateway = %g.host, error = %e, "TLS connection to the gateway failed");
        return TryResult::Error(e);
    }
    let gw_host = crate::sip::headers::host_port(&dest.addr);
    let user = request_user(to, out);
    let tparam = match dest.proto.uri_param() {
        Some("tcp") => ";transport=tcp",
        Some("tls") => ";transport=tls",
        _ => "",
    };
    let ruri = format!("sip:{user}@{gw_host}{tparam}");
    let from_domain = if out.from_domain.is_empty() {
        g.host.clone()
    } else {
        out.from_domain.clone()
    };
    let call_id = format!("{}@switchboard", random_token(20));
    let caller_id = hooks
        .transfer
        .as_ref()
        .map(|t| t.caller_id.as_str())
        .filter(|c| !c.is_empty())
        .unwrap_or(&number.e164);
    let from = format!("<sip:{caller_id}@{from_domain}>;tag={}", random_token(10));
    let to_hdr = format!("<sip:{user}@{gw_host}>");
    let contact = ctx.contact(number.e164.trim_start_matches('+'), &dest, false);

    let trunk_max = routing::channel_share(trunk);
    let guard = match ctx.calls.admit(
        &trunk.id,
        CallDirection::Outbound,
        &call_id,
        ctx.opts.max_calls,
        trunk_max,
    ) {
        Ok(g) => g,
        Err(true) => return TryResult::Error("node at capacity".into()),
        Err(false) => return TryResult::End(AttemptEnd::Status(486)),
    };
    let media_ip = ctx.sip.transport.media_ip(&dest.addr);
    let bind_ip = ctx.sip.transport.media_bind_ip(&dest.addr, media_ip);
    let socket = match ctx.ports.allocate(bind_ip) {
        Ok(s) => s,
        Err(e) => return TryResult::Error(e.to_string()),
    };
    let mut local = LocalMedia {
        session_id: rand::random::<u32>() as u64,
        version: 1,
        ip: media_ip,
        port: socket.local_addr().map(|a| a.port()).unwrap_or(0),
        crypto: offer_crypto,
    };
    let prefs = routing::codec_prefs(trunk);
    let want_dtmf = routing::wants_rfc4733(trunk);
    let fmts: Vec<(u8, &str)> = prefs
        .iter()
        .map(|c| (sdp::static_pt(*c), sdp::name(*c)))
        .collect();
    let build_offer = |local: &LocalMedia| {
        sdp::build(
            local,
            &fmts,
            want_dtmf.then_some(101),
            sdp::Direction::SendRecv,
        )
    };
    let mut offer = build_offer(&local);

    let ringing_secs = if out.ringing_timeout_seconds == 0 {
        60
    } else {
        out.ringing_timeout_seconds
    };
    let invited_at = Instant::now();
    let deadline = Instant::now()
        + hooks
            .ringing_timeout
            .unwrap_or(Duration::from_secs(u64::from(ringing_secs)));
    let mut cseq = 1u32;
    let mut auth: Option<(&'static str, String)> = None;
    let mut auth_tries = 0;
    loop {
        let mut inv = Message::request(Method::Invite, ruri.clone());
        inv.add("From", from.clone());
        inv.add("To", to_hdr.clone());
        inv.add("Call-ID", call_id.clone());
        inv.add("CSeq", format!("{cseq} INVITE"));
        inv.add("Contact", contact.clone());
        inv.add("Allow", crate::sip::ALLOW);
        inv.add("Supported", "timer");
        inv.add(
            "Session-Expires",
            format!("{};refresher=uac", ctx.opts.session_expires),
        );
        inv.add("Min-SE", ctx.opts.min_se.to_string());
        inv.add("User-Agent", crate::sip::USER_AGENT);
        if let Some((name, value)) = &auth {
            inv.add(name, value.clone());
        }
        for (name, value) in &hooks.headers {
            inv.add(name, value.clone());
        }
        inv.set_body("application/sdp", offer.clone().into_bytes());
        hooks.report(DialProgress::Attempt {
            sip_call_id: call_id.clone(),
            trunk_id: trunk.id.clone(),
            gateway: gw_host.clone(),
        });
        let (txn, mut events) = ctx.sip.request(inv.clone(), dest);
        let mut ringing = false;
        let resp = loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ClientEvent::Response(r)) => match r.code() {
                        Some(c) if c > 100 && c < 200 => {
                            if !ringing {
                                hooks.report(DialProgress::Ringing { code: c });
                            }
                            ringing = true;
                        }
                        Some(c) if c < 200 => {}
                        Some(_) => break r,
                        None => {}
                    },
                    _ => return TryResult::End(AttemptEnd::Timeout),
                },
                _ = deadline_or_cancel(deadline, hooks) => {
                    if !ringing {
                        // RFC 3261 9.1: no CANCEL before a provisional; the
                        // transaction times out on its own.
                        return TryResult::End(AttemptEnd::Timeout);
                    }
                    let _cancel = ctx.sip.cancel(&txn);
                    // Wait for the INVITE's final answer (487, or a racing 2xx).
                    let end = Instant::now() + crate::sip::transaction::T64;
                    loop {
                        tokio::select! {
                            ev = events.recv() => match ev {
                                Some(ClientEvent::Response(r)) if r.code().is_some_and(|c| (200..300).contains(&c)) => {
                                    // Answered just as we cancelled: ACK, then hang up.
                                    if let Ok(mut d) = Dialog::uac(&inv, &r, dest, contact.clone()) {
                                        ctx.sip.ack(Some(&txn), d.ack(cseq), d.next_hop());
                                        let bye = d.request(Method::Bye);
                                        let _ = ctx.sip.request(bye, d.next_hop());
                                    }
                                    break;
                                }
                                Some(ClientEvent::Response(r)) if r.code().is_some_and(|c| c >= 300) => break,
                                Some(_) => {}
                                None => break,
                            },
                            _ = sleep_until(end) => break,
                        }
                    }
                    return TryResult::RingingTimeout;
                }
            }
        };
        let code = resp.code().unwrap_or(500);
        if (code == 401 || code == 407) && auth_tries < 2 {
            let Some(creds) = out.auth.as_ref().filter(|c| !c.username.is_empty()) else {
                return TryResult::End(AttemptEnd::Status(code));
            };
            let (ch_name, auth_name) = if code == 401 {
                ("WWW-Authenticate", "Authorization")
            } else {
                ("Proxy-Authenticate", "Proxy-Authorization")
            };
            let Some(ch) = resp
                .headers_named(ch_name)
                .find_map(|v| Challenge::parse(v).ok())
            else {
                return TryResult::End(AttemptEnd::Status(code));
            };
            // A second challenge only makes sense when our nonce was stale.
            if auth_tries == 1 && !ch.stale {
                return TryResult::End(AttemptEnd::Status(code));
            }
            auth_tries += 1;
            let value = digest::authorization(
                &ch,
                &creds.username,
                &creds.password,
                "INVITE",
                &ruri,
                1,
                &random_token(16),
            );
            auth = Some((auth_name, value));
            cseq += 1;
            continue;
        }
        if (code == 488 || code == 606)
            && srtp_policy.encryption == sdp::Encryption::Optional
            && local.crypto.is_some()
        {
            // The peer refuses SRTP offers: try once more in plain RTP, as a new INVITE in
            // the same call (RFC 3261 14.1 ordering: next CSeq). The digest credentials
            // are dropped with it, so the carrier challenges afresh rather than seeing a
            // reused nonce count.
            tracing::info!(%call_id, gateway = %gw_host, code, "SRTP offer refused; retrying without a key");
            ctx.metrics.srtp_plain_retries.inc();
            local.crypto = None;
            offer = build_offer(&local);
            auth = None;
            auth_tries = 0;
            cseq += 1;
            continue;
        }
        if !(200..300).contains(&code) {
            return TryResult::End(AttemptEnd::Status(code));
        }
        // Answered.
        let mut dialog = match Dialog::uac(&inv, &resp, dest, contact.clone()) {
            Ok(d) => d,
            Err(e) => return TryResult::Error(e.to_string()),
        };
        dialog.peer = dest;
        // The dialog is routable before the ACK leaves: a carrier may send an
        // in-dialog request (an UPDATE, a re-INVITE) the moment the ACK
        // arrives, and it must not find the dialog missing (481). Requests
        // that arrive before the session runs wait in its channel.
        let (tx, rx) = mpsc::unbounded_channel();
        ctx.calls.register_dialog(
            &dialog.call_id,
            &dialog.local_tag,
            &dialog.remote_tag,
            tx.clone(),
        );
        ctx.sip.ack(Some(&txn), dialog.ack(cseq), dialog.next_hop());
        let answer = Sdp::parse(&String::from_utf8_lossy(&resp.body)).ok();
        let media = media_from_answer(
            answer.as_ref(),
            &prefs,
            want_dtmf,
            srtp_policy,
            local.crypto.as_ref(),
        );
        let timer = session_timer::uac_from_response(&resp);
        let mut session = Session::new(
            ctx,
            SessionSetup {
                dialog,
                direction: CallDirection::Outbound,
                trunk,
                number,
                from_user: caller_id.to_owned(),
                to_user: to.to_owned(),
                // A transfer's new leg has no agent: it is bridged to the caller.
                agent: match hooks.transfer {
                    Some(_) => None,
                    None => hooks.agent.clone().or_else(|| number.agent.clone()),
                },
                local,
                socket,
                media,
                prefs,
                want_dtmf,
                timer,
                channel: (tx, rx),
                guard,
                peer_msg: &resp,
                max_duration: hooks.max_duration,
                local_sdp: offer,
                started: invited_at.into_std(),
                media_networks: super::media_networks_of(trunk, dest.addr.ip()),
                sip_headers: Vec::new(),
                srtp_policy,
                transfer_of: hooks.transfer.as_ref().map(|t| t.caller.clone()),
            },
        );
        if srtp_policy.encryption == sdp::Encryption::Required && session.media.srtp.is_none() {
            // Answered without a usable key: the trunk never carries plain media.
            tracing::warn!(%call_id, "SDP answer has no usable SRTP key; hanging up");
            ctx.metrics.reject("srtp_required");
            let _ = session
                .tx
                .send(super::CallMsg::Hangup("SRTP required".into()));
            tokio::spawn(session.established());
            return TryResult::Answered(call_id);
        }
        match sdp::check_remote(
            session.media.remote,
            dest.addr.ip(),
            &session.media_networks,
        ) {
            Ok(()) => session.answered(),
            Err(e) => {
                // Answered, but we will not stream there: end the call at once, no media.
                tracing::warn!(%call_id, error = %e, "SDP answer refused; hanging up");
                ctx.metrics.reject("media_address");
                let _ = session.tx.send(super::CallMsg::Hangup(
                    super::session::MEDIA_ADDRESS_REFUSED.into(),
                ));
            }
        }
        tokio::spawn(session.established());
        return TryResult::Answered(call_id);
    }
}

/// Our media after the answer to our offer; SRTP when we offered a key and the answer
/// accepted it (same tag) with its own.
fn media_from_answer(
    answer: Option<&Sdp>,
    prefs: &[switchboard_proto::v1alpha1::Codec],
    want_dtmf: bool,
    policy: sdp::SrtpPolicy,
    ours: Option<&sdp::LocalCrypto>,
) -> MediaParams {
    let fallback = MediaParams::unanswered(prefs[0], None);
    let Some(a) = answer else { return fallback };
    // A key in an answer to a plain offer means nothing: negotiate it as plain.
    let policy = if ours.is_some() {
        policy
    } else {
        sdp::SrtpPolicy::PLAIN
    };
    match sdp::negotiate_with(a, prefs, want_dtmf, policy) {
        // The answer's direction is from the peer's view; ours mirrors it.
        Ok(n) => {
            let srtp = match (ours, &n.srtp) {
                (Some(o), Some(t)) if t.tag == o.tag && t.key.suite() == o.key.suite() => {
                    Some(super::SrtpKeys {
                        local: o.key.clone(),
                        remote: t.key.clone(),
                    })
                }
                _ => None,
            };
            MediaParams::negotiated(&n, n.offered.answer_to(), srtp)
        }
        Err(_) => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn gw(host: &str, priority: u32, weight: u32) -> Gateway {
        Gateway {
            host: host.into(),
            port: 5060,
            priority,
            weight,
            ..Default::default()
        }
    }

    #[test]
    fn failover_defaults_and_policy() {
        for (end, want) in [
            (AttemptEnd::Timeout, true),
            (AttemptEnd::Status(408), true),
            (AttemptEnd::Status(478), true),
            (AttemptEnd::Status(503), true),
            (AttemptEnd::Status(486), false),
            (AttemptEnd::Status(600), false),
            (AttemptEnd::Status(603), false),
            (AttemptEnd::Status(404), false),
        ] {
            assert_eq!(should_failover(None, end), want, "{end:?}");
        }
        let p = FailoverPolicy {
            on_timeout: false,
            status_codes: vec![480],
            status_classes: vec![5],
        };
        assert!(!should_failover(Some(&p), AttemptEnd::Timeout));
        assert!(should_failover(Some(&p), AttemptEnd::Status(480)));
        assert!(should_failover(Some(&p), AttemptEnd::Status(502)));
        assert!(!should_failover(Some(&p), AttemptEnd::Status(408)));
    }

    #[test]
    fn gateways_by_priority_then_weight_skipping_dead() {
        let gws = vec![
            gw("c", 2, 1),
            gw("a", 1, 1000),
            gw("b", 1, 1),
            gw("dead", 0, 1),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut first_a = 0;
        for _ in 0..200 {
            let o = order_gateways(&gws, |g| g.host != "dead", &mut rng);
            let hosts: Vec<&str> = o.iter().map(|g| g.host.as_str()).collect();
            assert_eq!(hosts.len(), 3);
            assert_eq!(hosts[2], "c");
            if hosts[0] == "a" {
                first_a += 1;
            }
        }
        assert!(
            first_a > 180,
            "weight 1000 vs 1 should almost always win: {first_a}"
        );
        let all_dead = order_gateways(&gws, |_| false, &mut rng);
        assert_eq!(all_dead.len(), 4, "when everything is down, try everything");
        assert_eq!(all_dead[0].host, "dead");
    }

    #[test]
    fn request_user_applies_prefix_and_plus() {
        let mut out = Outbound::default();
        assert_eq!(request_user("+1 (555) 000-1111", &out), "15550001111");
        out.leading_plus = true;
        assert_eq!(request_user("15550001111", &out), "+15550001111");
        out.tech_prefix = "9#".into();
        assert_eq!(request_user("+15550001111", &out), "9#+15550001111");
    }
}
