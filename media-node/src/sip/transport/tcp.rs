//! TCP: accepted and outgoing connections, reused for every message to the
//! same remote address, framed by Content-Length.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{Peer, Proto, Receiver, TransportError};
use crate::sip::framing::StreamFramer;

/// Idle connections are closed after this long without traffic.
const IDLE: Duration = Duration::from_secs(600);
/// Messages queued per connection before sends fail.
const QUEUE: usize = 256;

/// The table of live connections, keyed by remote address.
pub struct Connections {
    map: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    recv: Arc<Receiver>,
}

impl Connections {
    pub(crate) fn new(recv: Arc<Receiver>) -> Self {
        Connections {
            map: Mutex::new(HashMap::new()),
            recv,
        }
    }

    /// Queues bytes on the connection to `addr`, connecting first if none
    /// is open.
    pub fn send(self: &Arc<Self>, addr: SocketAddr, data: Bytes) -> Result<(), TransportError> {
        let Ok(mut map) = self.map.lock() else {
            return Err(TransportError::TcpQueue(addr));
        };
        if let Some(tx) = map.get(&addr)
            && !tx.is_closed()
        {
            return tx
                .try_send(data)
                .map_err(|_| TransportError::TcpQueue(addr));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.try_send(data);
        map.insert(addr, tx);
        let this = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => this.clone().run(stream, addr, rx).await,
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TCP connect failed"),
                Err(_) => tracing::debug!(%addr, "TCP connect timed out"),
            }
            this.forget(addr);
        });
        Ok(())
    }

    fn forget(&self, addr: SocketAddr) {
        if let Ok(mut map) = self.map.lock()
            && map.get(&addr).is_some_and(|tx| tx.is_closed())
        {
            map.remove(&addr);
        }
    }

    /// Serves one connection until either side closes or it idles out.
    async fn run(
        self: Arc<Self>,
        stream: TcpStream,
        addr: SocketAddr,
        mut rx: mpsc::Receiver<Bytes>,
    ) {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if wr.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
        let mut framer = StreamFramer::new();
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match tokio::time::timeout(IDLE, rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => n,
            };
            framer.push(&buf[..n]);
            loop {
                match framer.next_message(&self.recv.limits) {
                    Ok(Some(msg)) => self.recv.accept(
                        msg,
                        Peer {
                            proto: Proto::Tcp,
                            addr,
                        },
                    ),
                    Ok(None) => break,
                    Err(e) => {
                        // A stream cannot be resynchronised after a framing error.
                        self.recv.metrics.drop_msg(e.label());
                        tracing::debug!(%addr, error = %e, "closing TCP connection after framing error");
                        writer.abort();
                        return;
                    }
                }
            }
        }
        writer.abort();
    }
}

/// Accepts connections forever.
pub(crate) async fn accept_loop(listener: tokio::net::TcpListener, conns: Arc<Connections>) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        if let Ok(mut map) = conns.map.lock() {
            map.insert(addr, tx);
        }
        let c = conns.clone();
        tokio::spawn(async move {
            c.clone().run(stream, addr, rx).await;
            if let Ok(mut map) = c.map.lock() {
                map.remove(&addr);
            }
        });
    }
}
