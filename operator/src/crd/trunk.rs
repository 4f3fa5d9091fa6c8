//! `SipTrunk`: a carrier account, its gateways, credentials and limits.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AgentSpec, BasicAuth, SecretRef};

/// A SIP trunk: how calls arrive from a carrier and how they are sent to it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "SipTrunk",
    plural = "siptrunks",
    shortname = "trunk",
    namespaced,
    status = "SipTrunkStatus",
    category = "switchboard",
    printcolumn(
        name = "Gateways",
        type_ = "string",
        json_path = ".spec.outbound.gateways[*].host"
    ),
    printcolumn(
        name = "Auth",
        type_ = "string",
        json_path = ".spec.outbound.auth.secretRef.name"
    ),
    printcolumn(name = "Numbers", type_ = "integer", json_path = ".status.numbers"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeCalls"),
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
pub struct SipTrunkSpec {
    /// False stops every call on the trunk, in both directions.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Calls from the carrier. Absent: the trunk takes no inbound calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<TrunkInbound>,
    /// Calls to the carrier. Absent: the trunk places no outbound calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<TrunkOutbound>,
    /// Codecs, DTMF, RTP timeout and which sources media is accepted from.
    #[serde(default)]
    pub media: TrunkMedia,
    /// Fleet-wide limits; unset means unlimited.
    #[serde(default)]
    pub limits: TrunkLimits,
    /// OPTIONS health checks towards the gateways.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Where the agent URLs and status webhooks of this trunk's numbers (and
    /// its default agent) may point besides the public Internet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_egress: Option<AgentEgress>,
    /// Whether agents and the call API may transfer this trunk's calls, how,
    /// and to which numbers. Absent: transfers are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TrunkTransfer>,
}

/// Call transfers on a trunk (toll-fraud guard: only to the listed targets).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'disabled' || size(self.allowedTargets) > 0")
    .message("transfer.mode refer or dial needs allowedTargets: a transfer may otherwise dial anywhere")
    .field_path(".allowedTargets"))]
pub struct TrunkTransfer {
    /// `refer` (blind transfer: the carrier connects the caller, RFC 3515),
    /// `dial` (the node calls the target through the trunk, with the same
    /// gateways, failover, digest, limits and pacing as any outbound call,
    /// and bridges the caller to it when it answers) or `disabled`.
    #[serde(default)]
    pub mode: TransferMode,
    /// E.164 numbers or prefixes (`+1415`, `+14155550100`) a transfer may
    /// target; anything else is refused before a request leaves the node.
    #[serde(default)]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 16), pattern(r"^\+?[0-9]{1,15}$"))
    )]
    pub allowed_targets: Vec<String>,
    /// Ask the carrier not to report the transfer's progress (RFC 4488
    /// `Refer-Sub: false`, for carriers that support `norefersub`). A carrier
    /// that agrees takes the caller at once: the transfer counts as succeeded
    /// when the REFER is accepted, and a failure to reach the target is no
    /// longer seen. Default: progress is reported by NOTIFY.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_progress: bool,
    /// `dial` transfers: the caller ID the target sees, E.164. Default: the
    /// original caller's number as the carrier sent it (many carriers accept
    /// only numbers they own: set one of yours here then).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 16), pattern(r"^(\+?[0-9]{1,15})?$"))]
    pub caller_id: String,
}

/// How a trunk's calls are transferred.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransferMode {
    /// Transfers are refused.
    #[default]
    Disabled,
    /// SIP REFER to the carrier (RFC 3515).
    Refer,
    /// A new call through the trunk, bridged to the caller in the node.
    Dial,
}

/// Private networks agents may live in. Media nodes refuse agent and webhook
/// URLs that resolve to loopback, link-local, private or cluster-internal
/// addresses or to the node itself; this opens chosen private ranges for
/// agents inside the cluster or a VPC. Loopback, link-local (metadata
/// endpoints) and the node's own addresses can never be opened here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentEgress {
    /// CIDRs inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16,
    /// 100.64.0.0/10 or fc00::/7 (e.g. the cluster's Service range,
    /// 10.96.0.0/12) that agent URLs and webhooks may resolve into.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(s, isCIDR(s) || isIP(s))")
        .message("allowedNetworks entries must be IP addresses or CIDRs, e.g. 10.96.0.0/12"))]
    pub allowed_networks: Vec<String>,
}

/// Inbound calls from the carrier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || size(self.allowedSources) > 0 || has(self.auth)")
    .message("inbound.enabled needs allowedSources or auth")
    .field_path(".allowedSources"))]
#[x_kube(validation = Rule::new("has(self.auth) || self.allowedSources.all(s, !isCIDR(s) || cidr(s).prefixLength() >= (cidr(s).ip().family() == 4 ? 8 : 32))")
    .message("allowedSources wider than /8 (IPv4) or /32 (IPv6) need inbound.auth: anyone in such a range could place calls")
    .field_path(".allowedSources"))]
