//! The Switchboard media node: terminates SIP (and, with `media/` and
//! `agent/`, RTP and the agent bridge) for the calls that reach it.
//!
//! Module map: `sip/` is the protocol stack (framing, transports,
//! transactions, dialogs, digest); `routing/` turns a `RoutingConfig` into
//! lookups; `call/` runs inbound admission, the outbound engine and the
//! per-call dialog task, and defines the [`call::CallHandler`] seam the
//! media engine plugs into.
//!
//! Modules are the crate's own (`pub(crate)`) unless something outside uses
//! them: the binary (`main.rs`: `node`, `bridge`, `call`, `admin`, and the
//! configuration types `node` re-exports), the fuzz targets (the parsers in
//! `sip`, `sdp`, `sdes`, `media`, `agent::twilio`, `call::dtmf`) and the SRTP
//! end-to-end test. Private by default makes rustc report dead code.
#![warn(missing_docs)]

pub mod admin;
pub mod agent;
pub(crate) mod api;
pub mod bridge;
pub mod call;
pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod egress;
pub(crate) mod health;
pub mod media;
pub(crate) mod metrics;
pub mod node;
pub(crate) mod redact;
pub(crate) mod register;
pub(crate) mod routing;
pub mod sdes;
pub mod sdp;
pub mod sip;
pub(crate) mod supervisor;
pub(crate) mod webhook;
