//! The spec rules, checked again in Rust. In a cluster the API server's
//! schema and CEL rules refuse most bad specs at admission; resources read
//! from files get no such check, so every rule lives here too and a bad file
//! is reported in the conditions with the field it concerns.

use std::net::IpAddr;

use crate::crd::{AgentSpec, Gateway, PhoneNumberSpec, SipTrunkSpec};

/// Checks a trunk spec; the error names the field.
pub(super) fn trunk(spec: &SipTrunkSpec) -> Result<(), String> {
    if let Some(inb) = &spec.inbound {
        if inb.enabled && inb.allowed_sources.is_empty() && inb.auth.is_none() {
            return Err(
                "spec.inbound.allowedSources: inbound.enabled needs allowedSources or auth".into(),
            );
        }
        if inb.allowed_sources.len() > 64 {
            return Err("spec.inbound.allowedSources: at most 64 entries".into());
        }
        for (i, s) in inb.allowed_sources.iter().enumerate() {
            let (ip, len) =
                parse_cidr(s).map_err(|e| format!("spec.inbound.allowedSources[{i}]: {e}"))?;
            if inb.auth.is_none() && too_wide(ip, len) {
                return Err(format!(
                    "spec.inbound.allowedSources[{i}]: {s:?} is wider than /{MIN_V4_PREFIX} (IPv4) or \
                     /{MIN_V6_PREFIX} (IPv6) and spec.inbound.auth is not set: anyone in that range could \
                     place calls on this trunk; narrow it to the carrier's ranges or add inbound.auth"
                ));
            }
        }
        if let Some(a) = &inb.default_agent {
            agent(a).map_err(|e| format!("spec.inbound.defaultAgent.{e}"))?;
        }
    }
    if let Some(out) = &spec.outbound {
        if out.enabled && out.gateways.is_empty() {
            return Err(
                "spec.outbound.gateways: outbound.enabled needs at least one gateway".into(),
            );
        }
        if out.gateways.len() > 16 {
            return Err("spec.outbound.gateways: at most 16 gateways".into());
        }
        for (i, g) in out.gateways.iter().enumerate() {
            gateway(g).map_err(|e| format!("spec.outbound.gateways[{i}].{e}"))?;
        }
        if !(1..=600).contains(&out.ringing_timeout_seconds) {
            return Err("spec.outbound.ringingTimeoutSeconds: must be 1..600".into());
        }
        for (i, f) in out.failover_on.iter().enumerate() {
            if parse_failover(f).is_none() {
                return Err(format!(
                    "spec.outbound.failoverOn[{i}]: {f:?} is not `timeout`, a status code such as 503, or a class such as 5xx"
                ));
            }
        }
        if let Some(r) = &out.register {
            if r.enabled && r.registrar.is_none() && out.gateways.is_empty() {
                return Err(
                    "spec.outbound.register: register needs a registrar or at least one gateway"
                        .into(),
                );
            }
            if !(60..=86400).contains(&r.expires_seconds) {
                return Err("spec.outbound.register.expiresSeconds: must be 60..86400".into());
            }
        }
    }
    let codecs = &spec.media.codecs;
    if codecs.is_empty() {
        return Err("spec.media.codecs: at least one codec".into());
    }
    for (i, c) in codecs.iter().enumerate() {
        if codecs[..i].contains(c) {
            return Err("spec.media.codecs: codecs must not repeat".into());
        }
    }
    if !(1..=3600).contains(&spec.media.rtp_timeout_seconds) {
        return Err("spec.media.rtpTimeoutSeconds: must be 1..3600".into());
    }
    if spec.health_check.options_interval_seconds > 3600 {
        return Err("spec.healthCheck.optionsIntervalSeconds: must be 0..3600".into());
    }
    if let Some(e) = &spec.agent_egress {
        if e.allowed_networks.len() > 16 {
            return Err("spec.agentEgress.allowedNetworks: at most 16 entries".into());
        }
        for (i, s) in e.allowed_networks.iter().enumerate() {
            let (ip, len) =
                parse_cidr(s).map_err(|e| format!("spec.agentEgress.allowedNetworks[{i}]: {e}"))?;
            if !inside_private_range(ip, len) {
                return Err(format!(
                    "spec.agentEgress.allowedNetworks[{i}]: {s:?} is not inside 10.0.0.0/8, \
                     172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 or fc00::/7; loopback, link-local \
                     and public networks cannot be opened per trunk"
                ));
            }
        }
    }
    Ok(())
}

/// The widest source network a trunk may allow without digest auth.
const MIN_V4_PREFIX: u8 = 8;
/// The same for IPv6 (a large provider allocation).
const MIN_V6_PREFIX: u8 = 32;

/// True for a source network wider than /8 (IPv4, also IPv4-mapped) or /32 (IPv6).
fn too_wide(ip: IpAddr, len: u8) -> bool {
    match ip {
        IpAddr::V4(_) => len < MIN_V4_PREFIX,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(_) => len < 96 + MIN_V4_PREFIX,
            None => len < MIN_V6_PREFIX,
        },
    }
}

