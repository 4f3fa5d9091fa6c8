//! One connection per media node: dial with backoff, push a full snapshot on
//! every (re)connection and deltas afterwards, and relay the node's status
//! stream to the fleet manager.

use std::sync::Arc;
use std::time::Duration;

use crate::routing::index::changed;
use bytes::Bytes;
use imbl::OrdMap;
use prost::Message;
use switchboard_proto::v1alpha1::{
    self as pb, apply_response, node_control_client::NodeControlClient,
};
use tokio::sync::{mpsc, watch};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tracing::{debug, info, warn};

use super::client::{ControlClient, MAX_MESSAGE_BYTES};
use super::encode::{self, Encoded, NumbersEncoding};
use super::plan::Trunks;
use super::send;

/// Numbers by id, shared by every node's desired configuration: a
/// persistent map, so a new generation costs only its change and two
/// generations diff in time proportional to what differs.
pub type Numbers = OrdMap<String, Arc<pb::PhoneNumber>>;

/// The configuration one node should run. Numbers are shared between nodes
/// (they are the same everywhere); trunks carry per-node shares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// Version of this configuration.
    pub version: u64,
    /// Trunks with this node's shares.
    pub trunks: Trunks,
    /// Numbers, identical for every node.
    pub numbers: Numbers,
    /// The numbers' encoding, shared by every node given this generation.
    pub encoding: NumbersEncoding,
}

impl Desired {
    #[cfg(test)]
    fn snapshot(&self) -> pb::RoutingConfig {
        pb::RoutingConfig {
            version: self.version,
            trunks: self.trunks.values().map(|t| t.as_ref().clone()).collect(),
            numbers: self.numbers.values().map(|n| n.as_ref().clone()).collect(),
        }
    }

    /// The snapshot `ApplyRequest`, encoded: this node's trunks, then the
    /// numbers every node shares (encoded once for all of them).
    fn snapshot_request(&self, term: u64) -> Encoded {
        let head = pb::RoutingConfig {
            version: self.version,
            trunks: self.trunks.values().map(|t| t.as_ref().clone()).collect(),
            numbers: Vec::new(),
        };
        encode::snapshot_request(&head, self.encoding.get(&self.numbers), term)
    }

    fn delta(&self, from: &Desired) -> pb::ConfigDelta {
        let (upsert_trunks, remove_trunks) = map_delta(&from.trunks, &self.trunks);
        let (upsert_numbers, remove_numbers) = map_delta(&from.numbers, &self.numbers);
        pb::ConfigDelta {
            base_version: from.version,
            version: self.version,
            upsert_trunks,
            remove_trunks,
            upsert_numbers,
            remove_numbers,
        }
    }
}

/// Upserts and removals turning `from` into `to`. Shared subtrees are
/// skipped: the cost is the change's, however far apart the two
/// generations are.
fn map_delta<T: Clone + PartialEq>(
    from: &OrdMap<String, Arc<T>>,
    to: &OrdMap<String, Arc<T>>,
) -> (Vec<T>, Vec<String>) {
    let (mut upserts, mut removals) = (Vec::new(), Vec::new());
    for (id, v) in from.diff(to).map(changed) {
        match v {
            Some(v) => upserts.push(v.as_ref().clone()),
            None => removals.push(id.clone()),
        }
    }
    (upserts, removals)
}

/// What a connection tells the manager.
#[derive(Debug)]
pub enum Report {
    /// Connected and the status stream is open.
    Connected,
    /// The node runs this configuration.
    Acked(Arc<Desired>),
    /// The node refused this version.
    Refused(u64, String),
    /// The node refused this version because it follows a newer leadership
    /// term; the connection has stopped pushing for good.
    StaleTerm(u64, String),
    /// A status report.
    Status(Box<pb::NodeStatus>),
    /// The connection ended.
    Disconnected,
    /// A push was sent: (snapshot?, encoded bytes).
    Sent(bool, usize),
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Client(#[from] super::client::ClientError),
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("status stream ended")]
    StreamEnded,
    #[error("the node refused a snapshot after asking for one")]
    SnapshotLoop,
    #[error("the node follows a newer leadership term than {ours} (its term: {theirs})")]
    StaleTerm { ours: u64, theirs: u64 },
}

