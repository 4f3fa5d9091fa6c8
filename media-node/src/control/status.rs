//! The node's status as the operator reads it.

use std::collections::BTreeMap;

use switchboard_proto::v1alpha1 as pb;

use crate::call::{CallDirection, Ctx};

/// Builds a status report from the node's live state.
pub(super) fn build(
    ctx: &Ctx,
    node_id: &str,
    boot_id: &str,
    version: u64,
    term: u64,
    refused: Option<&(u64, String)>,
    sip_addresses: &[String],
) -> pb::NodeStatus {
    let draining = ctx.draining.load(std::sync::atomic::Ordering::Relaxed);
    let registering: Option<Vec<String>> = ctx.routing.read(|t| {
        t.trunks()
            .filter(|t| t.register_here)
            .map(|t| t.id.clone())
            .collect()
    });
    let programmed = registering.is_some();
    let registering = registering.unwrap_or_default();
    let mut per_trunk: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for c in ctx.calls.list() {
        let e = per_trunk.entry(c.trunk_id).or_default();
        match c.direction {
            CallDirection::Inbound => e.0 += 1,
            CallDirection::Outbound => e.1 += 1,
        }
    }
    let registrations = ctx
        .registrations
        .list()
        .into_iter()
        .filter(|r| registering.contains(&r.trunk_id))
        .map(|r| pb::RegistrationState {
            registered: r.state == "registered",
            last_status_code: r.last_code.map(u32::from).unwrap_or(0),
            expires_at_unix: 0,
            error: match (r.state, r.error) {
                ("registered", _) => String::new(),
                (_, Some(e)) => e,
                (state, None) => format!("registration {state}"),
            },
            trunk_id: r.trunk_id,
        })
        .collect();
    let gateways = ctx
        .health
        .list()
        .into_iter()
        .map(|g| {
            let (host, port) = match g.gateway.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(':') => (
                    h.trim_matches(['[', ']']).to_string(),
                    p.parse().unwrap_or(0),
                ),
                _ => (g.gateway.clone(), 0),
            };
            pb::GatewayHealth {
                trunk_id: g.trunk_id,
                host,
                port,
                healthy: g.healthy,
                last_status_code: g.last_code.map(u32::from).unwrap_or(0),
                round_trip_ms: g
                    .rtt_ms
                    .map(|r| u32::try_from(r).unwrap_or(u32::MAX))
                    .unwrap_or(0),
                error: g.error.unwrap_or_default(),
            }
        })
        .collect();
    pb::NodeStatus {
        node_id: node_id.to_string(),
        boot_id: boot_id.to_string(),
        config_version: version,
        ready: programmed && !draining,
        draining,
        capacity: u32::try_from(ctx.opts.max_calls).unwrap_or(u32::MAX),
        active_calls: u32::try_from(ctx.calls.total()).unwrap_or(u32::MAX),
        trunks: per_trunk
            .into_iter()
            .map(|(trunk_id, (inbound, outbound))| pb::TrunkCalls {
                trunk_id,
                inbound,
                outbound,
            })
            .collect(),
        registrations,
        gateways,
        sip_addresses: sip_addresses.to_vec(),
        refused_version: refused.map(|r| r.0).unwrap_or(0),
        refused_reason: refused.map(|r| r.1.clone()).unwrap_or_default(),
        config_term: term,
    }
}
