//! NodeControl as served: `Apply` is decoded as `ApplyRequestView` (the
//! same wire format, a snapshot's numbers left as slices of the request's
//! buffer), every other method goes to the generated server. The
//! generated server would decode a 100,000-number snapshot into 100,000
//! messages, which the node would then keep.

use std::convert::Infallible;
use std::task::{Context, Poll};

use switchboard_proto::v1alpha1::{
    ApplyRequestView, ApplyResponse, node_control_server::NodeControlServer,
};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

use super::server::ControlService;

/// The gRPC path of `NodeControl/Apply`.
const APPLY_PATH: &str = "/switchboard.v1alpha1.NodeControl/Apply";

/// The NodeControl service with `Apply` routed to [`ControlService::apply_view`].
#[derive(Clone)]
pub struct ControlRouter {
    service: ControlService,
    generated: NodeControlServer<ControlService>,
    max_message_bytes: usize,
}

impl ControlRouter {
    /// Serves `service`, decoding and encoding messages of at most
    /// `max_message_bytes`.
    pub fn new(service: ControlService, max_message_bytes: usize) -> Self {
        let generated = NodeControlServer::new(service.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        ControlRouter {
            service,
            generated,
            max_message_bytes,
        }
    }
}

impl NamedService for ControlRouter {
    const NAME: &'static str = <NodeControlServer<ControlService> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for ControlRouter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != APPLY_PATH {
            return self.generated.call(req);
        }
        let apply = ApplyView(self.service.clone());
        let max = Some(self.max_message_bytes);
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<ApplyResponse, ApplyRequestView>::default();
            let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(max, max);
            Ok(grpc.unary(apply, req).await)
        })
    }
}

/// `Apply` on the view.
struct ApplyView(ControlService);

impl tonic::server::UnaryService<ApplyRequestView> for ApplyView {
    type Response = ApplyResponse;
    type Future = BoxFuture<tonic::Response<ApplyResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<ApplyRequestView>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.apply_view(request.into_inner()).await })
    }
}
