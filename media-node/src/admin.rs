//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, and debug
//! routes to drive the outbound engine and inspect state until the real
//! call API exists.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::call::Ctx;
use crate::call::outbound::{self, DialRequest};

/// Builds the router.
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/debug/dial", post(dial))
        .route("/debug/hangup", post(hangup))
        .route("/debug/calls", get(calls))
        .route("/debug/registrations", get(registrations))
        .route("/debug/gateways", get(gateways))
        .with_state(ctx)
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
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
