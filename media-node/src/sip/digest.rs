//! HTTP digest authentication for SIP (RFC 3261 22, RFC 2617, RFC 7616):
//! answering a carrier's 401/407 challenge, and challenging inbound INVITEs
//! with expiring nonces, nonce-count tracking and constant-time checks.
//!
//! Nothing here logs: responses and passwords must never reach a log line.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest as _, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

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

/// The result of checking credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accept the request.
    Ok,
    /// Challenge (again); `stale` when only the nonce was at fault.
    Challenge {
        /// Add stale=true to the challenge.
        stale: bool,
    },
}

/// Server side: issues nonces and checks answers.
pub struct DigestServer {
    key: [u8; 32],
    lifetime: Duration,
    /// Highest nonce-count seen per nonce (replay protection).
    seen_nc: Mutex<HashMap<String, u32>>,
}

impl DigestServer {
    /// A server with a random key and the given nonce lifetime.
    pub fn new(lifetime: Duration) -> Self {
        let key: [u8; 32] = rand::random();
        DigestServer {
            key,
            lifetime,
            seen_nc: Mutex::new(HashMap::new()),
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn mac(&self, ts: u64) -> String {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(ts.to_be_bytes());
        h.update(self.key);
        hex::encode(&h.finalize()[..16])
    }

    /// A fresh nonce: a timestamp and a keyed hash of it, so nonces need no
    /// storage until used and cannot be forged.
    pub fn nonce(&self) -> String {
        self.nonce_at(Self::now())
    }

    fn nonce_at(&self, ts: u64) -> String {
        format!("{ts:x}.{}", self.mac(ts))
    }

    /// The challenge header value for `realm`.
    pub fn challenge(&self, realm: &str, stale: bool) -> String {
        let mut v = format!(
            "Digest realm=\"{realm}\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"",
            self.nonce()
        );
        if stale {
            v.push_str(", stale=true");
        }
        v
    }

    /// Checks an Authorization header value against the expected user and
    /// password for `method`.
    pub fn verify(
        &self,
        header: Option<&str>,
        realm: &str,
        user: &str,
        password: &str,
        method: &str,
    ) -> Verdict {
        self.verify_at(header, realm, user, password, method, Self::now())
    }

    fn verify_at(
        &self,
        header: Option<&str>,
        realm: &str,
        user: &str,
        password: &str,
        method: &str,
        now: u64,
    ) -> Verdict {
        let fail = Verdict::Challenge { stale: false };
        let Some(p) = header.and_then(|h| parse_params(h).ok()) else {
            return fail;
        };
        let get = |k: &str| p.get(k).map(String::as_str);
        let (Some(u), Some(r), Some(nonce), Some(uri), Some(resp)) = (
            get("username"),
            get("realm"),
            get("nonce"),
            get("uri"),
            get("response"),
        ) else {
            return fail;
        };
        let Ok(alg) = Algorithm::parse(get("algorithm")) else {
            return fail;
        };
        if u != user || r != realm {
            return fail;
        }
        // Is the nonce ours?
        let Some((ts_hex, mac)) = nonce.split_once('.') else {
            return fail;
        };
        let Ok(ts) = u64::from_str_radix(ts_hex, 16) else {
            return fail;
        };
        if !bool::from(self.mac(ts).as_bytes().ct_eq(mac.as_bytes())) {
            return fail;
        }
        let qop = match (get("qop"), get("nc"), get("cnonce")) {
            (Some(q), Some(nc), Some(cn)) if q.eq_ignore_ascii_case("auth") => Some((nc, cn)),
            (None, _, _) => None,
            _ => return fail,
        };
        let expected = response_hash(alg, user, realm, password, method, uri, nonce, qop);
        if !bool::from(
            expected
                .as_bytes()
                .ct_eq(resp.to_ascii_lowercase().as_bytes()),
        ) {
            return fail;
        }
        // Right password: from here on only freshness can fail.
        if now.saturating_sub(ts) > self.lifetime.as_secs() || ts > now + 5 {
            return Verdict::Challenge { stale: true };
        }
        if let Some((nc, _)) = qop {
            let Ok(nc) = u32::from_str_radix(nc, 16) else {
                return fail;
            };
            let Ok(mut seen) = self.seen_nc.lock() else {
                return fail;
            };
            // Forget nonces that have expired anyway.
            if seen.len() > 10_000 {
                let life = self.lifetime.as_secs();
                seen.retain(|n, _| {
                    n.split_once('.')
                        .and_then(|(t, _)| u64::from_str_radix(t, 16).ok())
                        .is_some_and(|t| now.saturating_sub(t) <= life)
                });
            }
            let last = seen.entry(nonce.to_owned()).or_insert(0);
            if nc <= *last {
                // A replayed nonce-count: make the client start over.
                return Verdict::Challenge { stale: true };
            }
            *last = nc;
        }
        Verdict::Ok
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

    #[test]
    fn server_round_trip_replay_and_stale() {
        let s = DigestServer::new(Duration::from_secs(60));
        let now = DigestServer::now();
        let ch = Challenge::parse(&s.challenge("sb", false)).expect("own challenge parses");
        let auth = authorization(&ch, "u", "p", "INVITE", "sip:1@h", 1, "c1");
        assert_eq!(
            s.verify_at(Some(&auth), "sb", "u", "p", "INVITE", now),
            Verdict::Ok
        );
        // Same nc again is a replay.
        assert_eq!(
            s.verify_at(Some(&auth), "sb", "u", "p", "INVITE", now),
            Verdict::Challenge { stale: true }
        );
        let auth2 = authorization(&ch, "u", "p", "INVITE", "sip:1@h", 2, "c1");
        assert_eq!(
            s.verify_at(Some(&auth2), "sb", "u", "p", "INVITE", now),
            Verdict::Ok
        );
        // Wrong password, wrong user, garbage.
        let bad = authorization(&ch, "u", "x", "INVITE", "sip:1@h", 3, "c1");
        assert_eq!(
            s.verify_at(Some(&bad), "sb", "u", "p", "INVITE", now),
            Verdict::Challenge { stale: false }
        );
        assert_eq!(
            s.verify_at(Some("Digest nonsense"), "sb", "u", "p", "INVITE", now),
            Verdict::Challenge { stale: false }
        );
        assert_eq!(
            s.verify_at(None, "sb", "u", "p", "INVITE", now),
            Verdict::Challenge { stale: false }
        );
        // Expired nonce with the right password: stale.
        let old = Challenge {
            nonce: s.nonce_at(now - 120),
            ..ch.clone()
        };
        let auth3 = authorization(&old, "u", "p", "INVITE", "sip:1@h", 1, "c1");
        assert_eq!(
            s.verify_at(Some(&auth3), "sb", "u", "p", "INVITE", now),
            Verdict::Challenge { stale: true }
        );
        // A nonce we did not issue.
        let forged = Challenge {
            nonce: format!("{now:x}.deadbeef"),
            ..ch
        };
        let auth4 = authorization(&forged, "u", "p", "INVITE", "sip:1@h", 1, "c1");
        assert_eq!(
            s.verify_at(Some(&auth4), "sb", "u", "p", "INVITE", now),
            Verdict::Challenge { stale: false }
        );
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
