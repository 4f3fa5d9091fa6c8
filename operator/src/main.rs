//! `switchboard-operator`: reconciles Switchboard resources from the
//! Kubernetes API, or from YAML files with `--manifests DIR`, and programs the
//! media-node fleet over gRPC.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::sync::watch;
use tracing::{error, info, warn};

use switchboard_operator::fleet::{self, Endpoints, client::ControlClient, view::FleetView};
use switchboard_operator::metrics::Metrics;
use switchboard_operator::routing::index::{Index, Snapshot};
use switchboard_operator::source::{files, table};
use switchboard_operator::{http, leader, reconcile};

/// Loading a large inventory is allocation-bound (many small strings and
/// maps). Profiled on a 100,000-number load: glibc's allocator took 23 % of
/// the samples in its own bookkeeping; with mimalloc the allocator takes 5 %
/// and the load uses about a third less CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Reconciles SipTrunk and PhoneNumber resources and programs media nodes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Read resources from YAML files in this directory instead of the
    /// Kubernetes API (the local default: no cluster needed).
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// With --manifests: print the conditions once and exit (non-zero when
    /// any object is not usable or a document was skipped).
    #[arg(long, requires = "manifests")]
    once: bool,
    /// With --manifests: a media node to program, as NAME=HOST:PORT of its
    /// control service (repeatable).
    #[arg(long = "node", value_name = "NAME=HOST:PORT", requires = "manifests")]
    nodes: Vec<String>,
    /// Write the resolved routing configuration (proto3 JSON, holds
    /// credentials: mode 0600) to this file after every change.
    #[arg(long, value_name = "FILE")]
    emit_config: Option<PathBuf>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "SWITCHBOARD_NAMESPACE")]
    namespace: Option<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "SWITCHBOARD_HTTP_BIND")]
    http_bind: SocketAddr,
    /// Disable leader election (only for a single replica).
    #[arg(long)]
    no_leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "switchboard-operator")]
    lease_name: String,
    /// Namespace of the Lease and of the media-node pods (default: the
    /// pod's namespace, else "default").
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a leader's lease is valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// This replica's identity (default: the pod name, else host and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Label selector of the media-node pods.
    #[arg(long, default_value = "app.kubernetes.io/component=media-node")]
    media_node_selector: String,
    /// Namespace of the media-node pods (default: the Lease namespace).
    #[arg(long)]
    media_node_namespace: Option<String>,
    /// Control port of media nodes (a pod may override it with the
    /// annotation switchboard.dev/control-port).
    #[arg(long, default_value_t = 9443)]
    control_port: u16,
    /// CA certificate (PEM) that signed the media nodes' control certificate.
    #[arg(long, env = "SWITCHBOARD_CONTROL_CA")]
    control_ca: Option<PathBuf>,
    /// Name the media nodes' control certificate is issued for.
    #[arg(long, default_value = "switchboard-media-node")]
    control_server_name: String,
    /// File holding the bearer token media nodes expect.
    #[arg(long, env = "SWITCHBOARD_CONTROL_TOKEN_FILE")]
    control_token_file: Option<PathBuf>,
    /// DEVELOPMENT ONLY: talk to media nodes in plaintext (the token, if
    /// given, is still sent).
    #[arg(long)]
    control_insecure: bool,
    /// Do not set pod-deletion-cost on media-node pods.
    #[arg(long)]
    no_deletion_cost: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json { b.json().init() } else { b.init() }
}

fn identity(args: &Args) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

fn control_client(args: &Args) -> anyhow::Result<Arc<ControlClient>> {
    if args.control_insecure {
        warn!(
            "--control-insecure: the control channel to media nodes is plaintext (development only)"
        );
        let token = args
            .control_token_file
            .as_deref()
            .map(fleet::client::read_token)
            .transpose()?;
        return Ok(Arc::new(ControlClient::insecure(token)));
    }
    match (&args.control_ca, &args.control_token_file) {
        (Some(ca), Some(token)) => Ok(Arc::new(ControlClient::tls(
            ca,
            &args.control_server_name,
            token,
        )?)),
        _ => bail!(
            "the control channel to media nodes needs --control-ca and --control-token-file \
             (or --control-insecure for local development)"
        ),
    }
}

