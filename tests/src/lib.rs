//! Harnesses for Switchboard's end-to-end tests: a real Kubernetes API server
//! with etcd, real media-node processes and real SIP peers (SIPp, baresip).
pub mod agent;
pub mod cluster;
pub mod envtest;
pub mod fleet;
pub mod g711;
pub mod helm;
pub mod netns;
pub mod node;
pub mod operator;
pub mod phone;
pub mod poll;
pub mod ports;
pub mod sipp;
pub mod tls;
pub mod webhook;
