//! Status webhooks: call events POSTed as JSON to the PhoneNumber's
//! `agent.statusWebhook`.
//!
//! Each call gets its own delivery task so its events arrive in order
//! (initiated, ringing, answered, completed), while a slow or dead receiver
//! never delays the call: the call side only pushes into a bounded channel.
//! Every attempt has a timeout; failed attempts are retried with exponential
//! backoff up to a bounded number of attempts, then the event is dropped,
//! counted and logged. Logs name only the receiver's scheme, host and port:
//! webhook URLs often carry a token in the path or query.
//!
//! Receivers pass the egress guard ([`crate::egress`]): the client's resolver
//! hands the connector only checked addresses, and IP literals are checked
//! before the request. A refused receiver is not retried (counted
//! `refused`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::{IntCounterVec, Opts};
use tokio::sync::mpsc;

/// Events queued per call before new ones are dropped (a call has four).
const PER_CALL_QUEUE: usize = 16;

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not a valid http(s) URL.
    #[error("invalid webhook URL")]
    InvalidUrl,
    /// The connection or request failed.
    #[error("request failed: {0}")]
    Request(String),
    /// The receiver answered with a non-2xx status.
    #[error("receiver answered {0}")]
    Status(u16),
    /// No answer within the per-attempt timeout.
    #[error("timed out")]
    Timeout,
    /// The TLS client could not be set up.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The egress guard refused the receiver's address.
    #[error(transparent)]
    Refused(crate::egress::EgressError),
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// Attempts per event (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubles on each further retry.
    pub initial_backoff: Duration,
    /// Upper bound of the wait between retries.
    pub max_backoff: Duration,
    /// Timeout of one attempt (connect + request + response head).
    pub timeout: Duration,
    /// Where receivers may be (the default refuses every internal range).
    pub egress: Arc<crate::egress::EgressPolicy>,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            egress: Arc::default(),
        }
    }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<HttpConnector<crate::egress::GuardedResolver>>,
    Full<Bytes>,
>;

/// Sends webhooks; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    client: HttpsClient,
    guard: crate::egress::Egress,
    opts: Arc<WebhookOptions>,
    deliveries: IntCounterVec,
}

/// The ordered event queue of one call's webhook.
pub struct CallWebhook {
    tx: mpsc::Sender<Vec<u8>>,
    deliveries: IntCounterVec,
}

impl CallWebhook {
    /// Queues one JSON body; never waits. A full queue drops the event
    /// (counted as `dropped`).
    pub fn send(&self, body: Vec<u8>) {
        if self.tx.try_send(body).is_err() {
            self.deliveries.with_label_values(&["dropped"]).inc();
        }
    }
}

/// `scheme://host:port` of a URL, for logs: never the path, query or
/// user info, which may hold secrets.
pub fn redact_url(url: &str) -> String {
    match url.parse::<hyper::Uri>() {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme_str().unwrap_or("?"),
            u.host().unwrap_or("?"),
            u.port_u16().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// The wait before retry number `retry` (1-based).
pub fn backoff(opts: &WebhookOptions, retry: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1));
    opts.initial_backoff
        .saturating_mul(factor)
        .min(opts.max_backoff)
}

