//! Routes transaction-layer events to calls: new INVITEs to admission,
//! in-dialog requests and ACKs to their call's task, and answers the
//! requests that need no call (OPTIONS, stray BYEs, unsupported methods).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{CallMsg, Ctx};
use crate::sip::headers::param;
use crate::sip::message::{Message, Method, reason_phrase};
use crate::sip::transaction::{ServerRequest, TuEvent};

/// The From tag of a request from the peer: the dialog's remote tag ("" for
/// a peer that sends none, as RFC 2543 peers may).
fn from_tag(msg: &Message) -> &str {
    msg.header("From")
        .and_then(|f| param(f, "tag"))
        .unwrap_or("")
}

fn to_tag(msg: &Message) -> Option<String> {
    msg.header("To")
        .and_then(|t| param(t, "tag"))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// Runs until the transaction layer stops.
pub async fn run(ctx: Arc<Ctx>, mut events: mpsc::UnboundedReceiver<TuEvent>) {
    while let Some(ev) = events.recv().await {
        match ev {
            TuEvent::Request(req) => on_request(&ctx, req),
            TuEvent::Ack { msg, .. } => {
                if let (Some(call_id), Some(tag)) = (msg.call_id(), to_tag(&msg))
                    && let Some(tx) = ctx.calls.dialog(call_id, &tag, Some(from_tag(&msg)))
                {
                    let _ = tx.send(CallMsg::Ack(Box::new(msg)));
                }
            }
            TuEvent::Cancelled { invite } => {
                // The layer has answered; the call only has to end.
                if let Some(tx) = ctx.calls.invite(&invite) {
                    let _ = tx.send(CallMsg::Cancelled);
                }
            }
            TuEvent::AckTimeout {
                call_id, local_tag, ..
            } => {
                // Only the dialog the 2xx belonged to: our tag is unique to
                // it, while the Call-ID is the peer's to choose and reuse.
                if let Some(tx) = ctx.calls.dialog(&call_id, &local_tag, None) {
                    let _ = tx.send(CallMsg::AckTimeout);
                }
            }
        }
    }
}

fn reply(ctx: &Ctx, req: &ServerRequest, code: u16) {
    let resp = req.msg.response(
        code,
        reason_phrase(code),
        Some(&crate::sip::transaction::random_token(8)),
    );
    ctx.sip.respond(&req.id, resp);
}

fn on_request(ctx: &Arc<Ctx>, req: ServerRequest) {
    let Some(method) = req.msg.method() else {
        return;
    };
    // A Request-URI we cannot have been meant by (RFC 3261 8.2.2.1, RFC 4475 3.3.2/3.3.3).
    let scheme = crate::sip::dialog::scheme_of(req.msg.request_uri().unwrap_or_default());
    if method != Method::Ack && !matches!(scheme.as_str(), "sip" | "sips" | "tel") {
        ctx.metrics.reject("uri_scheme");
        reply(ctx, &req, 416);
        return;
    }
    if let Some(tag) = to_tag(&req.msg) {
        let call_id = req.msg.call_id().unwrap_or_default().to_owned();
        // The full dialog id: Call-ID and both tags (RFC 3261 12.2.2); a
        // request naming our tag with another From tag is not this dialog.
        match ctx.calls.dialog(&call_id, &tag, Some(from_tag(&req.msg))) {
            Some(tx) => {
                let _ = tx.send(CallMsg::Request(Box::new(req)));
            }
            None => reply(ctx, &req, 481),
        }
        return;
    }
    match method {
        Method::Invite => {
            // A new INVITE with the Call-ID of a live call: a merged request
            // (RFC 3261 8.2.2.2) or a peer reusing the id. Calls are known
            // by their Call-ID (registry, call API, webhooks), so a second
            // one would disturb the first: refuse it on its own transaction.
            if ctx.calls.has_call_id(req.msg.call_id().unwrap_or_default()) {
                ctx.metrics.reject("call_id_in_use");
                reply(ctx, &req, 482);
                return;
            }
            tokio::spawn(super::inbound::handle_invite(ctx.clone(), req));
        }
        Method::Options => {
            let unsupported = super::unsupported_requirements(&req.msg);
            if !unsupported.is_empty() {
                // RFC 3261 8.2.2.3 (RFC 4475 3.3.5): Proxy-Require is for proxies; ignored.
                ctx.metrics.reject("bad_extension");
                let mut resp = req.msg.response(
                    420,
                    reason_phrase(420),
                    Some(&crate::sip::transaction::random_token(8)),
                );
                resp.add("Unsupported", unsupported.join(", "));
                ctx.sip.respond(&req.id, resp);
                return;
            }
            let code = if ctx.is_draining() || !ctx.routing.is_programmed() {
                503
            } else {
                200
            };
            let mut resp = req.msg.response(
                code,
                reason_phrase(code),
                Some(&crate::sip::transaction::random_token(8)),
            );
            resp.add("Allow", crate::sip::ALLOW);
            resp.add("Accept", "application/sdp");
            resp.add("Supported", "timer");
            if code == 503 {
                resp.add("Retry-After", ctx.opts.retry_after_secs.to_string());
            }
            ctx.sip.respond(&req.id, resp);
        }
        Method::Bye | Method::Info | Method::Update | Method::Prack => reply(ctx, &req, 481),
        Method::Register => {
            let mut resp = req.msg.response(405, reason_phrase(405), None);
            resp.add("Allow", crate::sip::ALLOW);
            ctx.sip.respond(&req.id, resp);
        }
        Method::Ack | Method::Cancel => {}
        Method::Other(_) => {
            let mut resp = req.msg.response(501, reason_phrase(501), None);
            resp.add("Allow", crate::sip::ALLOW);
            ctx.sip.respond(&req.id, resp);
        }
    }
}
