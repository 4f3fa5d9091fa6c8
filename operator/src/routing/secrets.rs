//! Secrets as the resolver needs them: decoded key/value bytes, and the
//! typed credentials extracted from them. Error messages name Secrets and
//! keys, never values.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

/// The Secret type that holds `username` and `password`.
pub const BASIC_AUTH_TYPE: &str = "kubernetes.io/basic-auth";
/// The type of TLS Secrets.
pub const TLS_TYPE: &str = "kubernetes.io/tls";

/// A Secret's decoded contents.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData {
    /// The Secret's `type`, if set.
    pub type_: Option<String>,
    /// Keys and decoded values (`data` merged with `stringData`).
    pub data: BTreeMap<String, Vec<u8>>,
}

// Hand-written so a Secret is never printed by accident.
impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretData")
            .field("type_", &self.type_)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl From<&Secret> for SecretData {
    fn from(s: &Secret) -> Self {
        let mut data: BTreeMap<String, Vec<u8>> = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        // stringData wins over data, as the API server merges them.
        for (k, v) in s.string_data.iter().flatten() {
            data.insert(k.clone(), v.clone().into_bytes());
        }
        Self {
            type_: s.type_.clone(),
            data,
        }
    }
}

/// Why a Secret could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The key is absent or empty.
    #[error("Secret {secret} has no key {key:?}")]
    MissingKey {
        /// Secret name.
        secret: String,
        /// The missing key.
        key: String,
    },
    /// The value is not UTF-8 text.
    #[error("Secret {secret} key {key:?} is not UTF-8 text")]
    NotText {
        /// Secret name.
        secret: String,
        /// The key.
        key: String,
    },
    /// The Secret has a type other than the one required.
    #[error("Secret {secret} has type {actual:?}, expected {expected:?}")]
    WrongType {
        /// Secret name.
        secret: String,
        /// The type found.
        actual: String,
        /// The type required.
        expected: &'static str,
    },
}

impl SecretData {
    /// A non-empty UTF-8 value.
    pub fn text(&self, secret: &str, key: &str) -> Result<String, SecretError> {
        let missing = || SecretError::MissingKey {
            secret: secret.into(),
            key: key.into(),
        };
        let raw = self.data.get(key).ok_or_else(missing)?;
        let text = std::str::from_utf8(raw).map_err(|_| SecretError::NotText {
            secret: secret.into(),
            key: key.into(),
        })?;
        // Trailing newlines come from `kubectl create secret --from-file`.
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            return Err(missing());
        }
        Ok(text.to_owned())
    }

    /// `tls.crt` and `tls.key` of a TLS Secret. Opaque Secrets carrying the same keys are
    /// accepted; any other type is refused.
    pub fn tls_pair(&self, secret: &str) -> Result<(String, String), SecretError> {
        match self.type_.as_deref() {
            None | Some("") | Some("Opaque") | Some(TLS_TYPE) => {}
            Some(other) => {
                return Err(SecretError::WrongType {
                    secret: secret.into(),
                    actual: other.into(),
                    expected: TLS_TYPE,
                });
            }
        }
        Ok((self.text(secret, "tls.crt")?, self.text(secret, "tls.key")?))
    }

    /// `username` and `password` of a basic-auth Secret. Opaque Secrets
    /// carrying the same keys are accepted; any other type is refused.
    pub fn basic_auth(&self, secret: &str) -> Result<(String, String), SecretError> {
        match self.type_.as_deref() {
            None | Some("") | Some("Opaque") | Some(BASIC_AUTH_TYPE) => {}
            Some(other) => {
                return Err(SecretError::WrongType {
                    secret: secret.into(),
                    actual: other.into(),
                    expected: BASIC_AUTH_TYPE,
                });
            }
        }
        Ok((
            self.text(secret, "username")?,
            self.text(secret, "password")?,
        ))
    }
}
