//! `switchboard-media-node`: terminates SIP (and later RTP) for the calls
//! that reach it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use switchboard_media_node::bridge::{BridgeConfig, BridgeHandler, UnreachablePolicy};
use switchboard_media_node::call::{CallHandler, CallOptions, LoggingHandler};
use switchboard_media_node::node::{self, NodeConfig};
use switchboard_media_node::sip::framing::Limits;

/// Switchboard media node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SWITCHBOARD_LOG_JSON")]
    log_json: bool,
    /// Routing configuration (proto3 JSON RoutingConfig); SIGHUP reloads it.
    /// Without it the node waits for the operator on --control-bind.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id reported to the operator (default: the pod name, else
    /// the host name).
    #[arg(long, env = "POD_NAME")]
    node_id: Option<String>,
    /// Address of the control service the operator programs the node through.
    #[arg(long = "control-bind")]
    control_bind: Option<SocketAddr>,
    /// TLS certificate (PEM) of the control service.
    #[arg(long = "control-cert", env = "SWITCHBOARD_CONTROL_CERT")]
    control_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the control service.
    #[arg(long = "control-key", env = "SWITCHBOARD_CONTROL_KEY")]
    control_key: Option<PathBuf>,
    /// File holding the bearer token the operator must present.
    #[arg(long = "control-token-file", env = "SWITCHBOARD_CONTROL_TOKEN_FILE")]
    control_token_file: Option<PathBuf>,
    /// DEVELOPMENT ONLY: serve the control channel in plaintext.
    #[arg(long = "control-insecure")]
    control_insecure: bool,
    /// SIP bind address (UDP and TCP); repeat for IPv4 and IPv6.
    #[arg(long = "sip-bind", default_value = "0.0.0.0:5060")]
    sip_bind: Vec<SocketAddr>,
    /// SIP over TLS: PEM certificate chain (a Kubernetes TLS Secret's tls.crt; reloaded when
    /// it changes). With --tls-key, turns the TLS listener on.
    #[arg(long = "tls-cert", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// SIP over TLS: PEM private key (tls.key; reloaded when it changes).
    #[arg(long = "tls-key", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// SIP over TLS listen address; default: the first --sip-bind address on port 5061.
    #[arg(long = "tls-bind")]
    tls_bind: Option<SocketAddr>,
    /// TLS port written into Via and Contact for TLS peers (NAT, load balancer); default:
    /// the --tls-bind port.
    #[arg(long = "tls-advertise-port")]
    tls_advertise_port: Option<u16>,
    /// Address written into Via, Contact and SDP: HOST or HOST:PORT (NAT, hostNetwork).
    #[arg(long)]
    advertise: Option<String>,
    /// Advertised address for IPv6 peers.
    #[arg(long)]
    advertise6: Option<String>,
    /// IP written into SDP for RTP, when SIP comes through a load balancer
    /// but RTP must reach this node directly (default: the advertised address).
    #[arg(long = "media-advertise")]
    media_advertise: Option<std::net::IpAddr>,
    /// Admin HTTP (/metrics, /healthz, /readyz, POST /drain; /debug/* with --debug-routes).
    #[arg(
        long = "http-bind",
        default_value = "127.0.0.1:9090",
        env = "SWITCHBOARD_HTTP_BIND"
    )]
    http_bind: SocketAddr,
    /// DEVELOPMENT AND TESTS ONLY: serve the unauthenticated /debug/* routes
    /// (dial, hang up, list calls) on the admin port. Refused unless
    /// --http-bind is a loopback address.
    #[arg(long = "debug-routes")]
    debug_routes: bool,
    /// File holding the bearer token POST /drain needs from any peer but
    /// 127.0.0.1/::1. Without it only loopback can drain.
    #[arg(long = "admin-token-file", env = "SWITCHBOARD_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Do not run a node: POST /drain to the node at --http-bind with the
    /// --admin-token-file token and exit 0 once it drains (the Kubernetes
    /// preStop hook; both flags may come from their environment variables).
    #[arg(long = "send-drain")]
    send_drain: bool,
    /// A network (CIDR) agent URLs and status webhooks may reach although
    /// the egress guard refuses it by default (loopback, link-local, private
    /// ranges, this node's own addresses); repeatable. For operators and
    /// local runs: never open loopback or link-local on a shared node.
    #[arg(long = "egress-allow", value_name = "CIDR")]
    egress_allow: Vec<String>,
    /// RTP port range START-END.
    #[arg(long = "rtp-ports", default_value = "20000-30000")]
    rtp_ports: String,
    /// Most concurrent calls on this node (503 above).
    #[arg(long = "max-calls", default_value_t = 1000)]
    max_calls: usize,
    /// Milliseconds between 180 Ringing and 200 OK on inbound calls.
    #[arg(long = "answer-delay-ms", default_value_t = 0)]
    answer_delay_ms: u64,
    /// Retry-After seconds on 503.
    #[arg(long = "retry-after", default_value_t = 30)]
    retry_after: u32,
    /// Session-Expires we request (RFC 4028).
    #[arg(long = "session-expires", default_value_t = 1800)]
    session_expires: u32,
    /// Smallest session interval we accept.
    #[arg(long = "min-se", default_value_t = 90)]
    min_se: u32,
    /// Largest SIP message in bytes.
    #[arg(long = "max-message-bytes", default_value_t = 16384)]
    max_message_bytes: usize,
    /// Most header fields per message.
    #[arg(long = "max-headers", default_value_t = 100)]
    max_headers: usize,
    /// Most SIP TCP connections accepted at once (more are closed at accept);
    /// connections from trunks' allowed sources, and outgoing connections,
    /// each have a budget of the same size of their own.
    #[arg(long = "tcp-max-connections", default_value_t = 2048)]
    tcp_max_connections: usize,
    /// Most SIP TCP connections accepted from one source (IPv4 address or IPv6 /64).
    #[arg(long = "tcp-max-connections-per-source", default_value_t = 32)]
    tcp_max_connections_per_source: usize,
    /// Seconds an accepted TCP connection has to deliver its first valid message.
    #[arg(long = "tcp-first-message-timeout-secs", default_value_t = 5)]
    tcp_first_message_timeout_secs: u64,
    /// Seconds a TCP message has to be complete once its first byte arrived.
    #[arg(long = "tcp-message-timeout-secs", default_value_t = 10)]
    tcp_message_timeout_secs: u64,
    /// Seconds without received bytes before a TCP connection is closed.
    #[arg(long = "tcp-idle-timeout-secs", default_value_t = 300)]
    tcp_idle_timeout_secs: u64,
    /// Requests per second allowed per source IP (0 disables).
    #[arg(long = "rate-limit", default_value_t = 50.0)]
    rate_limit: f64,
    /// Burst allowed per source IP.
    #[arg(long = "rate-burst", default_value_t = 200.0)]
    rate_burst: f64,
    /// Requests per second allowed per source inside some trunk's
    /// allowedSources (and per transport), budgeted apart from unknown
    /// sources (default: --rate-limit; 0 disables).
    #[arg(long = "rate-limit-allowed")]
    rate_limit_allowed: Option<f64>,
    /// Burst per allowed source (default: --rate-burst).
    #[arg(long = "rate-burst-allowed")]
    rate_burst_allowed: Option<f64>,
    /// Requests per second shared by all sources no trunk allows, so that a
    /// flood from many addresses cannot starve the carriers (0 disables).
    #[arg(long = "rate-limit-unknown-total", default_value_t = 500.0)]
    rate_limit_unknown_total: f64,
    /// Burst shared by all sources no trunk allows.
    #[arg(long = "rate-burst-unknown-total", default_value_t = 1000.0)]
    rate_burst_unknown_total: f64,
    /// Most SIP server transactions alive at once; new requests beyond get
    /// a stateless 503.
    #[arg(long = "max-transactions", default_value_t = 50000)]
    max_transactions: usize,
    /// Most SIP server transactions alive at once per source IP.
    #[arg(long = "max-transactions-per-source", default_value_t = 10000)]
    max_transactions_per_source: usize,
    /// Seconds a drain waits for calls to end before hanging them up.
    #[arg(long = "drain-grace-secs", default_value_t = 3600)]
    drain_grace_secs: u64,
    /// Seconds an inbound digest nonce stays valid (bound to the caller's
    /// IP; each nonce-count is accepted once). 1..=3600.
    #[arg(long = "digest-nonce-lifetime-secs", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    digest_nonce_lifetime_secs: u64,
    /// Call API (gRPC CallService and HTTP/JSON /v1/calls) bind address;
    /// needs --api-token-file. Without it the API is off.
    #[arg(long = "api-bind", env = "SWITCHBOARD_API_BIND")]
    api_bind: Option<SocketAddr>,
    /// File holding the bearer token call API clients must present.
    #[arg(long = "api-token-file", env = "SWITCHBOARD_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Calls each trunk's outbound queue holds (beyond them: 503).
    #[arg(long = "outbound-queue-size", default_value_t = 100)]
    outbound_queue_size: usize,
    /// Delivery attempts per status webhook event.
    #[arg(long = "webhook-attempts", default_value_t = 5)]
    webhook_attempts: u32,
    /// Timeout of one status webhook attempt, in milliseconds.
    #[arg(long = "webhook-timeout-ms", default_value_t = 5000)]
    webhook_timeout_ms: u64,
    /// Bound on opening an agent's WebSocket (TCP, TLS and upgrade), in milliseconds.
    #[arg(long = "agent-connect-timeout-ms", default_value_t = 5000)]
    agent_connect_timeout_ms: u64,
    /// Inbound call whose agent is unreachable at set-up: `reject` it with 503 before
    /// answering, or `answer-hangup` (answer, then BYE at once).
    #[arg(long = "agent-unreachable", value_enum, default_value_t = UnreachablePolicy::Reject)]
    agent_unreachable: UnreachablePolicy,
    /// Largest WebSocket message (and frame) accepted from an agent, in bytes; a larger one
    /// closes that agent's session (1009) and ends its call.
    #[arg(long = "agent-max-message-bytes", default_value_t = switchboard_media_node::agent::session::DEFAULT_MAX_MESSAGE_BYTES)]
    agent_max_message_bytes: usize,
    /// Marks an agent may have outstanding per call (waiting for their audio or their echo);
    /// more are refused and counted, and an agent that keeps sending them is disconnected.
    #[arg(long = "agent-max-pending-marks", default_value_t = switchboard_media_node::media::playout::DEFAULT_MAX_MARKS)]
    agent_max_pending_marks: usize,
    /// Smallest wait, in ms, for a missing caller frame before it reaches the agent as
    /// silence (in-order audio is never held; the wait adapts upwards to the reordering and
    /// lateness measured on the line).
    #[arg(long = "jitter-min-ms", default_value_t = switchboard_media_node::bridge::DEFAULT_JITTER_MIN.as_millis() as u64)]
    jitter_min_ms: u64,
    /// Largest wait, in ms, for a missing caller frame (the bound of the adaptive wait).
    #[arg(long = "jitter-max-ms", default_value_t = switchboard_media_node::bridge::DEFAULT_JITTER_MAX.as_millis() as u64)]
    jitter_max_ms: u64,
    /// Agent audio a call may queue ahead of playout, in seconds (agents that send faster
    /// than real time fill it; audio beyond it is dropped and counted).
    #[arg(long = "playout-max-seconds", default_value_t = (switchboard_media_node::media::playout::DEFAULT_MAX_BYTES / 8000) as u64)]
    playout_max_seconds: u64,
    /// What answered calls are handed to: `bridge` (RTP <-> agent, the default) or
    /// `logging` (keeps the RTP port open and logs events; for SIP-only tests).
    #[arg(long = "call-handler", value_enum, default_value_t = HandlerKind::Bridge)]
    call_handler: HandlerKind,
}

