//! The Switchboard operator: reconciles `SipTrunk` and `PhoneNumber`
//! resources into routing configuration and programs the media-node fleet.

pub mod crd;
pub mod routing;
