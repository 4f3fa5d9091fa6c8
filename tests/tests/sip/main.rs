//! SIP against real nodes: SIPp and baresip as carriers and callers, the call API, drain, the dashboard's metrics.
//!
//! One test binary per kind of test (each file is a module) rather than one per file: linking
//! them is most of an incremental `make test` build.

mod api_support;

mod api_auth;
mod api_call_control;
mod api_outbound;
mod api_pacing;
mod api_transfer;
mod api_transfer_dial;
mod dashboard;
mod drain;
mod sip_baresip;
mod sip_health;
mod sip_inbound;
mod sip_inbound_auth;
mod sip_malformed;
mod sip_media_advertise;
mod sip_outbound;
mod sip_outbound_ringing;
mod sip_register;
mod sip_srtp;
