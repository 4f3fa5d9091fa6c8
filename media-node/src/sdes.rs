//! SDES key exchange (RFC 4568): the `a=crypto` attributes of an SDP media section.
//!
//! Pure parsing, choosing and writing; the keys feed [`crate::media::srtp::Session`]. What we
//! accept is deliberately narrow, and everything else makes the line unusable (the answerer
//! then picks another line, or refuses the offer) rather than weakening the session:
//!
//! - the suites of [`Suite::ALL`];
//! - exactly one key per line, inline, of the suite's length, with an optional lifetime of
//!   at most 2^48 packets and no MKI (a master key identifier changes every packet's layout);
//! - no session parameters except `KDR=0` and the window-size hint `WSH=` (RFC 4568 6.3.7:
//!   a parameter the receiver does not understand means it must not use the line), so
//!   `UNENCRYPTED_SRTP`, `UNAUTHENTICATED_SRTP` and key derivation rates are refused.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

use crate::media::srtp::{MasterKey, Suite};

/// Crypto attributes kept per media section; more are ignored (a real offer has 1 to 4).
pub const MAX_LINES: usize = 16;

/// The value of one `a=crypto:` attribute as received. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoLine(String);

impl std::fmt::Debug for CryptoLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tag and suite only: the key-params follow them.
        let mut words = self.0.split_whitespace();
        let tag = words.next().unwrap_or("");
        let suite = words.next().unwrap_or("");
        write!(f, "CryptoLine({tag} {suite} <key redacted>)")
    }
}

impl CryptoLine {
    /// Wraps the text after `a=crypto:`.
    pub fn new(value: &str) -> CryptoLine {
        CryptoLine(value.trim().to_owned())
    }
}

/// Why a crypto line cannot be used. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdesError {
    /// Not `tag suite key-params [session-params]`.
    #[error("malformed crypto attribute")]
    Malformed,
    /// A crypto-suite we do not implement.
    #[error("crypto-suite {0} is not supported")]
    Suite(String),
    /// The key is not base64 of the suite's key and salt length.
    #[error("crypto key has the wrong length or encoding")]
    Key,
    /// A master key identifier, several keys, or a lifetime over 2^48.
    #[error("crypto key parameters not supported: {0}")]
    KeyParams(&'static str),
    /// A session parameter that would weaken the session or that we do not implement.
    #[error("crypto session parameter {0} not supported")]
    SessionParam(String),
}

/// A usable line: the peer's tag and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// The line's tag, echoed in the answer.
    pub tag: u32,
    /// The peer's master key (what it sends with).
    pub key: MasterKey,
}

/// Parses one crypto attribute value.
pub fn parse(line: &CryptoLine) -> Result<Offered, SdesError> {
    let mut words = line.0.split_whitespace();
    let (Some(tag), Some(suite), Some(key_params)) = (words.next(), words.next(), words.next())
    else {
        return Err(SdesError::Malformed);
    };
    // RFC 4568 9.1: tag = 1*9DIGIT.
    if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SdesError::Malformed);
    }
    let tag: u32 = tag.parse().map_err(|_| SdesError::Malformed)?;
    let suite = Suite::from_sdes_name(suite).ok_or_else(|| SdesError::Suite(short(suite)))?;
    for param in words {
        let name = param.split('=').next().unwrap_or(param);
        match name {
            "KDR" if param == "KDR=0" => {}
            "WSH" => {}
            _ => return Err(SdesError::SessionParam(short(name))),
        }
    }
    if key_params.contains(';') {
        return Err(SdesError::KeyParams("more than one key"));
    }
    let inline = key_params
        .strip_prefix("inline:")
        .ok_or(SdesError::KeyParams("only inline keys"))?;
    let mut parts = inline.split('|');
    let key = parts.next().unwrap_or("");
    for extra in parts {
        if extra.contains(':') {
            return Err(SdesError::KeyParams("master key identifiers"));
        }
        if lifetime(extra).is_none_or(|l| l > 1 << 48) {
            return Err(SdesError::KeyParams("lifetime"));
        }
    }
    // RFC 4568 says padded base64; some peers drop the padding.
    let bytes = STANDARD
        .decode(key)
        .or_else(|_| STANDARD_NO_PAD.decode(key))
        .map_err(|_| SdesError::Key)?;
    let key = MasterKey::from_bytes(suite, &bytes).ok_or(SdesError::Key)?;
    Ok(Offered { tag, key })
}

/// A lifetime: decimal packets or `2^n`.
fn lifetime(s: &str) -> Option<u64> {
    match s.strip_prefix("2^") {
        Some(exp) => {
            let exp: u32 = exp.parse().ok()?;
            1u64.checked_shl(exp).filter(|_| exp < 64)
        }
        None => s.parse().ok(),
    }
}

/// Names echoed into errors are short and printable, whatever the peer sent.
fn short(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect()
}

