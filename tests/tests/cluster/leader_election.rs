//! `switchboard_operator::leader` against a real kube-apiserver: terms,
//! renewal, take-over after a release or a crash, and a leader cut off from
//! the API server stepping down before anyone else may take over; then the
//! operator binary: its term metric, a deposed leader's status writes, and a
//! cut-off leader stopping before its successor starts.
//!
//! Every candidate's leadership is recorded as a timeline of changes (with
//! the wall-clock time of each), so "no overlap" is checked on every
//! transition rather than on samples.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Api, Client};
use serde_json::json;
use switchboard_operator::crd::PhoneNumber;
use switchboard_operator::leader::{self, Leadership};
use switchboard_tests::envtest::TestCluster;
use switchboard_tests::operator::Operator;
use switchboard_tests::poll::eventually;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const NS: &str = "default";
const LEASE: &str = "leader-test";
/// Short leases keep the tests quick; whole seconds, as the Lease stores them.
const DURATION: Duration = Duration::from_secs(2);
/// Scheduling and request latency allowed on top of a lease duration.
const MARGIN: Duration = Duration::from_millis(700);
const WAIT: Duration = Duration::from_secs(30);

/// One candidate: its leadership watch, the recorded timeline, and the
/// handles to stop (with release) or kill (without) it.
struct Candidate {
    rx: watch::Receiver<Leadership>,
    timeline: Arc<Mutex<Vec<(Timestamp, Leadership)>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Candidate {
    fn start(client: Client, identity: &str) -> Self {
        let cfg = leader::Config {
            namespace: NS.into(),
            name: LEASE.into(),
            identity: identity.into(),
            lease_duration: DURATION,
            renew_period: DURATION / 3,
        };
        let (stop, stop_rx) = watch::channel(false);
        let (rx, task) = leader::spawn(client, cfg, stop_rx);
        let timeline = Arc::new(Mutex::new(vec![(Timestamp::now(), *rx.borrow())]));
        let (mut watch, record) = (rx.clone(), timeline.clone());
        tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                let now = *watch.borrow_and_update();
                if let Ok(mut t) = record.lock() {
                    t.push((Timestamp::now(), now));
                }
            }
        });
        Self {
            rx,
            timeline,
            stop,
            task,
        }
    }

    fn now(&self) -> Leadership {
        *self.rx.borrow()
    }

    fn timeline(&self) -> Vec<(Timestamp, Leadership)> {
        self.timeline.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until it leads; its term.
    async fn leads(&self, what: &str, within: Duration) -> u64 {
        eventually(what, within, || async {
            self.now().term().ok_or_else(|| format!("{:?}", self.now()))
        })
        .await
    }

    /// The first time it reported `want`, at or after `since`.
    fn first(&self, since: Timestamp, want: impl Fn(&Leadership) -> bool) -> Option<Timestamp> {
        self.timeline()
            .into_iter()
            .find(|(at, l)| *at >= since && want(l))
            .map(|(at, _)| at)
    }
}

async fn cluster() -> (TestCluster, Client) {
    let c = TestCluster::start().await.expect("start test cluster");
    let client = c.client().await.expect("admin client");
    (c, client)
}

async fn lease(client: &Client) -> Lease {
    lease_named(client, LEASE).await
}

async fn lease_named(client: &Client, name: &str) -> Lease {
    let api: Api<Lease> = Api::namespaced(client.clone(), NS);
    api.get(name).await.expect("read the Lease")
}

fn holder(l: &Lease) -> Option<String> {
    l.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

fn renew_time(l: &Lease) -> Timestamp {
    l.spec
        .as_ref()
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0)
        .expect("renewTime")
}

fn transitions(l: &Lease) -> i32 {
    l.spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

fn within(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).expect("duration fits")
}

#[tokio::test]
async fn a_lone_candidate_leads_in_term_one_and_keeps_it_while_renewing() {
    let (_c, client) = cluster().await;
    let a = Candidate::start(client.clone(), "a");
    assert_eq!(a.leads("a to lead", WAIT).await, 1);
    let first = lease(&client).await;
    assert_eq!(holder(&first).as_deref(), Some("a"));
    assert_eq!(transitions(&first), 0);
    let since = Timestamp::now();

    // Letting three lease durations pass is the point here.
    tokio::time::sleep(DURATION * 3).await;
    let later = lease(&client).await;
    assert_eq!(holder(&later).as_deref(), Some("a"));
    assert_eq!(
        transitions(&later),
        0,
        "renewals must not count as transitions"
    );
    assert!(
        renew_time(&later) > renew_time(&first) + within(DURATION),
        "renewTime did not advance: {} then {}",
        renew_time(&first),
        renew_time(&later)
    );
    assert_eq!(a.now(), Leadership::Leading { term: 1 });
    // The recorder may log the first Leading a moment after `since`; nothing
    // else may follow it.
    let changes: Vec<_> = a
        .timeline()
        .into_iter()
        .filter(|(at, l)| *at >= since && *l != Leadership::Leading { term: 1 })
        .collect();
    assert!(changes.is_empty(), "leadership flapped: {changes:?}");
}

