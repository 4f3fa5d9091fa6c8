//! Leader election on a `coordination.k8s.io/v1` Lease, so that of the
//! operator's replicas exactly one writes status and programs nodes.
//!
//! The holder renews every `renew_period`; a follower takes over once the
//! holder's `renewTime + leaseDurationSeconds` has passed, checking right at
//! that instant rather than on a coarse poll, so a killed leader is replaced
//! within one lease duration. Every write carries the resourceVersion it read,
//! so two candidates can never both win the same Lease.
//!
//! Each leadership carries a *term*: `leaseTransitions + 1` of the Lease this
//! replica acquired. Every acquisition (creating the Lease, taking it over, or
//! taking it back after having stepped down) increments `leaseTransitions`,
//! renewals keep it, so a later leader always has a higher term than any
//! earlier one and media nodes can refuse pushes from a deposed leader.
//!
//! A leader steps down on its own clock, without waiting for the API server:
//! at [`RENEW_DEADLINE_FRACTION`] of the lease after its last successful
//! renewal (measured from the instant the written `renewTime` was taken), even
//! while a request is still in flight, and every Lease request is bounded by a
//! timeout. So a leader cut off from the API server stops acting before any
//! other replica can see the Lease expire. A leader that finds someone else
//! holding the Lease steps down at once.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
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
    /// How long a lease is valid after its last renewal (written to the
    /// Lease in whole seconds, at least one, rounded down).
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_period: Duration,
}

/// The part of the written lease duration after the last successful renewal
/// at which a leader that could not renew steps down. The rest is margin for
/// clock skew between replicas and for the step-down to reach every task.
pub const RENEW_DEADLINE_FRACTION: f64 = 2.0 / 3.0;

/// Whether this replica leads, and in which term.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Leadership {
    /// Another replica leads, or nobody does as far as this one knows.
    #[default]
    Following,
    /// This replica leads. `term` is `leaseTransitions + 1` of the Lease it
    /// acquired; 0 means unfenced (leader election disabled).
    Leading {
        /// The leadership term.
        term: u64,
    },
}

impl Leadership {
    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        matches!(self, Self::Leading { .. })
    }

    /// The term while leading.
    pub fn term(&self) -> Option<u64> {
        match self {
            Self::Leading { term } => Some(*term),
            Self::Following => None,
        }
    }
}

/// What one attempt concluded.
#[derive(Debug)]
enum Outcome {
    /// We hold the lease in this term; `renewed` is the local instant that
    /// corresponds to the `renewTime` written.
    Leading { term: u64, renewed: Instant },
    /// Someone else holds it until about this instant.
    Following(Option<Timestamp>),
    /// Someone else wrote the Lease between our read and our write.
    Conflict,
}

/// Why a Lease request failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Runs leader election in the background; the receiver says whether this
/// replica leads and in which term. `stop` (a change, or its sender being
/// dropped) releases the lease (so a successor need not wait for it to
/// expire) and ends the task.
pub fn spawn(
    client: Client,
    cfg: Config,
    mut stop: watch::Receiver<bool>,
) -> (watch::Receiver<Leadership>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Leadership::Following);
    let handle = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let timing = Timing::new(&cfg);
        // While leading: the term and the instant after which we must have
        // stepped down unless a renewal succeeds first.
        let mut leading: Option<(u64, Instant)> = None;
        let step_down = |leading: &mut Option<(u64, Instant)>, why: &str| {
            if let Some((term, _)) = leading.take() {
                warn!(identity = %cfg.identity, lease = %cfg.name, term, "stepping down: {why}");
            }
            tx.send_replace(Leadership::Following);
        };
        loop {
            let deadline = leading.map(|(_, d)| d);
            let result = tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = sleep_until(deadline) => {
                    step_down(&mut leading, "could not renew the lease in time");
                    continue;
                }
                r = tokio::time::timeout(
                    timing.request_timeout,
                    attempt(&api, &cfg, leading.map(|(t, _)| t)),
                ) => r.unwrap_or(Err(AttemptError::Timeout(timing.request_timeout))),
            };
            let wait = match result {
                Ok(Outcome::Leading { term, renewed }) => {
                    if leading.map(|(t, _)| t) != Some(term) {
                        info!(identity = %cfg.identity, lease = %cfg.name, term, "became leader");
                    }
                    leading = Some((term, renewed + timing.renew_deadline));
                    tx.send_replace(Leadership::Leading { term });
                    cfg.renew_period
                }
                Ok(Outcome::Following(expiry)) => {
                    step_down(&mut leading, "another replica holds the lease");
                    until(expiry, cfg.renew_period)
                }
                Ok(Outcome::Conflict) => {
                    // Someone wrote the Lease; it may be a successor. Stop at
                    // once and look again soon.
                    step_down(&mut leading, "the lease changed under us");
                    timing.retry
                }
                Err(e) => {
                    warn!(error = %e, "lease request failed");
                    timing.retry
                }
            };
            let deadline = leading.map(|(_, d)| d);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = sleep_until(deadline) => {
                    step_down(&mut leading, "could not renew the lease in time");
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Stopping: nothing acts as leader any more, then hand the lease on.
        let was_leading = leading.is_some();
        tx.send_replace(Leadership::Following);
        if was_leading {
            match tokio::time::timeout(timing.request_timeout, release(&api, &cfg)).await {
                Ok(Ok(())) => info!("released the lease"),
                Ok(Err(e)) => warn!(error = %e, "could not release the lease"),
                Err(_) => warn!("could not release the lease: the API server did not answer"),
            }
        }
    });
    (rx, handle)
}

