//! Keeping registrations with carriers for trunks with `register.enabled`
//! (and `register_here` on this node): digest on 401/407, refresh before
//! expiry, exponential backoff on failure, state exposed for the operator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_proto::v1alpha1::{Gateway, Trunk};

use crate::call::Ctx;
use crate::sip::digest::{self, Challenge};
use crate::sip::headers::{param, split_host_port};
use crate::sip::message::{Message, Method};
use crate::sip::transaction::{ClientEvent, random_token};

/// Registration state of one trunk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegistrationState {
    /// Trunk id.
    pub trunk_id: String,
    /// `registered`, `registering`, `failed`.
    pub state: &'static str,
    /// Last final status from the registrar.
    pub last_code: Option<u16>,
    /// Expiry granted by the registrar, seconds.
    pub expires: Option<u32>,
    /// Successful registrations so far (first one plus refreshes).
    pub successes: u64,
    /// Why the last attempt failed (`None` after a success).
    pub error: Option<String>,
}

/// Registration states, shared with the admin endpoint.
#[derive(Clone, Default)]
pub struct Registrations {
    inner: Arc<Mutex<HashMap<String, RegistrationState>>>,
}

impl Registrations {
    fn set(&self, s: RegistrationState) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(s.trunk_id.clone(), s);
        }
    }

    fn get(&self, trunk: &str) -> Option<RegistrationState> {
        self.inner.lock().ok()?.get(trunk).cloned()
    }

    /// Every registration state.
    pub fn list(&self) -> Vec<RegistrationState> {
        self.inner
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// When to refresh a registration that lasts `expires` seconds: well
/// before expiry (RFC 3261 10.2.4 leaves the margin to us).
pub fn refresh_after(expires: u32) -> Duration {
    let e = u64::from(expires.max(1));
    Duration::from_secs(if e > 60 { e - 30 } else { (e / 2).max(1) })
}

/// Backoff after `failures` consecutive failures: 2, 4, 8 ... 300 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs((2u64 << failures.min(8)).min(300))
}

/// The expiry granted in a 200 to REGISTER: our Contact's `expires`
/// parameter, else the Expires header, else what we asked for.
pub fn granted_expires(resp: &Message, contact_uri_user: &str, asked: u32) -> u32 {
    for c in resp.headers_named("Contact") {
        for entry in crate::sip::message::split_list(c) {
            if entry.contains(contact_uri_user)
                && let Some(e) = param(entry, "expires").and_then(|e| e.parse().ok())
            {
                return e;
            }
        }
    }
    resp.header("Expires")
        .and_then(|e| e.trim().parse().ok())
        .unwrap_or(asked)
}

