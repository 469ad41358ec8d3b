//! Fixtures for privileged tests, shared by every crate of the workspace (feature `testing`).
//!
//! - [`TestNetns`]: a uniquely named namespace (`sbxt-<pid>-<n>-<rand>`) removed on drop,
//!   also when the test panics.
//! - [`PodFixture`]: what CNI leaves behind: a pod namespace holding `eth0`, one end of a veth
//!   pair, with IPv4 and IPv6 addresses, default routes and permanent neighbours; the other end
//!   (`veth-host`) in a host namespace of the test.
//! - [`TestNetns::snapshot`]: a normalized JSON of everything attaching a VM's network may
//!   change, and [`assert_same_snapshot`] to compare two with a readable list of differences.
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

use netlink_packet_route::link::NetkitMode;
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
/// `feature`, e.g. `EOPNOTSUPP` for ipvlan), prints `SKIP: ...` and returns from the test,
/// unless the feature is required (see [`require_feature`]): then the test fails.
/// Any other result is handed back unchanged.
#[macro_export]
macro_rules! skip_if_unsupported {
    ($result:expr, $feature:expr, $errno:expr) => {
        match $result {
            Err(err) if $crate::testing::Errno::errno(&err) == Some($errno) => {
                let reason = format!(
                    "{} not supported by this kernel ({})",
                    $feature,
                    $crate::testing::error_chain(&err)
                );
                $crate::testing::require_feature($feature, &reason);
                $crate::skip!("{reason}")
            }
            other => other,
        }
    };
}

/// The environment variable listing, comma-separated, the kernel features a run requires
/// (`ipvlan,vhost-net,netkit`): the CI lane that boots a kernel having them sets it, so that a
/// test there cannot pass by skipping.
pub const REQUIRE_FEATURES_VAR: &str = "SBX_REQUIRE_FEATURES";

/// Whether `feature` is listed in `$SBX_REQUIRE_FEATURES` ([`REQUIRE_FEATURES_VAR`]).
pub fn feature_required(feature: &str) -> bool {
    std::env::var(REQUIRE_FEATURES_VAR).is_ok_and(|list| listed(&list, feature))
}

/// Whether `feature` is one of the comma-separated names of `list`.
fn listed(list: &str, feature: &str) -> bool {
    list.split(',').any(|f| f.trim() == feature)
}

/// Panics, failing the test, when `feature` is required ([`feature_required`]) but missing:
/// `reason` says what the kernel answered. Otherwise returns and the caller skips.
pub fn require_feature(feature: &str, reason: &str) {
    if feature_required(feature) {
        panic!("{reason}, but {REQUIRE_FEATURES_VAR} requires {feature}");
    }
}

