//! `Netns::run_queued`: short work queued at once in one namespace runs on one thread inside
//! it, in order, and each caller gets its own result (or its panic).

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{fs, time::Duration};

use sandbox_net_netns::testing::{TestNetns, require_root};

/// The calling thread's id and network namespace.
fn thread_and_netns() -> (i32, String) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let ns = fs::read_link("/proc/thread-self/ns/net").unwrap();
    (tid, ns.display().to_string())
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn work_queued_at_once_runs_on_one_thread_inside_the_namespace_in_order() {
    require_root();
    let ns = TestNetns::new();
    let inside = format!(
        "net:[{}]",
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(ns.netns().path()).unwrap())
    );
    let mine = thread_and_netns();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // The first job holds the thread long enough for the others, queued in the same poll,
    // to find it busy.
    let jobs = (0..32).map(|i| {
        let order = order.clone();
        ns.netns().run_queued(move || {
            if i == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            order.lock().unwrap().push(i);
            (i, thread_and_netns())
        })
    });
    let results = futures::future::join_all(jobs).await;
    let mut threads = std::collections::BTreeSet::new();
    for (i, result) in results.into_iter().enumerate() {
        let (j, (tid, netns)) = result.unwrap();
        assert_eq!(i, j, "each caller gets its own result");
        assert_ne!(netns, mine.1, "job {i} ran in this process's namespace");
        assert_eq!(netns, inside, "job {i} ran in another namespace");
        assert_ne!(tid, mine.0);
        threads.insert(tid);
    }
    assert_eq!(threads.len(), 1, "one thread for all: {threads:?}");
    assert_eq!(*order.lock().unwrap(), (0..32).collect::<Vec<_>>());

    // A panic reaches its caller; the queue goes on for the next.
    let panicked = tokio::spawn({
        let netns = ns.netns().clone();
        async move { netns.run_queued(|| panic!("job panicked")).await }
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    let (_, netns) = ns.netns().run_queued(thread_and_netns).await.unwrap();
    assert_ne!(netns, mine.1);
}
