//! Fixtures for privileged tests, shared by every crate of the workspace (feature `testing`).
//!
//! - [`TestNetns`]: a uniquely named namespace (`sbxt-<pid>-<n>-<rand>`) removed on drop,
//!   also when the test panics.
//! - [`PodFixture`]: what CNI leaves behind: a pod namespace holding `eth0`, one end of a veth
//!   pair, with IPv4 and IPv6 addresses, default routes and permanent neighbours; the other end
//!   (`veth-host`) in a host namespace of the test.
//! - [`skip!`](crate::skip) and [`skip_if_unsupported!`](crate::skip_if_unsupported) for a
//!   kernel feature this machine lacks; [`require_root`] fails loudly without root.
//!
//! Fixtures are built with iproute2 (`ip -n NAME ...`), independent of the code under test,
//! and test oracles read the kernel back through `ip -j` / `tc -j`. Nothing here touches the
//! host's own interfaces.

use std::{
    io::Write,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use rand::RngExt;

use crate::{NetlinkError, Netns, NetnsError};

/// The prefix of every namespace made by tests.
pub const TEST_NETNS_PREFIX: &str = "sbxt-";

/// Panics with an explicit message unless the process runs as root: privileged tests never
/// pass silently for lack of privileges.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and a real kernel: \
             run the test suite as root"
        );
    }
}

/// Prints `SKIP: <reason>` and returns from the test. Only for a kernel feature the machine
/// lacks. The line goes straight to stderr, past the test harness's capture, so that every
/// run shows what was skipped.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)+) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIP: {}", format!($($reason)+));
        return;
    }};
}

/// Evaluates a `Result`; if it failed with `errno` (the one errno that means the kernel lacks
/// `feature`, e.g. `EOPNOTSUPP` for ipvlan), prints `SKIP: ...` and returns from the test.
/// Any other result is handed back unchanged.
#[macro_export]
macro_rules! skip_if_unsupported {
    ($result:expr, $feature:expr, $errno:expr) => {
        match $result {
            Err(err) if $crate::testing::Errno::errno(&err) == Some($errno) => {
                $crate::skip!(
                    "{} not supported by this kernel ({})",
                    $feature,
                    $crate::testing::error_chain(&err)
                )
            }
            other => other,
        }
    };
}

/// An error and its sources joined with `: `, as the CLI prints them.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    parts.join(": ")
}

/// Errors that carry an errno, for [`skip_if_unsupported!`](crate::skip_if_unsupported).
pub trait Errno {
    /// The errno, if any.
    fn errno(&self) -> Option<i32>;
}

impl Errno for NetnsError {
    fn errno(&self) -> Option<i32> {
        NetnsError::errno(self)
    }
}

impl Errno for NetlinkError {
    fn errno(&self) -> Option<i32> {
        NetlinkError::errno(self)
    }
}

impl Errno for crate::VhostError {
    fn errno(&self) -> Option<i32> {
        crate::VhostError::errno(self)
    }
}

impl Errno for crate::TapError {
    fn errno(&self) -> Option<i32> {
        crate::TapError::errno(self)
    }
}

impl Errno for crate::MacvtapError {
    fn errno(&self) -> Option<i32> {
        crate::MacvtapError::errno(self)
    }
}

impl Errno for std::io::Error {
    fn errno(&self) -> Option<i32> {
        self.raw_os_error()
    }
}

/// A fresh name `sbxt-<pid>-<counter>-<random>` that no other test or process uses.
pub fn unique_netns_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let salt: u16 = rand::rng().random();
    format!("{TEST_NETNS_PREFIX}{}-{n}-{salt:04x}", std::process::id())
}

/// A namespace created for one test under `/run/netns`, deleted when dropped (also while
/// unwinding from a panic).
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    netns: Option<Netns>,
}

impl TestNetns {
    /// Creates a new uniquely named namespace. Panics (failing the test) if it cannot.
    pub fn new() -> Self {
        require_root();
        let name = unique_netns_name();
        let netns = Netns::create_named(&name)
            .unwrap_or_else(|e| panic!("cannot create test namespace {name}: {e}"));
        Self {
            name,
            netns: Some(netns),
        }
    }

    /// The name, for `ip -n NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace.
    pub fn netns(&self) -> &Netns {
        match &self.netns {
            Some(netns) => netns,
            None => unreachable!("the namespace is only taken in drop"),
        }
    }

    /// Runs `ip -n NAME ARGS...` and returns its stdout; panics with stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_tool("ip", &full, None)
    }

    /// Runs `ip -n NAME -batch -` with `script` on stdin (one `ip` command per line, without
    /// the leading `ip`): hundreds of objects in one process.
    pub fn ip_batch(&self, script: &str) {
        run_tool("ip", &["-n", &self.name, "-batch", "-"], Some(script));
    }

    /// Runs `ip -j -n NAME ARGS...` and parses the JSON.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        parse_json("ip", &full, &run_tool("ip", &full, None))
    }

    /// Runs `tc -j -n NAME ARGS...` and parses the JSON.
    pub fn tc_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        parse_json("tc", &full, &run_tool("tc", &full, None))
    }

    /// Writes a sysctl of this namespace (`/proc/sys/...` relative path, e.g.
    /// `net/ipv6/conf/default/accept_dad`). Panics on failure.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        let value = value.to_string();
        let written = self
            .netns()
            .run_blocking({
                let path = path.clone();
                move || std::fs::write(path, value)
            })
            .unwrap_or_else(|e| panic!("cannot enter {}: {e}", self.name));
        written.unwrap_or_else(|e| panic!("cannot write {path} in {}: {e}", self.name));
    }
}

