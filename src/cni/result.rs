//! The ADD result (`interfaces`, `ips`, `routes`, `dns`) of every version from 0.3.0 to 1.1.0.
//!
//! One model holds the newest shape; reading and writing take the version: `ips[].version`
//! exists before 1.0.0, and the 1.1.0 fields (interface `mtu`, `socketPath`, `pciID`; route
//! `mtu`, `advmss`, `priority`, `table`, `scope`) only from 1.1.0. A field a version does not
//! define, and any field this module does not know, is kept verbatim and written back, so a
//! chained plugin passes on what an earlier plugin said.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::version::{CniVersion, UnsupportedVersion};

/// One entry of `interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// `name`.
    pub name: String,
    /// `mac`.
    pub mac: Option<String>,
    /// `mtu` (1.1.0).
    pub mtu: Option<u32>,
    /// `sandbox`: the namespace path, or empty for a host interface (a VM id for the pseudo
    /// interface that tells a VMM its guest's configuration).
    pub sandbox: Option<String>,
    /// `socketPath` (1.1.0).
    pub socket_path: Option<String>,
    /// `pciID` (1.1.0).
    pub pci_id: Option<String>,
    /// Fields not named above, kept verbatim.
    pub extra: Map<String, Value>,
}

/// One entry of `ips`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// `address`, with its prefix length.
    pub address: IpNet,
    /// `gateway`.
    pub gateway: Option<IpAddr>,
    /// `interface`: an index into `interfaces`; some plugins leave it out.
    pub interface: Option<usize>,
    /// Fields not named above, kept verbatim.
    pub extra: Map<String, Value>,
}

/// One entry of `routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `dst`.
    pub dst: IpNet,
    /// `gw`.
    pub gw: Option<IpAddr>,
    /// `mtu` (1.1.0).
    pub mtu: Option<u32>,
    /// `advmss` (1.1.0).
    pub advmss: Option<u32>,
    /// `priority` (1.1.0).
    pub priority: Option<u32>,
    /// `table` (1.1.0).
    pub table: Option<u32>,
    /// `scope` (1.1.0).
    pub scope: Option<u32>,
    /// Fields not named above, kept verbatim.
    pub extra: Map<String, Value>,
}

/// `dns`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    /// `nameservers`.
    pub nameservers: Vec<String>,
    /// `domain`.
    pub domain: Option<String>,
    /// `search`.
    pub search: Vec<String>,
    /// `options`.
    pub options: Vec<String>,
    /// Fields not named above, kept verbatim.
    pub extra: Map<String, Value>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
            && self.extra.is_empty()
    }
}

/// A result, without its version (the version is chosen when it is read or written).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    /// `interfaces`.
    pub interfaces: Vec<Interface>,
    /// `ips`.
    pub ips: Vec<IpConfig>,
    /// `routes`.
    pub routes: Vec<Route>,
    /// `dns`.
    pub dns: Dns,
    /// Top-level fields not named above (and not `cniVersion`), kept verbatim.
    pub extra: Map<String, Value>,
}

