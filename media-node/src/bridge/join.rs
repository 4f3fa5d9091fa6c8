//! Two calls bridged inside the node (a dial-through transfer): each call's
//! [`JoinPort`] is where the other call's media engine delivers its caller's
//! audio and DTMF. The delivering engine transcodes into the receiving leg's
//! law (nothing to do when both legs use the same codec: the bridge is
//! byte-exact) and the receiving engine sends what it finds as it sends agent
//! audio, paced per call with continuous sequence numbers and timestamps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::agent::session::SharedPlayout;
use crate::media::g711::Law;
use crate::media::playout::FRAME_BYTES;

/// Most audio waiting in a bridged leg's queue (8 frames, 160 ms): when the
/// two legs' clocks drift apart or a leg is on hold, older audio is not
/// allowed to pile up into delay; the frames past it are dropped and counted.
pub(crate) const MAX_BACKLOG_BYTES: usize = 8 * FRAME_BYTES;

/// One call's receiving end of an in-node bridge.
#[derive(Debug)]
pub(crate) struct JoinPort {
    /// The audio and digits for this call's caller, in this call's law.
    pub playout: Arc<SharedPlayout>,
    /// This call's law, kept current by its engine (a re-INVITE may change the codec).
    law: AtomicU8,
}

fn law_code(l: Law) -> u8 {
    match l {
        Law::Ulaw => 0,
        Law::Alaw => 1,
    }
}

impl JoinPort {
    /// A port for a call whose media uses `law`.
    pub fn new(law: Law) -> Arc<JoinPort> {
        Arc::new(JoinPort {
            playout: SharedPlayout::new(MAX_BACKLOG_BYTES),
            law: AtomicU8::new(law_code(law)),
        })
    }

    /// The receiving call's law.
    pub fn law(&self) -> Law {
        if self.law.load(Ordering::Relaxed) == 1 {
            Law::Alaw
        } else {
            Law::Ulaw
        }
    }

    /// Records the receiving call's new law.
    pub fn set_law(&self, law: Law) {
        self.law.store(law_code(law), Ordering::Relaxed);
    }

    /// Delivers one frame in the receiving call's law; false when it was
    /// dropped because the leg is too far behind. The queue's own bound does
    /// the refusing: it holds whole frames only (bound and pushes are both
    /// multiples of a frame), so a frame is taken whole or not at all.
    pub fn deliver(&self, frame: &[u8; FRAME_BYTES]) -> bool {
        self.playout.push_audio(frame) == FRAME_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_bounds_its_backlog_and_tracks_the_law() {
        let p = JoinPort::new(Law::Ulaw);
        assert_eq!(p.law(), Law::Ulaw);
        p.set_law(Law::Alaw);
        assert_eq!(p.law(), Law::Alaw);
        let f = [0x55u8; FRAME_BYTES];
        for _ in 0..MAX_BACKLOG_BYTES / FRAME_BYTES {
            assert!(p.deliver(&f));
        }
        assert!(!p.deliver(&f), "past the backlog bound");
        let mut out = [0u8; FRAME_BYTES];
        p.playout.next_frame(&mut out);
        assert_eq!(out, f);
        assert!(p.deliver(&f), "room again after a frame left");
    }
}