pub use crate::error_chain;

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
    /// Its errno, also under the kernel's reason (see [`crate::kernel_reason`]).
    fn errno(&self) -> Option<i32> {
        crate::errno_in_chain(self)
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

    /// A pod of `n` veths `vb{i}`, each up with its own /30 (`10.64.0.1/30`, `10.64.0.5/30`,
    /// ...), their peers `vp{i}` in the second namespace returned: the many-endpoint pods of
    /// the batch tests, made with one `ip -batch`.
    pub fn pod_with_veths(n: usize) -> (Self, Self) {
        let pod = Self::new();
        let peers = Self::new();
        let mut script = String::new();
        for i in 0..n {
            script.push_str(&format!(
                "link add vb{i} type veth peer name vp{i} netns {}\naddr add 10.{}.{}.{}/30 dev vb{i}\nlink set vb{i} up\n",
                peers.name(),
                64 + i / 16384,
                (i / 64) % 256,
                (i % 64) * 4 + 1
            ));
        }
        pod.ip_batch(&script);
        (pod, peers)
    }

    /// Runs `ip -j -n NAME ARGS...` and parses the JSON.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        parse_json("ip", &full, &run_tool("ip", &full, None))
    }

    /// The names of the namespace's links, as `ip -j link show` lists them.
    pub fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .map(|links| {
                links
                    .iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_else(|| panic!("ip -j link show in {}: not a list", self.name))
    }

    /// Runs `tc -n NAME ARGS...` and returns its stdout; panics with stderr on failure.
    pub fn tc(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_tool("tc", &full, None)
    }

    /// Runs `tc -j -n NAME ARGS...` and parses the JSON.
    pub fn tc_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        parse_json("tc", &full, &run_tool("tc", &full, None))
    }

    /// The HTB classes on `dev`, sorted by handle, read from `tc -d class show` (iproute2 6.1
    /// prints HTB classes as text even with `-j`). The one reader of tc's class lines for every
    /// test: rates are parsed exactly (`1.25Mbit` is 1 250 000 bit/s) and turned into the
    /// bytes per second HTB works in.
    pub fn htb_classes(&self, dev: &str) -> Vec<HtbClass> {
        let text = self.tc(&["-d", "class", "show", "dev", dev]);
        let mut classes: Vec<HtbClass> = text
            .lines()
            .filter(|line| line.starts_with("class htb "))
            .map(HtbClass::parse)
            .collect();
        classes.sort_by(|a, b| a.handle.cmp(&b.handle));
        classes
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
    /// Waits (up to 5 s) until `dev` has its IPv6 link-local address, no longer tentative;
    /// panics otherwise.
    pub fn wait_for_link_local(&self, dev: &str) {
        for _ in 0..500 {
            let addrs = self.ip_json(&["-6", "addr", "show", "dev", dev, "scope", "link"]);
            // Final, not only present: a new address is `tentative` until the kernel's DAD
            // work has run, even with DAD off, and a snapshot taken before would differ.
            if addrs.as_array().is_some_and(|l| {
                l.iter().any(|l| {
                    l["addr_info"].as_array().is_some_and(|a| {
                        !a.is_empty() && a.iter().all(|a| a.get("tentative").is_none())
                    })
                })
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
        let (pod, host) = Self::namespaces();
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
        Self::addressed(pod, host, true)
    }

    /// The same pod with a netkit pair instead of the veth (what Cilium's netkit datapath
    /// leaves): the primary end is `veth-host`, the peer `eth0` in the pod. In `l2` mode both
    /// ends get the fixture's MACs; in `l3` mode they have none, and the pod gets no
    /// neighbour entries (a NOARP device has no use for them).
    ///
    /// The pair is made with rtnetlink (the iproute2 of the build machines predates netkit).
    /// A kernel without netkit answers `EOPNOTSUPP`: that error is returned for the test to
    /// skip on; any failure after it panics.
    pub async fn netkit(mode: NetkitMode) -> std::io::Result<Self> {
        let (pod, host) = Self::namespaces();
        let rtnl = host
            .netns()
            .rtnl()
            .await
            .unwrap_or_else(|e| panic!("no netlink socket in {}: {e}", host.name()));
        let request = rtnetlink::LinkNetkit::new(Self::HOST_IF, Self::POD_IF, mode);
        rtnl.handle()
            .link()
            .add(request.build())
            .execute()
            .await
            .map_err(crate::rtnetlink_to_io)?;
        host.ip(&["link", "set", Self::POD_IF, "netns", pod.name()]);
        let l2 = mode == NetkitMode::L2;
        if l2 {
            host.ip(&["link", "set", Self::HOST_IF, "address", Self::HOST_MAC]);
            pod.ip(&["link", "set", Self::POD_IF, "address", Self::POD_MAC]);
        }
        Ok(Self::addressed(pod, host, l2))
    }

    /// Two fresh namespaces, pod and host, with IPv6 DAD off.
    fn namespaces() -> (TestNetns, TestNetns) {
        let pod = TestNetns::new();
        let host = TestNetns::new();
        for ns in [&pod, &host] {
            ns.sysctl("net/ipv6/conf/all/accept_dad", "0");
            ns.sysctl("net/ipv6/conf/default/accept_dad", "0");
        }
        (pod, host)
    }

    /// Addresses, routes and (with `neighbours`) permanent neighbours on both ends of the
    /// pair, which exists.
    fn addressed(pod: TestNetns, host: TestNetns, neighbours: bool) -> Self {
        host.ip_batch(&format!(
            "addr add {} dev {h}\naddr add {} dev {h} nodad\nlink set {h} up\n",
            Self::HOST_V4,
            Self::HOST_V6,
            h = Self::HOST_IF
        ));
        let gw4 = Self::HOST_V4.split('/').next().unwrap_or_default();
        let gw6 = Self::HOST_V6.split('/').next().unwrap_or_default();
        let mut script = format!(
            "link set lo up\n\
             addr add {pod4} dev {p}\n\
             addr add {pod6} dev {p} nodad\n\
             link set {p} up\n\
             route add default via {gw4}\n\
             route add default via {gw6}\n",
            pod4 = Self::POD_V4,
            pod6 = Self::POD_V6,
            p = Self::POD_IF,
        );
        if neighbours {
            script.push_str(&format!(
                "neigh add {gw4} lladdr {mac} dev {p} nud permanent\n\
                 neigh add {gw6} lladdr {mac} dev {p} nud permanent\n",
                p = Self::POD_IF,
                mac = Self::HOST_MAC,
            ));
        }
        pod.ip_batch(&script);
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

/// A pod whose configuration is not what the kernel makes by default: what a CNI plugin or
/// a user may leave, and what giving the pod back exactly must not lose. Each is a
/// [`PodFixture`] changed with iproute2 (see [`UnusualPod::build`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnusualPod {
    /// The ptp plugin's: the kernel's prefix route of the pod address replaced by a route
    /// through the gateway (`10.200.0.0/24 via 10.200.0.1 src 10.200.0.2`) and a host route
    /// to the gateway; the same for IPv6.
    Ptp,
    /// A second address of each family with `noprefixroute`, one of them with a route of
    /// its own at another metric.
    NoPrefixRoute,
    /// Default routes in table 100 (policy routing), with the rule that uses it.
    SecondTable,
    /// Routes with a metric and a preferred source, a multipath route and an IPv6 route of
    /// high preference.
    MetricAndSource,
    /// Routes with an MTU (one locked), an advertised MSS and an initial window.
    RouteMtu,
    /// The default route through a gateway outside the pod's prefixes, `onlink`.
    OnlinkDefault,
    /// An ingress qdisc on eth0 with a user's filters, one of them at the priority
    /// sandbox-net's redirects use by default.
    IngressWithFilter,
    /// A root HTB qdisc `1:` on eth0 with classes and a filter: the handle sandbox-net's
    /// own shaping uses.
    RootQdisc,
}

impl UnusualPod {
    /// All of them.
    pub const ALL: [UnusualPod; 8] = [
        UnusualPod::Ptp,
        UnusualPod::NoPrefixRoute,
        UnusualPod::SecondTable,
        UnusualPod::MetricAndSource,
        UnusualPod::RouteMtu,
        UnusualPod::OnlinkDefault,
        UnusualPod::IngressWithFilter,
        UnusualPod::RootQdisc,
    ];

    /// The `ip -batch` / `tc -batch` script that turns a [`PodFixture`] into this pod:
    /// `(ip script, tc script)`.
    pub fn scripts(self) -> (&'static str, &'static str) {
        match self {
            // What the ptp plugin does after adding the address: delete the kernel's route,
            // add a host route to the gateway and the subnet through it.
            UnusualPod::Ptp => (
                "route del 10.200.0.0/24 dev eth0 proto kernel\n\
                 route add 10.200.0.1/32 dev eth0 scope link src 10.200.0.2\n\
                 route add 10.200.0.0/24 via 10.200.0.1 dev eth0 src 10.200.0.2\n\
                 route del fd00:200::/64 dev eth0 proto kernel\n\
                 route add fd00:200::1/128 dev eth0 metric 100\n\
                 route add fd00:200::/64 via fd00:200::1 dev eth0 metric 100\n",
                "",
            ),
            UnusualPod::NoPrefixRoute => (
                "addr add 10.201.0.2/24 dev eth0 noprefixroute\n\
                 addr add fd00:201::2/64 dev eth0 nodad noprefixroute\n\
                 route add 10.201.0.0/24 dev eth0 metric 100 src 10.201.0.2\n",
                "",
            ),
            UnusualPod::SecondTable => (
                "route add default via 10.200.0.1 dev eth0 table 100\n\
                 route add 10.202.0.0/16 via 10.200.0.1 dev eth0 table 100 metric 7\n\
                 route add ::/0 via fd00:200::1 dev eth0 table 100\n\
                 rule add from 10.200.0.2 table 100 priority 100\n",
                "",
            ),
            UnusualPod::MetricAndSource => (
                "route add 10.30.0.0/16 via 10.200.0.1 dev eth0 metric 50 src 10.200.0.2\n\
                 route add 10.30.0.0/16 via 10.200.0.3 dev eth0 metric 60\n\
                 route add 10.33.0.0/16 tos 0x10 via 10.200.0.1 dev eth0\n\
                 route add 10.32.0.0/16 nexthop via 10.200.0.1 dev eth0 weight 2 nexthop via 10.200.0.3 dev eth0\n\
                 route add fd00:30::/64 via fd00:200::1 dev eth0 metric 50 src fd00:200::2\n\
                 route add fd00:34::/64 via fd00:200::1 dev eth0 pref high\n",
                "",
            ),
            UnusualPod::RouteMtu => (
                "route add 10.31.0.0/16 via 10.200.0.1 dev eth0 mtu 1400 advmss 1360\n\
                 route add 10.34.0.0/16 via 10.200.0.1 dev eth0 mtu lock 1300 initcwnd 10\n\
                 route add fd00:31::/64 via fd00:200::1 dev eth0 mtu 1280\n",
                "",
            ),
            UnusualPod::OnlinkDefault => (
                "route del default via 10.200.0.1\n\
                 route add default via 169.254.1.1 dev eth0 onlink\n\
                 route add 10.35.0.0/16 via 192.0.2.1 dev eth0 onlink metric 5\n",
                "",
            ),
            UnusualPod::IngressWithFilter => (
                "",
                "qdisc add dev eth0 ingress\n\
                 filter add dev eth0 ingress prio 10 protocol ip u32 match ip src 192.0.2.0/24 flowid 1:1\n\
                 filter add dev eth0 ingress prio 49152 protocol all u32 match u32 0 0 flowid 1:2\n",
            ),
            UnusualPod::RootQdisc => (
                "",
                "qdisc add dev eth0 root handle 1: htb default 2\n\
                 class add dev eth0 parent 1: classid 1:1 htb rate 100mbit\n\
                 class add dev eth0 parent 1:1 classid 1:2 htb rate 50mbit ceil 100mbit\n\
                 filter add dev eth0 parent 1: prio 5 protocol ip u32 match ip dst 10.0.0.0/8 flowid 1:2\n",
            ),
        }
    }

    /// A [`PodFixture`] changed into this pod with iproute2. Panics (failing the test) if a
    /// command fails; the namespaces are removed on drop.
    pub fn build(self) -> PodFixture {
        let fx = PodFixture::new();
        let (ip, tc) = self.scripts();
        if !ip.is_empty() {
            fx.pod.ip_batch(ip);
        }
        if !tc.is_empty() {
            run_tool("tc", &["-n", fx.pod.name(), "-batch", "-"], Some(tc));
        }
        fx
    }
}

impl std::fmt::Display for UnusualPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots: what attaching and detaching a VM's network may change, read with iproute2 only.
// ---------------------------------------------------------------------------------------------

/// What a snapshot keeps of a link from `ip -j -d link show` (besides its sorted `flags` and
/// its `linkinfo`): its configuration, and the promiscuity and allmulticast counts that a
/// macvtap or a bridge raises on the link under it.
const LINK_KEYS: [&str; 10] = [
    "ifname",
    "link_type",
    "mtu",
    "address",
    "txqlen",
    "promiscuity",
    "allmulti",
    "master",
    "link",
    "group",
];
/// Link kinds whose `info_data` is configuration only (a bridge's, say, holds running timers).
const INFO_DATA_KINDS: [&str; 5] = ["tun", "macvtap", "macvlan", "ipvlan", "vlan"];
/// What a snapshot leaves out of an address of `ip -j addr show`: the lifetimes, which count
/// down. Everything else is kept, the flags (`nodad`, `noprefixroute`, `dynamic` for a
/// non-permanent address, ...) included.
const ADDRESS_VOLATILE_KEYS: [&str; 2] = ["valid_life_time", "preferred_life_time"];
/// What a snapshot keeps of a route of `ip -j -d route show table all`: every attribute that
/// is configuration (type, table, metric, TOS, preferred source, IPv6 preference, flags such
/// as `onlink`, the next hops of a multipath route, the metrics such as `mtu` and `advmss`);
/// left out are the `expires` countdown and cache data.
const ROUTE_KEYS: [&str; 17] = [
    "type", "dst", "gateway", "via", "dev", "table", "protocol", "scope", "metric", "prefsrc",
    "pref", "flags", "nexthops", "metrics", "tos", "realms", "nhid",
];
/// What a snapshot keeps of a permanent neighbour of `ip -j neigh show nud permanent`.
const NEIGHBOUR_KEYS: [&str; 4] = ["dst", "dev", "lladdr", "state"];
/// What a snapshot keeps of a qdisc of `tc -j qdisc show`; left out are the `refcnt` and the
/// options (an HTB's count packets).
const QDISC_KEYS: [&str; 5] = ["dev", "kind", "handle", "parent", "root"];
/// What a snapshot keeps of a filter of `tc -j filter show dev DEV ...` (besides the u32
/// `match` and `flowid` and the actions); left out is the kernel-chosen handle (`fh`).
const FILTER_KEYS: [&str; 5] = ["parent", "protocol", "pref", "kind", "chain"];
/// Where a snapshot looks for filters on every link, besides each qdisc's classes: `tc
/// filter show dev DEV` with these arguments (ingress, the egress of a clsact, the root qdisc).
const FILTER_HOOKS: [(&str, &[&str]); 3] = [
    ("ingress", &["ingress"]),
    ("egress", &["egress"]),
    ("root", &[]),
];
/// What a snapshot keeps of a filter's action; left out are the action's `index`, which the
/// kernel numbers anew for every action made (never reusing one), and its reference counts.
const ACTION_KEYS: [&str; 6] = [
    "order",
    "kind",
    "direction",
    "mirred_action",
    "to_dev",
    "control_action",
];

impl TestNetns {
    /// A normalized, deterministic JSON of everything of the namespace that attaching or
    /// detaching a VM's network may change, read with iproute2 only (an oracle independent of
    /// the code under test):
    ///
    /// - `links`: from `ip -j -d link show`: name, type, MTU, MAC, queue length, flags,
    ///   promiscuity and allmulticast counts, master, parent, kind, and the `info_data` of
    ///   tun, macvtap, macvlan, ipvlan and vlan links;
    /// - `addresses`: from `ip -j addr show`, with their flags, without lifetimes;
    /// - `routes`: every table of both families, from `ip -j -d -4|-6 route show table all`;
    /// - `neighbours`: the permanent ones, from `ip -j neigh show nud permanent`;
    /// - `qdiscs`: from `tc -j qdisc show`;
    /// - `classes`: every link's classes with their parameters (rates, ceilings), from `tc
    ///   class show dev DEV` (iproute2 6.1 prints HTB classes as text even with `-j`);
    /// - `filters`: every link's filters and their actions at the ingress, at a clsact's
    ///   egress, under the root qdisc and under each class, from `tc -j filter show dev DEV
    ///   ingress|egress|parent CLASS`.
    ///
    /// Each list is sorted, so two snapshots of an unchanged namespace are equal; compare
    /// them with [`assert_same_snapshot`].
    pub fn snapshot(&self) -> serde_json::Value {
        let links = self.ip_json(&["-d", "link", "show"]);
        serde_json::json!({
            "links": sorted(each(&links).map(snapshot_link).collect()),
            "addresses": self.snapshot_addresses(),
            "routes": self.snapshot_routes(),
            "neighbours": self.snapshot_neighbours(),
            "qdiscs": self.snapshot_qdiscs(),
            "classes": self.snapshot_classes(&links),
            "filters": self.snapshot_filters(&links),
        })
    }

    /// Every class of every link of `links`, as `tc class show` prints it (one line each;
    /// without `-s` the lines hold configuration only).
    fn snapshot_classes(&self, links: &serde_json::Value) -> serde_json::Value {
        let mut classes = Vec::new();
        for dev in each(links).filter_map(|l| l["ifname"].as_str()) {
            let text = self.tc(&["class", "show", "dev", dev]);
            classes.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::json!({ "dev": dev, "class": l })),
            );
        }
        sorted(classes)
    }

    /// The class ids (`1:1`) of `dev`, from `tc class show`.
    fn class_ids(&self, dev: &str) -> Vec<String> {
        self.tc(&["class", "show", "dev", dev])
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2).map(String::from))
            .collect()
    }

    /// Every address of every link, with the link's name.
    fn snapshot_addresses(&self) -> serde_json::Value {
        let mut addresses = Vec::new();
        for link in each(&self.ip_json(&["addr", "show"])) {
            for address in each(&link["addr_info"]) {
                addresses.push(snapshot_address(&link["ifname"], address));
            }
        }
        sorted(addresses)
    }

    /// Every route of every table, IPv4 and IPv6, with its family.
    fn snapshot_routes(&self) -> serde_json::Value {
        let mut routes = Vec::new();
        for (flag, family) in [("-4", "inet"), ("-6", "inet6")] {
            let dump = self.ip_json(&[flag, "-d", "route", "show", "table", "all"]);
            routes.extend(each(&dump).map(|route| snapshot_route(family, route)));
        }
        sorted(routes)
    }

    /// The permanent neighbour entries, IPv4 and IPv6.
    fn snapshot_neighbours(&self) -> serde_json::Value {
        let dump = self.ip_json(&["neigh", "show", "nud", "permanent"]);
        sorted(each(&dump).map(snapshot_neighbour).collect())
    }

    /// Every qdisc of every link.
    fn snapshot_qdiscs(&self) -> serde_json::Value {
        let dump = self.tc_json(&["qdisc", "show"]);
        sorted(each(&dump).map(snapshot_qdisc).collect())
    }

    /// The filters of every link of `links` (an `ip -j link show` dump): at the ingress, at a
    /// clsact's egress, under the root qdisc and under each class.
    fn snapshot_filters(&self, links: &serde_json::Value) -> serde_json::Value {
        let mut filters = Vec::new();
        for dev in each(links).filter_map(|l| l["ifname"].as_str()) {
            let mut hooks: Vec<(String, Vec<String>)> = FILTER_HOOKS
                .iter()
                .map(|(hook, args)| {
                    (
                        hook.to_string(),
                        args.iter().map(|a| a.to_string()).collect(),
                    )
                })
                .collect();
            for class in self.class_ids(dev) {
                hooks.push((class.clone(), vec!["parent".into(), class]));
            }
            for (hook, args) in hooks {
                let mut full = vec!["filter", "show", "dev", dev];
                full.extend(args.iter().map(String::as_str));
                let dump = self.tc_json(&full);
                filters.extend(each(&dump).map(|filter| snapshot_filter(dev, &hook, filter)));
            }
        }
        sorted(filters)
    }
}

