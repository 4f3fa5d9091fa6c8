//! What this node refuses to run. A refused configuration leaves the last
//! good one in place, and the reason reaches the resources' status.

use foldhash::{HashSet, HashSetExt};

use switchboard_proto::v1alpha1::{Agent, ConfigDelta, PhoneNumber, RoutingConfigView, Trunk};

use crate::routing::acl::Cidr;
use crate::routing::{RoutingTable, StoredNumber};

/// Checks a configuration; the error is for humans and names the object.
/// The same checks as a snapshot gets ([`build_snapshot`]).
#[cfg(test)]
pub fn validate(cfg: &switchboard_proto::RoutingConfig) -> Result<(), String> {
    build_snapshot(cfg.clone().into_view()).map(drop)
}

/// Checks a snapshot while building its table, in one pass over its
/// numbers: each is decoded once, into one reused message, checked, and
/// stored as the bytes it came in. The table is only returned when every
/// check passed, so a refused snapshot leaves the one in use untouched.
pub fn build_snapshot(cfg: RoutingConfigView) -> Result<RoutingTable, String> {
    let mut table = RoutingTable::empty(cfg.version, cfg.numbers.len());
    for t in cfg.trunks {
        if table.trunk(&t.id).is_some() {
            return Err(format!("trunk {} appears twice", t.id));
        }
        trunk(&t)?;
        table.upsert_trunk(t);
    }
    let mut n = PhoneNumber::default();
    for (i, wire) in cfg.numbers.into_iter().enumerate() {
        let stored = StoredNumber::from_wire(wire, &mut n)
            .map_err(|e| format!("number {} of the snapshot does not decode: {e}", i + 1))?;
        if !table.insert_new(stored, &n) {
            return Err(format!("number {} appears twice", n.id));
        }
        number(&n, |id| table.trunk(id).is_some())?;
    }
    Ok(table)
}

/// Checks a delta against the table it applies to, without building the
/// result: the work is proportional to the change (a one-number change to
/// 100,000 numbers checks one number; removing a trunk looks only at the
/// numbers on it).
pub fn validate_delta(current: &RoutingTable, d: &ConfigDelta) -> Result<(), String> {
    let mut upserted_trunks = HashSet::new();
    for t in &d.upsert_trunks {
        trunk(t)?;
        upserted_trunks.insert(t.id.as_str());
    }
    let removed: HashSet<&str> = d.remove_trunks.iter().map(String::as_str).collect();
    let exists = |id: &str| {
        upserted_trunks.contains(id) || (!removed.contains(id) && current.trunk(id).is_some())
    };
    for n in &d.upsert_numbers {
        number(n, exists)?;
    }
    if !removed.is_empty() {
        let removed_numbers: HashSet<&str> = d.remove_numbers.iter().map(String::as_str).collect();
        let upserted: HashSet<&str> = d.upsert_numbers.iter().map(|n| n.id.as_str()).collect();
        // Trunks removed and upserted again stay; of the others, every number
        // still on one must go or move in this delta. Each id looked at is
        // in the delta, except the first survivor, which refuses it.
        let mut gone: Vec<&str> = removed
            .iter()
            .copied()
            .filter(|t| !upserted_trunks.contains(t))
            .collect();
        gone.sort_unstable();
        for t in gone {
            if let Some(n) = current
                .numbers_on_trunk(t)
                .find(|n| !removed_numbers.contains(n) && !upserted.contains(n))
            {
                return Err(format!(
                    "number {n} names trunk {t}, which is not in the configuration"
                ));
            }
        }
    }
    Ok(())
}

fn trunk(t: &Trunk) -> Result<(), String> {
    if t.id.is_empty() {
        return Err("a trunk has no id".into());
    }
    if let Some(i) = &t.inbound {
        for s in &i.allowed_sources {
            Cidr::parse(s).map_err(|e| format!("trunk {}: allowed source {s:?}: {e}", t.id))?;
            if i.auth.is_none() && too_wide(s) {
                return Err(format!(
                    "trunk {}: allowed source {s:?} is wider than {MIN_V4_PREFIX_WITHOUT_AUTH} (IPv4) \
                     or /{MIN_V6_PREFIX_WITHOUT_AUTH} (IPv6) without inbound digest auth: anyone in it could call",
                    t.id
                ));
            }
        }
        if let Some(a) = &i.default_agent {
            agent_networks(a).map_err(|e| format!("trunk {}: default agent: {e}", t.id))?;
        }
    }
    if let Some(tls) = t.outbound.as_ref().and_then(|o| o.tls.as_ref()) {
        crate::sip::transport::tls::cached_client_config(tls)
            .map_err(|e| format!("trunk {}: outbound.tls: {e}", t.id))?;
    }
    for g in t.outbound.iter().flat_map(|o| o.gateways.iter()) {
        if g.host.is_empty() || g.port == 0 || g.port > 65535 {
            return Err(format!(
                "trunk {}: gateway {:?}:{} is not a valid address",
                t.id, g.host, g.port
            ));
        }
    }
    Ok(())
}

