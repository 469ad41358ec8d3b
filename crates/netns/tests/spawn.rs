//! Starting a program inside a namespace with exactly the descriptors handed to it.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::MetadataExt,
    },
    process::{Command, Stdio},
};

use sandbox_net_netns::testing::TestNetns;

fn open_fds(pid: u32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn the_child_runs_in_the_namespace_with_only_the_handed_descriptors() {
    let ns = TestNetns::new();
    // Three close-on-exec descriptors: two are handed over, one is not.
    let files: Vec<std::fs::File> = (0..3)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let handed = [files[0].as_fd(), files[2].as_fd()];
    let mut command = Command::new("sleep");
    command
        .arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = ns.netns().spawn_with_fds(&mut command, &handed).unwrap();
    // The child's descriptors are settled once it has exec'd (its comm is then `sleep`) and
    // is asleep: sleep's start-up opens and closes files of its own (the locale archive), so
    // its descriptors are read only once it waits in (clock_)nanosleep (syscalls 230 and 35
    // on x86-64).
    for _ in 0..500 {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap();
        let syscall =
            std::fs::read_to_string(format!("/proc/{}/syscall", child.id())).unwrap_or_default();
        let number = syscall.split_whitespace().next().unwrap_or_default();
        if comm.trim() == "sleep" && (number == "230" || number == "35") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let expected: BTreeSet<i32> = [0, 1, 2, files[0].as_raw_fd(), files[2].as_raw_fd()].into();
    assert_eq!(open_fds(child.id()), expected);
    let child_ns = std::fs::metadata(format!("/proc/{}/ns/net", child.id())).unwrap();
    assert_eq!(
        (child_ns.dev(), child_ns.ino()),
        (ns.netns().id().dev, ns.netns().id().ino)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn a_program_that_cannot_start_is_named() {
    let ns = TestNetns::new();
    let err = ns
        .netns()
        .spawn_with_fds(&mut Command::new("/nonexistent/vmm"), &[])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to start /nonexistent/vmm in network namespace {}",
            ns.netns().path().display()
        )
    );
    assert_eq!(err.source.raw_os_error(), Some(libc::ENOENT));
}