/// Runs until the manager drops the task (node gone), the desired channel
/// closes, or the node answers that `term` is stale (another replica leads:
/// pushing again could only be refused, so the task ends).
pub async fn drive(
    id: String,
    addr: String,
    client: Arc<ControlClient>,
    term: u64,
    mut desired: watch::Receiver<Arc<Desired>>,
    reports: mpsc::UnboundedSender<(String, Report)>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut last_error: Option<String> = None;
    loop {
        let started = tokio::time::Instant::now();
        let result = session(&id, &addr, &client, term, &mut desired, &reports).await;
        let why = match result {
            Ok(()) => return,
            Err(SessionError::StaleTerm { ours, theirs }) => {
                warn!(node = %id, %addr, term = ours, node_term = theirs,
                    "media node follows a newer leader; stopped programming it");
                return;
            }
            Err(e) => e.to_string(),
        };
        // Warn once per distinct failure, not on every retry.
        if last_error.as_deref() != Some(why.as_str()) {
            warn!(node = %id, %addr, error = %why, "control connection to media node failed; retrying");
        } else {
            debug!(node = %id, %addr, error = %why, "control connection retry failed");
        }
        last_error = Some(why);
        let _ = reports.send((id.clone(), Report::Disconnected));
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Adds the control token, when there is one, to every request.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(b) = &self.0 {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    }
}

async fn session(
    id: &str,
    addr: &str,
    client: &ControlClient,
    term: u64,
    desired: &mut watch::Receiver<Arc<Desired>>,
    reports: &mpsc::UnboundedSender<(String, Report)>,
) -> Result<(), SessionError> {
    let channel = client.endpoint(addr)?.connect().await?;
    let bearer = Bearer(
        client
            .bearer()
            .and_then(|b| MetadataValue::try_from(b).ok()),
    );
    // Apply requests are sent encoded (a snapshot's numbers are encoded once
    // for every node and not copied per node): see `send`.
    let apply_bearer = client.bearer().and_then(|b| {
        let mut v = http::HeaderValue::try_from(b).ok()?;
        v.set_sensitive(true);
        Some(v)
    });
    let mut rpc = NodeControlClient::with_interceptor(channel.clone(), bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut status = rpc
        .watch_status(pb::WatchStatusRequest {})
        .await?
        .into_inner();
    info!(node = %id, %addr, "connected to media node");
    let send = |r: Report| {
        let _ = reports.send((id.to_string(), r));
    };
    send(Report::Connected);

    // A new connection may be a restarted node: always start from a snapshot.
    let mut acked: Option<Arc<Desired>> = None;
    let mut refused: Option<u64> = None;
    let mut boot_id: Option<String> = None;
    loop {
        let want = desired.borrow_and_update().clone();
        let current = acked.as_ref().map(|a| a.version);
        if want.version > 0 && current != Some(want.version) && refused != Some(want.version) {
            let (body, snapshot) = match &acked {
                None => (want.snapshot_request(term), true),
                Some(a) => {
                    let req = pb::ApplyRequest {
                        change: Some(pb::apply_request::Change::Delta(want.delta(a))),
                        term,
                    };
                    (Encoded::whole(Bytes::from(req.encode_to_vec())), false)
                }
            };
            send(Report::Sent(snapshot, body.encoded_len()));
            let resp = send::apply(&channel, apply_bearer.as_ref(), body).await?;
            match apply_response::Result::try_from(resp.result)
                .unwrap_or(apply_response::Result::Unspecified)
            {
                apply_response::Result::Applied => {
                    debug!(node = %id, version = want.version, snapshot, "configuration applied");
                    refused = None;
                    acked = Some(want.clone());
                    send(Report::Acked(want));
                }
                apply_response::Result::NeedSnapshot if !snapshot => {
                    acked = None;
                    continue;
                }
                apply_response::Result::NeedSnapshot => return Err(SessionError::SnapshotLoop),
                apply_response::Result::StaleTerm => {
                    let why = format!(
                        "stale leadership term {term} (the node applied term {}): {}",
                        resp.term, resp.reason
                    );
                    send(Report::StaleTerm(want.version, why));
                    return Err(SessionError::StaleTerm {
                        ours: term,
                        theirs: resp.term,
                    });
                }
                apply_response::Result::Refused | apply_response::Result::Unspecified => {
                    warn!(node = %id, version = want.version, reason = %resp.reason, "node refused the configuration");
                    refused = Some(want.version);
                    send(Report::Refused(want.version, resp.reason));
                }
            }
        }
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            msg = status.message() => {
                let Some(s) = msg? else { return Err(SessionError::StreamEnded) };
                if boot_id.as_ref().is_some_and(|b| *b != s.boot_id) {
                    // Restarted behind a proxy without the stream noticing.
                    acked = None;
                }
                boot_id = Some(s.boot_id.clone());
                send(Report::Status(Box::new(s)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: &str, e164: &str) -> (String, Arc<pb::PhoneNumber>) {
        (
            id.to_string(),
            Arc::new(pb::PhoneNumber {
                id: id.into(),
                e164: e164.into(),
                ..Default::default()
            }),
        )
    }

    #[test]
    fn deltas_skip_numbers_when_shared_unchanged() {
        let numbers: Numbers = [n("ns/n", "+1")].into_iter().collect();
        let a = Desired {
            version: 1,
            numbers: numbers.clone(),
            ..Default::default()
        };
        let mut b = a.clone();
        b.version = 2;
        b.trunks.insert(
            "ns/t".into(),
            Arc::new(pb::Trunk {
                id: "ns/t".into(),
                ..Default::default()
            }),
        );
        let d = b.delta(&a);
        assert_eq!(d.upsert_trunks.len(), 1);
        assert!(d.upsert_numbers.is_empty() && d.remove_numbers.is_empty());
        assert_eq!((d.base_version, d.version), (1, 2));
        let rebuilt = switchboard_proto::delta::apply(&a.snapshot(), &d).expect("apply");
        assert_eq!(rebuilt, b.snapshot());
    }

    #[test]
    fn a_delta_between_distant_generations_carries_exactly_their_difference() {
        let mut numbers: Numbers = (0..10_000)
            .map(|i| n(&format!("ns/{i:05}"), &format!("+1555{i:07}")))
            .collect();
        let a = Desired {
            version: 1,
            numbers: numbers.clone(),
            ..Default::default()
        };
        numbers.insert(n("ns/new", "+19990000000").0, n("ns/new", "+19990000000").1);
        numbers.remove("ns/00007");
        let (id, changed) = n("ns/00042", "+15550000999");
        numbers.insert(id, changed);
        let b = Desired {
            version: 5,
            numbers,
            ..Default::default()
        };
        let d = b.delta(&a);
        let mut ups: Vec<&str> = d.upsert_numbers.iter().map(|n| n.id.as_str()).collect();
        ups.sort();
        assert_eq!(ups, vec!["ns/00042", "ns/new"]);
        assert_eq!(d.remove_numbers, vec!["ns/00007".to_string()]);
        assert_eq!(
            switchboard_proto::delta::apply(&a.snapshot(), &d).expect("apply"),
            b.snapshot()
        );
    }
}
