//! OPTIONS pings to every gateway at the trunk's interval; the outbound
//! engine skips gateways that stopped answering while others are healthy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::call::Ctx;
use crate::sip::message::{Message, Method};
use crate::sip::transaction::{ClientEvent, random_token};

/// Health of one gateway.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GatewayState {
    /// Trunk id.
    pub trunk_id: String,
    /// `host:port`.
    pub gateway: String,
    /// Answered the last ping.
    pub healthy: bool,
    /// Status code of the last answer.
    pub last_code: Option<u16>,
    /// Round-trip of the last answer in milliseconds.
    pub rtt_ms: Option<u64>,
    /// Why the last check failed (`None` when healthy).
    pub error: Option<String>,
}

/// Gateway health, shared with the outbound engine.
#[derive(Clone, Default)]
pub struct GatewayHealth {
    inner: Arc<Mutex<HashMap<(String, String), GatewayState>>>,
}

impl GatewayHealth {
    /// False only when pings say the gateway is down (unknown = healthy).
    pub fn is_healthy(&self, trunk: &str, gateway: &str) -> bool {
        self.inner
            .lock()
            .ok()
            .and_then(|m| {
                m.get(&(trunk.to_owned(), gateway.to_owned()))
                    .map(|s| s.healthy)
            })
            .unwrap_or(true)
    }

    fn record(&self, s: GatewayState) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert((s.trunk_id.clone(), s.gateway.clone()), s);
        }
    }

    /// Every known gateway state.
    pub fn list(&self) -> Vec<GatewayState> {
        self.inner
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// Pings every gateway of every trunk forever, re-reading the routing table
/// each round so reloads take effect.
pub async fn run(ctx: Arc<Ctx>) {
    let mut next: HashMap<(String, String), Instant> = HashMap::new();
    loop {
        let now = Instant::now();
        for t in ctx.routing.trunks() {
            if t.options_interval_seconds == 0 || !t.enabled {
                continue;
            }
            let Some(out) = t.outbound.as_ref() else {
                continue;
            };
            for g in &out.gateways {
                let port = crate::call::outbound::gateway_port(g);
                let name = format!("{}:{port}", g.host);
                let key = (t.id.clone(), name.clone());
                if next.get(&key).is_some_and(|at| *at > now) {
                    continue;
                }
                next.insert(
                    key,
                    now + Duration::from_secs(u64::from(t.options_interval_seconds)),
                );
                tokio::spawn(ping(ctx.clone(), t.id.clone(), g.clone(), out.tls.clone()));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn ping(
    ctx: Arc<Ctx>,
    trunk_id: String,
    g: switchboard_proto::v1alpha1::Gateway,
    tls: Option<switchboard_proto::v1alpha1::TlsClient>,
) {
    let port = crate::call::outbound::gateway_port(&g);
    let name = format!("{}:{port}", g.host);
    let Some(dest) = crate::call::outbound::resolve(&g).await else {
        return;
    };
    // A gateway whose certificate does not verify is down for us: the trunk shows Degraded
    // with the handshake's reason, and the log says it once.
    if let Err(e) = crate::call::outbound::connect_gateway_tls(&ctx, &g, &dest, tls.as_ref()).await
    {
        if ctx.health.is_healthy(&trunk_id, &name) {
            tracing::warn!(trunk = %trunk_id, gateway = %name, error = %e, "gateway unreachable over TLS");
        }
        ctx.metrics
            .gateway_healthy
            .with_label_values(&[&trunk_id, &name])
            .set(0);
        ctx.health.record(GatewayState {
            trunk_id,
            gateway: name,
            healthy: false,
            last_code: None,
            rtt_ms: None,
            error: Some(e),
        });
        return;
    }
    let host = crate::sip::headers::host_port(&dest.addr);
    let mut req = Message::request(Method::Options, format!("sip:{host}"));
    let adv = ctx.sip.transport.advertised_hostport(&dest);
    req.add(
        "From",
        format!("<sip:switchboard@{adv}>;tag={}", random_token(10)),
    );
    req.add("To", format!("<sip:{host}>"));
    req.add("Call-ID", format!("{}@switchboard", random_token(20)));
    req.add("CSeq", "1 OPTIONS");
    req.add("User-Agent", crate::sip::USER_AGENT);
    let started = Instant::now();
    let (_, mut events) = ctx.sip.request(req, dest);
    let (healthy, code, error) = loop {
        match events.recv().await {
            Some(ClientEvent::Response(r)) => match r.code() {
                Some(c) if c < 200 => continue,
                // Any answer but "unavailable" proves the gateway is up.
                Some(c) => {
                    let up = !(500..600).contains(&c) || c == 501;
                    break (up, Some(c), (!up).then(|| format!("OPTIONS answered {c}")));
                }
                None => continue,
            },
            Some(ClientEvent::TransportError) => {
                break (false, None, Some("transport error sending OPTIONS".into()));
            }
            _ => break (false, None, Some("no answer to OPTIONS".into())),
        }
    };
    let rtt = code.map(|_| started.elapsed().as_millis() as u64);
    let was = ctx.health.is_healthy(&trunk_id, &name);
    if was != healthy {
        tracing::info!(trunk = %trunk_id, gateway = %name, healthy, "gateway health changed");
    }
    ctx.metrics
        .gateway_healthy
        .with_label_values(&[&trunk_id, &name])
        .set(i64::from(healthy));
    ctx.health.record(GatewayState {
        trunk_id,
        gateway: name,
        healthy,
        last_code: code,
        rtt_ms: rtt,
        error,
    });
}
