//! The binary's VMM verbs, run as processes: `exec` (with stand-in VMMs that exit non-zero or
//! are killed, and with real QEMU), `vmm-config`, `guest-config`, `hot-add`, `hot-remove`.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;
mod qemu_guest;

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::our_links;
use qemu_guest::{TestVm, add_second_pod_link, base_args, ping_until_answered};
use sandbox_net::guest_config::GuestNetwork;
use sandbox_net_netns::testing::{PodFixture, TestNetns, assert_same_snapshot};
use sandbox_net_persist::{IfName, store::StateStore};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-net");

fn sandbox_net(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the sandbox-net binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn attach(fx: &PodFixture, state: &Path, extra: &[&str]) {
    let mut args = vec![
        "attach",
        "--netns",
        fx.pod.name(),
        "--state",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = sandbox_net(&args);
    assert!(out.status.success(), "attach: {}", stderr(&out));
}

fn detach(state: &Path) {
    let out = sandbox_net(&["detach", "--state", state.to_str().unwrap()]);
    assert!(out.status.success(), "detach: {}", stderr(&out));
}

/// The targets of a process's open descriptors, by number.
fn open_fds(pid: u32) -> Vec<(i32, PathBuf)> {
    let mut fds: Vec<(i32, PathBuf)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            Some((
                e.file_name().to_string_lossy().parse().ok()?,
                std::fs::read_link(e.path()).ok()?,
            ))
        })
        .collect();
    fds.sort();
    fds
}

