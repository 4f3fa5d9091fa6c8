//! The operator against a real API server with etcd, the fleet over gRPC, leader election, the Helm chart.
//!
//! One test binary per kind of test (each file is a module) rather than one per file: linking
//! them is most of an incremental `make test` build.

mod campaign;
mod chart_apiserver;
mod chart_rbac;
mod chart_render;
mod envtest;
mod fleet;
mod fleet_tls;
mod leader_election;
mod load_metrics;
mod operator_api;
mod operator_files;
mod operator_scale;
