//! Where resources come from when not from the Kubernetes API.

pub mod files;
pub mod table;
