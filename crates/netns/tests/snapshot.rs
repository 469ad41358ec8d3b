//! `TestNetns::snapshot`: stable on an idle pod, changed by each kind of change attaching a
//! VM's network may make, and equal again once the change is undone.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use sandbox_net_netns::testing::{
    PodFixture, TestNetns, assert_same_snapshot, snapshot_differences,
};
use serde_json::{Value, json};

/// One change to the pod's namespace and how to undo it, as `ip` / `tc` command lines (the
/// first word names the tool; `-n NAME` is added), and the snapshot section it shows in
/// (among others: an address brings routes too).
struct Change {
    what: &'static str,
    section: &'static str,
    apply: &'static [&'static str],
    undo: &'static [&'static str],
}

const CHANGES: &[Change] = &[
    Change {
        what: "an MTU change",
        section: "links",
        apply: &["ip link set eth0 mtu 1400"],
        undo: &["ip link set eth0 mtu 1500"],
    },
    Change {
        what: "a MAC change",
        section: "links",
        apply: &["ip link set eth0 address 02:aa:bb:cc:dd:ee"],
        // The kernel flushes the link's neighbour entries, permanent ones included, when its
        // MAC changes: undoing the change gives them back too.
        undo: &[
            "ip link set eth0 address 02:00:0a:c8:00:02",
            "ip neigh add 10.200.0.1 lladdr 02:00:0a:c8:00:01 dev eth0 nud permanent",
            "ip neigh add fd00:200::1 lladdr 02:00:0a:c8:00:01 dev eth0 nud permanent",
        ],
    },
    Change {
        what: "allmulticast on",
        section: "links",
        apply: &["ip link set eth0 allmulticast on"],
        undo: &["ip link set eth0 allmulticast off"],
    },
    Change {
        what: "a new tap",
        section: "links",
        apply: &["ip tuntap add dev tap9 mode tap multi_queue vnet_hdr"],
        undo: &["ip link del tap9"],
    },
    Change {
        what: "an IPv4 address",
        section: "addresses",
        apply: &["ip addr add 10.201.0.9/16 dev eth0"],
        undo: &["ip addr del 10.201.0.9/16 dev eth0"],
    },
    Change {
        what: "an IPv6 address",
        section: "addresses",
        apply: &["ip addr add fd00:201::9/64 dev eth0 nodad"],
        undo: &["ip addr del fd00:201::9/64 dev eth0"],
    },
    Change {
        what: "an IPv4 route",
        section: "routes",
        apply: &["ip route add 10.250.0.0/16 via 10.200.0.1"],
        undo: &["ip route del 10.250.0.0/16 via 10.200.0.1"],
    },
    Change {
        what: "an IPv6 route in another table",
        section: "routes",
        apply: &["ip -6 route add fd00:250::/48 via fd00:200::1 table 100"],
        undo: &["ip -6 route del fd00:250::/48 via fd00:200::1 table 100"],
    },
    Change {
        what: "a permanent neighbour",
        section: "neighbours",
        apply: &["ip neigh add 10.200.0.7 lladdr 02:00:00:00:00:07 dev eth0 nud permanent"],
        undo: &["ip neigh del 10.200.0.7 dev eth0"],
    },
    Change {
        what: "an ingress qdisc",
        section: "qdiscs",
        apply: &["tc qdisc add dev eth0 ingress"],
        undo: &["tc qdisc del dev eth0 ingress"],
    },
    Change {
        what: "a device group",
        section: "links",
        apply: &["ip link set eth0 group 7"],
        undo: &["ip link set eth0 group default"],
    },
    Change {
        what: "an HTB class",
        section: "classes",
        apply: &[
            "tc qdisc add dev eth0 root handle 1: htb default 1",
            "tc class add dev eth0 parent 1: classid 1:1 htb rate 10mbit ceil 20mbit",
        ],
        undo: &["tc qdisc del dev eth0 root"],
    },
    Change {
        what: "a filter at a clsact's egress",
        section: "filters",
        apply: &[
            "tc qdisc add dev eth0 clsact",
            "tc filter add dev eth0 egress prio 3 protocol ip u32 match ip dst 10.9.0.0/16 flowid 1:1",
        ],
        undo: &["tc qdisc del dev eth0 clsact"],
    },
    Change {
        what: "a route's MTU and advertised MSS",
        section: "routes",
        apply: &["ip route change default via 10.200.0.1 dev eth0 mtu 1400 advmss 1360"],
        undo: &["ip route change default via 10.200.0.1 dev eth0"],
    },
    Change {
        what: "a route's preferred source",
        section: "routes",
        apply: &["ip route change default via 10.200.0.1 dev eth0 src 10.200.0.2"],
        undo: &["ip route change default via 10.200.0.1 dev eth0"],
    },
    Change {
        what: "an onlink route",
        section: "routes",
        apply: &["ip route change default via 10.200.0.1 dev eth0 onlink"],
        undo: &["ip route change default via 10.200.0.1 dev eth0"],
    },
    Change {
        what: "an IPv6 route's preference",
        section: "routes",
        apply: &["ip -6 route change default via fd00:200::1 dev eth0 pref high"],
        undo: &["ip -6 route change default via fd00:200::1 dev eth0 pref medium"],
    },
];

/// Runs `ip ...` and `tc ...` command lines in `ns`, in order.
fn run(ns: &TestNetns, lines: &[&str]) {
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.split_first() {
            Some((&"ip", args)) => ns.ip(args),
            Some((&"tc", args)) => ns.tc(args),
            _ => panic!("not an ip or tc command: {line}"),
        };
    }
}

