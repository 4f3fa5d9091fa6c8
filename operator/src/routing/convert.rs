//! Turns valid specs into routing-configuration messages, resolving Secrets
//! and trunk references on the way.

use switchboard_proto::v1alpha1 as pb;

use super::validate::{Failover, parse_failover};
use super::{NumberInput, ObjectKey, SecretData, SecretError, TrunkInput, TrunkVerdict, reason};
use crate::crd::{
    AgentSpec, Codec, DtmfMode, MediaEncryption, MediaSource, SipTrunkSpec, TransferMode, Transport,
};

/// What a conversion may look up: the whole-world resolver and the
/// incremental index answer the same questions from their own tables.
pub(super) trait World {
    /// A Secret's decoded data.
    fn secret(&self, key: &ObjectKey) -> Option<&SecretData>;
    /// A trunk's spec.
    fn trunk_spec(&self, key: &ObjectKey) -> Option<&SipTrunkSpec>;
    /// A trunk's verdict (already judged).
    fn trunk_verdict(&self, key: &ObjectKey) -> Option<&TrunkVerdict>;
}

/// A reference that did not resolve. Messages name objects, never values.
#[derive(Debug, thiserror::Error)]
pub(super) enum RefError {
    #[error("{field}: Secret {name} not found")]
    SecretNotFound { field: &'static str, name: String },
    #[error("{field}: {source}")]
    InvalidSecret {
        field: &'static str,
        source: SecretError,
    },
    #[error("spec.trunkRef: SipTrunk {0} not found")]
    TrunkNotFound(String),
    #[error("spec.trunkRef: SipTrunk {name} is not usable: {why}")]
    TrunkNotReady { name: String, why: String },
    #[error("spec.fallbackTrunks: SipTrunk {0} not found")]
    FallbackNotFound(String),
    #[error("spec.fallbackTrunks: SipTrunk {name} is not usable: {why}")]
    FallbackNotReady { name: String, why: String },
    #[error("spec.agent: no agent: set spec.agent or the trunk's spec.inbound.defaultAgent")]
    NoAgent,
    #[error(
        "{field}: the agent has a bearer token (auth.secretRef) but a plain ws:// URL to {host}, which is not loopback; media nodes never send a token in clear text: use wss://"
    )]
    InsecureAgentUrl { field: &'static str, host: String },
}

impl RefError {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            RefError::SecretNotFound { .. } => reason::SECRET_NOT_FOUND,
            RefError::InvalidSecret { .. } => reason::INVALID_SECRET,
            RefError::TrunkNotFound(_) | RefError::FallbackNotFound(_) => reason::TRUNK_NOT_FOUND,
            RefError::TrunkNotReady { .. } | RefError::FallbackNotReady { .. } => {
                reason::TRUNK_NOT_READY
            }
            RefError::NoAgent => reason::NO_AGENT,
            RefError::InsecureAgentUrl { .. } => reason::INSECURE_AGENT_URL,
        }
    }
}

/// Names of the Secrets a trunk references.
pub(super) fn trunk_secret_names(spec: &SipTrunkSpec) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(i) = &spec.inbound {
        if let Some(a) = &i.auth {
            out.push(a.secret_ref.name.clone());
        }
        if let Some(a) = i.default_agent.as_ref().and_then(|a| a.auth.as_ref()) {
            out.push(a.secret_ref.name.clone());
        }
    }
    if let Some(o) = &spec.outbound {
        if let Some(a) = &o.auth {
            out.push(a.secret_ref.name.clone());
        }
        if let Some(t) = &o.tls {
            out.extend(t.ca_secret_ref.iter().map(|r| r.name.clone()));
            out.extend(
                t.client_certificate_secret_ref
                    .iter()
                    .map(|r| r.name.clone()),
            );
        }
    }
    out
}

