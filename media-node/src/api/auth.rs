//! Bearer-token authentication of every API request, HTTP and gRPC alike,
//! compared in constant time. A refusal never echoes what was sent.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// The expected `Authorization` header value.
#[derive(Clone)]
pub struct Token(Arc<Vec<u8>>);

impl Token {
    /// Expects `Authorization: Bearer <token>`.
    pub fn new(token: &str) -> Token {
        Token(Arc::new(format!("Bearer {token}").into_bytes()))
    }

    /// True when `header` is exactly the expected value. The comparison
    /// takes the same time wherever the first difference is; only the
    /// length (public: it is our own token's) short-cuts.
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        let got = header.unwrap_or_default();
        got.len() == self.0.len() && bool::from(got.ct_eq(&self.0))
    }
}

/// Middleware: 401 (HTTP) or UNAUTHENTICATED (gRPC) without the token.
pub async fn require_token(State(token): State<Token>, req: Request, next: Next) -> Response {
    let got = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if token.accepts(got) {
        return next.run(req).await;
    }
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return tonic::Status::unauthenticated("missing or wrong bearer token")
            .into_http::<axum::body::Body>()
            .into_response();
    }
    let body = serde_json::json!({"error": {
        "code": "unauthenticated",
        "message": "missing or wrong bearer token (Authorization: Bearer <token>)"
    }});
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let t = Token::new("s3cret");
        assert!(t.accepts(Some(b"Bearer s3cret")));
        assert!(!t.accepts(Some(b"Bearer s3cre")));
        assert!(!t.accepts(Some(b"Bearer s3cretX")));
        assert!(!t.accepts(Some(b"bearer s3cret")));
        assert!(!t.accepts(Some(b"s3cret")));
        assert!(!t.accepts(None));
    }
}
