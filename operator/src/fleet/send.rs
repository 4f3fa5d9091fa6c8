//! `NodeControl/Apply` sent from bytes already encoded. The request's parts
//! go out as HTTP/2 data frames that share the encoded numbers of the
//! snapshot: ten nodes given 100,000 numbers do not cost ten copies of a
//! 10 MB message (tonic's codec copies every message into its send buffer).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE, TE};
use http::{HeaderValue, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use prost::Message;
use switchboard_proto::v1alpha1 as pb;
use tonic::codegen::Service;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::encode::Encoded;

/// The method's path: the service and method names of control.proto.
pub const APPLY_PATH: &str = "/switchboard.v1alpha1.NodeControl/Apply";

/// Largest answer read from a node (an `ApplyResponse` is a few hundred
/// bytes; a node that sends more is not read further).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Sends `body`, an encoded `ApplyRequest`, with the control token (`Bearer
/// …`) when there is one, and decodes the node's answer. Errors are gRPC
/// statuses as tonic's own client would give them.
pub async fn apply(
    channel: &Channel,
    bearer: Option<&HeaderValue>,
    body: Encoded,
) -> Result<pb::ApplyResponse, Status> {
    let len = u32::try_from(body.encoded_len())
        .map_err(|_| Status::resource_exhausted("configuration larger than 4 GiB"))?;
    // The gRPC message header: not compressed, then the length.
    let mut head = BytesMut::with_capacity(5);
    head.put_u8(0);
    head.put_u32(len);
    let mut parts = VecDeque::with_capacity(body.0.len() + 1);
    parts.push_back(head.freeze());
    parts.extend(body.0.into_iter().filter(|p| !p.is_empty()));
    let mut req = http::Request::builder()
        .method(http::Method::POST)
        .uri(APPLY_PATH)
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers");
    if let Some(b) = bearer {
        req = req.header(AUTHORIZATION, b.clone());
    }
    let req = req
        .body(tonic::body::Body::new(Parts(parts)))
        .map_err(|e| Status::internal(format!("building the request: {e}")))?;
    let mut svc = channel.clone();
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    let resp = svc
        .call(req)
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    let (head, body) = resp.into_parts();
    // A trailers-only answer (an error) carries its status in the headers.
    let early = Status::from_header_map(&head.headers);
    if let Some(s) = &early
        && s.code() != Code::Ok
    {
        return Err(s.clone());
    }
    if head.status != StatusCode::OK {
        return Err(Status::unknown(format!(
            "the node answered HTTP {}",
            head.status
        )));
    }
    let got = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| Status::internal(format!("reading the node's answer: {e}")))?;
    let status = got.trailers().and_then(Status::from_header_map).or(early);
    match status {
        Some(s) if s.code() == Code::Ok => {}
        Some(s) => return Err(s),
        None => return Err(Status::internal("the node's answer had no grpc-status")),
    }
    decode(&got.to_bytes())
}

/// The one message of a unary answer.
fn decode(data: &[u8]) -> Result<pb::ApplyResponse, Status> {
    let Some((&flag, rest)) = data.split_first() else {
        return Err(Status::internal("the node's answer held no message"));
    };
    if flag != 0 {
        return Err(Status::internal("the node's answer was compressed"));
    }
    let (len, msg) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| Status::internal("the node's answer was cut short"))?;
    let len = u32::from_be_bytes(*len) as usize;
    if msg.len() != len {
        return Err(Status::internal(format!(
            "the node's answer holds {} bytes after a header announcing {len}",
            msg.len()
        )));
    }
    pb::ApplyResponse::decode(msg)
        .map_err(|e| Status::internal(format!("decoding the node's answer: {e}")))
}

/// A request body of shared byte strings, sent in order.
struct Parts(VecDeque<Bytes>);

impl http_body::Body for Parts {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use switchboard_proto::v1alpha1::node_control_server::{NodeControl, NodeControlServer};
    use tokio_stream::wrappers::TcpListenerStream;

    /// A node that records what it was sent and answers as it is told.
    #[derive(Default)]
    struct Node {
        got: Mutex<Vec<pb::ApplyRequest>>,
        token: Mutex<Option<String>>,
        refuse: Option<Code>,
    }

