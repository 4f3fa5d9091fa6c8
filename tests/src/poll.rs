//! Waiting for something with a deadline instead of sleeping.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every `every` until it returns `Some`, or fails with the
/// last observation after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    let every = Duration::from_millis(100);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}
