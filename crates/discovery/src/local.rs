//! This machine's interfaces (for the Hello: MACs, IPs, one TCP link per
//! interface) and a guess at what kind of machine it is.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// One network interface that is up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// Kernel name (eth0, wlan0…).
    pub name: String,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`, if it has one.
    pub mac: Option<String>,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Loopback.
    pub loopback: bool,
}

impl Interface {
    /// The address a peer should use to reach this interface: IPv4 first,
    /// else a global (non link-local) IPv6; `None` for loopback.
    pub fn reachable_ip(&self) -> Option<IpAddr> {
        if self.loopback {
            return None;
        }
        self.ips
            .iter()
            .find(|ip| ip.is_ipv4() && !ip.is_loopback())
            .or_else(|| self.ips.iter().find(|ip| usable_v6(ip)))
            .copied()
    }
}

/// An IPv6 address a peer can dial without a scope id.
fn usable_v6(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
        IpAddr::V4(_) => false,
    }
}

/// Whether `ip` can be dialled as given (not loopback, not unspecified,
/// not an IPv6 link-local address that would need a scope id).
pub fn dialable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified() && !v4.is_multicast(),
        IpAddr::V6(_) => usable_v6(ip),
    }
}

/// The interfaces that are up, sorted by name. Empty if they cannot be read.
pub fn interfaces() -> Vec<Interface> {
    use nix::net::if_::InterfaceFlags;
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    for a in addrs {
        if !a.flags.contains(InterfaceFlags::IFF_UP) {
            continue;
        }
        let e = by_name
            .entry(a.interface_name.clone())
            .or_insert_with(|| Interface {
                name: a.interface_name.clone(),
                loopback: a.flags.contains(InterfaceFlags::IFF_LOOPBACK),
                ..Interface::default()
            });
        let Some(addr) = a.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr()
                && mac != [0; 6]
            {
                e.mac = Some(
                    mac.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            }
        } else if let Some(v4) = addr.as_sockaddr_in() {
            e.ips.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            e.ips.push(IpAddr::V6(v6.ip()));
        }
    }
    by_name.into_values().collect()
}

/// laptop, board, server, desktop or linux — from DMI's chassis type, a
/// device tree (single-board computers) or a battery.
pub fn guess_node_type() -> String {
    guess_from(
        std::fs::read_to_string("/sys/class/dmi/id/chassis_type").ok(),
        std::path::Path::new("/proc/device-tree/model").exists(),
        std::fs::read_dir("/sys/class/power_supply")
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("BAT"))
            })
            .unwrap_or(false),
    )
}

fn guess_from(chassis: Option<String>, device_tree: bool, battery: bool) -> String {
    // SMBIOS chassis types (DSP0134 §7.4.1).
    let by_chassis = chassis
        .and_then(|c| c.trim().parse::<u32>().ok())
        .and_then(|c| match c {
            8..=10 | 14 | 30..=32 => Some("laptop"),
            3..=7 | 13 | 15 | 16 | 35 | 36 => Some("desktop"),
            17 | 23 | 25 | 28 | 29 => Some("server"),
            _ => None,
        });
    let t = match (by_chassis, device_tree, battery) {
        (Some(t), _, _) => t,
        (None, true, _) => "board",
        (None, false, true) => "laptop",
        (None, false, false) => "linux",
    };
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_type_is_guessed_from_chassis_then_device_tree_then_battery() {
        assert_eq!(guess_from(Some("10\n".into()), false, false), "laptop");
        assert_eq!(guess_from(Some("23".into()), false, true), "server");
        assert_eq!(guess_from(Some("3".into()), false, false), "desktop");
        assert_eq!(guess_from(None, true, false), "board");
        assert_eq!(guess_from(Some("1".into()), false, true), "laptop");
        assert_eq!(guess_from(None, false, false), "linux");
    }

    #[test]
    fn reachable_ip_prefers_v4_and_skips_link_local_and_loopback() {
        let i = Interface {
            name: "eth0".into(),
            mac: None,
            ips: vec![
                "fe80::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
            ],
            loopback: false,
        };
        assert_eq!(i.reachable_ip(), Some("10.0.0.2".parse().unwrap()));
        let v6 = Interface {
            ips: vec!["fe80::1".parse().unwrap(), "fd00::2".parse().unwrap()],
            ..i.clone()
        };
        assert_eq!(v6.reachable_ip(), Some("fd00::2".parse().unwrap()));
        let ll = Interface {
            ips: vec!["fe80::1".parse().unwrap()],
            ..i.clone()
        };
        assert_eq!(ll.reachable_ip(), None);
        let lo = Interface {
            loopback: true,
            ..i
        };
        assert_eq!(lo.reachable_ip(), None);
    }

    #[test]
    fn this_machine_has_a_loopback_interface() {
        let ifs = interfaces();
        assert!(ifs.iter().any(|i| i.loopback), "{ifs:?}");
    }
}