/// The widest IPv4 source network a trunk may allow without digest auth
/// (the prefix, for the message).
const MIN_V4_PREFIX_WITHOUT_AUTH: &str = "/8";
const MIN_V4_PREFIX: u8 = 8;
/// The same for IPv6 (a large provider allocation).
const MIN_V6_PREFIX_WITHOUT_AUTH: u8 = 32;

/// True for a source CIDR wider than /8 (IPv4) or /32 (IPv6): without
/// digest auth such a trunk takes calls from a good part of the Internet.
fn too_wide(s: &str) -> bool {
    let Some((addr, len)) = s.trim().split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(len)) = (addr.parse::<std::net::IpAddr>(), len.parse::<u8>()) else {
        return false;
    };
    // A v4-mapped address parses as IPv4 with an IPv4 prefix (see Cidr::parse).
    match crate::routing::acl::normalize(addr) {
        std::net::IpAddr::V4(_) => len < MIN_V4_PREFIX,
        std::net::IpAddr::V6(_) => len < MIN_V6_PREFIX_WITHOUT_AUTH,
    }
}

/// An agent's egress allow-list: every entry inside a private range.
fn agent_networks(a: &Agent) -> Result<(), String> {
    if a.egress_allowed_networks.len() > 16 {
        return Err("at most 16 egress allowed networks".into());
    }
    for s in &a.egress_allowed_networks {
        crate::egress::check_trunk_network(s)
            .map_err(|e| format!("egress allowed network: {e}"))?;
    }
    Ok(())
}