impl TestNetns {
    /// Waits (up to 5 s) until `dev` has its IPv6 link-local address; panics otherwise.
    pub fn wait_for_link_local(&self, dev: &str) {
        for _ in 0..500 {
            let addrs = self.ip_json(&["-6", "addr", "show", "dev", dev, "scope", "link"]);
            if addrs.as_array().is_some_and(|l| {
                l.iter()
                    .any(|l| l["addr_info"].as_array().is_some_and(|a| !a.is_empty()))
            }) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!(
            "{dev} in {} got no IPv6 link-local address within 5 s",
            self.name
        );
    }
}

impl Default for TestNetns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Some(netns) = self.netns.take()
            && let Err(e) = netns.delete()
        {
            // Drop cannot fail; a leak is reported loudly and found by the leak checks.
            eprintln!("LEAK: test namespace {} not deleted: {e}", self.name);
        }
    }
}

fn run_tool(tool: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(tool);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool} (is iproute2 installed?): {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("cannot feed {tool}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{tool} did not finish: {e}"));
    if !out.status.success() {
        panic!(
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn parse_json(tool: &str, args: &[&str], text: &str) -> serde_json::Value {
    if text.trim().is_empty() {
        return serde_json::Value::Array(vec![]);
    }
    serde_json::from_str(text).unwrap_or_else(|e| {
        panic!(
            "`{tool} {}` printed invalid JSON ({e}): {text}",
            args.join(" ")
        )
    })
}

/// What CNI leaves behind for a pod, built in two throwaway namespaces:
///
/// ```text
///  host namespace                      pod namespace
///  veth-host 10.200.0.1/24  <-veth->  eth0 10.200.0.2/24, fd00:200::2/64, MAC POD_MAC
///            fd00:200::1/64                 default via 10.200.0.1 / fd00:200::1
///            MAC HOST_MAC                   permanent neighbours for both gateways
/// ```
///
/// IPv6 duplicate address detection is off in both namespaces so that addresses are usable,
/// and stable, at once.
#[derive(Debug)]
pub struct PodFixture {
    /// The pod's namespace (the sandbox's).
    pub pod: TestNetns,
    /// The test's stand-in for the host side of the CNI veth.
    pub host: TestNetns,
}

impl PodFixture {
    /// The pod's interface.
    pub const POD_IF: &'static str = "eth0";
    /// The host end of the veth.
    pub const HOST_IF: &'static str = "veth-host";
    /// MAC of `eth0`.
    pub const POD_MAC: &'static str = "02:00:0a:c8:00:02";
    /// MAC of `veth-host`.
    pub const HOST_MAC: &'static str = "02:00:0a:c8:00:01";
    /// IPv4 address of `eth0`.
    pub const POD_V4: &'static str = "10.200.0.2/24";
    /// IPv4 address of `veth-host` (the pod's gateway).
    pub const HOST_V4: &'static str = "10.200.0.1/24";
    /// IPv6 address of `eth0`.
    pub const POD_V6: &'static str = "fd00:200::2/64";
    /// IPv6 address of `veth-host` (the pod's gateway).
    pub const HOST_V6: &'static str = "fd00:200::1/64";

    /// Builds the pod. Panics (failing the test) if any step fails; what was made is removed.
    pub fn new() -> Self {
        let pod = TestNetns::new();
        let host = TestNetns::new();
        for ns in [&pod, &host] {
            ns.sysctl("net/ipv6/conf/all/accept_dad", "0");
            ns.sysctl("net/ipv6/conf/default/accept_dad", "0");
        }
        host.ip(&[
            "link",
            "add",
            Self::HOST_IF,
            "address",
            Self::HOST_MAC,
            "type",
            "veth",
            "peer",
            "name",
            Self::POD_IF,
            "address",
            Self::POD_MAC,
            "netns",
            pod.name(),
        ]);
        host.ip_batch(&format!(
            "addr add {} dev {h}\naddr add {} dev {h} nodad\nlink set {h} up\n",
            Self::HOST_V4,
            Self::HOST_V6,
            h = Self::HOST_IF
        ));
        let gw4 = Self::HOST_V4.split('/').next().unwrap_or_default();
        let gw6 = Self::HOST_V6.split('/').next().unwrap_or_default();
        pod.ip_batch(&format!(
            "link set lo up\n\
             addr add {pod4} dev {p}\n\
             addr add {pod6} dev {p} nodad\n\
             link set {p} up\n\
             route add default via {gw4}\n\
             route add default via {gw6}\n\
             neigh add {gw4} lladdr {mac} dev {p} nud permanent\n\
             neigh add {gw6} lladdr {mac} dev {p} nud permanent\n",
            pod4 = Self::POD_V4,
            pod6 = Self::POD_V6,
            p = Self::POD_IF,
            mac = Self::HOST_MAC,
        ));
        // The kernel adds the IPv6 link-local address shortly after the link comes up; wait
        // for it so that the pod is complete before a test looks at it.
        pod.wait_for_link_local(Self::POD_IF);
        host.wait_for_link_local(Self::HOST_IF);
        Self { pod, host }
    }
}

impl Default for PodFixture {
    fn default() -> Self {
        Self::new()
    }
}
