//! Admission of inbound INVITEs: source ACL, trunk state, number lookup,
//! digest challenge, capacity and channel share, offer/answer — then the
//! call's task takes over.
//!
//! Order matters for privacy: a source that belongs to no trunk gets 403
//! before the number is even looked at, so it never learns whether a number
//! exists.

use std::sync::Arc;

use switchboard_proto::v1alpha1::Trunk;
use tokio::sync::mpsc;

use super::session::Session;
use super::session_timer;
use super::{CallDirection, CallMsg, Ctx, HangupReason, MediaParams, PendingCall};
use crate::routing;
use crate::sdp::{self, LocalMedia, Sdp};
use crate::sip::dialog::{Dialog, scheme_of, wants_sips};
use crate::sip::digest::{Check, DigestFailure, Verdict};
use crate::sip::headers::{SipUri, uri_text};
use crate::sip::message::{Message, reason_phrase};
use crate::sip::transaction::{ServerRequest, random_token};
use crate::sip::transport::Proto;

/// An inbound INVITE refused before a call exists.
struct Reject {
    code: u16,
    reason: &'static str,
    headers: Vec<(&'static str, String)>,
}

impl Reject {
    fn new(code: u16, reason: &'static str) -> Self {
        Reject {
            code,
            reason,
            headers: Vec::new(),
        }
    }
}

/// The called user: Request-URI user, To user as fallback.
pub fn called_user(msg: &Message) -> Option<String> {
    let from_ruri = msg
        .request_uri()
        .and_then(|u| SipUri::parse(u).ok())
        .and_then(|u| u.user);
    from_ruri.filter(|u| !u.is_empty()).or_else(|| {
        msg.header("To")
            .and_then(|t| SipUri::parse(uri_text(t)).ok())
            .and_then(|u| u.user)
    })
}

fn user_of(value: Option<&str>) -> String {
    value
        .and_then(|v| SipUri::parse(uri_text(v)).ok())
        .and_then(|u| u.user)
        .unwrap_or_default()
}

/// Which trunk an allowed source's call to a number belongs to:
/// `Ok(trunk)`, or the rejection. `source_trunks` are the configured trunks
/// the source may call through.
fn select_trunk<'a>(
    source_trunks: &'a [Arc<Trunk>],
    number: &switchboard_proto::v1alpha1::PhoneNumber,
) -> Result<&'a Trunk, Reject> {
    let candidates = std::iter::once(&number.trunk_id).chain(number.fallback_trunk_ids.iter());
    let mut disabled = false;
    for id in candidates {
        let Some(t) = source_trunks.iter().find(|t| t.id == *id) else {
            continue;
        };
        if t.enabled && t.inbound.as_ref().is_some_and(|i| i.enabled) {
            return Ok(t);
        }
        disabled = true;
    }
    if disabled {
        Err(Reject::new(403, "trunk_disabled"))
    } else {
        Err(Reject::new(404, "not_found"))
    }
}

/// Realm used when a trunk's auth names none.
const DEFAULT_REALM: &str = "switchboard";

fn realm_of(auth: &switchboard_proto::v1alpha1::InboundAuth) -> &str {
    if auth.realm.is_empty() {
        DEFAULT_REALM
    } else {
        auth.realm.as_str()
    }
}

/// Checks the request's Authorization against a trunk's inbound
/// credentials; `None` when the trunk has none. The digest must answer a
/// nonce issued to this source address, for this Request-URI.
fn verify_inbound(ctx: &Ctx, req: &ServerRequest, trunk: &Trunk) -> Option<Verdict> {
    let auth = trunk.inbound.as_ref()?.auth.as_ref()?;
    let creds = auth.credentials.as_ref()?;
    Some(ctx.digest.verify(&Check {
        header: req.msg.header("Authorization"),
        method: "INVITE",
        request_uri: req.msg.request_uri().unwrap_or_default(),
        source: req.peer.addr.ip(),
        realm: realm_of(auth),
        username: &creds.username,
        password: &creds.password,
    }))
}

/// Counts a refused Authorization by reason (not the normal first,
/// credential-less leg of a challenge).
fn count_digest_failure(ctx: &Ctx, reason: DigestFailure) {
    if reason != DigestFailure::Missing {
        ctx.metrics.digest_failure(reason.label());
    }
}

