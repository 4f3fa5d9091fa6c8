//! HTTP digest authentication for SIP (RFC 3261 22, RFC 2617, RFC 7616):
//! answering a carrier's 401/407 challenge, and challenging inbound INVITEs
//! with expiring nonces bound to the caller's address, strictly increasing
//! nonce-counts in a bounded table, the digest uri checked against the
//! Request-URI, and constant-time comparisons.
//!
//! Nothing here logs: responses and passwords must never reach a log line.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest as _, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::sip::headers::SipUri;

/// Errors interpreting a challenge or credentials header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// Not a `Digest` header.
    #[error("not a Digest header")]
    NotDigest,
    /// A required parameter is missing.
    #[error("missing digest parameter {0}")]
    Missing(&'static str),
    /// An algorithm we do not implement.
    #[error("unsupported digest algorithm {0:?}")]
    Algorithm(String),
    /// A parameter given twice.
    #[error("repeated digest parameter")]
    Repeated,
}

/// Hash algorithms we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (RFC 2617)
    Md5,
    /// MD5-sess
    Md5Sess,
    /// SHA-256 (RFC 7616)
    Sha256,
    /// SHA-256-sess
    Sha256Sess,
}

impl Algorithm {
    fn parse(s: Option<&str>) -> Result<Algorithm, DigestError> {
        match s.map(|s| s.to_ascii_uppercase()).as_deref() {
            None | Some("MD5") => Ok(Algorithm::Md5),
            Some("MD5-SESS") => Ok(Algorithm::Md5Sess),
            Some("SHA-256") => Ok(Algorithm::Sha256),
            Some("SHA-256-SESS") => Ok(Algorithm::Sha256Sess),
            Some(other) => Err(DigestError::Algorithm(other.to_owned())),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex::encode(Md5::digest(data.as_bytes())),
            Algorithm::Sha256 | Algorithm::Sha256Sess => {
                hex::encode(Sha256::digest(data.as_bytes()))
            }
        }
    }

    fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }
}

/// Parses `Digest k=v, k="v"` into pairs (keys lower-cased).
pub fn parse_params(value: &str) -> Result<HashMap<String, String>, DigestError> {
    let v = value.trim();
    let rest = v
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case("digest"))
        .map(|_| &v[6..])
        .ok_or(DigestError::NotDigest)?;
    let mut out = HashMap::new();
    for part in crate::sip::message::split_list(rest) {
        if let Some((k, val)) = part.split_once('=') {
            let val = val.trim();
            let val = val
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(val);
            out.insert(k.trim().to_ascii_lowercase(), val.replace("\\\"", "\""));
        }
    }
    Ok(out)
}

/// A challenge from a WWW-Authenticate or Proxy-Authenticate header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// realm
    pub realm: String,
    /// nonce
    pub nonce: String,
    /// opaque, echoed back
    pub opaque: Option<String>,
    /// algorithm
    pub algorithm: Algorithm,
    /// True when the server offered qop=auth.
    pub qop_auth: bool,
    /// stale=true: the nonce expired but our credentials were fine.
    pub stale: bool,
}