#[tokio::test]
async fn a_successor_takes_over_with_a_higher_term_after_a_release_and_after_a_crash() {
    let (_c, client) = cluster().await;
    let a = Candidate::start(client.clone(), "a");
    assert_eq!(a.leads("a to lead", WAIT).await, 1);
    let b = Candidate::start(client.clone(), "b");
    // b waits while a renews: over two lease durations it never leads.
    tokio::time::sleep(DURATION * 2).await;
    assert!(
        b.timeline().iter().all(|(_, l)| !l.is_leader()),
        "b led while a renewed: {:?}",
        b.timeline()
    );
    assert_eq!(a.now(), Leadership::Leading { term: 1 });

    // A release hands over at b's next look, well within a lease duration.
    let released = Timestamp::now();
    a.stop.send_replace(true);
    let term_b = b.leads("b to lead after a's release", WAIT).await;
    assert_eq!(term_b, 2);
    let took = b
        .first(released, Leadership::is_leader)
        .expect("b's take-over")
        .duration_since(released);
    assert!(took < within(DURATION + MARGIN), "take-over took {took}");
    let a_done = a
        .first(released, |l| !l.is_leader())
        .expect("a stepped down");
    assert!(a_done <= released + within(MARGIN), "a stepped down late");
    tokio::time::timeout(WAIT, a.task)
        .await
        .expect("a's task ends after stop")
        .expect("a's task did not panic");
    assert_eq!(holder(&lease(&client).await).as_deref(), Some("b"));

    // A crash (no release): c takes over once b's lease expired.
    let c = Candidate::start(client.clone(), "c");
    tokio::time::sleep(DURATION).await;
    assert!(!c.now().is_leader(), "c led while b renewed");
    let last = renew_time(&lease(&client).await);
    b.task.abort();
    let crashed = Timestamp::now();
    let term_c = c.leads("c to lead after b crashed", WAIT).await;
    assert!(term_c > term_b, "term {term_c} after {term_b}");
    let took_over = c
        .first(crashed, Leadership::is_leader)
        .expect("c's take-over");
    let took = took_over.duration_since(crashed);
    assert!(took < within(DURATION + MARGIN), "take-over took {took}");
    // Never before b's lease expired (b may have renewed once more after
    // `last` was read, which only makes the expiry later).
    assert!(
        took_over >= last + within(DURATION),
        "c took over at {took_over}, before b's lease from {last} expired"
    );
    let l = lease(&client).await;
    assert_eq!(holder(&l).as_deref(), Some("c"));
    assert_eq!(u64::try_from(transitions(&l)).ok(), Some(term_c - 1));
}

/// How a cut proxy treats connections.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cut {
    /// Forward bytes.
    Open,
    /// Close every connection and refuse new ones (a crashed server or a
    /// reset route): requests fail fast.
    Refuse,
    /// Stop forwarding but keep connections open, and accept new ones that
    /// never answer (a partitioned network): requests hang.
    Blackhole,
}

/// A TCP proxy in front of the API server with a switch.
struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Cut>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, rx) = watch::channel(Cut::Open);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let mut rx = rx.clone();
                let now = *rx.borrow_and_update();
                tokio::spawn(async move {
                    match now {
                        Cut::Refuse => drop(conn),
                        Cut::Blackhole => {
                            // Held open, never answered, until the test ends.
                            let _conn = conn;
                            std::future::pending::<()>().await;
                        }
                        Cut::Open => forward(conn, upstream, rx).await,
                    }
                });
            }
        });
        Self { addr, mode }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn set(&self, cut: Cut) {
        self.mode.send_replace(cut);
    }
}

/// Copies both ways until either side closes or the switch is thrown.
async fn forward(mut conn: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Cut>) {
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let cut = async {
        while *mode.borrow_and_update() == Cut::Open {
            if mode.changed().await.is_err() {
                break;
            }
        }
        *mode.borrow()
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut conn, &mut up) => {}
        why = cut => {
            if why == Cut::Blackhole {
                std::future::pending::<()>().await;
            }
            let _ = conn.shutdown().await;
        }
    }
}

