//! The gRPC `CallService` (proto/switchboard/v1alpha1/calls.proto).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use switchboard_proto::v1alpha1 as pb;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use super::{Api, ApiError};

/// The service implementation.
pub struct CallApi {
    api: Api,
}

impl CallApi {
    /// Serves `api`.
    pub fn new(api: Api) -> CallApi {
        CallApi { api }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument { .. } | ApiError::BadBody(_) => {
                Status::invalid_argument(msg)
            }
            ApiError::NotFound { .. } => Status::not_found(msg),
            ApiError::Conflict(_) => Status::failed_precondition(msg),
            ApiError::QueueFull(_) => Status::resource_exhausted(msg),
            ApiError::Unavailable(_) => Status::unavailable(msg),
            ApiError::PermissionDenied(_) => Status::permission_denied(msg),
            ApiError::Unimplemented(_) => Status::unimplemented(msg),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CallEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::call_service_server::CallService for CallApi {
    async fn dial(
        &self,
        req: Request<pb::DialRequest>,
    ) -> Result<Response<pb::DialResponse>, Status> {
        let call = self.api.dial(req.into_inner())?;
        Ok(Response::new(pb::DialResponse { call: Some(call) }))
    }

    async fn hangup(
        &self,
        req: Request<pb::HangupRequest>,
    ) -> Result<Response<pb::HangupResponse>, Status> {
        let req = req.into_inner();
        let call = self.api.hangup(&req.call_id, &req.reason)?;
        Ok(Response::new(pb::HangupResponse { call: Some(call) }))
    }

    async fn transfer(
        &self,
        req: Request<pb::TransferRequest>,
    ) -> Result<Response<pb::TransferResponse>, Status> {
        let req = req.into_inner();
        let call = self.api.transfer(
            &req.call_id,
            &req.target,
            req.timeout_seconds,
            &req.mode,
            &req.headers,
        )?;
        Ok(Response::new(pb::TransferResponse { call: Some(call) }))
    }

    async fn send_dtmf(
        &self,
        req: Request<pb::SendDtmfRequest>,
    ) -> Result<Response<pb::SendDtmfResponse>, Status> {
        let req = req.into_inner();
        let call = self.api.send_dtmf(&req.call_id, &req.digits)?;
        Ok(Response::new(pb::SendDtmfResponse { call: Some(call) }))
    }

    async fn get(&self, req: Request<pb::GetCallRequest>) -> Result<Response<pb::Call>, Status> {
        Ok(Response::new(self.api.get(&req.into_inner().call_id)?))
    }

    async fn list(
        &self,
        req: Request<pb::ListCallsRequest>,
    ) -> Result<Response<pb::ListCallsResponse>, Status> {
        Ok(Response::new(pb::ListCallsResponse {
            calls: self.api.list(&req.into_inner().client_ref_prefix),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let stream =
            BroadcastStream::new(self.api.tracker.subscribe()).filter_map(|ev| async move {
                match ev {
                    Ok(ev) => Some(Ok(ev)),
                    Err(e) => {
                        // A watcher too slow for the buffer misses events; say
                        // so in the log and keep the stream going.
                        tracing::warn!(error = %e, "slow gRPC event watcher missed events");
                        None
                    }
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
