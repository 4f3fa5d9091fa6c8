//! The NodeControl gRPC service.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use prometheus::{IntCounter, IntGauge};
use switchboard_proto::v1alpha1::{
    ApplyRequest, ApplyRequestView, ApplyResponse, DrainRequest, DrainResponse, NodeStatus,
    WatchStatusRequest, apply_request_view::Change, apply_response::Result as ApplyResult,
    call_service_server::CallServiceServer, node_control_server::NodeControl,
};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{status, validate};
use crate::call::Ctx;
use crate::config::RoutingStore;
use crate::metrics::Metrics;
use crate::routing::RoutingTable;

/// Least time between two status messages on one stream.
const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// A status message at least this often, as a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What the node remembers of the requests it applied, besides the table.
#[derive(Debug, Default)]
struct State {
    /// The newest leadership term a request was applied from (0: none yet,
    /// or an operator without leader election). In memory only: a restart
    /// resets it, and the leader's next snapshot sets it again.
    term: u64,
    /// The last configuration refused, and why.
    refused: Option<(u64, String)>,
}

/// Applies ApplyRequests to the routing table: leadership-term fencing,
/// validation, then the change, in place for a delta. Requests are applied
/// one at a time (the state lock); readers of the table wait only while a
/// change is written.
struct Programming {
    routing: RoutingStore,
    state: Mutex<State>,
    /// The node's `switchboard_config_version` gauge.
    config_version: IntGauge,
    /// Numbers in the configuration in use (benchmarks and dashboards).
    numbers: IntGauge,
    /// Configurations refused.
    refusals: IntCounter,
    /// Requests from an older leadership term, ignored.
    stale_terms: IntCounter,
    /// The leadership term of the configuration in use.
    term: IntGauge,
}

/// What a request did, for the status stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// The configuration, the term or the refusal changed: tell watchers.
    Changed,
    /// Nothing the status shows changed.
    None,
}

impl Programming {
    fn new(routing: RoutingStore, metrics: &Metrics) -> Programming {
        let numbers = crate::metrics::must(IntGauge::new(
            "switchboard_config_numbers",
            "Phone numbers in the routing configuration in use",
        ));
        let refusals = crate::metrics::must(IntCounter::new(
            "switchboard_config_refused_total",
            "Routing configurations refused",
        ));
        let term = crate::metrics::must(IntGauge::new(
            "switchboard_config_term",
            "Operator leadership term of the configuration in use (0: unfenced)",
        ));
        let stale_terms = crate::metrics::must(IntCounter::new(
            "switchboard_config_stale_term_total",
            "Configuration requests ignored because they came from an older operator leadership term",
        ));
        // Registration fails only for duplicate names (a second service in
        // one process, as in tests); the metrics then stay unexported.
        for m in [
            Box::new(numbers.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refusals.clone()),
            Box::new(stale_terms.clone()),
            Box::new(term.clone()),
        ] {
            let _ = metrics.registry().register(m);
        }
        let count = routing.read(RoutingTable::number_count).unwrap_or(0);
        numbers.set(i64::try_from(count).unwrap_or(i64::MAX));
        Programming {
            routing,
            state: Mutex::new(State::default()),
            config_version: metrics.config_version.clone(),
            numbers,
            refusals,
            stale_terms,
            term,
        }
    }

    /// The version in use (0: none).
    fn version(&self) -> u64 {
        self.routing.version().unwrap_or(0)
    }

