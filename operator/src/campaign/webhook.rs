//! Campaign outcome webhooks: each callee's final outcome POSTed as JSON to
//! the campaign's `spec.webhook`, retried with backoff like the nodes' call
//! status webhooks (5 attempts, 200 ms doubling to 5 s, 5 s per attempt).
//!
//! Sending never holds up a campaign: outcomes go into one bounded queue
//! served by a few delivery tasks; a full queue drops the outcome (counted;
//! the results ConfigMaps still hold it). Logs name the campaign, never the
//! URL (webhook URLs often carry a token).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounterVec;
use serde::Serialize;
use tokio::sync::{Mutex, mpsc};
use tracing::warn;

/// Outcomes queued before new ones are dropped.
const QUEUE: usize = 10_000;
/// Deliveries in parallel.
const WORKERS: usize = 4;
/// Attempts per outcome.
const ATTEMPTS: u32 = 5;
/// Per-attempt timeout.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The body of one outcome webhook.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The campaign's name.
    pub campaign: String,
    /// The campaign's namespace.
    pub namespace: String,
    /// The callee's position in the list.
    pub index: u32,
    /// The callee's own id, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The number called.
    pub to: String,
    /// answered, busy, no-answer, failed or not-attempted.
    pub outcome: &'static str,
    /// Attempts made.
    pub attempts: u8,
    /// The last attempt's SIP code (0: none).
    pub code: u16,
    /// The last attempt's call id on its media node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
}

/// One queued outcome: where, for which campaign (for logs), what.
struct Delivery {
    url: String,
    campaign: String,
    body: Bytes,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends outcome webhooks; cheap to clone.
#[derive(Clone)]
pub struct Webhook {
    tx: mpsc::Sender<Delivery>,
    deliveries: IntCounterVec,
}

impl Webhook {
    /// Starts the delivery tasks; `deliveries` counts results (ok, retried,
    /// failed, dropped).
    pub fn start(deliveries: IntCounterVec) -> Result<Webhook, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| e.to_string())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client: HttpsClient = Client::builder(TokioExecutor::new()).build(https);
        let (tx, rx) = mpsc::channel::<Delivery>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WORKERS {
            let (rx, client, d) = (rx.clone(), client.clone(), deliveries.clone());
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(job) = next else { return };
                    deliver(&client, &d, job).await;
                }
            });
        }
        Ok(Webhook { tx, deliveries })
    }

    /// Queues one outcome for `url` (none: nothing to send). Never waits.
    pub fn send(&self, url: Option<&str>, o: Outcome) {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return;
        };
        let body = match serde_json::to_vec(&serde_json::json!({
            "event": "campaign.callee",
            "outcome": o,
        })) {
            Ok(b) => Bytes::from(b),
            Err(_) => return,
        };
        let job = Delivery {
            url: url.to_owned(),
            campaign: format!("{}/{}", o.namespace, o.campaign),
            body,
        };
        if self.tx.try_send(job).is_err() {
            self.deliveries.with_label_values(&["dropped"]).inc();
        }
    }
}

async fn deliver(client: &HttpsClient, deliveries: &IntCounterVec, job: Delivery) {
    let mut wait = Duration::from_millis(200);
    for n in 1..=ATTEMPTS {
        let result = post(client, &job.url, job.body.clone()).await;
        match result {
            Ok(()) => {
                deliveries.with_label_values(&["ok"]).inc();
                return;
            }
            Err(e) if n == ATTEMPTS => {
                deliveries.with_label_values(&["failed"]).inc();
                warn!(campaign = %job.campaign, error = %e, "campaign webhook failed; the outcome stays in the results ConfigMap");
                return;
            }
            Err(_) => {
                deliveries.with_label_values(&["retried"]).inc();
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn post(client: &HttpsClient, url: &str, body: Bytes) -> Result<(), String> {
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("user-agent", "switchboard-operator")
        .body(Full::new(body))
        .map_err(|_| "invalid webhook URL".to_owned())?;
    match tokio::time::timeout(TIMEOUT, client.request(req)).await {
        Ok(Ok(r)) if r.status().is_success() => Ok(()),
        Ok(Ok(r)) => Err(format!("receiver answered {}", r.status().as_u16())),
        Ok(Err(e)) => Err(format!("request failed: {e}")),
        Err(_) => Err("timed out".into()),
    }
}