/// Asserts that `after` differs from `before`, in `section` among others.
fn assert_changed(what: &str, section: &str, before: &Value, after: &Value) {
    let differences = snapshot_differences(before, after);
    assert!(
        differences
            .iter()
            .any(|d| d.starts_with(&format!("snapshot.{section}:"))),
        "{what} should show in the snapshot's {section}; differences: {differences:#?}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn snapshot_of_an_idle_pod_is_stable_and_complete() {
    let fx = PodFixture::new();
    let first = fx.pod.snapshot();
    assert_same_snapshot(&first, &fx.pod.snapshot());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_same_snapshot(&first, &fx.pod.snapshot());
    let host = fx.host.snapshot();
    assert_same_snapshot(&host, &fx.host.snapshot());

    // What the pod is made of is all there.
    let eth0 = first["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == "eth0")
        .unwrap();
    assert_eq!(eth0["address"], PodFixture::POD_MAC);
    assert_eq!(eth0["kind"], "veth");
    assert_eq!(
        eth0["flags"],
        json!(["BROADCAST", "LOWER_UP", "MULTICAST", "UP"])
    );
    let addresses: Vec<String> = first["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["ifname"] == "eth0" && a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(addresses, [PodFixture::POD_V4, PodFixture::POD_V6]);
    let defaults: Vec<&Value> = first["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["dst"] == "default")
        .map(|r| &r["gateway"])
        .collect();
    assert_eq!(defaults, [&json!("10.200.0.1"), &json!("fd00:200::1")]);
    assert_eq!(first["neighbours"].as_array().unwrap().len(), 2);
    assert!(
        first["qdiscs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["dev"] == "eth0")
    );
    assert_eq!(first["filters"], json!([]));
    // No lifetime, counter or kernel-chosen number that would make two snapshots differ.
    let text = first.to_string();
    for volatile in ["life_time", "refcnt", "\"index\"", "expires"] {
        assert!(!text.contains(volatile), "{volatile} in {text}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn snapshot_sees_each_change_and_is_equal_again_once_it_is_undone() {
    let fx = PodFixture::new();
    let baseline = fx.pod.snapshot();
    for change in CHANGES {
        run(&fx.pod, change.apply);
        assert_changed(change.what, change.section, &baseline, &fx.pod.snapshot());
        run(&fx.pod, change.undo);
        let undone = fx.pod.snapshot();
        assert!(
            snapshot_differences(&baseline, &undone).is_empty(),
            "after undoing {}: {:#?}",
            change.what,
            snapshot_differences(&baseline, &undone)
        );
    }
    assert_same_snapshot(&baseline, &fx.pod.snapshot());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn snapshot_sees_an_ingress_redirect_and_its_removal() {
    let fx = PodFixture::new();
    let baseline = fx.pod.snapshot();
    fx.pod.tc(&["qdisc", "add", "dev", "eth0", "ingress"]);
    let with_qdisc = fx.pod.snapshot();
    assert_changed("an ingress qdisc", "qdiscs", &baseline, &with_qdisc);

    let redirect = "filter add dev eth0 parent ffff: protocol all prio 49152 \
                    u32 match u32 0 0 action mirred egress redirect dev eth0";
    fx.pod.tc(&redirect.split_whitespace().collect::<Vec<_>>());
    let with_filter = fx.pod.snapshot();
    assert_changed("a redirect filter", "filters", &with_qdisc, &with_filter);
    let action = with_filter["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| f["actions"].get(0))
        .unwrap();
    assert_eq!(
        action,
        &json!({"order": 1, "kind": "mirred", "direction": "egress", "mirred_action": "redirect",
                "to_dev": "eth0", "control_action": {"type": "stolen"}})
    );
    assert_same_snapshot(&with_filter, &fx.pod.snapshot());

    fx.pod.tc(&[
        "filter", "del", "dev", "eth0", "parent", "ffff:", "prio", "49152",
    ]);
    assert_same_snapshot(&with_qdisc, &fx.pod.snapshot());
    // The same filter made again (its action gets a new index from the kernel) looks the same.
    fx.pod.tc(&redirect.split_whitespace().collect::<Vec<_>>());
    assert_same_snapshot(&with_filter, &fx.pod.snapshot());
    fx.pod.tc(&["qdisc", "del", "dev", "eth0", "ingress"]);
    assert_same_snapshot(&baseline, &fx.pod.snapshot());
}

#[test]
fn differences_name_the_path_and_both_sides() {
    let before = json!({
        "links": [{"ifname": "eth0", "mtu": 1500}, {"ifname": "lo", "mtu": 65536}],
        "filters": [],
        "meta": {"kernel": "6.18"},
    });
    let after = json!({
        "links": [{"ifname": "eth0", "mtu": 1400}, {"ifname": "lo", "mtu": 65536}],
        "filters": [{"dev": "eth0"}],
        "meta": {"kernel": "6.19"},
    });
    assert_eq!(
        snapshot_differences(&before, &after),
        [
            "snapshot.filters: only after: {\"dev\":\"eth0\"}",
            "snapshot.links: only before: {\"ifname\":\"eth0\",\"mtu\":1500}",
            "snapshot.links: only after: {\"ifname\":\"eth0\",\"mtu\":1400}",
            "snapshot.meta.kernel: \"6.18\" -> \"6.19\"",
        ]
    );
    assert!(snapshot_differences(&before, &before).is_empty());

    let panic = std::panic::catch_unwind(|| assert_same_snapshot(&before, &after)).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.starts_with("the namespace is not as it was (4 differences):\n  snapshot.filters"),
        "{message}"
    );
}
