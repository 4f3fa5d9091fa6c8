//! The media nodes' call service as campaigns use it: dial, list, and one
//! event stream per node whose campaign calls are routed to their
//! campaign's runner. It rides on the control channel (the node serves its
//! `CallService` on the control port behind the control token).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_proto::v1alpha1::{self as pb, call_service_client::CallServiceClient};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::fleet::Endpoints;
use crate::fleet::client::ControlClient;

/// The `client_ref` prefix of every campaign call.
pub const PREFIX: &str = "camp/";

/// The idempotency key of attempt `attempt` of callee `index` of the
/// campaign with this uid: the node places at most one call per key.
pub fn client_ref(uid: &str, index: u32, attempt: u8) -> String {
    format!("{PREFIX}{uid}/{index}/{attempt}")
}

/// The campaign uid, callee index and attempt of a call's `client_ref`.
pub fn parse_ref(r: &str) -> Option<(&str, u32, u8)> {
    let rest = r.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(3, '/');
    let attempt = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    let uid = parts.next()?;
    (!uid.is_empty()).then_some((uid, index, attempt))
}

/// Adds the control token to every request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(b) = &self.0 {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    }
}

type Client = CallServiceClient<InterceptedService<Channel, Bearer>>;

/// What a runner hears from the nodes.
#[derive(Debug)]
pub enum NodeEvent {
    /// One of its calls completed.
    Ended {
        /// The call as it ended.
        call: Box<pb::Call>,
    },
    /// A node's event stream was (re)connected: events may have been
    /// missed, so the runner asks the node what it has.
    Resync {
        /// The node.
        node: String,
    },
}

/// Per-RPC deadline: a dial answers once the call is queued.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls to the fleet's nodes.
pub struct NodeCalls {
    control: Arc<ControlClient>,
    endpoints: watch::Receiver<Endpoints>,
    clients: Mutex<HashMap<String, (String, Client)>>,
    subscribers: Mutex<HashMap<String, mpsc::UnboundedSender<NodeEvent>>>,
}

/// Why a call to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeCallError {
    /// The node is not (or no longer) known.
    #[error("media node {0} is not known")]
    Unknown(String),
    /// The node's address cannot be used.
    #[error("media node {node}: {message}")]
    Endpoint {
        /// The node.
        node: String,
        /// Why.
        message: String,
    },
    /// The node answered with an error (or the RPC failed in transit).
    #[error("media node {node}: {status}")]
    Rpc {
        /// The node.
        node: String,
        /// What it said.
        status: tonic::Status,
    },
}

impl NodeCallError {
    /// The node certainly placed no call: it refused the request before
    /// queueing it (draining, queue full, not programmed, unknown number).
    pub fn not_placed(&self) -> bool {
        match self {
            NodeCallError::Unknown(_) | NodeCallError::Endpoint { .. } => true,
            NodeCallError::Rpc { status, .. } => {
                matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
            ) && !status.message().is_empty()
                // A transport failure also shows as Unavailable; tonic's own
                // messages for it start with "error trying to connect" or
                // name the transport: then the request may have been sent.
                && !status.message().contains("transport")
            }
        }
    }

    /// The request itself is wrong: trying again changes nothing.
    pub fn permanent(&self) -> bool {
        matches!(self, NodeCallError::Rpc { status, .. } if status.code() == tonic::Code::InvalidArgument)
    }
}

impl NodeCalls {
    /// Calls to the nodes in `endpoints`, over `control`'s channel settings.
    pub fn new(
        control: Arc<ControlClient>,
        endpoints: watch::Receiver<Endpoints>,
    ) -> Arc<NodeCalls> {
        Arc::new(NodeCalls {
            control,
            endpoints,
            clients: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(HashMap::new()),
        })
    }

