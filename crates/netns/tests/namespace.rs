//! Namespace lifecycle and bad input, against the real kernel.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{fs, path::Path};

use sandbox_net_netns::{
    Netns, NetnsError, NetnsId,
    testing::{TestNetns, require_root, unique_netns_name},
};
use tracing::Instrument;

fn mounted(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

fn ip_netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn create_delete_round_trip_leaves_nothing_mounted() {
    require_root();
    let name = unique_netns_name();
    let netns = Netns::create_named(&name).unwrap();
    let path = netns.path().to_path_buf();
    assert!(netns.created_by_us());
    assert!(!netns.is_host());
    assert!(!netns.is_host_network().unwrap());
    assert!(
        mounted(&path),
        "{} is not a mount point after create",
        path.display()
    );
    assert!(
        ip_netns_list()
            .lines()
            .any(|l| l.split(' ').next() == Some(name.as_str()))
    );
    // The same namespace through another path.
    assert_eq!(Netns::open_named(&name).unwrap().id(), netns.id());

    netns.delete().unwrap();
    assert!(
        !mounted(&path),
        "{} still mounted after delete",
        path.display()
    );
    assert!(
        !path.exists(),
        "{} still exists after delete",
        path.display()
    );
    assert!(!ip_netns_list().contains(&name));
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn create_at_a_path_outside_run_netns() {
    require_root();
    let dir = std::env::temp_dir().join(unique_netns_name());
    fs::create_dir(&dir).unwrap();
    let path = dir.join("ns");
    let netns = Netns::create(&path).unwrap();
    assert!(mounted(&path));
    netns.delete().unwrap();
    assert!(!mounted(&path) && !path.exists());
    fs::remove_dir(&dir).unwrap();
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn creating_over_an_existing_namespace_is_refused_and_harmless() {
    let existing = TestNetns::new();
    let err = Netns::create_named(existing.name()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot create network namespace {}: the path already exists",
            existing.netns().path().display()
        )
    );
    assert_eq!(err.errno(), Some(libc::EEXIST));
    // The existing namespace is untouched.
    assert_eq!(
        Netns::open_named(existing.name()).unwrap().id(),
        existing.netns().id()
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn bad_paths_are_clear_errors() {
    require_root();
    let err = Netns::open("/run/netns/sbxt-does-not-exist").unwrap_err();
    assert_eq!(
        err.to_string(),
        "network namespace /run/netns/sbxt-does-not-exist does not exist"
    );

    let dir = std::env::temp_dir().join(unique_netns_name());
    fs::create_dir(&dir).unwrap();
    let file = dir.join("file");
    fs::write(&file, "not a namespace").unwrap();
    let err = Netns::open(&file).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not a network namespace: it is a regular file",
            file.display()
        )
    );
    let err = Netns::open(&dir).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not a network namespace: it is a directory",
            dir.display()
        )
    );
    fs::remove_dir_all(&dir).unwrap();

    let err = Netns::open_named("a/b").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid network namespace name \"a/b\": it may not contain '/' or NUL"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn destructive_operations_on_foreign_namespaces_are_refused() {
    require_root();
    // The host's own namespace, however it is reached (this process's; PID 1's when visible).
    for path in ["/proc/self/ns/net", "/proc/thread-self/ns/net"] {
        let host = Netns::open(path).unwrap();
        assert!(host.is_host());
        assert!(host.is_host_network().unwrap(), "{path}");
        let err = host.delete().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("refusing to delete {path}: it is the host's own network namespace")
        );
    }
    // A namespace this handle did not create.
    let other = TestNetns::new();
    let opened = Netns::open_named(other.name()).unwrap();
    let err = opened.delete().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "refusing to delete network namespace {}: this process did not create it",
            other.netns().path().display()
        )
    );
    assert!(
        other.netns().path().exists(),
        "the refused delete must leave the namespace"
    );
    // A path that now holds another namespace than the recorded one.
    let wrong = NetnsId {
        dev: other.netns().id().dev,
        ino: other.netns().id().ino + 1,
    };
    let err = Netns::open_created(other.netns().path(), wrong).unwrap_err();
    assert!(matches!(err, NetnsError::IdentityMismatch { .. }), "{err}");
    assert!(err.to_string().starts_with(&format!(
        "network namespace {} is net:[",
        other.netns().path().display()
    )));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn run_executes_inside_the_namespace_and_carries_the_span() {
    let ns = TestNetns::new();
    let expected = ns.netns().id();
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let (inside, span_name) = ns
        .netns()
        .run(|| {
            let meta = fs::metadata("/proc/thread-self/ns/net").unwrap();
            let dev_list = fs::read_to_string("/proc/thread-self/net/dev").unwrap();
            use std::os::unix::fs::MetadataExt;
            let id = NetnsId {
                dev: meta.dev(),
                ino: meta.ino(),
            };
            let span = tracing::Span::current().metadata().map(|m| m.name());
            ((id, dev_list), span)
        })
        .instrument(tracing::info_span!("caller"))
        .await
        .unwrap();
    assert_eq!(inside.0, expected);
    let devices: Vec<&str> = inside
        .1
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(devices, ["lo"], "a fresh namespace holds only lo");
    assert_eq!(
        span_name,
        Some("caller"),
        "the caller's span must be current in the thread"
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
#[should_panic(expected = "boom inside the namespace")]
async fn a_panic_inside_run_reaches_the_caller() {
    let ns = TestNetns::new();
    let _: Result<(), _> = ns.netns().run(|| panic!("boom inside the namespace")).await;
}