pub struct TrunkInbound {
    /// False refuses every inbound call on the trunk with 403.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// CIDRs (or single addresses) the carrier sends from. An INVITE from
    /// anywhere else gets 403.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(s, isCIDR(s) || isIP(s))")
        .message("allowedSources entries must be IP addresses or CIDRs, e.g. 203.0.113.0/24"))]
    pub allowed_sources: Vec<String>,
    /// Challenge inbound INVITEs with digest authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<InboundAuth>,
    /// The agent for numbers that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_agent: Option<AgentSpec>,
    /// INVITE headers passed to the agent in `customParameters` as `sip_<Header>`: names,
    /// or prefixes ending in `*`. Default: `P-Asserted-Identity`, `Diversion`, `X-*`; `[]`
    /// passes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 64), pattern(r"^[A-Za-z0-9!%'+._`~-]+\*?$"))
    )]
    pub pass_headers: Option<Vec<String>>,
}

/// Digest authentication of inbound requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundAuth {
    /// A `kubernetes.io/basic-auth` Secret with the expected credentials.
    pub secret_ref: SecretRef,
    /// Digest realm; defaults to the trunk name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub realm: Option<String>,
}

/// Outbound calls to the carrier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || size(self.gateways) > 0")
    .message("outbound.enabled needs at least one gateway")
    .field_path(".gateways"))]
#[x_kube(validation = Rule::new("!has(self.register) || !self.register.enabled || has(self.register.registrar) || size(self.gateways) > 0")
    .message("register needs a registrar or at least one gateway")
    .field_path(".register"))]
pub struct TrunkOutbound {
    /// False refuses outbound calls on the trunk.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The carrier's SIP gateways, tried by priority then weight.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub gateways: Vec<Gateway>,
    /// Credentials used when the carrier challenges with 401/407.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<BasicAuth>,
    /// Keep a registration with the carrier so inbound calls reach the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<Register>,
    /// Send `+` before the E.164 digits in the Request-URI.
    #[serde(default)]
    pub leading_plus: bool,
    /// Prepended to the dialled digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), pattern(r"^[0-9A-Za-z#*+._-]*$"))]
    pub tech_prefix: Option<String>,
    /// Host part of the From URI; defaults to the gateway host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
    )]
    pub from_domain: Option<String>,
    /// Seconds to wait for an answer before giving up with CANCEL.
    #[serde(default = "default_ringing_timeout")]
    #[schemars(range(min = 1, max = 600))]
    pub ringing_timeout_seconds: u32,
    /// Outcomes that move an attempt on to the next gateway: `timeout`, an
    /// exact code such as `408`, or a class such as `5xx`. Other final
    /// answers (486, 600, 603, ...) end the attempt.
    #[serde(default = "default_failover_on")]
    #[schemars(
        length(max = 32),
        inner(pattern(r"^(timeout|[3-6][0-9][0-9]|[3-6]xx)$"))
    )]
    pub failover_on: Vec<String>,
    /// How the node connects to `transport: tls` gateways (the gateway's certificate is
    /// always verified against its `host`; trust is the OS store plus `caSecretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<OutboundTls>,
}

/// The client side of SIP over TLS to the trunk's gateways.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTls {
    /// A Secret whose `ca.crt` holds PEM CA certificates trusted for the gateways, in
    /// addition to the OS trust store (a carrier's private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) the node presents to gateways
    /// that authenticate it by certificate (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<SecretRef>,
}

impl Gateway {
    /// The port in use: the one set, else 5061 for TLS and 5060 otherwise.
    pub fn effective_port(&self) -> u32 {
        self.port.unwrap_or(if self.transport == Transport::Tls {
            5061
        } else {
            5060
        })
    }
}

/// One SIP gateway of the carrier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// Host name or IP address.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?)$")
    )]
    pub host: String,
    /// SIP port; 5060, or 5061 for `tls`, when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// Transport protocol.
    #[serde(default)]
    pub transport: Transport,
    /// Lower is tried first.
    #[serde(default)]
    #[schemars(range(min = 0, max = 65535))]
    pub priority: u32,
    /// Share of calls among gateways of equal priority.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 65535))]
    pub weight: u32,
}

/// SIP transport.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP (RFC 3261 section 18).
    #[default]
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

/// Registration with the carrier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Register {
    /// Keep the registration.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Requested registration lifetime.
    #[serde(default = "default_register_expires")]
    #[schemars(range(min = 60, max = 86400))]
    pub expires_seconds: u32,
    /// Registrar `host[:port]`; defaults to the first gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 260))]
    pub registrar: Option<String>,
    /// User part of the Contact and To; defaults to the auth username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub contact_user: Option<String>,
}

