//! Running namespace-bound work on a short-lived OS thread.
//!
//! `setns(2)` changes the namespace of the calling *thread*. A tokio task migrates between
//! worker threads at every `.await`, so entering a namespace from async code would leave some
//! worker in a foreign namespace and run unrelated tasks there. Instead, work that must happen
//! inside a namespace (creating a netlink socket, opening `/dev/net/tun`, writing a sysctl) is
//! a synchronous closure run on a fresh thread that enters the namespace, runs it and ends.
//! The thread is never "restored"; it is thrown away.

use std::panic::resume_unwind;

use nix::sched::CloneFlags;

use crate::{Netns, error::NetnsError};

/// The name of the threads that run work inside a namespace (`comm` in `/proc`).
pub const RUNNER_THREAD_NAME: &str = "sbx-netns";

impl Netns {
    /// Runs `f` on a new OS thread inside this namespace and returns its result once the
    /// thread has ended, so no thread of ours is left in the namespace when this returns.
    ///
    /// The caller's tracing dispatcher and current span are carried into the thread, so spans
    /// made by `f` are children of the caller's. A panic in `f` is resumed in the caller.
    /// Must be called within a tokio runtime.
    pub async fn run<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let handle = self.spawn(f)?;
        let joined = tokio::task::spawn_blocking(move || handle.join()).await;
        match joined {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(join_error) => resume_unwind(join_error.into_panic()),
        }
    }

    /// Like [`Netns::run`], for synchronous callers: blocks the calling thread until `f` is done.
    /// Never call it from async code (it would block a runtime worker).
    pub fn run_blocking<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.spawn(f)?.join() {
            Ok(result) => result,
            Err(panic) => resume_unwind(panic),
        }
    }

    fn spawn<F, T>(
        &self,
        f: F,
    ) -> Result<std::thread::JoinHandle<Result<T, NetnsError>>, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let fd = self.shared_fd();
        let path = self.path().to_path_buf();
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let parent = tracing::Span::current();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name(RUNNER_THREAD_NAME.into())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    let _entered = parent.enter();
                    nix::sched::setns(&*fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        NetnsError::Enter {
                            path: thread_path,
                            source: e.into(),
                        }
                    })?;
                    // A panic in `f` ends the thread; `join` hands it to the caller.
                    Ok(f())
                })
            })
            .map_err(|source| NetnsError::Thread { path, source })
    }
}
