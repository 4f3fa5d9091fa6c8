//! Switchboard's wire contracts, generated from `proto/switchboard`.
//!
//! `v1alpha1::RoutingConfig` is what the operator sends to a media node; it
//! serialises to proto3 JSON (via pbjson) so a node can also load it from a
//! file, which local runs and tests do.

/// Version `v1alpha1` of every Switchboard message and service.
pub mod v1alpha1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("switchboard.v1alpha1");
    include!(concat!(env!("OUT_DIR"), "/switchboard.v1alpha1.serde.rs"));
}

pub mod delta;
mod redact;

pub use v1alpha1::RoutingConfig;

/// Errors reading a routing configuration from JSON.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The text is not a valid proto3-JSON `RoutingConfig`.
    #[error("invalid routing configuration JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl RoutingConfig {
    /// Parses a routing configuration from its proto3 JSON form.
    pub fn from_json(text: &str) -> Result<Self, ConfigFileError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Serialises the configuration as pretty proto3 JSON. The output holds
    /// credentials: treat it like a Secret.
    pub fn to_json_pretty(&self) -> String {
        // Serialising generated messages cannot fail: every field is a plain
        // value, and maps have string keys.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
