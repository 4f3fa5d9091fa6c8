//! Debug implementations that never print secrets.

use std::fmt;

use crate::v1alpha1::{Agent, Credentials, RoutingConfigView, TlsClient};

const REDACTED: &str = "<redacted>";

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.client_key_pem.is_empty() {
            ""
        } else {
            REDACTED
        };
        f.debug_struct("TlsClient")
            .field("ca_pem", &(!self.ca_pem.is_empty()))
            .field("client_cert_pem", &(!self.client_cert_pem.is_empty()))
            .field("client_key_pem", &key)
            .finish()
    }
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = if self.bearer_token.is_empty() {
            ""
        } else {
            REDACTED
        };
        f.debug_struct("Agent")
            .field("url", &self.url)
            .field("protocol", &self.protocol)
            .field("bearer_token", &token)
            .field("parameters", &self.parameters)
            .field("status_webhook", &self.status_webhook)
            .field("egress_allowed_networks", &self.egress_allowed_networks)
            .finish()
    }
}

impl fmt::Debug for RoutingConfigView {
    /// The numbers' bytes hold agents' bearer tokens: only their count shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutingConfigView")
            .field("version", &self.version)
            .field("trunks", &self.trunks)
            .field("numbers", &self.numbers.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let a = Agent {
            bearer_token: "tok-123".into(),
            ..Default::default()
        };
        let t = TlsClient {
            client_key_pem: "-----BEGIN PRIVATE KEY-----secret".into(),
            ..Default::default()
        };
        let s = format!("{c:?} {a:?} {t:?}");
        assert!(!s.contains("BEGIN PRIVATE KEY"));
        assert!(s.contains("alice"));
        assert!(!s.contains("hunter2"));
        assert!(!s.contains("tok-123"));
        let view = crate::RoutingConfig {
            numbers: vec![crate::v1alpha1::PhoneNumber {
                agent: Some(a),
                ..Default::default()
            }],
            ..Default::default()
        }
        .into_view();
        let s = format!("{view:?}");
        assert!(
            !s.contains("116, 111, 107") && !s.contains("tok-123"),
            "{s}"
        );
    }
}
