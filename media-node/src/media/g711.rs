//! ITU-T G.711 μ-law (PCMU) and A-law (PCMA) companding, and direct transcoding between the two.
//!
//! Linear samples are 16-bit two's complement. The encoders follow the ITU-T G.191 reference
//! (the companion software of G.711): negative inputs are folded with one's complement so that the
//! quantiser is exactly symmetric around zero, and the 14-bit (μ-law) or 13-bit (A-law) input
//! precision is taken from the most significant bits. The decoders return the reconstruction value
//! of each code scaled to 16 bits (μ-law ±32124, A-law ±32256).
//!
//! All tables are computed at compile time by `const fn`s from the algorithm, so there is no
//! start-up work and no hand-typed data except the transcoding tables, which G.711 itself defines
//! (Tables 3 and 4) and which are not a plain decode-then-encode.

/// The two G.711 laws, with their static RTP payload types (RFC 3551).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    /// μ-law, PCMU, payload type 0.
    Ulaw,
    /// A-law, PCMA, payload type 8.
    Alaw,
}

impl Law {
    /// The law for a static payload type (0 or 8).
    #[cfg(test)]
    pub const fn from_payload_type(pt: u8) -> Option<Law> {
        match pt {
            0 => Some(Law::Ulaw),
            8 => Some(Law::Alaw),
            _ => None,
        }
    }

    /// The code of digital silence (the code whose reconstruction is closest to zero).
    pub const fn silence(self) -> u8 {
        match self {
            Law::Ulaw => ULAW_SILENCE,
            Law::Alaw => ALAW_SILENCE,
        }
    }
}

/// μ-law code for silence (positive zero).
pub const ULAW_SILENCE: u8 = 0xFF;
/// A-law code for silence (smallest positive level, +8 in 16-bit units).
pub const ALAW_SILENCE: u8 = 0xD5;

#[cfg(test)]
/// μ-law bias in 14-bit units (G.711 μ-law is a biased logarithm: 33 = 0x84 >> 2).
const ULAW_BIAS: i32 = 33;
#[cfg(test)]
/// Largest μ-law magnitude in 14-bit units before the bias is added (top decision value).
const ULAW_CLIP: i32 = 8159;

#[cfg(test)]
/// Decodes one μ-law code to a 16-bit linear sample (computed; see [`ULAW_TO_LINEAR`]).
const fn ulaw_decode_calc(code: u8) -> i16 {
    // μ-law codes are transmitted inverted.
    let u = !code;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    // Reconstruction value at the middle of the interval, in 16-bit units (14-bit << 2).
    let magnitude = (((mantissa << 3) + (ULAW_BIAS << 2)) << exponent) - (ULAW_BIAS << 2);
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

#[cfg(test)]
/// Decodes one A-law code to a 16-bit linear sample (computed; see [`ALAW_TO_LINEAR`]).
const fn alaw_decode_calc(code: u8) -> i16 {
    // A-law codes have their even bits inverted (0x55).
    let a = code ^ 0x55;
    let exponent = ((a >> 4) & 0x07) as i32;
    let mantissa = (a & 0x0F) as i32;
    // Segments 0 and 1 have the same step; above, each segment doubles it.
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    // In A-law the sign bit set means positive.
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

#[cfg(test)]
/// Encodes a 16-bit linear sample to μ-law.
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let s = sample as i32;
    // One's complement folding keeps the quantiser symmetric (G.191 `ulaw_compress`).
    let (magnitude, sign_mask) = if s < 0 {
        ((!s) >> 2, 0x7Fu8)
    } else {
        (s >> 2, 0xFFu8)
    };
    let mut biased = if magnitude > ULAW_CLIP {
        ULAW_CLIP
    } else {
        magnitude
    };
    biased += ULAW_BIAS;
    // Segment = position of the highest set bit above bit 5 (biased values start at 33).
    let mut segment = 0;
    let mut probe = biased >> 6;
    while probe != 0 {
        segment += 1;
        probe >>= 1;
    }
    let code = if segment >= 8 {
        0x7F
    } else {
        ((segment << 4) | ((biased >> (segment + 1)) & 0x0F)) as u8
    };
    code ^ sign_mask
}

#[cfg(test)]
/// Encodes a 16-bit linear sample to A-law.
pub const fn linear_to_alaw(sample: i16) -> u8 {
    let s = sample as i32;
    // 13-bit signed input; one's complement for negatives keeps the quantiser symmetric.
    let (magnitude, sign_mask) = if s < 0 {
        ((!s) >> 3, 0x55u8)
    } else {
        (s >> 3, 0xD5u8)
    };
    // magnitude is at most 4095 (12 bits), so it never exceeds the top segment.
    let code = if magnitude < 32 {
        // Segments 0 and 1 share the same step (2 in 13-bit units).
        (magnitude >> 1) as u8
    } else {
        let mut segment = 1;
        let mut probe = magnitude >> 6;
        while probe != 0 {
            segment += 1;
            probe >>= 1;
        }
        ((segment << 4) | ((magnitude >> segment) & 0x0F)) as u8
    };
    code ^ sign_mask
}

#[cfg(test)]
const fn build_ulaw_decode() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_decode_calc(i as u8);
        i += 1;
    }
    t
}