    fn apply(&self, req: ApplyRequestView) -> (ApplyResponse, Effect) {
        let Ok(mut st) = self.state.lock() else {
            return (
                response(
                    ApplyResult::Refused,
                    0,
                    "internal error: state lock poisoned".into(),
                    0,
                ),
                Effect::None,
            );
        };
        let current = self.version();
        if req.term < st.term {
            self.stale_terms.inc();
            let reason = stale_reason(req.term, st.term);
            warn!(term = req.term, node_term = st.term, %reason, "ignoring configuration from a deposed leader");
            return (
                response(ApplyResult::StaleTerm, current, reason, st.term),
                Effect::None,
            );
        }
        let version = match req.change {
            None => {
                return (
                    response(
                        ApplyResult::Refused,
                        current,
                        "empty request".into(),
                        st.term,
                    ),
                    Effect::None,
                );
            }
            Some(Change::Snapshot(cfg)) => {
                let version = cfg.version;
                // A re-sent snapshot (a reconnect, a new leader's first
                // request) answers Applied without rebuilding.
                let same = version == current
                    && current != 0
                    && self.routing.read(|t| t.matches(&cfg)).unwrap_or(false);
                if same {
                    let effect = if st.term == req.term {
                        Effect::None
                    } else {
                        Effect::Changed
                    };
                    st.term = req.term;
                    return (
                        response(ApplyResult::Applied, version, String::new(), st.term),
                        effect,
                    );
                }
                // Checked and built outside the table's lock; readers keep
                // the old one until the swap.
                match validate::build_snapshot(cfg) {
                    Ok(table) => {
                        self.routing.replace(table);
                    }
                    Err(reason) => return self.refuse(&mut st, version, reason, current),
                }
                version
            }
            Some(Change::Delta(d)) => {
                if d.base_version != current {
                    info!(
                        base = d.base_version,
                        current, "delta on another base; asking for a snapshot"
                    );
                    let reason = format!(
                        "delta is based on version {}, this node runs {current}",
                        d.base_version
                    );
                    return (
                        response(ApplyResult::NeedSnapshot, current, reason, st.term),
                        Effect::None,
                    );
                }
                // The whole delta is checked first, under the read lock
                // (calls go on); only a valid one is written.
                let checked = self
                    .routing
                    .read(|t| validate::validate_delta(t, &d))
                    .unwrap_or_else(|| validate::validate_delta(&RoutingTable::default(), &d));
                if let Err(reason) = checked {
                    return self.refuse(&mut st, d.version, reason, current);
                }
                let version = d.version;
                let base = d.base_version;
                let mut d = Some(d);
                // Only this lock's holder changes the table; a SIGHUP reload
                // (a configuration file next to the operator) could still
                // have swapped it since the check.
                let written = self.routing.update(|t| {
                    if t.version() != base {
                        return false;
                    }
                    if let Some(d) = d.take() {
                        t.apply_delta(d);
                    }
                    true
                });
                match (written, d.take()) {
                    (Some(true), _) => {}
                    (None, Some(d)) => {
                        // Not programmed yet: a delta from version 0 builds
                        // the first table.
                        let mut t = RoutingTable::default();
                        t.apply_delta(d);
                        self.routing.replace(t);
                    }
                    _ => {
                        let now = self.version();
                        return (
                            response(
                                ApplyResult::NeedSnapshot,
                                now,
                                format!("delta is based on version {base}, this node runs {now}"),
                                st.term,
                            ),
                            Effect::None,
                        );
                    }
                }
                version
            }
        };
        st.term = req.term;
        self.term.set(i64::try_from(st.term).unwrap_or(i64::MAX));
        st.refused = None;
        let (trunks, numbers) = self
            .routing
            .read(|t| (t.trunk_count(), t.number_count()))
            .unwrap_or((0, 0));
        self.numbers.set(i64::try_from(numbers).unwrap_or(i64::MAX));
        self.config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        info!(
            version,
            term = st.term,
            trunks,
            numbers,
            "configuration applied"
        );
        (
            response(ApplyResult::Applied, version, String::new(), st.term),
            Effect::Changed,
        )
    }

    fn refuse(
        &self,
        st: &mut State,
        version: u64,
        reason: String,
        current: u64,
    ) -> (ApplyResponse, Effect) {
        warn!(version, %reason, "refusing configuration; keeping the previous one");
        st.refused = Some((version, reason.clone()));
        self.refusals.inc();
        (
            response(ApplyResult::Refused, current, reason, st.term),
            Effect::Changed,
        )
    }

    /// The version in use, its term and the last refusal.
    fn status(&self) -> (u64, u64, Option<(u64, String)>) {
        let (term, refused) = match self.state.lock() {
            Ok(s) => (s.term, s.refused.clone()),
            Err(_) => (0, None),
        };
        (self.version(), term, refused)
    }
}

fn response(result: ApplyResult, applied_version: u64, reason: String, term: u64) -> ApplyResponse {
    ApplyResponse {
        result: result as i32,
        applied_version,
        reason,
        term,
    }
}

fn stale_reason(term: u64, node_term: u64) -> String {
    let from = if term == 0 {
        "configuration from an operator without leader election (term 0)".to_string()
    } else {
        format!("configuration from leadership term {term}")
    };
    format!("{from}, this node already runs term {node_term}: the sender is no longer the leader")
}

/// Serves NodeControl for one node. Cheap to clone.
#[derive(Clone)]
pub struct ControlService(Arc<Inner>);

struct Inner {
    ctx: Arc<Ctx>,
    node_id: String,
    boot_id: String,
    sip_addresses: Vec<String>,
    programming: Programming,
    changes: watch::Sender<u64>,
}

