//! The node's side of the control channel: the operator applies routing
//! configuration (snapshots and deltas), reads a status stream and can start
//! a drain. See `proto/switchboard/v1alpha1/control.proto`.

mod auth;
mod router;
mod server;
mod status;
mod validate;

pub use auth::TokenCheck;
pub use server::{ControlService, serve};
#[cfg(test)]
pub(crate) use validate::{build_snapshot, validate, validate_delta};
