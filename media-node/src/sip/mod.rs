//! SIP signalling: framing, transports, transactions, dialogs, digest.

pub mod dialog;
pub mod digest;
pub mod framing;
pub mod headers;
pub mod message;
pub(crate) mod protect;
pub mod session_timer;
pub mod transaction;
pub mod transport;
pub mod uri;

/// Written into User-Agent and Server headers.
pub const USER_AGENT: &str = concat!("switchboard/", env!("CARGO_PKG_VERSION"));

/// The methods we accept, for Allow headers.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, NOTIFY";
