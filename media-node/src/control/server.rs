//! The NodeControl gRPC service.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use switchboard_proto::delta;
use switchboard_proto::v1alpha1::{
    ApplyRequest, ApplyResponse, DrainRequest, DrainResponse, NodeStatus, RoutingConfig,
    WatchStatusRequest,
    apply_request::Change,
    apply_response::Result as ApplyResult,
    node_control_server::{NodeControl, NodeControlServer},
};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{status, validate};
use crate::call::Ctx;

/// Least time between two status messages on one stream.
const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// A status message at least this often, as a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

struct Applied {
    config: RoutingConfig,
    refused: Option<(u64, String)>,
}

/// Serves NodeControl for one node. Cheap to clone.
#[derive(Clone)]
pub struct ControlService(Arc<Inner>);

struct Inner {
    ctx: Arc<Ctx>,
    node_id: String,
    boot_id: String,
    sip_addresses: Vec<String>,
    applied: Mutex<Applied>,
    changes: watch::Sender<u64>,
    /// Numbers in the configuration in use (benchmarks and dashboards).
    numbers: prometheus::IntGauge,
    /// Configurations refused.
    refusals: prometheus::IntCounter,
}

impl ControlService {
    /// A service for the node; `initial` is the configuration already
    /// loaded (from a file), if any.
    pub fn new(
        ctx: Arc<Ctx>,
        node_id: String,
        sip_addresses: Vec<String>,
        initial: Option<RoutingConfig>,
    ) -> Self {
        let boot_id = format!("{:016x}", rand::random::<u64>());
        let config = initial.unwrap_or_default();
        let (changes, _) = watch::channel(config.version);
        let numbers = prometheus::IntGauge::new(
            "switchboard_config_numbers",
            "Phone numbers in the routing configuration in use",
        )
        .expect("constant metric name is valid");
        let refusals = prometheus::IntCounter::new(
            "switchboard_config_refused_total",
            "Routing configurations refused",
        )
        .expect("constant metric name is valid");
        // Registration fails only for duplicate names (a second service in
        // one process, as in tests); the metrics then stay unexported.
        let _ = ctx.metrics.registry().register(Box::new(numbers.clone()));
        let _ = ctx.metrics.registry().register(Box::new(refusals.clone()));
        numbers.set(i64::try_from(config.numbers.len()).unwrap_or(i64::MAX));
        Self(Arc::new(Inner {
            ctx,
            node_id,
            boot_id,
            sip_addresses,
            applied: Mutex::new(Applied {
                config,
                refused: None,
            }),
            changes,
            numbers,
            refusals,
        }))
    }
}

impl Inner {
    fn bump(&self) {
        self.changes.send_modify(|_| {});
    }

