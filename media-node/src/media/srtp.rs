//! SRTP and SRTCP (RFC 3711) for calls whose keys were exchanged with SDES (RFC 4568).
//!
//! The cipher work (AES counter mode with HMAC-SHA1, AES-GCM, the key derivation, rollover
//! counters and replay windows) is the `rtc-srtp` crate's: pure Rust on the RustCrypto
//! primitives, maintained with the webrtc-rs stack, sans-IO like the rest of [`crate::media`],
//! and free of system libraries, so the node still builds from `cargo` alone. This module adds
//! what a hostile network needs on top of it:
//!
//! - **Bounded state per call.** The crate creates per-SSRC state for every packet it is given,
//!   before the packet is authenticated, so forged packets with random SSRCs would grow it
//!   without end. Packets from an SSRC not yet authenticated are first checked by a separate
//!   probe context that is thrown away whenever it has seen [`MAX_PROBED_SSRCS`] sources; only
//!   a packet that authenticates there reaches the call's real context, which therefore holds
//!   state only for sources that know the key (at most [`MAX_SSRCS`]).
//! - **Typed errors** a caller can count by label, never carrying key material.
//! - **Keys that never print**: [`MasterKey`] has no `Debug` of its bytes and zeroes them on
//!   drop.

use bytes::BytesMut;
use rtc_srtp::context::Context;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;
use zeroize::Zeroizing;

/// Sources (SSRCs) a call's inbound context keeps state for; packets from more are dropped.
pub const MAX_SSRCS: usize = 8;
/// Unauthenticated sources the probe context may accumulate before it is replaced.
pub const MAX_PROBED_SSRCS: usize = 16;
/// Replay window, in packets (libsrtp's default is 128; RFC 3711 asks for at least 64).
pub const REPLAY_WINDOW: usize = 128;

/// The SDES crypto-suites we negotiate, in our order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// `AEAD_AES_128_GCM` (RFC 7714): 16-byte key, 12-byte salt, 16-byte tag.
    AeadAes128Gcm,
    /// `AES_CM_128_HMAC_SHA1_80` (RFC 4568): 16-byte key, 14-byte salt, 80-bit tag.
    AesCm128HmacSha1_80,
    /// `AES_CM_128_HMAC_SHA1_32`: as above with a 32-bit RTP tag (SRTCP keeps 80 bits).
    AesCm128HmacSha1_32,
}

impl Suite {
    /// Every suite, most preferred first.
    pub const ALL: [Suite; 3] = [
        Suite::AesCm128HmacSha1_80,
        Suite::AesCm128HmacSha1_32,
        Suite::AeadAes128Gcm,
    ];

    /// The name in `a=crypto` (case-sensitive per RFC 4568 9.1).
    pub fn sdes_name(self) -> &'static str {
        match self {
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite an `a=crypto` name stands for, if we support it.
    pub fn from_sdes_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.sdes_name() == name)
    }

    /// Master key length in bytes.
    pub fn key_len(self) -> usize {
        16
    }

    /// Master salt length in bytes.
    pub fn salt_len(self) -> usize {
        match self {
            Suite::AeadAes128Gcm => 12,
            Suite::AesCm128HmacSha1_80 | Suite::AesCm128HmacSha1_32 => 14,
        }
    }

    /// Bytes an RTP packet grows by when protected.
    pub fn rtp_overhead(self) -> usize {
        match self {
            Suite::AeadAes128Gcm => 16,
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }
}