/// Audio codecs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Codec {
    /// G.711 μ-law.
    #[serde(rename = "PCMU")]
    Pcmu,
    /// G.711 A-law.
    #[serde(rename = "PCMA")]
    Pcma,
}

/// How DTMF is exchanged with the carrier.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DtmfMode {
    /// RFC 4733 telephone-events in RTP.
    Rfc4733,
    /// SIP INFO.
    Info,
    /// Either.
    #[default]
    Both,
}

/// Which sources a call's RTP is accepted from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MediaSource {
    /// The address the peer signalled in SDP, or a source learned in the short window after
    /// the answer or a re-INVITE after several packets in sequence (NAT'd peers).
    #[default]
    Any,
    /// As `any`, and only from the trunk's signalling network: `inbound.allowedSources` plus
    /// the address the call's SIP came from or went to. SDP addresses outside it are refused.
    SignallingNetwork,
}

/// Whether a call's media is encrypted (SRTP with SDES keys).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MediaEncryption {
    /// Plain RTP only; an offer with only SRTP gets 488.
    #[default]
    Disabled,
    /// Plain and SRTP offers are both accepted, SRTP used when offered.
    Optional,
    /// SRTP only; an offer without usable keys gets 488.
    Required,
}

/// Media settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrunkMedia {
    /// Codecs in order of preference.
    #[serde(default = "default_codecs")]
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d == c))")
        .message("codecs must not repeat"))]
    pub codecs: Vec<Codec>,
    /// DTMF mode.
    #[serde(default)]
    pub dtmf: DtmfMode,
    /// No RTP for this long hangs the call up.
    #[serde(default = "default_rtp_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub rtp_timeout_seconds: u32,
    /// Which sources RTP is accepted from (`any` or `signalling-network`).
    #[serde(default)]
    pub media_source: MediaSource,
    /// SRTP (`disabled`, `optional` or `required`).
    #[serde(default)]
    pub encryption: MediaEncryption,
    /// Lets SRTP keys (SDES `a=crypto`) travel in SIP over UDP or TCP, where anyone who reads
    /// the signalling can decrypt the media. Without it, SRTP needs SIP over TLS.
    #[serde(default)]
    pub allow_sdes_without_tls: bool,
}

impl Default for TrunkMedia {
    fn default() -> Self {
        Self {
            codecs: default_codecs(),
            dtmf: DtmfMode::default(),
            rtp_timeout_seconds: default_rtp_timeout(),
            media_source: MediaSource::default(),
            encryption: MediaEncryption::default(),
            allow_sdes_without_tls: false,
        }
    }
}

/// Fleet-wide limits of the trunk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrunkLimits {
    /// Concurrent calls, inbound plus outbound, across the whole fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_concurrent_calls: Option<u32>,
    /// Outbound calls started per second across the whole fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_calls_per_second: Option<u32>,
    /// A call is hung up after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub max_call_duration_seconds: Option<u32>,
}

/// OPTIONS health checks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Seconds between OPTIONS pings to each gateway; 0 disables them.
    #[serde(default = "default_options_interval")]
    #[schemars(range(min = 0, max = 3600))]
    pub options_interval_seconds: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            options_interval_seconds: default_options_interval(),
        }
    }
}

/// Observed state of a trunk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipTrunkStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Accepted, ResolvedRefs, Programmed, Registered, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Health of each gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayStatus>,
    /// Media nodes running this generation, out of all nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCount>,
    /// Calls in progress on the trunk across the fleet.
    #[serde(default)]
    pub active_calls: u32,
    /// PhoneNumbers accepted on this trunk.
    #[serde(default)]
    pub numbers: u32,
    /// SIP addresses carriers should send to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<String>,
}

/// Health of one gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// The gateway host.
    pub host: String,
    /// Its transport (`udp`, `tcp`, `tls`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub transport: String,
    /// Whether the last health check succeeded.
    pub healthy: bool,
    /// SIP status code of the last response, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_response_code: Option<u32>,
    /// Round-trip time of the last health check in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_trip_ms: Option<u32>,
    /// Why the last health check failed: no answer, a 5xx, or the TLS handshake's error
    /// (a certificate not valid for the host, expired, or from an untrusted CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Programmed nodes out of all nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCount {
    /// Nodes that acknowledged the current configuration.
    pub programmed: u32,
    /// Nodes the operator knows of.
    pub total: u32,
}

fn yes() -> bool {
    true
}
fn default_ringing_timeout() -> u32 {
    60
}
fn default_failover_on() -> Vec<String> {
    ["timeout", "408", "478", "5xx"].map(String::from).to_vec()
}
fn default_weight() -> u32 {
    1
}
fn default_register_expires() -> u32 {
    3600
}
fn default_codecs() -> Vec<Codec> {
    vec![Codec::Pcmu, Codec::Pcma]
}
fn default_rtp_timeout() -> u32 {
    30
}
fn default_options_interval() -> u32 {
    60
}