impl Challenge {
    /// Parses a challenge header value.
    pub fn parse(value: &str) -> Result<Challenge, DigestError> {
        let p = parse_params(value)?;
        Ok(Challenge {
            realm: p
                .get("realm")
                .cloned()
                .ok_or(DigestError::Missing("realm"))?,
            nonce: p
                .get("nonce")
                .cloned()
                .ok_or(DigestError::Missing("nonce"))?,
            opaque: p.get("opaque").cloned(),
            algorithm: Algorithm::parse(p.get("algorithm").map(String::as_str))?,
            qop_auth: p
                .get("qop")
                .is_some_and(|q| q.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth"))),
            stale: p
                .get("stale")
                .is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn response_hash(
    alg: Algorithm,
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>, // (nc, cnonce)
) -> String {
    let mut ha1 = alg.hash(&format!("{user}:{realm}:{password}"));
    if alg.is_sess() {
        let cnonce = qop.map(|q| q.1).unwrap_or("");
        ha1 = alg.hash(&format!("{ha1}:{nonce}:{cnonce}"));
    }
    let ha2 = alg.hash(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => alg.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => alg.hash(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// The `response` an Authorization header must carry, computed over the
/// header's own fields (username, realm, nonce, uri, algorithm, and nc and
/// cnonce when present) with `password` and `method`. `None` when a field
/// the hash needs is missing or the algorithm is unknown. The fuzz target
/// uses it to build answers that get past the response check.
pub fn expected_response(header: &str, password: &str, method: &str) -> Option<String> {
    let p = parse_params(header).ok()?;
    let get = |k: &str| p.get(k).map(String::as_str);
    let alg = Algorithm::parse(get("algorithm")).ok()?;
    let qop = match (get("nc"), get("cnonce")) {
        (Some(nc), Some(cnonce)) => Some((nc, cnonce)),
        _ => None,
    };
    Some(response_hash(
        alg,
        get("username")?,
        get("realm")?,
        password,
        method,
        get("uri")?,
        get("nonce")?,
        qop,
    ))
}

/// Builds the Authorization / Proxy-Authorization value answering a
/// challenge. `nc` counts requests sent with this nonce (starting at 1).
pub fn authorization(
    ch: &Challenge,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> String {
    let nc_s = format!("{nc:08x}");
    let qop = ch.qop_auth.then_some((nc_s.as_str(), cnonce));
    let resp = response_hash(
        ch.algorithm,
        user,
        &ch.realm,
        password,
        method,
        uri,
        &ch.nonce,
        qop,
    );
    let mut v = format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}",
        ch.realm,
        ch.nonce,
        ch.algorithm.as_str()
    );
    if ch.qop_auth {
        v.push_str(&format!(", qop=auth, nc={nc_s}, cnonce=\"{cnonce}\""));
    }
    if let Some(o) = &ch.opaque {
        v.push_str(&format!(", opaque=\"{o}\""));
    }
    v
}

/// Algorithms our challenge offers; an answer using any other is refused
/// (a client must not pick a weaker or `-sess` variant on its own).
const OFFERED: &[Algorithm] = &[Algorithm::Md5];

/// Seconds a nonce's timestamp may lie in the future (clock steps).
const FUTURE_SLACK_SECS: u64 = 5;

/// Default bound of the nonce-count table (entries; about 40 bytes each).
pub const DEFAULT_MAX_TRACKED_NONCES: usize = 65_536;

/// Why an Authorization was refused. Variants are in the order of the
/// checks, so of several refusals (one per candidate trunk) the greatest
/// got furthest. Only `Stale` means "ours, right credentials, expired".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DigestFailure {
    /// No Authorization header: the normal first leg, not an attack.
    Missing,
    /// Not a usable Digest answer: a parameter missing or repeated, a
    /// nonce-count that is not 8 hex digits.
    Malformed,
    /// An algorithm we did not offer.
    Algorithm,
    /// Another username than the trunk's.
    Username,
    /// Another realm than the one we challenged with.
    Realm,
    /// A nonce we did not issue, or issued to another source address.
    UnknownNonce,
    /// No `qop=auth` with `nc` and `cnonce`, although we offered it.
    QopMissing,
    /// The digest `uri` is not the Request-URI (RFC 7616 3.4.6).
    UriMismatch,
    /// The response does not match (password, method or a hashed field).
    BadResponse,
    /// Right credentials on one of our nonces that has expired.
    Stale,
    /// A nonce-count not above the highest already accepted for the nonce.
    Replay,
}

impl DigestFailure {
    /// The metric label (`switchboard_sip_digest_failures_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            DigestFailure::Missing => "missing",
            DigestFailure::Malformed => "malformed",
            DigestFailure::Algorithm => "algorithm",
            DigestFailure::Username => "username",
            DigestFailure::Realm => "realm",
            DigestFailure::UnknownNonce => "unknown_nonce",
            DigestFailure::QopMissing => "qop_missing",
            DigestFailure::UriMismatch => "uri_mismatch",
            DigestFailure::BadResponse => "bad_response",
            DigestFailure::Stale => "stale",
            DigestFailure::Replay => "replay",
        }
    }
}

/// The result of checking credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accept the request.
    Ok,
    /// Challenge (again), for this reason.
    Refused(DigestFailure),
}

impl Verdict {
    /// True when the new challenge should carry `stale=true`: only when the
    /// nonce was ours and expired while the credentials were right.
    pub fn stale(self) -> bool {
        self == Verdict::Refused(DigestFailure::Stale)
    }
}

/// What an Authorization header is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The Authorization header value, if the request had one.
    pub header: Option<&'a str>,
    /// The request method (`INVITE`).
    pub method: &'a str,
    /// The Request-URI as written in the request line.
    pub request_uri: &'a str,
    /// Where the request came from (nonces are bound to it).
    pub source: IpAddr,
    /// The realm we challenge with.
    pub realm: &'a str,
    /// The expected username.
    pub username: &'a str,
    /// The expected password.
    pub password: &'a str,
}

/// Server side: issues nonces and checks answers.
pub struct DigestServer {
    key: [u8; 32],
    lifetime: Duration,
    max_tracked: usize,
    nonces: Mutex<NonceTable>,
}

/// Highest nonce-count accepted per nonce, for nonces not yet expired.
#[derive(Default)]
struct NonceTable {
    /// Keyed by (issue time, salt) so the oldest nonce is the first entry.
    seen: BTreeMap<(u64, u64), u32>,
    /// Nonces issued at or before this time count as expired: raised when
    /// the table is full and its oldest entries are dropped, so a dropped
    /// nonce can never be replayed from nc=1 again.
    floor: Option<u64>,
}

impl NonceTable {
    fn expire(&mut self, now: u64, lifetime: u64) {
        while let Some(e) = self.seen.first_entry()
            && now.saturating_sub(e.key().0) > lifetime
        {
            e.remove();
        }
    }

    /// Makes room for one entry by expiring the oldest issue second.
    fn evict_oldest(&mut self) {
        let Some(((ts, _), _)) = self.seen.pop_first() else {
            return;
        };
        self.floor = Some(self.floor.map_or(ts, |f| f.max(ts)));
        while let Some(e) = self.seen.first_entry()
            && e.key().0 <= ts
        {
            e.remove();
        }
    }
}

fn ct_str_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn is_lower_hex(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Splits one of our nonces, `<ts hex>.<salt 16 hex>.<mac 32 hex>`, in its
/// canonical form only (so one nonce has exactly one spelling).
fn parse_nonce(nonce: &str) -> Option<(u64, u64, &str)> {
    let mut it = nonce.split('.');
    let (ts, salt, mac) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some()
        || !is_lower_hex(ts, 1..=16)
        || (ts.len() > 1 && ts.starts_with('0'))
        || !is_lower_hex(salt, 16..=16)
        || !is_lower_hex(mac, 32..=32)
    {
        return None;
    }
    let ts = u64::from_str_radix(ts, 16).ok()?;
    let salt = u64::from_str_radix(salt, 16).ok()?;
    Some((ts, salt, mac))
}

/// A nonce-count: exactly 8 hex digits (RFC 7616 3.4).
fn parse_nc(nc: &str) -> Option<u32> {
    if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(nc, 16).ok()
}

/// Whether the digest `uri` names the Request-URI: equal text, or the same
/// scheme, user, host (case-insensitive, RFC 3261 19.1.4) and port. A digest
/// uri without a user part (`sip:host:port`, SIPp's default and some older
/// carriers') names the node itself and matches when scheme, host and port
/// do: it cannot be moved to another node, and replaying it for another
/// number still fails the nonce-count and source-address checks. Any other
/// difference (another number, host or port) is a mismatch.
fn uri_matches(digest_uri: &str, request_uri: &str) -> bool {
    let (d, r) = (digest_uri.trim(), request_uri.trim());
    if d.is_empty() || r.is_empty() {
        return false;
    }
    if d == r {
        return true;
    }
    let scheme = |s: &str| s.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    if scheme(d).is_none() || scheme(d) != scheme(r) {
        return false;
    }
    match (SipUri::parse(d), SipUri::parse(r)) {
        (Ok(a), Ok(b)) => {
            (a.user == b.user || a.user.is_none())
                && a.host.eq_ignore_ascii_case(&b.host)
                && a.port == b.port
        }
        _ => false,
    }
}

/// Like [`parse_params`], but a repeated parameter is an error: two `uri`s
/// or `nc`s would let different checks read different values.
fn parse_unique(value: &str) -> Result<HashMap<String, String>, DigestError> {
    let v = value.trim();
    let rest = v
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case("digest"))
        .and_then(|_| v.get(6..))
        .ok_or(DigestError::NotDigest)?;
    let parts = crate::sip::message::split_list(rest);
    let p = parse_params(value)?;
    let named = parts.iter().filter(|p| p.contains('=')).count();
    if named != p.len() {
        return Err(DigestError::Repeated);
    }
    Ok(p)
}

impl DigestServer {
    /// A server with a random key and the given nonce lifetime, tracking
    /// nonce-counts of at most [`DEFAULT_MAX_TRACKED_NONCES`] nonces.
    pub fn new(lifetime: Duration) -> Self {
        Self::with_limit(lifetime, DEFAULT_MAX_TRACKED_NONCES)
    }

    /// A server tracking at most `max_tracked` nonces (at least 1). When
    /// full, the oldest nonces are expired early (their users get a stale
    /// challenge and retry), never forgotten while still valid.
    pub fn with_limit(lifetime: Duration, max_tracked: usize) -> Self {
        DigestServer {
            key: rand::random(),
            lifetime,
            max_tracked: max_tracked.max(1),
            nonces: Mutex::new(NonceTable::default()),
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Keyed hash of a nonce's fields. Every input has a fixed length, so
    /// the key-sandwiched SHA-256 cannot be extended.
    fn mac(&self, ts: u64, salt: u64, source: IpAddr) -> String {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(ts.to_be_bytes());
        h.update(salt.to_be_bytes());
        // One address, one value: an IPv4-mapped IPv6 peer is its IPv4.
        match source.to_canonical() {
            IpAddr::V4(a) => {
                h.update([4u8]);
                h.update(a.octets());
            }
            IpAddr::V6(a) => {
                h.update([6u8]);
                h.update(a.octets());
            }
        }
        h.update(self.key);
        hex::encode(&h.finalize()[..16])
    }

    /// A fresh nonce for `source`: issue time, a random salt (every
    /// challenge gets its own nonce, so concurrent callers never share a
    /// nonce-count) and a keyed hash binding both to the source address.
    /// Nonces need no storage until they are answered and cannot be forged.
    pub fn nonce(&self, source: IpAddr) -> String {
        self.nonce_at(Self::now(), source)
    }

    fn nonce_at(&self, ts: u64, source: IpAddr) -> String {
        let salt: u64 = rand::random();
        format!("{ts:x}.{salt:016x}.{}", self.mac(ts, salt, source))
    }

    /// The challenge header value for `realm`, with a nonce for `source`.
    pub fn challenge(&self, realm: &str, stale: bool, source: IpAddr) -> String {
        let mut v = format!(
            "Digest realm=\"{realm}\", nonce=\"{}\", algorithm={}, qop=\"auth\"",
            self.nonce(source),
            OFFERED[0].as_str()
        );
        if stale {
            v.push_str(", stale=true");
        }
        v
    }

    /// Checks an Authorization header (see [`Check`]).
    pub fn verify(&self, check: &Check<'_>) -> Verdict {
        self.verify_at(check, Self::now())
    }

    fn verify_at(&self, c: &Check<'_>, now: u64) -> Verdict {
        use DigestFailure as F;
        let Some(header) = c.header else {
            return Verdict::Refused(F::Missing);
        };
        let Ok(p) = parse_unique(header) else {
            return Verdict::Refused(F::Malformed);
        };
        let get = |k: &str| p.get(k).map(String::as_str);
        let (Some(user), Some(realm), Some(nonce), Some(uri), Some(resp)) = (
            get("username"),
            get("realm"),
            get("nonce"),
            get("uri"),
            get("response"),
        ) else {
            return Verdict::Refused(F::Malformed);
        };
        let alg = match Algorithm::parse(get("algorithm")) {
            Ok(a) if OFFERED.contains(&a) => a,
            _ => return Verdict::Refused(F::Algorithm),
        };
        if !ct_str_eq(user, c.username) {
            return Verdict::Refused(F::Username);
        }
        if !ct_str_eq(realm, c.realm) {
            return Verdict::Refused(F::Realm);
        }
        // Ours, and issued to this source?
        let Some((ts, salt, mac)) = parse_nonce(nonce) else {
            return Verdict::Refused(F::UnknownNonce);
        };
        if !ct_str_eq(&self.mac(ts, salt, c.source), mac) {
            return Verdict::Refused(F::UnknownNonce);
        }
        // We always offer qop=auth: an RFC 2069 answer has no nonce-count,
        // so nothing would tell it from its replays.
        let (Some(qop), Some(nc_text), Some(cnonce)) = (get("qop"), get("nc"), get("cnonce"))
        else {
            return Verdict::Refused(F::QopMissing);
        };
        if !qop.eq_ignore_ascii_case("auth") || cnonce.is_empty() {
            return Verdict::Refused(F::QopMissing);
        }
        let Some(nc) = parse_nc(nc_text) else {
            return Verdict::Refused(F::Malformed);
        };
        if !uri_matches(uri, c.request_uri) {
            return Verdict::Refused(F::UriMismatch);
        }
        let expected = response_hash(
            alg,
            c.username,
            c.realm,
            c.password,
            c.method,
            uri,
            nonce,
            Some((nc_text, cnonce)),
        );
        if !ct_str_eq(&expected, &resp.to_ascii_lowercase()) {
            return Verdict::Refused(F::BadResponse);
        }
        // Right password: from here on only freshness can fail. The lock
        // is held for a few map operations, never across an await.
        let life = self.lifetime.as_secs();
        let mut table = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        table.expire(now, life);
        let expired = |t: &NonceTable| {
            now.saturating_sub(ts) > life
                || ts > now.saturating_add(FUTURE_SLACK_SECS)
                || t.floor.is_some_and(|f| ts <= f)
        };
        if expired(&table) {
            return Verdict::Refused(F::Stale);
        }
        let key = (ts, salt);
        let last = table.seen.get(&key).copied();
        if nc <= last.unwrap_or(0) {
            return Verdict::Refused(F::Replay);
        }
        if last.is_none() {
            while table.seen.len() >= self.max_tracked {
                table.evict_oldest();
            }
            if expired(&table) {
                return Verdict::Refused(F::Stale);
            }
        }
        table.seen.insert(key, nc);
        Verdict::Ok
    }

    /// Nonces whose nonce-counts are tracked right now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.nonces.lock().map(|t| t.seen.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example_vector() {
        // RFC 2617 3.5 (HTTP example; the algorithm is the same).
        let ch = Challenge::parse(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .expect("valid");
        let v = authorization(
            &ch,
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            1,
            "0a4f113b",
        );
        assert!(
            v.contains(r#"response="6629fae49393a05397450978507c4ef1""#),
            "{v}"
        );
        assert!(v.contains("nc=00000001"));
    }

    #[test]
    fn rfc7616_sha256_vector() {
        let ch = Challenge::parse(
            r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        )
        .expect("valid");
        let v = authorization(
            &ch,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            1,
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        );
        assert!(
            v.contains("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
            "{v}"
        );
    }

    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10));
    const RURI: &str = "sip:+14155550100@sip.example.com:5060";

    #[test]
    fn expected_response_is_what_the_server_accepts() {
        let server = DigestServer::new(Duration::from_secs(60));
        let header = format!(
            r#"Digest username="u", realm="sb", nonce="{}", uri="{RURI}", response="@R", algorithm=MD5, qop=auth, nc=00000001, cnonce="c1""#,
            server.nonce(SRC)
        );
        let response = expected_response(&header, "p", "INVITE").expect("all fields present");
        let header = header.replace("@R", &response);
        assert_eq!(server.verify(&check(Some(&header), SRC)), Verdict::Ok);
        assert_eq!(
            expected_response(&header, "wrong", "INVITE").map(|r| r == response),
            Some(false)
        );
        assert_eq!(
            expected_response(r#"Digest username="u""#, "p", "INVITE"),
            None
        );
    }

    fn check(header: Option<&str>, source: IpAddr) -> Check<'_> {
        Check {
            header,
            method: "INVITE",
            request_uri: RURI,
            source,
            realm: "sb",
            username: "u",
            password: "p",
        }
    }

    /// An answer built field by field; the response is computed over the
    /// fields as set, so a case changes exactly one thing.
    struct Answer {
        fields: Vec<(&'static str, String)>,
        password: &'static str,
        method: &'static str,
        tail: &'static str,
    }

    impl Answer {
        fn new(nonce: &str) -> Answer {
            let f = |k, v: &str| (k, v.to_owned());
            Answer {
                fields: vec![
                    f("username", "u"),
                    f("realm", "sb"),
                    f("nonce", nonce),
                    f("uri", RURI),
                    f("algorithm", "MD5"),
                    f("qop", "auth"),
                    f("nc", "00000001"),
                    f("cnonce", "c1"),
                ],
                password: "p",
                method: "INVITE",
                tail: "",
            }
        }
        fn set(mut self, k: &'static str, v: &str) -> Answer {
            self.fields.retain(|(n, _)| *n != k);
            self.fields.push((k, v.to_owned()));
            self
        }
        fn without(mut self, k: &str) -> Answer {
            self.fields.retain(|(n, _)| *n != k);
            self
        }
        fn get(&self, k: &str) -> Option<&str> {
            self.fields
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.as_str())
        }
        fn header(&self) -> String {
            let g = |k| self.get(k).unwrap_or("");
            let alg = Algorithm::parse(self.get("algorithm")).unwrap_or(Algorithm::Md5);
            let qop = self
                .get("qop")
                .map(|_| (g("nc"), self.get("cnonce").unwrap_or("")));
            let resp = response_hash(
                alg,
                g("username"),
                g("realm"),
                self.password,
                self.method,
                g("uri"),
                g("nonce"),
                qop,
            );
            let mut parts: Vec<String> = self
                .fields
                .iter()
                .map(|(k, v)| match *k {
                    "algorithm" | "qop" | "nc" => format!("{k}={v}"),
                    _ => format!("{k}=\"{v}\""),
                })
                .collect();
            parts.push(format!("response=\"{resp}\""));
            format!("Digest {}{}", parts.join(", "), self.tail)
        }
    }

    #[test]
    fn verification_rules_table() {
        use DigestFailure as F;
        let s = DigestServer::new(Duration::from_secs(60));
        let now = DigestServer::now();
        let n = s.nonce_at(now, SRC);
        let other: IpAddr = "192.0.2.11".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.10".parse().expect("ip");
        let a = || Answer::new(&n);
        let ok = Verdict::Ok;
        let no = Verdict::Refused;
        let h = a().header();
        let resp = parse_params(&h).expect("own header")["response"].clone();
        let upper_resp = h.replace(&resp, &resp.to_ascii_uppercase());
        // One line per case: (what, header, source, expected verdict).
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<String>, IpAddr, Verdict)> = vec![
            ("valid", Some(a().header()), SRC, ok),
            ("IPv4-mapped source is the same address", Some(a().header()), mapped, ok),
            ("host compared case-insensitively", Some(a().set("uri", "sip:+14155550100@SIP.Example.COM:5060").header()), SRC, ok),
            ("upper-case response hex", Some(upper_resp), SRC, ok),
            ("no header", None, SRC, no(F::Missing)),
            ("Basic", Some("Basic dTpw".into()), SRC, no(F::Malformed)),
            ("garbage", Some("Digest nonsense".into()), SRC, no(F::Malformed)),
            ("no response", Some(format!("Digest username=\"u\", realm=\"sb\", nonce=\"{n}\", uri=\"{RURI}\"")), SRC, no(F::Malformed)),
            ("repeated uri", Some(Answer { tail: ", uri=\"sip:+19995550000@sip.example.com:5060\"", ..a() }.header()), SRC, no(F::Malformed)),
            ("nc not 8 hex digits", Some(a().set("nc", "1").header()), SRC, no(F::Malformed)),
            ("nc not hex", Some(a().set("nc", "0000000g").header()), SRC, no(F::Malformed)),
            ("SHA-256 not offered", Some(a().set("algorithm", "SHA-256").header()), SRC, no(F::Algorithm)),
            ("MD5-sess not offered", Some(a().set("algorithm", "MD5-sess").header()), SRC, no(F::Algorithm)),
            ("unknown algorithm", Some(a().set("algorithm", "AKAv1-MD5").header()), SRC, no(F::Algorithm)),
            ("no algorithm means MD5", Some(a().without("algorithm").header()), SRC, ok),
            ("other username", Some(a().set("username", "mallory").header()), SRC, no(F::Username)),
            ("other realm", Some(a().set("realm", "other").header()), SRC, no(F::Realm)),
            ("forged nonce", Some(Answer::new(&format!("{now:x}.{:016x}.{}", 7, "0".repeat(32))).header()), SRC, no(F::UnknownNonce)),
            ("expired forged nonce is not stale", Some(Answer::new(&format!("{:x}.{:016x}.{}", now - 999, 7, "0".repeat(32))).header()), SRC, no(F::UnknownNonce)),
            ("nonce issued to another IP", Some(a().header()), other, no(F::UnknownNonce)),
            ("nonce for another IP, used here", Some(Answer::new(&s.nonce_at(now, other)).header()), SRC, no(F::UnknownNonce)),
            ("nonce in upper case", Some(Answer::new(&n.to_ascii_uppercase()).header()), SRC, no(F::UnknownNonce)),
            ("nonce with a leading zero", Some(Answer::new(&format!("0{n}")).header()), SRC, no(F::UnknownNonce)),
            ("nonce with an extra field", Some(Answer::new(&format!("{n}.00")).header()), SRC, no(F::UnknownNonce)),
            ("not our nonce format", Some(Answer::new("dcd98b7102dd2f0e8b11d0f600bfb0c093").header()), SRC, no(F::UnknownNonce)),
            ("no qop (RFC 2069 answer)", Some(a().without("qop").without("nc").without("cnonce").header()), SRC, no(F::QopMissing)),
            ("qop=auth-int", Some(a().set("qop", "auth-int").header()), SRC, no(F::QopMissing)),
            ("qop without cnonce", Some(a().without("cnonce").header()), SRC, no(F::QopMissing)),
            ("qop with empty cnonce", Some(a().set("cnonce", "").header()), SRC, no(F::QopMissing)),
            ("qop without nc", Some(a().without("nc").header()), SRC, no(F::QopMissing)),
            ("uri of another number", Some(a().set("uri", "sip:+14155550199@sip.example.com:5060").header()), SRC, no(F::UriMismatch)),
            ("uri of another host", Some(a().set("uri", "sip:+14155550100@evil.example.com:5060").header()), SRC, no(F::UriMismatch)),
            ("uri without the user (SIPp's default)", Some(a().set("uri", "sip:sip.example.com:5060").header()), SRC, ok),
            ("uri without the port", Some(a().set("uri", "sip:+14155550100@sip.example.com").header()), SRC, no(F::UriMismatch)),
            ("sips for sip", Some(a().set("uri", "sips:+14155550100@sip.example.com:5060").header()), SRC, no(F::UriMismatch)),
            ("empty uri", Some(a().set("uri", "").header()), SRC, no(F::UriMismatch)),
            ("wrong password", Some(Answer { password: "x", ..a() }.header()), SRC, no(F::BadResponse)),
            ("answer for another method", Some(Answer { method: "REGISTER", ..a() }.header()), SRC, no(F::BadResponse)),
            ("other cnonce than hashed", Some(a().header().replace("cnonce=\"c1\"", "cnonce=\"c2\"")), SRC, no(F::BadResponse)),
            ("expired nonce, right password", Some(Answer::new(&s.nonce_at(now - 61, SRC)).header()), SRC, no(F::Stale)),
            ("expired nonce, wrong password", Some(Answer { password: "x", ..Answer::new(&s.nonce_at(now - 61, SRC)) }.header()), SRC, no(F::BadResponse)),
            ("nonce from the future", Some(Answer::new(&s.nonce_at(now + 60, SRC)).header()), SRC, no(F::Stale)),
        ];
        for (name, header, source, want) in cases {
            // A fresh server state per case, same key.
            let fresh = DigestServer {
                key: s.key,
                lifetime: s.lifetime,
                max_tracked: s.max_tracked,
                nonces: Mutex::new(NonceTable::default()),
            };
            let got = fresh.verify_at(&check(header.as_deref(), source), now);
            assert_eq!(got, want, "case {name:?}: {header:?}");
            assert_eq!(got.stale(), want == no(F::Stale), "stale flag for {name:?}");
        }
    }

    #[test]
    fn nonce_counts_strictly_increase_per_nonce() {
        use DigestFailure as F;
        let s = DigestServer::new(Duration::from_secs(60));
        let now = DigestServer::now();
        let n = s.nonce_at(now, SRC);
        let with_nc = |nc: &str| Answer::new(&n).set("nc", nc).header();
        let run = |h: &str| s.verify_at(&check(Some(h), SRC), now);
        let steps = [
            ("00000000", Verdict::Refused(F::Replay)),
            ("00000001", Verdict::Ok),
            ("00000001", Verdict::Refused(F::Replay)),
            ("00000003", Verdict::Ok),
            ("00000002", Verdict::Refused(F::Replay)),
            ("00000003", Verdict::Refused(F::Replay)),
            ("00000004", Verdict::Ok),
        ];
        for (nc, want) in steps {
            assert_eq!(run(&with_nc(nc)), want, "nc={nc}");
        }
        // A wrong password does not advance or touch the count.
        let bad = Answer {
            password: "x",
            ..Answer::new(&n).set("nc", "00000009")
        };
        assert_eq!(run(&bad.header()), Verdict::Refused(F::BadResponse));
        assert_eq!(run(&with_nc("00000005")), Verdict::Ok);
        // Every challenge is its own nonce with its own count.
        let n2 = s.nonce_at(now, SRC);
        assert_ne!(n, n2, "two challenges in one second share no nonce");
        assert_eq!(run(&Answer::new(&n2).header()), Verdict::Ok);
        assert_eq!(s.tracked(), 2);
    }

    #[test]
    fn nonce_table_is_bounded_and_never_forgets_a_live_nonce() {
        use DigestFailure as F;
        let s = DigestServer::with_limit(Duration::from_secs(60), 4);
        let now = DigestServer::now();
        let nonces: Vec<String> = (0..6).map(|i| s.nonce_at(now - 10 + i, SRC)).collect();
        for n in &nonces {
            assert_eq!(
                s.verify_at(&check(Some(&Answer::new(n).header()), SRC), now),
                Verdict::Ok
            );
            assert!(s.tracked() <= 4, "table bounded: {}", s.tracked());
        }
        // The two oldest were dropped for room: answering them again must
        // not restart at nc=1 (a replay) but ask for a fresh nonce.
        for n in &nonces[..2] {
            let replay = Answer::new(n).header();
            assert_eq!(
                s.verify_at(&check(Some(&replay), SRC), now),
                Verdict::Refused(F::Stale)
            );
            let next = Answer::new(n).set("nc", "00000002").header();
            assert_eq!(
                s.verify_at(&check(Some(&next), SRC), now),
                Verdict::Refused(F::Stale)
            );
        }
        // The newest are still tracked.
        let replay = Answer::new(&nonces[5]).header();
        assert_eq!(
            s.verify_at(&check(Some(&replay), SRC), now),
            Verdict::Refused(F::Replay)
        );
        // Entries go with their nonce's lifetime.
        let later = now + 70;
        let fresh = s.nonce_at(later, SRC);
        assert_eq!(
            s.verify_at(&check(Some(&Answer::new(&fresh).header()), SRC), later),
            Verdict::Ok
        );
        assert_eq!(s.tracked(), 1, "expired nonces were purged");
    }

    #[test]
    fn challenge_offers_qop_auth_md5_and_stale_only_when_asked() {
        let s = DigestServer::new(Duration::from_secs(60));
        let ch = Challenge::parse(&s.challenge("sb", false, SRC)).expect("own challenge parses");
        assert!(ch.qop_auth && !ch.stale && ch.algorithm == Algorithm::Md5);
        let ch2 = Challenge::parse(&s.challenge("sb", true, SRC)).expect("own challenge parses");
        assert!(ch2.stale);
        assert_ne!(ch.nonce, ch2.nonce);
        // The client side answers our own challenge acceptably.
        let auth = authorization(&ch, "u", "p", "INVITE", RURI, 1, "c1");
        assert_eq!(s.verify(&check(Some(&auth), SRC)), Verdict::Ok);
    }

    #[test]
    fn failure_labels_are_distinct() {
        use DigestFailure as F;
        let all = [
            F::Missing,
            F::Malformed,
            F::Algorithm,
            F::Username,
            F::Realm,
            F::UnknownNonce,
            F::QopMissing,
            F::UriMismatch,
            F::BadResponse,
            F::Stale,
            F::Replay,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|f| f.label()).collect();
        assert_eq!(labels.len(), all.len());
        // Check order: the call site keeps the refusal that got furthest.
        assert!(all.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn challenge_without_qop_and_unknown_algorithm() {
        let ch = Challenge::parse(r#"Digest realm="r", nonce="n""#).expect("valid");
        assert!(!ch.qop_auth);
        let v = authorization(&ch, "u", "p", "REGISTER", "sip:h", 1, "c");
        assert!(!v.contains("qop"));
        assert_eq!(
            Challenge::parse(r#"Digest realm="r", nonce="n", algorithm=AKAv1-MD5"#).err(),
            Some(DigestError::Algorithm("AKAV1-MD5".into()))
        );
        assert_eq!(
            Challenge::parse("Basic realm=x").err(),
            Some(DigestError::NotDigest)
        );
    }
}
