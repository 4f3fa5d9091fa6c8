//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/drain`
//! (the Kubernetes preStop hook), and, only with `--debug-routes`, debug
//! routes that place and hang up calls and inspect state without
//! authentication (tests and local development; the call API on
//! `--api-bind` is the authenticated way). The process refuses
//! `--debug-routes` unless the admin port is bound to loopback.
//!
//! `/drain` stops the node taking calls, so it is an action, not a read:
//! POST only (GET gets 405, so a WebSocket upgrade or a crawler cannot
//! trigger it), and allowed only from the pod's own loopback address
//! (peer 127.0.0.1 or ::1 exactly: the rest of 127.0.0.0/8 is not exempt)
//! or with `Authorization: Bearer <admin token>` (`--admin-token-file`).
//! Without a token file only loopback can drain.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::call::Ctx;
use crate::call::outbound::{self, DialRequest};

/// The admin port's state: the node and the token `/drain` accepts.
#[derive(Clone)]
struct Admin {
    ctx: Arc<Ctx>,
    token: Option<Arc<str>>,
}

/// Builds the router; the unauthenticated `/debug/*` routes only when
/// `debug_routes` is set. `admin_token` is what `/drain` accepts from
/// non-loopback peers. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`: `/drain` needs the
/// peer address.
pub fn router(ctx: Arc<Ctx>, debug_routes: bool, admin_token: Option<String>) -> Router {
    let admin = Admin {
        ctx: ctx.clone(),
        token: admin_token.map(Arc::from),
    };
    let drain_route = Router::new().route("/drain", post(drain)).with_state(admin);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    let app = if debug_routes {
        app.route("/debug/dial", post(dial))
            .route("/debug/hangup", post(hangup))
            .route("/debug/calls", get(calls))
            .route("/debug/registrations", get(registrations))
            .route("/debug/gateways", get(gateways))
            .route("/debug/panic", post(inject_panic))
    } else {
        app
    };
    app.with_state(ctx).merge(drain_route)
}

/// True for the pod's own loopback address (the preStop hook runs in the
/// pod). Only 127.0.0.1 and ::1 (also as ::ffff:127.0.0.1): other 127/8
/// addresses are not special.
pub fn is_local_peer(peer: std::net::IpAddr) -> bool {
    match crate::routing::acl::normalize(peer) {
        std::net::IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        std::net::IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
    }
}

/// Constant-time comparison (only the length, our own token's, short-cuts).
fn token_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// Why a drain request is refused, if it is.
fn drain_refusal(
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Option<(StatusCode, &'static str)> {
    if is_local_peer(peer) {
        return None;
    }
    let Some(expected) = token else {
        return Some((
            StatusCode::FORBIDDEN,
            "drain is allowed from loopback only (no --admin-token-file)\n",
        ));
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => Some((
            StatusCode::UNAUTHORIZED,
            "drain needs the admin bearer token\n",
        )),
        Some(p) if token_matches(p, expected) => None,
        Some(_) => Some((StatusCode::FORBIDDEN, "wrong admin token\n")),
    }
}

#[derive(serde::Serialize)]
struct DrainStatus {
    draining: bool,
    active_calls: usize,
}

/// Starts the drain (the preStop hook): readiness false, new INVITEs and
/// OPTIONS 503 with Retry-After, calls in progress continue. The process
/// keeps running; SIGTERM later waits for the calls (bounded by the grace
/// period) and exits.
async fn drain(
    State(admin): State<Admin>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> axum::response::Response {
    if let Some((status, why)) = drain_refusal(peer.ip(), &headers, admin.token.as_deref()) {
        // The peer address only: never the presented token.
        tracing::warn!(peer = %peer.ip(), status = status.as_u16(), "drain request refused");
        return (status, why).into_response();
    }
    let ctx = &admin.ctx;
    if crate::node::start_drain(ctx) {
        tracing::info!(calls = ctx.calls.total(), peer = %peer.ip(), "drain requested on /drain");
    }
    Json(DrainStatus {
        draining: true,
        active_calls: ctx.calls.total(),
    })
    .into_response()
}

/// Why [`send_drain`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DrainRequestError {
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The node answered with something other than 200.
    #[error("the node answered: {0}")]
    Refused(String),
}

/// The preStop hook's client (`--send-drain`): POSTs `/drain` to the admin
/// port at `addr` (an unspecified bind address means this host's loopback)
/// with the admin token, and returns the node's answer.
pub async fn send_drain(
    addr: SocketAddr,
    token: Option<&str>,
) -> Result<String, DrainRequestError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LIMIT: u64 = 64 * 1024;
    let timeout = std::time::Duration::from_secs(10);
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(target).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /drain HTTP/1.1\r\nHost: {target}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.take(LIMIT).read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| DrainRequestError::Timeout(timeout))??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(body.trim().to_owned())
    } else {
        let line = head.lines().next().unwrap_or("no HTTP answer");
        Err(DrainRequestError::Refused(format!(
            "{line} {}",
            body.trim()
        )))
    }
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    // The operator's Drain RPC sets the flag too: mirror it at scrape time.
    ctx.metrics.draining.set(i64::from(ctx.is_draining()));
    (
        [("content-type", "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
}

async fn readyz(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    if ctx.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining".to_owned())
    } else if !ctx.routing.is_programmed() {
        (StatusCode::SERVICE_UNAVAILABLE, "not programmed".to_owned())
    } else if let Err(failing) = ctx.tasks.readiness() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("task failed: {failing}"),
        )
    } else {
        (StatusCode::OK, "ready".to_owned())
    }
}