/// Handles a new INVITE (no To tag).
pub async fn handle_invite(ctx: Arc<Ctx>, req: ServerRequest) {
    let local_tag = random_token(10);
    match admit(&ctx, &req, &local_tag) {
        Ok((mut session, answer)) => {
            if prepare(&ctx, &mut session, &req).await {
                session.run_inbound(req, answer).await
            }
        }
        Err(rej) => {
            if rej.code != 401 {
                ctx.metrics.reject(rej.reason);
                ctx.metrics
                    .calls
                    .with_label_values(&["inbound", "rejected", &rej.code.to_string()])
                    .inc();
            }
            if rej.code == 403 && rej.reason == "acl" {
                tracing::warn!(source = %req.peer.addr, "INVITE from a source no trunk allows");
            } else {
                tracing::info!(source = %req.peer.addr, code = rej.code, reason = rej.reason, "INVITE rejected");
            }
            let mut resp = req
                .msg
                .response(rej.code, reason_phrase(rej.code), Some(&local_tag));
            for (k, v) in rej.headers {
                resp.add(k, v);
            }
            // Unauthorised or unauthenticated sources get their answer once
            // (no Timer G): a spoofed INVITE must not reflect a burst.
            if matches!(rej.code, 401 | 403) {
                ctx.sip.respond_once(&req.id, resp);
            } else {
                ctx.sip.respond(&req.id, resp);
            }
        }
    }
}

/// Runs the handler's pre-answer hook (connecting the agent) while the call
/// rings, still honouring CANCEL. True when the call may be answered; false
/// when it was refused or cancelled (the INVITE has its final response).
async fn prepare(ctx: &Arc<Ctx>, session: &mut Session, req: &ServerRequest) -> bool {
    let pending = PendingCall {
        call_id: session.dialog.call_id.clone(),
        direction: session.direction,
        trunk_id: session.trunk_id.clone(),
        number_id: session.number_id.clone(),
        from: session.from_user.clone(),
        to: session.to_user.clone(),
        agent: session.agent.clone(),
    };
    let mut fut = ctx.handler.prepare(&pending);
    let local_tag = session.dialog.local_tag.clone();
    let (code, reason, retry_after, why) = loop {
        tokio::select! {
            r = &mut fut => match r {
                Ok(p) => {
                    session.prepared = p;
                    return true;
                }
                Err(rej) => break (rej.code, rej.reason, rej.retry_after, HangupReason::Local(rej.reason.to_owned())),
            },
            msg = session.rx.recv() => match msg {
                Some(CallMsg::Cancel(c)) => {
                    let ok = c.msg.response(200, "OK", Some(&local_tag));
                    ctx.sip.respond(&c.id, ok);
                    ctx.metrics.calls.with_label_values(&["inbound", "cancelled", "487"]).inc();
                    let resp = req.msg.response(487, reason_phrase(487), Some(&local_tag));
                    ctx.sip.respond(&req.id, resp);
                    end_unanswered(ctx, session, req, HangupReason::Cancelled);
                    return false;
                }
                Some(CallMsg::Hangup(reason)) => break (480, "hangup_before_answer", None, HangupReason::Local(reason)),
                Some(CallMsg::Request(r)) => {
                    // Nothing but CANCEL is valid from the caller in an early dialog we created.
                    let code = if r.msg.method() == Some(crate::sip::message::Method::Bye) { 481 } else { 491 };
                    let resp = r.msg.response(code, reason_phrase(code), Some(&local_tag));
                    ctx.sip.respond(&r.id, resp);
                }
                Some(_) => {}
                None => return false,
            }
        }
    };
    tracing::info!(call_id = %session.dialog.call_id, code, reason, "INVITE refused before answer");
    ctx.metrics.reject(reason);
    ctx.metrics
        .calls
        .with_label_values(&["inbound", "rejected", &code.to_string()])
        .inc();
    let mut resp = req
        .msg
        .response(code, reason_phrase(code), Some(&local_tag));
    if let Some(secs) = retry_after {
        resp.add("Retry-After", secs.to_string());
    }
    ctx.sip.respond(&req.id, resp);
    end_unanswered(ctx, session, req, why);
    false
}

/// Forgets a call that ended before its answer (the guard is released when
/// the session is dropped).
fn end_unanswered(ctx: &Arc<Ctx>, session: &Session, req: &ServerRequest, reason: HangupReason) {
    ctx.calls.unregister_invite(&req.id);
    ctx.calls
        .unregister_dialog(&session.dialog.call_id, &session.dialog.local_tag);
    tracing::info!(call_id = %session.dialog.call_id, trunk = %session.trunk_id, ?reason, "call ended");
}