/// A bool view of `leadership` (true while leading), for consumers that do
/// not care about the term. The forwarding task ends with the source.
pub fn leading(mut leadership: watch::Receiver<Leadership>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(leadership.borrow_and_update().is_leader());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = leadership.changed() => {
                    if changed.is_err() {
                        // The source is gone: nobody vouches for leadership.
                        tx.send_replace(false);
                        return;
                    }
                    let now = leadership.borrow_and_update().is_leader();
                    tx.send_if_modified(|v| std::mem::replace(v, now) != now);
                }
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

/// Durations derived from a [`Config`].
#[derive(Clone, Copy, Debug, PartialEq)]
struct Timing {
    /// Time after the last successful renewal at which a leader steps down.
    renew_deadline: Duration,
    /// Bound of one attempt (a read and a write) or release.
    request_timeout: Duration,
    /// Pause after a failed attempt.
    retry: Duration,
}

impl Timing {
    fn new(cfg: &Config) -> Self {
        // Others judge expiry by the seconds written into the Lease, which
        // may be less than the configured duration.
        let written = Duration::from_secs(u64::from(lease_seconds(cfg).unsigned_abs()));
        let renew_deadline = written.mul_f64(RENEW_DEADLINE_FRACTION);
        let renew_period = cfg.renew_period.max(Duration::from_millis(10));
        Self {
            renew_deadline,
            // A hung request must not use up the whole renew deadline: leave
            // room for at least one retry after it.
            request_timeout: renew_period.min(renew_deadline / 2),
            retry: renew_period.min(Duration::from_millis(500)),
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
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

/// The term of a Lease with these transitions.
fn term_of(transitions: i32) -> u64 {
    u64::from(transitions.max(0).unsigned_abs()) + 1
}

/// What to write to the Lease, given what was read. `leading` is our term if
/// we currently lead.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Renew: same holder, same term.
    Renew,
    /// Acquire: become (or become again) the holder in a new term.
    Acquire,
    /// Someone else holds an unexpired lease until then.
    Wait(Option<Timestamp>),
}

fn decide(spec: &LeaseSpec, identity: &str, leading: Option<u64>, now: Timestamp) -> Decision {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(1)));
    let expiry = spec.renew_time.as_ref().map(|t| t.0 + duration);
    let expired = expiry.is_none_or(|e| e <= now);
    let term = term_of(spec.lease_transitions.unwrap_or(0));
    if holder == identity && leading == Some(term) {
        Decision::Renew
    } else if holder == identity || holder.is_empty() || expired {
        // Held under our name but not by this leadership (we stepped down,
        // or a previous process with our identity held it): a new term, so
        // whatever acted under the old one is fenced off.
        Decision::Acquire
    } else {
        Decision::Wait(expiry)
    }
}

async fn attempt(
    api: &Api<Lease>,
    cfg: &Config,
    leading: Option<u64>,
) -> Result<Outcome, AttemptError> {
    let current = api.get_opt(&cfg.name).await?;
    // Taken after the read: the renewTime written is never earlier than the
    // local instant the step-down deadline is measured from.
    let (now, renewed) = (Timestamp::now(), Instant::now());
    let Some(current) = current else {
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
            Ok(_) => Ok(Outcome::Leading {
                term: term_of(0),
                renewed,
            }),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Conflict),
            Err(e) => Err(e.into()),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let mut new_spec = spec.clone();
    new_spec.renew_time = Some(MicroTime(now));
    new_spec.lease_duration_seconds = Some(lease_seconds(cfg));
    match decide(&spec, &cfg.identity, leading, now) {
        Decision::Renew => {}
        Decision::Acquire => {
            new_spec.holder_identity = Some(cfg.identity.clone());
            new_spec.acquire_time = Some(MicroTime(now));
            let transitions = spec.lease_transitions.unwrap_or(0).max(0);
            // i32::MAX transitions would take centuries of take-overs; refuse
            // rather than wrap to a lower term.
            let Some(next) = transitions.checked_add(1) else {
                return Ok(Outcome::Following(None));
            };
            new_spec.lease_transitions = Some(next);
        }
        Decision::Wait(expiry) => return Ok(Outcome::Following(expiry)),
    }
    let term = term_of(new_spec.lease_transitions.unwrap_or(0));
    let mut next = current;
    next.spec = Some(new_spec);
    // replace() sends the resourceVersion we read: a concurrent writer makes
    // this fail with 409 instead of both believing they lead.
    match api.replace(&cfg.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(Outcome::Leading { term, renewed }),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Conflict),
        Err(e) => Err(e.into()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, transitions: i32, renewed_ago: i64, secs: i32) -> LeaseSpec {
        let now = Timestamp::now();
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(secs),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_ago))),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    #[test]
    fn the_leader_renews_in_its_term_and_reacquires_in_a_new_one() {
        let now = Timestamp::now();
        let s = spec(Some("a"), 2, 0, 10);
        assert_eq!(decide(&s, "a", Some(3), now), Decision::Renew);
        // Held under our name by an earlier leadership: a new term.
        assert_eq!(decide(&s, "a", None, now), Decision::Acquire);
        assert_eq!(decide(&s, "a", Some(2), now), Decision::Acquire);
    }

    #[test]
    fn a_follower_waits_for_expiry_or_release() {
        let now = Timestamp::now();
        let held = spec(Some("a"), 0, 1, 10);
        assert!(matches!(
            decide(&held, "b", None, now),
            Decision::Wait(Some(_))
        ));
        let expired = spec(Some("a"), 0, 11, 10);
        assert_eq!(decide(&expired, "b", None, now), Decision::Acquire);
        let released = spec(None, 4, 0, 1);
        assert_eq!(decide(&released, "b", None, now), Decision::Acquire);
    }

    #[test]
    fn terms_count_transitions_from_one() {
        assert_eq!(term_of(0), 1);
        assert_eq!(term_of(5), 6);
        assert_eq!(term_of(-3), 1);
    }

    #[test]
    fn the_renew_deadline_is_inside_the_written_lease() {
        let cfg = |lease_ms, renew_ms| Config {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_millis(lease_ms),
            renew_period: Duration::from_millis(renew_ms),
        };
        let t = Timing::new(&cfg(15_000, 5_000));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert!(t.request_timeout <= t.renew_deadline / 2);
        // 2.9 s is written as 2 s, which is what other replicas go by.
        let t = Timing::new(&cfg(2_900, 900));
        assert!(t.renew_deadline < Duration::from_secs(2));
        assert!(t.request_timeout < t.renew_deadline);
    }

    #[test]
    fn leadership_reports_its_term() {
        assert!(!Leadership::Following.is_leader());
        assert_eq!(Leadership::Following.term(), None);
        let l = Leadership::Leading { term: 7 };
        assert!(l.is_leader());
        assert_eq!(l.term(), Some(7));
    }
}
