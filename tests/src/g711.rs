//! Reference G.711 (ITU-T G.711, the classic Sun reference code's arithmetic), independent of
//! the node's tables: what the tests compare transcoded audio against.

/// μ-law code to a linear sample.
pub fn ulaw_to_linear(u: u8) -> i32 {
    let u = !u;
    let exp = (u >> 4) & 7;
    let mant = (u & 0x0F) as i32;
    let t = (((mant << 3) + 0x84) << exp) - 0x84;
    if u & 0x80 != 0 { -t } else { t }
}

/// A-law code to a linear sample.
pub fn alaw_to_linear(a: u8) -> i32 {
    let a = a ^ 0x55;
    let exp = (a >> 4) & 7;
    let mut t = ((a & 0x0F) as i32) << 4;
    t += 8;
    if exp != 0 {
        t += 0x100;
    }
    if exp > 1 {
        t <<= exp - 1;
    }
    if a & 0x80 != 0 { t } else { -t }
}

fn segment(v: i32, ends: &[i32; 8]) -> usize {
    ends.iter().position(|&e| v <= e).unwrap_or(8)
}

/// A linear sample to μ-law.
pub fn linear_to_ulaw(pcm: i32) -> u8 {
    const ENDS: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
    let mut v = pcm >> 2;
    let mask = if v < 0 {
        v = -v;
        0x7F
    } else {
        0xFF
    };
    v = v.min(8159) + (0x84 >> 2);
    let seg = segment(v, &ENDS);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    (((seg as i32) << 4) | ((v >> (seg + 1)) & 0x0F)) as u8 ^ mask
}

/// A linear sample to A-law.
pub fn linear_to_alaw(pcm: i32) -> u8 {
    const ENDS: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let mut v = pcm >> 3;
    let mask = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    let seg = segment(v, &ENDS);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let mant = if seg < 2 {
        (v >> 1) & 0x0F
    } else {
        (v >> seg) & 0x0F
    };
    (((seg as i32) << 4) | mant) as u8 ^ mask
}

/// Two linear values agree within G.711's quantisation (one step of the coarser law).
pub fn close(a: i32, b: i32) -> bool {
    (a - b).abs() <= (a.abs().max(b.abs()) / 8).max(48)
}
