//! `switchboard-operator`: reconciles Switchboard resources from the
//! Kubernetes API, or from YAML files with `--manifests DIR`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;
use tracing::{error, info, warn};

use switchboard_operator::metrics::Metrics;
use switchboard_operator::routing::{self, Resolution};
use switchboard_operator::source::{files, table};
use switchboard_operator::{http, leader, reconcile};

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
    /// Namespace of the Lease (default: the pod's namespace, else "default").
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a leader's lease is valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// This replica's identity (default: the pod name, else host and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json { b.json().init() } else { b.init() }
}

fn identity(args: &Args) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

async fn shutdown_signal() {
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
}

/// Writes the configuration atomically with owner-only permissions.
fn emit(path: &Path, r: &Resolution, version: u64) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut cfg = r.config.clone();
    cfg.version = version;
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

async fn run_files(args: Args, dir: PathBuf, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let mut version = 0u64;
    let mut last: Option<routing::RoutingSnapshot> = None;
    let (_watcher, mut changes) = if args.once {
        (None, None)
    } else {
        let (w, rx) = files::watch(&dir)?;
        (Some(w), Some(rx))
    };
    loop {
        let loaded = files::load_dir(&dir)?;
        let r = routing::resolve(&loaded.inputs);
        metrics.observe(&r);
        metrics.ready.set(1);
        let snapshot = routing::RoutingSnapshot::of(&r);
        if last.as_ref() != Some(&snapshot) {
            version += 1;
            print!("{}", table::render(&r, &loaded.problems));
            for p in &loaded.problems {
                warn!(location = %p.location, "skipped document: {}", p.message);
            }
            if let Some(path) = &args.emit_config {
                emit(path, &r, version).with_context(|| format!("writing {}", path.display()))?;
                info!(path = %path.display(), version, "routing configuration written");
            }
            last = Some(snapshot);
        }
        let Some(rx) = changes.as_mut() else {
            let all_ok = loaded.problems.is_empty()
                && r.trunks.values().all(|v| v.usable())
                && r.numbers.values().all(|v| v.usable());
            if !all_ok {
                std::process::exit(1);
            }
            return Ok(());
        };
        tokio::select! {
            got = rx.recv() => if got.is_none() { return Ok(()) },
            _ = shutdown_signal() => return Ok(()),
        }
        tokio::time::sleep(files::SETTLE).await;
        while rx.try_recv().is_ok() {}
    }
}

async fn run_kube(args: Args, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let identity = identity(&args);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (leader_rx, leader_task) = if args.no_leader_election {
        let (_tx, rx) = watch::channel(true);
        // Keep the sender alive for the life of the process.
        std::mem::forget(_tx);
        (rx, None)
    } else {
        let cfg = leader::Config {
            namespace: args
                .lease_namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.lease_duration_seconds.max(2)),
            renew_period: Duration::from_secs(args.lease_duration_seconds.max(2)) / 3,
        };
        let (rx, task) = leader::spawn(client.clone(), cfg, stop_rx);
        (rx, Some(task))
    };
    {
        let m = metrics.clone();
        let mut l = leader_rx.clone();
        tokio::spawn(async move {
            loop {
                m.leader.set(i64::from(*l.borrow_and_update()));
                if l.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    let (resolved_tx, mut resolved_rx) = watch::channel(Arc::new(Resolution::default()));
    if let Some(path) = args.emit_config.clone() {
        tokio::spawn(async move {
            let mut version = 0;
            while resolved_rx.changed().await.is_ok() {
                let r = resolved_rx.borrow_and_update().clone();
                version += 1;
                if let Err(e) = emit(&path, &r, version) {
                    warn!(error = %e, "cannot write the routing configuration");
                }
            }
        });
    }
    let opts = reconcile::Options {
        namespace: args.namespace.clone(),
        manager: "switchboard-operator".into(),
        instance: identity,
        debounce: Duration::from_millis(100),
    };
    tokio::select! {
        r = reconcile::run(client, opts, leader_rx, metrics, resolved_tx) => r?,
        _ = shutdown_signal() => info!("shutting down"),
    }
    let _ = stop_tx.send(true);
    if let Some(t) = leader_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(args.log_json);
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
    match args.manifests.clone() {
        Some(dir) => run_files(args, dir, metrics).await,
        None => run_kube(args, metrics).await,
    }
}
