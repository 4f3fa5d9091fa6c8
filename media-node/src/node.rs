//! Wiring the node together: configuration, sockets, the transaction
//! layer, call dispatch, background loops, the admin endpoint, signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;

use crate::call::{CallHandler, CallOptions, Calls, Ctx, dispatch, ports};
use crate::config::{self, RoutingStore};
use crate::metrics::Metrics;
use crate::sip::digest::DigestServer;
use crate::sip::framing::Limits;
use crate::sip::headers::split_host_port;
use crate::sip::protect::{Budget, MAX_SOURCES, RateLimiter, RateLimits};
use crate::sip::transaction::{TransactionLayer, TxnLimits};
use crate::sip::transport::{Advertise, Transport};

// What the binary configures a node with, from modules that are otherwise the crate's own.
pub use crate::api::ApiOptions;
pub use crate::call::ports::parse_range;
pub use crate::egress::EgressPolicy;
pub use crate::routing::acl::Cidr;
pub use crate::webhook::WebhookOptions;

/// Completed calls the call API still answers for (GET after the end).
const COMPLETED_CALLS_KEPT: usize = 1000;

/// The control channel the operator programs the node through.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Address of the NodeControl gRPC service.
    pub bind: SocketAddr,
    /// Certificate and key (PEM) to serve TLS with; `None` only with the
    /// development flag `--control-insecure`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// File holding the bearer token the operator must present.
    pub token_file: Option<PathBuf>,
}

/// Everything the binary's flags configure.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (the pod name), reported to the operator.
    pub node_id: String,
    /// Routing configuration file (proto3 JSON `RoutingConfig`); without
    /// one the node waits for the operator and is not ready until then.
    pub config: Option<PathBuf>,
    /// The operator's control channel, if any.
    pub control: Option<ControlOptions>,
    /// SIP bind addresses (UDP and TCP on each).
    pub sip_bind: Vec<SocketAddr>,
    /// Advertised host[:port] for IPv4 peers (or a name for all).
    pub advertise: Option<String>,
    /// Advertised host for IPv6 peers.
    pub advertise6: Option<String>,
    /// Address written into SDP for RTP (default: the advertised address).
    pub media_advertise: Option<std::net::IpAddr>,
    /// Admin HTTP bind.
    pub http_bind: SocketAddr,
    /// Serve the unauthenticated `/debug/*` routes on the admin port.
    pub debug_routes: bool,
    /// The bearer token `/drain` accepts from peers other than loopback.
    pub admin_token: Option<String>,
    /// RTP port range.
    pub rtp_ports: (u16, u16),
    /// Call tunables.
    pub calls: CallOptions,
    /// Message limits.
    pub limits: Limits,
    /// TCP connection caps and deadlines.
    pub tcp: crate::sip::transport::tcp::TcpLimits,
    /// Per-source request rate (per second) and burst.
    pub rate: (f64, f64),
    /// Per allowed-source rate and burst (default: `rate`).
    pub rate_allowed: Option<(f64, f64)>,
    /// Rate and burst shared by every source no trunk allows (0 disables).
    pub rate_unknown_total: (f64, f64),
    /// Bounds of the transaction table.
    pub transactions: TxnLimits,
    /// How long a drain waits for calls before hanging them up.
    pub drain_grace: Duration,
    /// The call API (gRPC and HTTP/JSON), when enabled.
    pub api: Option<crate::api::ApiOptions>,
    /// Calls each trunk's outbound queue holds before refusing more.
    pub outbound_queue_size: usize,
    /// Status webhook delivery settings.
    pub webhooks: crate::webhook::WebhookOptions,
    /// SIP over TLS, when a certificate is given.
    pub tls: Option<TlsOptions>,
}

/// The SIP-over-TLS listener's settings.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Where it listens.
    pub bind: SocketAddr,
    /// PEM certificate chain (reloaded when it changes).
    pub cert: std::path::PathBuf,
    /// PEM private key (reloaded when it changes).
    pub key: std::path::PathBuf,
    /// The TLS port written into Via and Contact for TLS peers (default: the bind port).
    pub advertise_port: Option<u16>,
}

