//! The Switchboard media node: terminates SIP (and, with `media/` and
//! `agent/`, RTP and the agent bridge) for the calls that reach it.
//!
//! Module map: `sip/` is the protocol stack (framing, transports,
//! transactions, dialogs, digest); `routing/` turns a `RoutingConfig` into
//! lookups; `call/` runs inbound admission, the outbound engine and the
//! per-call dialog task, and defines the [`call::CallHandler`] seam the
//! media engine plugs into.
#![warn(missing_docs)]

pub mod admin;
pub mod agent;
pub mod api;
pub mod bridge;
pub mod call;
pub mod config;
pub mod control;
pub mod egress;
pub mod health;
pub mod media;
pub mod metrics;
pub mod node;
pub mod redact;
pub mod register;
pub mod routing;
pub mod sdes;
pub mod sdp;
pub mod sip;
pub mod supervisor;
pub mod webhook;
