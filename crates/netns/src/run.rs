//! Running namespace-bound work on a short-lived OS thread.
//!
//! `setns(2)` changes the namespace of the calling *thread*. A tokio task migrates between
//! worker threads at every `.await`, so entering a namespace from async code would leave some
//! worker in a foreign namespace and run unrelated tasks there. Instead, work that must happen
//! inside a namespace (creating a netlink socket, opening `/dev/net/tun`, writing a sysctl) is
//! a synchronous closure run on a fresh thread that enters the namespace, runs it and ends.
//! The thread is never "restored"; it is thrown away.

use std::{
    collections::VecDeque,
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    sync::Mutex,
};

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
        // The thread says it is done by dropping `done` (after `f`, or unwinding from it, or
        // when it could not enter the namespace); joining it then only waits for its exit.
        // Joining on a blocking-pool thread instead would start one more thread per call.
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let handle = self.spawn(move || {
            let _done = done;
            f()
        })?;
        // Never sent: the drop is the signal.
        let _ = finished.await;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => resume_unwind(panic),
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

    /// Like [`Netns::run`], for short work that never waits on anything else (a tap created,
    /// a device opened): calls made while the namespace's queue thread is busy join its queue
    /// instead of starting threads of their own, so that the taps of a whole sandbox, created
    /// at once, cost one thread. The thread ends when its queue is empty.
    pub async fn run_queued<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (send, receive) = tokio::sync::oneshot::channel();
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let parent = tracing::Span::current();
        let job: Job = Box::new(move || {
            let result = tracing::dispatcher::with_default(&dispatch, || {
                let _entered = parent.enter();
                catch_unwind(AssertUnwindSafe(f))
            });
            // The caller's span is let go before the caller is told: it proceeds at once, and
            // the spans it ends next must not outlive this one's last handle.
            drop(parent);
            drop(dispatch);
            // The caller may have gone (its future dropped): nobody to tell.
            let _ = send.send(result);
        });
        let start = {
            let mut queue = self.queued_runner().lock();
            queue.jobs.push_back(job);
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            let runner = self.queued_runner().clone();
            let fd = self.shared_fd();
            let path = self.path().to_path_buf();
            let spawned = std::thread::Builder::new()
                .name(RUNNER_THREAD_NAME.into())
                .spawn(move || {
                    if let Err(e) = nix::sched::setns(&*fd, CloneFlags::CLONE_NEWNET) {
                        tracing::warn!(netns = %path.display(), error = %e, "could not enter the namespace");
                        runner.fail_all();
                        return;
                    }
                    runner.drain();
                });
            if let Err(source) = spawned {
                self.queued_runner().fail_all();
                return Err(NetnsError::Thread {
                    path: self.path().to_path_buf(),
                    source,
                });
            }
        }
        match receive.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => Err(NetnsError::Thread {
                path: self.path().to_path_buf(),
                source: std::io::Error::other("the namespace's queue thread could not enter it"),
            }),
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

type Job = Box<dyn FnOnce() + Send>;

/// The queue of [`Netns::run_queued`] and whether a thread is draining it.
#[derive(Default)]
pub(crate) struct QueuedRunner {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    running: bool,
}

impl std::fmt::Debug for QueuedRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queue = self.lock();
        f.debug_struct("QueuedRunner")
            .field("jobs", &queue.jobs.len())
            .field("running", &queue.running)
            .finish()
    }
}

impl QueuedRunner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Jobs run outside the lock and catch their panics: it is never poisoned by them.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every queued job (their callers are told) and lets a new thread start.
    fn fail_all(&self) {
        let mut queue = self.lock();
        queue.jobs.clear();
        queue.running = false;
    }

    /// Runs the queued jobs (on the thread inside the namespace) until none is left.
    fn drain(&self) {
        loop {
            let job = {
                let mut queue = self.lock();
                match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        queue.running = false;
                        return;
                    }
                }
            };
            job();
        }
    }
}

/// Runs blocking work (an `fsync`, a write to a driver's sysfs `bind`) on tokio's blocking
/// threads and waits for it: such a call can wait milliseconds or far longer (a busy disk, a
/// NIC's reset), and an async worker that waits stalls every task queued on it. A panic of
/// `work` is resumed in the caller.
pub async fn on_blocking_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        // Only a panic: a blocking task is cancelled only by the shutdown of its runtime,
        // which drops the task awaiting it first.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