/// Panics, failing the test, unless two snapshots of [`TestNetns::snapshot`] are equal; the
/// message lists every difference (see [`snapshot_differences`]).
pub fn assert_same_snapshot(before: &serde_json::Value, after: &serde_json::Value) {
    let differences = snapshot_differences(before, after);
    if !differences.is_empty() {
        panic!(
            "the namespace is not as it was ({} differences):\n  {}",
            differences.len(),
            differences.join("\n  ")
        );
    }
}

/// The differences between two snapshots, one line each: `path: before -> after` for a
/// value that changed, `path: only before: ITEM` / `path: only after: ITEM` for an item of a
/// list that is in one snapshot only. Empty when they are equal.
pub fn snapshot_differences(before: &serde_json::Value, after: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    differences_at("snapshot", before, after, &mut out);
    out
}

fn differences_at(
    path: &str,
    before: &serde_json::Value,
    after: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for key in keys {
                let at = format!("{path}.{key}");
                match (b.get(key), a.get(key)) {
                    (Some(b), Some(a)) => differences_at(&at, b, a, out),
                    (Some(b), None) => out.push(format!("{at}: only before: {b}")),
                    (None, Some(a)) => out.push(format!("{at}: only after: {a}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(b), Value::Array(a)) if b != a => {
            let only_before = items_missing_from(b, a);
            let only_after = items_missing_from(a, b);
            out.extend(
                only_before
                    .iter()
                    .map(|i| format!("{path}: only before: {i}")),
            );
            out.extend(
                only_after
                    .iter()
                    .map(|i| format!("{path}: only after: {i}")),
            );
            if only_before.is_empty() && only_after.is_empty() {
                out.push(format!(
                    "{path}: same items in another order: {before} -> {after}"
                ));
            }
        }
        (b, a) if b != a => out.push(format!("{path}: {b} -> {a}")),
        _ => {}
    }
}

/// The items of `items` that `other` lacks, counting repeated items.
fn items_missing_from<'a>(
    items: &'a [serde_json::Value],
    other: &[serde_json::Value],
) -> Vec<&'a serde_json::Value> {
    let mut unmatched: Vec<&serde_json::Value> = other.iter().collect();
    let mut missing = Vec::new();
    for item in items {
        match unmatched.iter().position(|o| *o == item) {
            Some(at) => {
                unmatched.swap_remove(at);
            }
            None => missing.push(item),
        }
    }
    missing
}

