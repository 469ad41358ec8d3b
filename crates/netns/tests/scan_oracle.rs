//! `Rtnl::scan` against iproute2's JSON for the same namespace (an independent oracle).

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};

use sandbox_net_netns::{
    ScanOptions,
    testing::{PodFixture, TestNetns},
};
use sandbox_net_persist::scan::{Address, Interface, Link, NamespaceScan, Route, SkipReason};
use serde_json::Value;

const ROOT: &str = "needs root and a real kernel: run with --features root-tests";

/// `IFA_F_*` names as `ip -j addr` prints them, and their bits.
const ADDRESS_FLAGS: &[(&str, u32)] = &[
    ("secondary", 0x01),
    ("nodad", 0x02),
    ("optimistic", 0x04),
    ("dadfailed", 0x08),
    ("home", 0x10),
    ("deprecated", 0x20),
    ("tentative", 0x40),
    ("mngtmpaddr", 0x100),
    ("noprefixroute", 0x200),
    ("autojoin", 0x400),
    ("stable-privacy", 0x800),
];

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn link_tuple(l: &Link, names: &HashMap<u32, String>) -> String {
    let parent = match (l.parent_index, l.parent_netnsid) {
        (Some(i), Some(ns)) => format!("{i}@ns{ns}"),
        (Some(i), None) => names.get(&i).cloned().unwrap_or_else(|| i.to_string()),
        (None, _) => String::new(),
    };
    format!(
        "{} idx={} kind={} mtu={} mac={} up={} lower_up={} lo={} parent={} txq={}",
        l.name,
        l.index,
        l.kind.clone().unwrap_or_default(),
        l.mtu,
        l.mac.map(|m| m.to_string()).unwrap_or_default(),
        l.up,
        l.lower_up,
        l.loopback,
        parent,
        l.txqueuelen
    )
}

fn ip_link_tuple(j: &Value) -> String {
    let flags: Vec<String> = j["flags"].as_array().unwrap().iter().map(s).collect();
    let has = |f: &str| flags.iter().any(|x| x == f);
    let parent = if let Some(ns) = j.get("link_netnsid") {
        format!("{}@ns{}", s(&j["link_index"]), s(ns))
    } else {
        s(&j["link"])
    };
    format!(
        "{} idx={} kind={} mtu={} mac={} up={} lower_up={} lo={} parent={} txq={}",
        s(&j["ifname"]),
        s(&j["ifindex"]),
        s(&j["linkinfo"]["info_kind"]),
        s(&j["mtu"]),
        s(&j["address"]),
        has("UP"),
        has("LOWER_UP"),
        has("LOOPBACK"),
        parent,
        s(&j["txqlen"])
    )
}

fn address_tuple(dev: &str, a: &Address) -> String {
    let mut flags: Vec<&str> = ADDRESS_FLAGS
        .iter()
        .filter(|(_, bit)| a.flags & bit != 0)
        .map(|(n, _)| *n)
        .collect();
    if a.flags & Address::F_PERMANENT == 0 {
        flags.push("dynamic");
    }
    flags.sort();
    format!(
        "{dev} {} peer={} brd={} scope={} label={} flags={flags:?}",
        a.prefix,
        a.peer.map(|p| p.to_string()).unwrap_or_default(),
        a.broadcast.map(|b| b.to_string()).unwrap_or_default(),
        a.scope,
        a.label.clone().unwrap_or_default()
    )
}

fn ip_address_tuples(ip_addr: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for link in ip_addr.as_array().unwrap() {
        for a in link["addr_info"].as_array().unwrap() {
            let mut flags: Vec<&str> = ADDRESS_FLAGS
                .iter()
                .map(|(n, _)| *n)
                .chain(["dynamic"])
                .filter(|n| a.get(*n) == Some(&Value::Bool(true)))
                .collect();
            flags.sort();
            let peer = a.get("address").map(s).unwrap_or_default();
            out.insert(format!(
                "{} {}/{} peer={} brd={} scope={} label={} flags={flags:?}",
                s(&link["ifname"]),
                s(&a["local"]),
                s(&a["prefixlen"]),
                peer,
                a.get("broadcast").map(s).unwrap_or_default(),
                s(&a["scope"]),
                a.get("label").map(s).unwrap_or_default()
            ));
        }
    }
    out
}

