//! The egress guard: which addresses agent WebSockets and status webhooks
//! may connect to.
//!
//! Agent and webhook URLs come from tenants (PhoneNumbers, call-API agent
//! overrides). Without a guard a URL naming the node's own admin port, a
//! cloud metadata endpoint or any cluster-internal service would let a tenant
//! act from inside the node's network (one call to `ws://127.0.0.1:9090/drain`
//! stopped a node taking calls). So a target host is resolved once, every
//! address it resolves to is checked, and the connection goes to a checked
//! address: there is no second resolution, so DNS rebinding cannot swap it.
//!
//! Refused by default: unspecified, loopback, link-local (169.254.0.0/16,
//! fe80::/10: metadata endpoints), multicast, broadcast and reserved, private
//! and cluster ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7),
//! their IPv4-mapped (`::ffff:a.b.c.d`) and NAT64 (`64:ff9b::/96`) forms, and
//! the node's own bind and advertise addresses. Two allow-lists lift rules:
//! the node's `--egress-allow` (operators and local runs; lifts every rule)
//! and a trunk's `agentEgress.allowedNetworks` (tenants' private agents;
//! lifts only the private/cluster ranges, never loopback, link-local or the
//! node itself).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::routing::acl::{Cidr, normalize};

/// Most addresses taken from one resolution (all are checked, the first
/// that connects is used).
const MAX_ADDRESSES: usize = 16;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// 0.0.0.0/8 or `::`.
    Unspecified,
    /// 127.0.0.0/8 or `::1`.
    Loopback,
    /// 169.254.0.0/16 or fe80::/10 (cloud metadata endpoints live here).
    LinkLocal,
    /// 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// 240.0.0.0/4 and 255.255.255.255.
    Reserved,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 (pod and service networks).
    Private,
    /// 100.64.0.0/10 (carrier-grade NAT; some clusters' pod networks).
    SharedAddressSpace,
    /// fc00::/7.
    UniqueLocal,
    /// One of this node's own bind or advertise addresses.
    OwnAddress,
}

impl Rule {
    /// A short name for logs and errors.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rule::Unspecified => "unspecified",
            Rule::Loopback => "loopback",
            Rule::LinkLocal => "link-local",
            Rule::Multicast => "multicast",
            Rule::Reserved => "reserved/broadcast",
            Rule::Private => "private",
            Rule::SharedAddressSpace => "shared address space",
            Rule::UniqueLocal => "unique local",
            Rule::OwnAddress => "this node's own address",
        }
    }

    /// True for the ranges a trunk's allow-list may open (private agents
    /// inside the cluster or a VPC). Loopback, link-local and the node's own
    /// addresses only open with the node's `--egress-allow`.
    pub fn trunk_may_allow(&self) -> bool {
        matches!(
            self,
            Rule::Private | Rule::SharedAddressSpace | Rule::UniqueLocal
        )
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The built-in rule `ip` falls under, if any (own addresses aside).
pub fn classify(ip: IpAddr) -> Option<Rule> {
    match normalize(ip) {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

fn classify_v4(a: Ipv4Addr) -> Option<Rule> {
    let o = a.octets();
    Some(match o {
        [0, ..] => Rule::Unspecified,
        [127, ..] => Rule::Loopback,
        [169, 254, ..] => Rule::LinkLocal,
        [224..=239, ..] => Rule::Multicast,
        [240..=255, ..] => Rule::Reserved,
        [10, ..] => Rule::Private,
        [172, 16..=31, ..] => Rule::Private,
        [192, 168, ..] => Rule::Private,
        [100, 64..=127, ..] => Rule::SharedAddressSpace,
        _ => return None,
    })
}

fn classify_v6(a: Ipv6Addr) -> Option<Rule> {
    let s = a.segments();
    if a.is_unspecified() {
        return Some(Rule::Unspecified);
    }
    if a.is_loopback() {
        return Some(Rule::Loopback);
    }
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address: judge that.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [hi, lo] = [s[6], s[7]];
        let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        return classify_v4(v4);
    }
    match s[0] {
        x if x & 0xffc0 == 0xfe80 => Some(Rule::LinkLocal),
        x if x & 0xff00 == 0xff00 => Some(Rule::Multicast),
        x if x & 0xfe00 == 0xfc00 => Some(Rule::UniqueLocal),
        _ => None,
    }
}

/// The private ranges a trunk's allow-list may open, as (network, prefix).
const TRUNK_RANGES: [(IpAddr, u8); 5] = [
    (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8),
    (IpAddr::V4(Ipv4Addr::new(172, 16, 0, 0)), 12),
    (IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)), 16),
    (IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)), 10),
    (IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)), 7),
];