/// Listens for SIGTERM and SIGINT for the life of the process, so a signal
/// that arrives while the main loop is busy is not lost.
fn shutdown_watch() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        let _ = tx.send(true);
    });
    rx
}

/// Resolves once a shutdown signal has been received (now or earlier).
async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Writes the configuration atomically with owner-only permissions.
fn emit(path: &Path, r: &Snapshot, version: u64) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let cfg = r.config(version);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(cfg.to_json_pretty().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn parse_nodes(nodes: &[String]) -> anyhow::Result<Endpoints> {
    nodes
        .iter()
        .map(|n| {
            let (name, addr) = n
                .split_once('=')
                .with_context(|| format!("--node {n:?}: expected NAME=HOST:PORT"))?;
            if name.is_empty() || addr.is_empty() {
                bail!("--node {n:?}: expected NAME=HOST:PORT");
            }
            Ok((name.to_string(), addr.to_string()))
        })
        .collect()
}

async fn run_files(
    args: Args,
    dir: PathBuf,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let nodes = parse_nodes(&args.nodes)?;
    let (resolved_tx, resolved_rx) = watch::channel(Snapshot::default());
    let (view_tx, mut view_rx) = watch::channel(Arc::new(FleetView::default()));
    let fleet_on = !nodes.is_empty();
    if fleet_on {
        let client = control_client(&args)?;
        let (_eps_tx, eps_rx) = watch::channel(nodes);
        // The node list is fixed for the life of the process.
        std::mem::forget(_eps_tx);
        // No leader election here: term 0, unfenced.
        tokio::spawn(fleet::run(
            client,
            0,
            resolved_rx,
            eps_rx,
            view_tx,
            metrics.clone(),
        ));
    }
    let (_watcher, mut changes) = if args.once {
        (None, None)
    } else {
        let (w, rx) = files::watch(&dir)?;
        (Some(w), Some(rx))
    };
    let mut version = 0u64;
    let mut published = false;
    let (table_tx, table_rx) = watch::channel((Snapshot::default(), Arc::new(Vec::new())));
    let mut table_rx = Some(table_rx);
    let mut directory = files::Directory::new(&dir);
    let mut index = Index::new();
    let mut r = Snapshot::default();
    loop {
        let read_started = std::time::Instant::now();
        let found = directory.reload()?;
        let read = read_started.elapsed();
        let problems = found.problems;
        let events = found.events.len();
        let started = std::time::Instant::now();
        {
            let secrets = |k: &_| directory.secret(k);
            index.apply(found.events, &secrets);
        }
        let resolved = started.elapsed();
        metrics.resolve_seconds.observe(resolved.as_secs_f64());
        tracing::debug!(
            events,
            read_ms = read.as_secs_f64() * 1e3,
            resolve_ms = resolved.as_secs_f64() * 1e3,
            "manifests reloaded"
        );
        let (t, n) = index.counts();
        metrics.observe(t, n);
        metrics.ready.set(1);
        let new = index.snapshot();
        // Compared by identity: the index shares what did not change.
        let same = published && new.same(&r);
        r = new;
        if !same {
            version += 1;
            for p in &problems {
                warn!(location = %p.location, "skipped document: {}", p.message);
            }
            if let Some(path) = &args.emit_config {
                emit(path, &r, version).with_context(|| format!("writing {}", path.display()))?;
                info!(path = %path.display(), version, "routing configuration written");
            }
            resolved_tx.send_replace(r.clone());
            published = true;
            // Let the fleet programmer run before the table is rendered:
            // woken from here it sits in this worker's LIFO slot, which
            // the other worker cannot steal.
            tokio::task::yield_now().await;
        }
        let Some(rx) = changes.as_mut() else {
            let view = fleet_on.then(|| view_rx.borrow_and_update().clone());
            print!("{}", table::render(&r, view.as_deref(), &problems));
            let all_ok = problems.is_empty()
                && r.trunks.values().all(|v| v.usable())
                && r.numbers.values().all(|v| v.usable());
            if !all_ok {
                std::process::exit(1);
            }
            return Ok(());
        };
        table_tx.send_replace((r.clone(), Arc::new(problems.clone())));
        // The printer starts with the first resolution, not an empty table.
        if let Some(rx) = table_rx.take() {
            tokio::spawn(print_tables(rx, fleet_on.then(|| view_rx.clone())));
        }
        tokio::select! {
            got = rx.recv() => {
                if got.is_none() {
                    return Ok(());
                }
                tokio::time::sleep(files::SETTLE).await;
                while rx.try_recv().is_ok() {}
            }
            _ = shutdown_requested(&mut shutdown) => return Ok(()),
        }
    }
}

/// Prints the conditions table whenever the resources or the fleet change,
/// at most once a second for fleet changes (call counts change constantly).
/// Rendering 100,000 numbers takes a while, so it runs on a blocking thread
/// and never holds up a file change.
async fn print_tables(
    mut resources: watch::Receiver<(Snapshot, Arc<Vec<files::Problem>>)>,
    mut view: Option<watch::Receiver<Arc<FleetView>>>,
) {
    let mut printed = String::new();
    loop {
        let (r, problems) = resources.borrow_and_update().clone();
        let v = view.as_mut().map(|v| v.borrow_and_update().clone());
        let text =
            match tokio::task::spawn_blocking(move || table::render(&r, v.as_deref(), &problems))
                .await
            {
                Ok(t) => t,
                Err(_) => return,
            };
        if text != printed {
            print!("{text}");
            printed = text;
        }
        let printed_at = tokio::time::Instant::now();
        tokio::select! {
            r = resources.changed() => if r.is_err() { return },
            r = async {
                match view.as_mut() {
                    Some(v) => v.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if r.is_err() {
                    view = None;
                }
                tokio::time::sleep_until(printed_at + fleet::STATUS_INTERVAL).await;
            }
        }
    }
}

async fn run_kube(
    args: Args,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let control = control_client(&args)?;
    let mut tasks =
        switchboard_operator::tasks::Tasks::new(&metrics.registry, metrics.ready.clone())
            .context("registering the task metrics")?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let identity = identity(&args);
    let own_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (leadership_rx, leader_task) = if args.no_leader_election {
        // Term 0: unfenced, as a single replica needs no fencing.
        let (tx, rx) = watch::channel(leader::Leadership::Leading { term: 0 });
        // Keep the sender alive for the life of the process.
        std::mem::forget(tx);
        (rx, None)
    } else {
        let duration = Duration::from_secs(args.lease_duration_seconds.max(2));
        let cfg = leader::Config {
            namespace: own_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: duration,
            renew_period: duration / 3,
        };
        let (rx, task) = leader::spawn(client.clone(), cfg, stop_rx);
        (rx, Some(task))
    };
    let leader_rx = leader::leading(leadership_rx.clone());
    {
        let m = metrics.clone();
        let mut l = leadership_rx.clone();
        tokio::spawn(async move {
            loop {
                let now = *l.borrow_and_update();
                m.leader.set(i64::from(now.is_leader()));
                let term = now.term().unwrap_or(0);
                m.leader_term.set(i64::try_from(term).unwrap_or(i64::MAX));
                if l.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    let (resolved_tx, resolved_rx) = watch::channel(Snapshot::default());
    if let Some(path) = args.emit_config.clone() {
        let mut rx = resolved_rx.clone();
        tokio::spawn(async move {
            let mut version = 0;
            while rx.changed().await.is_ok() {
                let r = rx.borrow_and_update().clone();
                version += 1;
                if let Err(e) = emit(&path, &r, version) {
                    warn!(error = %e, "cannot write the routing configuration");
                }
            }
        });
    }

    // The fleet: only the leader programs nodes.
    let node_ns = args
        .media_node_namespace
        .clone()
        .unwrap_or_else(|| own_namespace.clone());
    let (eps_tx, eps_rx) = watch::channel(Endpoints::new());
    tasks.spawn(
        "pod-discovery",
        fleet::pods::discover(
            client.clone(),
            node_ns.clone(),
            args.media_node_selector.clone(),
            args.control_port,
            eps_tx,
        ),
    );
    let (view_tx, view_rx) = watch::channel(Arc::new(FleetView::default()));
    {
        let (control, metrics) = (control.clone(), metrics.clone());
        let mut leader = leadership_rx.clone();
        let (resolved_rx, eps_rx) = (resolved_rx.clone(), eps_rx.clone());
        tasks.spawn("fleet", async move {
            loop {
                // Wait for leadership, program while leading in this term,
                // stop on loss (or a new term: the nodes are programmed
                // afresh under it).
                let term = loop {
                    if let Some(term) = leader.borrow_and_update().term() {
                        break term;
                    }
                    if leader.changed().await.is_err() {
                        return;
                    }
                };
                let run = fleet::run(
                    control.clone(),
                    term,
                    resolved_rx.clone(),
                    eps_rx.clone(),
                    view_tx.clone(),
                    metrics.clone(),
                );
                let same_term = async {
                    while leader.borrow_and_update().term() == Some(term) {
                        if leader.changed().await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = run => return,
                    _ = same_term => {
                        info!(term, "no longer leader in this term: stopped programming media nodes");
                    }
                }
            }
        });
    }
    if !args.no_deletion_cost {
        tasks.spawn(
            "deletion-cost",
            fleet::pods::maintain_deletion_cost(
                client.clone(),
                node_ns,
                view_rx.clone(),
                leader_rx.clone(),
            ),
        );
    }

    // Campaigns: the leader dials them through the nodes' call service.
    {
        let cm = Arc::new(
            switchboard_operator::campaign::CampaignMetrics::new(&metrics.plain)
                .context("registering the campaign metrics")?,
        );
        let webhook = switchboard_operator::campaign::webhook::Webhook::start(cm.webhooks.clone())
            .map_err(|e| anyhow::anyhow!("campaign webhooks: {e}"))?;
        let shared = Arc::new(switchboard_operator::campaign::runner::Shared {
            kube: client.clone(),
            nodes: switchboard_operator::campaign::nodes::NodeCalls::new(
                control.clone(),
                eps_rx.clone(),
            ),
            snapshot: resolved_rx.clone(),
            view: view_rx.clone(),
            metrics: cm,
            webhook,
        });
        tasks.spawn(
            "campaigns",
            switchboard_operator::campaign::run(shared, args.namespace.clone(), leader_rx.clone()),
        );
    }

    let opts = reconcile::Options {
        namespace: args.namespace.clone(),
        manager: "switchboard-operator".into(),
        instance: identity,
    };
    tokio::select! {
        r = reconcile::run(client, opts, leader_rx, metrics, resolved_tx, Some(view_rx)) => r?,
        _ = shutdown_requested(&mut shutdown) => info!("shutting down"),
        why = tasks.failed() => {
            let _ = stop_tx.send(true);
            anyhow::bail!("{why}");
        }
    }
    let _ = stop_tx.send(true);
    if let Some(t) = leader_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them (`MADV_HUGEPAGE`) on its arenas, and with the common
/// `defrag=madvise` setting every first touch of a 2 MiB range then
/// compacts memory and zeroes all of it: on the 100,000-number load this
/// took 58 % of the main thread's samples, and the operator's CPU was
/// 2.8-4.7 s with huge pages against 1.7-1.9 s without (BENCHMARKS.md).
/// The operator's heap is a few hundred MB of small objects: it gains
/// nothing from fewer TLB entries.
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches only
    // this process's memory-management flags.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        warn!(error = %std::io::Error::last_os_error(), "cannot turn transparent huge pages off");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(args.log_json);
    no_transparent_huge_pages();
    let metrics = Arc::new(Metrics::new()?);
    // A one-shot check serves nothing.
    if !args.once {
        let (addr, m) = (args.http_bind, metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = http::serve(addr, m).await {
                error!(%addr, error = %e, "cannot serve /metrics and health endpoints");
                std::process::exit(2);
            }
        });
    }
    let shutdown = shutdown_watch();
    match args.manifests.clone() {
        Some(dir) => run_files(args, dir, metrics, shutdown).await,
        None => run_kube(args, metrics, shutdown).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transparent_huge_pages_are_off_after_start() {
        super::no_transparent_huge_pages();
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        // Linux >= 5.0 reports the flag; older kernels leave nothing to check.
        if let Some(l) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(l.split_whitespace().nth(1), Some("0"), "{l}");
        }
    }
}
