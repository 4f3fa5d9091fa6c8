//! Sockets inside a network namespace the test created (`/run/netns/NAME`, e.g. the real-cluster
//! tests' `sbk8s-ext`, see scripts/cluster-up.sh). A socket belongs to the namespace it was
//! created in, whichever thread uses it later: [`bind_in`] creates it on a short-lived thread
//! that has entered the namespace, and the test's runtime uses it from there.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Runs `f` on a thread inside the network namespace `name` and returns what it made.
pub fn bind_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = format!("/run/netns/{name}");
    let ns = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    std::thread::spawn(move || {
        // SAFETY: setns on a namespace file we hold open; it changes only this thread, which
        // ends when `f` returns.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}