/// Checks one entry of a trunk's `agentEgress.allowedNetworks`: a CIDR (or
/// address) wholly inside one of the private ranges. The error is for humans.
pub fn check_trunk_network(s: &str) -> Result<(), String> {
    Cidr::parse(s).map_err(|e| e.to_string())?;
    let (addr, len) = match s.trim().split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok(), l.parse::<u8>().ok()),
        None => (s.trim().parse::<IpAddr>().ok(), Some(128)),
    };
    let (Some(addr), Some(len)) = (addr, len) else {
        return Err(format!("invalid CIDR {s:?}"));
    };
    let addr = normalize(addr);
    let len = if addr.is_ipv4() { len.min(32) } else { len };
    let inside = TRUNK_RANGES.iter().any(|(net, plen)| {
        len >= *plen && Cidr::parse(&format!("{net}/{plen}")).is_ok_and(|r| r.contains(addr))
    });
    if inside {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 or fc00::/7 \
             (loopback, link-local and public networks cannot be opened per trunk)"
        ))
    }
}

/// Why a target was not connected to.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// An address of the target falls under a rule no allow-list lifts.
    #[error(
        "{target} refused by the egress guard: {addr} is {rule} (allow it with the trunk's agentEgress.allowedNetworks or the node's --egress-allow)"
    )]
    Refused {
        /// `scheme://host:port` (never the path or query: they may hold tokens).
        target: String,
        /// The refused address.
        addr: IpAddr,
        /// The rule it falls under.
        rule: Rule,
    },
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
    /// Name resolution failed.
    #[error("{target}: cannot resolve the host: {reason}")]
    Resolve {
        /// `scheme://host:port`.
        target: String,
        /// The resolver's error.
        reason: String,
    },
    /// The name resolved to nothing.
    #[error("{target}: the host resolves to no address")]
    NoAddress {
        /// `scheme://host:port`.
        target: String,
    },
    /// Every checked address refused the TCP connection.
    #[error("{target}: connection failed: {reason}")]
    Connect {
        /// `scheme://host:port`.
        target: String,
        /// The last connect error.
        reason: String,
    },
}

impl EgressError {
    /// True when the guard refused the target (a policy decision, not a
    /// network failure: retrying will not help).
    pub fn is_refused(&self) -> bool {
        matches!(self, EgressError::Refused { .. })
    }
}

/// For the agent session: a refusal stays a refusal (the call's metric
/// reason), resolution and TCP failures are transport failures as before.
impl From<EgressError> for crate::agent::session::ConnectError {
    fn from(e: EgressError) -> Self {
        if e.is_refused() {
            crate::agent::session::ConnectError::Refused(e)
        } else {
            crate::agent::session::ConnectError::Transport(e.to_string())
        }
    }
}

/// The node-wide part of the policy: `--egress-allow` networks and the
/// node's own addresses. The default refuses every rule.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Vec<Cidr>,
    own: Vec<IpAddr>,
}

impl EgressPolicy {
    /// A policy allowing `allow` (every rule lifted there) and refusing the
    /// node's `own` addresses (unspecified ones are skipped: a 0.0.0.0 bind
    /// is covered by the unspecified and private rules).
    pub fn new(allow: Vec<Cidr>, own: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut own: Vec<IpAddr> = own
            .into_iter()
            .map(normalize)
            .filter(|ip| !ip.is_unspecified())
            .collect();
        own.sort();
        own.dedup();
        EgressPolicy { allow, own }
    }
}