fn advertise(cfg: &NodeConfig) -> anyhow::Result<Advertise> {
    let default_port = cfg.sip_bind.first().map(|a| a.port()).unwrap_or(5060);
    let mut adv = Advertise {
        v4: None,
        v6: None,
        port: default_port,
        tls_port: cfg
            .tls
            .as_ref()
            .map(|t| t.advertise_port.unwrap_or(t.bind.port())),
        media: cfg.media_advertise,
    };
    if let Some(a) = &cfg.advertise {
        let (host, port) =
            split_host_port(a).with_context(|| format!("invalid --advertise {a:?}"))?;
        if let Some(p) = port {
            adv.port = p;
        }
        match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => adv.v6 = Some(format!("[{v6}]")),
            Ok(std::net::IpAddr::V4(v4)) => adv.v4 = Some(v4.to_string()),
            Err(_) => {
                adv.v4 = Some(host.clone());
                adv.v6 = Some(host);
            }
        }
    }
    if let Some(a) = &cfg.advertise6 {
        let (host, _) =
            split_host_port(a).with_context(|| format!("invalid --advertise6 {a:?}"))?;
        adv.v6 = Some(if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        });
    }
    Ok(adv)
}

/// Runs the node until a drain completes.
pub async fn run(cfg: NodeConfig, handler: Arc<dyn CallHandler>) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let tasks = crate::supervisor::Supervisor::new(metrics.registry());
    handler.register_metrics(metrics.registry());
    let routing = RoutingStore::default();
    match &cfg.config {
        Some(path) => {
            let version = routing.apply(config::load(path)?);
            metrics.config_version.set(version as i64);
            tracing::info!(version, path = %path.display(), "routing configuration loaded");
        }
        None => {
            tracing::info!(
                "no configuration file: waiting for the operator (not ready until programmed)"
            );
        }
    }

    let (allowed_rate, allowed_burst) = cfg.rate_allowed.unwrap_or(cfg.rate);
    let acl = routing.clone();
    let rate = RateLimiter::with_limits(RateLimits {
        per_source: Budget::new(cfg.rate.0, cfg.rate.1),
        per_allowed_source: Budget::new(allowed_rate, allowed_burst),
        unknown_total: Budget::new(cfg.rate_unknown_total.0, cfg.rate_unknown_total.1),
        max_sources: MAX_SOURCES,
    })
    .allowed_sources(Arc::new(move |ip| {
        acl.read(|t| t.allows_source(ip)).unwrap_or(false)
    }));
    let tls = match &cfg.tls {
        Some(t) => {
            use crate::sip::transport::tls::{CertStore, Listener};
            let store =
                CertStore::open(&t.cert, &t.key).context("loading the SIP TLS certificate")?;
            let acceptor = store.acceptor().context("setting up SIP TLS")?;
            tasks.spawn_restarting("tls-cert-reload", move || store.clone().watch());
            Some(Listener {
                bind: t.bind,
                acceptor,
            })
        }
        None => None,
    };
    let tls_bind = cfg.tls.as_ref().map(|t| t.bind);
    let (transport, incoming) = Transport::bind(
        &cfg.sip_bind,
        advertise(&cfg)?,
        cfg.limits,
        cfg.tcp,
        rate,
        metrics.clone(),
        tls,
        &tasks,
    )
    .await
    .with_context(|| format!("binding SIP on {:?} (TLS {tls_bind:?})", cfg.sip_bind))?;
    tracing::info!(addrs = ?transport.local, tls = ?tls_bind, "SIP listening (UDP and TCP, TLS when set)");
    let (sip, tu_events) = TransactionLayer::start(
        transport,
        incoming,
        metrics.clone(),
        cfg.transactions,
        &tasks,
    );
    // The call tracker wraps the media handler so the call API and status
    // webhooks learn when calls are answered and end.
    let webhooks = crate::webhook::Webhooks::new(cfg.webhooks.clone(), metrics.registry())
        .map_err(|e| tracing::error!(error = %e, "status webhooks disabled"))
        .ok();
    let tracker = crate::api::CallTracker::new(webhooks, COMPLETED_CALLS_KEPT);
    let handler = tracker.wrap(handler);
    let calls = Calls::new(metrics.clone());
    let ctx = Arc::new(Ctx {
        sip,
        routing: routing.clone(),
        metrics: metrics.clone(),
        pacing: crate::call::pacing::Pacing::new(
            cfg.outbound_queue_size,
            calls.clone(),
            routing.clone(),
        ),
        calls,
        handler,
        ports: ports::PortAllocator::new(cfg.rtp_ports.0, cfg.rtp_ports.1),
        digest: DigestServer::new(cfg.calls.nonce_lifetime),
        opts: cfg.calls.clone(),
        draining: Default::default(),
        health: Default::default(),
        registrations: Default::default(),
        tasks: tasks.clone(),
    });
    // One call API for every port it is served on (the control port and
    // --api-bind): the same calls and idempotency keys.
    let api = crate::api::Api {
        ctx: ctx.clone(),
        tracker: tracker.clone(),
    };
    if let Some(control) = &cfg.control {
        start_control(&cfg, control, api.clone()).await?;
    }
    // Holds the transaction layer's only event channel: critical.
    tasks.spawn_critical("sip-dispatch", dispatch::run(ctx.clone(), tu_events));
    let c = ctx.clone();
    tasks.spawn_restarting("gateway-health", move || crate::health::run(c.clone()));
    let c = ctx.clone();
    tasks.spawn_restarting("registrations", move || crate::register::run(c.clone()));

    if let Some(opts) = &cfg.api {
        crate::api::serve(api, opts.clone())
            .await
            .with_context(|| format!("binding the call API on {}", opts.bind))?;
    }

    let listener = tokio::net::TcpListener::bind(cfg.http_bind)
        .await
        .with_context(|| format!("binding admin HTTP on {}", cfg.http_bind))?;
    tracing::info!(addr = %cfg.http_bind, "admin HTTP listening");
    let app = crate::admin::router(ctx.clone(), cfg.debug_routes, cfg.admin_token.clone());
    // The probes and metrics live here: without it the pod is restarted anyway.
    tasks.spawn_critical("admin-http", async move {
        // The peer address decides who may POST /drain.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin HTTP server stopped");
        }
    });

    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => match cfg.config.as_deref().map(config::load) {
                Some(Ok(c)) => {
                    let v = routing.apply(c);
                    metrics.config_version.set(v as i64);
                    tracing::info!(version = v, "routing configuration reloaded");
                }
                Some(Err(e)) => tracing::error!(error = %e, "reload failed; keeping the previous configuration"),
                None => tracing::info!("SIGHUP ignored: the configuration comes from the operator"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            reason = tasks.fatal() => {
                // Not ready already; calls in progress keep their media while they last.
                tracing::error!(%reason, "a critical task failed: draining, then exiting");
                ctx.draining.store(true, std::sync::atomic::Ordering::Relaxed);
                drain(&ctx, cfg.drain_grace).await;
                anyhow::bail!("{reason}");
            }
        }
    }
    drain(&ctx, cfg.drain_grace).await;
    Ok(())
}

