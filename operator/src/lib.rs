//! The Switchboard operator: reconciles `SipTrunk` and `PhoneNumber`
//! resources into routing configuration, programs the media-node fleet and
//! runs `CallCampaign`s.
//!
//! - [`campaign`]: outbound campaigns dialled across the fleet;
//! - [`crd`]: the resource types (and the CRDs generated from them);
//! - [`routing`]: the pure resolver from resources to configuration;
//! - [`reconcile`]: watches, status by server-side apply, Events;
//! - [`fleet`]: programming the media nodes over gRPC;
//! - [`leader`]: Lease-based leader election;
//! - [`source`]: the file source for runs without a cluster;
//! - [`http`], [`metrics`]: `/metrics`, `/healthz`, `/readyz`.

pub mod campaign;
pub mod crd;
pub mod fleet;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod routing;
pub mod source;
pub mod tasks;
