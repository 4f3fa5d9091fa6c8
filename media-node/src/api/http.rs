//! HTTP/JSON under `/v1/calls`. Bodies are the proto3 JSON of the
//! `CallService` messages (camelCase fields, 64-bit numbers as strings,
//! enums by name), so HTTP and gRPC clients see the same shapes.
//!
//! Errors are `{"error": {"code", "message", "field"?}}` with 400 (a field
//! is wrong), 401, 404 (unknown call or number), 409 (state conflict) or
//! 503 (queue full, draining, not programmed).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use switchboard_proto::v1alpha1 as pb;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::{Api, ApiError};

/// The routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/calls", get(list).post(dial))
        .route("/v1/calls/events", get(events))
        .route("/v1/calls/{id}", get(one).delete(hangup).post(action))
        .with_state(api)
}

impl ApiError {
    /// The HTTP status and the stable error code.
    pub fn http_status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidArgument { .. } | ApiError::BadBody(_) => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::QueueFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            ApiError::Unimplemented(_) => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.http_status();
        let mut err = serde_json::json!({"code": code, "message": self.to_string()});
        let field = match &self {
            ApiError::InvalidArgument { field, .. } => Some(field.clone()),
            ApiError::NotFound { field, .. } => field.clone(),
            _ => None,
        };
        if let Some(f) = field {
            err["field"] = serde_json::Value::String(f);
        }
        let mut resp = (status, axum::Json(serde_json::json!({ "error": err }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Queues drain at the trunk's pace: a short retry is reasonable.
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Unknown routes: UNIMPLEMENTED for gRPC, a JSON 404 for HTTP.
pub async fn not_found(req: axum::extract::Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return tonic::Status::unimplemented("no such method")
            .into_http::<Body>()
            .into_response();
    }
    let body = serde_json::json!({"error": {"code": "not_found", "message": "no such route"}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// A proto message as a JSON response.
fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(b) => (status, [(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `POST /v1/calls`: 201 with the queued call, its URL in `Location`.
async fn dial(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let req: pb::DialRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?;
    let call = api.dial(req)?;
    let mut resp = json(
        StatusCode::CREATED,
        &pb::DialResponse {
            call: Some(call.clone()),
        },
    );
    if let Ok(v) = header::HeaderValue::from_str(&format!("/v1/calls/{}", call.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// The query of `GET /v1/calls` (`ListCallsRequest` in proto3 JSON naming).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    /// Only calls whose `clientRef` starts with this.
    #[serde(default)]
    client_ref_prefix: String,
}

/// `GET /v1/calls`, `GET /v1/calls?clientRefPrefix=...`.
async fn list(
    State(api): State<Api>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::InvalidArgument {
        field: "clientRefPrefix".into(),
        message: e.body_text(),
    })?;
    Ok(json(
        StatusCode::OK,
        &pb::ListCallsResponse {
            calls: api.list(&q.client_ref_prefix),
        },
    ))
}

/// `GET /v1/calls/{id}`.
async fn one(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &api.get(&id)?))
}

/// `DELETE /v1/calls/{id}`: 202, the call ends shortly (its `completed`
/// event follows).
async fn hangup(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let call = api.hangup(&id, "")?;
    Ok(json(
        StatusCode::ACCEPTED,
        &pb::HangupResponse { call: Some(call) },
    ))
}

/// `POST /v1/calls/{id}:hangup` (`{"reason"}`, optional),
/// `POST /v1/calls/{id}:dtmf` (`{"digits"}`) and
/// `POST /v1/calls/{id}:transfer` (`{"target", "timeoutSeconds"}`): 202 with the call. The action
/// is the suffix after the id's last `:` (Google API style custom methods).
async fn action(
    State(api): State<Api>,
    Path(target): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some((id, verb)) = target.rsplit_once(':') else {
        return Err(ApiError::NotFound {
            what: format!("action on {target:?} (POST /v1/calls/ID:hangup or ID:dtmf)"),
            field: None,
        });
    };
    // An empty body is an empty request (hangup without a reason).
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    let bad = |e: serde_json::Error| ApiError::BadBody(e.to_string());
    match verb {
        "hangup" => {
            let req: pb::HangupRequest = serde_json::from_slice(body).map_err(bad)?;
            let call = api.hangup(id, &req.reason)?;
            Ok(json(
                StatusCode::ACCEPTED,
                &pb::HangupResponse { call: Some(call) },
            ))
        }
        "dtmf" => {
            let req: pb::SendDtmfRequest = serde_json::from_slice(body).map_err(bad)?;
            let call = api.send_dtmf(id, &req.digits)?;
            Ok(json(
                StatusCode::ACCEPTED,
                &pb::SendDtmfResponse { call: Some(call) },
            ))
        }
        "transfer" => {
            let req: pb::TransferRequest = serde_json::from_slice(body).map_err(bad)?;
            let call = api.transfer(
                id,
                &req.target,
                req.timeout_seconds,
                &req.mode,
                &req.headers,
            )?;
            Ok(json(
                StatusCode::ACCEPTED,
                &pb::TransferResponse { call: Some(call) },
            ))
        }
        other => Err(ApiError::NotFound {
            what: format!("action {other:?} (hangup, dtmf or transfer)"),
            field: None,
        }),
    }
}

/// `GET /v1/calls/events`: newline-delimited JSON, one `CallEvent` a line,
/// from now on, until the client goes away.
async fn events(State(api): State<Api>) -> Response {
    let stream = BroadcastStream::new(api.tracker.subscribe()).filter_map(|ev| async move {
        match ev {
            Ok(ev) => match serde_json::to_vec(&ev) {
                Ok(mut line) => {
                    line.push(b'\n');
                    Some(Ok::<_, std::convert::Infallible>(Bytes::from(line)))
                }
                Err(_) => None,
            },
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "slow event watcher missed events");
                None
            }
        }
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower_service::Service;

    async fn request(app: &mut Router, method: &str, uri: &str, body: &str) -> (u16, Value) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .expect("request");
        let resp = app.call(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).expect("JSON body"))
    }

    /// The ids in a `ListCallsResponse` (proto3 JSON omits an empty list).
    fn ids(list: &Value) -> Vec<String> {
        list["calls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .map(|c| c["id"].as_str().expect("id").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn client_ref_over_json_dials_once_and_filters_the_list() {
        let api = super::super::tests::api(10).await;
        let mut app = router(api);
        let body = r#"{"from": "+15550001111", "to": "+15557654321", "clientRef": "ns/spring/1"}"#;
        let (status, first) = request(&mut app, "POST", "/v1/calls", body).await;
        assert_eq!(status, 201, "{first}");
        assert_eq!(first["call"]["clientRef"], "ns/spring/1", "{first}");
        let (status, again) = request(&mut app, "POST", "/v1/calls", body).await;
        assert_eq!(status, 201, "{again}");
        assert_eq!(again["call"]["id"], first["call"]["id"]);
        let other = r#"{"from": "+15550001111", "to": "+15557654321", "clientRef": "ns/summer/1"}"#;
        let (status, summer) = request(&mut app, "POST", "/v1/calls", other).await;
        assert_eq!(status, 201, "{summer}");

        let (_, all) = request(&mut app, "GET", "/v1/calls", "").await;
        assert_eq!(ids(&all).len(), 2, "{all}");
        let (status, spring) = request(
            &mut app,
            "GET",
            "/v1/calls?clientRefPrefix=ns%2Fspring%2F",
            "",
        )
        .await;
        assert_eq!(status, 200, "{spring}");
        assert_eq!(
            ids(&spring),
            vec![first["call"]["id"].as_str().expect("id").to_owned()]
        );
        let (_, none) = request(&mut app, "GET", "/v1/calls?clientRefPrefix=autumn", "").await;
        assert!(ids(&none).is_empty(), "{none}");

        let bad = r#"{"from": "+15550001111", "to": "+15557654321", "clientRef": "a b"}"#;
        let (status, err) = request(&mut app, "POST", "/v1/calls", bad).await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["field"], "clientRef", "{err}");
    }
}
