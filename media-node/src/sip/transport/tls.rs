//! SIP over TLS (RFC 3261 26): the listener's certificate, reloaded when its files change.
//!
//! The connections themselves are [`super::tcp::Connections`] with an acceptor: the same caps
//! (checked before the handshake), deadlines (the handshake must finish within the first
//! message timeout) and clean-up as TCP. The certificate and key are PEM files (a Kubernetes
//! TLS Secret, as cert-manager writes it); a renewed pair is picked up within
//! [`RELOAD_INTERVAL`] without dropping connections, and a bad pair is logged and ignored
//! (the previous one stays in use).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use switchboard_proto::v1alpha1::TlsClient;
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Errors loading the listener's certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key.
    #[error("{0}: no PEM private key in it")]
    NoKey(PathBuf),
    /// rustls refused the pair (unsupported key type, key not matching the certificate).
    #[error("certificate and key refused: {0}")]
    Rustls(String),
}

/// Where the TLS listener binds and the acceptor it uses.
pub struct Listener {
    /// Address to listen on (port 5061 by default).
    pub bind: SocketAddr,
    /// The handshake side, with a reloading certificate.
    pub acceptor: TlsAcceptor,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads a certificate chain and its key from PEM files.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let der = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey(key.to_owned()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, der, &provider)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Arc::new(certified))
}

fn stamp(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The listener's certificate: what the handshake presents, replaced when the files change.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl CertStore {
    /// Loads the pair now; an error here stops the node from starting.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let stamps = (stamp(cert), stamp(key));
        Ok(Arc::new(CertStore {
            current: RwLock::new(load(cert, key)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
            stamps: RwLock::new(stamps),
        }))
    }

    /// Reloads when either file changed since the last load. `Ok(true)`: a new pair is in
    /// use; `Err`: the files changed but do not load (the old pair stays).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (stamp(&self.cert), stamp(&self.key));
        let seen = *self.stamps.read().unwrap_or_else(|e| e.into_inner());
        if now == seen {
            return Ok(false);
        }
        // Remember the stamps even on failure: one log line per bad write, not one per
        // interval (a half-written pair is rewritten, changing the stamps again).
        *self.stamps.write().unwrap_or_else(|e| e.into_inner()) = now;
        let fresh = load(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(true)
    }

    /// The acceptor presenting this store's current certificate (TLS 1.2 and 1.3; no client
    /// certificates asked for: carriers are authenticated by source address or digest).
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Checks the files every [`RELOAD_INTERVAL`] until the node stops.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate changed but does not load; keeping the previous one")
                }
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The OS trust store (with the Mozilla roots when the OS has none), loaded once.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        roots
    })
}