#[cfg(test)]
const fn build_alaw_decode() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_decode_calc(i as u8);
        i += 1;
    }
    t
}

#[cfg(test)]
/// μ-law code -> 16-bit linear sample, for every code.
pub static ULAW_TO_LINEAR: [i16; 256] = build_ulaw_decode();
#[cfg(test)]
/// A-law code -> 16-bit linear sample, for every code.
pub static ALAW_TO_LINEAR: [i16; 256] = build_alaw_decode();

#[cfg(test)]
/// Decodes one μ-law code.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_TO_LINEAR[code as usize]
}

#[cfg(test)]
/// Decodes one A-law code.
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_TO_LINEAR[code as usize]
}

/// G.711 Table 3 (μ-law to A-law), indexed by μ-law magnitude number 0..=127 (0 = smallest),
/// giving the A-law magnitude number 1..=128. This is data from the Recommendation, not derived:
/// the standard picks some neighbours differently from decode-then-encode so that tandem
/// conversions behave well.
const G711_TABLE3_U_TO_A: [u8; 128] = [
    1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
    21, 22, 23, 24, 25, 27, 29, 31, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 48, 49, 50,
    51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75,
    76, 77, 78, 79, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99,
    100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118,
    119, 120, 121, 122, 123, 124, 125, 126, 127, 128,
];

/// G.711 Table 4 (A-law to μ-law), indexed by A-law magnitude number minus one (0..=127),
/// giving the μ-law magnitude number 0..=127.
const G711_TABLE4_A_TO_U: [u8; 128] = [
    1, 3, 5, 7, 9, 11, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
    32, 33, 33, 34, 34, 35, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 48, 49, 49, 50,
    51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73,
    74, 75, 76, 77, 78, 79, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96,
    97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115,
    116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127,
];

const fn build_ulaw_to_alaw() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut code = 0;
    while code < 256 {
        let c = code as u8;
        // μ-law: positive codes have the top bit set; magnitude number = 0x7F - low 7 bits.
        let (number, positive) = if c & 0x80 != 0 {
            (0xFF ^ c, true)
        } else {
            (0x7F ^ c, false)
        };
        let a_index = G711_TABLE3_U_TO_A[number as usize] - 1;
        t[code] = if positive {
            0xD5 ^ a_index
        } else {
            0x55 ^ a_index
        };
        code += 1;
    }
    t
}

const fn build_alaw_to_ulaw() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut code = 0;
    while code < 256 {
        let c = code as u8;
        let (index, positive) = if c & 0x80 != 0 {
            (c ^ 0xD5, true)
        } else {
            (c ^ 0x55, false)
        };
        let u_number = G711_TABLE4_A_TO_U[(index & 0x7F) as usize];
        t[code] = if positive {
            0xFF ^ u_number
        } else {
            0x7F ^ u_number
        };
        code += 1;
    }
    t
}

/// μ-law code -> A-law code per G.711 Table 3.
pub static ULAW_TO_ALAW: [u8; 256] = build_ulaw_to_alaw();
/// A-law code -> μ-law code per G.711 Table 4.
pub static ALAW_TO_ULAW: [u8; 256] = build_alaw_to_ulaw();

