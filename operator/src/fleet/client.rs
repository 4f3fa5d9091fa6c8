//! How the operator dials media nodes: TLS with a CA it trusts and a bearer
//! token, or plaintext behind an explicit development flag.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Maximum size of one configuration message (a snapshot of 100,000 numbers
/// is about 10 MB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Errors setting up the control client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("control token file {0} is empty")]
    EmptyToken(String),
    /// The node address is not a valid URI.
    #[error("invalid media-node address {uri}: {source}")]
    Uri {
        /// The address.
        uri: String,
        /// The cause.
        source: tonic::transport::Error,
    },
}

/// Dialling settings shared by every node connection.
#[derive(Clone)]
pub struct ControlClient {
    tls: Option<ClientTlsConfig>,
    token: Option<String>,
}

// Hand-written so the token is never printed.
impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ControlClient {
    /// Plaintext, no token: only for local development (`--control-insecure`).
    pub fn insecure(token: Option<String>) -> Self {
        Self { tls: None, token }
    }

    /// TLS verifying the node's certificate against `ca_file` for
    /// `server_name`, with the bearer token from `token_file`.
    pub fn tls(ca_file: &Path, server_name: &str, token_file: &Path) -> Result<Self, ClientError> {
        let ca = std::fs::read(ca_file).map_err(|source| ClientError::Read {
            path: ca_file.display().to_string(),
            source,
        })?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(server_name);
        Ok(Self {
            tls: Some(tls),
            token: Some(read_token(token_file)?),
        })
    }

    /// The scheme nodes are dialled with.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The `authorization` header value, if any.
    pub(crate) fn bearer(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// An endpoint for `host:port`.
    pub(crate) fn endpoint(&self, addr: &str) -> Result<Endpoint, ClientError> {
        let uri = format!("{}://{addr}", self.scheme());
        let mut e = Endpoint::from_shared(uri.clone())
            .map_err(|source| ClientError::Uri {
                uri: uri.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            e = e
                .tls_config(tls.clone())
                .map_err(|source| ClientError::Uri { uri, source })?;
        }
        Ok(e)
    }
}

/// Reads a token file (trailing newline removed).
pub fn read_token(path: &Path) -> Result<String, ClientError> {
    let t = std::fs::read_to_string(path).map_err(|source| ClientError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(ClientError::EmptyToken(path.display().to_string()));
    }
    Ok(t)
}
