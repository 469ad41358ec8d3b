//! Route and neighbour primitives: what `add_route` / `add_neighbour` re-create from a scan is
//! exactly what `ip -j -d route` and `ip -j neigh` showed before.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use sandbox_net_netns::{
    Rtnl, ScanOptions,
    testing::{PodFixture, TestNetns},
};
use sandbox_net_persist::{
    AddressScope, NeighbourState, RouteProtocol, RouteType,
    scan::{Interface, Neighbour, RT_TABLE_MAIN, Route},
};
use serde_json::Value;

/// What the tests compare: every route of every table of both families
/// (`ip -j -d -4|-6 route show table all`) and the permanent neighbours
/// (`ip -j neigh show nud permanent`).
#[derive(Debug, PartialEq)]
struct Oracle {
    routes_v4: Value,
    routes_v6: Value,
    permanent_neighbours: Value,
}

fn oracle(ns: &TestNetns) -> Oracle {
    Oracle {
        routes_v4: ns.ip_json(&["-4", "-d", "route", "show", "table", "all"]),
        routes_v6: ns.ip_json(&["-6", "-d", "route", "show", "table", "all"]),
        permanent_neighbours: ns.ip_json(&["neigh", "show", "nud", "permanent"]),
    }
}

/// The `dst` of every route of a family's JSON that goes via a gateway.
fn gateway_routes(routes: &Value) -> Vec<String> {
    routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("gateway").is_some())
        .map(|r| format!("{} via {}", r["dst"], r["gateway"]))
        .collect()
}

/// `eth0` as the default scan (Kata's rules) sees it: its guest routes and permanent
/// neighbours.
async fn scanned_eth0(rtnl: &Rtnl) -> Interface {
    let scan = rtnl.scan(&ScanOptions::default()).await.unwrap();
    let eth0 = scan
        .interfaces
        .into_iter()
        .find(|i| i.link.name.as_str() == PodFixture::POD_IF)
        .unwrap();
    let defaults: Vec<String> = eth0
        .routes
        .iter()
        .map(|r| format!("{} via {:?}", r.destination, r.gateway))
        .collect();
    assert_eq!(
        defaults,
        [
            "0.0.0.0/0 via Some(10.200.0.1)",
            "::/0 via Some(fd00:200::1)"
        ],
        "the pod's guest routes are its two defaults"
    );
    assert!(
        eth0.routes
            .iter()
            .all(|r| r.protocol == RouteProtocol::BOOT && r.device_index == Some(eth0.link.index))
    );
    assert_eq!(eth0.neighbours.len(), 2);
    assert!(
        eth0.neighbours
            .iter()
            .all(|n| n.state == NeighbourState::PERMANENT)
    );
    eth0
}

/// Adds each recorded route the namespace lacks now; returns those it added.
async fn add_missing_routes(rtnl: &Rtnl, recorded: &[Route]) -> Vec<Route> {
    let present = rtnl.routes().await.unwrap();
    let mut added = Vec::new();
    for route in recorded.iter().filter(|r| !present.contains(r)) {
        rtnl.add_route(route).await.unwrap();
        added.push(route.clone());
    }
    added
}