/// A result that cannot be read: names the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// The `cniVersion` is missing or not one this module speaks.
    #[error("{field}: {source}")]
    Version {
        /// Where (`prevResult.cniVersion`).
        field: String,
        /// What it said.
        #[source]
        source: UnsupportedVersion,
    },
    /// A field is missing or has the wrong type or value.
    #[error("{field}: {reason}")]
    Field {
        /// Where (`prevResult.ips[1].address`).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn field_error(field: &str, reason: impl Into<String>) -> ResultError {
    ResultError::Field {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Reads the fields of one JSON object, taking each out as it is read; what is left over is
/// the object's extra fields.
struct Fields<'a> {
    at: &'a str,
    map: Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn of(at: &'a str, value: &Value) -> Result<Self, ResultError> {
        match value {
            Value::Object(map) => Ok(Self {
                at,
                map: map.clone(),
            }),
            other => Err(field_error(
                at,
                format!("expected an object, found {other}"),
            )),
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, ResultError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(field_error(
                &self.path(key),
                format!("expected a string, found {other}"),
            )),
        }
    }

    fn required_string(&mut self, key: &str) -> Result<String, ResultError> {
        self.string(key)?
            .ok_or_else(|| field_error(&self.path(key), "missing"))
    }

    fn number(&mut self, key: &str) -> Result<Option<u64>, ResultError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(other) => Err(field_error(
                &self.path(key),
                format!("expected a non-negative integer, found {other}"),
            )),
        }
    }

    fn u32(&mut self, key: &str) -> Result<Option<u32>, ResultError> {
        match self.number(key)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| field_error(&self.path(key), format!("{n} is too large"))),
        }
    }

    fn strings(&mut self, key: &str) -> Result<Vec<String>, ResultError> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s),
                    other => Err(field_error(
                        &format!("{}[{i}]", self.path(key)),
                        format!("expected a string, found {other}"),
                    )),
                })
                .collect(),
            Some(other) => Err(field_error(
                &self.path(key),
                format!("expected a list, found {other}"),
            )),
        }
    }

    fn list(&mut self, key: &str) -> Result<Vec<Value>, ResultError> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(field_error(
                &self.path(key),
                format!("expected a list, found {other}"),
            )),
        }
    }

    fn cidr(&mut self, key: &str) -> Result<IpNet, ResultError> {
        let text = self.required_string(key)?;
        text.parse().map_err(|_| {
            field_error(
                &self.path(key),
                format!("{text:?} is not an address with a prefix length (10.1.0.5/24)"),
            )
        })
    }

    fn ip(&mut self, key: &str) -> Result<Option<IpAddr>, ResultError> {
        match self.string(key)? {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                field_error(&self.path(key), format!("{text:?} is not an IP address"))
            }),
        }
    }
}

impl CniResult {
    /// Reads a result that carries its own `cniVersion`; returns the version too.
    pub fn from_json(at: &str, value: &Value) -> Result<(CniVersion, Self), ResultError> {
        let field = format!("{at}.cniVersion");
        let version = match value.get("cniVersion") {
            Some(Value::String(v)) => v.parse().map_err(|source| ResultError::Version {
                field: field.clone(),
                source,
            })?,
            Some(other) => {
                return Err(field_error(
                    &field,
                    format!("expected a string, found {other}"),
                ));
            }
            None => return Err(field_error(&field, "missing")),
        };
        Ok((version, Self::from_json_as(at, value, version)?))
    }

    /// Reads a result as `version` defines it (`at` names it in errors: `prevResult`).
    pub fn from_json_as(at: &str, value: &Value, version: CniVersion) -> Result<Self, ResultError> {
        let mut fields = Fields::of(at, value)?;
        fields.map.remove("cniVersion");
        let mut result = CniResult::default();
        for (i, item) in fields.list("interfaces")?.iter().enumerate() {
            let at = format!("{at}.interfaces[{i}]");
            let mut f = Fields::of(&at, item)?;
            let mut interface = Interface {
                name: f.required_string("name")?,
                mac: f.string("mac")?,
                sandbox: f.string("sandbox")?,
                ..Interface::default()
            };
            if version.has_1_1_fields() {
                interface.mtu = f.u32("mtu")?;
                interface.socket_path = f.string("socketPath")?;
                interface.pci_id = f.string("pciID")?;
            }
            interface.extra = f.map;
            result.interfaces.push(interface);
        }
        for (i, item) in fields.list("ips")?.iter().enumerate() {
            let at = format!("{at}.ips[{i}]");
            let mut f = Fields::of(&at, item)?;
            let address = f.cidr("address")?;
            if version.ips_have_version() {
                // Before 1.0.0 each IP says its family; a wrong one is a broken result.
                if let Some(family) = f.string("version")? {
                    let expected = if address.addr().is_ipv4() { "4" } else { "6" };
                    if family != expected {
                        return Err(field_error(
                            &format!("{at}.version"),
                            format!("{family:?} does not match address {address}"),
                        ));
                    }
                }
            }
            let gateway = f.ip("gateway")?;
            let interface = match f.number("interface")? {
                None => None,
                Some(n) => Some(usize::try_from(n).map_err(|_| {
                    field_error(&format!("{at}.interface"), format!("{n} is too large"))
                })?),
            };
            result.ips.push(IpConfig {
                address,
                gateway,
                interface,
                extra: f.map,
            });
        }
        for (i, ip) in result.ips.iter().enumerate() {
            if let Some(index) = ip.interface
                && index >= result.interfaces.len()
            {
                return Err(field_error(
                    &format!("{at}.ips[{i}].interface"),
                    format!(
                        "{index} is not an index of interfaces (which has {})",
                        result.interfaces.len()
                    ),
                ));
            }
        }
        for (i, item) in fields.list("routes")?.iter().enumerate() {
            let at = format!("{at}.routes[{i}]");
            let mut f = Fields::of(&at, item)?;
            let mut route = Route {
                dst: f.cidr("dst")?,
                gw: f.ip("gw")?,
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
                extra: Map::new(),
            };
            if version.has_1_1_fields() {
                route.mtu = f.u32("mtu")?;
                route.advmss = f.u32("advmss")?;
                route.priority = f.u32("priority")?;
                route.table = f.u32("table")?;
                route.scope = f.u32("scope")?;
            }
            route.extra = f.map;
            result.routes.push(route);
        }
        if let Some(dns) = fields.take("dns") {
            let at = format!("{at}.dns");
            let mut f = Fields::of(&at, &dns)?;
            result.dns = Dns {
                nameservers: f.strings("nameservers")?,
                domain: f.string("domain")?,
                search: f.strings("search")?,
                options: f.strings("options")?,
                extra: Map::new(),
            };
            result.dns.extra = f.map;
        }
        result.extra = fields.map;
        Ok(result)
    }

