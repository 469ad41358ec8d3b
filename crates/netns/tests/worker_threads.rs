//! No thread of the runtime is ever in a foreign namespace, during or after namespace work.
//!
//! Its own test binary: the check reads every thread of the process, so no other test may run
//! namespace work at the same time.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    sync::{Arc, Barrier},
    time::Duration,
};

use sandbox_net_netns::{
    RUNNER_THREAD_NAME, ScanOptions,
    testing::{PodFixture, TestNetns, require_root},
};

/// `thread name -> namespace link` for every thread of this process.
fn threads() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc/self/task").unwrap().flatten() {
        let dir = entry.path();
        // A thread may end between listing and reading: skip it.
        let (Ok(comm), Ok(ns)) = (
            fs::read_to_string(dir.join("comm")),
            fs::read_link(dir.join("ns/net")),
        ) else {
            continue;
        };
        out.push((comm.trim().to_string(), ns.display().to_string()));
    }
    out
}

const CONCURRENT: usize = 12;

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn no_runtime_thread_is_ever_left_in_a_foreign_namespace() {
    require_root();
    let original = fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string();
    let pods: Vec<PodFixture> = (0..3).map(|_| PodFixture::new()).collect();
    let extra: Vec<TestNetns> = (0..3).map(|_| TestNetns::new()).collect();
    let netns: Vec<_> = pods
        .iter()
        .map(|p| p.pod.netns().clone())
        .chain(extra.iter().map(|t| t.netns().clone()))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("sbxt-worker")
        .enable_all()
        .build()
        .unwrap();

    // Phase 1: while CONCURRENT closures are parked inside namespaces, look at every thread.
    let parked = Arc::new(Barrier::new(CONCURRENT + 1));
    let release = Arc::new(Barrier::new(CONCURRENT + 1));
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let ns = netns[i % netns.len()].clone();
            let (parked, release) = (parked.clone(), release.clone());
            runtime.spawn(async move {
                ns.run(move || {
                    parked.wait();
                    release.wait();
                })
                .await
                .unwrap()
            })
        })
        .collect();
    parked.wait();
    let snapshot = threads();
    release.wait();
    runtime.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let runners: Vec<_> = snapshot
        .iter()
        .filter(|(name, _)| name == RUNNER_THREAD_NAME)
        .collect();
    assert_eq!(
        runners.len(),
        CONCURRENT,
        "every parked closure has its own thread: {snapshot:?}"
    );
    assert!(
        runners.iter().all(|(_, ns)| *ns != original),
        "runner threads are inside the namespaces: {snapshot:?}"
    );
    let others: Vec<_> = snapshot
        .iter()
        .filter(|(name, _)| name != RUNNER_THREAD_NAME)
        .collect();
    assert!(
        others
            .iter()
            .filter(|(name, _)| name == "sbxt-worker")
            .count()
            >= 4,
        "{snapshot:?}"
    );
    for (name, ns) in &others {
        assert_eq!(
            ns, &original,
            "thread {name} is in a foreign namespace while work runs: {snapshot:?}"
        );
    }

    // Phase 2: many mixed operations at once on the multi-thread runtime.
    runtime.block_on(async {
        let mut jobs = Vec::new();
        for round in 0..8 {
            for ns in &netns {
                let ns = ns.clone();
                jobs.push(tokio::spawn(async move {
                    let rtnl = ns.rtnl().await.unwrap();
                    let scan = rtnl.scan(&ScanOptions::unfiltered()).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(round)).await;
                    let lo = rtnl.link_by_name("lo").await.unwrap();
                    let devs = ns
                        .run(|| fs::read_to_string("/proc/thread-self/net/dev").unwrap())
                        .await
                        .unwrap();
                    assert!(devs.contains("lo:"));
                    (scan.interfaces.len(), lo.index)
                }));
            }
        }
        for job in jobs {
            let (links, lo) = job.await.unwrap();
            assert!(links >= 1 && lo == 1);
        }
    });

    // Runner threads end as soon as their closure returns; wait for the last to be reaped.
    let mut after = threads();
    for _ in 0..100 {
        if after.iter().all(|(name, _)| name != RUNNER_THREAD_NAME) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        after = threads();
    }
    for (name, ns) in &after {
        assert_eq!(
            ns, &original,
            "thread {name} was left in a foreign namespace: {after:?}"
        );
    }
    assert!(
        after
            .iter()
            .filter(|(name, _)| name == "sbxt-worker")
            .count()
            >= 4,
        "{after:?}"
    );
}