/// A master key and salt for one direction of one call. Zeroed on drop; its `Debug` names
/// only the suite.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    suite: Suite,
    /// Key then salt, as carried base64-encoded in `inline:`.
    key_salt: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A fresh random key for `suite`, from the operating system's CSPRNG.
    pub fn random(suite: Suite) -> MasterKey {
        use rand::TryRngCore;
        let mut key_salt = Zeroizing::new(vec![0u8; suite.key_len() + suite.salt_len()]);
        // The OS generator failing leaves no safe way to make a key: a zero key would
        // silently give every call the same one, so this is one of the few panics kept.
        #[allow(clippy::expect_used)]
        rand::rngs::OsRng
            .try_fill_bytes(&mut key_salt)
            .expect("the operating system's random generator works");
        MasterKey { suite, key_salt }
    }

    /// A key from `key || salt` bytes (decoded from `inline:`); `None` when the length does
    /// not match the suite.
    pub fn from_bytes(suite: Suite, key_salt: &[u8]) -> Option<MasterKey> {
        (key_salt.len() == suite.key_len() + suite.salt_len()).then(|| MasterKey {
            suite,
            key_salt: Zeroizing::new(key_salt.to_vec()),
        })
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// `key || salt`, for writing into SDP (`inline:` base64). Handle with care.
    pub fn key_salt(&self) -> &[u8] {
        &self.key_salt
    }

    fn split(&self) -> (&[u8], &[u8]) {
        self.key_salt.split_at(self.suite.key_len())
    }
}

/// Why a packet was not protected or unprotected. Labels suit a metric; nothing here
/// carries key material or payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// Shorter than a header plus the authentication tag.
    #[error("packet too short for SRTP")]
    TooShort,
    /// The authentication tag did not verify (tampered, wrong key, or not SRTP at all).
    #[error("SRTP authentication failed")]
    Auth,
    /// Already received (inside the replay window) or older than it.
    #[error("SRTP replay")]
    Replay,
    /// SRTCP with the E flag clear: unencrypted SRTCP is never negotiated here, so this is
    /// plain RTCP on an encrypted call (or a forgery; it is not authenticated either).
    #[error("unencrypted SRTCP (not negotiated)")]
    Unencrypted,
    /// A new source while the call already keeps state for [`MAX_SSRCS`] sources.
    #[error("too many SRTP sources")]
    TooManySources,
    /// The key has protected 2^48 packets (RFC 3711 9.2) and must be replaced.
    #[error("SRTP key exhausted")]
    KeyExhausted,
    /// Any other failure of the SRTP library (a malformed header, for instance).
    #[error("SRTP processing failed: {0}")]
    Other(String),
}

impl SrtpError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SrtpError::TooShort => "too_short",
            SrtpError::Auth => "auth",
            SrtpError::Replay => "replay",
            SrtpError::Unencrypted => "unencrypted",
            SrtpError::TooManySources => "too_many_sources",
            SrtpError::KeyExhausted => "key_exhausted",
            SrtpError::Other(_) => "malformed",
        }
    }

    fn from_lib(e: rtc_shared::error::Error) -> SrtpError {
        use rtc_shared::error::Error as E;
        match e {
            E::ErrTooShortRtp | E::ErrTooShortRtcp | E::SrtpTooSmall(..) => SrtpError::TooShort,
            E::RtpFailedToVerifyAuthTag
            | E::RtcpFailedToVerifyAuthTag
            | E::ErrFailedToVerifyAuthTag => SrtpError::Auth,
            E::SrtpSsrcDuplicated(..) | E::SrtcpSsrcDuplicated(..) => SrtpError::Replay,
            E::ErrExceededMaxPackets => SrtpError::KeyExhausted,
            other => SrtpError::Other(other.to_string()),
        }
    }
}

fn context(key: &MasterKey, replay: bool) -> Result<Context, SrtpError> {
    let (k, s) = key.split();
    let (rtp, rtcp) = if replay {
        (
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
        )
    } else {
        (None, None)
    };
    Context::new(k, s, key.suite.profile(), rtp, rtcp).map_err(SrtpError::from_lib)
}

/// Inbound state: the call's context and the probe that admits new sources to it.
struct Inbound {
    key: MasterKey,
    ctx: Context,
    /// Sources that authenticated, with state in `ctx`.
    known: Vec<u32>,
    probe: Context,
    probed: Vec<u32>,
}

impl Inbound {
    fn new(key: MasterKey) -> Result<Inbound, SrtpError> {
        Ok(Inbound {
            ctx: context(&key, true)?,
            probe: context(&key, false)?,
            key,
            known: Vec::new(),
            probed: Vec::new(),
        })
    }