async fn cut_off_leader_steps_down_before_the_lease_expires(cut: Cut) {
    let (c, client) = cluster().await;
    let upstream: SocketAddr = c
        .server_url()
        .trim_start_matches("https://")
        .parse()
        .expect("server address");
    let proxy = Proxy::start(upstream).await;
    let via_proxy = c.client_via(&proxy.url()).await.expect("client via proxy");
    let a = Candidate::start(via_proxy, "a");
    let term_a = a.leads("a to lead", WAIT).await;
    let b = Candidate::start(client.clone(), "b");
    // b has looked and follows.
    tokio::time::sleep(DURATION / 2).await;
    assert!(!b.now().is_leader());

    proxy.set(cut);
    let cut_at = Timestamp::now();
    eventually("a to step down", WAIT, || async {
        if a.now().is_leader() {
            Err(format!("{:?}", a.now()))
        } else {
            Ok(())
        }
    })
    .await;
    let stepped_down = a.first(cut_at, |l| !l.is_leader()).expect("a's step-down");
    // a's last successful renewal is what the Lease says while b waits for
    // it to expire.
    let l = lease(&client).await;
    assert_eq!(
        holder(&l).as_deref(),
        Some("a"),
        "b took over before a stepped down; a: {:?}, b: {:?}",
        a.timeline(),
        b.timeline()
    );
    let last_renewal = renew_time(&l);
    assert!(
        stepped_down < last_renewal + within(DURATION),
        "a stepped down at {stepped_down}, its lease from {last_renewal} expired first"
    );

    let term_b = b.leads("b to take over", WAIT).await;
    assert!(term_b > term_a, "term {term_b} after {term_a}");
    let took_over = b
        .first(cut_at, Leadership::is_leader)
        .expect("b's take-over");
    assert!(
        took_over >= last_renewal + within(DURATION),
        "b took over at {took_over} before a's lease from {last_renewal} expired"
    );
    assert!(
        stepped_down < took_over,
        "overlap: a stepped down at {stepped_down}, b led from {took_over}"
    );
    let took = took_over.duration_since(last_renewal);
    assert!(
        took < within(DURATION + MARGIN),
        "b took over {took} after a's last renewal"
    );
    // a stays a follower while it cannot reach the API server.
    assert!(!a.now().is_leader());
}

#[tokio::test]
async fn a_leader_whose_api_server_refuses_connections_steps_down_in_time() {
    cut_off_leader_steps_down_before_the_lease_expires(Cut::Refuse).await;
}

#[tokio::test]
async fn a_leader_whose_requests_hang_steps_down_in_time() {
    cut_off_leader_steps_down_before_the_lease_expires(Cut::Blackhole).await;
}

// The operator binary: what its metrics and status writes show of the above.

const OP_LEASE: &str = "switchboard-operator";
const OP_DURATION: Duration = Duration::from_secs(3);

fn crds_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

fn numbers(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<PhoneNumber>(&()))
}

/// A PhoneNumber whose trunk does not exist: it still gets a status.
async fn apply_number(client: &Client, name: &str, e164: &str) {
    let doc = json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "PhoneNumber",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"number": e164, "trunkRef": {"name": "absent"},
                 "agent": {"url": "wss://agent.example.com/ws"}}
    });
    numbers(client)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap_or_else(|e| panic!("apply PhoneNumber {name}: {e}"));
}

/// Waits for the operator to write the PhoneNumber's status.
async fn wait_status(client: &Client, name: &str) {
    eventually(&format!("a status on {name}"), WAIT, || async {
        if has_status(client, name).await {
            Ok(())
        } else {
            Err("no status".to_string())
        }
    })
    .await;
}

async fn has_status(client: &Client, name: &str) -> bool {
    numbers(client)
        .get(name)
        .await
        .ok()
        .and_then(|o| {
            o.data["status"]["conditions"]
                .as_array()
                .map(|c| !c.is_empty())
        })
        .unwrap_or(false)
}