/// A link: [`LINK_KEYS`], its sorted flags, its kind, and the `info_data` of the kinds of
/// [`INFO_DATA_KINDS`].
fn snapshot_link(link: &serde_json::Value) -> serde_json::Value {
    let mut out = pick(link, &LINK_KEYS);
    out.insert("flags".into(), sorted_strings(&link["flags"]));
    let kind = &link["linkinfo"]["info_kind"];
    if !kind.is_null() {
        out.insert("kind".into(), kind.clone());
    }
    let info_data = &link["linkinfo"]["info_data"];
    if kind.as_str().is_some_and(|k| INFO_DATA_KINDS.contains(&k)) && !info_data.is_null() {
        out.insert("info_data".into(), info_data.clone());
    }
    serde_json::Value::Object(out)
}

/// An address of link `ifname`: all it has but [`ADDRESS_VOLATILE_KEYS`].
fn snapshot_address(ifname: &serde_json::Value, address: &serde_json::Value) -> serde_json::Value {
    let mut out = address.as_object().cloned().unwrap_or_default();
    for key in ADDRESS_VOLATILE_KEYS {
        out.remove(key);
    }
    out.insert("ifname".into(), ifname.clone());
    serde_json::Value::Object(out)
}

/// A route of `family` (`inet` or `inet6`): [`ROUTE_KEYS`].
fn snapshot_route(family: &str, route: &serde_json::Value) -> serde_json::Value {
    let mut out = pick(route, &ROUTE_KEYS);
    out.insert("family".into(), family.into());
    serde_json::Value::Object(out)
}