    /// Lets `ssrc` reach the real context once `check` authenticates the packet in the
    /// probe; keeps the probe's state bounded.
    fn admit(
        &mut self,
        ssrc: u32,
        check: impl FnOnce(&mut Context) -> Result<BytesMut, rtc_shared::error::Error>,
    ) -> Result<(), SrtpError> {
        if self.known.contains(&ssrc) {
            return Ok(());
        }
        if self.known.len() >= MAX_SSRCS {
            return Err(SrtpError::TooManySources);
        }
        if !self.probed.contains(&ssrc) {
            if self.probed.len() >= MAX_PROBED_SSRCS {
                self.probe = context(&self.key, false)?;
                self.probed.clear();
            }
            self.probed.push(ssrc);
        }
        check(&mut self.probe).map_err(SrtpError::from_lib)?;
        self.known.push(ssrc);
        Ok(())
    }
}

/// One call's SRTP: our outbound key and the peer's inbound key, for RTP and RTCP.
pub struct Session {
    outbound: Context,
    inbound: Inbound,
    suite: Suite,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("suite", &self.suite)
            .field("inbound_sources", &self.inbound.known.len())
            .finish_non_exhaustive()
    }
}

/// The length of an RTP header with its CSRC list and extension (RFC 3550 5.1, 5.3.1), as
/// written in the packet; `None` when the fixed parts it is computed from are missing, or an
/// RFC 8285 extension element runs past its block (rtc-rtp reads those without a bound).
fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    let b0 = *packet.first()?;
    let mut len = 12 + 4 * usize::from(b0 & 0x0f);
    if b0 & 0x10 != 0 {
        let head = packet.get(len..len + 4)?;
        let profile = u16::from_be_bytes([head[0], head[1]]);
        let start = len + 4;
        len = start + 4 * usize::from(u16::from_be_bytes([head[2], head[3]]));
        let block = packet.get(start..len)?;
        if !rfc8285_elements_fit(profile, block) {
            return None;
        }
    }
    Some(len)
}

/// True when every RFC 8285 element of a one-byte (0xBEDE) or two-byte (0x1000) extension
/// block ends inside the block; other profiles are opaque.
fn rfc8285_elements_fit(profile: u16, block: &[u8]) -> bool {
    let two_byte = match profile {
        0xBEDE => false,
        0x1000 => true,
        _ => return true,
    };
    let mut i = 0;
    while let Some(&b) = block.get(i) {
        if b == 0 {
            i += 1;
            continue;
        }
        let (header, data) = if two_byte {
            match block.get(i + 1) {
                Some(&l) => (2, usize::from(l)),
                None => return false,
            }
        } else {
            if b >> 4 == 15 {
                // The reserved id ends the block.
                return true;
            }
            (1, usize::from(b & 0x0f) + 1)
        };
        i += header + data;
        if i > block.len() {
            return false;
        }
    }
    true
}

/// The fixed RTCP header with the sender's SSRC (RFC 3550 6.4).
const RTCP_HEADER_LEN: usize = 8;
/// The E flag and SRTCP index after an SRTCP packet's payload (RFC 3711 3.4).
const SRTCP_INDEX_LEN: usize = 4;

fn ssrc_at(packet: &[u8], at: usize) -> Result<u32, SrtpError> {
    packet
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(SrtpError::TooShort)
}

impl Session {
    /// A session sending with `local` and receiving with `remote` (both of one suite).
    pub fn new(local: &MasterKey, remote: MasterKey) -> Result<Session, SrtpError> {
        if local.suite != remote.suite {
            return Err(SrtpError::Other(
                "the two keys are of different suites".into(),
            ));
        }
        Ok(Session {
            suite: local.suite,
            outbound: context(local, false)?,
            inbound: Inbound::new(remote)?,
        })
    }

    /// The negotiated suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Encrypts and authenticates one RTP packet.
    pub fn protect_rtp(&mut self, rtp: &[u8]) -> Result<BytesMut, SrtpError> {
        self.outbound.encrypt_rtp(rtp).map_err(SrtpError::from_lib)
    }

