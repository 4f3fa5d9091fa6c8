//! A webhook receiver for tests: an HTTP/1.1 server on loopback that keeps
//! every JSON body it accepts and can fail the first requests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Receives status webhooks: answers the first `fail_first` requests with
/// 500 (to exercise retries), then 200, and keeps every body received.
#[derive(Clone)]
pub struct WebhookReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
    attempts: Arc<Mutex<usize>>,
}

impl WebhookReceiver {
    /// Starts listening on 127.0.0.1.
    pub async fn start(fail_first: usize) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let rx = WebhookReceiver {
            addr,
            received: Default::default(),
            attempts: Default::default(),
        };
        let me = rx.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move { me.connection(sock, fail_first).await });
            }
        });
        rx
    }

    /// The URL to configure (with a secret-looking query the node must
    /// never log).
    pub fn url(&self) -> String {
        format!("http://{}/hooks/calls?secret=hook-s3cret", self.addr)
    }

    async fn connection(&self, mut sock: tokio::net::TcpStream, fail_first: usize) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            // One request: head, then Content-Length bytes of body.
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body: Vec<u8> = buf[head_end..head_end + len].to_vec();
            buf.drain(..head_end + len);
            let n = {
                let mut a = self.attempts.lock().expect("lock");
                *a += 1;
                *a
            };
            let ok = n > fail_first;
            if ok && let Ok(v) = serde_json::from_slice::<Value>(&body) {
                self.received.lock().expect("lock").push(v);
            }
            let status = if ok {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            if sock.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Bodies accepted so far.
    pub fn events(&self) -> Vec<Value> {
        self.received.lock().expect("lock").clone()
    }

    /// Requests received (failed and accepted).
    pub fn attempts(&self) -> usize {
        *self.attempts.lock().expect("lock")
    }

    /// Event names received for a call, in order.
    pub fn names_for(&self, call_id: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["call"]["id"] == call_id)
            .filter_map(|e| e["event"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits until `n` events for the call arrived.
    pub async fn wait_for(&self, call_id: &str, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let names = self.names_for(call_id);
            if names.len() >= n {
                return names;
            }
            assert!(
                Instant::now() < deadline,
                "only {names:?} reached the webhook within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