/// A neighbour entry: [`NEIGHBOUR_KEYS`], its state sorted.
fn snapshot_neighbour(neighbour: &serde_json::Value) -> serde_json::Value {
    let mut out = pick(neighbour, &NEIGHBOUR_KEYS);
    out.insert("state".into(), sorted_strings(&neighbour["state"]));
    serde_json::Value::Object(out)
}

/// A qdisc: [`QDISC_KEYS`].
fn snapshot_qdisc(qdisc: &serde_json::Value) -> serde_json::Value {
    serde_json::Value::Object(pick(qdisc, &QDISC_KEYS))
}

/// A filter of `dev` found at `hook`: [`FILTER_KEYS`], a u32 filter's `match` and `flowid`,
/// and its actions' [`ACTION_KEYS`].
fn snapshot_filter(dev: &str, hook: &str, filter: &serde_json::Value) -> serde_json::Value {
    let mut out = pick(filter, &FILTER_KEYS);
    out.insert("dev".into(), dev.into());
    out.insert("hook".into(), hook.into());
    let options = &filter["options"];
    for key in ["match", "flowid"] {
        if !options[key].is_null() {
            out.insert(key.into(), options[key].clone());
        }
    }
    if options["actions"].is_array() {
        let actions = each(&options["actions"])
            .map(|a| serde_json::Value::Object(pick(a, &ACTION_KEYS)))
            .collect();
        out.insert("actions".into(), serde_json::Value::Array(actions));
    }
    serde_json::Value::Object(out)
}

