//! Types shared by both resources.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to another object in the same namespace by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Credentials from a `kubernetes.io/basic-auth` Secret (keys `username`
/// and `password`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The Secret holding `username` and `password`.
    pub secret_ref: SecretRef,
}

/// Protocols an agent can speak.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AgentProtocol {
    /// Twilio Media Streams over WebSocket (bidirectional).
    #[default]
    #[serde(rename = "twilio-media-streams")]
    TwilioMediaStreams,
}

/// A bearer token for the agent, from a Secret key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentAuth {
    /// The Secret holding the token.
    pub secret_ref: SecretRef,
    /// The key inside the Secret.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".into()
}

/// The voice-AI agent a call is bridged to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// WebSocket URL of the agent (ws:// or wss://).
    #[schemars(length(min = 6, max = 2048), pattern(r"^wss?://[^\s/?#]+([/?#]\S*)?$"))]
    pub url: String,
    /// The protocol spoken on the socket.
    #[serde(default)]
    pub protocol: AgentProtocol,
    /// A bearer token sent as `Authorization: Bearer` on connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AgentAuth>,
    /// Passed to the agent as `customParameters` in the start message.
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub parameters: Parameters,
    /// Call events (initiated, ringing, answered, completed) are POSTed here
    /// as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(r"^https?://\S+$"))]
    pub status_webhook: Option<String>,
}

/// Condition types written by the operator.
pub mod condition {
    /// The spec is valid and the object is in use (false on conflicts).
    pub const ACCEPTED: &str = "Accepted";
    /// Every referenced object exists and is well-formed.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// The media-node fleet runs the configuration of this generation.
    pub const PROGRAMMED: &str = "Programmed";
    /// The trunk holds a registration with its carrier.
    pub const REGISTERED: &str = "Registered";
    /// Some gateways of the trunk fail their health checks.
    pub const DEGRADED: &str = "Degraded";
}

/// Conditions as a list keyed by `type` (so server-side apply merges by type).
pub type Conditions = Vec<Condition>;

/// An agent's parameters: names to values, a map on the wire and in the
/// schema, held as a list sorted by name. A `BTreeMap` of one entry
/// allocates a node for eleven (544 bytes), and a large inventory holds
/// one set per number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parameters(Vec<(String, String)>);

impl Parameters {
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Names and values, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }
}

impl FromIterator<(String, String)> for Parameters {
    /// As a map is built: a repeated name keeps its last value.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut v: Vec<(String, String)> = iter.into_iter().collect();
        // Stable: of equal names, the last one given ends up last.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, String)> = Vec::with_capacity(v.len());
        for (k, val) in v {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = val,
                _ => out.push((k, val)),
            }
        }
        Parameters(out)
    }
}

impl Serialize for Parameters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Parameters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Parameters;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Parameters, A::Error> {
                // Bounded by the input; the schema allows 64.
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = map.next_entry::<String, String>()? {
                    v.push(entry);
                }
                Ok(v.into_iter().collect())
            }
        }
        d.deserialize_map(Visit)
    }
}

impl JsonSchema for Parameters {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        <BTreeMap<String, String>>::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        <BTreeMap<String, String>>::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <BTreeMap<String, String>>::json_schema(generator)
    }
}

#[cfg(test)]
mod parameter_tests {
    use super::*;

    #[test]
    fn parameters_read_and_write_as_a_map_sorted_by_name() {
        let p: Parameters =
            serde_json::from_value(serde_json::json!({"b": "2", "a": "1", "c": ""})).expect("map");
        assert_eq!(p.len(), 3);
        assert_eq!(
            p.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(
            (p.get("b"), p.get("c"), p.get("z")),
            (Some("2"), Some(""), None)
        );
        assert_eq!(
            serde_json::to_value(&p).expect("json"),
            serde_json::json!({"a": "1", "b": "2", "c": ""})
        );
        let as_btree: BTreeMap<String, String> =
            serde_json::from_value(serde_json::json!({"b": "2", "a": "1"})).expect("map");
        let p: Parameters = as_btree.clone().into_iter().collect();
        assert!(p.iter().eq(as_btree.iter()));
    }

    #[test]
    fn a_repeated_name_keeps_its_last_value_and_bad_values_are_refused() {
        let p: Parameters = [("a", "1"), ("b", "x"), ("a", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(p.get("a"), Some("2"));
        assert_eq!(p.len(), 2);
        let e = serde_json::from_value::<Parameters>(serde_json::json!({"a": 1})).unwrap_err();
        assert!(e.to_string().contains("expected a string"), "{e}");
        let e = serde_json::from_value::<Parameters>(serde_json::json!(["a"])).unwrap_err();
        assert!(e.to_string().contains("expected a map"), "{e}");
    }
}