/// Adds each recorded neighbour entry the namespace lacks now; returns those it added.
async fn add_missing_neighbours(rtnl: &Rtnl, recorded: &[Neighbour]) -> Vec<Neighbour> {
    let present = rtnl.neighbours().await.unwrap();
    let mut added = Vec::new();
    for neighbour in recorded.iter().filter(|n| !present.contains(n)) {
        rtnl.add_neighbour(neighbour).await.unwrap();
        added.push(neighbour.clone());
    }
    added
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn deleted_routes_and_neighbours_come_back_exactly_as_ip_showed_them() {
    let fx = PodFixture::new();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = scanned_eth0(&rtnl).await;
    let before = oracle(&fx.pod);

    for route in &eth0.routes {
        rtnl.del_route(route).await.unwrap();
    }
    let without_routes = oracle(&fx.pod);
    assert!(gateway_routes(&without_routes.routes_v4).is_empty());
    assert!(gateway_routes(&without_routes.routes_v6).is_empty());
    assert_ne!(without_routes.routes_v4, before.routes_v4);

    for route in &eth0.routes {
        rtnl.add_route(route).await.unwrap();
    }
    assert_eq!(oracle(&fx.pod), before);

    for neighbour in &eth0.neighbours {
        fx.pod.ip(&[
            "neigh",
            "del",
            &neighbour.ip.to_string(),
            "dev",
            PodFixture::POD_IF,
        ]);
    }
    assert_eq!(oracle(&fx.pod).permanent_neighbours, Value::Array(vec![]));
    for neighbour in &eth0.neighbours {
        rtnl.add_neighbour(neighbour).await.unwrap();
    }
    assert_eq!(oracle(&fx.pod), before);
    // And what the scan reads back is what it read the first time.
    assert_eq!(scanned_eth0(&rtnl).await, eth0);
}

/// The macvtap model takes the pod's addresses off `eth0` and gives them back at teardown.
/// What the kernel does meanwhile (Linux 6.18): with its last IPv4 address the link loses
/// its IPv4 routes (the default one included) and its ARP entries, permanent ones included;
/// IPv6 keeps its default route and its permanent NDP entry, even with no IPv6 address left.
/// Restoring the recorded routes and neighbours that are missing gives the namespace back.
#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn routes_and_neighbours_restored_after_the_addresses_came_back() {
    let fx = PodFixture::new();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = scanned_eth0(&rtnl).await;
    let before = oracle(&fx.pod);

    let prefixes = [PodFixture::POD_V4, PodFixture::POD_V6];
    for prefix in prefixes {
        rtnl.del_address(&eth0.link, prefix.parse().unwrap())
            .await
            .unwrap();
    }
    let without_addresses = oracle(&fx.pod);
    assert!(
        gateway_routes(&without_addresses.routes_v4).is_empty(),
        "the kernel drops the IPv4 default route with the last IPv4 address: {}",
        without_addresses.routes_v4
    );

    for prefix in prefixes {
        rtnl.add_address(&eth0.link, prefix.parse().unwrap())
            .await
            .unwrap();
    }
    let routes_added = add_missing_routes(&rtnl, &eth0.routes).await;
    let neighbours_added = add_missing_neighbours(&rtnl, &eth0.neighbours).await;
    assert!(
        routes_added.iter().any(|r| r.destination.addr().is_ipv4()),
        "the IPv4 default route had to be restored: {routes_added:?}"
    );
    assert_eq!(oracle(&fx.pod), before);
    assert_eq!(scanned_eth0(&rtnl).await.routes, eth0.routes);
    eprintln!(
        "kernel dropped routes {:?} and neighbours {:?} with the addresses",
        routes_added
            .iter()
            .map(|r| r.destination.to_string())
            .collect::<Vec<_>>(),
        neighbours_added.iter().map(|n| n.ip).collect::<Vec<_>>()
    );

    // Adding a route that is there again is the kernel's EEXIST, for the caller to judge.
    let err = rtnl.add_route(&eth0.routes[0]).await.unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST));
    let err = rtnl.add_neighbour(&eth0.neighbours[0]).await.unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST));
}

/// A MAC change makes the kernel flush the link's neighbour entries, permanent ones
/// included (as the macvtap model's MAC swap does); `add_neighbour` gives them back.
#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn permanent_neighbours_flushed_by_a_mac_change_are_restored() {
    let fx = PodFixture::new();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = scanned_eth0(&rtnl).await;
    let before = oracle(&fx.pod);

    rtnl.set_link_mac(&eth0.link, "02:aa:bb:cc:dd:ee".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(oracle(&fx.pod).permanent_neighbours, Value::Array(vec![]));
    rtnl.set_link_mac(&eth0.link, eth0.link.mac.unwrap())
        .await
        .unwrap();
    let restored = add_missing_neighbours(&rtnl, &eth0.neighbours).await;
    assert_eq!(restored, eth0.neighbours);
    assert_eq!(oracle(&fx.pod), before);
}