/// The items of a JSON list; none for anything else.
fn each(list: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    list.as_array().into_iter().flatten()
}

/// The entries of `object` under `keys`, those it has.
fn pick(object: &serde_json::Value, keys: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    keys.iter()
        .filter_map(|&key| Some((key.to_string(), object.get(key)?.clone())))
        .collect()
}

/// A list of strings, sorted; an empty list for a missing one.
fn sorted_strings(list: &serde_json::Value) -> serde_json::Value {
    let mut strings: Vec<&str> = each(list).filter_map(|s| s.as_str()).collect();
    strings.sort_unstable();
    strings.into()
}

/// The items in a canonical order: that of their JSON text (objects print their keys sorted).
fn sorted(mut items: Vec<serde_json::Value>) -> serde_json::Value {
    items.sort_by_cached_key(|item| item.to_string());
    serde_json::Value::Array(items)
}

/// One HTB class as `tc -d class show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtbClass {
    /// `1:1`.
    pub handle: String,
    /// The parent class, `None` for a class at the root.
    pub parent: Option<String>,
    /// Bytes per second.
    pub rate: u64,
    /// Bytes per second.
    pub ceil: u64,
    /// Bytes, when tc prints it.
    pub quantum: Option<u64>,
}

impl HtbClass {
    /// Parses `class htb 1:2 parent 1:1 prio 0 quantum 125000 rate 10Mbit ceil 10Mbit ...`.
    fn parse(line: &str) -> Self {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1).copied())
        };
        let rate = |key: &str| {
            let text = after(key).unwrap_or_else(|| panic!("no {key} in tc class line {line:?}"));
            tc_rate_bits(text).div_ceil(8)
        };
        Self {
            handle: words[2].to_owned(),
            parent: after("parent").map(str::to_owned),
            rate: rate("rate"),
            ceil: rate("ceil"),
            quantum: after("quantum").map(|q| {
                q.parse()
                    .unwrap_or_else(|_| panic!("bad quantum {q:?} in {line:?}"))
            }),
        }
    }
}

