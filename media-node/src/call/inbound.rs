//! Inbound INVITEs: the admission decision (`admission.rs`) carried out
//! (challenge nonces, capacity, a media port, 180 Ringing), then the call's
//! task takes over.

use std::net::IpAddr;
use std::sync::Arc;

use switchboard_proto::v1alpha1::{PhoneNumber, Trunk};
use tokio::sync::mpsc;

use super::admission::{self, Accepted, AdmissionView, Refusal, Reject, SourceTrunks};
use super::session::{Session, SessionSetup};
use super::{CallDirection, CallMsg, Ctx, HangupReason, MediaParams, PendingCall};
use crate::routing;
use crate::sdp::{self, LocalMedia};
use crate::sip::dialog::{Dialog, wants_sips};
use crate::sip::digest::{Check, DigestFailure, Verdict};
use crate::sip::headers::{SipUri, uri_text};
use crate::sip::message::{Message, reason_phrase};
use crate::sip::transaction::{ServerRequest, random_token};

fn user_of(value: Option<&str>) -> String {
    value
        .and_then(|v| SipUri::parse(uri_text(v)).ok())
        .and_then(|u| u.user)
        .unwrap_or_default()
}

/// The node as admission sees it.
struct NodeView<'a>(&'a Ctx);

impl AdmissionView for NodeView<'_> {
    fn draining(&self) -> bool {
        self.0.is_draining()
    }

    fn source_trunks(&self, source: IpAddr) -> Option<SourceTrunks> {
        // One short read section; the number is looked up after
        // authentication.
        self.0.routing.read(|table| {
            let by_acl: Vec<Arc<Trunk>> = table
                .trunks_for_source(source)
                .into_iter()
                .filter_map(|id| table.trunk(id).cloned())
                .collect();
            let auth_only = if by_acl.is_empty() {
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
            SourceTrunks { by_acl, auth_only }
        })
    }

    fn number(&self, user: &str) -> Option<Arc<PhoneNumber>> {
        self.0
            .routing
            .read(|t| t.number_for(user).map(Arc::new))
            .flatten()
    }

    /// The digest must answer a nonce issued to this source address, for
    /// this Request-URI.
    fn verify(&self, msg: &Message, source: IpAddr, trunk: &Trunk) -> Option<Verdict> {
        let auth = trunk.inbound.as_ref()?.auth.as_ref()?;
        let creds = auth.credentials.as_ref()?;
        let realm = if auth.realm.is_empty() {
            admission::DEFAULT_REALM
        } else {
            auth.realm.as_str()
        };
        Some(self.0.digest.verify(&Check {
            header: msg.header("Authorization"),
            method: "INVITE",
            request_uri: msg.request_uri().unwrap_or_default(),
            source,
            realm,
            username: &creds.username,
            password: &creds.password,
        }))
    }

    fn min_se(&self) -> u32 {
        self.0.opts.min_se
    }
}

/// Counts a refused Authorization by reason (not the normal first,
/// credential-less leg of a challenge).
fn count_digest_failure(ctx: &Ctx, reason: DigestFailure) {
    if reason != DigestFailure::Missing {
        ctx.metrics.digest_failure(reason.label());
    }
}

/// The refusal of an INVITE as it is sent: a challenge gets its nonce here.
fn carry_out(ctx: &Ctx, req: &ServerRequest, refusal: Refusal) -> Reject {
    match refusal {
        Refusal::Refuse(mut r) => {
            if r.retry_after {
                r.headers
                    .push(("Retry-After", ctx.opts.retry_after_secs.to_string()));
            }
            r
        }
        Refusal::Challenge {
            realm,
            stale,
            failure,
        } => {
            count_digest_failure(ctx, failure);
            if req.msg.header("Authorization").is_some() && !stale {
                ctx.metrics.reject("auth_failed");
            }
            let challenge = ctx.digest.challenge(&realm, stale, req.peer.addr.ip());
            let mut r = Reject::new(401, "auth_challenge");
            r.headers.push(("WWW-Authenticate", challenge));
            r
        }
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
                Some(CallMsg::Cancelled) => {
                    ctx.metrics.calls.with_label_values(&["inbound", "cancelled", "487"]).inc();
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
    let Accepted {
        trunk,
        number,
        user,
        timer,
        offer,
        prefs,
        want_dtmf,
        srtp_policy,
        media_networks,
    } = admission::decide(&NodeView(ctx), &req.msg, req.peer)
        .map_err(|refusal| carry_out(ctx, req, refusal))?;
    let retry = || vec![("Retry-After", ctx.opts.retry_after_secs.to_string())];
    let trunk = &*trunk;

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
                headers: retry(),
                ..Reject::new(503, "capacity")
            });
        }
        Err(false) => return Err(Reject::new(486, "channel_share")),
    };

    let media_ip = ctx.sip.transport.media_ip(&req.peer.addr);
    let bind_ip = ctx.sip.transport.media_bind_ip(&req.peer.addr, media_ip);
    let socket = ctx.ports.allocate(bind_ip).map_err(|e| {
        tracing::warn!(error = %e, "no media port");
        Reject {
            headers: retry(),
            ..Reject::new(503, "no_media_port")
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
    let (media, answer) = match &offer {
        Some((o, n)) => {
            let (srtp, crypto) = super::answer_srtp(n, None);
            local.crypto = crypto;
            (
                MediaParams::negotiated(n, n.answer, srtp),
                sdp::build_answer(&local, o, n),
            )
        }
        None => {
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
            (MediaParams::unanswered(prefs[0], dtmf), body)
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
    let session = Session::new(
        ctx,
        SessionSetup {
            dialog,
            direction: CallDirection::Inbound,
            trunk,
            number: &number,
            from_user: user_of(req.msg.header("From")),
            to_user: user,
            agent,
            local,
            socket,
            media,
            prefs,
            want_dtmf,
            timer,
            channel: (tx, rx),
            guard,
            peer_msg: &req.msg,
            max_duration: None,
            local_sdp: String::new(),
            started: std::time::Instant::now(),
            media_networks,
            sip_headers: super::passthrough::passed_headers(trunk, &req.msg),
            srtp_policy,
            transfer_of: None,
        },
    );
    Ok((session, answer))
}
