//! Leader election on a `coordination.k8s.io/v1` Lease, so that of the
//! operator's replicas exactly one writes status and programs nodes.
//!
//! The holder renews every `renew_period`; a follower takes over once the
//! holder's `renewTime + leaseDurationSeconds` has passed, checking right at
//! that instant rather than on a coarse poll, so a killed leader is replaced
//! within one lease duration. Every write carries the resourceVersion it read,
//! so two candidates can never both win the same Lease.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_period: Duration,
}

/// What one attempt concluded.
enum Outcome {
    /// We hold the lease.
    Leading,
    /// Someone else holds it until about this instant.
    Following(Option<Timestamp>),
}

/// Runs leader election in the background; the receiver says whether this
/// replica leads. `stop` releases the lease (so a successor need not wait
/// for it to expire) and ends the task.
pub fn spawn(
    client: Client,
    cfg: Config,
    mut stop: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let mut last_renew: Option<tokio::time::Instant> = None;
        loop {
            let wait = match attempt(&api, &cfg).await {
                Ok(Outcome::Leading) => {
                    if !*tx.borrow() {
                        info!(identity = %cfg.identity, lease = %cfg.name, "became leader");
                    }
                    tx.send_replace(true);
                    last_renew = Some(tokio::time::Instant::now());
                    cfg.renew_period
                }
                Ok(Outcome::Following(expiry)) => {
                    if *tx.borrow() {
                        warn!(identity = %cfg.identity, "lost the lease to another replica");
                    }
                    tx.send_replace(false);
                    last_renew = None;
                    until(expiry, cfg.renew_period)
                }
                Err(e) => {
                    warn!(error = %e, "lease request failed");
                    // Stop acting as leader before the lease could have been
                    // taken over by someone else.
                    let deadline = cfg.lease_duration.mul_f32(0.66);
                    if last_renew.is_some_and(|t| t.elapsed() > deadline) {
                        warn!("could not renew the lease in time; stepping down");
                        tx.send_replace(false);
                        last_renew = None;
                    }
                    Duration::from_millis(500)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {
                    if *tx.borrow() {
                        tx.send_replace(false);
                        if let Err(e) = release(&api, &cfg).await {
                            warn!(error = %e, "could not release the lease");
                        } else {
                            info!("released the lease");
                        }
                    }
                    return;
                }
            }
        }
    });
    (rx, handle)
}

/// Time to wait before looking again: until the holder's lease expires, but
/// never longer than a renew period (the holder may release it early).
fn until(expiry: Option<Timestamp>, cap: Duration) -> Duration {
    let Some(expiry) = expiry else { return cap };
    let left = expiry.duration_since(Timestamp::now());
    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
    left.clamp(Duration::from_millis(50), cap) + Duration::from_millis(20)
}

fn lease_seconds(cfg: &Config) -> i32 {
    i32::try_from(cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

async fn attempt(api: &Api<Lease>, cfg: &Config) -> Result<Outcome, kube::Error> {
    let now = Timestamp::now();
    let Some(current) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(lease_seconds(cfg)),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Outcome::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Following(None)),
            Err(e) => Err(e),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(1)));
    let expiry = spec.renew_time.as_ref().map(|t| t.0 + duration);
    let expired = expiry.is_none_or(|e| e <= now);

    let mut next = current.clone();
    let mut new_spec = spec.clone();
    if holder == cfg.identity {
        new_spec.renew_time = Some(MicroTime(now));
        new_spec.lease_duration_seconds = Some(lease_seconds(cfg));
    } else if holder.is_empty() || expired {
        new_spec.holder_identity = Some(cfg.identity.clone());
        new_spec.acquire_time = Some(MicroTime(now));
        new_spec.renew_time = Some(MicroTime(now));
        new_spec.lease_duration_seconds = Some(lease_seconds(cfg));
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    } else {
        return Ok(Outcome::Following(expiry));
    }
    next.spec = Some(new_spec);
    // replace() sends the resourceVersion we read: a concurrent writer makes
    // this fail with 409 instead of both believing they lead.
    match api.replace(&cfg.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(Outcome::Leading),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Following(None)),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, cfg: &Config) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    api.replace(&cfg.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}
