//! Builds the routing configuration from the resources: a pure function of
//! trunks, numbers and the Secrets they reference, so it is unit-tested on its
//! own and shared by the Kubernetes and the file sources.
//!
//! Besides the configuration it returns a verdict per object (the conditions
//! the operator writes into its status).

mod conflicts;
mod convert;
pub mod index;
mod secrets;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use switchboard_proto::v1alpha1 as pb;

use crate::crd::{PhoneNumber, PhoneNumberSpec, SipTrunk, SipTrunkSpec};

pub use secrets::{SecretData, SecretError};

/// Identifies a namespaced object: `(namespace, name)`. The parts are
/// shared strings: the index holds each key in several maps (claims, trunk
/// users, published verdicts), and a clone is a reference count, not two
/// allocations.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace of the object.
    pub namespace: Arc<str>,
    /// Name of the object.
    pub name: Arc<str>,
}

impl ObjectKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses the `namespace/name` id form.
    pub fn from_id(id: &str) -> Option<Self> {
        let (ns, name) = id.split_once('/')?;
        Some(Self::new(ns, name))
    }

    /// The `namespace/name` form used as an id in the routing configuration.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One trunk as the resolver sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct TrunkInput {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `metadata.generation` (0 when unknown, e.g. from files).
    pub generation: i64,
    /// The spec.
    pub spec: SipTrunkSpec,
}

/// One phone number as the resolver sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NumberInput {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `metadata.generation`.
    pub generation: i64,
    /// `metadata.creationTimestamp`: the older claim on a number wins.
    pub created: Option<Timestamp>,
    /// The spec.
    pub spec: PhoneNumberSpec,
}

/// Everything the routing configuration is built from.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Trunks by key.
    pub trunks: BTreeMap<ObjectKey, TrunkInput>,
    /// Numbers by key.
    pub numbers: BTreeMap<ObjectKey, NumberInput>,
    /// Secrets by key, already decoded.
    pub secrets: BTreeMap<ObjectKey, SecretData>,
}

impl TrunkInput {
    /// The resolver's input for a SipTrunk object.
    pub fn from_object(t: &SipTrunk) -> Self {
        TrunkInput {
            key: ObjectKey::new(
                t.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                t.metadata.name.clone().unwrap_or_default(),
            ),
            generation: t.metadata.generation.unwrap_or(0),
            spec: t.spec.clone(),
        }
    }
}

impl NumberInput {
    /// The resolver's input for a PhoneNumber object.
    pub fn from_object(n: &PhoneNumber) -> Self {
        NumberInput {
            key: ObjectKey::new(
                n.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                n.metadata.name.clone().unwrap_or_default(),
            ),
            generation: n.metadata.generation.unwrap_or(0),
            created: n.metadata.creation_timestamp.as_ref().map(|t| t.0),
            spec: n.spec.clone(),
        }
    }

    /// [`from_object`](Self::from_object), moving the spec.
    pub fn from_owned(n: PhoneNumber) -> Self {
        let m = n.metadata;
        NumberInput {
            key: ObjectKey::new(
                m.namespace.unwrap_or_else(|| "default".into()),
                m.name.unwrap_or_default(),
            ),
            generation: m.generation.unwrap_or(0),
            created: m.creation_timestamp.map(|t| t.0),
            spec: n.spec,
        }
    }
}

impl Inputs {
    /// Adds a trunk object.
    pub fn add_trunk(&mut self, t: &SipTrunk) {
        let t = TrunkInput::from_object(t);
        self.trunks.insert(t.key.clone(), t);
    }

    /// Adds a phone-number object.
    pub fn add_number(&mut self, n: &PhoneNumber) {
        let n = NumberInput::from_object(n);
        self.numbers.insert(n.key.clone(), n);
    }

    /// Adds a phone-number object it owns (a file's), without copying its
    /// spec.
    pub fn add_owned_number(&mut self, n: PhoneNumber) {
        let n = NumberInput::from_owned(n);
        self.numbers.insert(n.key.clone(), n);
    }

