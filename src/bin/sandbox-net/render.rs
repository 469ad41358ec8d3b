//! Human-readable rendering of what the library returns, for the CLI.

use std::{collections::HashMap, fmt::Write};

use sandbox_net_persist::scan::{NamespaceScan, Route, SkipReason};

/// Renders a scan as aligned tables: interfaces, routes, neighbours, skipped links.
pub fn scan_table(scan: &NamespaceScan) -> String {
    let names: HashMap<u32, &str> = scan
        .interfaces
        .iter()
        .map(|i| (i.link.index, i.link.name.as_str()))
        .collect();
    let mut rows = vec![
        [
            "INTERFACE",
            "INDEX",
            "KIND",
            "MTU",
            "MAC",
            "STATE",
            "ADDRESSES",
        ]
        .map(String::from),
    ];
    for iface in &scan.interfaces {
        let l = &iface.link;
        let addresses: Vec<String> = iface
            .addresses
            .iter()
            .map(|a| a.prefix.to_string())
            .collect();
        rows.push([
            l.name.to_string(),
            l.index.to_string(),
            l.kind.clone().unwrap_or_else(|| "-".into()),
            l.mtu.to_string(),
            l.mac.map_or_else(|| "-".into(), |m| m.to_string()),
            if l.up { "up" } else { "down" }.to_string(),
            if addresses.is_empty() {
                "-".into()
            } else {
                addresses.join(" ")
            },
        ]);
    }
    let mut out = String::new();
    if scan.interfaces.is_empty() {
        out.push_str("no usable interface\n");
    } else {
        out.push_str(&align(&rows));
    }

    let routes: Vec<String> = scan
        .interfaces
        .iter()
        .flat_map(|i| &i.routes)
        .chain(&scan.routes_without_device)
        .map(|r| route_line(r, &names))
        .collect();
    if !routes.is_empty() {
        out.push_str("\nROUTES\n");
        for r in routes {
            let _ = writeln!(out, "  {r}");
        }
    }
    let neighbours: Vec<String> = scan
        .interfaces
        .iter()
        .flat_map(|i| &i.neighbours)
        .map(|n| {
            let dev = names.get(&n.device_index).copied().unwrap_or("?");
            let mac = n.mac.map_or_else(|| "-".into(), |m| m.to_string());
            format!("{} lladdr {mac} dev {dev} {}", n.ip, n.state)
        })
        .collect();
    if !neighbours.is_empty() {
        out.push_str("\nNEIGHBOURS\n");
        for n in neighbours {
            let _ = writeln!(out, "  {n}");
        }
    }
    if !scan.skipped.is_empty() {
        out.push_str("\nSKIPPED\n");
        for s in &scan.skipped {
            let why = match s.reason {
                SkipReason::Loopback => "loopback",
                SkipReason::NoAddress => "no IP address",
            };
            let _ = writeln!(out, "  {} ({why})", s.name);
        }
    }
    out
}

/// One route as `ip route` would print it.
fn route_line(r: &Route, names: &HashMap<u32, &str>) -> String {
    let mut line = if r.is_default() {
        "default".to_string()
    } else {
        r.destination.to_string()
    };
    if r.kind != sandbox_net_persist::RouteType::UNICAST {
        line = format!("{} {line}", r.kind);
    }
    if let Some(gw) = r.gateway {
        let _ = write!(line, " via {gw}");
    }
    if let Some(dev) = r.device_index {
        let _ = write!(line, " dev {}", names.get(&dev).copied().unwrap_or("?"));
    }
    let _ = write!(line, " proto {}", r.protocol);
    if r.scope != sandbox_net_persist::AddressScope::GLOBAL {
        let _ = write!(line, " scope {}", r.scope);
    }
    if let Some(src) = r.source {
        let _ = write!(line, " src {src}");
    }
    if let Some(metric) = r.metric {
        let _ = write!(line, " metric {metric}");
    }
    if r.table != sandbox_net_persist::scan::RT_TABLE_MAIN {
        let _ = write!(line, " table {}", r.table);
    }
    line
}

fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use sandbox_net_persist::{
        AddressScope, IfName, RouteProtocol, RouteType,
        scan::{Interface, Link, SkippedLink},
    };

    use super::*;

    #[test]
    fn renders_interfaces_routes_and_skips() {
        let link = Link {
            name: IfName::new("eth0").unwrap(),
            index: 2,
            kind: Some("veth".into()),
            mtu: 1500,
            mac: Some("02:00:0a:c8:00:02".parse().unwrap()),
            up: true,
            lower_up: true,
            loopback: false,
            parent_index: None,
            parent_netnsid: None,
            txqueuelen: 1000,
            tuntap: None,
            netkit: None,
        };
        let route = Route {
            destination: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("10.200.0.1".parse().unwrap()),
            device_index: Some(2),
            source: None,
            scope: AddressScope::GLOBAL,
            protocol: RouteProtocol::BOOT,
            kind: RouteType::UNICAST,
            table: 254,
            metric: None,
            ..Route::default()
        };
        let scan = NamespaceScan {
            interfaces: vec![Interface {
                link,
                addresses: vec![],
                routes: vec![route],
                neighbours: vec![],
                all_routes: vec![],
            }],
            skipped: vec![SkippedLink {
                name: IfName::new("lo").unwrap(),
                index: 1,
                reason: SkipReason::Loopback,
            }],
            routes_without_device: vec![],
        };
        assert_eq!(
            scan_table(&scan),
            "INTERFACE  INDEX  KIND  MTU   MAC                STATE  ADDRESSES\n\
             eth0       2      veth  1500  02:00:0a:c8:00:02  up     -\n\
             \nROUTES\n  default via 10.200.0.1 dev eth0 proto boot\n\
             \nSKIPPED\n  lo (loopback)\n"
        );
    }
}
