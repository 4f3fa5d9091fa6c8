//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/drain`
//! (the Kubernetes preStop hook), and, only with `--debug-routes`, debug
//! routes that place and hang up calls and inspect state without
//! authentication (tests and local development; the call API on
//! `--api-bind` is the authenticated way).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::call::Ctx;
use crate::call::outbound::{self, DialRequest};

/// Builds the router; the unauthenticated `/debug/*` routes only when
/// `debug_routes` is set.
pub fn router(ctx: Arc<Ctx>, debug_routes: bool) -> Router {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/drain", get(drain).post(drain));
    let app = if debug_routes {
        app.route("/debug/dial", post(dial))
            .route("/debug/hangup", post(hangup))
            .route("/debug/calls", get(calls))
            .route("/debug/registrations", get(registrations))
            .route("/debug/gateways", get(gateways))
    } else {
        app
    };
    app.with_state(ctx)
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
async fn drain(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    if crate::node::start_drain(&ctx) {
        tracing::info!(calls = ctx.calls.total(), "drain requested on /drain");
    }
    Json(DrainStatus {
        draining: true,
        active_calls: ctx.calls.total(),
    })
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
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if ctx.routing.get().is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "not programmed")
    } else {
        (StatusCode::OK, "ready")
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
