//! The routing table built from a `RoutingConfig`: trunks by id, the
//! source ACL and the number index.

pub mod acl;
pub mod numbers;

use std::collections::HashMap;
use std::net::IpAddr;

use switchboard_proto::v1alpha1::{Codec, PhoneNumber, RoutingConfig, Trunk};

/// An immutable, indexed view of one configuration version.
#[derive(Debug, Default)]
pub struct RoutingTable {
    /// The configuration version.
    pub version: u64,
    /// Trunks by id.
    pub trunks: HashMap<String, Trunk>,
    /// Numbers in configuration order.
    pub numbers: Vec<PhoneNumber>,
    acl: acl::Acl,
    index: numbers::NumberIndex,
}

impl RoutingTable {
    /// Builds the table. Invalid CIDRs are skipped with a warning: the
    /// operator validates them, and a node keeps serving the rest.
    pub fn build(cfg: RoutingConfig) -> RoutingTable {
        let mut acl = acl::Acl::default();
        let mut trunks = HashMap::new();
        for t in cfg.trunks {
            if let Some(inb) = &t.inbound {
                for src in &inb.allowed_sources {
                    match acl::Cidr::parse(src) {
                        Ok(c) => acl.add(c, &t.id),
                        Err(e) => {
                            tracing::warn!(trunk = %t.id, error = %e, "skipping invalid allowed source")
                        }
                    }
                }
            }
            trunks.insert(t.id.clone(), t);
        }
        let mut index = numbers::NumberIndex::default();
        for (i, n) in cfg.numbers.iter().enumerate() {
            index.add(i, &n.e164, &n.destination_key);
        }
        RoutingTable {
            version: cfg.version,
            trunks,
            numbers: cfg.numbers,
            acl,
            index,
        }
    }

    /// Trunk ids whose carriers may send from `ip`.
    pub fn trunks_for_source(&self, ip: IpAddr) -> Vec<&str> {
        self.acl.trunks_for(ip)
    }

    /// The number a called user part designates.
    pub fn number_for(&self, user: &str) -> Option<&PhoneNumber> {
        self.index.lookup(user).and_then(|i| self.numbers.get(i))
    }

    /// A number by its id.
    pub fn number_by_id(&self, id: &str) -> Option<&PhoneNumber> {
        self.numbers.iter().find(|n| n.id == id)
    }
}

/// The trunk's codec preference, defaulting to PCMU then PCMA.
pub fn codec_prefs(t: &Trunk) -> Vec<Codec> {
    let prefs: Vec<Codec> = t
        .media
        .as_ref()
        .map(|m| m.codecs().filter(|c| *c != Codec::Unspecified).collect())
        .unwrap_or_default();
    if prefs.is_empty() {
        vec![Codec::Pcmu, Codec::Pcma]
    } else {
        prefs
    }
}

/// True when RFC 4733 telephone-events should be negotiated.
pub fn wants_rfc4733(t: &Trunk) -> bool {
    use switchboard_proto::v1alpha1::DtmfMode;
    !matches!(t.media.as_ref().map(|m| m.dtmf()), Some(DtmfMode::Info))
}

/// This node's share of a trunk's concurrent calls: `None` when the trunk
/// has no limit, else the share the operator gave this node (0 when none).
pub fn channel_share(trunk: &Trunk) -> Option<usize> {
    let limited = trunk
        .limits
        .as_ref()
        .is_some_and(|l| l.max_concurrent_calls > 0);
    limited.then(|| {
        trunk
            .share
            .as_ref()
            .map(|s| s.max_concurrent_calls as usize)
            .unwrap_or(0)
    })
}
