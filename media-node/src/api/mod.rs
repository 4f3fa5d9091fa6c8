//! The call API: place, list, inspect and end calls, and watch their events,
//! as the gRPC `CallService` and as HTTP/JSON under `/v1/calls`, both on the
//! API port (`--api-bind`), behind one bearer token (`--api-token-file`).
//!
//! Calls go through the outbound engine (`call::outbound::dial_with`) after
//! waiting in the trunk's pacing queue; answered calls are bridged by the
//! node's media handler. [`tracker::CallTracker`] follows every call and
//! emits `initiated`, `ringing`, `answered` and `completed` to watchers and
//! status webhooks. See docs/call-api.md.

pub mod auth;
pub mod grpc;
pub mod http;
pub mod tracker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::v1alpha1 as pb;
use tokio_util::sync::CancellationToken;

use crate::call::Ctx;
use crate::call::outbound::{self, DialHooks, DialOutcome, DialProgress, DialRequest};
use crate::call::pacing::PacingError;
pub use tracker::CallTracker;

/// Settings of the API server.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Where gRPC and HTTP/JSON are served.
    pub bind: SocketAddr,
    /// The bearer token every request must carry.
    pub token: String,
}

/// An API failure, mapped to an HTTP status and a gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A request field is invalid (400 / INVALID_ARGUMENT).
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field, as named in the JSON body.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The body is not valid JSON for the request (400 / INVALID_ARGUMENT).
    #[error("invalid request body: {0}")]
    BadBody(String),
    /// No such call or number (404 / NOT_FOUND).
    #[error("{what} not found")]
    NotFound {
        /// What was looked up.
        what: String,
        /// The field naming it, when the request named it in a field.
        field: Option<String>,
    },
    /// The request conflicts with the resource's state (409 /
    /// FAILED_PRECONDITION).
    #[error("{0}")]
    Conflict(String),
    /// The trunk's queue is full (503 / RESOURCE_EXHAUSTED).
    #[error("{0}")]
    QueueFull(String),
    /// The node cannot place calls now (503 / UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The trunk's policy forbids it (403 / PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
    /// Asked of a feature that is not built (501 / UNIMPLEMENTED).
    #[error("{0}")]
    Unimplemented(String),
}

impl ApiError {
    fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidArgument {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Everything the API handlers share.
#[derive(Clone)]
pub struct Api {
    /// The node's call context.
    pub ctx: Arc<Ctx>,
    /// The calls and their events.
    pub tracker: CallTracker,
}

/// Counts the digits of a dialled number and checks its characters: digits,
/// one leading `+`, and the visual separators people paste (space, `-`,
/// `.`, parentheses). E.164 allows at most 15 digits.
fn check_destination(to: &str) -> Result<(), ApiError> {
    let t = to.trim();
    if t.is_empty() {
        return Err(ApiError::invalid("to", "required"));
    }
    let body = t.strip_prefix('+').unwrap_or(t);
    if let Some(c) = body
        .chars()
        .find(|c| !(c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')')))
    {
        return Err(ApiError::invalid(
            "to",
            format!("unexpected character {c:?}: expected an E.164 number such as +14155550123"),
        ));
    }
    let digits = body.chars().filter(char::is_ascii_digit).count();
    if !(3..=15).contains(&digits) {
        return Err(ApiError::invalid(
            "to",
            format!("{digits} digits: an E.164 number has 3 to 15"),
        ));
    }
    Ok(())
}

/// Most extra headers a dial may carry.
pub const MAX_DIAL_HEADERS: usize = 16;
/// Longest value of an extra header (bytes).
pub const MAX_DIAL_HEADER_VALUE: usize = 512;

/// The extra INVITE headers of a dial: `X-` headers and `User-to-User` only (nothing that
/// changes routing, identity or authentication), token names, values without control
/// characters. Sorted by name, for a stable INVITE.
fn check_headers(
    headers: &std::collections::HashMap<String, String>,
) -> Result<Vec<(String, String)>, ApiError> {
    if headers.len() > MAX_DIAL_HEADERS {
        return Err(ApiError::invalid(
            "headers",
            format!("{} headers: at most {MAX_DIAL_HEADERS}", headers.len()),
        ));
    }
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let field = format!("headers.{name}");
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b));
        let allowed = name.len() > 2 && name[..2].eq_ignore_ascii_case("X-")
            || name.eq_ignore_ascii_case("User-to-User");
        if !token || !allowed {
            return Err(ApiError::invalid(
                &field,
                "only X- headers and User-to-User may be added",
            ));
        }
        if value.len() > MAX_DIAL_HEADER_VALUE {
            return Err(ApiError::invalid(
                &field,
                format!("{} bytes: at most {MAX_DIAL_HEADER_VALUE}", value.len()),
            ));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ApiError::invalid(
                &field,
                "control characters are not allowed",
            ));
        }
        out.push((name.clone(), value.trim().to_owned()));
    }
    out.sort();
    Ok(out)
}