    /// Every Secret the resources reference, for watches and tests.
    pub fn referenced_secrets(&self) -> BTreeSet<ObjectKey> {
        let mut out = BTreeSet::new();
        for t in self.trunks.values() {
            for name in convert::trunk_secret_names(&t.spec) {
                out.insert(ObjectKey::new(t.key.namespace.clone(), name));
            }
        }
        for n in self.numbers.values() {
            if let Some(a) = n.spec.agent.as_ref().and_then(|a| a.auth.as_ref()) {
                out.insert(ObjectKey::new(
                    n.key.namespace.clone(),
                    a.secret_ref.name.clone(),
                ));
            }
        }
        out
    }
}

/// The outcome of one condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// True or False.
    pub ok: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What a human needs to know; never holds a credential.
    pub message: String,
}

impl Verdict {
    fn ok(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason,
            message: message.into(),
        }
    }
    fn fail(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// Reasons used in conditions.
pub mod reason {
    /// The spec is valid.
    pub const ACCEPTED: &str = "Accepted";
    /// The spec breaks a rule the schema could not check (or, from files, any rule).
    pub const INVALID: &str = "Invalid";
    /// Another PhoneNumber claims the same number and is older.
    pub const CONFLICT: &str = "Conflict";
    /// Every reference resolved.
    pub const RESOLVED: &str = "ResolvedRefs";
    /// A referenced Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A referenced Secret lacks a key or has the wrong type.
    pub const INVALID_SECRET: &str = "InvalidSecret";
    /// The referenced SipTrunk does not exist.
    pub const TRUNK_NOT_FOUND: &str = "TrunkNotFound";
    /// The referenced SipTrunk exists but is not usable.
    pub const TRUNK_NOT_READY: &str = "TrunkNotReady";
    /// Neither the number nor its trunk names an agent.
    pub const NO_AGENT: &str = "NoAgent";
    /// The agent has a bearer token but a plain ws:// URL to a host that is not loopback:
    /// media nodes refuse to send the token in clear text, so every call would fail.
    pub const INSECURE_AGENT_URL: &str = "InsecureAgentUrl";
    /// Accepted, with a warning: the trunk encrypts media but lets its SRTP keys travel in
    /// SIP that is not TLS (`media.allowSdesWithoutTls`).
    pub const SDES_WITHOUT_TLS: &str = "SdesWithoutTls";
}

/// What the resolver concluded about a trunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkVerdict {
    /// The generation judged.
    pub generation: i64,
    /// The Accepted condition.
    pub accepted: Verdict,
    /// The ResolvedRefs condition.
    pub resolved_refs: Verdict,
    /// Numbers routed through this trunk (as primary).
    pub numbers: u32,
}

impl TrunkVerdict {
    /// Whether the trunk goes into the routing configuration.
    pub fn usable(&self) -> bool {
        self.accepted.ok && self.resolved_refs.ok
    }
}

/// What the resolver concluded about a phone number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberVerdict {
    /// The generation judged.
    pub generation: i64,
    /// The Accepted condition.
    pub accepted: Verdict,
    /// The ResolvedRefs condition.
    pub resolved_refs: Verdict,
}

impl NumberVerdict {
    /// Whether the number goes into the routing configuration.
    pub fn usable(&self) -> bool {
        self.accepted.ok && self.resolved_refs.ok
    }
}

/// The routing configuration and every object's verdict.
#[derive(Clone, Debug, Default)]
pub struct Resolution {
    /// Fleet-wide configuration (version 0, no per-node shares yet).
    pub config: pb::RoutingConfig,
    /// Verdicts by trunk.
    pub trunks: BTreeMap<ObjectKey, TrunkVerdict>,
    /// Verdicts by number.
    pub numbers: BTreeMap<ObjectKey, NumberVerdict>,
}

/// The whole-world resolver's view for conversions.
struct Whole<'a> {
    inputs: &'a Inputs,
    verdicts: &'a BTreeMap<ObjectKey, TrunkVerdict>,
}

impl convert::World for Whole<'_> {
    fn secret(&self, key: &ObjectKey) -> Option<&SecretData> {
        self.inputs.secrets.get(key)
    }
    fn trunk_spec(&self, key: &ObjectKey) -> Option<&SipTrunkSpec> {
        self.inputs.trunks.get(key).map(|t| &t.spec)
    }
    fn trunk_verdict(&self, key: &ObjectKey) -> Option<&TrunkVerdict> {
        self.verdicts.get(key)
    }
}

