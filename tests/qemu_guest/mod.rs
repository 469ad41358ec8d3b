//! A real QEMU guest for the tests: the stock Debian cloud kernel and a busybox initramfs
//! built by `.ci/test-guest`, booted with `-accel tcg` on the descriptors a test hands over.
//!
//! The guest's init configures one interface from the kernel's `ip=`, reports what it sees
//! (`SBX-IF <name> mac=.. mtu=.. rx=<rx queues> tx=.. addr=..`), prints `SBX-READY`, then
//! runs the lines it reads on its serial console: [`TestVm::run`] is the tests' control
//! channel (the console is this process's pipe to QEMU's stdio).

#![allow(dead_code, clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Write},
    os::fd::BorrowedFd,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Condvar, Mutex, OnceLock},
    time::{Duration, Instant},
};

use sandbox_net_netns::Netns;

/// How long a boot may take to reach `SBX-READY` (TCG on a loaded 2-core machine).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a command in the guest may take (TCG under load is slow, not stuck).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// The kernel and initramfs, built once per test process.
pub fn guest_files() -> &'static (PathBuf, PathBuf) {
    static FILES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/test-guest");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: the QEMU tests need the test guest",
            script.display()
        );
        let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        (dir.join("vmlinuz"), dir.join("initramfs.gz"))
    })
}

/// The arguments of a test VM without its network: `vcpus` vCPUs, the test guest, a QMP
/// socket at `qmp`, the console on stdio, `kernel_args` appended to the command line.
pub fn base_args(vcpus: usize, kernel_args: &str, qmp: &Path) -> Vec<String> {
    let (kernel, initrd) = guest_files();
    [
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-m",
        "256",
        "-smp",
        &vcpus.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        &kernel.to_string_lossy(),
        "-initrd",
        &initrd.to_string_lossy(),
        "-append",
        &format!("console=ttyS0 quiet loglevel=1 panic=-1 no_timer_check {kernel_args}"),
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp.display()),
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// What the guest reported about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestIf {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub rx_queues: u32,
    pub tx_queues: u32,
    pub addresses: Vec<String>,
}

impl GuestIf {
    fn parse(line: &str) -> Option<Self> {
        let mut words = line.strip_prefix("SBX-IF ")?.split_whitespace();
        let name = words.next()?.to_string();
        let mut report = Self {
            name,
            mac: String::new(),
            mtu: 0,
            rx_queues: 0,
            tx_queues: 0,
            addresses: Vec::new(),
        };
        for word in words {
            let (key, value) = word.split_once('=')?;
            match key {
                "mac" => report.mac = value.to_string(),
                "mtu" => report.mtu = value.parse().ok()?,
                "rx" => report.rx_queues = value.parse().ok()?,
                "tx" => report.tx_queues = value.parse().ok()?,
                "addr" => {
                    report.addresses = value
                        .split(',')
                        .filter(|a| !a.is_empty())
                        .map(String::from)
                        .collect()
                }
                _ => {}
            }
        }
        Some(report)
    }
}

#[derive(Default)]
struct Console {
    lines: Vec<String>,
    closed: bool,
}

/// A booted test guest. Dropping it kills QEMU.
pub struct TestVm {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<(Mutex<Console>, Condvar)>,
    /// The QMP socket.
    pub qmp: PathBuf,
    /// What the guest reported at boot, per interface.
    pub boot_report: Vec<GuestIf>,
    seq: u32,
    _dir: tempfile::TempDir,
}