/// The guard for one target: the node's policy plus the trunk's allowed
/// networks. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    policy: Arc<EgressPolicy>,
    trunk: Arc<[Cidr]>,
}

impl Egress {
    /// The node's policy with a trunk's `allowedNetworks` (entries that do
    /// not parse are skipped: the node's configuration check refused them).
    pub fn new(policy: Arc<EgressPolicy>, trunk_networks: &[String]) -> Self {
        let trunk = trunk_networks
            .iter()
            .filter_map(|s| Cidr::parse(s).ok())
            .collect();
        Egress { policy, trunk }
    }

    /// Ok when `ip` may be connected to, else the rule that refuses it.
    pub fn check(&self, ip: IpAddr) -> Result<(), Rule> {
        let ip = normalize(ip);
        if self.policy.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match classify(ip) {
            Some(r) if r.trunk_may_allow() && self.trunk.iter().any(|c| c.contains(ip)) => {}
            Some(r) => return Err(r),
            None => {}
        }
        // Checked after the ranges so that a loopback address is reported as
        // such; a trunk's allow-list never opens the node itself.
        if self.policy.own.contains(&ip) {
            return Err(Rule::OwnAddress);
        }
        Ok(())
    }

    /// Resolves `host` once and checks every address; refuses the target
    /// when any address is refused (a name must not mix public and internal
    /// addresses to slip through).
    pub async fn resolve(
        &self,
        scheme: &str,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, EgressError> {
        let addrs = resolve(scheme, host, port).await?;
        for a in &addrs {
            if let Err(rule) = self.check(a.ip()) {
                return Err(EgressError::Refused {
                    target: target(scheme, host, port),
                    addr: normalize(a.ip()),
                    rule,
                });
            }
        }
        Ok(addrs)
    }
}

/// `scheme://host:port`, for errors and logs.
fn target(scheme: &str, host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    // Port 0: the webhook resolver, which is not told the port.
    if port == 0 {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// The host of a URI without IPv6 brackets, and its port (the scheme's
/// default when absent).
pub fn host_port(uri: &hyper::Uri) -> Result<(&str, &str, u16), EgressError> {
    let scheme = uri.scheme_str().unwrap_or("");
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or(EgressError::NoHost)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(match scheme {
        "wss" | "https" => 443,
        _ => 80,
    });
    Ok((scheme, host, port))
}

async fn resolve(scheme: &str, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| EgressError::Resolve {
            target: target(scheme, host, port),
            reason: e.to_string(),
        })?
        .take(MAX_ADDRESSES)
        .collect();
    if addrs.is_empty() {
        return Err(EgressError::NoAddress {
            target: target(scheme, host, port),
        });
    }
    Ok(addrs)
}

/// Opens a TCP connection to the host of `uri` (ws, wss, http, https)
/// through `guard`: the addresses checked are the ones connected to, in the
/// resolver's order. `None` skips the checks (in-process tests only; the
/// bridge always passes a guard).
pub async fn connect(guard: Option<&Egress>, uri: &hyper::Uri) -> Result<TcpStream, EgressError> {
    let (scheme, host, port) = host_port(uri)?;
    let addrs = match guard {
        Some(g) => g.resolve(scheme, host, port).await?,
        None => resolve(scheme, host, port).await?,
    };
    let mut last = String::new();
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                // As tungstenite's own connect does: audio frames are small.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(EgressError::Connect {
        target: target(scheme, host, port),
        reason: last,
    })
}

/// A hyper-util resolver that hands the HTTP connector only addresses the
/// guard accepted (status webhooks): the connector connects to exactly
/// these, so nothing resolves the name a second time.
#[derive(Debug, Clone, Default)]
pub struct GuardedResolver {
    guard: Egress,
}

