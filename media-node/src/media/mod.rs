//! The media path: pure building blocks for RTP audio between the caller and the agent.
//!
//! Everything here is synchronous and driven by explicit inputs (packets, times), so it can be
//! unit-tested without sockets or clocks; the only I/O helpers are the UDP socket binder in
//! [`ports`] and the node's shared timing wheel ([`wheel`]).

pub mod dtmf;
pub(crate) mod g711;
pub mod jitter;
pub(crate) mod pacer;
pub mod playout;
pub(crate) mod ports;
pub mod rtcp;
pub mod rtp;
pub(crate) mod signal;
pub(crate) mod source;
pub mod srtp;
pub(crate) mod wheel;