    #[tonic::async_trait]
    impl NodeControl for Node {
        async fn apply(
            &self,
            req: tonic::Request<pb::ApplyRequest>,
        ) -> Result<tonic::Response<pb::ApplyResponse>, Status> {
            *self.token.lock().expect("lock") = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(code) = self.refuse {
                return Err(Status::new(code, "refused by the test"));
            }
            let req = req.into_inner();
            let version = match &req.change {
                Some(pb::apply_request::Change::Snapshot(c)) => c.version,
                _ => 0,
            };
            self.got.lock().expect("lock").push(req);
            Ok(tonic::Response::new(pb::ApplyResponse {
                applied_version: version,
                reason: "applied".into(),
                ..Default::default()
            }))
        }

        type WatchStatusStream = std::pin::Pin<
            Box<dyn futures::Stream<Item = Result<pb::NodeStatus, Status>> + Send + 'static>,
        >;

        async fn watch_status(
            &self,
            _req: tonic::Request<pb::WatchStatusRequest>,
        ) -> Result<tonic::Response<Self::WatchStatusStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn drain(
            &self,
            _req: tonic::Request<pb::DrainRequest>,
        ) -> Result<tonic::Response<pb::DrainResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    async fn serve(node: std::sync::Arc<Node>) -> Channel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(NodeControlServer::from_arc(node).max_decoding_message_size(64 << 20))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    fn snapshot(numbers: u32) -> pb::ApplyRequest {
        pb::ApplyRequest {
            change: Some(pb::apply_request::Change::Snapshot(pb::RoutingConfig {
                version: 7,
                trunks: vec![pb::Trunk {
                    id: "ns/t".into(),
                    ..Default::default()
                }],
                numbers: (0..numbers)
                    .map(|i| pb::PhoneNumber {
                        id: format!("ns/n{i}"),
                        e164: format!("+1555{i:07}"),
                        trunk_id: "ns/t".into(),
                        ..Default::default()
                    })
                    .collect(),
            })),
            term: 3,
        }
    }

    #[tokio::test]
    async fn the_node_receives_the_parts_as_one_request() {
        let node = std::sync::Arc::new(Node::default());
        let channel = serve(node.clone()).await;
        let want = snapshot(50_000);
        // Cut the encoding into uneven parts, one of them empty.
        let bytes = Bytes::from(want.encode_to_vec());
        let parts = Encoded(vec![
            bytes.slice(..3),
            Bytes::new(),
            bytes.slice(3..100_001),
            bytes.slice(100_001..),
        ]);
        let token = HeaderValue::from_static("Bearer sesame");
        let resp = apply(&channel, Some(&token), parts).await.expect("applied");
        assert_eq!((resp.applied_version, resp.reason.as_str()), (7, "applied"));
        assert_eq!(node.got.lock().expect("lock").as_slice(), [want]);
        assert_eq!(
            node.token.lock().expect("lock").as_deref(),
            Some("Bearer sesame")
        );
        // Without a token, none is sent.
        apply(
            &channel,
            None,
            Encoded::whole(snapshot(1).encode_to_vec().into()),
        )
        .await
        .expect("applied");
        assert_eq!(*node.token.lock().expect("lock"), None);
    }

    #[tokio::test]
    async fn a_node_error_is_its_grpc_status() {
        let node = std::sync::Arc::new(Node {
            refuse: Some(Code::PermissionDenied),
            ..Default::default()
        });
        let channel = serve(node).await;
        let err = apply(
            &channel,
            None,
            Encoded::whole(snapshot(1).encode_to_vec().into()),
        )
        .await
        .expect_err("refused");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(err.message(), "refused by the test");
    }

    #[test]
    fn malformed_answers_are_errors() {
        let ok = pb::ApplyResponse {
            applied_version: 9,
            ..Default::default()
        }
        .encode_to_vec();
        let framed = |flag: u8, len: u32, msg: &[u8]| {
            let mut v = vec![flag];
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(msg);
            v
        };
        let good = framed(0, ok.len() as u32, &ok);
        assert_eq!(decode(&good).expect("decoded").applied_version, 9);
        for bad in [
            vec![],
            vec![0, 0, 0],
            framed(1, ok.len() as u32, &ok),
            framed(0, ok.len() as u32 + 1, &ok),
            framed(0, u32::MAX, &ok),
            framed(0, 2, &[0xff, 0xff]),
        ] {
            assert!(decode(&bad).is_err(), "{bad:?}");
        }
    }
}