fn number(n: &PhoneNumber, trunk_exists: impl Fn(&str) -> bool) -> Result<(), String> {
    if !trunk_exists(n.trunk_id.as_str()) {
        return Err(format!(
            "number {} names trunk {}, which is not in the configuration",
            n.id, n.trunk_id
        ));
    }
    if let Some(a) = &n.agent
        && !(a.url.starts_with("ws://") || a.url.starts_with("wss://"))
    {
        return Err(format!(
            "number {}: agent URL must be ws:// or wss://",
            n.id
        ));
    }
    if let Some(a) = &n.agent {
        agent_networks(a).map_err(|e| format!("number {}: agent: {e}", n.id))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::RoutingConfig;
    use switchboard_proto::v1alpha1::{
        Gateway, Inbound, InboundAuth, Outbound, PhoneNumber, Transport, Trunk,
    };

    fn cfg() -> RoutingConfig {
        RoutingConfig {
            version: 1,
            trunks: vec![Trunk {
                id: "ns/t".into(),
                ..Default::default()
            }],
            numbers: vec![PhoneNumber {
                id: "ns/n".into(),
                trunk_id: "ns/t".into(),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn deltas_are_checked_against_the_configuration_they_change() {
        let c = RoutingTable::build(cfg());
        let ok = ConfigDelta {
            base_version: 1,
            version: 2,
            upsert_numbers: vec![PhoneNumber {
                id: "ns/m".into(),
                trunk_id: "ns/t".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(validate_delta(&c, &ok), Ok(()));
        let dangling = ConfigDelta {
            remove_trunks: vec!["ns/t".into()],
            ..ok.clone()
        };
        assert!(
            validate_delta(&c, &dangling)
                .expect_err("dangling")
                .contains("ns/t")
        );
        let both = ConfigDelta {
            remove_trunks: vec!["ns/t".into()],
            remove_numbers: vec!["ns/n".into()],
            upsert_numbers: vec![],
            ..ok
        };
        assert_eq!(validate_delta(&c, &both), Ok(()));
    }

    fn on(id: &str, trunk: &str) -> PhoneNumber {
        PhoneNumber {
            id: id.into(),
            trunk_id: trunk.into(),
            ..Default::default()
        }
    }

    #[test]
    fn removing_a_trunk_checks_only_the_numbers_on_it() {
        let mut c = cfg();
        c.trunks.push(Trunk {
            id: "ns/u".into(),
            ..Default::default()
        });
        c.numbers = vec![on("ns/a", "ns/t"), on("ns/b", "ns/t"), on("ns/c", "ns/u")];
        let table = RoutingTable::build(c);
        let remove_t = |numbers: &[&str], upserts: Vec<PhoneNumber>| ConfigDelta {
            base_version: 1,
            version: 2,
            remove_trunks: vec!["ns/t".into()],
            remove_numbers: numbers.iter().map(|s| s.to_string()).collect(),
            upsert_numbers: upserts,
            ..Default::default()
        };
        // One of the two numbers left behind: named, the first by id.
        let err = validate_delta(&table, &remove_t(&[], vec![])).expect_err("dangling");
        assert!(err.contains("ns/a") && err.contains("ns/t"), "{err}");
        let err = validate_delta(&table, &remove_t(&["ns/a"], vec![])).expect_err("dangling");
        assert!(err.contains("ns/b"), "{err}");
        // Every number on it removed or moved to another trunk: fine; a
        // number on another trunk is not its business.
        assert_eq!(
            validate_delta(&table, &remove_t(&["ns/a", "ns/b"], vec![])),
            Ok(())
        );
        assert_eq!(
            validate_delta(&table, &remove_t(&["ns/a"], vec![on("ns/b", "ns/u")])),
            Ok(())
        );
        // Moved onto the trunk being removed: refused by the number check.
        let err = validate_delta(
            &table,
            &remove_t(&["ns/a", "ns/b"], vec![on("ns/c", "ns/t")]),
        )
        .expect_err("moved onto removed");
        assert!(err.contains("ns/c"), "{err}");
        // Removed and upserted again in one delta: the trunk stays.
        let again = ConfigDelta {
            upsert_trunks: vec![Trunk {
                id: "ns/t".into(),
                enabled: true,
                ..Default::default()
            }],
            ..remove_t(&[], vec![])
        };
        assert_eq!(validate_delta(&table, &again), Ok(()));
        // After the table applied a removal, the reverse index follows.
        let mut table = table;
        table.apply_delta(remove_t(&["ns/a"], vec![on("ns/b", "ns/u")]));
        let remove_u = ConfigDelta {
            base_version: 2,
            version: 3,
            remove_trunks: vec!["ns/u".into()],
            remove_numbers: vec!["ns/c".into()],
            ..Default::default()
        };
        let err = validate_delta(&table, &remove_u).expect_err("ns/b moved to ns/u");
        assert!(err.contains("ns/b") && err.contains("ns/u"), "{err}");
    }

    #[test]
    fn refuses_what_it_cannot_run_with_a_reason() {
        assert_eq!(validate(&cfg()), Ok(()));
        let mut c = cfg();
        c.trunks[0].outbound = Some(Outbound {
            gateways: vec![Gateway {
                host: "gw".into(),
                port: 5061,
                transport: Transport::Tls as i32,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(validate(&c), Ok(()), "TLS gateways are supported");
        if let Some(o) = c.trunks[0].outbound.as_mut() {
            o.tls = Some(switchboard_proto::v1alpha1::TlsClient {
                client_cert_pem: "not a certificate".into(),
                ..Default::default()
            });
        }
        let e = validate(&c).expect_err("a bad client certificate");
        assert!(e.contains("outbound.tls"), "{e}");
        let mut c = cfg();
        c.numbers[0].trunk_id = "ns/other".into();
        assert!(validate(&c).expect_err("dangling").contains("ns/other"));
        let mut c = cfg();
        c.numbers.push(c.numbers[0].clone());
        assert!(validate(&c).expect_err("dup").contains("twice"));
    }

    fn with_sources(sources: &[&str], auth: bool) -> RoutingConfig {
        let mut c = cfg();
        c.trunks[0].inbound = Some(Inbound {
            enabled: true,
            allowed_sources: sources.iter().map(|s| s.to_string()).collect(),
            auth: auth.then(InboundAuth::default),
            ..Default::default()
        });
        c
    }

    #[test]
    fn source_networks_wider_than_a_slash_8_need_digest_auth() {
        for ok in [
            "10.0.0.0/8",
            "203.0.113.0/24",
            "198.51.100.7",
            "2001:db8::/32",
            "::ffff:10.0.0.0/8",
        ] {
            assert_eq!(validate(&with_sources(&[ok], false)), Ok(()), "{ok}");
        }
        for wide in [
            "0.0.0.0/0",
            "0.0.0.0/7",
            "128.0.0.0/1",
            "::/0",
            "2000::/3",
            "::ffff:0.0.0.0/7",
        ] {
            let err = validate(&with_sources(&["203.0.113.0/24", wide], false)).expect_err(wide);
            assert!(err.contains(wide) && err.contains("digest auth"), "{err}");
            assert_eq!(
                validate(&with_sources(&[wide], true)),
                Ok(()),
                "{wide} with auth"
            );
        }
    }

    #[test]
    fn agent_egress_networks_must_be_private_ranges() {
        let mut c = cfg();
        c.numbers[0].agent = Some(Agent {
            url: "ws://agent.ns.svc:8080/".into(),
            egress_allowed_networks: vec!["10.96.0.0/12".into()],
            ..Default::default()
        });
        assert_eq!(validate(&c), Ok(()));
        c.numbers[0]
            .agent
            .as_mut()
            .expect("agent")
            .egress_allowed_networks = vec!["127.0.0.0/8".into()];
        let err = validate(&c).expect_err("loopback");
        assert!(err.contains("ns/n") && err.contains("127.0.0.0/8"), "{err}");
        let mut c = cfg();
        c.trunks[0].inbound = Some(Inbound {
            default_agent: Some(Agent {
                url: "ws://a/".into(),
                egress_allowed_networks: vec!["169.254.0.0/16".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(validate(&c).expect_err("link-local").contains("ns/t"));
    }
}
