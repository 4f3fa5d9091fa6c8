//! Hostile traffic against real nodes: floods, malformed and malicious SIP, RTP, TLS, TCP, agent frames, admin requests.
//!
//! One test binary per kind of test (each file is a module) rather than one per file: linking
//! them is most of an incremental `make test` build.

mod hostile_admin;
mod hostile_agent;
mod hostile_digest;
mod hostile_flood;
mod hostile_rtp;
mod hostile_tcp;
mod hostile_tls;
mod hostile_txn;