impl GuardedResolver {
    /// A resolver checking every answer with `guard`.
    pub fn new(guard: Egress) -> Self {
        GuardedResolver { guard }
    }
}

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = EgressError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, EgressError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), EgressError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let guard = self.guard.clone();
        Box::pin(async move {
            // The connector sets the URL's port on what we return.
            let addrs = guard.resolve("http", name.as_str(), 0).await?;
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn strict() -> Egress {
        Egress::default()
    }

    #[test]
    fn every_refused_range_is_classified() {
        let cases = [
            ("0.0.0.0", Rule::Unspecified),
            ("0.1.2.3", Rule::Unspecified),
            ("::", Rule::Unspecified),
            ("127.0.0.1", Rule::Loopback),
            ("127.255.255.254", Rule::Loopback),
            ("::1", Rule::Loopback),
            ("169.254.169.254", Rule::LinkLocal),
            ("169.254.0.1", Rule::LinkLocal),
            ("fe80::1", Rule::LinkLocal),
            ("febf::1", Rule::LinkLocal),
            ("224.0.0.1", Rule::Multicast),
            ("239.255.255.250", Rule::Multicast),
            ("ff02::1", Rule::Multicast),
            ("255.255.255.255", Rule::Reserved),
            ("240.0.0.1", Rule::Reserved),
            ("10.0.0.1", Rule::Private),
            ("10.255.255.255", Rule::Private),
            ("172.16.0.1", Rule::Private),
            ("172.31.255.255", Rule::Private),
            ("192.168.1.1", Rule::Private),
            ("100.64.0.1", Rule::SharedAddressSpace),
            ("100.127.255.255", Rule::SharedAddressSpace),
            ("fc00::1", Rule::UniqueLocal),
            ("fd12:3456::1", Rule::UniqueLocal),
        ];
        for (a, rule) in cases {
            assert_eq!(classify(ip(a)), Some(rule), "{a}");
            assert_eq!(strict().check(ip(a)), Err(rule), "{a}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "2001:4860:4860::8888",
            "fec0::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(classify(ip(a)), None, "{a}");
            assert_eq!(strict().check(ip(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn mapped_and_nat64_forms_are_judged_as_ipv4() {
        assert_eq!(classify(ip("::ffff:127.0.0.1")), Some(Rule::Loopback));
        assert_eq!(
            classify(ip("::ffff:169.254.169.254")),
            Some(Rule::LinkLocal)
        );
        assert_eq!(classify(ip("::ffff:10.1.2.3")), Some(Rule::Private));
        assert_eq!(classify(ip("64:ff9b::a9fe:a9fe")), Some(Rule::LinkLocal));
        assert_eq!(classify(ip("64:ff9b::7f00:1")), Some(Rule::Loopback));
        assert_eq!(classify(ip("64:ff9b::808:808")), None);
    }

    #[test]
    fn the_nodes_own_addresses_are_refused() {
        let own = Arc::new(EgressPolicy::new(
            vec![],
            [ip("203.0.113.7"), ip("0.0.0.0"), ip("::ffff:198.51.100.2")],
        ));
        let g = Egress::new(own, &[]);
        assert_eq!(g.check(ip("203.0.113.7")), Err(Rule::OwnAddress));
        assert_eq!(g.check(ip("::ffff:203.0.113.7")), Err(Rule::OwnAddress));
        assert_eq!(g.check(ip("198.51.100.2")), Err(Rule::OwnAddress));
        assert_eq!(g.check(ip("203.0.113.8")), Ok(()));
        // A public own address stays refused whatever the trunk allows.
        let own = Arc::new(EgressPolicy::new(vec![], [ip("10.0.0.5")]));
        let g = Egress::new(own, &["10.0.0.0/8".into()]);
        assert_eq!(g.check(ip("10.0.0.5")), Err(Rule::OwnAddress));
        assert_eq!(g.check(ip("10.0.0.6")), Ok(()));
    }

    #[test]
    fn a_trunk_allow_list_opens_only_private_ranges() {
        let g = Egress::new(
            Arc::default(),
            &[
                "10.96.0.0/12".into(),
                "fd00::/8".into(),
                "127.0.0.0/8".into(),
                "169.254.0.0/16".into(),
                "not a cidr".into(),
            ],
        );
        assert_eq!(g.check(ip("10.96.0.10")), Ok(()));
        assert_eq!(g.check(ip("::ffff:10.96.0.10")), Ok(()));
        assert_eq!(g.check(ip("10.1.0.1")), Err(Rule::Private));
        assert_eq!(g.check(ip("fd00::5")), Ok(()));
        assert_eq!(g.check(ip("127.0.0.1")), Err(Rule::Loopback));
        assert_eq!(g.check(ip("169.254.169.254")), Err(Rule::LinkLocal));
    }

    #[test]
    fn the_node_allow_list_opens_every_rule() {
        let p = Arc::new(EgressPolicy::new(
            vec![
                Cidr::parse("127.0.0.0/8").expect("cidr"),
                Cidr::parse("::1").expect("cidr"),
            ],
            [ip("127.0.0.1")],
        ));
        let g = Egress::new(p, &[]);
        assert_eq!(
            g.check(ip("127.0.0.1")),
            Ok(()),
            "own address allowed by flag"
        );
        assert_eq!(g.check(ip("127.0.0.9")), Ok(()));
        assert_eq!(g.check(ip("::1")), Ok(()));
        assert_eq!(g.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(g.check(ip("169.254.169.254")), Err(Rule::LinkLocal));
    }

    #[test]
    fn trunk_networks_must_lie_inside_a_private_range() {
        for ok in [
            "10.96.0.0/12",
            "10.0.0.0/8",
            "172.20.0.0/16",
            "192.168.1.10",
            "100.64.0.0/10",
            "fd00::/8",
            "fc00::/7",
        ] {
            assert_eq!(check_trunk_network(ok), Ok(()), "{ok}");
        }
        for bad in [
            "0.0.0.0/0",
            "10.0.0.0/7",
            "127.0.0.0/8",
            "127.0.0.1",
            "169.254.169.254",
            "8.8.8.0/24",
            "172.0.0.0/8",
            "::/0",
            "::1",
            "fe80::/10",
            "nonsense",
        ] {
            assert!(check_trunk_network(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn resolution_checks_every_address_and_names_only_the_receiver() {
        let uri: hyper::Uri = "ws://127.0.0.1:9090/drain?token=SECRET"
            .parse()
            .expect("uri");
        let err = connect(Some(&strict()), &uri).await.expect_err("refused");
        assert!(err.is_refused());
        let text = err.to_string();
        assert!(
            text.contains("ws://127.0.0.1:9090") && text.contains("loopback"),
            "{text}"
        );
        assert!(
            !text.contains("SECRET") && !text.contains("/drain"),
            "{text}"
        );
        // A name that resolves to loopback is refused like the literal.
        let uri: hyper::Uri = "ws://localhost:1/x".parse().expect("uri");
        let err = connect(Some(&strict()), &uri).await.expect_err("refused");
        assert!(err.is_refused(), "{err}");
        let uri: hyper::Uri = "wss://[::1]/x".parse().expect("uri");
        match connect(Some(&strict()), &uri).await {
            Err(EgressError::Refused { target, rule, .. }) => {
                assert_eq!(target, "wss://[::1]:443");
                assert_eq!(rule, Rule::Loopback);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_allowed_address_is_the_one_connected_to() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let p = Arc::new(EgressPolicy::new(
            vec![Cidr::parse("127.0.0.1").expect("cidr")],
            [],
        ));
        let uri: hyper::Uri = format!("ws://127.0.0.1:{port}/agent").parse().expect("uri");
        let s = connect(Some(&Egress::new(p, &[])), &uri)
            .await
            .expect("allowed");
        assert_eq!(s.peer_addr().expect("peer").port(), port);
    }
}
