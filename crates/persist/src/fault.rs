//! Kill points for the crash tests (feature `fault-injection` only: a release build has none).
//!
//! A kill point is a place where a process may die, named for what is about to be done (or
//! half done). Every kill point of a run counts down one shared counter; when it is at zero
//! the process kills itself with SIGKILL, as a shim crashing at that point would (no
//! destructor, no flush: only what the kernel already holds survives). The crates above reach
//! this through their own hooks (`ApplyHooks` of the interworking crate, the state store's
//! [`StateStore::set_kill_countdown`](crate::store::StateStore::set_kill_countdown)).
//!
//! Each point passed is a `debug` event of target [`TARGET`] with the point's name in its
//! `point` field, so that a test can list the points of a run (and choose among them by name)
//! before it kills a process at each of them in turn.

use std::{
    fmt::Display,
    sync::atomic::{AtomicUsize, Ordering},
};

/// The `tracing` target of the events of kill points.
pub const TARGET: &str = "sandbox_net::kill_point";

/// A kill point named `what`: with a countdown at zero, kills this process with SIGKILL;
/// otherwise counts it down. Nothing without a countdown.
pub fn kill_point(countdown: Option<&AtomicUsize>, what: &dyn Display) {
    kill_point_then(countdown, what, || {});
}

/// [`kill_point`] that runs `before_dying` first when it kills: a half-done write (half a
/// line of a journal) is made there, so that the process dies in the middle of it.
pub fn kill_point_then(
    countdown: Option<&AtomicUsize>,
    what: &dyn Display,
    before_dying: impl FnOnce(),
) {
    let Some(countdown) = countdown else {
        return;
    };
    match countdown.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
        left.checked_sub(1)
    }) {
        Ok(left) => {
            tracing::debug!(target: TARGET, point = %what, left = left - 1, "kill point passed")
        }
        Err(_) => {
            tracing::warn!(target: TARGET, point = %what, "kill point: killing this process");
            before_dying();
            // SAFETY: raise(3) has no preconditions; SIGKILL cannot be caught, so it does not
            // return.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        }
    }
}
