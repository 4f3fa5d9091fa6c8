//! `PhoneNumber`: a number on a trunk and the agent that answers it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{AgentSpec, LocalRef};

/// A phone number reached through a SipTrunk and answered by an agent.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "PhoneNumber",
    plural = "phonenumbers",
    shortname = "pn",
    namespaced,
    status = "PhoneNumberStatus",
    category = "switchboard",
    printcolumn(name = "Number", type_ = "string", json_path = ".spec.number"),
    printcolumn(name = "Trunk", type_ = "string", json_path = ".spec.trunkRef.name"),
    printcolumn(
        name = "Agent",
        type_ = "string",
        json_path = ".spec.agent.url",
        priority = 1
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.fallbackTrunks.exists(t, t == self.trunkRef.name)")
    .message("fallbackTrunks must not repeat trunkRef")
    .field_path(".fallbackTrunks"))]
pub struct PhoneNumberSpec {
    /// The number in E.164 form, e.g. +14155550100. Immutable.
    #[schemars(length(min = 8, max = 16), pattern(r"^\+[1-9][0-9]{6,14}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("number is immutable"))]
    pub number: String,
    /// The SipTrunk (same namespace) the number belongs to.
    pub trunk_ref: LocalRef,
    /// SipTrunks (same namespace) of other carriers, in order, tried for
    /// outbound calls when every gateway of the primary trunk failed. Inbound
    /// calls to the number are accepted from their carriers too.
    #[serde(default)]
    #[schemars(length(max = 8), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u == t))")
        .message("fallbackTrunks must not repeat"))]
    pub fallback_trunks: Vec<String>,
    /// The called number exactly as the carrier writes it in the
    /// Request-URI, when that is not the E.164 digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(r"^[0-9A-Za-z#*+._-]+$"))]
    pub destination_key: Option<String>,
    /// The agent that answers; defaults to the trunk's inbound.defaultAgent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
    /// Answer calls to this number.
    #[serde(default = "yes")]
    pub inbound: bool,
    /// Allow this number as caller ID for outbound calls.
    #[serde(default = "yes")]
    pub outbound: bool,
    /// Overrides the trunk's maxCallDurationSeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub max_call_duration_seconds: Option<u32>,
}

/// Observed state of a phone number.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhoneNumberStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Accepted, ResolvedRefs, Programmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

fn yes() -> bool {
    true
}