/// Longest Dial idempotency key (`client_ref`, bytes).
pub const MAX_CLIENT_REF: usize = 128;

/// A Dial's idempotency key: empty (none), or 1 to [`MAX_CLIENT_REF`] bytes
/// of printable ASCII without spaces.
fn check_client_ref(client_ref: &str) -> Result<(), ApiError> {
    if client_ref.len() > MAX_CLIENT_REF {
        return Err(ApiError::invalid(
            "clientRef",
            format!("{} bytes: at most {MAX_CLIENT_REF}", client_ref.len()),
        ));
    }
    if let Some(c) = client_ref.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "clientRef",
            format!("unexpected character {c:?}: printable ASCII without spaces only"),
        ));
    }
    Ok(())
}

fn check_agent_url(url: &str) -> Result<(), ApiError> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("ws://")
        .or_else(|| lower.strip_prefix("wss://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(()),
        _ => Err(ApiError::invalid(
            "agent.url",
            "must be a ws:// or wss:// URL with a host",
        )),
    }
}

impl Api {
    /// Validates and queues an outbound call; the dial continues in the
    /// background. Returns the call as queued.
    ///
    /// With a `client_ref` (idempotency key) that names a call the node
    /// still knows (live, or among the retained completed), no call is
    /// placed and no queue place taken: that call is returned as it is now,
    /// even while draining. Concurrent Dials with one key place one call.
    pub fn dial(&self, req: pb::DialRequest) -> Result<pb::Call, ApiError> {
        if req.from.trim().is_empty() {
            return Err(ApiError::invalid("from", "required"));
        }
        check_destination(&req.to)?;
        let headers = check_headers(&req.headers)?;
        if let Some(a) = &req.agent
            && !a.url.is_empty()
        {
            check_agent_url(&a.url)?;
        }
        check_client_ref(&req.client_ref)?;
        // A retry of a Dial the node took answers that call, whatever
        // changed since (draining, the number's configuration): a refusal
        // would make the client place it elsewhere, a second time.
        if let Some(existing) = self.tracker.by_client_ref(&req.client_ref) {
            return Ok(existing);
        }
        if self.ctx.is_draining() {
            return Err(ApiError::Unavailable(
                "the node is draining: place the call on another node".into(),
            ));
        }
        let from = req.from.trim();
        let Some(number) = self.ctx.routing.read(|t| t.caller_number(from)) else {
            return Err(ApiError::Unavailable(
                "the node is not programmed yet".into(),
            ));
        };
        let number = number.ok_or_else(|| ApiError::NotFound {
            what: format!("phone number {from:?}"),
            field: Some("from".into()),
        })?;
        if !number.outbound {
            return Err(ApiError::Conflict(format!(
                "phone number {} does not allow outbound calls",
                number.id
            )));
        }
        let agent = merge_agent(number.agent.as_ref(), req.agent.as_ref());
        if agent.is_none() {
            return Err(ApiError::invalid(
                "agent.url",
                format!("phone number {} has no agent: give one", number.id),
            ));
        }
        let id = tracker::new_call_id();
        let cancel = CancellationToken::new();
        let mut call = pb::Call {
            id: id.clone(),
            from: number.e164.clone(),
            to: req.to.trim().to_owned(),
            number_id: number.id.clone(),
            trunk_id: number.trunk_id.clone(),
            created_at_ms: tracker::now_ms(),
            // Call status and events reach API clients and webhook receivers: no token-bearing
            // parts of the URL.
            agent_url: agent
                .as_ref()
                .map(|a| crate::redact::url(&a.url))
                .unwrap_or_default(),
            client_ref: req.client_ref.clone(),
            ..Default::default()
        };
        call.set_direction(pb::CallDirection::Outbound);
        call.set_state(pb::CallState::Queued);
        let webhook = number
            .agent
            .as_ref()
            .map(|a| a.status_webhook.clone())
            .unwrap_or_default();
        // Take the queue place now so a full queue is refused to the caller;
        // under the tracker's lock, so that of two Dials with one key only
        // the first takes one.
        let admitted = self
            .tracker
            .outbound_once(call, &webhook, cancel.clone(), || {
                self.ctx
                    .pacing
                    .enqueue(&number.trunk_id)
                    .map_err(|e| match e {
                        PacingError::QueueFull { .. } => ApiError::QueueFull(e.to_string()),
                        _ => ApiError::Unavailable(e.to_string()),
                    })
            })?;
        let (call, ticket) = match admitted {
            tracker::Admission::New(call, ticket) => (*call, ticket),
            tracker::Admission::Existing(call) => return Ok(*call),
        };

        let secs = |s: u32| (s > 0).then(|| Duration::from_secs(u64::from(s)));
        let progress_tracker = self.tracker.clone();
        let progress_id = id.clone();
        let hooks = DialHooks {
            ticket: Some(ticket),
            progress: Some(Arc::new(move |p| match p {
                DialProgress::Started => progress_tracker.dialing(&progress_id),
                DialProgress::Attempt {
                    sip_call_id,
                    trunk_id,
                    ..
                } => progress_tracker.attempt(&progress_id, &sip_call_id, &trunk_id),
                DialProgress::Ringing { .. } => progress_tracker.ringing(&progress_id),
            })),
            cancel: Some(cancel.clone()),
            agent,
            ringing_timeout: secs(req.ringing_timeout_seconds),
            max_duration: secs(req.max_duration_seconds),
            headers,
            transfer: None,
        };
        if let Some(limit) = secs(req.queue_timeout_seconds) {
            // One sleeping task per call that asked for a queue timeout;
            // it cancels only a call still waiting in the queue.
            let t = self.tracker.clone();
            let cancel = cancel.clone();
            let qid = id.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(limit) => {
                        if t.get(&qid).is_some_and(|c| c.state() == pb::CallState::Queued) {
                            cancel.cancel();
                        }
                    }
                    _ = cancel.cancelled() => {}
                }
            });
        }
        let ctx = self.ctx.clone();
        let tracker = self.tracker.clone();
        let dial_req = DialRequest {
            number_id: number.id.clone(),
            to: req.to.trim().to_owned(),
        };
        tokio::spawn(async move {
            let outcome = outbound::dial_with(ctx, dial_req, hooks).await;
            match outcome {
                DialOutcome::Answered { .. } => tracker.dial_answered(&id),
                DialOutcome::Failed { code, reason, .. } => {
                    // A queued call is cancelled by an API hangup (which
                    // failed() reports as such) or by its queue timeout.
                    let reason = if reason == "cancelled while queued" {
                        "queue timeout".to_owned()
                    } else {
                        reason
                    };
                    tracker.failed(&id, code, &reason);
                }
            }
            drop(cancel);
        });
        Ok(call)
    }

    /// Ends a call; `reason` (empty: "call API") goes into its final reason.
    pub fn hangup(&self, id: &str, reason: &str) -> Result<pb::Call, ApiError> {
        let reason = reason.trim();
        if reason.len() > MAX_HANGUP_REASON || reason.chars().any(char::is_control) {
            return Err(ApiError::InvalidArgument {
                field: "reason".into(),
                message: format!("at most {MAX_HANGUP_REASON} bytes, no control characters"),
            });
        }
        let reason = if reason.is_empty() {
            "call API"
        } else {
            reason
        };
        match self.tracker.hangup(id, reason) {
            tracker::HangupResult::Ending(c) => Ok(*c),
            tracker::HangupResult::NotFound => Err(ApiError::NotFound {
                what: format!("call {id:?}"),
                field: None,
            }),
            tracker::HangupResult::AlreadyCompleted(_) => Err(ApiError::Conflict(format!(
                "call {id} is already completed"
            ))),
        }
    }

    /// Sends DTMF digits to the far end of an answered call (the call's
    /// media path picks RFC 4733 or SIP INFO).
    pub fn send_dtmf(&self, id: &str, digits: &str) -> Result<pb::Call, ApiError> {
        let valid = (1..=MAX_DTMF_DIGITS).contains(&digits.chars().count())
            && digits
                .chars()
                .all(|d| crate::media::dtmf::digit_to_event(d).is_some());
        if !valid {
            return Err(ApiError::InvalidArgument {
                field: "digits".into(),
                message: format!("1 to {MAX_DTMF_DIGITS} of 0-9 * # A-D"),
            });
        }
        control_result(
            id,
            "DTMF",
            self.tracker.send_dtmf(id, &digits.to_ascii_uppercase()),
        )
    }

    /// Starts a transfer of an answered call (REFER, or a new call through the
    /// trunk bridged in the node, per the trunk's `spec.transfer.mode`), after
    /// checking the target against the trunk's policy (the SIP side checks
    /// again). `mode`: empty, or the trunk's mode.
    pub fn transfer(
        &self,
        id: &str,
        target: &str,
        timeout_seconds: u32,
        mode: &str,
        headers: &std::collections::HashMap<String, String>,
    ) -> Result<pb::Call, ApiError> {
        use crate::call::transfer::{How, TransferRefusal, check};
        let call = self.get(id)?;
        let headers = check_headers(headers)?;
        let asked = How::parse(mode).map_err(|message| ApiError::InvalidArgument {
            field: "mode".into(),
            message,
        })?;
        let policy = self
            .ctx
            .routing
            .read(|t| t.trunk(&call.trunk_id).and_then(|tr| tr.transfer.clone()))
            .flatten();
        let (target, how) = check(policy.as_ref(), target, asked).map_err(|e| match e {
            TransferRefusal::BadTarget(_) => ApiError::InvalidArgument {
                field: "target".into(),
                message: e.to_string(),
            },
            TransferRefusal::NotAllowed(_) => ApiError::PermissionDenied(e.to_string()),
            TransferRefusal::Disabled => ApiError::Conflict(e.to_string()),
            TransferRefusal::WrongMode { .. } => ApiError::PermissionDenied(e.to_string()),
        })?;
        if timeout_seconds > MAX_TRANSFER_TIMEOUT_SECS {
            return Err(ApiError::InvalidArgument {
                field: "timeoutSeconds".into(),
                message: format!("at most {MAX_TRANSFER_TIMEOUT_SECS}"),
            });
        }
        let timeout = std::time::Duration::from_secs(u64::from(match timeout_seconds {
            0 => DEFAULT_TRANSFER_TIMEOUT_SECS,
            n => n,
        }));
        control_result(
            id,
            "a transfer",
            self.tracker
                .transfer(id, &target, timeout, Some(how), headers),
        )
    }

    /// One call.
    pub fn get(&self, id: &str) -> Result<pb::Call, ApiError> {
        self.tracker.get(id).ok_or_else(|| ApiError::NotFound {
            what: format!("call {id:?}"),
            field: None,
        })
    }

    /// Live calls (oldest first), then the retained completed ones (oldest
    /// first), only those whose `client_ref` starts with `client_ref_prefix`
    /// (empty: every call).
    pub fn list(&self, client_ref_prefix: &str) -> Vec<pb::Call> {
        self.tracker.list(client_ref_prefix)
    }
}