fn route_tuple(r: &Route, names: &HashMap<u32, String>) -> String {
    format!(
        "{} type={} via={} dev={} proto={} scope={} src={} metric={} table={}",
        r.destination,
        r.kind,
        r.gateway.map(|g| g.to_string()).unwrap_or_default(),
        r.device_index
            .and_then(|i| names.get(&i).cloned())
            .unwrap_or_default(),
        r.protocol,
        r.scope,
        r.source.map(|g| g.to_string()).unwrap_or_default(),
        r.metric.map(|m| m.to_string()).unwrap_or_default(),
        r.table
    )
}

fn ip_route_tuples(routes: &Value, v6: bool) -> BTreeSet<String> {
    let tables: HashMap<&str, &str> =
        [("main", "254"), ("local", "255"), ("default", "253")].into();
    routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut dst = s(&r["dst"]);
            if dst == "default" {
                dst = if v6 {
                    "::/0".into()
                } else {
                    "0.0.0.0/0".into()
                };
            } else if !dst.contains('/') {
                dst = format!("{dst}/{}", if v6 { 128 } else { 32 });
            }
            // Without `table all`, ip lists the main table and does not name it.
            let table = match s(&r["table"]) {
                t if t.is_empty() => "main".to_string(),
                t => t,
            };
            format!(
                "{dst} type={} via={} dev={} proto={} scope={} src={} metric={} table={}",
                s(&r["type"]),
                s(&r["gateway"]),
                s(&r["dev"]),
                s(&r["protocol"]),
                s(&r["scope"]),
                s(&r["prefsrc"]),
                s(&r["metric"]),
                tables
                    .get(table.as_str())
                    .map(|t| t.to_string())
                    .unwrap_or(table)
            )
        })
        .collect()
}

fn neighbour_tuples_ip(neigh: &Value) -> BTreeSet<String> {
    neigh
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let states: Vec<String> = n["state"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| s(x).to_lowercase())
                .collect();
            format!(
                "{} dev={} lladdr={} state={}",
                s(&n["dst"]),
                s(&n["dev"]),
                s(&n["lladdr"]),
                states.join(",")
            )
        })
        .collect()
}

fn all_interfaces(scan: &NamespaceScan) -> Vec<&Interface> {
    scan.interfaces.iter().collect()
}