impl TestVm {
    /// Starts QEMU inside `netns` with `net_args` and exactly `fds` inherited, and waits for
    /// the guest to be ready. `kernel_args` go on the guest's command line (`ip=...`).
    pub fn boot(
        netns: &Netns,
        vcpus: usize,
        kernel_args: &str,
        net_args: &[String],
        fds: &[BorrowedFd<'_>],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let qmp = dir.path().join("qmp.sock");
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(base_args(vcpus, kernel_args, &qmp))
            .args(net_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = netns
            .spawn_with_fds(&mut command, fds)
            .unwrap_or_else(|e| panic!("cannot start QEMU: {e}"));
        Self::from_child(child, qmp, dir)
    }

    /// Watches a QEMU (or a program that runs one with the same stdio) started by the test
    /// with piped stdin, stdout and stderr, and waits for the guest to be ready.
    pub fn from_child(mut child: Child, qmp: PathBuf, dir: tempfile::TempDir) -> Self {
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, prefix) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(stderr), "stderr: "),
        ] {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let line = format!("{prefix}{}", line.trim_end_matches('\r'));
                    let (lock, cvar) = &*console;
                    lock.lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .lines
                        .push(line);
                    cvar.notify_all();
                }
                if prefix.is_empty() {
                    let (lock, cvar) = &*console;
                    lock.lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .closed = true;
                    cvar.notify_all();
                }
            });
        }
        let mut vm = Self {
            stdin: child.stdin.take(),
            child,
            console,
            qmp,
            boot_report: Vec::new(),
            seq: 0,
            _dir: dir,
        };
        let ready = vm.wait_for_line(0, |l| l == "SBX-READY", BOOT_TIMEOUT);
        vm.boot_report = vm.lines()[..ready]
            .iter()
            .filter_map(|l| GuestIf::parse(l))
            .collect();
        vm
    }

    /// Everything the console and QEMU's stderr said so far.
    pub fn lines(&self) -> Vec<String> {
        self.console.0.lock().unwrap().lines.clone()
    }

    /// Waits for a line at or after `from` that satisfies `pred`; returns its index. Panics
    /// with the whole console when it does not come within `timeout` or QEMU exits.
    pub fn wait_for_line(
        &self,
        from: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.console;
        let mut console = lock.lock().unwrap();
        loop {
            if let Some(at) = console.lines[from.min(console.lines.len())..]
                .iter()
                .position(|l| pred(l))
            {
                return from + at;
            }
            let now = Instant::now();
            if console.closed || now >= deadline {
                let why = if console.closed {
                    "QEMU's console closed".to_string()
                } else {
                    format!("no answer within {timeout:?}")
                };
                let lines = console.lines.join("\n  ");
                // Not poisoning the lock: the console readers still take it.
                drop(console);
                panic!("{why} waiting for the guest; console:\n  {lines}");
            }
            console = cvar.wait_timeout(console, deadline - now).unwrap().0;
        }
    }

    /// Runs `command` in the guest's shell; returns its exit status and output lines.
    pub fn run(&mut self, command: &str) -> (i32, Vec<String>) {
        self.seq += 1;
        let (begin, end) = (format!("@@B{}", self.seq), format!("@@E{} ", self.seq));
        let from = self.lines().len();
        let stdin = self.stdin.as_mut().expect("the console is open");
        writeln!(stdin, "echo {begin}; {command}; echo \"{end}$?\"").unwrap();
        stdin.flush().unwrap();
        // At the end of a line: were the console to echo the command, its output would follow
        // the echo on the same line.
        let first = self.wait_for_line(from, |l| l.ends_with(&begin), COMMAND_TIMEOUT);
        let last = self.wait_for_line(first, |l| l.starts_with(&end), COMMAND_TIMEOUT);
        let lines = self.lines();
        let status = lines[last][end.len()..].trim().parse().unwrap_or(-1);
        let output = lines[first + 1..last]
            .iter()
            .filter(|l| !l.starts_with("stderr: "))
            .cloned()
            .collect();
        (status, output)
    }

    /// Runs `command`, panicking unless it succeeds; returns its output.
    pub fn must(&mut self, command: &str) -> Vec<String> {
        let (status, output) = self.run(command);
        assert_eq!(status, 0, "`{command}` failed in the guest: {output:?}");
        output
    }

    /// What the guest sees of its interfaces now.
    pub fn interfaces(&mut self) -> Vec<GuestIf> {
        self.must("report")
            .iter()
            .filter_map(|l| GuestIf::parse(l))
            .collect()
    }

    /// Waits until the guest has an interface named `name`.
    pub fn wait_for_interface(&mut self, name: &str, timeout: Duration) -> GuestIf {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.interfaces().into_iter().find(|i| i.name == name) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "the guest has no {name} after {timeout:?}: {:?}",
                self.interfaces()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Powers the guest off and waits for QEMU; returns its exit status.
    pub fn power_off(mut self) -> std::process::ExitStatus {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "poweroff -f");
        }
        self.wait()
    }

    /// Waits for QEMU (or the program that runs it) to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.stdin.take();
        self.child.wait().unwrap()
    }

    /// QEMU's (or its runner's) process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Pings `ip` from `netns` until a reply comes (ARP and the guest's stack may need a moment),
/// then returns the report of a run of `count` echo requests.
pub async fn ping_until_answered(
    netns: &Netns,
    ip: std::net::IpAddr,
    count: u16,
) -> sandbox_net_guest::ping::PingReport {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let report = netns
            .run(move || sandbox_net_guest::ping::ping(ip, 1, Duration::from_secs(2)))
            .await
            .unwrap()
            .unwrap();
        if report.received == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{ip} never answered a ping");
    }
    netns
        .run(move || sandbox_net_guest::ping::ping(ip, count, Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap()
}

/// Adds `eth1` to the pod: a veth whose peer `veth-host1` is in the fixture's host namespace,
/// 10.201.0.2/24 in the pod, 10.201.0.1/24 on the host side.
pub fn add_second_pod_link(fx: &sandbox_net_netns::testing::PodFixture) {
    fx.host.ip(&[
        "link",
        "add",
        "veth-host1",
        "type",
        "veth",
        "peer",
        "name",
        "eth1",
        "netns",
        fx.pod.name(),
    ]);
    fx.host
        .ip_batch("addr add 10.201.0.1/24 dev veth-host1\nlink set veth-host1 up\n");
    fx.pod
        .ip_batch("addr add 10.201.0.2/24 dev eth1\nlink set eth1 up\n");
    // Settled (carrier, IPv6 link-local) before the test takes its snapshot.
    fx.pod.wait_for_link_local("eth1");
    fx.host.wait_for_link_local("veth-host1");
}