/// Supervises the registration loops, starting one per configured trunk
/// and stopping those whose trunk no longer registers here.
pub async fn run(ctx: Arc<Ctx>) {
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        if let Some(trunks) = ctx
            .routing
            .read(|t| t.trunks().cloned().collect::<Vec<Arc<Trunk>>>())
        {
            let wanted: Vec<Arc<Trunk>> = trunks
                .into_iter()
                .filter(|t| {
                    t.enabled
                        && t.register_here
                        && t.outbound
                            .as_ref()
                            .and_then(|o| o.register.as_ref())
                            .is_some_and(|r| r.enabled)
                })
                .collect();
            running.retain(|id, h| {
                let keep = wanted.iter().any(|t| &t.id == id) && !h.is_finished();
                if !keep {
                    h.abort();
                }
                keep
            });
            for t in wanted {
                if !running.contains_key(&t.id) {
                    running.insert(
                        t.id.clone(),
                        tokio::spawn(keep_registered(ctx.clone(), Trunk::clone(&t))),
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn keep_registered(ctx: Arc<Ctx>, trunk: Trunk) {
    let Some(out) = trunk.outbound.clone() else {
        return;
    };
    let Some(reg) = out.register.clone() else {
        return;
    };
    let asked = if reg.expires_seconds == 0 {
        3600
    } else {
        reg.expires_seconds
    };
    // The registrar: explicit, else the first gateway.
    let gw = if reg.registrar.is_empty() {
        out.gateways.first().cloned()
    } else {
        split_host_port(&reg.registrar).map(|(host, port)| Gateway {
            host,
            port: u32::from(port.unwrap_or(5060)),
            ..out.gateways.first().cloned().unwrap_or_default()
        })
    };
    let Some(gw) = gw else {
        tracing::warn!(trunk = %trunk.id, "registration enabled but no registrar or gateway");
        return;
    };
    let user = if !reg.contact_user.is_empty() {
        reg.contact_user.clone()
    } else {
        out.auth
            .as_ref()
            .map(|a| a.username.clone())
            .unwrap_or_else(|| "switchboard".into())
    };
    let call_id = format!("{}@switchboard", random_token(20));
    let from_tag = random_token(10);
    let mut cseq = 0u32;
    let mut failures = 0u32;
    let mut successes = 0u64;
    loop {
        let state = |s: &'static str, code: Option<u16>, expires: Option<u32>, successes: u64| {
            RegistrationState {
                trunk_id: trunk.id.clone(),
                state: s,
                last_code: code,
                expires,
                successes,
                error: None,
            }
        };
        if ctx.registrations.get(&trunk.id).is_none() {
            ctx.registrations.set(state("registering", None, None, 0));
        }
        let result = match registrar(&ctx, &gw, &out).await {
            Ok(dest) => register_once(
                &ctx, &gw, &out, &user, asked, &call_id, &from_tag, &mut cseq, dest,
            )
            .await
            .map_err(Failure::answered),
            Err(f) => Err(f),
        };
        let wait = match result {
            Ok(expires) => {
                failures = 0;
                successes += 1;
                tracing::info!(trunk = %trunk.id, expires, "registered");
                ctx.registrations
                    .set(state("registered", Some(200), Some(expires), successes));
                ctx.metrics
                    .registered
                    .with_label_values(&[&trunk.id])
                    .set(1);
                refresh_after(expires)
            }
            Err(Failure { code, reason }) => {
                failures += 1;
                tracing::warn!(trunk = %trunk.id, code = ?code, %reason, failures, "registration failed");
                ctx.registrations.set(RegistrationState {
                    error: Some(reason),
                    ..state("failed", code, None, successes)
                });
                ctx.metrics
                    .registered
                    .with_label_values(&[&trunk.id])
                    .set(0);
                backoff(failures - 1)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// A failed registration attempt.
struct Failure {
    /// The registrar's final status, if it answered.
    code: Option<u16>,
    /// What the trunk's `Registered` condition says.
    reason: String,
}

impl Failure {
    /// The outcome of the REGISTER exchange: the registrar's code, or none at all.
    fn answered(code: Option<u16>) -> Failure {
        Failure {
            code,
            reason: match code {
                Some(c) => format!("registrar answered {c}"),
                None => "no answer from the registrar".into(),
            },
        }
    }
}

/// Where the REGISTER goes; for a TLS registrar, after a verified connection (the REGISTER
/// goes over it), so a bad certificate is the reason shown rather than a timeout.
async fn registrar(
    ctx: &Ctx,
    gw: &Gateway,
    out: &switchboard_proto::v1alpha1::Outbound,
) -> Result<crate::sip::transport::Peer, Failure> {
    let Some(dest) = crate::call::outbound::resolve(gw).await else {
        return Err(Failure {
            code: None,
            reason: format!("cannot resolve the registrar {}", gw.host),
        });
    };
    crate::call::outbound::connect_gateway_tls(ctx, gw, &dest, out.tls.as_ref())
        .await
        .map_err(|reason| Failure { code: None, reason })?;
    Ok(dest)
}

/// One REGISTER exchange to `dest` including a digest retry: `Ok(expires)`,
/// `Err(final code)`, or `Err(None)` without one.
#[allow(clippy::too_many_arguments)]
async fn register_once(
    ctx: &Arc<Ctx>,
    gw: &Gateway,
    out: &switchboard_proto::v1alpha1::Outbound,
    user: &str,
    asked: u32,
    call_id: &str,
    from_tag: &str,
    cseq: &mut u32,
    dest: crate::sip::transport::Peer,
) -> Result<u32, Option<u16>> {
    let domain = if out.from_domain.is_empty() {
        gw.host.clone()
    } else {
        out.from_domain.clone()
    };
    let ruri = format!("sip:{}", crate::sip::headers::host_port(&dest.addr));
    let contact = ctx.contact(user, &dest, false);
    let mut auth: Option<(&'static str, String)> = None;
    for _ in 0..3 {
        *cseq += 1;
        let mut req = Message::request(Method::Register, ruri.clone());
        req.add("From", format!("<sip:{user}@{domain}>;tag={from_tag}"));
        req.add("To", format!("<sip:{user}@{domain}>"));
        req.add("Call-ID", call_id.to_owned());
        req.add("CSeq", format!("{cseq} REGISTER"));
        req.add("Contact", format!("{contact};expires={asked}"));
        req.add("Expires", asked.to_string());
        req.add("User-Agent", crate::sip::USER_AGENT);
        if let Some((k, v)) = &auth {
            req.add(k, v.clone());
        }
        let (_, mut events) = ctx.sip.request(req, dest);
        let resp = loop {
            match events.recv().await {
                Some(ClientEvent::Response(r)) if r.code().is_some_and(|c| c < 200) => continue,
                Some(ClientEvent::Response(r)) => break r,
                _ => return Err(None),
            }
        };
        let code = resp.code().unwrap_or(500);
        match code {
            200..=299 => return Ok(granted_expires(&resp, user, asked)),
            401 | 407 => {
                let creds = out
                    .auth
                    .as_ref()
                    .filter(|c| !c.username.is_empty())
                    .ok_or(Some(code))?;
                let (ch_name, auth_name) = if code == 401 {
                    ("WWW-Authenticate", "Authorization")
                } else {
                    ("Proxy-Authenticate", "Proxy-Authorization")
                };
                let ch = resp
                    .headers_named(ch_name)
                    .find_map(|v| Challenge::parse(v).ok())
                    .ok_or(Some(code))?;
                if auth.is_some() && !ch.stale {
                    return Err(Some(code));
                }
                let value = digest::authorization(
                    &ch,
                    &creds.username,
                    &creds.password,
                    "REGISTER",
                    &ruri,
                    1,
                    &random_token(16),
                );
                auth = Some((auth_name, value));
            }
            _ => return Err(Some(code)),
        }
    }
    Err(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_and_backoff_timing() {
        assert_eq!(refresh_after(3600), Duration::from_secs(3570));
        assert_eq!(refresh_after(10), Duration::from_secs(5));
        assert_eq!(refresh_after(0), Duration::from_secs(1));
        assert_eq!(backoff(0), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(16));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn expiry_from_contact_then_header() {
        let mut r = Message::request(Method::Register, "sip:h");
        r.push_header(
            "Contact",
            "<sip:other@1.2.3.4>;expires=50, <sip:trunkuser@5.6.7.8>;expires=120",
        );
        r.push_header("Expires", "300");
        assert_eq!(granted_expires(&r, "trunkuser", 3600), 120);
        r.remove("Contact");
        assert_eq!(granted_expires(&r, "trunkuser", 3600), 300);
        r.remove("Expires");
        assert_eq!(granted_expires(&r, "trunkuser", 3600), 3600);
    }
}