    fn apply(&self, req: ApplyRequest) -> ApplyResponse {
        let Ok(mut applied) = self.applied.lock() else {
            return ApplyResponse {
                result: ApplyResult::Refused as i32,
                applied_version: 0,
                reason: "internal error: state lock poisoned".into(),
                term: 0,
            };
        };
        let current = applied.config.version;
        let next = match req.change {
            None => {
                return ApplyResponse {
                    result: ApplyResult::Refused as i32,
                    applied_version: current,
                    reason: "empty request".into(),
                    term: 0,
                };
            }
            Some(Change::Snapshot(cfg)) => {
                if cfg.version == current && current != 0 && cfg == applied.config {
                    return ApplyResponse {
                        result: ApplyResult::Applied as i32,
                        applied_version: current,
                        reason: String::new(),
                        term: 0,
                    };
                }
                if let Err(reason) = validate::validate(&cfg) {
                    return self.refuse(&mut applied, cfg.version, reason);
                }
                cfg
            }
            Some(Change::Delta(d)) => {
                if d.base_version != current {
                    info!(
                        base = d.base_version,
                        current, "delta on another base; asking for a snapshot"
                    );
                    return ApplyResponse {
                        result: ApplyResult::NeedSnapshot as i32,
                        applied_version: current,
                        reason: format!(
                            "delta is based on version {}, this node runs {current}",
                            d.base_version
                        ),
                        term: 0,
                    };
                }
                // Checked against the running configuration, then applied in
                // place: a small change to a large list costs little.
                if let Err(reason) = validate::validate_delta(&applied.config, &d) {
                    return self.refuse(&mut applied, d.version, reason);
                }
                let mut cfg = std::mem::take(&mut applied.config);
                if let Err(e) = delta::apply_in_place(&mut cfg, &d) {
                    applied.config = cfg;
                    return ApplyResponse {
                        result: ApplyResult::NeedSnapshot as i32,
                        applied_version: current,
                        reason: e.to_string(),
                        term: 0,
                    };
                }
                cfg
            }
        };
        let version = next.version;
        let (trunks, numbers) = (next.trunks.len(), next.numbers.len());
        self.ctx.routing.apply(next.clone());
        self.numbers.set(i64::try_from(numbers).unwrap_or(i64::MAX));
        self.ctx
            .metrics
            .config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        applied.config = next;
        applied.refused = None;
        drop(applied);
        self.changes.send_replace(version);
        info!(version, trunks, numbers, "configuration applied");
        ApplyResponse {
            result: ApplyResult::Applied as i32,
            applied_version: version,
            reason: String::new(),
            term: 0,
        }
    }

    fn refuse(
        &self,
        applied: &mut std::sync::MutexGuard<'_, Applied>,
        version: u64,
        reason: String,
    ) -> ApplyResponse {
        warn!(version, %reason, "refusing configuration; keeping the previous one");
        applied.refused = Some((version, reason.clone()));
        self.refusals.inc();
        self.bump();
        ApplyResponse {
            result: ApplyResult::Refused as i32,
            applied_version: applied.config.version,
            reason,
            term: 0,
        }
    }

    fn status(&self) -> NodeStatus {
        let (version, refused) = match self.applied.lock() {
            Ok(a) => (a.config.version, a.refused.clone()),
            Err(_) => (0, None),
        };
        status::build(
            &self.ctx,
            &self.node_id,
            &self.boot_id,
            version,
            refused.as_ref(),
            &self.sip_addresses,
        )
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<NodeStatus, Status>> + Send>>;

#[tonic::async_trait]
impl NodeControl for ControlService {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let this = self.0.clone();
        // Building the routing table of a large configuration is CPU work.
        let resp = tokio::task::spawn_blocking(move || this.apply(request.into_inner()))
            .await
            .map_err(|e| Status::internal(format!("apply task failed: {e}")))?;
        Ok(Response::new(resp))
    }

    type WatchStatusStream = StatusStream;

    async fn watch_status(
        &self,
        _request: Request<WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let this = self.0.clone();
        tokio::spawn(async move {
            let mut changes = this.changes.subscribe();
            let mut calls = this.ctx.calls.watch_total();
            loop {
                if tx.send(Ok(this.status())).await.is_err() {
                    return;
                }
                tokio::time::sleep(MIN_INTERVAL).await;
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    r = calls.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn drain(
        &self,
        _request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        self.0
            .ctx
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.0.bump();
        info!("drain requested over the control channel");
        let active_calls = u32::try_from(self.0.ctx.calls.total()).unwrap_or(u32::MAX);
        Ok(Response::new(DrainResponse { active_calls }))
    }
}

/// Largest configuration message accepted (a snapshot of 100,000 numbers is
/// about 10 MB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Serves the control service on `addr` until the future is dropped. With
/// `tls`, only TLS connections are accepted; `token` guards every call.
pub async fn serve(
    addr: std::net::SocketAddr,
    service: ControlService,
    tls: Option<tonic::transport::ServerTlsConfig>,
    token: super::TokenCheck,
) -> Result<(), tonic::transport::Error> {
    let server = NodeControlServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let svc =
        tonic::service::interceptor::InterceptedService::new(server, move |req| token.check(req));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(svc)
        .serve(addr)
        .await
}