/// Starts the NodeControl service for the operator, with the call API's
/// gRPC `CallService` on the same port behind the same token.
async fn start_control(
    cfg: &NodeConfig,
    control: &ControlOptions,
    api: crate::api::Api,
) -> anyhow::Result<()> {
    let ctx = api.ctx.clone();
    use crate::control::{ControlService, TokenCheck, serve};
    let token = match &control.token_file {
        Some(path) => {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let t = t.trim().to_owned();
            anyhow::ensure!(
                !t.is_empty(),
                "control token file {} is empty",
                path.display()
            );
            Some(t)
        }
        None => None,
    };
    let tls = match &control.tls {
        Some((cert, key)) => {
            let cert =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            Some(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
        }
        None => None,
    };
    let addresses = sip_addresses(
        cfg.advertise.as_deref(),
        &ctx.sip.transport.local,
        cfg.tls.as_ref(),
    );
    let tasks = ctx.tasks.clone();
    let service = ControlService::new(ctx, cfg.node_id.clone(), addresses);
    // Bind first so a port clash fails the start instead of a background task.
    let listener = std::net::TcpListener::bind(control.bind)
        .with_context(|| format!("binding the control port {}", control.bind))?;
    drop(listener);
    let bind = control.bind;
    let secure = tls.is_some();
    // The operator's only way to program the node: without it the node runs stale routing.
    tasks.spawn_critical("control", async move {
        if let Err(e) = serve(bind, service, api, tls, TokenCheck::new(token)).await {
            tracing::error!(error = %e, "control service stopped");
        }
    });
    tracing::info!(addr = %bind, tls = secure, "control service listening");
    Ok(())
}

/// The SIP addresses a node reports for its trunks' `status.ingress`: the advertised
/// address, else the bound ones; and the TLS listener as `host:port;transport=tls`.
fn sip_addresses(
    advertise: Option<&str>,
    local: &[SocketAddr],
    tls: Option<&TlsOptions>,
) -> Vec<String> {
    let mut addresses: Vec<String> = match advertise {
        Some(a) => vec![a.to_owned()],
        None => local.iter().map(|a| a.to_string()).collect(),
    };
    if let Some(t) = tls {
        let port = t.advertise_port.unwrap_or(t.bind.port());
        let tls: Vec<String> = addresses
            .iter()
            .filter_map(|a| split_host_port(a))
            .map(|(host, _)| {
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("{host}:{port};transport=tls")
            })
            .collect();
        addresses.extend(tls);
    }
    addresses
}

/// Puts the node in draining (no new calls; readiness, OPTIONS and the
/// `switchboard_draining` gauge say so). True when it was not draining yet.
pub fn start_drain(ctx: &Ctx) -> bool {
    let was = ctx.draining.swap(true, Ordering::Relaxed);
    ctx.metrics.draining.set(1);
    !was
}

/// How long a drained node keeps answering SIP after its last call ended.
/// The final BYE's 200 may be lost (or still queued when the count reaches
/// zero), and a UDP peer retransmits its BYE after 0.5 s and then 1 s (RFC
/// 3261 T1); the server transaction answers those again only while the
/// process runs. Without it the peer's retransmission finds nothing, or a
/// new pod on the same address, which answers 481.
const DRAIN_LINGER: Duration = Duration::from_secs(2);

async fn drain(ctx: &Arc<Ctx>, grace: Duration) {
    start_drain(ctx);
    let mut count = ctx.calls.watch_total();
    let had_calls = *count.borrow() > 0;
    tracing::info!(calls = *count.borrow(), "draining");
    let wait = async {
        while *count.borrow_and_update() > 0 {
            if count.changed().await.is_err() {
                return;
            }
        }
    };
    if tokio::time::timeout(grace, wait).await.is_err() {
        tracing::warn!("drain grace period over; hanging up remaining calls");
        ctx.calls.hangup_all("drain grace period over");
        let mut count = ctx.calls.watch_total();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while *count.borrow_and_update() > 0 {
                if count.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
    if had_calls {
        tracing::info!(
            linger_ms = DRAIN_LINGER.as_millis() as u64,
            "drained; answering retransmissions before exiting"
        );
        tokio::time::sleep(DRAIN_LINGER).await;
    }
    tracing::info!("drained; exiting");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_lists_the_tls_listener_next_to_the_plain_addresses() {
        let local: Vec<SocketAddr> = vec!["10.0.0.1:5060".parse().expect("addr")];
        assert_eq!(sip_addresses(None, &local, None), vec!["10.0.0.1:5060"]);
        let tls = TlsOptions {
            bind: "0.0.0.0:5061".parse().expect("addr"),
            cert: "c".into(),
            key: "k".into(),
            advertise_port: None,
        };
        assert_eq!(
            sip_addresses(None, &local, Some(&tls)),
            vec!["10.0.0.1:5060", "10.0.0.1:5061;transport=tls"]
        );
        let lb = TlsOptions {
            advertise_port: Some(443),
            ..tls
        };
        assert_eq!(
            sip_addresses(Some("sip.example.com:5060"), &local, Some(&lb)),
            vec!["sip.example.com:5060", "sip.example.com:443;transport=tls"]
        );
        let v6: Vec<SocketAddr> = vec!["[2001:db8::1]:5060".parse().expect("addr")];
        assert_eq!(
            sip_addresses(None, &v6, Some(&lb))[1],
            "[2001:db8::1]:443;transport=tls"
        );
    }
}