/// `10Mbit` -> 10 000 000, `1.25Gbit` -> 1 250 000 000, `800bit` -> 800: exact, in bits/s.
pub fn tc_rate_bits(text: &str) -> u64 {
    let number = text
        .strip_suffix("bit")
        .unwrap_or_else(|| panic!("not a tc rate: {text:?}"));
    let (mantissa, scale) = match number.chars().last() {
        Some('K') => (&number[..number.len() - 1], 1_000u64),
        Some('M') => (&number[..number.len() - 1], 1_000_000),
        Some('G') => (&number[..number.len() - 1], 1_000_000_000),
        Some('T') => (&number[..number.len() - 1], 1_000_000_000_000),
        _ => (number, 1),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let parse = |digits: &str| -> u64 {
        if digits.is_empty() {
            0
        } else {
            digits
                .parse()
                .unwrap_or_else(|_| panic!("not a tc rate: {text:?}"))
        }
    };
    let fraction_scale = 10u64.pow(u32::try_from(fraction.len()).unwrap_or(u32::MAX));
    parse(whole) * scale + parse(fraction) * scale / fraction_scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_features_are_whole_names_of_the_list() {
        assert!(listed("ipvlan,vhost-net,netkit", "vhost-net"));
        assert!(listed(" ipvlan , netkit", "netkit"));
        assert!(!listed("ipvlan,vhost-net", "vhost"));
        assert!(!listed("", "ipvlan"));
    }
}