/// A pod as CNI leaves it, plus a veth pair inside the pod that has no address.
fn pod_with_unaddressed_link() -> PodFixture {
    let pod = PodFixture::new();
    pod.pod.ip(&[
        "link", "add", "spare0", "type", "veth", "peer", "name", "spare1",
    ]);
    pod
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn unfiltered_scan_equals_iproute2() {
    let _ = ROOT;
    let fx = pod_with_unaddressed_link();
    let ns = &fx.pod;
    let rtnl = ns.netns().rtnl().await.unwrap();
    let scan = rtnl.scan(&ScanOptions::unfiltered()).await.unwrap();
    assert!(
        scan.skipped.is_empty(),
        "an unfiltered scan skips nothing: {:?}",
        scan.skipped
    );

    let ifaces = all_interfaces(&scan);
    let names: HashMap<u32, String> = ifaces
        .iter()
        .map(|i| (i.link.index, i.link.name.to_string()))
        .collect();

    // Links: `ip -j -d link`.
    let ours: BTreeSet<String> = ifaces.iter().map(|i| link_tuple(&i.link, &names)).collect();
    let theirs: BTreeSet<String> = ns
        .ip_json(&["-d", "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(ip_link_tuple)
        .collect();
    assert_eq!(ours, theirs);
    assert_eq!(ours.len(), 4, "lo, eth0, spare0, spare1: {ours:#?}");

    // Addresses: `ip -j addr`, IPv6 included.
    let ours: BTreeSet<String> = ifaces
        .iter()
        .flat_map(|i| {
            i.addresses
                .iter()
                .map(|a| address_tuple(i.link.name.as_str(), a))
        })
        .collect();
    assert_eq!(ours, ip_address_tuples(&ns.ip_json(&["addr", "show"])));
    assert!(
        ours.iter().any(|a| a.starts_with("eth0 fd00:200::2/64 ")),
        "{ours:#?}"
    );
    assert!(
        ours.iter().any(|a| a.starts_with("eth0 fe80::")),
        "{ours:#?}"
    );

    // Routes: `ip -j -d route show table all`, both families.
    let ours: BTreeSet<String> = ifaces
        .iter()
        .flat_map(|i| i.routes.iter())
        .chain(&scan.routes_without_device)
        .map(|r| route_tuple(r, &names))
        .collect();
    let mut theirs = ip_route_tuples(
        &ns.ip_json(&["-d", "-4", "route", "show", "table", "all"]),
        false,
    );
    theirs.extend(ip_route_tuples(
        &ns.ip_json(&["-d", "-6", "route", "show", "table", "all"]),
        true,
    ));
    assert_eq!(ours, theirs);

    // Neighbours: `ip -j neigh show nud all`.
    let ours: BTreeSet<String> = ifaces
        .iter()
        .flat_map(|i| i.neighbours.iter())
        .map(|n| {
            format!(
                "{} dev={} lladdr={} state={}",
                n.ip,
                names[&n.device_index],
                n.mac.map(|m| m.to_string()).unwrap_or_default(),
                n.state
            )
        })
        .collect();
    assert_eq!(
        ours,
        neighbour_tuples_ip(&ns.ip_json(&["neigh", "show", "nud", "all"]))
    );
    assert!(
        ours.contains("fd00:200::1 dev=eth0 lladdr=02:00:0a:c8:00:01 state=permanent"),
        "{ours:#?}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn kata_rules_keep_only_what_the_guest_needs() {
    let fx = pod_with_unaddressed_link();
    let ns = &fx.pod;
    let rtnl = ns.netns().rtnl().await.unwrap();
    let scan = rtnl.scan(&ScanOptions::default()).await.unwrap();

    let kept: Vec<&str> = scan
        .interfaces
        .iter()
        .map(|i| i.link.name.as_str())
        .collect();
    assert_eq!(kept, ["eth0"]);
    let mut skipped: Vec<(String, SkipReason)> = scan
        .skipped
        .iter()
        .map(|s| (s.name.to_string(), s.reason))
        .collect();
    skipped.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        skipped,
        [
            ("lo".to_string(), SkipReason::Loopback),
            ("spare0".to_string(), SkipReason::NoAddress),
            ("spare1".to_string(), SkipReason::NoAddress)
        ]
    );

    let eth0 = &scan.interfaces[0];
    let names: HashMap<u32, String> = [(eth0.link.index, "eth0".to_string())].into();
    // Addresses: all of eth0's, as ip reports them.
    let ours: BTreeSet<String> = eth0
        .addresses
        .iter()
        .map(|a| address_tuple("eth0", a))
        .collect();
    assert_eq!(
        ours,
        ip_address_tuples(&ns.ip_json(&["addr", "show", "dev", "eth0"]))
    );
    // Routes: ip's main-table routes of eth0 other than `proto kernel`.
    let ours: BTreeSet<String> = eth0.routes.iter().map(|r| route_tuple(r, &names)).collect();
    let mut theirs = ip_route_tuples(
        &ns.ip_json(&["-d", "-4", "route", "show", "dev", "eth0"]),
        false,
    );
    theirs.extend(ip_route_tuples(
        &ns.ip_json(&["-d", "-6", "route", "show", "dev", "eth0"]),
        true,
    ));
    let theirs: BTreeSet<String> = theirs
        .into_iter()
        .map(|r| r.replace("dev= ", "dev=eth0 "))
        .filter(|r| !r.contains("proto=kernel"))
        .collect();
    assert_eq!(ours, theirs);
    assert_eq!(ours.len(), 2, "the two default routes: {ours:#?}");
    // Neighbours: the permanent ones.
    let ours: BTreeSet<String> = eth0
        .neighbours
        .iter()
        .map(|n| format!("{} {}", n.ip, n.state))
        .collect();
    assert_eq!(
        ours,
        BTreeSet::from([
            "10.200.0.1 permanent".to_string(),
            "fd00:200::1 permanent".to_string()
        ])
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn empty_namespace_scans_to_nothing_but_skipped_loopback() {
    let ns = TestNetns::new();
    let rtnl = ns.netns().rtnl().await.unwrap();
    let scan = rtnl.scan(&ScanOptions::default()).await.unwrap();
    assert!(scan.interfaces.is_empty());
    assert_eq!(scan.skipped.len(), 1);
    assert_eq!(scan.skipped[0].name.as_str(), "lo");
    assert_eq!(scan.skipped[0].reason, SkipReason::Loopback);
}

/// Regression: the kernel runs one dump per netlink socket and answered concurrent scans on a
/// shared handle with EBUSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn concurrent_scans_on_one_handle_all_succeed() {
    let fx = PodFixture::new();
    let rtnl = std::sync::Arc::new(fx.pod.netns().rtnl().await.unwrap());
    let scans: Vec<_> = (0..16)
        .map(|_| {
            let rtnl = rtnl.clone();
            tokio::spawn(async move { rtnl.scan(&ScanOptions::default()).await })
        })
        .collect();
    for scan in scans {
        let scan = scan.await.unwrap().unwrap();
        assert_eq!(scan.interfaces.len(), 1);
    }
}