/// A route of another table, with a metric, a preferred source and a scope, both families:
/// re-created as `ip -d route` showed it.
#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn routes_of_other_tables_with_every_field_come_back_exactly() {
    let fx = PodFixture::new();
    fx.pod.ip_batch(
        "route add 10.77.0.0/16 dev eth0 proto static scope link src 10.200.0.2 metric 50 table 1000\n\
         route add 10.78.0.0/16 via 10.200.0.1 dev eth0 proto 42 metric 7 table 100\n\
         route add fd00:77::/48 via fd00:200::1 dev eth0 proto static metric 300 table 1000\n\
         route add blackhole 10.79.0.0/16 proto static\n",
    );
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let ours: Vec<Route> = rtnl
        .routes()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| {
            [
                "10.77.0.0/16",
                "10.78.0.0/16",
                "fd00:77::/48",
                "10.79.0.0/16",
            ]
            .contains(&r.destination.to_string().as_str())
        })
        .collect();
    assert_eq!(ours.len(), 4, "{ours:?}");
    let before = oracle(&fx.pod);

    for route in &ours {
        rtnl.del_route(route).await.unwrap();
    }
    assert_ne!(oracle(&fx.pod), before);
    for route in &ours {
        rtnl.add_route(route).await.unwrap();
    }
    assert_eq!(oracle(&fx.pod), before);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn bad_routes_are_refused_with_the_route_named_and_the_errno() {
    let fx = PodFixture::new();
    let ns = fx.pod.netns().path().display().to_string();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = rtnl.link_by_name(PodFixture::POD_IF).await.unwrap();
    let before = oracle(&fx.pod);
    let route = |destination: &str, gateway: &str| Route {
        destination: destination.parse().unwrap(),
        gateway: Some(gateway.parse().unwrap()),
        device_index: Some(eth0.index),
        source: None,
        scope: AddressScope::GLOBAL,
        protocol: RouteProtocol::BOOT,
        kind: RouteType::UNICAST,
        table: RT_TABLE_MAIN,
        metric: None,
        ..Route::default()
    };

    // No on-link prefix covers the gateway: IPv4 says ENETUNREACH ("Nexthop has invalid
    // gateway"), IPv6 EHOSTUNREACH.
    let err = rtnl
        .add_route(&route("198.51.100.0/24", "192.0.2.1"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to add route 198.51.100.0/24 via 192.0.2.1 on ifindex {} in network namespace {ns}",
            eth0.index
        )
    );
    assert_eq!(err.errno(), Some(libc::ENETUNREACH));
    let err = rtnl
        .add_route(&route("2001:db8:1::/64", "2001:db8::1"))
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::EHOSTUNREACH));

    // A gateway of the other family is refused before anything is sent.
    let err = rtnl
        .add_route(&route("::/0", "10.200.0.1"))
        .await
        .unwrap_err();
    assert_eq!(
        sandbox_net_netns::testing::error_chain(&err),
        format!(
            "failed to add route ::/0 via 10.200.0.1 on ifindex {} in network namespace {ns}: \
             the gateway 10.200.0.1 is not of the family of the destination ::/0",
            eth0.index
        )
    );

    // Deleting a route that is not there: ESRCH.
    let err = rtnl
        .del_route(&route("198.51.100.0/24", "10.200.0.1"))
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ESRCH));

    // A neighbour on a link that does not exist.
    let err = rtnl
        .add_neighbour(&Neighbour {
            ip: "10.200.0.9".parse().unwrap(),
            mac: Some("02:00:00:00:00:09".parse().unwrap()),
            state: NeighbourState::PERMANENT,
            device_index: 4242,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("failed to add neighbour 10.200.0.9 on ifindex 4242 in network namespace {ns}")
    );
    assert_eq!(err.errno(), Some(libc::ENODEV));
    assert_eq!(oracle(&fx.pod), before, "nothing changed");
}