/// How long a transfer waits for the carrier's outcome unless the request says.
pub const DEFAULT_TRANSFER_TIMEOUT_SECS: u32 = 60;
/// The longest wait a transfer request may ask for.
pub const MAX_TRANSFER_TIMEOUT_SECS: u32 = 600;

/// Longest hang-up reason the API takes.
pub const MAX_HANGUP_REASON: usize = 128;

/// Most digits one DTMF request may carry (the call's queue holds as many).
pub const MAX_DTMF_DIGITS: usize = crate::agent::session::MAX_QUEUED_DIGITS;

/// The API's answer to a call-control request (`what` needs an answered call).
fn control_result(id: &str, what: &str, r: tracker::ControlResult) -> Result<pb::Call, ApiError> {
    match r {
        tracker::ControlResult::Sent(c) => Ok(*c),
        tracker::ControlResult::NotFound => Err(ApiError::NotFound {
            what: format!("call {id:?}"),
            field: None,
        }),
        tracker::ControlResult::NotAnswered(c) => Err(ApiError::Conflict(format!(
            "call {id} is {}: {what} needs an answered call",
            state_name(c.state())
        ))),
        tracker::ControlResult::Busy(_) => Err(ApiError::Conflict(format!(
            "call {id} has a transfer under way"
        ))),
    }
}