/// Judges one trunk: its verdict and, when usable, its configuration.
fn judge_trunk(t: &TrunkInput, world: &dyn convert::World) -> (TrunkVerdict, Option<pb::Trunk>) {
    let media = &t.spec.media;
    let accepted = match validate::trunk(&t.spec) {
        Ok(())
            if media.encryption != crate::crd::MediaEncryption::Disabled
                && media.allow_sdes_without_tls =>
        {
            Verdict::ok(
                reason::SDES_WITHOUT_TLS,
                "spec is valid; media.allowSdesWithoutTls lets SRTP keys travel in SIP over \
                 UDP or TCP, where anyone who can read the signalling can decrypt the calls' media",
            )
        }
        Ok(()) => Verdict::ok(reason::ACCEPTED, "spec is valid"),
        Err(e) => Verdict::fail(reason::INVALID, e),
    };
    let (resolved_refs, config) = if accepted.ok {
        match convert::trunk(t, world) {
            Ok(c) => (
                Verdict::ok(reason::RESOLVED, "all references resolved"),
                Some(c),
            ),
            Err(e) => (Verdict::fail(e.reason(), e.to_string()), None),
        }
    } else {
        (
            Verdict::fail(reason::INVALID, "spec is invalid; references not checked"),
            None,
        )
    };
    (
        TrunkVerdict {
            generation: t.generation,
            accepted,
            resolved_refs,
            numbers: 0,
        },
        config,
    )
}

/// Judges one number given the winner that beat it (if any): its verdict
/// and, when usable, its configuration.
fn judge_number(
    n: &NumberInput,
    lost_to: Option<&ObjectKey>,
    world: &dyn convert::World,
) -> (NumberVerdict, Option<pb::PhoneNumber>) {
    let accepted = match (validate::number(&n.spec), lost_to) {
        (Err(e), _) => Verdict::fail(reason::INVALID, e),
        (Ok(()), Some(winner)) => Verdict::fail(
            reason::CONFLICT,
            format!(
                "{} is already claimed by PhoneNumber {winner}",
                n.spec.number
            ),
        ),
        (Ok(()), None) => Verdict::ok(reason::ACCEPTED, "spec is valid"),
    };
    let mut number_config = None;
    let resolved_refs = if !accepted.ok {
        Verdict::fail(accepted.reason, "not accepted; references not checked")
    } else {
        match convert::number(n, world) {
            Ok(c) => {
                number_config = Some(c);
                Verdict::ok(reason::RESOLVED, "all references resolved")
            }
            Err(e) => Verdict::fail(e.reason(), e.to_string()),
        }
    };
    (
        NumberVerdict {
            generation: n.generation,
            accepted,
            resolved_refs,
        },
        number_config,
    )
}

/// Resolves the inputs into a routing configuration and verdicts. The
/// operator resolves incrementally ([`index::Index`]); this whole-world
/// function is the reference the index is tested against.
pub fn resolve(inputs: &Inputs) -> Resolution {
    let mut out = Resolution::default();
    let mut trunk_configs: BTreeMap<ObjectKey, pb::Trunk> = BTreeMap::new();
    let no_verdicts = BTreeMap::new();
    let trunk_world = Whole {
        inputs,
        verdicts: &no_verdicts,
    };

    for t in inputs.trunks.values() {
        let (verdict, config) = judge_trunk(t, &trunk_world);
        if let Some(c) = config {
            trunk_configs.insert(t.key.clone(), c);
        }
        out.trunks.insert(t.key.clone(), verdict);
    }

    let losers = conflicts::losers(
        inputs
            .numbers
            .values()
            .filter(|n| validate::number(&n.spec).is_ok()),
    );

    let verdicts = out.trunks.clone();
    let world = Whole {
        inputs,
        verdicts: &verdicts,
    };
    for n in inputs.numbers.values() {
        let (verdict, config) = judge_number(n, losers.get(&n.key), &world);
        if let Some(c) = config {
            let trunk_key = ObjectKey::new(n.key.namespace.clone(), n.spec.trunk_ref.name.clone());
            if let Some(v) = out.trunks.get_mut(&trunk_key) {
                v.numbers += 1;
            }
            out.config.numbers.push(c);
        }
        out.numbers.insert(n.key.clone(), verdict);
    }

    out.config.trunks = trunk_configs.into_values().collect();
    out
}

#[cfg(test)]
mod tests;