/// The client configuration for a trunk's TLS gateways: the system roots plus the trunk's
/// CA bundle, and its client certificate when it has one (mutual TLS). The gateway's
/// certificate is verified against its host name by rustls (RFC 5922 in spirit: the name
/// the trunk configured, not an address from DNS).
fn client_config(tls: &TlsClient) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = system_roots().clone();
    if !tls.ca_pem.is_empty() {
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut tls.ca_pem.as_bytes()).filter_map(Result::ok) {
            roots
                .add(cert)
                .map_err(|e| TlsError::Rustls(format!("CA bundle: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::Rustls("caPem holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (
        tls.client_cert_pem.is_empty(),
        tls.client_key_pem.is_empty(),
    ) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let chain: Vec<_> = rustls_pemfile::certs(&mut tls.client_cert_pem.as_bytes())
                .filter_map(Result::ok)
                .collect();
            if chain.is_empty() {
                return Err(TlsError::Rustls(
                    "clientCertPem holds no PEM certificate".into(),
                ));
            }
            let key = rustls_pemfile::private_key(&mut tls.client_key_pem.as_bytes())
                .ok()
                .flatten()
                .ok_or_else(|| TlsError::Rustls("clientKeyPem holds no PEM private key".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Rustls(format!("client certificate: {e}")))?
        }
        _ => {
            return Err(TlsError::Rustls(
                "a client certificate needs both clientCertPem and clientKeyPem".into(),
            ));
        }
    };
    Ok(Arc::new(config))
}

/// Most distinct trunk TLS settings kept built; past it the cache starts over (settings
/// come from the operator, so this only bounds churn from many configuration changes).
const MAX_CACHED_CLIENT_CONFIGS: usize = 1024;

type ClientConfigs = Mutex<HashMap<[u8; 32], Arc<rustls::ClientConfig>>>;

fn client_configs() -> &'static ClientConfigs {
    static CONFIGS: OnceLock<ClientConfigs> = OnceLock::new();
    CONFIGS.get_or_init(Default::default)
}

/// SHA-256 over the settings, each length-prefixed: the cache key, so the map holds no
/// key material of its own.
fn settings_digest(tls: &TlsClient) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [&tls.ca_pem, &tls.client_cert_pem, &tls.client_key_pem] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// [`client_config`], built once per distinct setting and shared: connection attempts and
/// health checks do not re-parse the roots and the trunk's PEM each time, and TLS sessions
/// to a gateway resume (rustls keeps its session cache in the configuration).
pub fn cached_client_config(tls: &TlsClient) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let digest = settings_digest(tls);
    let configs = client_configs();
    if let Some(c) = configs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&digest)
    {
        return Ok(c.clone());
    }
    let built = client_config(tls)?;
    let mut map = configs.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX_CACHED_CLIENT_CONFIGS {
        map.clear();
    }
    Ok(map.entry(digest).or_insert(built).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    }

    fn names(store: &CertStore) -> Vec<u8> {
        store.current.read().expect("lock").cert[0].to_vec()
    }

    #[test]
    fn client_configs_are_built_once_per_distinct_setting() {
        let ca = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&ca).expect("ca").pem();
        let with_ca = TlsClient {
            ca_pem,
            ..Default::default()
        };
        let a = cached_client_config(&with_ca).expect("config");
        let b = cached_client_config(&with_ca.clone()).expect("config");
        assert!(
            Arc::ptr_eq(&a, &b),
            "the same settings share one configuration"
        );
        let plain = cached_client_config(&TlsClient::default()).expect("config");
        assert!(!Arc::ptr_eq(&a, &plain), "other settings get their own");
        // A refused setting is an error every time, never cached as something else.
        let bad = TlsClient {
            ca_pem: "not a certificate".into(),
            ..Default::default()
        };
        assert!(cached_client_config(&bad).is_err());
        assert!(cached_client_config(&bad).is_err());
    }

    #[test]
    fn a_renewed_pair_is_picked_up_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().expect("dir");
        let (c, k) = pair(dir.path(), "node-a.example");
        let store = CertStore::open(&c, &k).expect("loads");
        assert!(store.acceptor().is_ok());
        let first = names(&store);
        assert!(!store.reload_if_changed().expect("unchanged"));
        // Renewal: new files; the stamp is set ahead so the change shows whatever the
        // file system's timestamp resolution.
        pair(dir.path(), "node-b.example");
        let _ = std::fs::File::options()
            .append(true)
            .open(&c)
            .and_then(|f| f.set_modified(SystemTime::now() + Duration::from_secs(5)));
        assert!(store.reload_if_changed().expect("reloads"));
        let second = names(&store);
        assert_ne!(first, second);
        // A broken write: refused, the renewed pair stays.
        std::fs::write(&k, "not a key").expect("write");
        let _ = std::fs::File::options()
            .append(true)
            .open(&k)
            .and_then(|f| f.set_modified(SystemTime::now() + Duration::from_secs(10)));
        assert!(matches!(store.reload_if_changed(), Err(TlsError::NoKey(_))));
        assert_eq!(names(&store), second);
    }

    #[test]
    fn missing_or_empty_files_name_the_problem() {
        let dir = tempfile::tempdir().expect("dir");
        let (c, k) = pair(dir.path(), "node.example");
        let missing = dir.path().join("none.pem");
        assert!(matches!(load(&missing, &k), Err(TlsError::Read { .. })));
        std::fs::write(dir.path().join("empty.pem"), "").expect("write");
        assert!(matches!(
            load(&dir.path().join("empty.pem"), &k),
            Err(TlsError::NoCertificate(_))
        ));
        assert!(matches!(load(&c, &c), Err(TlsError::NoKey(_))));
    }
}