/// The `--call-handler` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HandlerKind {
    /// The media engine and agent bridge.
    Bridge,
    /// Log call events only; never refuses a call for its agent.
    Logging,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Colours only on a terminal: escape codes in a pod's log break log shippers.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let admin_token = match &args.admin_token_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            Ok(_) => {
                eprintln!("--admin-token-file {} is empty", path.display());
                return std::process::ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("cannot read --admin-token-file {}: {e}", path.display());
                return std::process::ExitCode::from(2);
            }
        },
    };
    if args.send_drain {
        return match switchboard_media_node::admin::send_drain(
            args.http_bind,
            admin_token.as_deref(),
        )
        .await
        {
            Ok(answer) => {
                println!("{answer}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("drain request to {} failed: {e}", args.http_bind);
                std::process::ExitCode::FAILURE
            }
        };
    }
    if args.debug_routes && !args.http_bind.ip().is_loopback() {
        eprintln!(
            "--debug-routes serves unauthenticated call control: it needs a loopback --http-bind, not {}",
            args.http_bind
        );
        return std::process::ExitCode::from(2);
    }
    let mut egress_allow = Vec::new();
    for c in &args.egress_allow {
        match switchboard_media_node::node::Cidr::parse(c) {
            Ok(c) => egress_allow.push(c),
            Err(e) => {
                eprintln!("--egress-allow: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let Some(rtp_ports) = switchboard_media_node::node::parse_range(&args.rtp_ports) else {
        eprintln!(
            "invalid --rtp-ports {:?}: expected START-END",
            args.rtp_ports
        );
        return std::process::ExitCode::from(2);
    };
    if args.config.is_none() && args.control_bind.is_none() {
        eprintln!(
            "switchboard-media-node needs --config FILE or --control-bind ADDR (programmed by the operator)"
        );
        return std::process::ExitCode::from(2);
    }
    let control = match args.control_bind {
        None => None,
        Some(bind) => {
            let tls = match (args.control_cert, args.control_key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    eprintln!("--control-cert and --control-key go together");
                    return std::process::ExitCode::from(2);
                }
            };
            if !args.control_insecure && (tls.is_none() || args.control_token_file.is_none()) {
                eprintln!(
                    "the control channel needs --control-cert, --control-key and --control-token-file \
                     (or --control-insecure for local development)"
                );
                return std::process::ExitCode::from(2);
            }
            Some(node::ControlOptions {
                bind,
                tls,
                token_file: args.control_token_file,
            })
        }
    };
    let api = match (args.api_bind, &args.api_token_file) {
        (None, _) => None,
        (Some(_), None) => {
            eprintln!("--api-bind needs --api-token-file (the bearer token API clients present)");
            return std::process::ExitCode::from(2);
        }
        (Some(bind), Some(path)) => match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => Some(switchboard_media_node::node::ApiOptions {
                bind,
                token: t.trim().to_owned(),
            }),
            Ok(_) => {
                eprintln!("--api-token-file {} is empty", path.display());
                return std::process::ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("cannot read --api-token-file {}: {e}", path.display());
                return std::process::ExitCode::from(2);
            }
        },
    };
    // The node's own addresses: an agent URL naming one of them reaches
    // this node's ports.
    let own = args
        .sip_bind
        .iter()
        .map(|a| a.ip())
        .chain([args.http_bind.ip()])
        .chain(args.api_bind.map(|a| a.ip()))
        .chain(args.control_bind.map(|a| a.ip()))
        .chain(args.media_advertise)
        .chain(
            [&args.advertise, &args.advertise6]
                .into_iter()
                .flatten()
                .filter_map(|h| host_ip(h)),
        );
    let egress = Arc::new(switchboard_media_node::node::EgressPolicy::new(
        egress_allow,
        own.collect::<Vec<_>>(),
    ));
    let node_id = args.node_id.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "media-node".into())
    });
    let default_tls_ip = args
        .sip_bind
        .first()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let cfg = NodeConfig {
        node_id,
        control,
        config: args.config,
        sip_bind: args.sip_bind,
        advertise: args.advertise,
        advertise6: args.advertise6,
        media_advertise: args.media_advertise,
        http_bind: args.http_bind,
        debug_routes: args.debug_routes,
        admin_token,
        rtp_ports,
        calls: CallOptions {
            max_calls: args.max_calls,
            answer_delay: Duration::from_millis(args.answer_delay_ms),
            retry_after_secs: args.retry_after,
            session_expires: args.session_expires,
            min_se: args.min_se,
            nonce_lifetime: Duration::from_secs(args.digest_nonce_lifetime_secs),
        },
        limits: Limits {
            max_message_bytes: args.max_message_bytes,
            max_headers: args.max_headers,
        },
        tcp: switchboard_media_node::sip::transport::tcp::TcpLimits {
            max_connections: args.tcp_max_connections,
            max_per_source: args.tcp_max_connections_per_source,
            first_message_timeout: Duration::from_secs(args.tcp_first_message_timeout_secs.max(1)),
            message_timeout: Duration::from_secs(args.tcp_message_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(args.tcp_idle_timeout_secs.max(1)),
        },
        rate: (args.rate_limit, args.rate_burst),
        rate_allowed: match (args.rate_limit_allowed, args.rate_burst_allowed) {
            (None, None) => None,
            (r, b) => Some((r.unwrap_or(args.rate_limit), b.unwrap_or(args.rate_burst))),
        },
        rate_unknown_total: (args.rate_limit_unknown_total, args.rate_burst_unknown_total),
        transactions: switchboard_media_node::sip::transaction::TxnLimits {
            max_server: args.max_transactions,
            max_server_per_source: args.max_transactions_per_source,
            retry_after_secs: args.retry_after,
        },
        drain_grace: Duration::from_secs(args.drain_grace_secs),
        api,
        outbound_queue_size: args.outbound_queue_size,
        webhooks: switchboard_media_node::node::WebhookOptions {
            attempts: args.webhook_attempts.max(1),
            timeout: Duration::from_millis(args.webhook_timeout_ms.max(1)),
            egress: egress.clone(),
            ..Default::default()
        },
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(switchboard_media_node::node::TlsOptions {
                bind: args
                    .tls_bind
                    .unwrap_or(SocketAddr::new(default_tls_ip, 5061)),
                cert: cert.clone(),
                key: key.clone(),
                advertise_port: args.tls_advertise_port,
            }),
            _ => None,
        },
    };
    let handler: Arc<dyn CallHandler> = match args.call_handler {
        HandlerKind::Bridge => Arc::new(BridgeHandler::new(BridgeConfig {
            connect_timeout: Duration::from_millis(args.agent_connect_timeout_ms),
            unreachable: args.agent_unreachable,
            jitter_min: Duration::from_millis(args.jitter_min_ms),
            jitter_max: Duration::from_millis(args.jitter_max_ms.max(args.jitter_min_ms)),
            playout_max_bytes: usize::try_from(args.playout_max_seconds.saturating_mul(8000))
                .unwrap_or(usize::MAX)
                .max(switchboard_media_node::media::playout::FRAME_BYTES),
            egress,
            agent_limits: switchboard_media_node::agent::session::AgentLimits {
                max_message_bytes: args.agent_max_message_bytes,
                max_pending_marks: args.agent_max_pending_marks,
                ..Default::default()
            },
            ..BridgeConfig::default()
        })),
        HandlerKind::Logging => Arc::new(LoggingHandler),
    };
    match node::run(cfg, handler).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "media node failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The IP of an `--advertise` value (HOST, HOST:PORT, [V6]:PORT), if it is
/// an address rather than a name.
fn host_ip(h: &str) -> Option<std::net::IpAddr> {
    h.parse()
        .ok()
        .or_else(|| h.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| h.rsplit_once(':').and_then(|(host, _)| host.parse().ok()))
}
