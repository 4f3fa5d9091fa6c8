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
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub parameters: BTreeMap<String, String>,
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