#[derive(serde::Deserialize)]
struct PanicRequest {
    task: String,
}

/// Makes a supervised task panic, to see supervision work (`--debug-routes` only).
async fn inject_panic(
    State(ctx): State<Arc<Ctx>>,
    Json(req): Json<PanicRequest>,
) -> impl IntoResponse {
    if ctx.tasks.inject_panic(&req.task) {
        (StatusCode::ACCEPTED, String::new())
    } else {
        (
            StatusCode::NOT_FOUND,
            format!(
                "no task {:?}; tasks: {}",
                req.task,
                ctx.tasks.tasks().join(", ")
            ),
        )
    }
}

async fn dial(State(ctx): State<Arc<Ctx>>, Json(req): Json<DialRequest>) -> impl IntoResponse {
    Json(outbound::dial(ctx, req).await)
}

#[derive(serde::Deserialize)]
struct HangupRequest {
    call_id: String,
}

async fn hangup(State(ctx): State<Arc<Ctx>>, Json(req): Json<HangupRequest>) -> impl IntoResponse {
    if ctx.calls.hangup(&req.call_id, "debug API") {
        StatusCode::ACCEPTED
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn calls(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    Json(ctx.calls.list())
}

async fn registrations(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    Json(ctx.registrations.list())
}

async fn gateways(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    Json(ctx.health.list())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(
                axum::http::header::AUTHORIZATION,
                a.parse().expect("header value"),
            );
        }
        h
    }

    #[test]
    fn only_the_pods_own_loopback_is_exempt() {
        for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(is_local_peer(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "127.0.0.2",
            "127.0.0.3",
            "10.0.0.1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!is_local_peer(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn drain_needs_loopback_or_the_token() {
        let far: std::net::IpAddr = "10.1.2.3".parse().expect("ip");
        let near: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(drain_refusal(near, &headers(None), None), None);
        assert_eq!(drain_refusal(near, &headers(None), Some("t0k")), None);
        assert_eq!(
            drain_refusal(far, &headers(Some("Bearer t0k")), None).map(|r| r.0),
            Some(StatusCode::FORBIDDEN),
            "no token configured: loopback only"
        );
        assert_eq!(
            drain_refusal(far, &headers(None), Some("t0k")).map(|r| r.0),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            drain_refusal(far, &headers(Some("Bearer nope")), Some("t0k")).map(|r| r.0),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            drain_refusal(far, &headers(Some("t0k")), Some("t0k")).map(|r| r.0),
            Some(StatusCode::UNAUTHORIZED),
            "the Bearer scheme is required"
        );
        assert_eq!(
            drain_refusal(far, &headers(Some("Bearer t0k")), Some("t0k")),
            None
        );
    }
}