/// A call state as the JSON API spells it.
fn state_name(s: pb::CallState) -> &'static str {
    match s {
        pb::CallState::Queued => "queued",
        pb::CallState::Dialing => "dialing",
        pb::CallState::Ringing => "ringing",
        pb::CallState::Answered => "answered",
        pb::CallState::Completed => "completed",
        _ => "in an unknown state",
    }
}

/// The number's agent with the API's override applied: the URL replaced,
/// parameters merged over the number's. A replaced URL drops the number's
/// bearer token: the number's secret must not go to a URL the API caller
/// chose.
pub fn merge_agent(
    number: Option<&pb::Agent>,
    over: Option<&pb::AgentOverride>,
) -> Option<pb::Agent> {
    let mut agent = number.cloned();
    let Some(o) = over else { return agent };
    if !o.url.is_empty() {
        let a = agent.get_or_insert_with(|| pb::Agent {
            protocol: pb::AgentProtocol::TwilioMediaStreams as i32,
            ..Default::default()
        });
        if a.url != o.url {
            a.url = o.url.clone();
            a.bearer_token.clear();
        }
    }
    if let Some(a) = agent.as_mut() {
        for (k, v) in &o.parameters {
            a.parameters.insert(k.clone(), v.clone());
        }
    }
    agent
}

