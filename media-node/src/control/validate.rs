//! What this node refuses to run. A refused configuration leaves the last
//! good one in place, and the reason reaches the resources' status.

use std::collections::HashSet;

use switchboard_proto::v1alpha1::{ConfigDelta, PhoneNumber, RoutingConfig, Transport, Trunk};

use crate::routing::acl::Cidr;

/// Checks a configuration; the error is for humans and names the object.
pub fn validate(cfg: &RoutingConfig) -> Result<(), String> {
    let mut trunk_ids = HashSet::new();
    for t in &cfg.trunks {
        if !trunk_ids.insert(t.id.as_str()) {
            return Err(format!("trunk {} appears twice", t.id));
        }
        trunk(t)?;
    }
    let mut number_ids = HashSet::new();
    for n in &cfg.numbers {
        if !number_ids.insert(n.id.as_str()) {
            return Err(format!("number {} appears twice", n.id));
        }
        number(n, |id| trunk_ids.contains(id))?;
    }
    Ok(())
}

/// Checks a delta against the configuration it applies to, without building
/// the result (a one-number change to 100,000 numbers checks one number).
pub fn validate_delta(current: &RoutingConfig, d: &ConfigDelta) -> Result<(), String> {
    for t in &d.upsert_trunks {
        trunk(t)?;
    }
    let removed: HashSet<&str> = d.remove_trunks.iter().map(String::as_str).collect();
    let exists = |id: &str| {
        d.upsert_trunks.iter().any(|t| t.id == id)
            || (!removed.contains(id) && current.trunks.iter().any(|t| t.id == id))
    };
    for n in &d.upsert_numbers {
        number(n, exists)?;
    }
    if !removed.is_empty() {
        let removed_numbers: HashSet<&str> = d.remove_numbers.iter().map(String::as_str).collect();
        let upserted: HashSet<&str> = d.upsert_numbers.iter().map(|n| n.id.as_str()).collect();
        if let Some(n) = current.numbers.iter().find(|n| {
            removed.contains(n.trunk_id.as_str())
                && !removed_numbers.contains(n.id.as_str())
                && !upserted.contains(n.id.as_str())
        }) {
            return Err(format!(
                "number {} names trunk {}, which is not in the configuration",
                n.id, n.trunk_id
            ));
        }
    }
    Ok(())
}

fn trunk(t: &Trunk) -> Result<(), String> {
    if t.id.is_empty() {
        return Err("a trunk has no id".into());
    }
    for s in t.inbound.iter().flat_map(|i| i.allowed_sources.iter()) {
        Cidr::parse(s).map_err(|e| format!("trunk {}: allowed source {s:?}: {e}", t.id))?;
    }
    for g in t.outbound.iter().flat_map(|o| o.gateways.iter()) {
        if g.transport == Transport::Tls as i32 {
            return Err(format!(
                "trunk {}: gateway {}:{} uses TLS, which this media node does not support yet (use udp or tcp)",
                t.id, g.host, g.port
            ));
        }
        if g.host.is_empty() || g.port == 0 || g.port > 65535 {
            return Err(format!(
                "trunk {}: gateway {:?}:{} is not a valid address",
                t.id, g.host, g.port
            ));
        }
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::v1alpha1::{Gateway, Outbound, PhoneNumber, Trunk};

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
        let c = cfg();
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
        assert!(validate(&c).expect_err("tls").contains("TLS"));
        let mut c = cfg();
        c.numbers[0].trunk_id = "ns/other".into();
        assert!(validate(&c).expect_err("dangling").contains("ns/other"));
        let mut c = cfg();
        c.numbers.push(c.numbers[0].clone());
        assert!(validate(&c).expect_err("dup").contains("twice"));
    }
}