fn admit(
    ctx: &Arc<Ctx>,
    req: &ServerRequest,
    local_tag: &str,
) -> Result<(Session, String), Reject> {
    let retry = || vec![("Retry-After", ctx.opts.retry_after_secs.to_string())];
    if ctx.is_draining() {
        return Err(Reject {
            code: 503,
            reason: "draining",
            headers: retry(),
        });
    }
    // One short read section takes the trunks this source may use; the
    // number is looked up after authentication, below.
    let source = req.peer.addr.ip();
    let Some((mut source_trunks, mut auth_only)) = ctx.routing.read(|table| {
        let by_acl: Vec<Arc<Trunk>> = table
            .trunks_for_source(source)
            .into_iter()
            .filter_map(|id| table.trunk(id).cloned())
            .collect();
        // Trunks with digest auth and no allowedSources take calls from any
        // source that authenticates.
        let auth_only: Vec<Arc<Trunk>> = if by_acl.is_empty() {
            table
                .trunks()
                .filter(|t| {
                    t.inbound.as_ref().is_some_and(|i| {
                        i.enabled
                            && i.allowed_sources.is_empty()
                            && i.auth.as_ref().is_some_and(|a| a.credentials.is_some())
                    })
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        (by_acl, auth_only)
    }) else {
        return Err(Reject {
            code: 503,
            reason: "not_programmed",
            headers: retry(),
        });
    };
    // Unknown schemes got 416 in dispatch already.
    let scheme = scheme_of(req.msg.request_uri().unwrap_or_default());
    if scheme == "sips" && req.peer.proto != Proto::Tls {
        // A SIPS request promises TLS on every hop (RFC 5630 3.1.3); this one came over an
        // unencrypted transport, so that promise is already broken.
        return Err(Reject::new(416, "sips_without_tls"));
    }
    let mut pre_authenticated = false;
    if source_trunks.is_empty() {
        // Authenticate before looking the number up, so an unauthenticated
        // source learns nothing about numbers.
        if auth_only.is_empty() {
            return Err(Reject::new(403, "acl"));
        }
        auth_only.sort_by(|a, b| a.id.cmp(&b.id));
        // Of the refusals (one per candidate trunk), the one that got
        // furthest says why: it is the trunk the caller meant.
        let mut failure = DigestFailure::Missing;
        for t in &auth_only {
            match verify_inbound(ctx, req, t) {
                Some(Verdict::Ok) => source_trunks.push(t.clone()),
                Some(Verdict::Refused(f)) => failure = failure.max(f),
                None => {}
            }
        }
        if source_trunks.is_empty() {
            count_digest_failure(ctx, failure);
            let stale = Verdict::Refused(failure).stale();
            if req.msg.header("Authorization").is_some() && !stale {
                ctx.metrics.reject("auth_failed");
            }
            let realm = auth_only
                .first()
                .and_then(|t| t.inbound.as_ref())
                .and_then(|i| i.auth.as_ref())
                .map(realm_of)
                .unwrap_or(DEFAULT_REALM);
            return Err(Reject {
                code: 401,
                reason: "auth_challenge",
                headers: vec![(
                    "WWW-Authenticate",
                    ctx.digest.challenge(realm, stale, req.peer.addr.ip()),
                )],
            });
        }
        pre_authenticated = true;
    }
    let usable = source_trunks
        .iter()
        .any(|t| t.enabled && t.inbound.as_ref().is_some_and(|i| i.enabled));
    if !usable {
        return Err(Reject::new(403, "trunk_disabled"));
    }
    let user = called_user(&req.msg).unwrap_or_default();
    let number = ctx
        .routing
        .read(|t| t.number_for(&user).cloned())
        .flatten()
        .ok_or_else(|| Reject::new(404, "not_found"))?;
    let trunk = select_trunk(&source_trunks, &number)?;
    if !number.inbound {
        return Err(Reject::new(403, "number_inbound_disabled"));
    }
    if !pre_authenticated
        && let Some(auth) = trunk.inbound.as_ref().and_then(|i| i.auth.as_ref())
        && auth.credentials.is_some()
    {
        let realm = realm_of(auth);
        match verify_inbound(ctx, req, trunk).unwrap_or(Verdict::Refused(DigestFailure::Missing)) {
            Verdict::Ok => {}
            verdict @ Verdict::Refused(failure) => {
                count_digest_failure(ctx, failure);
                let stale = verdict.stale();
                if req.msg.header("Authorization").is_some() && !stale {
                    ctx.metrics.reject("auth_failed");
                }
                return Err(Reject {
                    code: 401,
                    reason: "auth_challenge",
                    headers: vec![(
                        "WWW-Authenticate",
                        ctx.digest.challenge(realm, stale, req.peer.addr.ip()),
                    )],
                });
            }
        }
    }
    // Requirements we cannot meet (RFC 3261 8.2.2.3).
    let unsupported = super::unsupported_requirements(&req.msg);
    if !unsupported.is_empty() {
        return Err(Reject {
            code: 420,
            reason: "bad_extension",
            headers: vec![("Unsupported", unsupported.join(", "))],
        });
    }
    let timer = session_timer::uas_negotiate(&req.msg, ctx.opts.min_se).map_err(|min| Reject {
        code: 422,
        reason: "session_interval",
        headers: vec![("Min-SE", min.to_string())],
    })?;

    // Offer/answer before admission so a 488 does not count as a call.
    let prefs = routing::codec_prefs(trunk);
    let want_dtmf = routing::wants_rfc4733(trunk);
    let offer = if req.msg.body.is_empty() {
        None
    } else {
        let is_sdp = req
            .msg
            .header("Content-Type")
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/sdp"));
        if !is_sdp {
            return Err(Reject {
                code: 415,
                reason: "media_type",
                headers: vec![("Accept", "application/sdp".into())],
            });
        }
        Some(
            Sdp::parse(&String::from_utf8_lossy(&req.msg.body))
                .map_err(|_| Reject::new(488, "bad_sdp"))?,
        )
    };
    let srtp_policy = super::srtp_policy_of(trunk, req.peer.proto);
    let negotiated = match &offer {
        Some(o) => Some(
            sdp::negotiate_with(o, &prefs, want_dtmf, srtp_policy).map_err(|e| {
                let reason = match e {
                    sdp::SdpError::SrtpDisabled => "srtp_disabled",
                    sdp::SdpError::SrtpRequired(_) => "srtp_required",
                    sdp::SdpError::SdesInsecure => "sdes_insecure",
                    _ => "codec",
                };
                if reason != "codec" {
                    tracing::info!(source = %req.peer.addr, error = %e, "INVITE offer refused");
                }
                Reject::new(488, reason)
            })?,
        ),
        None => None,
    };
    // Never stream RTP where a spoofed INVITE points (multicast, link-local, loopback from
    // outside, outside the trunk's networks when it restricts media).
    let media_networks = super::media_networks_of(trunk, req.peer.addr.ip());
    if let Some(n) = &negotiated
        && let Err(e) = sdp::check_remote(n.remote, req.peer.addr.ip(), &media_networks)
    {
        tracing::warn!(source = %req.peer.addr, error = %e, "INVITE offer refused");
        return Err(Reject::new(488, "media_address"));
    }

    let call_id = req.msg.call_id().unwrap_or_default().to_owned();
    let trunk_max = routing::channel_share(trunk);
    let guard = match ctx.calls.admit(
        &trunk.id,
        CallDirection::Inbound,
        &call_id,
        ctx.opts.max_calls,
        trunk_max,
    ) {
        Ok(g) => g,
        Err(true) => {
            return Err(Reject {
                code: 503,
                reason: "capacity",
                headers: retry(),
            });
        }
        Err(false) => return Err(Reject::new(486, "channel_share")),
    };

    let media_ip = ctx.sip.transport.media_ip(&req.peer.addr);
    let bind_ip = ctx.sip.transport.media_bind_ip(&req.peer.addr, media_ip);
    let socket = ctx.ports.allocate(bind_ip).map_err(|e| {
        tracing::warn!(error = %e, "no media port");
        Reject {
            code: 503,
            reason: "no_media_port",
            headers: retry(),
        }
    })?;
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut local = LocalMedia {
        session_id: rand::random::<u32>() as u64,
        version: 1,
        ip: media_ip,
        port,
        crypto: None,
    };
    let (media, answer) = match (&offer, &negotiated) {
        (Some(o), Some(n)) => {
            let (srtp, crypto) = super::answer_srtp(n, None);
            local.crypto = crypto;
            (
                MediaParams {
                    codec: n.codec,
                    payload_type: n.pt,
                    dtmf_payload_type: n.dtmf_pt,
                    remote: n.remote,
                    direction: n.answer,
                    ptime_ms: 20,
                    srtp,
                },
                sdp::build_answer(&local, o, n),
            )
        }
        _ => {
            // No offer: we offer in the 200 and take the answer from the ACK.
            let fmts: Vec<(u8, &str)> = prefs
                .iter()
                .map(|c| (sdp::static_pt(*c), sdp::name(*c)))
                .collect();
            let dtmf = want_dtmf.then_some(101);
            // A trunk that requires SRTP gets an SRTP offer; the peer's key comes with the
            // answer in the ACK.
            if srtp_policy.encryption == sdp::Encryption::Required && srtp_policy.keys_allowed {
                local.crypto = Some(sdp::LocalCrypto {
                    tag: 1,
                    key: crate::media::srtp::MasterKey::random(
                        crate::media::srtp::Suite::AesCm128HmacSha1_80,
                    ),
                    savp: true,
                });
            }
            let body = sdp::build(&local, &fmts, dtmf, sdp::Direction::SendRecv);
            let c = prefs[0];
            (
                MediaParams {
                    codec: c,
                    payload_type: sdp::static_pt(c),
                    dtmf_payload_type: dtmf,
                    remote: None,
                    direction: sdp::Direction::SendRecv,
                    ptime_ms: 20,
                    srtp: None,
                },
                body,
            )
        }
    };

    let contact = ctx.contact(&user, &req.peer, wants_sips(&req.msg));
    let dialog = Dialog::uas(&req.msg, local_tag, req.peer, contact)
        .map_err(|_| Reject::new(400, "malformed"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.calls.register_invite(req.id.clone(), tx.clone());
    ctx.calls
        .register_dialog(&dialog.call_id, local_tag, &dialog.remote_tag, tx.clone());

    let mut ringing = req.msg.response(180, "Ringing", Some(local_tag));
    ringing.add("Contact", dialog.contact.clone());
    ctx.sip.respond(&req.id, ringing);

    let agent = number
        .agent
        .clone()
        .or_else(|| trunk.inbound.as_ref().and_then(|i| i.default_agent.clone()));
    let max_secs = if number.max_call_duration_seconds > 0 {
        number.max_call_duration_seconds
    } else {
        trunk
            .limits
            .as_ref()
            .map(|l| l.max_call_duration_seconds)
            .unwrap_or(0)
    };
    let session = Session {
        ctx: ctx.clone(),
        peer_allows_update: req
            .msg
            .headers_named("Allow")
            .any(|a| a.to_ascii_uppercase().contains("UPDATE")),
        dialog,
        direction: CallDirection::Inbound,
        trunk_id: trunk.id.clone(),
        number_id: number.id.clone(),
        from_user: user_of(req.msg.header("From")),
        to_user: user,
        agent,
        local,
        socket: Arc::new(socket),
        media,
        prefs,
        want_dtmf,
        timer,
        rx,
        tx,
        guard,
        max_duration: (max_secs > 0).then(|| std::time::Duration::from_secs(u64::from(max_secs))),
        local_sdp: String::new(),
        handler: None,
        prepared: None,
        rtp_timeout: super::rtp_timeout_of(trunk),
        started: std::time::Instant::now(),
        media_networks,
        sip_headers: super::passthrough::passed_headers(trunk, &req.msg),
        srtp_policy,
        awaiting_ack: false,
    };
    Ok((session, answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::Method;

    #[test]
    fn called_user_prefers_request_uri() {
        let mut m = Message::request(Method::Invite, "sip:+15550001111@10.0.0.1");
        m.push_header("To", "<sip:other@h>");
        assert_eq!(called_user(&m).as_deref(), Some("+15550001111"));
        let mut m = Message::request(Method::Invite, "sip:10.0.0.1");
        m.push_header("To", "\"x\" <sip:15550001111@h>");
        assert_eq!(called_user(&m).as_deref(), Some("15550001111"));
    }

    #[test]
    fn trunk_selection() {
        use switchboard_proto::v1alpha1::{Inbound, PhoneNumber};
        let trunk = |id: &str, enabled: bool| {
            Arc::new(Trunk {
                id: id.into(),
                enabled,
                inbound: Some(Inbound {
                    enabled: true,
                    allowed_sources: vec!["10.0.0.0/8".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let number = PhoneNumber {
            id: "n".into(),
            e164: "+15550001111".into(),
            trunk_id: "a".into(),
            fallback_trunk_ids: vec!["b".into()],
            inbound: true,
            ..Default::default()
        };
        let (a, b, c) = (trunk("a", false), trunk("b", true), trunk("c", true));
        assert_eq!(
            select_trunk(&[b], &number).map(|t| t.id.clone()).ok(),
            Some("b".into())
        );
        assert_eq!(
            select_trunk(std::slice::from_ref(&a), &number)
                .err()
                .map(|r| r.code),
            Some(403)
        );
        assert_eq!(
            select_trunk(std::slice::from_ref(&c), &number)
                .err()
                .map(|r| r.code),
            Some(404)
        );
        // A disabled primary falls through to a usable fallback.
        let b = trunk("b", true);
        assert_eq!(
            select_trunk(&[a, b, c], &number).map(|t| t.id.clone()).ok(),
            Some("b".into())
        );
    }
}
