//! Source address ACLs: which trunks' carriers may send from an address.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// An IPv4 or IPv6 network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Errors parsing a CIDR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid CIDR {0:?}")]
pub struct CidrError(pub String);

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) compare as IPv4.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::/n`, or a bare address (a host route).
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| err())?,
                Some(p.parse::<u8>().map_err(|_| err())?),
            ),
            None => (s.trim().parse::<IpAddr>().map_err(|_| err())?, None),
        };
        let addr = normalize(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix })
    }

    /// True when `ip` is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, normalize(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// All trunks' ACLs, by trunk id: a trunk's networks are replaced or
/// removed as one when the trunk changes.
#[derive(Debug, Default, Clone)]
pub struct Acl {
    by_trunk: BTreeMap<String, Vec<Cidr>>,
}

impl Acl {
    /// Adds a network to a trunk's (tests build ACLs this way).
    #[cfg(test)]
    pub fn add(&mut self, cidr: Cidr, trunk_id: &str) {
        self.by_trunk
            .entry(trunk_id.to_owned())
            .or_default()
            .push(cidr);
    }

    /// Replaces a trunk's networks (none: the trunk takes no calls by
    /// source address).
    pub fn set(&mut self, trunk_id: &str, cidrs: Vec<Cidr>) {
        if cidrs.is_empty() {
            self.by_trunk.remove(trunk_id);
        } else {
            self.by_trunk.insert(trunk_id.to_owned(), cidrs);
        }
    }

    /// Forgets a trunk's networks.
    pub fn remove(&mut self, trunk_id: &str) {
        self.by_trunk.remove(trunk_id);
    }

    /// Ids of every trunk whose allowedSources contain `ip`, by id (the
    /// operator's configuration order).
    pub fn trunks_for(&self, ip: IpAddr) -> Vec<&str> {
        self.by_trunk
            .iter()
            .filter(|(_, cidrs)| cidrs.iter().any(|c| c.contains(ip)))
            .map(|(t, _)| t.as_str())
            .collect()
    }

    /// True when some trunk's allowedSources contain `ip` (the SIP rate
    /// limiter asks this for every packet).
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.by_trunk
            .values()
            .any(|cidrs| cidrs.iter().any(|c| c.contains(ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn v4_and_v6_networks() {
        let c = Cidr::parse("10.1.0.0/16").expect("valid");
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "v4-mapped source");
        let h = Cidr::parse("127.0.0.1").expect("host");
        assert!(h.contains(ip("127.0.0.1")) && !h.contains(ip("127.0.0.2")));
        let all = Cidr::parse("0.0.0.0/0").expect("any");
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let v6 = Cidr::parse("2001:db8::/32").expect("v6");
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::1/128").expect("v6 host").contains(ip("::1")));
    }

    #[test]
    fn invalid_cidrs() {
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn acl_lists_matching_trunks_once() {
        let mut acl = Acl::default();
        acl.add(Cidr::parse("10.0.0.0/8").expect("v"), "ns/a");
        acl.add(Cidr::parse("10.1.0.0/16").expect("v"), "ns/b");
        acl.add(Cidr::parse("10.1.2.3").expect("v"), "ns/a");
        assert_eq!(acl.trunks_for(ip("10.1.2.3")), vec!["ns/a", "ns/b"]);
        assert!(acl.trunks_for(ip("192.168.0.1")).is_empty());
        assert!(acl.allows(ip("10.9.9.9")) && !acl.allows(ip("192.168.0.1")));
    }

    #[test]
    fn a_trunks_networks_change_and_go_as_one() {
        let mut acl = Acl::default();
        acl.add(Cidr::parse("10.0.0.0/8").expect("v"), "ns/a");
        acl.add(Cidr::parse("192.168.1.0/24").expect("v"), "ns/b");
        acl.set("ns/a", vec![Cidr::parse("172.16.0.0/12").expect("v")]);
        assert!(
            acl.trunks_for(ip("10.1.1.1")).is_empty(),
            "old network gone"
        );
        assert_eq!(acl.trunks_for(ip("172.16.5.5")), vec!["ns/a"]);
        acl.set("ns/a", vec![]);
        assert!(!acl.allows(ip("172.16.5.5")));
        acl.remove("ns/b");
        assert!(!acl.allows(ip("192.168.1.9")));
    }
}