/// True when `ip/len` lies wholly inside one of the private ranges a
/// trunk's agentEgress may open (the media node checks the same).
pub(crate) fn inside_private_range(ip: IpAddr, len: u8) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let a = u32::from(v4);
            [
                (0x0a00_0000u32, 8u8),
                (0xac10_0000, 12),
                (0xc0a8_0000, 16),
                (0x6440_0000, 10),
            ]
            .iter()
            .any(|&(net, plen)| len >= plen && a >> (32 - plen) == net >> (32 - plen))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => len >= 96 && inside_private_range(IpAddr::V4(v4), len - 96),
            None => len >= 7 && v6.segments()[0] & 0xfe00 == 0xfc00,
        },
    }
}

/// Checks a phone-number spec; the error names the field.
pub(super) fn number(spec: &PhoneNumberSpec) -> Result<(), String> {
    if !is_e164(&spec.number) {
        return Err(format!(
            "spec.number: {:?} is not E.164 (a + and 7 to 15 digits, e.g. +14155550100)",
            spec.number
        ));
    }
    if spec.trunk_ref.name.is_empty() {
        return Err("spec.trunkRef.name: must not be empty".into());
    }
    for (i, t) in spec.fallback_trunks.iter().enumerate() {
        if *t == spec.trunk_ref.name {
            return Err("spec.fallbackTrunks: fallbackTrunks must not repeat trunkRef".into());
        }
        if spec.fallback_trunks[..i].contains(t) {
            return Err("spec.fallbackTrunks: fallbackTrunks must not repeat".into());
        }
    }
    if spec.fallback_trunks.len() > 8 {
        return Err("spec.fallbackTrunks: at most 8 trunks".into());
    }
    if let Some(k) = &spec.destination_key {
        let ok = !k.is_empty()
            && k.len() <= 64
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"#*+._-".contains(&b));
        if !ok {
            return Err("spec.destinationKey: 1..64 characters of [0-9A-Za-z#*+._-]".into());
        }
    }
    if let Some(a) = &spec.agent {
        agent(a).map_err(|e| format!("spec.agent.{e}"))?;
    }
    Ok(())
}

/// What a refused URL may show in status and Events: its scheme only. Agent
/// and webhook URLs often carry tokens in their path or query.
fn scheme_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme.len() <= 16
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            format!("{scheme}://")
        }
        _ => "no scheme".into(),
    }
}

fn agent(a: &AgentSpec) -> Result<(), String> {
    let rest = a
        .url
        .strip_prefix("ws://")
        .or_else(|| a.url.strip_prefix("wss://"))
        .ok_or_else(|| {
            format!(
                "url: must start with ws:// or wss:// (it has {})",
                scheme_of(&a.url)
            )
        })?;
    if rest.is_empty() || rest.starts_with('/') || a.url.chars().any(char::is_whitespace) {
        return Err("url: has no host (or holds whitespace)".into());
    }
    if let Some(w) = &a.status_webhook
        && (!(w.starts_with("http://") || w.starts_with("https://"))
            || w.chars().any(char::is_whitespace))
    {
        return Err(format!(
            "statusWebhook: must be an http:// or https:// URL without whitespace (it has {})",
            scheme_of(w)
        ));
    }
    Ok(())
}

fn gateway(g: &Gateway) -> Result<(), String> {
    let host = g.host.trim_start_matches('[').trim_end_matches(']');
    let ok = host.parse::<IpAddr>().is_ok()
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !host.starts_with(['.', '-'])
            && !host.ends_with(['.', '-']));
    if !ok {
        return Err(format!(
            "host: {:?} is not a host name or IP address",
            g.host
        ));
    }
    if let Some(p) = g.port
        && !(1..=65535).contains(&p)
    {
        return Err(format!("port: {p} is not 1..65535"));
    }
    if g.priority > 65535 || g.weight > 65535 {
        return Err("priority/weight: must be 0..65535".into());
    }
    Ok(())
}

/// True for `+` followed by 7 to 15 digits, the first not 0.
pub(crate) fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Parses `a.b.c.d`, `a.b.c.d/n`, `::1` or `2001:db8::/32`.
pub(crate) fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
    };
    Ok((ip, len))
}

/// A failover rule: `timeout`, an exact code, or a class (`5xx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failover {
    Timeout,
    Code(u32),
    Class(u32),
}

pub(crate) fn parse_failover(s: &str) -> Option<Failover> {
    if s == "timeout" {
        return Some(Failover::Timeout);
    }
    let b = s.as_bytes();
    if b.len() != 3 || !(b'3'..=b'6').contains(&b[0]) {
        return None;
    }
    if &b[1..] == b"xx" {
        return Some(Failover::Class(u32::from(b[0] - b'0')));
    }
    s.parse().ok().map(Failover::Code)
}
