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

impl RoutingConfig {
    /// This configuration as a node reads it off the wire: each number
    /// encoded (what decoding its encoding as a `RoutingConfigView` gives).
    pub fn into_view(self) -> v1alpha1::RoutingConfigView {
        use prost::Message;
        v1alpha1::RoutingConfigView {
            version: self.version,
            trunks: self.trunks,
            numbers: self
                .numbers
                .iter()
                .map(|n| n.encode_to_vec().into())
                .collect(),
        }
    }
}

impl v1alpha1::ApplyRequest {
    /// This request as a node reads it off the wire (see
    /// [`RoutingConfig::into_view`]).
    pub fn into_view(self) -> v1alpha1::ApplyRequestView {
        use v1alpha1::{apply_request::Change, apply_request_view::Change as ViewChange};
        v1alpha1::ApplyRequestView {
            term: self.term,
            change: self.change.map(|c| match c {
                Change::Snapshot(cfg) => ViewChange::Snapshot(cfg.into_view()),
                Change::Delta(d) => ViewChange::Delta(d),
            }),
        }
    }
}

#[cfg(test)]
mod view_tests {
    use prost::Message;

    use super::v1alpha1::{
        ApplyRequest, ApplyRequestView, ConfigDelta, PhoneNumber, RoutingConfig, Trunk,
        apply_request::Change,
    };

    #[test]
    fn an_apply_request_decodes_as_its_view() {
        let snapshot = ApplyRequest {
            term: 7,
            change: Some(Change::Snapshot(RoutingConfig {
                version: 3,
                trunks: vec![Trunk {
                    id: "ns/t".into(),
                    ..Default::default()
                }],
                numbers: (0..3)
                    .map(|i| PhoneNumber {
                        id: format!("ns/n{i}"),
                        e164: format!("+1555000000{i}"),
                        trunk_id: "ns/t".into(),
                        ..Default::default()
                    })
                    .collect(),
            })),
        };
        let delta = ApplyRequest {
            term: 2,
            change: Some(Change::Delta(ConfigDelta {
                base_version: 1,
                version: 2,
                remove_numbers: vec!["ns/n0".into()],
                ..Default::default()
            })),
        };
        for req in [snapshot, delta] {
            let wire = req.encode_to_vec();
            let view = ApplyRequestView::decode(wire.as_slice()).expect("decodes");
            assert_eq!(view, req.clone().into_view());
            assert_eq!(view.encode_to_vec(), wire, "the same bytes both ways");
        }
    }
}