/// Waits for `path` to hold a pid whose program is now `comm`.
fn wait_for_vmm(path: &Path, comm: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse::<u32>()
            && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "the stand-in VMM never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The descriptor numbers a QEMU `-netdev tap` argument names (`fd=N` or `fds=A:B`).
fn netdev_fds(args: &[String]) -> Vec<i32> {
    let netdev = args
        .iter()
        .find(|a| a.starts_with("tap,"))
        .unwrap_or_else(|| panic!("no -netdev tap in {args:?}"));
    let value = netdev
        .split(',')
        .find_map(|kv| kv.strip_prefix("fds=").or_else(|| kv.strip_prefix("fd=")))
        .unwrap();
    value.split(':').map(|n| n.parse().unwrap()).collect()
}

fn exec_stand_in(state: &Path, script: &str) -> Child {
    Command::new(BIN)
        .args([
            "exec",
            "--state",
            state.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
            "vmm",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn wait_until_gone(fx: &PodFixture, link: &str) -> bool {
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    for _ in 0..200 {
        if rtnl.link_by_name(link).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn exec_hands_over_exactly_the_queues_and_passes_on_a_killed_vmms_status() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    // The state in a directory of its own, for `reconcile`.
    let states = dir.path().join("states");
    let state = states.join("state.json");
    // Four pairs asked for, two vCPUs: two pairs.
    attach(
        &fx,
        &state,
        &["--queues", "4", "--vcpus", "2", "--no-persist"],
    );
    assert_eq!(our_links(&fx.pod), ["tap0_kata"]);

    // A stand-in VMM (no VMM takes these arguments without booting): it records its pid and
    // the network arguments appended to its command line, then sleeps with what it was given.
    let (pidfile, argsfile) = (dir.path().join("pid"), dir.path().join("args"));
    let script = format!(
        "echo $$ > {}; printf '%s\\n' \"$@\" > {}; exec sleep 600",
        pidfile.display(),
        argsfile.display()
    );
    let mut exec = exec_stand_in(&state, &script);
    let vmm = wait_for_vmm(&pidfile, "sleep");
    let args: Vec<String> = std::fs::read_to_string(&argsfile)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(args[0], "-netdev");
    assert_eq!(args[2], "-device");
    assert!(args[3].ends_with(",mq=on,vectors=6"), "{args:?}");
    let queues = netdev_fds(&args);
    assert_eq!(queues.len(), 2);
    assert_only_the_vmm_holds_the_queues(&fx, &exec, vmm, &queues);
    // With --no-persist the tap now lives on the VMM's descriptors only.
    let info = &fx.pod.ip_json(&["-d", "link", "show", "tap0_kata"])[0]["linkinfo"]["info_data"];
    assert_eq!(info["persist"], false);
    // The VMM is the sandbox's owner: while it runs, reconcile checks and changes nothing.
    let alive = reconcile_until(&states, "alive_clean");
    assert_eq!(alive["sandboxes"][0]["owner"]["pid"], vmm, "{alive}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = exec.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "the killed VMM's status, as a shell reports it"
    );
    assert!(
        wait_until_gone(&fx, "tap0_kata").await,
        "the tap outlived the VMM"
    );

    // Its owner gone, the sandbox is reaped.
    let out = sandbox_net(&["reconcile", states.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reaped: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reaped["sandboxes"][0]["outcome"], "reaped", "{reaped}");
    assert!(!state.exists());
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

/// The VMM holds exactly its standard streams and the queues its arguments name, in the pod's
/// namespace; sandbox-net (`exec`) keeps no copy: it closes its own once the VMM runs (and the
/// tap's persistence is cleared), while it waits for the VMM.
fn assert_only_the_vmm_holds_the_queues(fx: &PodFixture, exec: &Child, vmm: u32, queues: &[i32]) {
    let fds = open_fds(vmm);
    let numbers: BTreeSet<i32> = fds.iter().map(|(n, _)| *n).collect();
    let mut expected: BTreeSet<i32> = [0, 1, 2].into();
    expected.extend(queues);
    assert_eq!(numbers, expected, "{fds:?}");
    for (n, target) in &fds {
        if queues.contains(n) {
            assert_eq!(target, Path::new("/dev/net/tun"));
        }
    }
    let ns = std::fs::metadata(format!("/proc/{vmm}/ns/net")).unwrap();
    let pod = fx.pod.netns().id();
    assert_eq!((ns.dev(), ns.ino()), (pod.dev, pod.ino));
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(exec.id())
        .iter()
        .any(|(_, t)| t == Path::new("/dev/net/tun"))
    {
        assert!(
            Instant::now() < deadline,
            "sandbox-net still holds queues: {:?}",
            open_fds(exec.id())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `reconcile --json` on `dir` until its one sandbox has `outcome` (exec records the
/// VMM as the owner just after starting it); returns that report.
fn reconcile_until(dir: &Path, outcome: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let out = sandbox_net(&["reconcile", dir.to_str().unwrap(), "--json"]);
        last = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if last["sandboxes"][0]["outcome"] == outcome {
            return last;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("reconcile never reported {outcome}: {last}");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn exec_passes_on_a_failing_vmms_status_and_with_no_persist_leaves_no_descriptor_or_tap() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    attach(&fx, &state, &["--queues", "2", "--no-persist"]);
    assert_eq!(our_links(&fx.pod), ["tap0_kata"]);

    // A stand-in VMM that fails on its own: it records its arguments and its pid, holds what
    // it was given until the test has looked at it, then exits 7. The shell stays the VMM
    // process (no exec), so its descriptors are the ones sandbox-net handed over. The pid
    // file appears by a rename, once the shell has closed every file it wrote.
    let (pidfile, argsfile, go) = (
        dir.path().join("pid"),
        dir.path().join("args"),
        dir.path().join("go"),
    );
    let script = format!(
        "printf '%s\\n' \"$@\" > {args}; echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; \
         while [ ! -e {go} ]; do sleep 0.01; done; exit 7",
        args = argsfile.display(),
        pid = pidfile.display(),
        go = go.display()
    );
    let mut exec = exec_stand_in(&state, &script);
    let vmm = wait_for_vmm(&pidfile, "sh");
    let args: Vec<String> = std::fs::read_to_string(&argsfile)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let queues = netdev_fds(&args);
    assert_eq!(queues.len(), 2, "{args:?}");
    assert_only_the_vmm_holds_the_queues(&fx, &exec, vmm, &queues);
    let info = &fx.pod.ip_json(&["-d", "link", "show", "tap0_kata"])[0]["linkinfo"]["info_data"];
    assert_eq!(info["persist"], false);

    std::fs::write(&go, "").unwrap();
    let status = exec.wait().unwrap();
    assert_eq!(status.code(), Some(7), "the VMM's own exit status");
    // The VMM's descriptors were the tap's last: it went with them.
    assert!(
        wait_until_gone(&fx, "tap0_kata").await,
        "the tap outlived the VMM"
    );
    // The record stays for detach, which finds the tap gone and restores the pod.
    assert!(state.exists());
    detach(&state);
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn exec_passes_on_a_vmms_failure_and_persistent_taps_stay_for_the_next() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    attach(&fx, &state, &["--model", "macvtap"]);

    let out = Command::new(BIN)
        .args([
            "exec",
            "--state",
            state.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("with 1 descriptor(s)"),
        "{}",
        stderr(&out)
    );
    // The macvtap is the pod's until detach, and a second VMM gets its queues again.
    let check = sandbox_net(&["check", "--state", state.to_str().unwrap()]);
    assert!(check.status.success(), "{}", stderr(&check));
    let out = Command::new(BIN)
        .args([
            "exec",
            "--state",
            state.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "for a in \"$@\"; do case $a in tap,*fd=*) exit 0;; esac; done; exit 1",
            "vmm",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    detach(&state);
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn exec_refuses_what_is_not_an_attached_sandbox_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("vmm-ran");
    let vmm = format!("touch {}", marker.display());
    let exec = |state: &Path, vmm_name: &str| {
        sandbox_net(&[
            "exec",
            "--state",
            state.to_str().unwrap(),
            "--vmm",
            vmm_name,
            "--",
            "sh",
            "-c",
            &vmm,
        ])
    };

    let missing = dir.path().join("missing.json");
    let out = exec(&missing, "qemu");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(missing.to_str().unwrap()),
        "{}",
        stderr(&out)
    );

    // A sandbox with nothing attached: a namespace without interfaces.
    let empty = TestNetns::new();
    let state = dir.path().join("empty.json");
    let out = sandbox_net(&[
        "attach",
        "--netns",
        empty.name(),
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let document = std::fs::read(&state).unwrap();
    let out = exec(&state, "qemu");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: state file {}: it records no endpoint; attach the sandbox first",
            state.display()
        )
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        document,
        "the state file is unchanged"
    );

    let out = exec(&state, "firecracker");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("firecracker opens its taps by name"),
        "{}",
        stderr(&out)
    );
    let out = exec(&state, "kvmtool");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&out)
            .contains("unknown VMM \"kvmtool\": expected qemu, cloud-hypervisor or firecracker"),
        "{}",
        stderr(&out)
    );
    assert!(!marker.exists(), "no VMM was started");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn vmm_config_renders_each_vmm_and_refuses_what_it_cannot_take() {
    let fx = PodFixture::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    attach(&fx, &state, &[]);
    let id = StateStore::open(&state)
        .unwrap()
        .load()
        .unwrap()
        .state
        .endpoints[0]
        .id
        .to_string();
    let config = |vmm: &str, extra: &[&str]| -> Value {
        let mut args = vec![
            "vmm-config",
            "--state",
            state.to_str().unwrap(),
            "--vmm",
            vmm,
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = sandbox_net(&args);
        assert!(out.status.success(), "{vmm}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let qemu = config("qemu", &[]);
    assert_eq!(
        qemu["args"],
        serde_json::json!([
            "-netdev",
            format!("tap,id=sbx-net-{id},ifname=tap0_kata,script=no,downscript=no"),
            "-device",
            format!(
                "virtio-net-pci,id=sbx-dev-{id},netdev=sbx-net-{id},mac={},host_mtu=1500,romfile=",
                PodFixture::POD_MAC
            ),
        ])
    );
    let ch = config(
        "cloud-hypervisor",
        &["--rx-rate", "8000000", "--tx-rate", "8000000"],
    );
    assert_eq!(
        ch["args"],
        serde_json::json!([
            "--net",
            format!(
                "tap=tap0_kata,mac={},mtu=1500,num_queues=2,id=sbx-net-{id},bw_size=1000000,bw_one_time_burst=0,bw_refill_time=1000",
                PodFixture::POD_MAC
            ),
        ])
    );
    assert_eq!(ch["vm.add-net"][0]["tap"], "tap0_kata");
    assert_eq!(
        ch["vm.add-net"][0]["rate_limiter_config"]["bandwidth"]["size"],
        1_000_000
    );
    let fc = config("firecracker", &["--rx-rate", "8000000"]);
    assert_eq!(
        fc["network-interfaces"],
        serde_json::json!([{
            "iface_id": "eth0",
            "host_dev_name": "tap0_kata",
            "guest_mac": PodFixture::POD_MAC,
            "rx_rate_limiter": {"bandwidth": {"size": 1_000_000, "refill_time": 1000}},
        }])
    );
    // The tap opens the way Firecracker opens it (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, not
    // multi-queue): one queue, no EINVAL.
    let tap = fx
        .pod
        .netns()
        .open_tap_queues(&IfName::new("tap0_kata").unwrap(), 1, true)
        .await
        .unwrap();
    drop(tap);

    // Two queue pairs are more than Firecracker takes.
    let fx2 = PodFixture::new();
    let state2 = dir.path().join("two.json");
    attach(&fx2, &state2, &["--queues", "2"]);
    let document = std::fs::read(&state2).unwrap();
    let id2 = StateStore::open(&state2)
        .unwrap()
        .load()
        .unwrap()
        .state
        .endpoints[0]
        .id
        .to_string();
    let out = sandbox_net(&[
        "vmm-config",
        "--state",
        state2.to_str().unwrap(),
        "--vmm",
        "firecracker",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: firecracker takes at most 1 queue pair(s) per network device; 2 requested by endpoint {id2}"
        )
    );
    assert_eq!(std::fs::read(&state2).unwrap(), document);
    // Cloud Hypervisor cannot limit the directions apart.
    let out = sandbox_net(&[
        "vmm-config",
        "--state",
        state.to_str().unwrap(),
        "--vmm",
        "cloud-hypervisor",
        "--rx-rate",
        "1000",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("give rx and tx the same rate"),
        "{}",
        stderr(&out)
    );
    let out = sandbox_net(&[
        "vmm-config",
        "--state",
        state.to_str().unwrap(),
        "--vmm",
        "xen",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown VMM \"xen\""),
        "{}",
        stderr(&out)
    );
    // The text form is a command line.
    let out = sandbox_net(&[
        "vmm-config",
        "--state",
        state.to_str().unwrap(),
        "--vmm",
        "qemu",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with(&format!("-netdev tap,id=sbx-net-{id},ifname=tap0_kata")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    detach(&state);
    detach(&state2);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn guest_config_prints_the_recorded_network() {
    let fx = PodFixture::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    attach(&fx, &state, &["--model", "macvtap"]);
    let out = sandbox_net(&["guest-config", "--state", state.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: GuestNetwork = serde_json::from_slice(&out.stdout).unwrap();
    let recorded = StateStore::open(&state).unwrap().load().unwrap().state;
    assert_eq!(printed, GuestNetwork::from_state(&recorded));
    // What the pod had, though the macvtap model took the addresses off its link.
    assert_eq!(printed.interfaces[0].mac.to_string(), PodFixture::POD_MAC);
    assert_eq!(
        printed.interfaces[0]
            .addresses
            .iter()
            .map(|a| format!("{}/{}", a.address, a.prefix_len))
            .collect::<Vec<_>>(),
        [PodFixture::POD_V4, PodFixture::POD_V6]
    );
    assert_eq!(printed.routes.len(), 2, "{:?}", printed.routes);
    assert_eq!(printed.neighbours.len(), 2, "{:?}", printed.neighbours);

    let out = sandbox_net(&[
        "guest-config",
        "--state",
        state.to_str().unwrap(),
        "--format",
        "kernel-ip",
        "--dns",
        "10.0.0.53",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ip=10.200.0.2::10.200.0.1:255.255.255.0::eth0:off:10.0.0.53"
    );
    let out = sandbox_net(&[
        "guest-config",
        "--state",
        state.to_str().unwrap(),
        "--format",
        "kernel-ip",
        "--json",
    ]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["kernel_ip"],
        "ip=10.200.0.2::10.200.0.1:255.255.255.0::eth0:off"
    );
    let out = sandbox_net(&[
        "guest-config",
        "--state",
        state.to_str().unwrap(),
        "--format",
        "kernel-ip",
        "--interface",
        "eth7",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the guest has no interface eth7"),
        "{}",
        stderr(&out)
    );
    detach(&state);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn hot_add_and_remove_refuse_a_socket_that_is_not_qemus_and_change_nothing() {
    let fx = PodFixture::new();
    add_second_pod_link(&fx);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    // Attach eth0 only: eth1 gets no address until after the attach.
    fx.pod.ip(&["addr", "flush", "dev", "eth1"]);
    attach(&fx, &state, &[]);
    fx.pod.ip(&["addr", "add", "10.201.0.2/24", "dev", "eth1"]);
    // The kernel reports the persistent tap's lost carrier (its last queue closed with the
    // attach) a moment later (link watch): wait for it before taking the snapshot.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fx.pod.ip_json(&["link", "show", "tap0_kata"])[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "NO-CARRIER")
    {
        assert!(Instant::now() < deadline, "tap0_kata keeps its carrier");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = fx.pod.snapshot();
    let document = std::fs::read(&state).unwrap();

    let socket = dir.path().join("ssh.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().unwrap();
            std::io::Write::write_all(&mut stream, b"SSH-2.0-OpenSSH_9.2p1\r\n").unwrap();
        }
    });
    let out = sandbox_net(&[
        "hot-add",
        "--state",
        state.to_str().unwrap(),
        "--qmp",
        socket.to_str().unwrap(),
        "--interface",
        "eth1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(&format!(
            "error: {} is not a QEMU QMP socket",
            socket.display()
        )),
        "{}",
        stderr(&out)
    );
    let id = StateStore::open(&state)
        .unwrap()
        .load()
        .unwrap()
        .state
        .endpoints[0]
        .id
        .to_string();
    let out = sandbox_net(&[
        "hot-remove",
        "--state",
        state.to_str().unwrap(),
        "--qmp",
        socket.to_str().unwrap(),
        "--endpoint",
        &id,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a QEMU QMP socket"),
        "{}",
        stderr(&out)
    );
    server.join().unwrap();
    let out = sandbox_net(&[
        "hot-remove",
        "--state",
        state.to_str().unwrap(),
        "--qmp",
        socket.to_str().unwrap(),
        "--endpoint",
        "eth0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("\"eth0\" is not an endpoint id"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        document,
        "the state file is unchanged"
    );
    assert_same_snapshot(&before, &fx.pod.snapshot());
    detach(&state);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root, a real kernel and QEMU: run with --features root-tests"
)]
async fn exec_boots_qemu_on_a_macvtap_with_two_queue_pairs_and_hot_plugs_through_the_cli() {
    let fx = PodFixture::new();
    add_second_pod_link(&fx);
    // eth1 joins later, by hot-add: no address (so not attached) until then.
    fx.pod.ip(&["addr", "flush", "dev", "eth1"]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let before = fx.pod.snapshot();
    attach(&fx, &state, &["--model", "macvtap", "--queues", "2"]);
    let out = sandbox_net(&[
        "guest-config",
        "--state",
        state.to_str().unwrap(),
        "--format",
        "kernel-ip",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ip = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let vm_dir = tempfile::tempdir().unwrap();
    let qmp = vm_dir.path().join("qmp.sock");
    let mut command = Command::new(BIN);
    command
        .args([
            "exec",
            "--state",
            state.to_str().unwrap(),
            "--",
            "qemu-system-x86_64",
        ])
        .args(base_args(2, &ip, &qmp))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut vm = TestVm::from_child(command.spawn().unwrap(), qmp.clone(), vm_dir);
    let eth0 = vm
        .boot_report
        .iter()
        .find(|i| i.name == "eth0")
        .unwrap()
        .clone();
    assert_eq!(eth0.mac, PodFixture::POD_MAC);
    assert_eq!((eth0.rx_queues, eth0.tx_queues), (2, 2));
    assert_eq!(eth0.addresses[0], PodFixture::POD_V4);
    let report = ping_until_answered(fx.host.netns(), "10.200.0.2".parse().unwrap(), 3).await;
    assert_eq!(report.received, 3, "{report:?}");

    // hot-add / hot-remove through the CLI, into the QEMU that exec started.
    fx.pod.ip(&["addr", "add", "10.201.0.2/24", "dev", "eth1"]);
    let out = sandbox_net(&[
        "hot-add",
        "--state",
        state.to_str().unwrap(),
        "--qmp",
        qmp.to_str().unwrap(),
        "--interface",
        "eth1",
        "--json",
    ]);
    assert!(out.status.success(), "hot-add: {}", stderr(&out));
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = added[0]["endpoint"].as_str().unwrap().to_string();
    vm.wait_for_interface("eth1", Duration::from_secs(120));
    vm.must("ip addr add 10.201.0.2/24 dev eth1 && ip link set eth1 up");
    let report = ping_until_answered(fx.host.netns(), "10.201.0.2".parse().unwrap(), 1).await;
    assert_eq!(report.received, 1);
    let out = sandbox_net(&[
        "hot-remove",
        "--state",
        state.to_str().unwrap(),
        "--qmp",
        qmp.to_str().unwrap(),
        "--endpoint",
        &id,
    ]);
    assert!(out.status.success(), "hot-remove: {}", stderr(&out));
    assert!(!vm.interfaces().iter().any(|i| i.name == "eth1"));

    // The guest powers off; exec reports QEMU's status.
    assert!(vm.power_off().success());
    detach(&state);
    fx.pod.ip(&["addr", "flush", "dev", "eth1"]);
    assert_same_snapshot(&before, &fx.pod.snapshot());
}