    /// Authenticates, checks for replay and decrypts one SRTP packet.
    pub fn unprotect_rtp(&mut self, srtp: &[u8]) -> Result<BytesMut, SrtpError> {
        let ssrc = ssrc_at(srtp, 8)?;
        // rtc-srtp's header parser panics on a CSRC list or extension that runs past the
        // packet (found by fuzz/sdp): check the header's extent before handing it over.
        if rtp_header_len(srtp).is_none_or(|n| n > srtp.len()) {
            return Err(SrtpError::TooShort);
        }
        self.inbound.admit(ssrc, |probe| probe.decrypt_rtp(srtp))?;
        self.inbound
            .ctx
            .decrypt_rtp(srtp)
            .map_err(SrtpError::from_lib)
    }

    /// Encrypts and authenticates one RTCP compound packet.
    pub fn protect_rtcp(&mut self, rtcp: &[u8]) -> Result<BytesMut, SrtpError> {
        self.outbound
            .encrypt_rtcp(rtcp)
            .map_err(SrtpError::from_lib)
    }

    /// Authenticates, checks for replay and decrypts one SRTCP packet.
    pub fn unprotect_rtcp(&mut self, srtcp: &[u8]) -> Result<BytesMut, SrtpError> {
        let ssrc = ssrc_at(srtcp, 4)?;
        // rtc-srtp reads the SRTCP index from the packet's tail before it checks the length
        // (a packet shorter than header, index and tag panics), and hands back a packet whose
        // E flag is clear without checking its tag. Unencrypted SRTCP is never negotiated
        // here (RFC 4568 UNENCRYPTED_SRTCP), so such a packet is a forgery: refused.
        let profile = self.suite.profile();
        let tail = SRTCP_INDEX_LEN + profile.rtcp_auth_tag_len();
        if srtcp.len() < RTCP_HEADER_LEN + tail + profile.aead_auth_tag_len() {
            return Err(SrtpError::TooShort);
        }
        if srtcp[srtcp.len() - tail] & 0x80 == 0 {
            return Err(SrtpError::Unencrypted);
        }
        self.inbound
            .admit(ssrc, |probe| probe.decrypt_rtcp(srtcp))?;
        self.inbound
            .ctx
            .decrypt_rtcp(srtcp)
            .map_err(SrtpError::from_lib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_that_runs_past_the_packet_is_refused_not_a_panic() {
        let key = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let mut s = Session::new(&key, key.clone()).expect("session");
        // 15 CSRCs announced in a 20-byte packet; then an extension longer than the packet.
        let mut csrcs = vec![0x8f_u8, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
        csrcs.extend_from_slice(&[0; 8]);
        assert!(matches!(s.unprotect_rtp(&csrcs), Err(SrtpError::TooShort)));
        let mut ext = vec![
            0x90_u8, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0xbe, 0xde, 0xff, 0xff,
        ];
        ext.extend_from_slice(&[0; 16]);
        assert!(matches!(s.unprotect_rtp(&ext), Err(SrtpError::TooShort)));
        assert_eq!(rtp_header_len(&[0x80; 12]), Some(12));
        // A two-byte-header element longer than its extension block.
        let mut two = vec![0x90_u8, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0x10, 0x00, 0, 1];
        two.extend_from_slice(&[7, 200, 0, 0]);
        two.extend_from_slice(&[0; 30]);
        assert!(matches!(s.unprotect_rtp(&two), Err(SrtpError::TooShort)));
        // Elements that fit are accepted as a header.
        let ok = [
            0x90_u8, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0,
        ];
        assert_eq!(rtp_header_len(&ok), Some(20));
    }

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn pair(suite: Suite) -> (Session, Session) {
        let a = MasterKey::random(suite);
        let b = MasterKey::random(suite);
        (
            Session::new(&a, b.clone()).expect("a"),
            Session::new(&b, a).expect("b"),
        )
    }

    #[test]
    fn every_suite_round_trips_and_hides_the_payload() {
        for suite in Suite::ALL {
            let (mut a, mut b) = pair(suite);
            let payload = [0x55u8; 160];
            // Across a sequence-number wrap (the rollover counter).
            for seq in [65533u16, 65534, 65535, 0, 1, 2] {
                let plain = rtp(seq, 0x1234, &payload);
                let wire = a.protect_rtp(&plain).expect("protect");
                assert_eq!(wire.len(), plain.len() + suite.rtp_overhead(), "{suite:?}");
                assert_eq!(&wire[..12], &plain[..12], "the header stays clear");
                assert!(
                    !wire.windows(16).any(|w| w == [0x55; 16]),
                    "{suite:?}: plaintext visible"
                );
                assert_eq!(&b.unprotect_rtp(&wire).expect("unprotect")[..], &plain[..]);
            }
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Known answers from libsrtp 2.5 (Debian's, through pylibsrtp), the library baresip,
    /// Asterisk and FreeSWITCH use, for the RFC 3711 B.3 master key and salt: our protect
    /// gives libsrtp's bytes and our unprotect accepts them, for RTP and RTCP.
    #[test]
    fn packets_match_libsrtp_byte_for_byte() {
        let master = "e1f97a0d3e018be0d64fa32c06de41390ec675ad498afeebb6960b3aabe6";
        let plain = hex(&format!("800f1234decafbaddecafbad{}", "ab".repeat(16)));
        let rr = hex("80c90001decafbad");
        let cases = [
            (
                Suite::AesCm128HmacSha1_80,
                master,
                "800f1234decafbaddecafbad8048e56a01cdf0fe0d787818c1ca1cca8f19dd4a5ab3712ece96",
                "80c90001decafbad8000000122d192cda1764bf0a60f",
            ),
            (
                Suite::AesCm128HmacSha1_32,
                master,
                "800f1234decafbaddecafbad8048e56a01cdf0fe0d787818c1ca1cca8f19dd4a",
                "80c90001decafbad8000000122d192cda1764bf0a60f",
            ),
            (
                Suite::AeadAes128Gcm,
                &master[..56],
                "800f1234decafbaddecafbad0d42958af22b6b8f58169ebd125edfe3cfefccda0ceae18531d8ffc6aef57bd7",
                "80c90001decafbad7bc9bafe1783bba4f41b85189db2223580000001",
            ),
        ];
        for (suite, key, srtp, srtcp) in cases {
            let key = MasterKey::from_bytes(suite, &hex(key)).expect("key length");
            let mut tx = Session::new(&key, key.clone()).expect("session");
            let mut rx = Session::new(&key, key.clone()).expect("session");
            assert_eq!(
                hex(srtp),
                &tx.protect_rtp(&plain).expect("rtp")[..],
                "{suite:?}"
            );
            assert_eq!(
                hex(srtcp),
                &tx.protect_rtcp(&rr).expect("rtcp")[..],
                "{suite:?}"
            );
            assert_eq!(&rx.unprotect_rtp(&hex(srtp)).expect("rtp")[..], &plain[..]);
            assert_eq!(&rx.unprotect_rtcp(&hex(srtcp)).expect("rtcp")[..], &rr[..]);
        }
    }

    #[test]
    fn short_and_unencrypted_srtcp_is_refused_not_a_panic_or_a_bypass() {
        // A receiver report with one report block: 8 + 24 bytes, length 7.
        let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0x12, 0x34];
        rr.extend((0..24u8).map(|i| i.wrapping_mul(7)));
        for suite in Suite::ALL {
            let (mut a, mut b) = pair(suite);
            let wire = a.protect_rtcp(&rr).expect("protect");
            // Every length short of a whole packet, with the E flag set wherever it may be read.
            for len in 0..wire.len().min(40) {
                let mut short = vec![0x80u8; len];
                short[..len.min(8)].copy_from_slice(&rr[..len.min(8)]);
                let r = b.unprotect_rtcp(&short);
                assert!(r.is_err(), "{suite:?}: {len} bytes accepted");
            }
            // The E flag cleared on a forged packet: the library would return it unchecked.
            let tail = 4 + suite.profile().rtcp_auth_tag_len();
            let mut forged = wire.to_vec();
            let at = forged.len() - tail;
            forged[at] &= 0x7f;
            forged[9] ^= 0xff;
            assert_eq!(
                b.unprotect_rtcp(&forged),
                Err(SrtpError::Unencrypted),
                "{suite:?}"
            );
            // The genuine packet still passes.
            assert_eq!(
                &b.unprotect_rtcp(&wire).expect("unprotect")[..],
                &rr[..],
                "{suite:?}"
            );
        }
    }

    #[test]
    fn rtcp_round_trips_and_tampering_is_refused() {
        let (mut a, mut b) = pair(Suite::AesCm128HmacSha1_80);
        // A receiver report: V=2, RC=0, PT=201, length 1, SSRC.
        let rr = [0x80, 201, 0, 1, 0, 0, 0x12, 0x34];
        let wire = a.protect_rtcp(&rr).expect("protect");
        let mut bad = wire.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(b.unprotect_rtcp(&bad), Err(SrtpError::Auth));
        assert_eq!(&b.unprotect_rtcp(&wire).expect("unprotect")[..], &rr[..]);
        assert_eq!(b.unprotect_rtcp(&wire), Err(SrtpError::Replay));
    }

    #[test]
    fn tampered_replayed_and_wrong_key_packets_are_refused() {
        let (mut a, mut b) = pair(Suite::AesCm128HmacSha1_80);
        let wire = a.protect_rtp(&rtp(10, 7, &[1; 160])).expect("protect");
        let mut tampered = wire.to_vec();
        tampered[20] ^= 0x01;
        assert_eq!(b.unprotect_rtp(&tampered), Err(SrtpError::Auth));
        b.unprotect_rtp(&wire)
            .expect("the genuine packet still works");
        assert_eq!(b.unprotect_rtp(&wire), Err(SrtpError::Replay));
        // Within the window, out of order, is fine; far behind it is a replay.
        let later: Vec<_> = (11..=300u16)
            .map(|s| a.protect_rtp(&rtp(s, 7, &[2; 160])).expect("protect"))
            .collect();
        b.unprotect_rtp(&later[289]).expect("seq 300");
        b.unprotect_rtp(&later[250])
            .expect("seq 261, inside the window");
        assert_eq!(b.unprotect_rtp(&later[0]), Err(SrtpError::Replay));
        let (mut stranger, _) = pair(Suite::AesCm128HmacSha1_80);
        let forged = stranger
            .protect_rtp(&rtp(400, 7, &[3; 160]))
            .expect("protect");
        assert_eq!(b.unprotect_rtp(&forged), Err(SrtpError::Auth));
        assert_eq!(b.unprotect_rtp(&[0x80; 11]), Err(SrtpError::TooShort));
    }

    #[test]
    fn forged_sources_never_grow_the_state_or_lock_out_the_peer() {
        let (mut a, mut b) = pair(Suite::AesCm128HmacSha1_32);
        let (mut stranger, _) = pair(Suite::AesCm128HmacSha1_32);
        for ssrc in 0..10_000u32 {
            let forged = stranger
                .protect_rtp(&rtp(1, ssrc, &[9; 20]))
                .expect("protect");
            assert_eq!(b.unprotect_rtp(&forged), Err(SrtpError::Auth));
            assert!(b.inbound.probed.len() <= MAX_PROBED_SSRCS);
        }
        assert!(b.inbound.known.is_empty());
        let genuine = a.protect_rtp(&rtp(1, 42, &[1; 20])).expect("protect");
        b.unprotect_rtp(&genuine)
            .expect("the peer still gets through");
        // Sources that know the key are capped too.
        for ssrc in 100..100 + MAX_SSRCS as u32 - 1 {
            let p = a.protect_rtp(&rtp(1, ssrc, &[1; 20])).expect("protect");
            b.unprotect_rtp(&p).expect("within the cap");
        }
        let p = a.protect_rtp(&rtp(1, 999, &[1; 20])).expect("protect");
        assert_eq!(b.unprotect_rtp(&p), Err(SrtpError::TooManySources));
    }

    #[test]
    fn keys_never_print() {
        let k = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let shown = format!("{k:?}");
        assert!(!shown.contains(&format!("{:?}", k.key_salt())), "{shown}");
        assert!(MasterKey::from_bytes(Suite::AesCm128HmacSha1_80, &[0; 29]).is_none());
        assert!(MasterKey::from_bytes(Suite::AeadAes128Gcm, &[0; 28]).is_some());
        assert_ne!(
            MasterKey::random(Suite::AeadAes128Gcm).key_salt(),
            MasterKey::random(Suite::AeadAes128Gcm).key_salt()
        );
    }
}