    /// The result as `version` writes it, `cniVersion` first.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.as_str().into());
        if !self.interfaces.is_empty() {
            let list = self.interfaces.iter().map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), i.name.clone().into());
                put(&mut o, "mac", i.mac.clone());
                if version.has_1_1_fields() {
                    put(&mut o, "mtu", i.mtu);
                }
                put(&mut o, "sandbox", i.sandbox.clone());
                if version.has_1_1_fields() {
                    put(&mut o, "socketPath", i.socket_path.clone());
                    put(&mut o, "pciID", i.pci_id.clone());
                }
                extend(&mut o, &i.extra);
                Value::Object(o)
            });
            out.insert("interfaces".into(), Value::Array(list.collect()));
        }
        if !self.ips.is_empty() {
            let list = self.ips.iter().map(|ip| {
                let mut o = Map::new();
                if version.ips_have_version() {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), family.into());
                }
                put(&mut o, "interface", ip.interface);
                o.insert("address".into(), ip.address.to_string().into());
                put(&mut o, "gateway", ip.gateway.map(|g| g.to_string()));
                extend(&mut o, &ip.extra);
                Value::Object(o)
            });
            out.insert("ips".into(), Value::Array(list.collect()));
        }
        if !self.routes.is_empty() {
            let list = self.routes.iter().map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), r.dst.to_string().into());
                put(&mut o, "gw", r.gw.map(|g| g.to_string()));
                if version.has_1_1_fields() {
                    put(&mut o, "mtu", r.mtu);
                    put(&mut o, "advmss", r.advmss);
                    put(&mut o, "priority", r.priority);
                    put(&mut o, "table", r.table);
                    put(&mut o, "scope", r.scope);
                }
                extend(&mut o, &r.extra);
                Value::Object(o)
            });
            out.insert("routes".into(), Value::Array(list.collect()));
        }
        if !self.dns.is_empty() {
            let mut o = Map::new();
            let strings =
                |v: &Vec<String>| Value::Array(v.iter().cloned().map(Value::from).collect());
            if !self.dns.nameservers.is_empty() {
                o.insert("nameservers".into(), strings(&self.dns.nameservers));
            }
            put(&mut o, "domain", self.dns.domain.clone());
            if !self.dns.search.is_empty() {
                o.insert("search".into(), strings(&self.dns.search));
            }
            if !self.dns.options.is_empty() {
                o.insert("options".into(), strings(&self.dns.options));
            }
            extend(&mut o, &self.dns.extra);
            out.insert("dns".into(), Value::Object(o));
        }
        extend(&mut out, &self.extra);
        Value::Object(out)
    }
}