async fn writes(op: &Operator) -> f64 {
    op.metric(r#"switchboard_operator_status_writes_total{kind="PhoneNumber",result="ok"}"#)
        .await
        .unwrap_or(0.0)
}

/// `(leader, term)` from the operator's metrics.
async fn leadership(op: &Operator) -> Result<(f64, f64), String> {
    Ok((
        op.metric("switchboard_operator_leader").await?,
        op.metric("switchboard_operator_leader_term").await?,
    ))
}

async fn until_leadership(op: &Operator, want: (f64, f64), within: Duration) {
    eventually(&format!("leader, term = {want:?}"), within, || async {
        let got = leadership(op).await?;
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_deposed_operator_stops_writing_status_at_once_and_returns_in_a_higher_term() {
    let (c, client) = cluster().await;
    c.install_crds(crds_dir()).await.expect("install crds/");
    let secs = OP_DURATION.as_secs().to_string();
    let a = Operator::start_kube(
        c.kubeconfig_path(),
        "op-a",
        &["--lease-duration-seconds", &secs],
    );
    until_leadership(&a, (1.0, 1.0), WAIT).await;
    apply_number(&client, "first", "+14155550100").await;
    wait_status(&client, "first").await;

    // Someone else takes the Lease (as a replica with a skewed clock might):
    // a must notice at its next renewal, not after its own lease ran out.
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let mut l = leases.get(OP_LEASE).await.expect("the operator's Lease");
    let intruder_secs = 6;
    if let Some(s) = l.spec.as_mut() {
        s.holder_identity = Some("intruder".into());
        s.renew_time = Some(MicroTime(Timestamp::now()));
        s.lease_duration_seconds = Some(intruder_secs);
        s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
    }
    leases
        .replace(OP_LEASE, &PostParams::default(), &l)
        .await
        .expect("take the Lease");
    let taken = std::time::Instant::now();
    until_leadership(&a, (0.0, 0.0), WAIT).await;
    assert!(
        taken.elapsed() < OP_DURATION,
        "a stepped down {:?} after being deposed",
        taken.elapsed()
    );

    let before = writes(&a).await;
    apply_number(&client, "second", "+14155550101").await;
    // A window in which a deposed leader would have written; the intruder's
    // lease lasts well beyond it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(taken.elapsed() < Duration::from_secs(intruder_secs as u64));
    assert_eq!(writes(&a).await, before, "a deposed leader wrote status");
    assert!(
        !has_status(&client, "second").await,
        "second got a status while nobody led"
    );

    // The intruder never renews: a takes the Lease back in a new term
    // (transitions 0 -> 1 by the intruder -> 2) and catches up.
    until_leadership(&a, (1.0, 3.0), WAIT).await;
    wait_status(&client, "second").await;
}

#[tokio::test]
async fn a_cut_off_operator_stops_leading_before_its_successor_starts() {
    let (c, client) = cluster().await;
    c.install_crds(crds_dir()).await.expect("install crds/");
    let upstream: SocketAddr = c
        .server_url()
        .trim_start_matches("https://")
        .parse()
        .expect("server address");
    let proxy = Proxy::start(upstream).await;
    let via_proxy = c
        .write_kubeconfig_via(c.admin(), &proxy.url())
        .expect("kubeconfig via proxy");
    let secs = OP_DURATION.as_secs().to_string();
    let a = Operator::start_kube(&via_proxy, "op-a", &["--lease-duration-seconds", &secs]);
    until_leadership(&a, (1.0, 1.0), WAIT).await;
    let b = Operator::start_kube(
        c.kubeconfig_path(),
        "op-b",
        &["--lease-duration-seconds", &secs],
    );
    until_leadership(&b, (0.0, 0.0), WAIT).await;
    assert_eq!(
        holder(&lease_named(&client, OP_LEASE).await).as_deref(),
        Some("op-a")
    );

    proxy.set(Cut::Blackhole);
    let cut = std::time::Instant::now();
    // Both are watched on one clock; each poll reads a, then b.
    let (mut a_down, mut b_up) = (None, None);
    let deadline = cut + WAIT;
    while b_up.is_none() && std::time::Instant::now() < deadline {
        if a_down.is_none() && leadership(&a).await == Ok((0.0, 0.0)) {
            a_down = Some(cut.elapsed());
        }
        if leadership(&b).await.is_ok_and(|(l, _)| l == 1.0) {
            b_up = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_down = a_down.expect("a never stepped down");
    let b_up = b_up.expect("b never took over");
    // a's last renewal was before the cut, so this is a lower bound of
    // what the lease allows.
    assert!(
        a_down < OP_DURATION,
        "a stepped down {a_down:?} after the cut"
    );
    assert!(
        a_down < b_up,
        "overlap: a led until {a_down:?}, b from {b_up:?}"
    );
    until_leadership(&b, (1.0, 2.0), WAIT).await;
    assert!(
        a.log().contains("stopped programming media nodes"),
        "a's fleet programmer kept running:\n{}",
        a.log()
    );
}