/// The first usable line of an offer, in the offerer's order of preference (RFC 4568 7.1.1),
/// or why none was: the error of the first line when every line failed.
pub fn choose(lines: &[CryptoLine]) -> Result<Offered, SdesError> {
    let mut first_error = None;
    for line in lines.iter().take(MAX_LINES) {
        match parse(line) {
            Ok(o) => return Ok(o),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(SdesError::Malformed))
}

/// The `a=crypto` line (with CRLF) carrying our key under `tag`.
pub fn line(tag: u32, key: &MasterKey) -> String {
    format!(
        "a=crypto:{tag} {} inline:{}\r\n",
        key.suite().sdes_name(),
        STANDARD.encode(key.key_salt())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 4568 4's example key.
    const KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

    fn parse_str(s: &str) -> Result<Offered, SdesError> {
        parse(&CryptoLine::new(s))
    }

    #[test]
    fn rfc4568_examples_parse() {
        let o = parse_str(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20")).expect("ok");
        assert_eq!(o.tag, 1);
        assert_eq!(o.key.suite(), Suite::AesCm128HmacSha1_80);
        assert_eq!(&o.key.key_salt()[..4], b"YS__");
        let o = parse_str(&format!(
            "2 AES_CM_128_HMAC_SHA1_32 inline:{KEY} KDR=0 WSH=64"
        ))
        .expect("ok");
        assert_eq!((o.tag, o.key.suite()), (2, Suite::AesCm128HmacSha1_32));
        // Unpadded base64 (some peers) and a decimal lifetime.
        let gcm = STANDARD_NO_PAD.encode([7u8; 28]);
        let o = parse_str(&format!("3 AEAD_AES_128_GCM inline:{gcm}|1048576")).expect("ok");
        assert_eq!(o.key.suite(), Suite::AeadAes128Gcm);
    }

    #[test]
    fn unusable_lines_say_why() {
        let cases = [
            ("", SdesError::Malformed),
            ("1 AES_CM_128_HMAC_SHA1_80", SdesError::Malformed),
            (
                &*format!("x AES_CM_128_HMAC_SHA1_80 inline:{KEY}"),
                SdesError::Malformed,
            ),
            (
                &*format!("1234567890 AES_CM_128_HMAC_SHA1_80 inline:{KEY}"),
                SdesError::Malformed,
            ),
            (
                &*format!("1 F8_128_HMAC_SHA1_80 inline:{KEY}"),
                SdesError::Suite("F8_128_HMAC_SHA1_80".into()),
            ),
            (
                &*format!("1 aes_cm_128_hmac_sha1_80 inline:{KEY}"),
                SdesError::Suite("aes_cm_128_hmac_sha1_80".into()),
            ),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=", SdesError::Key),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:%%%", SdesError::Key),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|1:4"),
                SdesError::KeyParams("master key identifiers"),
            ),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^49"),
                SdesError::KeyParams("lifetime"),
            ),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^99"),
                SdesError::KeyParams("lifetime"),
            ),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY};inline:{KEY}"),
                SdesError::KeyParams("more than one key"),
            ),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 uri:{KEY}"),
                SdesError::KeyParams("only inline keys"),
            ),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} UNENCRYPTED_SRTP"),
                SdesError::SessionParam("UNENCRYPTED_SRTP".into()),
            ),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} UNAUTHENTICATED_SRTP"),
                SdesError::SessionParam("UNAUTHENTICATED_SRTP".into()),
            ),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} KDR=24"),
                SdesError::SessionParam("KDR".into()),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_str(line), Err(want), "{line}");
        }
    }

    #[test]
    fn the_first_usable_line_in_offer_order_is_chosen() {
        let lines: Vec<CryptoLine> = [
            format!("1 AES_256_CM_HMAC_SHA1_80 inline:{KEY}"),
            format!("2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}"),
            format!("3 AES_CM_128_HMAC_SHA1_80 inline:{KEY}"),
        ]
        .iter()
        .map(|l| CryptoLine::new(l))
        .collect();
        assert_eq!(choose(&lines).expect("one usable").tag, 2);
        assert_eq!(
            choose(&lines[..1]),
            Err(SdesError::Suite("AES_256_CM_HMAC_SHA1_80".into()))
        );
        assert_eq!(choose(&[]), Err(SdesError::Malformed));
    }

    #[test]
    fn our_line_parses_back_and_keys_stay_out_of_debug() {
        for suite in Suite::ALL {
            let key = MasterKey::random(suite);
            let text = line(7, &key);
            let value = text
                .strip_prefix("a=crypto:")
                .and_then(|t| t.strip_suffix("\r\n"))
                .expect("attribute form");
            let back = parse_str(value).expect("parses");
            assert_eq!((back.tag, &back.key), (7, &key));
            let shown = format!("{:?}", CryptoLine::new(value));
            assert!(!shown.contains(&STANDARD.encode(key.key_salt())), "{shown}");
            assert!(shown.contains(suite.sdes_name()), "{shown}");
        }
    }

    #[test]
    fn hostile_lines_never_panic() {
        let samples = [
            "1 AES_CM_128_HMAC_SHA1_80 inline:|||||",
            "1 AES_CM_128_HMAC_SHA1_80 inline:\u{0}\u{ff}",
            "4294967295 AES_CM_128_HMAC_SHA1_80 inline:x",
            "1 AES_CM_128_HMAC_SHA1_80 inline:a|2^",
            "1 AES_CM_128_HMAC_SHA1_80 inline:a|2^-1",
            "1 AES_CM_128_HMAC_SHA1_80 inline:a|99999999999999999999999",
        ];
        for s in samples {
            assert!(parse_str(s).is_err(), "{s}");
        }
        let long = format!("1 {} inline:a", "X".repeat(10_000));
        match parse_str(&long) {
            Err(SdesError::Suite(name)) => assert!(name.len() <= 40),
            other => panic!("{other:?}"),
        }
    }
}