    /// The nodes known now.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.borrow().clone()
    }

    fn client(&self, node: &str) -> Result<Client, NodeCallError> {
        let addr = self
            .endpoints
            .borrow()
            .get(node)
            .cloned()
            .ok_or_else(|| NodeCallError::Unknown(node.to_owned()))?;
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((a, c)) = clients.get(node)
            && *a == addr
        {
            return Ok(c.clone());
        }
        let endpoint = self
            .control
            .endpoint(&addr)
            .map_err(|e| NodeCallError::Endpoint {
                node: node.to_owned(),
                message: e.to_string(),
            })?
            .timeout(RPC_TIMEOUT);
        let bearer = Bearer(
            self.control
                .bearer()
                .and_then(|b| MetadataValue::try_from(b).ok()),
        );
        let c = CallServiceClient::with_interceptor(endpoint.connect_lazy(), bearer);
        clients.insert(node.to_owned(), (addr, c.clone()));
        Ok(c)
    }

    fn rpc_error(node: &str, status: tonic::Status) -> NodeCallError {
        NodeCallError::Rpc {
            node: node.to_owned(),
            status,
        }
    }

    /// Places a call on `node`.
    pub async fn dial(&self, node: &str, req: pb::DialRequest) -> Result<pb::Call, NodeCallError> {
        let mut c = self.client(node)?;
        let r = c.dial(req).await.map_err(|s| Self::rpc_error(node, s))?;
        r.into_inner()
            .call
            .ok_or_else(|| Self::rpc_error(node, tonic::Status::internal("no call in the answer")))
    }

    /// The node's calls whose `client_ref` starts with `prefix`.
    pub async fn list(&self, node: &str, prefix: &str) -> Result<Vec<pb::Call>, NodeCallError> {
        let mut c = self.client(node)?;
        let r = c
            .list(pb::ListCallsRequest {
                client_ref_prefix: prefix.to_owned(),
            })
            .await
            .map_err(|s| Self::rpc_error(node, s))?;
        Ok(r.into_inner().calls)
    }

    /// Ends a call on `node`.
    pub async fn hangup(
        &self,
        node: &str,
        call_id: &str,
        reason: &str,
    ) -> Result<(), NodeCallError> {
        let mut c = self.client(node)?;
        c.hangup(pb::HangupRequest {
            call_id: call_id.to_owned(),
            reason: reason.to_owned(),
        })
        .await
        .map_err(|s| Self::rpc_error(node, s))?;
        Ok(())
    }

    /// Routes the events of campaign `uid`'s calls to the returned channel
    /// (replacing an earlier subscription of the same campaign).
    pub fn subscribe(&self, uid: &str) -> mpsc::UnboundedReceiver<NodeEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_owned(), tx);
        rx
    }

    /// Ends campaign `uid`'s subscription.
    pub fn unsubscribe(&self, uid: &str) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    fn route(&self, ev: pb::CallEvent) {
        if ev.event != "completed" {
            return;
        }
        let Some(call) = ev.call else { return };
        let Some((uid, _, _)) = parse_ref(&call.client_ref) else {
            return;
        };
        let subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = subs.get(uid) {
            let _ = tx.send(NodeEvent::Ended {
                call: Box::new(call),
            });
        }
    }

    fn resync(&self, node: &str) {
        let subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        for tx in subs.values() {
            let _ = tx.send(NodeEvent::Resync {
                node: node.to_owned(),
            });
        }
    }

    /// Follows every node's event stream for as long as it runs: one task
    /// per node, restarted with backoff, started and stopped as nodes come
    /// and go.
    pub async fn follow(self: Arc<Self>) {
        let mut eps = self.endpoints.clone();
        let mut tasks: HashMap<String, (String, JoinHandle<()>)> = HashMap::new();
        loop {
            let now = eps.borrow_and_update().clone();
            tasks.retain(|id, (addr, t)| {
                let keep = now.get(id) == Some(addr);
                if !keep {
                    t.abort();
                }
                keep
            });
            for (id, addr) in &now {
                if tasks.contains_key(id) {
                    continue;
                }
                let me = self.clone();
                let node = id.clone();
                let t = tokio::spawn(async move { me.follow_node(node).await });
                tasks.insert(id.clone(), (addr.clone(), t));
            }
            if eps.changed().await.is_err() {
                for (_, (_, t)) in tasks.drain() {
                    t.abort();
                }
                return;
            }
        }
    }

    async fn follow_node(&self, node: String) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.client(&node) {
                Ok(mut c) => match c.watch_events(pb::WatchEventsRequest {}).await {
                    Ok(stream) => {
                        backoff = Duration::from_millis(200);
                        // Events before this instant may be lost.
                        self.resync(&node);
                        let mut s = stream.into_inner();
                        loop {
                            match s.message().await {
                                Ok(Some(ev)) => self.route(ev),
                                Ok(None) => break,
                                Err(e) => {
                                    debug!(%node, error = %e, "call event stream ended");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => debug!(%node, error = %e, "cannot watch call events"),
                },
                Err(e) => {
                    warn!(error = %e, "cannot watch call events");
                    return;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip() {
        let r = client_ref("6f1c-uid", 41, 3);
        assert_eq!(r, "camp/6f1c-uid/41/3");
        assert_eq!(parse_ref(&r), Some(("6f1c-uid", 41, 3)));
        assert_eq!(parse_ref("camp//1/1"), None);
        assert_eq!(parse_ref("camp/u/x/1"), None);
        assert_eq!(parse_ref("other/u/1/1"), None);
        assert_eq!(parse_ref("camp/u/1/300"), None);
    }
}