/// The trunk's TLS client settings with its Secrets read.
fn outbound_tls(
    t: &crate::crd::OutboundTls,
    secrets: &dyn World,
    namespace: &str,
) -> Result<pb::TlsClient, RefError> {
    let mut out = pb::TlsClient::default();
    if let Some(r) = &t.ca_secret_ref {
        let field = "spec.outbound.tls.caSecretRef";
        out.ca_pem = lookup(secrets, namespace, &r.name, field)?
            .text(&r.name, "ca.crt")
            .map_err(|source| RefError::InvalidSecret { field, source })?;
    }
    if let Some(r) = &t.client_certificate_secret_ref {
        let field = "spec.outbound.tls.clientCertificateSecretRef";
        let (cert, key) = lookup(secrets, namespace, &r.name, field)?
            .tls_pair(&r.name)
            .map_err(|source| RefError::InvalidSecret { field, source })?;
        out.client_cert_pem = cert;
        out.client_key_pem = key;
    }
    Ok(out)
}

fn lookup<'a>(
    secrets: &'a dyn World,
    namespace: &str,
    name: &str,
    field: &'static str,
) -> Result<&'a SecretData, RefError> {
    secrets
        .secret(&ObjectKey::new(namespace, name))
        .ok_or_else(|| RefError::SecretNotFound {
            field,
            name: name.into(),
        })
}

fn credentials(
    secrets: &dyn World,
    namespace: &str,
    name: &str,
    field: &'static str,
) -> Result<pb::Credentials, RefError> {
    let (username, password) = lookup(secrets, namespace, name, field)?
        .basic_auth(name)
        .map_err(|source| RefError::InvalidSecret { field, source })?;
    Ok(pb::Credentials { username, password })
}

