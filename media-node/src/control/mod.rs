//! The node's side of the control channel: the operator applies routing
//! configuration (snapshots and deltas), reads a status stream and can start
//! a drain. See `proto/switchboard/v1alpha1/control.proto`.

mod auth;
mod server;
mod status;
mod validate;

pub use auth::TokenCheck;
pub use server::{ControlService, serve};
pub use validate::validate;
#[cfg(test)]
pub(crate) use validate::validate_delta;
