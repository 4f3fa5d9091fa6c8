//! Call API authentication and request errors: 401 without or with a wrong
//! bearer token (HTTP and gRPC), clear 400/404/409 errors naming the field,
//! the API only on its own port, and no secrets in responses.

use crate::api_support::{ApiNode, TOKEN, api_request, authed};
use serde_json::{Value, json};
use switchboard_proto::v1alpha1 as pb;
use switchboard_tests::node::http_request;

fn config() -> Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier", "enabled": true,
            "outbound": {
                "enabled": true,
                "gateways": [{"host": "127.0.0.1", "port": 9, "transport": "TRANSPORT_UDP"}],
                "auth": {"username": "alice", "password": "carrier-s3cret"}
            }
        }],
        "numbers": [
            {"id": "demo/caller", "e164": "+15550001111", "trunkId": "demo/carrier",
             "inbound": true, "outbound": true,
             "agent": {"url": "ws://127.0.0.1:9/agent", "bearerToken": "agent-tok-123"}},
            {"id": "demo/inbound-only", "e164": "+15550002222", "trunkId": "demo/carrier",
             "inbound": true, "outbound": false,
             "agent": {"url": "ws://127.0.0.1:9/agent"}}
        ]
    })
}

#[tokio::test]
async fn api_auth_requires_the_bearer_token() {
    let node = ApiNode::start(&config(), &["--call-handler", "logging"]).await;
    for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
        let (status, body) = api_request(node.api, "GET", "/v1/calls", token, None)
            .await
            .expect("request");
        assert_eq!(status, 401, "token {token:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated");
        let (status, _) = api_request(
            node.api,
            "POST",
            "/v1/calls",
            token,
            Some(&json!({"from": "+15550001111", "to": "+15557654321"})),
        )
        .await
        .expect("request");
        assert_eq!(status, 401, "dial without the token is refused");
    }
    let (status, body) = node.call("GET", "/v1/calls", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({}),
        "no calls yet (proto3 JSON omits empty lists)"
    );

    // gRPC: UNAUTHENTICATED without the token or with a wrong one.
    let mut grpc = node.grpc().await;
    let err = grpc
        .list(pb::ListCallsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = grpc
        .list(authed(pb::ListCallsRequest::default(), "wrong"))
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    grpc.list(authed(pb::ListCallsRequest::default(), TOKEN))
        .await
        .expect("with the token");

    // The API is not on the admin port, and the debug routes are not on the API port.
    let (status, _) = http_request(node.node.http, "GET", "/v1/calls", None)
        .await
        .expect("admin");
    assert_eq!(status, 404);
    let (status, _) = node.call("GET", "/debug/calls", None).await;
    assert_eq!(status, 404);
    assert!(!node.node.log().contains(TOKEN), "token never logged");
}

#[tokio::test]
async fn api_errors_name_the_field() {
    let node = ApiNode::start(&config(), &["--call-handler", "logging"]).await;
    let cases = [
        (json!({"to": "+15557654321"}), 400, "from"),
        (json!({"from": "+15550001111"}), 400, "to"),
        (json!({"from": "+15550001111", "to": "+1555abc"}), 400, "to"),
        (
            json!({"from": "+15550001111", "to": "+15557654321", "agent": {"url": "http://x"}}),
            400,
            "agent.url",
        ),
        (
            json!({"from": "+19990000000", "to": "+15557654321"}),
            404,
            "from",
        ),
    ];
    for (body, want, field) in cases {
        let (status, resp) = node.call("POST", "/v1/calls", Some(&body)).await;
        assert_eq!(status, want, "{body} -> {resp}");
        assert_eq!(resp["error"]["field"], field, "{body} -> {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{resp}"
        );
    }
    // Not JSON, and a misspelt field: 400 with the parser's reason.
    for raw in [
        json!("not an object"),
        json!({"from": "+15550001111", "too": "1"}),
    ] {
        let (status, resp) = node.call("POST", "/v1/calls", Some(&raw)).await;
        assert_eq!(status, 400, "{raw} -> {resp}");
        assert_eq!(resp["error"]["code"], "invalid_argument");
    }
    // A number that may not call out: 409 with the reason.
    let (status, resp) = node
        .call(
            "POST",
            "/v1/calls",
            Some(&json!({"from": "demo/inbound-only", "to": "+15557654321"})),
        )
        .await;
    assert_eq!(status, 409, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not allow outbound")),
        "{resp}"
    );
    // Unknown calls.
    for (method, path) in [("GET", "/v1/calls/CAnope"), ("DELETE", "/v1/calls/CAnope")] {
        let (status, resp) = node.call(method, path, None).await;
        assert_eq!(status, 404, "{method} {path}: {resp}");
        assert_eq!(resp["error"]["code"], "not_found");
    }
    // gRPC maps the same errors to status codes.
    let mut grpc = node.grpc().await;
    let err = grpc
        .dial(authed(
            pb::DialRequest {
                from: "+15550001111".into(),
                to: "x".into(),
                ..Default::default()
            },
            TOKEN,
        ))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("to:"), "{}", err.message());
    let err = grpc
        .get(authed(
            pb::GetCallRequest {
                call_id: "CAnope".into(),
            },
            TOKEN,
        ))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // A dial that fails (nothing listens on the gateway) never shows secrets.
    let id = node
        .dial(json!({"from": "+15550001111", "to": "+15557654321", "ringingTimeoutSeconds": 2}))
        .await;
    let (_, list) = node.call("GET", "/v1/calls", None).await;
    let (_, one) = node.call("GET", &format!("/v1/calls/{id}"), None).await;
    for text in [list.to_string(), one.to_string()] {
        for secret in ["agent-tok-123", "carrier-s3cret", TOKEN] {
            assert!(
                !text.contains(secret),
                "{secret} in an API response: {text}"
            );
        }
    }
}