fn put<T: Into<Value>>(map: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        map.insert(key.into(), v.into());
    }
}

fn extend(map: &mut Map<String, Value>, extra: &Map<String, Value>) {
    for (k, v) in extra {
        map.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ptp_like(version: &str) -> Value {
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": "veth1234", "mac": "aa:bb:cc:00:00:01"},
                {"name": "eth0", "mac": "aa:bb:cc:00:00:02", "sandbox": "/run/netns/p", "mtu": 1400}
            ],
            "ips": [{"version": "4", "interface": 1, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1300, "advmss": 1260}],
            "dns": {"nameservers": ["10.1.0.1"]},
            "x-extra": {"kept": true}
        })
    }

    #[test]
    fn a_0_4_result_keeps_what_it_does_not_define_and_writes_back_the_same() {
        let input = ptp_like("0.4.0");
        let (version, result) = CniResult::from_json("prevResult", &input).unwrap();
        assert_eq!(version, CniVersion::V0_4_0);
        // mtu is not a 0.4.0 field: kept as an extra, not read.
        assert_eq!(result.interfaces[1].mtu, None);
        assert_eq!(result.interfaces[1].extra["mtu"], 1400);
        assert_eq!(result.routes[0].mtu, None);
        assert_eq!(result.ips[0].interface, Some(1));
        assert_eq!(result.to_json(version), input);
    }

    #[test]
    fn a_1_1_result_reads_its_own_fields_and_drops_the_ip_family() {
        let mut input = ptp_like("1.1.0");
        input["ips"][0].as_object_mut().unwrap().remove("version");
        let (version, result) = CniResult::from_json("r", &input).unwrap();
        assert_eq!(version, CniVersion::V1_1_0);
        assert_eq!(result.interfaces[1].mtu, Some(1400));
        assert_eq!(result.routes[0].mtu, Some(1300));
        assert_eq!(result.routes[0].advmss, Some(1260));
        assert_eq!(result.to_json(version), input);
        // Written as 1.0.0: no 1.1 fields, no family.
        let old = result.to_json(CniVersion::V1_0_0);
        assert_eq!(old["interfaces"][1].get("mtu"), None);
        assert_eq!(old["routes"][0].get("advmss"), None);
        assert_eq!(old["ips"][0].get("version"), None);
        // Written as 0.3.1: the family comes back.
        assert_eq!(result.to_json(CniVersion::V0_3_1)["ips"][0]["version"], "4");
    }

    #[test]
    fn ips_without_an_interface_index_are_read() {
        let input = json!({"cniVersion": "1.0.0", "ips": [{"address": "fd00::5/64"}]});
        let (_, result) = CniResult::from_json("prevResult", &input).unwrap();
        assert_eq!(result.ips[0].interface, None);
        assert_eq!(result.to_json(CniVersion::V0_4_0)["ips"][0]["version"], "6");
    }

    #[test]
    fn broken_results_name_the_field() {
        let cases = [
            (json!({"ips": []}), "prevResult.cniVersion: missing"),
            (
                json!({"cniVersion": "0.2.0"}),
                "prevResult.cniVersion: CNI version \"0.2.0\" is not supported",
            ),
            (
                json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]}),
                "prevResult.ips[0].address: \"10.0.0.1\" is not an address",
            ),
            (
                json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/8", "interface": 2}]}),
                "prevResult.ips[0].interface: 2 is not an index",
            ),
            (
                json!({"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "10.0.0.1/8"}]}),
                "prevResult.ips[0].version: \"6\" does not match",
            ),
            (
                json!({"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]}),
                "prevResult.interfaces[0].name: missing",
            ),
            (
                json!({"cniVersion": "1.0.0", "routes": {"dst": "x"}}),
                "prevResult.routes: expected a list",
            ),
        ];
        for (input, expected) in cases {
            let err = CniResult::from_json("prevResult", &input).unwrap_err();
            let text = sandbox_net_netns::error_chain(&err);
            assert!(
                text.starts_with(expected),
                "{text:?} should start with {expected:?}"
            );
        }
    }
}
