//! Kernel enumerations kept under their `ip`-style names.
//!
//! Each type wraps the raw number the kernel uses, so that nothing read from the kernel is
//! ever lost, and serializes as the name `ip` prints (`"link"`, `"kernel"`, `"permanent"`),
//! or as the plain number for values without a name.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! named_number {
    ($(#[$doc:meta])* $name:ident($raw:ty) { $($(#[$cdoc:meta])* $konst:ident = $value:expr => $text:expr,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $raw);

        impl $name {
            $($(#[$cdoc])* pub const $konst: Self = Self($value);)+

            /// The name `ip` prints for this value, if it has one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)+
                    _ => None,
                }
            }

            /// Looks a value up by its name, or parses a plain number.
            pub fn from_name(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(Self::$konst),)+
                    other => other.parse::<$raw>().ok().map(Self),
                }
            }
        }

        impl From<$raw> for $name {
            fn from(raw: $raw) -> Self {
                Self(raw)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(text) => f.write_str(text),
                    None => write!(f, "{}", self.0),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self.name() {
                    Some(text) => serializer.serialize_str(text),
                    None => self.0.serialize(serializer),
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Repr {
                    Number($raw),
                    Text(String),
                }
                match Repr::deserialize(deserializer)? {
                    Repr::Number(raw) => Ok(Self(raw)),
                    Repr::Text(text) => Self::from_name(&text).ok_or_else(|| {
                        serde::de::Error::custom(format!(
                            concat!("unknown ", stringify!($name), " {:?}"),
                            text
                        ))
                    }),
                }
            }
        }
    };
}

named_number! {
    /// The scope of an address (`ifa_scope`, `RT_SCOPE_*`).
    AddressScope(u8) {
        /// `RT_SCOPE_UNIVERSE`, printed `global`.
        GLOBAL = 0 => "global",
        /// `RT_SCOPE_SITE`.
        SITE = 200 => "site",
        /// `RT_SCOPE_LINK`.
        LINK = 253 => "link",
        /// `RT_SCOPE_HOST`.
        HOST = 254 => "host",
        /// `RT_SCOPE_NOWHERE`.
        NOWHERE = 255 => "nowhere",
    }
}

named_number! {
    /// Who installed a route (`rtm_protocol`, `RTPROT_*`).
    RouteProtocol(u8) {
        /// `RTPROT_UNSPEC`.
        UNSPEC = 0 => "unspec",
        /// `RTPROT_REDIRECT`.
        REDIRECT = 1 => "redirect",
        /// `RTPROT_KERNEL`: made by the kernel for an address's prefix.
        KERNEL = 2 => "kernel",
        /// `RTPROT_BOOT`: what `ip route add` uses by default.
        BOOT = 3 => "boot",
        /// `RTPROT_STATIC`.
        STATIC = 4 => "static",
        /// `RTPROT_RA`: IPv6 router advertisement.
        RA = 9 => "ra",
        /// `RTPROT_DHCP`.
        DHCP = 16 => "dhcp",
    }
}

named_number! {
    /// The type of a route (`rtm_type`, `RTN_*`).
    RouteType(u8) {
        /// `RTN_UNSPEC`.
        UNSPEC = 0 => "unspec",
        /// `RTN_UNICAST`.
        UNICAST = 1 => "unicast",
        /// `RTN_LOCAL`.
        LOCAL = 2 => "local",
        /// `RTN_BROADCAST`.
        BROADCAST = 3 => "broadcast",
        /// `RTN_ANYCAST`.
        ANYCAST = 4 => "anycast",
        /// `RTN_MULTICAST`.
        MULTICAST = 5 => "multicast",
        /// `RTN_BLACKHOLE`.
        BLACKHOLE = 6 => "blackhole",
        /// `RTN_UNREACHABLE`.
        UNREACHABLE = 7 => "unreachable",
        /// `RTN_PROHIBIT`.
        PROHIBIT = 8 => "prohibit",
        /// `RTN_THROW`.
        THROW = 9 => "throw",
    }
}

named_number! {
    /// The state of a neighbour entry (`ndm_state`, `NUD_*`).
    NeighbourState(u16) {
        /// `NUD_NONE`.
        NONE = 0x00 => "none",
        /// `NUD_INCOMPLETE`.
        INCOMPLETE = 0x01 => "incomplete",
        /// `NUD_REACHABLE`.
        REACHABLE = 0x02 => "reachable",
        /// `NUD_STALE`.
        STALE = 0x04 => "stale",
        /// `NUD_DELAY`.
        DELAY = 0x08 => "delay",
        /// `NUD_PROBE`.
        PROBE = 0x10 => "probe",
        /// `NUD_FAILED`.
        FAILED = 0x20 => "failed",
        /// `NUD_NOARP`.
        NOARP = 0x40 => "noarp",
        /// `NUD_PERMANENT`: a static entry, the only kind pushed to a guest.
        PERMANENT = 0x80 => "permanent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_serialize_as_names_unknown_as_numbers() {
        assert_eq!(
            serde_json::to_string(&AddressScope::LINK).unwrap(),
            "\"link\""
        );
        assert_eq!(serde_json::to_string(&RouteProtocol(42)).unwrap(), "42");
        assert_eq!(
            serde_json::from_str::<RouteProtocol>("\"kernel\"").unwrap(),
            RouteProtocol::KERNEL
        );
        assert_eq!(
            serde_json::from_str::<RouteProtocol>("42").unwrap(),
            RouteProtocol(42)
        );
        assert_eq!(
            serde_json::from_str::<NeighbourState>("\"permanent\"")
                .unwrap()
                .0,
            0x80
        );
    }

    #[test]
    fn unknown_name_is_an_error_that_names_it() {
        let err = serde_json::from_str::<AddressScope>("\"galactic\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown AddressScope \"galactic\""),
            "{err}"
        );
    }
}