impl ControlService {
    /// A service for the node; a configuration loaded from a file is
    /// already in the node's routing table.
    pub fn new(ctx: Arc<Ctx>, node_id: String, sip_addresses: Vec<String>) -> Self {
        let boot_id = format!("{:016x}", rand::random::<u64>());
        let programming = Programming::new(ctx.routing.clone(), &ctx.metrics);
        let (changes, _) = watch::channel(programming.version());
        Self(Arc::new(Inner {
            ctx,
            node_id,
            boot_id,
            sip_addresses,
            programming,
            changes,
        }))
    }

    /// Applies a request (decoded with a snapshot's numbers left encoded).
    pub(super) async fn apply_view(
        &self,
        request: ApplyRequestView,
    ) -> Result<Response<ApplyResponse>, Status> {
        let this = self.0.clone();
        // Building the routing table of a large configuration is CPU work.
        let resp = tokio::task::spawn_blocking(move || this.apply(request))
            .await
            .map_err(|e| Status::internal(format!("apply task failed: {e}")))?;
        Ok(Response::new(resp))
    }
}

impl Inner {
    fn bump(&self) {
        self.changes.send_modify(|_| {});
    }

    fn apply(&self, req: ApplyRequestView) -> ApplyResponse {
        let (resp, effect) = self.programming.apply(req);
        if effect == Effect::Changed {
            self.changes.send_replace(resp.applied_version);
        }
        resp
    }