#[cfg(test)]
/// Transcodes one μ-law code to A-law.
#[inline]
pub fn ulaw_to_alaw(code: u8) -> u8 {
    ULAW_TO_ALAW[code as usize]
}

#[cfg(test)]
/// Transcodes one A-law code to μ-law.
#[inline]
pub fn alaw_to_ulaw(code: u8) -> u8 {
    ALAW_TO_ULAW[code as usize]
}

/// Transcodes a buffer of A-law codes to μ-law in place.
pub fn alaw_to_ulaw_in_place(buf: &mut [u8]) {
    for b in buf {
        *b = ALAW_TO_ULAW[*b as usize];
    }
}

/// Transcodes a buffer of μ-law codes to A-law in place.
pub fn ulaw_to_alaw_in_place(buf: &mut [u8]) {
    for b in buf {
        *b = ULAW_TO_ALAW[*b as usize];
    }
}

/// Transcodes a payload of `from` codes into `to` codes in place (no-op when
/// they are the same law, so a bridge between two legs of one codec is
/// byte-exact).
pub fn transcode_in_place(from: Law, to: Law, buf: &mut [u8]) {
    match (from, to) {
        (Law::Alaw, Law::Ulaw) => alaw_to_ulaw_in_place(buf),
        (Law::Ulaw, Law::Alaw) => ulaw_to_alaw_in_place(buf),
        _ => {}
    }
}

/// Converts a payload of `from` codes into μ-law in place (no-op for μ-law).
pub fn to_ulaw_in_place(from: Law, buf: &mut [u8]) {
    if from == Law::Alaw {
        alaw_to_ulaw_in_place(buf);
    }
}