/// The host of a `ws://` URL when an agent with a token would send it in clear text to a host
/// other than loopback (the media node refuses that; loopback stays allowed for local agents).
fn insecure_token_host(a: &AgentSpec) -> Option<String> {
    a.auth.as_ref()?;
    let rest = a.url.strip_prefix("ws://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    (!loopback).then(|| host.to_owned())
}

fn agent(
    a: &AgentSpec,
    secrets: &dyn World,
    namespace: &str,
    field: &'static str,
    egress_allowed_networks: Vec<String>,
) -> Result<pb::Agent, RefError> {
    let bearer_token = match &a.auth {
        None => String::new(),
        Some(auth) => lookup(secrets, namespace, &auth.secret_ref.name, field)?
            .text(&auth.secret_ref.name, &auth.key)
            .map_err(|source| RefError::InvalidSecret { field, source })?,
    };
    Ok(pb::Agent {
        url: a.url.clone(),
        protocol: pb::AgentProtocol::TwilioMediaStreams as i32,
        bearer_token,
        parameters: a
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        status_webhook: a.status_webhook.clone().unwrap_or_default(),
        egress_allowed_networks,
    })
}

/// A trunk's `agentEgress.allowedNetworks`, carried on each of its agents.
fn egress_networks(spec: &SipTrunkSpec) -> Vec<String> {
    spec.agent_egress
        .as_ref()
        .map(|e| e.allowed_networks.clone())
        .unwrap_or_default()
}

/// Builds a trunk's configuration; the spec has been validated.
pub(super) fn trunk(t: &TrunkInput, secrets: &dyn World) -> Result<pb::Trunk, RefError> {
    let ns = &*t.key.namespace;
    let spec = &t.spec;
    let inbound = match &spec.inbound {
        None => pb::Inbound::default(),
        Some(i) => pb::Inbound {
            enabled: i.enabled,
            allowed_sources: i.allowed_sources.clone(),
            auth: match &i.auth {
                None => None,
                Some(a) => Some(pb::InboundAuth {
                    realm: a.realm.clone().unwrap_or_else(|| t.key.name.to_string()),
                    credentials: Some(credentials(
                        secrets,
                        ns,
                        &a.secret_ref.name,
                        "spec.inbound.auth.secretRef",
                    )?),
                }),
            },
            default_agent: match &i.default_agent {
                None => None,
                Some(a) => Some(agent(
                    a,
                    secrets,
                    ns,
                    "spec.inbound.defaultAgent.auth.secretRef",
                    egress_networks(spec),
                )?),
            },
            pass_headers: i.pass_headers.as_ref().map(|names| pb::HeaderPassing {
                names: names.clone(),
            }),
        },
    };
    let outbound = match &spec.outbound {
        None => pb::Outbound::default(),
        Some(o) => {
            let mut failover = pb::FailoverPolicy::default();
            for f in o.failover_on.iter().filter_map(|f| parse_failover(f)) {
                match f {
                    Failover::Timeout => failover.on_timeout = true,
                    Failover::Code(c) => failover.status_codes.push(c),
                    Failover::Class(c) => failover.status_classes.push(c),
                }
            }
            pb::Outbound {
                tls: match &o.tls {
                    Some(tls) => Some(outbound_tls(tls, secrets, ns)?),
                    None => None,
                },
                enabled: o.enabled,
                gateways: o
                    .gateways
                    .iter()
                    .map(|g| pb::Gateway {
                        host: g.host.clone(),
                        port: g.effective_port(),
                        transport: match g.transport {
                            Transport::Udp => pb::Transport::Udp,
                            Transport::Tcp => pb::Transport::Tcp,
                            Transport::Tls => pb::Transport::Tls,
                        } as i32,
                        priority: g.priority,
                        weight: g.weight,
                    })
                    .collect(),
                auth: match &o.auth {
                    None => None,
                    Some(a) => Some(credentials(
                        secrets,
                        ns,
                        &a.secret_ref.name,
                        "spec.outbound.auth.secretRef",
                    )?),
                },
                register: o.register.as_ref().map(|r| pb::Register {
                    enabled: r.enabled,
                    expires_seconds: r.expires_seconds,
                    registrar: r.registrar.clone().unwrap_or_default(),
                    contact_user: r.contact_user.clone().unwrap_or_default(),
                }),
                leading_plus: o.leading_plus,
                tech_prefix: o.tech_prefix.clone().unwrap_or_default(),
                from_domain: o.from_domain.clone().unwrap_or_default(),
                ringing_timeout_seconds: o.ringing_timeout_seconds,
                failover: Some(failover),
            }
        }
    };
    let limits = pb::Limits {
        max_concurrent_calls: spec.limits.max_concurrent_calls.unwrap_or(0),
        max_calls_per_second: spec.limits.max_calls_per_second.unwrap_or(0),
        max_call_duration_seconds: spec.limits.max_call_duration_seconds.unwrap_or(0),
    };
    Ok(pb::Trunk {
        id: t.key.id(),
        enabled: spec.enabled,
        inbound: Some(inbound),
        outbound: Some(outbound),
        media: Some(pb::Media {
            codecs: spec
                .media
                .codecs
                .iter()
                .map(|c| match c {
                    Codec::Pcmu => pb::Codec::Pcmu as i32,
                    Codec::Pcma => pb::Codec::Pcma as i32,
                })
                .collect(),
            dtmf: match spec.media.dtmf {
                DtmfMode::Rfc4733 => pb::DtmfMode::Rfc4733,
                DtmfMode::Info => pb::DtmfMode::Info,
                DtmfMode::Both => pb::DtmfMode::Both,
            } as i32,
            rtp_timeout_seconds: spec.media.rtp_timeout_seconds,
            media_source: match spec.media.media_source {
                MediaSource::Any => pb::MediaSource::Any,
                MediaSource::SignallingNetwork => pb::MediaSource::SignallingNetwork,
            } as i32,
            encryption: match spec.media.encryption {
                MediaEncryption::Disabled => pb::MediaEncryption::Disabled,
                MediaEncryption::Optional => pb::MediaEncryption::Optional,
                MediaEncryption::Required => pb::MediaEncryption::Required,
            } as i32,
            allow_sdes_without_tls: spec.media.allow_sdes_without_tls,
        }),
        // The fleet programmer fills in the per-node share; until then a
        // node may use the whole budget.
        share: Some(pb::NodeShare {
            max_concurrent_calls: limits.max_concurrent_calls,
            max_calls_per_second: f64::from(limits.max_calls_per_second),
        }),
        limits: Some(limits),
        options_interval_seconds: spec.health_check.options_interval_seconds,
        register_here: false,
        transfer: spec.transfer.as_ref().map(|t| pb::Transfer {
            mode: match t.mode {
                TransferMode::Disabled => pb::TransferMode::Disabled,
                TransferMode::Refer => pb::TransferMode::Refer,
                TransferMode::Dial => pb::TransferMode::Dial,
            } as i32,
            allowed_targets: t.allowed_targets.clone(),
            no_progress: t.no_progress,
            caller_id: t.caller_id.clone(),
        }),
    })
}

/// Builds a number's configuration; the spec has been validated and the
/// number won any conflict.
pub(super) fn number(n: &NumberInput, world: &dyn World) -> Result<pb::PhoneNumber, RefError> {
    let ns = &*n.key.namespace;
    let spec = &n.spec;
    let usable = |name: &str| -> Result<(), Option<String>> {
        let key = ObjectKey::new(ns, name);
        match world.trunk_verdict(&key) {
            None => Err(None),
            Some(v) if v.usable() => Ok(()),
            Some(v) => {
                let why = if v.accepted.ok {
                    &v.resolved_refs
                } else {
                    &v.accepted
                };
                Err(Some(format!("{}: {}", why.reason, why.message)))
            }
        }
    };
    let trunk_key = ObjectKey::new(ns, spec.trunk_ref.name.clone());
    usable(&spec.trunk_ref.name).map_err(|why| match why {
        None => RefError::TrunkNotFound(spec.trunk_ref.name.clone()),
        Some(why) => RefError::TrunkNotReady {
            name: spec.trunk_ref.name.clone(),
            why,
        },
    })?;
    for f in &spec.fallback_trunks {
        usable(f).map_err(|why| match why {
            None => RefError::FallbackNotFound(f.clone()),
            Some(why) => RefError::FallbackNotReady {
                name: f.clone(),
                why,
            },
        })?;
    }
    let agent_cfg = match &spec.agent {
        Some(a) => {
            if let Some(host) = insecure_token_host(a) {
                return Err(RefError::InsecureAgentUrl {
                    field: "spec.agent.url",
                    host,
                });
            }
            Some(agent(
                a,
                world,
                ns,
                "spec.agent.auth.secretRef",
                world
                    .trunk_spec(&trunk_key)
                    .map(egress_networks)
                    .unwrap_or_default(),
            )?)
        }
        None => {
            let trunk_default = world
                .trunk_spec(&trunk_key)
                .and_then(|t| t.inbound.as_ref())
                .and_then(|i| i.default_agent.as_ref());
            if spec.inbound && trunk_default.is_none() {
                return Err(RefError::NoAgent);
            }
            // Reported on the number that would use it; the trunk itself stays usable.
            if let Some(host) = trunk_default.and_then(insecure_token_host) {
                return Err(RefError::InsecureAgentUrl {
                    field: "the trunk's spec.inbound.defaultAgent.url",
                    host,
                });
            }
            // The node falls back to the trunk's default agent.
            None
        }
    };
    Ok(pb::PhoneNumber {
        id: n.key.id(),
        e164: spec.number.clone(),
        trunk_id: trunk_key.id(),
        fallback_trunk_ids: spec
            .fallback_trunks
            .iter()
            .map(|f| ObjectKey::new(ns, f.clone()).id())
            .collect(),
        destination_key: spec.destination_key.clone().unwrap_or_default(),
        agent: agent_cfg,
        inbound: spec.inbound,
        outbound: spec.outbound,
        max_call_duration_seconds: spec.max_call_duration_seconds.unwrap_or(0),
    })
}