/// Serves gRPC and HTTP/JSON on `opts.bind` until the process ends.
pub async fn serve(api: Api, opts: ApiOptions) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.bind).await?;
    tracing::info!(addr = %opts.bind, "call API listening (gRPC and HTTP/JSON)");
    let app = router(api, &opts.token);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "call API server stopped");
        }
    });
    Ok(())
}

/// The API router: gRPC `CallService` and `/v1/calls`, behind the token.
pub fn router(api: Api, token: &str) -> axum::Router {
    let grpc = tonic::service::Routes::new(pb::call_service_server::CallServiceServer::new(
        grpc::CallApi::new(api.clone()),
    ))
    .into_axum_router();
    http::router(api)
        .merge(grpc)
        // tonic's fallback answers every unknown path with a gRPC status
        // (HTTP 200); plain HTTP clients get a 404 instead.
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn_with_state(
            auth::Token::new(token),
            auth::require_token,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trunk of the test API's number.
    pub(super) const TRUNK: &str = "demo/carrier";

    /// An API over a real (loopback) SIP stack, programmed with one trunk and
    /// the outbound number `+15550001111`, whose queues hold `queue_size`
    /// calls. Dials stay queued until the test yields to the runtime (the
    /// queue and dial tasks are spawned on the test's single thread).
    pub(super) async fn api(queue_size: usize) -> Api {
        use crate::sip::transport::{Advertise, Transport};
        let metrics = crate::metrics::Metrics::new();
        let tasks = crate::supervisor::Supervisor::new(metrics.registry());
        let (transport, incoming) = Transport::bind(
            &["127.0.0.1:0".parse().expect("addr")],
            Advertise {
                v4: None,
                v6: None,
                port: 5060,
                tls_port: None,
                media: None,
            },
            Default::default(),
            Default::default(),
            crate::sip::protect::RateLimiter::new(0.0, 0.0),
            metrics.clone(),
            None,
            &tasks,
        )
        .await
        .expect("bind SIP");
        let (sip, tu_events) = crate::sip::transaction::TransactionLayer::start(
            transport,
            incoming,
            metrics.clone(),
            Default::default(),
            &tasks,
        );
        // No server transactions in these tests: the TU's events are dropped.
        tokio::spawn(async move {
            let mut tu_events = tu_events;
            while tu_events.recv().await.is_some() {}
        });
        let routing = crate::config::RoutingStore::default();
        routing.apply(pb::RoutingConfig {
            version: 1,
            trunks: vec![pb::Trunk {
                id: TRUNK.into(),
                enabled: true,
                outbound: Some(pb::Outbound {
                    enabled: true,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            numbers: vec![pb::PhoneNumber {
                id: "demo/caller".into(),
                e164: "+15550001111".into(),
                trunk_id: TRUNK.into(),
                outbound: true,
                agent: Some(pb::Agent {
                    url: "ws://127.0.0.1:9/agent".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        });
        let tracker = CallTracker::new(None, 10);
        let calls = crate::call::Calls::new(metrics.clone());
        let ctx = Arc::new(Ctx {
            sip,
            routing: routing.clone(),
            metrics,
            pacing: crate::call::pacing::Pacing::new(queue_size, calls.clone(), routing),
            calls,
            handler: tracker.wrap(Arc::new(crate::call::LoggingHandler)),
            ports: crate::call::ports::PortAllocator::new(40000, 40100),
            digest: crate::sip::digest::DigestServer::new(Duration::from_secs(60)),
            opts: Default::default(),
            draining: Default::default(),
            health: Default::default(),
            registrations: Default::default(),
            tasks,
        });
        Api { ctx, tracker }
    }

    fn dial_req(client_ref: &str) -> pb::DialRequest {
        pb::DialRequest {
            from: "+15550001111".into(),
            to: "+15557654321".into(),
            client_ref: client_ref.into(),
            ..Default::default()
        }
    }

    fn invalid_field(r: Result<pb::Call, ApiError>) -> String {
        match r {
            Err(ApiError::InvalidArgument { field, .. }) => field,
            other => panic!("not refused as invalid: {other:?}"),
        }
    }

    #[test]
    fn client_refs_are_printable_ascii_without_spaces_and_bounded() {
        assert!(check_client_ref("").is_ok(), "empty: no key");
        assert!(check_client_ref("ns/spring-campaign/+14155550123#2").is_ok());
        assert!(check_client_ref(&"k".repeat(MAX_CLIENT_REF)).is_ok());
        for bad in [
            "has space".to_owned(),
            "tab\there".to_owned(),
            "new\nline".to_owned(),
            "caf\u{e9}".to_owned(),
            "\u{7f}".to_owned(),
            "k".repeat(MAX_CLIENT_REF + 1),
        ] {
            let e = check_client_ref(&bad).expect_err(&bad);
            assert!(
                matches!(e, ApiError::InvalidArgument { ref field, .. } if field == "clientRef"),
                "{bad:?}: {e:?}"
            );
        }
    }

    #[tokio::test]
    async fn dial_refuses_a_bad_client_ref_before_placing_anything() {
        let api = api(10).await;
        assert_eq!(invalid_field(api.dial(dial_req("two words"))), "clientRef");
        assert!(api.list("").is_empty());
        assert_eq!(api.ctx.pacing.queued(TRUNK), 0);
    }

    #[tokio::test]
    async fn one_client_ref_places_one_call_and_takes_one_queue_place() {
        // Room for one queued call: a second place taken would be refused as queue full.
        let api = api(1).await;
        let first = api.dial(dial_req("camp/spring/1")).expect("dial");
        assert_eq!(first.client_ref, "camp/spring/1");
        assert_eq!(first.state(), pb::CallState::Queued);
        assert_eq!(api.ctx.pacing.queued(TRUNK), 1);
        let again = api.dial(dial_req("camp/spring/1")).expect("same key");
        assert_eq!(again.id, first.id);
        assert_eq!(api.ctx.pacing.queued(TRUNK), 1, "no second queue place");
        assert_eq!(api.list("").len(), 1);
        assert_eq!(api.get(&first.id).expect("get").client_ref, "camp/spring/1");
        // Another key is another call (here refused: the queue holds one).
        assert!(matches!(
            api.dial(dial_req("camp/spring/2")),
            Err(ApiError::QueueFull(_))
        ));
        // A retry after the node started draining still answers the call it took.
        api.ctx
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            api.dial(dial_req("camp/spring/1")).expect("retry").id,
            first.id
        );
        assert!(matches!(
            api.dial(dial_req("camp/spring/3")),
            Err(ApiError::Unavailable(_))
        ));
        assert_eq!(api.list("").len(), 1);
    }

    #[tokio::test]
    async fn list_filters_dialled_calls_by_client_ref_prefix() {
        let api = api(10).await;
        let a = api.dial(dial_req("ns/spring/1")).expect("dial").id;
        let b = api.dial(dial_req("ns/summer/1")).expect("dial").id;
        let c = api.dial(dial_req("")).expect("dial").id;
        let ids = |p: &str| api.list(p).into_iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids("ns/spring/"), vec![a.clone()]);
        assert_eq!(ids("ns/summer"), vec![b.clone()]);
        let all = ids("");
        assert_eq!(all.len(), 3);
        assert!([a, b, c].iter().all(|i| all.contains(i)));
        assert!(ids("other").is_empty());
    }

    #[test]
    fn dial_headers_are_x_or_user_to_user_bounded_and_clean() {
        let h = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::HashMap<_, _>>()
        };
        assert_eq!(
            check_headers(&h(&[
                ("X-Campaign", "spring"),
                ("User-to-User", "00ff;encoding=hex")
            ])),
            Ok(vec![
                ("User-to-User".into(), "00ff;encoding=hex".into()),
                ("X-Campaign".into(), "spring".into())
            ])
        );
        let field = |r: Result<Vec<(String, String)>, ApiError>| match r {
            Err(ApiError::InvalidArgument { field, .. }) => field,
            other => panic!("not refused: {other:?}"),
        };
        for bad in [
            "Authorization",
            "From",
            "Route",
            "X-",
            "X Bad",
            "Max-Forwards",
        ] {
            assert_eq!(
                field(check_headers(&h(&[(bad, "v")]))),
                format!("headers.{bad}")
            );
        }
        assert_eq!(
            field(check_headers(&h(&[("X-Inject", "a\r\nVia: evil")]))),
            "headers.X-Inject"
        );
        let long = "a".repeat(MAX_DIAL_HEADER_VALUE + 1);
        assert_eq!(
            field(check_headers(&h(&[("X-Long", &long)]))),
            "headers.X-Long"
        );
        let many: Vec<(String, String)> = (0..=MAX_DIAL_HEADERS)
            .map(|i| (format!("X-H{i}"), "v".into()))
            .collect();
        assert_eq!(field(check_headers(&many.into_iter().collect())), "headers");
    }

    #[test]
    fn destinations() {
        assert!(check_destination("+14155550123").is_ok());
        assert!(check_destination("+1 (415) 555-0123").is_ok());
        assert!(check_destination("911").is_ok());
        for bad in ["", "  ", "+1415abc", "12", "+1234567890123456", "sip:1@x"] {
            let e = check_destination(bad).expect_err(bad);
            assert!(matches!(e, ApiError::InvalidArgument { ref field, .. } if field == "to"));
        }
    }

    #[test]
    fn agent_urls() {
        assert!(check_agent_url("ws://127.0.0.1:8765/agent").is_ok());
        assert!(check_agent_url("WSS://agent.example.com").is_ok());
        for bad in ["http://x", "ws://", "ws:///path", "agent"] {
            assert!(check_agent_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn override_merges_and_never_forwards_the_token_elsewhere() {
        let number = pb::Agent {
            url: "wss://agent.example.com/a".into(),
            bearer_token: "tok".into(),
            parameters: [("persona".to_string(), "support".to_string())].into(),
            status_webhook: "http://hooks/x".into(),
            ..Default::default()
        };
        let same = merge_agent(
            Some(&number),
            Some(&pb::AgentOverride {
                url: String::new(),
                parameters: [("lang".to_string(), "fr".to_string())].into(),
            }),
        )
        .expect("agent");
        assert_eq!(same.bearer_token, "tok");
        assert_eq!(same.parameters.len(), 2);
        let moved = merge_agent(
            Some(&number),
            Some(&pb::AgentOverride {
                url: "ws://elsewhere/b".into(),
                parameters: Default::default(),
            }),
        )
        .expect("agent");
        assert_eq!(moved.url, "ws://elsewhere/b");
        assert!(
            moved.bearer_token.is_empty(),
            "token not sent to another URL"
        );
        assert_eq!(moved.parameters["persona"], "support");
        assert!(merge_agent(None, None).is_none());
        let fresh = merge_agent(
            None,
            Some(&pb::AgentOverride {
                url: "ws://a/b".into(),
                parameters: Default::default(),
            }),
        )
        .expect("agent");
        assert_eq!(fresh.protocol(), pb::AgentProtocol::TwilioMediaStreams);
    }
}