/// Converts a μ-law payload into `to` codes in place (no-op for μ-law).
pub fn from_ulaw_in_place(to: Law, buf: &mut [u8]) {
    if to == Law::Alaw {
        ulaw_to_alaw_in_place(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reconstruction values in G.711's own units, built from Table 2 of the Recommendation
    /// (segment end points and step sizes), independent of the bit tricks above.
    /// μ-law: 14-bit units; value numbers 0..=127 by magnitude.
    fn ulaw_reference_value(number: u8) -> i32 {
        // Table 2b: segment s has 16 intervals of step 2^(s+1); the first interval of segment 0
        // is half-width (decision 0..1, output 0). Segment s starts at decision value
        // d_s = 33 * 2^s - 33 (0, 33, 99, ...), minus 1 on the boundary the table lists.
        let s = (number >> 4) as i32;
        let q = (number & 0x0F) as i32;
        let step = 2 << s;
        let segment_base = 33 * (1 << s) - 33;
        // Output value = segment base + step * q (e.g. segment 1: 33, 37, ...; segment 0: 0, 2,
        // 4, ...).
        segment_base + step * q
    }

    /// A-law reconstruction values in 12-bit magnitude units *2 (13-bit), per Table 1b.
    fn alaw_reference_value(number: u8) -> i32 {
        // number 1..=128; segment 1 and 2 (our 0 and 1) step 2, then doubling.
        let i = (number - 1) as i32;
        let s = i >> 4;
        let q = i & 0x0F;
        if s == 0 {
            2 * q + 1
        } else {
            let step = 2 << (s - 1);
            let base = 32 << (s - 1);
            base + step * q + step / 2
        }
    }

    #[test]
    fn ulaw_decode_all_256_against_table2() {
        for code in 0..=255u8 {
            let positive = code & 0x80 != 0;
            let number = if positive { 0xFF ^ code } else { 0x7F ^ code };
            let v = ulaw_reference_value(number) * 4;
            let expected = if positive { v } else { -v };
            assert_eq!(ulaw_to_linear(code) as i32, expected, "code {code:#04x}");
        }
    }

    #[test]
    fn alaw_decode_all_256_against_table1() {
        for code in 0..=255u8 {
            let positive = code & 0x80 != 0;
            let index = (code ^ 0x55) & 0x7F;
            let v = alaw_reference_value(index + 1) * 8;
            let expected = if positive { v } else { -v };
            assert_eq!(alaw_to_linear(code) as i32, expected, "code {code:#04x}");
        }
    }

    #[test]
    fn well_known_code_points() {
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        assert_eq!(Law::Ulaw.silence(), 0xFF);
        assert_eq!(Law::from_payload_type(8), Some(Law::Alaw));
        assert_eq!(Law::from_payload_type(9), None);
    }

    #[test]
    fn ulaw_round_trip_every_code() {
        for code in 0..=255u8 {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            if code == 0x7F {
                // Negative zero decodes to 0, which encodes as positive zero.
                assert_eq!(back, 0xFF);
            } else {
                assert_eq!(back, code, "code {code:#04x}");
            }
        }
    }

    #[test]
    fn alaw_round_trip_every_code() {
        for code in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "code {code:#04x}"
            );
        }
    }

    /// Segment boundaries in 16-bit units: the last input of each segment and the first of the
    /// next, for both signs. μ-law decision values between segments (Table 2b, 14-bit) are 31,
    /// 95, 223, 479, 991, 2015, 4063, with the top at 8159.
    #[test]
    fn ulaw_encode_segment_boundaries() {
        let ends = [31, 95, 223, 479, 991, 2015, 4063];
        for (s, &d) in ends.iter().enumerate() {
            let last = (s as u8) << 4 | 0x0F;
            let first = ((s as u8) + 1) << 4;
            let x = (d * 4) as i16;
            assert_eq!(linear_to_ulaw(x - 1), 0xFF ^ last, "+ end of segment {s}");
            assert_eq!(
                linear_to_ulaw(x),
                0xFF ^ first,
                "+ start of segment {}",
                s + 1
            );
            // One's complement symmetry: -x is the mirror of x - 1.
            assert_eq!(linear_to_ulaw(-x), 0x7F ^ last, "- end of segment {s}");
            assert_eq!(
                linear_to_ulaw(-x - 1),
                0x7F ^ first,
                "- start of segment {}",
                s + 1
            );
        }
        // Clipping at the top decision value.
        assert_eq!(linear_to_ulaw(8159 * 4), 0x80);
        assert_eq!(linear_to_ulaw(30000), 0x82);
    }

    #[test]
    fn alaw_encode_segment_boundaries() {
        // A-law segment starts in 16-bit units: 256 << (s - 1) for s = 1..=7.
        for s in 1..=7u8 {
            let x = (256i32 << (s - 1)) as i16;
            let last = ((s - 1) << 4) | 0x0F;
            let first = s << 4;
            assert_eq!(
                linear_to_alaw(x - 1),
                0xD5 ^ last,
                "+ end of segment {}",
                s - 1
            );
            assert_eq!(linear_to_alaw(x), 0xD5 ^ first, "+ start of segment {s}");
            assert_eq!(
                linear_to_alaw(-x),
                0x55 ^ last,
                "- end of segment {}",
                s - 1
            );
            assert_eq!(
                linear_to_alaw(-x - 1),
                0x55 ^ first,
                "- start of segment {s}"
            );
        }
    }

    /// Every 16-bit input: the encoder is monotonic, symmetric, and its reconstruction error is
    /// within the step of the segment it lands in.
    #[test]
    fn encoders_monotonic_symmetric_and_bounded_for_all_inputs() {
        let mut prev_u = i32::MIN;
        let mut prev_a = i32::MIN;
        for x in i16::MIN..=i16::MAX {
            let u = linear_to_ulaw(x);
            let a = linear_to_alaw(x);
            let du = ulaw_to_linear(u) as i32;
            let da = alaw_to_linear(a) as i32;
            assert!(du >= prev_u, "μ-law not monotonic at {x}");
            assert!(da >= prev_a, "A-law not monotonic at {x}");
            prev_u = du;
            prev_a = da;
            // Mirror: x and !x (= -x - 1) quantise to the same magnitude, opposite sign.
            let mx = !x;
            assert_eq!(linear_to_ulaw(mx) ^ 0x80, u, "μ-law symmetry at {x}");
            assert_eq!(linear_to_alaw(mx) ^ 0x80, a, "A-law symmetry at {x}");
            let xi = x as i32;
            if xi.abs() < 32000 {
                let u_step = 8 << ((!u >> 4) & 7);
                assert!((du - xi).abs() <= u_step, "μ-law error at {x}");
                let a_seg = ((a ^ 0x55) >> 4) & 7;
                let a_step = if a_seg == 0 { 16 } else { 16 << (a_seg - 1) };
                assert!((da - xi).abs() <= a_step, "A-law error at {x}");
            }
        }
    }

    #[test]
    fn transcoding_tables_follow_g711_tables_3_and_4() {
        // Spot values read from the Recommendation's tables, in wire codes.
        // μ-law magnitude 0 (0xFF) -> A-law number 1 (0xD5).
        assert_eq!(ulaw_to_alaw(0xFF), 0xD5);
        assert_eq!(ulaw_to_alaw(0x7F), 0x55);
        // μ-law number 127 (0x80, top) -> A-law number 128 (0xAA, top).
        assert_eq!(ulaw_to_alaw(0x80), 0xAA);
        assert_eq!(ulaw_to_alaw(0x00), 0x2A);
        // A-law number 1 -> μ-law number 1; A-law top -> μ-law top.
        assert_eq!(alaw_to_ulaw(0xD5), 0xFE);
        assert_eq!(alaw_to_ulaw(0xAA), 0x80);
        assert_eq!(alaw_to_ulaw(0x2A), 0x00);
        // μ-law number 48 maps to A-law number 46 (not the 45 that decode->encode would give).
        assert_eq!(ulaw_to_alaw(0xFF ^ 48), 0xD5 ^ 45);
        // A-law number 80 maps to μ-law number 79 (decode->encode would give 80).
        assert_eq!(alaw_to_ulaw(0xD5 ^ 79), 0xFF ^ 79);
    }

    #[test]
    fn transcoding_preserves_sign_and_is_close_in_level() {
        for code in 0..=255u8 {
            let a = ulaw_to_alaw(code);
            let (lu, la) = (ulaw_to_linear(code) as i32, alaw_to_linear(a) as i32);
            assert_eq!(code & 0x80, a & 0x80, "sign of μ {code:#04x}");
            // Within one A-law step of the μ-law level (steps are at most 1024 in 16-bit).
            let step = {
                let seg = ((a ^ 0x55) >> 4) & 7;
                if seg == 0 { 16 } else { 16 << (seg - 1) }
            };
            assert!((lu - la).abs() <= step, "μ {code:#04x}: {lu} vs {la}");

            let u = alaw_to_ulaw(code);
            let (la, lu) = (alaw_to_linear(code) as i32, ulaw_to_linear(u) as i32);
            assert_eq!(code & 0x80, u & 0x80, "sign of A {code:#04x}");
            // Table 4 sometimes rounds to the neighbour; allow one step of the coarser law.
            let u_step = 8 << ((!u >> 4) & 7);
            let seg = ((code ^ 0x55) >> 4) & 7;
            let a_step = if seg == 0 { 16 } else { 16 << (seg - 1) };
            assert!(
                (lu - la).abs() <= 2 * u_step.max(a_step),
                "A {code:#04x}: {la} vs {lu}"
            );
        }
    }

    #[test]
    fn tandem_a_u_a_is_transparent_except_known_points() {
        // G.711 tables make A -> μ -> A transparent except where two A-law values share a μ-law
        // value (A-law numbers 26, 28, 30, 32, 45, 47, 63, 80 for either sign).
        let lossy = [26u8, 28, 30, 32, 45, 47, 63, 80];
        for code in 0..=255u8 {
            let number = ((code ^ 0x55) & 0x7F) + 1;
            let back = ulaw_to_alaw(alaw_to_ulaw(code));
            if lossy.contains(&number) {
                assert_ne!(back, code);
            } else {
                assert_eq!(back, code, "A-law {code:#04x}");
            }
        }
    }

    #[test]
    fn in_place_helpers() {
        let mut buf = [0xD5u8, 0x55, 0xAA];
        to_ulaw_in_place(Law::Alaw, &mut buf);
        assert_eq!(buf, [0xFE, 0x7E, 0x80]);
        from_ulaw_in_place(Law::Alaw, &mut buf);
        assert_eq!(buf, [0xD5, 0x55, 0xAA]);
        let mut same = [1u8, 2, 3];
        to_ulaw_in_place(Law::Ulaw, &mut same);
        assert_eq!(same, [1, 2, 3]);
    }
}