    fn status(&self) -> NodeStatus {
        let (version, term, refused) = self.programming.status();
        status::build(
            &self.ctx,
            &self.node_id,
            &self.boot_id,
            version,
            term,
            refused.as_ref(),
            &self.sip_addresses,
        )
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<NodeStatus, Status>> + Send>>;

#[tonic::async_trait]
impl NodeControl for ControlService {
    /// Served by [`super::router::ControlRouter`] as the view; this is the
    /// same for a request decoded in full.
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        self.apply_view(request.into_inner().into_view()).await
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

/// HTTP/2 stream window of the control port.
const CONTROL_STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// Serves the control service on `addr` until the future is dropped, with
/// the call API's gRPC `CallService` next to it (`api`: the same calls as on
/// `--api-bind`), so the operator can place calls over the channel it
/// programs the node through. With `tls`, only TLS connections are
/// accepted; `token` guards every call of both services.
pub async fn serve(
    addr: std::net::SocketAddr,
    service: ControlService,
    api: crate::api::Api,
    tls: Option<tonic::transport::ServerTlsConfig>,
    token: super::TokenCheck,
) -> Result<(), tonic::transport::Error> {
    let server = super::router::ControlRouter::new(service, MAX_MESSAGE_BYTES);
    let calls_token = token.clone();
    let svc =
        tonic::service::interceptor::InterceptedService::new(server, move |req| token.check(req));
    let calls = tonic::service::interceptor::InterceptedService::new(
        CallServiceServer::new(crate::api::grpc::CallApi::new(api)),
        move |req| calls_token.check(req),
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        // A snapshot of 100,000 numbers is 10 MB: with HTTP/2's default
        // 64 KiB windows it would take some 160 window updates, each
        // waiting for this node's connection task to be scheduled (ten
        // nodes loading at once share the cores). Only the authenticated
        // operator sends much here.
        .initial_stream_window_size(Some(CONTROL_STREAM_WINDOW))
        .initial_connection_window_size(Some(2 * CONTROL_STREAM_WINDOW))
        .add_service(svc)
        .add_service(calls)
        .serve(addr)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::v1alpha1::{
        ConfigDelta, PhoneNumber, RoutingConfig, Trunk, apply_request::Change,
    };

    impl Programming {
        /// A request as the router hands it over.
        fn apply_full(&self, req: ApplyRequest) -> (ApplyResponse, Effect) {
            self.apply(req.into_view())
        }
    }

    fn programming() -> (Programming, Metrics) {
        let metrics = Metrics::new();
        (Programming::new(RoutingStore::default(), &metrics), metrics)
    }

    fn number(id: &str, e164: &str) -> PhoneNumber {
        PhoneNumber {
            id: id.into(),
            e164: e164.into(),
            trunk_id: "ns/t".into(),
            inbound: true,
            ..Default::default()
        }
    }

    fn snapshot(version: u64, numbers: &[(&str, &str)]) -> Change {
        Change::Snapshot(RoutingConfig {
            version,
            trunks: vec![Trunk {
                id: "ns/t".into(),
                enabled: true,
                ..Default::default()
            }],
            numbers: numbers.iter().map(|(i, e)| number(i, e)).collect(),
        })
    }

    fn delta(base: u64, upsert: &[(&str, &str)], remove: &[&str]) -> Change {
        Change::Delta(ConfigDelta {
            base_version: base,
            version: base + 1,
            upsert_numbers: upsert.iter().map(|(i, e)| number(i, e)).collect(),
            remove_numbers: remove.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    fn send(p: &Programming, term: u64, change: Change) -> ApplyResponse {
        p.apply_full(ApplyRequest {
            change: Some(change),
            term,
        })
        .0
    }

    fn result(r: &ApplyResponse) -> ApplyResult {
        ApplyResult::try_from(r.result).expect("known result")
    }

    fn called(p: &Programming, user: &str) -> Option<String> {
        p.routing
            .read(|t| t.number_for(user).map(|n| n.id))
            .flatten()
    }

    #[test]
    fn a_delta_changes_the_table_in_place_and_keeps_the_metrics() {
        let (p, metrics) = programming();
        let r = send(
            &p,
            0,
            snapshot(1, &[("ns/a", "+15550000001"), ("ns/b", "+15550000002")]),
        );
        assert_eq!((result(&r), r.applied_version), (ApplyResult::Applied, 1));
        assert_eq!(p.numbers.get(), 2);
        let r = send(&p, 0, delta(1, &[("ns/c", "+15550000003")], &["ns/a"]));
        assert_eq!((result(&r), r.applied_version), (ApplyResult::Applied, 2));
        assert_eq!(called(&p, "15550000001"), None);
        assert_eq!(called(&p, "15550000003").as_deref(), Some("ns/c"));
        assert_eq!(p.numbers.get(), 2);
        assert_eq!(metrics.config_version.get(), 2);
        // A delta on another base asks for a snapshot and changes nothing.
        let r = send(&p, 0, delta(7, &[("ns/d", "+15550000004")], &[]));
        assert_eq!(
            (result(&r), r.applied_version),
            (ApplyResult::NeedSnapshot, 2)
        );
        assert_eq!(called(&p, "15550000004"), None);
        // A snapshot replaces everything.
        let r = send(&p, 0, snapshot(3, &[("ns/z", "+15550000009")]));
        assert_eq!(result(&r), ApplyResult::Applied);
        assert_eq!(called(&p, "15550000002"), None);
        assert_eq!(called(&p, "15550000009").as_deref(), Some("ns/z"));
        assert_eq!((p.numbers.get(), metrics.config_version.get()), (1, 3));
    }

    #[test]
    fn a_refused_delta_leaves_everything_as_it_was() {
        let (p, metrics) = programming();
        send(&p, 0, snapshot(1, &[("ns/a", "+15550000001")]));
        // Valid upsert and removal, then one number on an unknown trunk: the
        // whole delta is refused, the valid parts too.
        let Change::Delta(mut d) = delta(1, &[("ns/b", "+15550000002")], &["ns/a"]) else {
            unreachable!()
        };
        d.upsert_numbers.push(PhoneNumber {
            trunk_id: "ns/missing".into(),
            ..number("ns/c", "+15550000003")
        });
        let (r, effect) = p.apply_full(ApplyRequest {
            change: Some(Change::Delta(d)),
            term: 0,
        });
        assert_eq!((result(&r), r.applied_version), (ApplyResult::Refused, 1));
        assert!(r.reason.contains("ns/missing"), "{}", r.reason);
        assert_eq!(effect, Effect::Changed, "status shows the refusal");
        assert_eq!(called(&p, "15550000001").as_deref(), Some("ns/a"));
        assert_eq!(called(&p, "15550000002"), None);
        assert_eq!((p.numbers.get(), metrics.config_version.get()), (1, 1));
        assert_eq!(p.refusals.get(), 1);
        let (version, _, refused) = p.status();
        assert_eq!(version, 1);
        assert_eq!(refused.map(|r| r.0), Some(2));
        // The next good change clears the refusal.
        send(&p, 0, delta(1, &[("ns/b", "+15550000002")], &[]));
        assert_eq!(p.status().2, None);
    }

    #[test]
    fn an_older_leadership_term_is_fenced_off() {
        let (p, metrics) = programming();
        let r = send(&p, 4, snapshot(10, &[("ns/a", "+15550000001")]));
        assert_eq!((result(&r), r.term), (ApplyResult::Applied, 4));
        assert_eq!(p.status().1, 4, "config_term");
        // The deposed leader of term 3: neither a snapshot nor a delta on
        // the current version changes anything.
        for change in [
            snapshot(11, &[("ns/old", "+15550000009")]),
            delta(10, &[("ns/old", "+15550000009")], &["ns/a"]),
        ] {
            let (r, effect) = p.apply_full(ApplyRequest {
                change: Some(change),
                term: 3,
            });
            assert_eq!(result(&r), ApplyResult::StaleTerm);
            assert_eq!((r.applied_version, r.term), (10, 4));
            assert_eq!(
                r.reason,
                "configuration from leadership term 3, this node already runs term 4: \
                 the sender is no longer the leader"
            );
            assert_eq!(effect, Effect::None);
        }
        assert_eq!(called(&p, "15550000001").as_deref(), Some("ns/a"));
        assert_eq!(called(&p, "15550000009"), None);
        assert_eq!(p.stale_terms.get(), 2);
        assert_eq!(p.refusals.get(), 0);
        assert_eq!(p.status(), (10, 4, None), "not reported as a refusal");
        assert_eq!(metrics.config_version.get(), 10);
        // An operator without leader election cannot overwrite it either.
        let r = send(&p, 0, snapshot(12, &[]));
        assert_eq!(result(&r), ApplyResult::StaleTerm);
        assert!(r.reason.contains("term 0"), "{}", r.reason);
        // The same term goes on; a newer one takes over, with a delta on
        // the same base as well as with a snapshot.
        let r = send(&p, 4, delta(10, &[("ns/b", "+15550000002")], &[]));
        assert_eq!(
            (result(&r), r.applied_version, r.term),
            (ApplyResult::Applied, 11, 4)
        );
        let r = send(&p, 5, delta(11, &[("ns/c", "+15550000003")], &[]));
        assert_eq!(
            (result(&r), r.applied_version, r.term),
            (ApplyResult::Applied, 12, 5)
        );
        let r = send(&p, 4, delta(12, &[], &["ns/c"]));
        assert_eq!((result(&r), r.term), (ApplyResult::StaleTerm, 5));
        let r = send(&p, 6, snapshot(20, &[("ns/a", "+15550000001")]));
        assert_eq!(
            (result(&r), r.applied_version, r.term),
            (ApplyResult::Applied, 20, 6)
        );
        assert_eq!(p.status().1, 6);
    }

    #[test]
    fn term_zero_works_until_a_leader_appears_and_resent_snapshots_are_applied() {
        let (p, _) = programming();
        let r = send(&p, 0, snapshot(1, &[("ns/a", "+15550000001")]));
        assert_eq!((result(&r), r.term), (ApplyResult::Applied, 0));
        let r = send(&p, 0, delta(1, &[("ns/b", "+15550000002")], &[]));
        assert_eq!((result(&r), r.term), (ApplyResult::Applied, 0));
        assert_eq!(p.status().1, 0);
        // A leader's first request re-sends what the node runs: Applied,
        // and the node is now on the leader's term.
        let same = snapshot(2, &[("ns/a", "+15550000001"), ("ns/b", "+15550000002")]);
        let (r, effect) = p.apply_full(ApplyRequest {
            change: Some(same.clone()),
            term: 1,
        });
        assert_eq!(
            (result(&r), r.applied_version, r.term),
            (ApplyResult::Applied, 2, 1)
        );
        assert_eq!(effect, Effect::Changed, "the term changed");
        let (r, effect) = p.apply_full(ApplyRequest {
            change: Some(same),
            term: 1,
        });
        assert_eq!((result(&r), effect), (ApplyResult::Applied, Effect::None));
        let r = send(&p, 0, delta(2, &[], &["ns/a"]));
        assert_eq!(result(&r), ApplyResult::StaleTerm);
        assert_eq!(called(&p, "15550000001").as_deref(), Some("ns/a"));
        // The same version with other content is not "the same": it is
        // applied.
        let r = send(&p, 1, snapshot(2, &[("ns/c", "+15550000003")]));
        assert_eq!(result(&r), ApplyResult::Applied);
        assert_eq!(called(&p, "15550000003").as_deref(), Some("ns/c"));
        // An empty request is refused, with the node's term.
        let (r, _) = p.apply_full(ApplyRequest {
            change: None,
            term: 1,
        });
        assert_eq!((result(&r), r.term), (ApplyResult::Refused, 1));
    }

    #[test]
    fn a_delta_can_program_an_unprogrammed_node_from_version_zero() {
        let (p, _) = programming();
        assert!(!p.routing.is_programmed());
        let Change::Delta(mut d) = delta(0, &[("ns/a", "+15550000001")], &[]) else {
            unreachable!()
        };
        d.upsert_trunks.push(Trunk {
            id: "ns/t".into(),
            ..Default::default()
        });
        let r = send(&p, 0, Change::Delta(d));
        assert_eq!((result(&r), r.applied_version), (ApplyResult::Applied, 1));
        assert_eq!(called(&p, "15550000001").as_deref(), Some("ns/a"));
    }
}