impl Webhooks {
    /// A sender whose counters (`switchboard_webhook_deliveries_total` by
    /// result) live in `registry`.
    pub fn new(
        opts: WebhookOptions,
        registry: &prometheus::Registry,
    ) -> Result<Webhooks, WebhookError> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "switchboard_webhook_deliveries_total",
                "Status webhook deliveries by result (ok, retried, failed, dropped, refused)",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| panic!("invalid metric definition: {e}"));
        // A second registration (two nodes in one process in unit tests)
        // keeps the first; the counter still works, just unexported.
        let _ = registry.register(Box::new(deliveries.clone()));
        // The ring provider named explicitly: the process may link more than
        // one rustls provider, and then no default is chosen.
        let guard = crate::egress::Egress::new(opts.egress.clone(), &[]);
        let mut http =
            HttpConnector::new_with_resolver(crate::egress::GuardedResolver::new(guard.clone()));
        // hyper-rustls does TLS on top: let https:// URLs through.
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let https = builder
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| WebhookError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Webhooks {
            client,
            guard,
            opts: Arc::new(opts),
            deliveries,
        })
    }

    /// Starts the delivery task of one call's webhook at `url`.
    pub fn for_call(&self, url: &str, call_id: &str) -> CallWebhook {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(PER_CALL_QUEUE);
        let this = self.clone();
        let url = url.to_owned();
        let call_id = call_id.to_owned();
        tokio::spawn(async move {
            while let Some(body) = rx.recv().await {
                this.deliver(&url, &call_id, body).await;
            }
        });
        CallWebhook {
            tx,
            deliveries: self.deliveries.clone(),
        }
    }

    async fn deliver(&self, url: &str, call_id: &str, body: Vec<u8>) {
        let body = Bytes::from(body);
        let attempts = self.opts.attempts.max(1);
        for n in 1..=attempts {
            match self.post(url, body.clone()).await {
                Ok(()) => {
                    self.deliveries.with_label_values(&["ok"]).inc();
                    return;
                }
                Err(e @ WebhookError::Refused(_)) => {
                    // A policy refusal: retrying cannot help.
                    self.deliveries.with_label_values(&["refused"]).inc();
                    tracing::warn!(%call_id, receiver = %redact_url(url), error = %e,
                        "status webhook refused by the egress guard; event dropped");
                    return;
                }
                Err(e) if n < attempts => {
                    self.deliveries.with_label_values(&["retried"]).inc();
                    let wait = backoff(&self.opts, n);
                    tracing::debug!(%call_id, receiver = %redact_url(url), attempt = n, error = %e,
                        retry_in_ms = wait.as_millis() as u64, "status webhook failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    self.deliveries.with_label_values(&["failed"]).inc();
                    tracing::warn!(%call_id, receiver = %redact_url(url), attempts, error = %e,
                        "status webhook failed; event dropped");
                }
            }
        }
    }

    async fn post(&self, url: &str, body: Bytes) -> Result<(), WebhookError> {
        let uri: hyper::Uri = url.parse().map_err(|_| WebhookError::InvalidUrl)?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
            return Err(WebhookError::InvalidUrl);
        }
        // The connector skips the resolver for IP literals: check them here.
        let (scheme, host, port) =
            crate::egress::host_port(&uri).map_err(|_| WebhookError::InvalidUrl)?;
        if host.parse::<std::net::IpAddr>().is_ok() {
            self.guard
                .resolve(scheme, host, port)
                .await
                .map_err(WebhookError::Refused)?;
        }
        let req = hyper::Request::post(uri)
            .header("content-type", "application/json")
            .header("user-agent", crate::sip::USER_AGENT)
            .body(Full::new(body))
            .map_err(|_| WebhookError::InvalidUrl)?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // The resolver's refusal comes back inside hyper's error.
                match refusal(&e) {
                    Some(r) => WebhookError::Refused(r),
                    None => WebhookError::Request(error_chain(&e)),
                }
            })?;
            let status = resp.status().as_u16();
            // Read (and discard) the body so the connection can be reused.
            let _ = resp.into_body().collect().await;
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(WebhookError::Status(status))
            }
        };
        tokio::time::timeout(self.opts.timeout, fut)
            .await
            .map_err(|_| WebhookError::Timeout)?
    }
}

/// The egress refusal inside a client error, if that is what failed.
fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<crate::egress::EgressError> {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(crate::egress::EgressError::Refused { target, addr, rule }) =
            s.downcast_ref::<crate::egress::EgressError>()
        {
            return Some(crate::egress::EgressError::Refused {
                target: target.clone(),
                addr: *addr,
                rule: *rule,
            });
        }
        src = s.source();
    }
    None
}

/// The error and its sources, without the URL (hyper's errors do not carry
/// it, but the chain would show it if a future version did: keep to kinds).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let o = WebhookOptions::default();
        assert_eq!(backoff(&o, 1), Duration::from_millis(200));
        assert_eq!(backoff(&o, 2), Duration::from_millis(400));
        assert_eq!(backoff(&o, 3), Duration::from_millis(800));
        assert_eq!(backoff(&o, 10), Duration::from_secs(5));
        assert_eq!(backoff(&o, 100), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn receivers_on_internal_addresses_are_refused_without_retries() {
        let registry = prometheus::Registry::new();
        let hooks = Webhooks::new(WebhookOptions::default(), &registry).expect("client");
        // A literal (checked before the request) and a name (checked by the resolver).
        for url in ["http://127.0.0.1:9/drain", "http://localhost:9/drain"] {
            let before = hooks.deliveries.with_label_values(&["refused"]).get();
            hooks.for_call(url, "c1").send(b"{}".to_vec());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while hooks.deliveries.with_label_values(&["refused"]).get() == before {
                assert!(tokio::time::Instant::now() < deadline, "{url} not refused");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                hooks.deliveries.with_label_values(&["retried"]).get(),
                0,
                "{url}"
            );
        }
    }

    #[test]
    fn redacted_urls_keep_only_the_receiver() {
        assert_eq!(
            redact_url("https://user:pw@hooks.example.com:8443/t/SECRET?token=abc"),
            "https://hooks.example.com:8443"
        );
        assert_eq!(redact_url("http://127.0.0.1/x?k=v"), "http://127.0.0.1");
        assert_eq!(redact_url("not a url at all"), "<invalid url>");
    }
}
