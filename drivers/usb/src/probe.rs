//! `gateway links`: the USB devices with a gateway interface (host end) and
//! the USB device controllers (gadget end) here, usable or not, and why.
//!
//! Everything is read from sysfs, devfs and configfs under roots the caller
//! passes (`/sys` and `/dev` for real), so the unit tests below build each
//! case as a small fake tree: no permission on a device node, an interface
//! held by a kernel driver or a process, no controller, a UDC free or bound
//! to another gadget, no configfs.

use std::path::{Path, PathBuf};

use gateway_link::Adapter;

use crate::{
    GADGET_NAME, INTERFACE_CLASS, INTERFACE_PROTOCOL, INTERFACE_SUBCLASS, PRODUCT_ID, VENDOR_ID,
};

/// The udev rule that gives the `gateway` group the gateway's USB devices.
const RULES: &str = "udev/60-gateway.rules";
/// The group that rule gives them to.
const GROUP: &str = "gateway";
/// Capability bits in `/proc/self/status` `CapEff`.
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_SYS_ADMIN: u32 = 21;

/// Lists host-end devices and gadget-end UDCs: a thin wrapper over the
/// functions below with this machine's roots and identity.
pub(crate) async fn probe() -> Vec<Adapter> {
    let (sys, dev) = (Path::new("/sys"), Path::new("/dev"));
    let who = std::fs::read_to_string("/proc/self/status")
        .map(|s| Who::from_status(&s))
        .unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let writable = |p: &Path| nix::unistd::eaccess(p, nix::unistd::AccessFlags::W_OK).is_ok();
    let mut rows = host_rows(sys, dev, &node_access);
    rows.extend(gadget_rows(sys, &who, &mounts, &writable));
    rows
}

fn row(name: &str, usable: bool, detail: String) -> Adapter {
    Adapter {
        scheme: "usb".into(),
        name: name.into(),
        usable,
        detail,
    }
}

/// A sysfs attribute, trimmed; `None` when absent or empty.
fn attr(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn hex_attr<T: TryFrom<u32>>(dir: &Path, name: &str) -> Option<T> {
    let s = attr(dir, name)?;
    let v = u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()?;
    T::try_from(v).ok()
}

/// Sorted names of the entries in `dir` (none if it cannot be read).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The last component of the symlink `path` points to (a driver's name).
pub(crate) fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

// ---- identity ----

/// Who this process is, as far as device nodes and configfs care.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Who {
    /// Effective user id.
    euid: u32,
    cap_dac_override: bool,
    cap_sys_admin: bool,
}

impl Who {
    /// From the text of `/proc/self/status` (`Uid:` real, effective, …; `CapEff:` hex).
    fn from_status(status: &str) -> Who {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let euid = field("Uid:")
            .and_then(|u| u.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(u32::MAX);
        let caps = field("CapEff:")
            .and_then(|c| u64::from_str_radix(c, 16).ok())
            .unwrap_or(0);
        Who {
            euid,
            cap_dac_override: caps & (1 << CAP_DAC_OVERRIDE) != 0,
            cap_sys_admin: caps & (1 << CAP_SYS_ADMIN) != 0,
        }
    }

    /// Whether this process may build a gadget: make directories in configfs
    /// (root's, mode 0755) and mount FunctionFS.
    fn can_build_gadget(&self) -> bool {
        self.cap_sys_admin && (self.euid == 0 || self.cap_dac_override)
    }
}

// ---- host end ----

/// Whether this process may open a usbfs node for reading and writing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NodeAccess {
    Ok,
    /// No such node (devtmpfs not on /dev, or the device just left).
    Missing,
    /// Denied; the node's group, to tell "rule installed, join the group"
    /// from "no rule".
    Denied {
        group: Option<String>,
    },
    Other(String),
}

/// The real check: `eaccess(R_OK|W_OK)` (effective ids, ACLs included; it
/// does not open the node, so it wakes no device).
fn node_access(node: &Path) -> NodeAccess {
    use nix::unistd::{AccessFlags, Gid, Group, eaccess};
    use std::os::unix::fs::MetadataExt;
    match eaccess(node, AccessFlags::R_OK | AccessFlags::W_OK) {
        Ok(()) => NodeAccess::Ok,
        Err(nix::errno::Errno::ENOENT) => NodeAccess::Missing,
        Err(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) => NodeAccess::Denied {
            group: std::fs::metadata(node)
                .ok()
                .and_then(|m| Group::from_gid(Gid::from_raw(m.gid())).ok().flatten())
                .map(|g| g.name),
        },
        Err(e) => NodeAccess::Other(e.desc().to_string()),
    }
}

/// One attached device with the gateway interface, as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostDevice {
    /// sysfs name: bus-port.port, e.g. `1-1.4`.
    sysname: String,
    vid: u16,
    pid: u16,
    serial: Option<String>,
    product: Option<String>,
    /// Its usbfs node, `DEV/bus/usb/BBB/DDD`.
    node: PathBuf,
    /// The gateway interface's sysfs name, `1-1.4:1.0`.
    interface: String,
    /// The driver bound to that interface: `usbfs` when a process claimed it.
    driver: Option<String>,
}

impl HostDevice {
    /// The most precise selector for it: with the serial number when that
    /// is one a selector can carry.
    fn selector(&self) -> String {
        match &self.serial {
            Some(s)
                if s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)) =>
            {
                format!("usb:{:04x}:{:04x}/{s}", self.vid, self.pid)
            }
            _ => format!("usb:{:04x}:{:04x}", self.vid, self.pid),
        }
    }
}

/// What `SYS/bus/usb` holds.
#[derive(Debug, PartialEq, Eq)]
enum HostScan {
    /// No `SYS/bus/usb`: no USB core, no host controller.
    NoUsb,
    /// USB core, but no root hub: no host controller (a board whose only
    /// port is in device mode).
    NoController,
    Devices {
        /// Buses (root hubs).
        buses: usize,
        /// Devices other than root hubs.
        seen: usize,
        found: Vec<HostDevice>,
    },
}

/// Reads the devices under `SYS/bus/usb/devices` as nusb does (the active
/// configuration's interfaces) and keeps those with the gateway interface
/// (class ff, subclass 'G', protocol 'W').
fn scan_host(sys: &Path, dev: &Path) -> HostScan {
    let bus = sys.join("bus/usb");
    if !bus.is_dir() {
        return HostScan::NoUsb;
    }
    let devices = bus.join("devices");
    let all = names(&devices);
    let buses = all.iter().filter(|n| n.starts_with("usb")).count();
    if buses == 0 {
        return HostScan::NoController;
    }
    // `1-1` or `1-1.4.2`: devices; `usb1` root hubs and `1-1:1.0` interfaces are not.
    let is_device = |n: &str| {
        n.bytes()
            .all(|c| c.is_ascii_digit() || c == b'-' || c == b'.')
    };
    let mut seen = 0;
    let mut found = Vec::new();
    for name in all.iter().filter(|n| is_device(n)) {
        seen += 1;
        let dir = devices.join(name);
        let (Some(vid), Some(pid)) = (hex_attr(&dir, "idVendor"), hex_attr(&dir, "idProduct"))
        else {
            continue;
        };
        let gateway = names(&dir)
            .into_iter()
            .filter(|i| i.starts_with(&format!("{name}:")))
            .find(|i| {
                let d = dir.join(i);
                hex_attr::<u8>(&d, "bInterfaceClass") == Some(INTERFACE_CLASS)
                    && hex_attr::<u8>(&d, "bInterfaceSubClass") == Some(INTERFACE_SUBCLASS)
                    && hex_attr::<u8>(&d, "bInterfaceProtocol") == Some(INTERFACE_PROTOCOL)
            });
        let Some(interface) = gateway else { continue };
        let num = |a: &str| attr(&dir, a).and_then(|s| s.parse::<u32>().ok());
        let node = match (num("busnum"), num("devnum")) {
            (Some(b), Some(d)) => dev.join(format!("bus/usb/{b:03}/{d:03}")),
            _ => continue,
        };
        found.push(HostDevice {
            sysname: name.clone(),
            vid,
            pid,
            serial: attr(&dir, "serial"),
            product: attr(&dir, "product"),
            node,
            driver: link_name(&dir.join(&interface).join("driver")),
            interface,
        });
    }
    HostScan::Devices { buses, seen, found }
}

/// Host-end rows: one per gateway device (usable, or why not), or one row
/// saying why there is none. `access` checks a usbfs node.
fn host_rows(sys: &Path, dev: &Path, access: &dyn Fn(&Path) -> NodeAccess) -> Vec<Adapter> {
    let (buses, seen, found) = match scan_host(sys, dev) {
        HostScan::NoUsb => {
            return vec![row(
                "host",
                false,
                format!(
                    "no USB host controller here: {} is absent, so this machine cannot be the host end of a cable (the gadget end is usb:gadget)",
                    sys.join("bus/usb").display()
                ),
            )];
        }
        HostScan::NoController => {
            return vec![row(
                "host",
                false,
                format!(
                    "no USB host controller here: no root hub in {}, so this machine cannot be the host end of a cable (the gadget end is usb:gadget)",
                    sys.join("bus/usb/devices").display()
                ),
            )];
        }
        HostScan::Devices { buses, seen, found } => (buses, seen, found),
    };
    if found.is_empty() {
        return vec![row(
            "host",
            false,
            format!(
                "no gateway device attached; {seen} USB device{} seen on {buses} bus{}: connect a board running `sudo gateway serve --listen usb:gadget`",
                if seen == 1 { "" } else { "s" },
                if buses == 1 { "" } else { "es" },
            ),
        )];
    }
    found
        .iter()
        .map(|d| {
            let name = format!("{} {:04x}:{:04x}", d.sysname, d.vid, d.pid);
            let node = d.node.display();
            let (usable, detail) = match (access(&d.node), d.driver.as_deref()) {
                (NodeAccess::Missing, _) => (
                    false,
                    format!(
                        "no device node {node}: unplugged just now, or devtmpfs is not mounted on /dev"
                    ),
                ),
                (_, Some("usbfs")) => (
                    false,
                    format!(
                        "busy: a process holds its gateway interface {} (another gateway? `sudo fuser -v {node}` names it)",
                        d.interface
                    ),
                ),
                (_, Some(drv)) => (
                    false,
                    format!(
                        "busy: kernel driver {drv} holds its gateway interface; free it with `echo {} | sudo tee /sys/bus/usb/drivers/{drv}/unbind`",
                        d.interface
                    ),
                ),
                (NodeAccess::Denied { group }, None) => (
                    false,
                    permission_fix(&d.node, d.vid, d.pid, group.as_deref()),
                ),
                (NodeAccess::Other(e), None) => (false, format!("cannot check {node}: {e}")),
                (NodeAccess::Ok, None) => (
                    true,
                    format!(
                        "gateway device{}{}: {}",
                        d.product
                            .as_deref()
                            .map(|p| format!(" '{p}'"))
                            .unwrap_or_default(),
                        d.serial
                            .as_deref()
                            .map(|s| format!(" serial {s}"))
                            .unwrap_or_default(),
                        d.selector()
                    ),
                ),
            };
            row(&name, usable, detail)
        })
        .collect()
}

/// What to do about a refused open of `node` (the device `vid:pid`), for
/// the host end's open error: the same advice `gateway links` gives.
pub(crate) fn open_permission_fix(node: &Path, vid: u16, pid: u16) -> String {
    let group = match node_access(node) {
        NodeAccess::Denied { group } => group,
        _ => None,
    };
    permission_fix(node, vid, pid, group.as_deref())
}

/// Why this user may not open the device, and what to do about it.
fn permission_fix(node: &Path, vid: u16, pid: u16, group: Option<&str>) -> String {
    let node = node.display();
    if group == Some(GROUP) {
        return format!(
            "no write access to {node} (group {GROUP}, from the udev rule): join the group (`sudo usermod -aG {GROUP} $USER`, then log in again) or run as root"
        );
    }
    let ids = format!("{vid:04x}:{pid:04x}");
    let matches = if (vid, pid) == (VENDOR_ID, PRODUCT_ID) {
        String::new()
    } else {
        format!(" (it matches {VENDOR_ID:04x}:{PRODUCT_ID:04x}: add a line for {ids})")
    };
    format!(
        "no write access to {node} (group {}): install the udev rule {RULES}{matches} \
         (`sudo install -m 0644 {RULES} /etc/udev/rules.d/ && sudo udevadm control --reload && sudo udevadm trigger`), \
         join the `{GROUP}` group and plug the cable in again; or run as root",
        group.unwrap_or("unknown")
    )
}

// ---- gadget end ----

/// A gadget in configfs: its name, the UDC it is bound to, its functions.
#[derive(Debug)]
struct ConfigfsGadget {
    name: String,
    udc: Option<String>,
    functions: Vec<String>,
}

fn configfs_gadgets(configfs: &Path) -> Vec<ConfigfsGadget> {
    names(configfs)
        .into_iter()
        .filter(|n| configfs.join(n).is_dir())
        .map(|name| {
            let dir = configfs.join(&name);
            ConfigfsGadget {
                udc: attr(&dir, "UDC"),
                functions: names(&dir.join("functions")),
                name,
            }
        })
        .collect()
}

/// The FunctionFS mount of a gadget `gateway usb-gadget setup` prepared: the
/// gateway gadget, unbound, with an `ffs.INSTANCE` function that `mounts`
/// (the text of `/proc/self/mounts`) shows mounted.
fn prepared(gadgets: &[ConfigfsGadget], mounts: &str) -> Option<PathBuf> {
    let g = gadgets
        .iter()
        .find(|g| g.name == GADGET_NAME && g.udc.is_none())?;
    let instances: Vec<&str> = g
        .functions
        .iter()
        .filter_map(|f| f.strip_prefix("ffs."))
        .collect();
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (source, dest, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "functionfs" && instances.contains(&source))
            .then(|| PathBuf::from(dest.replace("\\040", " ")))
    })
}

/// Gadget-end rows: one per UDC in `SYS/class/udc` (free and usable, or why
/// not), or one row saying this machine cannot be the gadget end. `mounts`
/// is the text of `/proc/self/mounts`; `writable` checks a path this process
/// would write (a prepared gadget's `ep0` and `UDC` attribute).
fn gadget_rows(
    sys: &Path,
    who: &Who,
    mounts: &str,
    writable: &dyn Fn(&Path) -> bool,
) -> Vec<Adapter> {
    let udc_dir = sys.join("class/udc");
    let udcs = names(&udc_dir);
    if udcs.is_empty() {
        return vec![row(
            "gadget",
            false,
            format!(
                "no USB device controller (UDC) in {}, so this machine cannot be the gadget end of a cable: boards with an OTG or device port have one (dwc2 on a Raspberry Pi: dtoverlay=dwc2); `sudo modprobe dummy_hcd` makes a virtual one for tests; from this side use usb: (the host end)",
                udc_dir.display()
            ),
        )];
    }
    let configfs = sys.join("kernel/config/usb_gadget");
    let gadgets = configfs_gadgets(&configfs);
    let prepared = prepared(&gadgets, mounts);
    udcs.iter()
        .map(|udc| {
            let dir = udc_dir.join(udc);
            let state = attr(&dir, "state").unwrap_or_else(|| "state unknown".into());
            let sel = format!("usb:gadget:{udc}");
            let holder = gadgets.iter().find(|g| g.udc.as_deref() == Some(udc));
            let (usable, detail) = match (holder, attr(&dir, "function")) {
                (Some(g), _) if g.name == GADGET_NAME => (
                    false,
                    format!(
                        "in use: gateway's gadget is bound ({state}), served by a running gateway process; stop it to use {sel} from another"
                    ),
                ),
                (Some(g), _) => (
                    false,
                    format!(
                        "busy: gadget '{}' ({}) is bound to it ({state}); free it with `echo | sudo tee {}/UDC`, or use another UDC",
                        g.name,
                        if g.functions.is_empty() {
                            "no functions".into()
                        } else {
                            g.functions.join(", ")
                        },
                        configfs.join(&g.name).display()
                    ),
                ),
                (None, Some(driver)) => (
                    false,
                    format!(
                        "busy: gadget driver '{driver}' is bound to it ({state}), a legacy gadget module (`sudo modprobe -r {driver}` frees it)"
                    ),
                ),
                (None, None) => match &prepared {
                    Some(ffs) => {
                        let sel = format!("{sel}?ffs={}", ffs.display());
                        if writable(&ffs.join("ep0"))
                            && writable(&configfs.join(GADGET_NAME).join("UDC"))
                        {
                            (
                                true,
                                format!(
                                    "free ({state}), the gateway gadget prepared by `gateway usb-gadget setup`: listen or open {sel}"
                                ),
                            )
                        } else {
                            (
                                false,
                                format!(
                                    "free ({state}), but the gateway gadget prepared at {} is another user's: serve {sel} as that user, or hand it to this one with `sudo gateway usb-gadget setup --user $USER`",
                                    ffs.display()
                                ),
                            )
                        }
                    }
                    None if !configfs.is_dir() => (
                        false,
                        format!(
                            "free ({state}), but configfs gadgets are unavailable (no {}): `sudo modprobe libcomposite usb_f_fs` (with configfs mounted on /sys/kernel/config), then {sel}",
                            configfs.display()
                        ),
                    ),
                    None if !who.can_build_gadget() => (
                        false,
                        format!(
                            "free ({state}); building the gadget needs root (CAP_SYS_ADMIN, for configfs and FunctionFS): `sudo gateway serve --listen {sel}`, or once `sudo gateway usb-gadget setup --user $USER`, then {sel}?ffs=/dev/usb-ffs/gateway without root"
                        ),
                    ),
                    None => (true, format!("free ({state}): listen or open {sel}")),
                },
            };
            row(&format!("gadget:{udc}"), usable, detail)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const ROOT: Who = Who {
        euid: 0,
        cap_dac_override: true,
        cap_sys_admin: true,
    };
    const USER: Who = Who {
        euid: 1000,
        cap_dac_override: false,
        cap_sys_admin: false,
    };

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, format!("{text}\n")).unwrap();
    }

    /// A fake `SYS/bus/usb/devices/NAME` with one interface of class `intf`
    /// (class, subclass, protocol), bound to `driver`.
    fn device(
        sys: &Path,
        name: &str,
        (bus, addr): (u32, u32),
        ids: &str,
        intf: (&str, &str, &str),
        driver: Option<&str>,
    ) {
        let d = sys.join("bus/usb/devices").join(name);
        let (vid, pid) = ids.split_once(':').unwrap();
        for (a, v) in [
            ("idVendor", vid),
            ("idProduct", pid),
            ("busnum", &bus.to_string()),
            ("devnum", &addr.to_string()),
            ("product", "gateway link"),
            ("serial", "pi4"),
        ] {
            write(&d.join(a), v);
        }
        let i = d.join(format!("{name}:1.0"));
        for (a, v) in [
            ("bInterfaceNumber", "00"),
            ("bInterfaceClass", intf.0),
            ("bInterfaceSubClass", intf.1),
            ("bInterfaceProtocol", intf.2),
        ] {
            write(&i.join(a), v);
        }
        if let Some(drv) = driver {
            std::os::unix::fs::symlink(
                format!("../../../../bus/usb/drivers/{drv}"),
                i.join("driver"),
            )
            .unwrap();
        }
    }

    const GATEWAY: (&str, &str, &str) = ("ff", "47", "57");

    fn root_hubs(sys: &Path, n: u32) {
        for b in 1..=n {
            write(
                &sys.join(format!("bus/usb/devices/usb{b}/idVendor")),
                "1d6b",
            );
        }
    }

    #[test]
    fn no_usb_core_or_no_root_hub_means_no_host_controller() {
        let t = tempfile::tempdir().unwrap();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        let rows = host_rows(&sys, &dev, &|_| NodeAccess::Ok);
        assert_eq!(rows.len(), 1);
        assert!(!rows[0].usable);
        assert!(
            rows[0].detail.contains("no USB host controller") && rows[0].detail.contains("absent"),
            "{}",
            rows[0].detail
        );
        fs::create_dir_all(sys.join("bus/usb/devices")).unwrap();
        let rows = host_rows(&sys, &dev, &|_| NodeAccess::Ok);
        assert!(
            !rows[0].usable
                && rows[0].detail.contains("no USB host controller")
                && rows[0].detail.contains("root hub"),
            "{}",
            rows[0].detail
        );
    }

    #[test]
    fn no_gateway_device_says_how_many_devices_were_seen() {
        let t = tempfile::tempdir().unwrap();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        root_hubs(&sys, 2);
        device(
            &sys,
            "1-1",
            (1, 2),
            "046d:c52b",
            ("03", "01", "02"),
            Some("usbhid"),
        );
        device(&sys, "2-3.1", (2, 5), "0781:5581", ("08", "06", "50"), None);
        // A vendor interface that is not the gateway's (subclass/protocol differ).
        device(&sys, "2-4", (2, 6), "1d6b:0104", ("ff", "00", "00"), None);
        let rows = host_rows(&sys, &dev, &|_| NodeAccess::Ok);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].name, "host");
        assert!(!rows[0].usable);
        assert!(
            rows[0]
                .detail
                .contains("no gateway device attached; 3 USB devices seen on 2 buses"),
            "{}",
            rows[0].detail
        );
    }

    #[test]
    fn a_gateway_device_is_usable_or_says_whose_it_is_or_what_permission_to_get() {
        let t = tempfile::tempdir().unwrap();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        root_hubs(&sys, 1);
        device(&sys, "1-1", (1, 2), "1d6b:0104", GATEWAY, None);
        device(&sys, "1-2", (1, 3), "1d6b:0104", GATEWAY, Some("usbfs"));
        device(&sys, "1-3", (1, 4), "1d6b:0104", GATEWAY, Some("usbtest"));
        device(&sys, "1-4.2", (1, 7), "1d6b:0104", GATEWAY, None);
        device(&sys, "1-5", (1, 9), "1d6b:0104", GATEWAY, None);
        device(&sys, "1-6", (1, 10), "abcd:1234", GATEWAY, None);
        device(&sys, "1-7", (1, 11), "1d6b:0104", GATEWAY, None);
        let node = |n: u32| dev.join(format!("bus/usb/001/{n:03}"));
        let access = |p: &Path| {
            if p == node(7) {
                NodeAccess::Denied {
                    group: Some("root".into()),
                }
            } else if p == node(9) {
                NodeAccess::Denied {
                    group: Some("gateway".into()),
                }
            } else if p == node(10) {
                NodeAccess::Denied { group: None }
            } else if p == node(11) {
                NodeAccess::Missing
            } else {
                NodeAccess::Ok
            }
        };
        let rows = host_rows(&sys, &dev, &access);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "1-1 1d6b:0104",
                "1-2 1d6b:0104",
                "1-3 1d6b:0104",
                "1-4.2 1d6b:0104",
                "1-5 1d6b:0104",
                "1-6 abcd:1234",
                "1-7 1d6b:0104"
            ]
        );
        assert!(names.iter().all(|n| n.len() <= 24));
        let [free, claimed, kernel, no_rule, no_group, other_ids, gone] = &rows[..] else {
            panic!("{rows:?}")
        };
        assert!(free.usable, "{free:?}");
        assert!(
            free.detail.contains("usb:1d6b:0104/pi4") && free.detail.contains("'gateway link'"),
            "{}",
            free.detail
        );
        assert!(
            !claimed.usable
                && claimed.detail.contains("a process holds")
                && claimed.detail.contains("1-2:1.0"),
            "{}",
            claimed.detail
        );
        assert!(
            !kernel.usable
                && kernel.detail.contains("kernel driver usbtest")
                && kernel
                    .detail
                    .contains("/sys/bus/usb/drivers/usbtest/unbind"),
            "{}",
            kernel.detail
        );
        assert!(!no_rule.usable);
        assert!(
            no_rule.detail.contains(&node(7).display().to_string())
                && no_rule.detail.contains("udev/60-gateway.rules")
                && no_rule.detail.contains("`gateway` group")
                && no_rule.detail.contains("root")
                && !no_rule.detail.contains("add a line"),
            "{}",
            no_rule.detail
        );
        assert!(
            !no_group.usable
                && no_group.detail.contains("usermod -aG gateway")
                && !no_group.detail.contains("install"),
            "{}",
            no_group.detail
        );
        assert!(
            !other_ids.usable && other_ids.detail.contains("add a line for abcd:1234"),
            "{}",
            other_ids.detail
        );
        assert!(
            !gone.usable && gone.detail.contains("no device node"),
            "{}",
            gone.detail
        );
    }

    #[test]
    fn the_real_access_check_tells_a_missing_node_from_an_open_one() {
        let t = tempfile::tempdir().unwrap();
        let node = t.path().join("002");
        assert_eq!(node_access(&node), NodeAccess::Missing);
        fs::write(&node, b"").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&node, fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(node_access(&node), NodeAccess::Ok);
    }

    #[test]
    fn a_serial_a_selector_cannot_carry_is_left_out() {
        let mut d = HostDevice {
            sysname: "1-1".into(),
            vid: 0x1d6b,
            pid: 0x0104,
            serial: Some("my box?".into()),
            product: None,
            node: "/dev/bus/usb/001/002".into(),
            interface: "1-1:1.0".into(),
            driver: None,
        };
        assert_eq!(d.selector(), "usb:1d6b:0104");
        d.serial = Some("rpi-zero_2.w".into());
        assert_eq!(d.selector(), "usb:1d6b:0104/rpi-zero_2.w");
        d.serial = None;
        assert_eq!(d.selector(), "usb:1d6b:0104");
    }

    fn udc(sys: &Path, name: &str, state: &str, function: &str) {
        let d = sys.join("class/udc").join(name);
        write(&d.join("state"), state);
        write(&d.join("function"), function);
    }

    fn configfs_gadget(sys: &Path, name: &str, udc: &str, functions: &[&str]) {
        let d = sys.join("kernel/config/usb_gadget").join(name);
        write(&d.join("UDC"), udc);
        for f in functions {
            fs::create_dir_all(d.join("functions").join(f)).unwrap();
        }
    }

    #[test]
    fn no_udc_means_this_machine_cannot_be_the_gadget_end() {
        let t = tempfile::tempdir().unwrap();
        let rows = gadget_rows(t.path(), &ROOT, "", &|_| true);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "gadget");
        let d = &rows[0].detail;
        assert!(!rows[0].usable);
        assert!(
            d.contains("no USB device controller")
                && d.contains("dwc2")
                && d.contains("modprobe dummy_hcd"),
            "{d}"
        );
        // An empty /sys/class/udc is the same.
        fs::create_dir_all(t.path().join("class/udc")).unwrap();
        assert!(
            gadget_rows(t.path(), &ROOT, "", &|_| true)[0]
                .detail
                .contains("no USB device controller")
        );
    }

    #[test]
    fn without_configfs_gadgets_a_udc_names_the_modules_to_load() {
        let t = tempfile::tempdir().unwrap();
        udc(t.path(), "fe980000.usb", "not attached", "");
        let rows = gadget_rows(t.path(), &ROOT, "", &|_| true);
        assert_eq!(rows[0].name, "gadget:fe980000.usb");
        assert!(
            !rows[0].usable
                && rows[0].detail.contains("modprobe libcomposite usb_f_fs")
                && rows[0].detail.contains("usb:gadget:fe980000.usb"),
            "{}",
            rows[0].detail
        );
    }

    #[test]
    fn a_udc_is_free_and_usable_as_root_or_says_who_holds_it() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        udc(sys, "dummy_udc.0", "configured", "g1");
        udc(sys, "dummy_udc.1", "not attached", "");
        udc(sys, "dummy_udc.2", "configured", "gateway");
        udc(sys, "dummy_udc.3", "configured", "g_serial");
        configfs_gadget(sys, "g1", "dummy_udc.0", &["acm.usb0", "ffs.adb"]);
        configfs_gadget(sys, "gateway", "dummy_udc.2", &["ffs.gateway"]);
        configfs_gadget(sys, "idle", "", &["ecm.usb0"]);
        let rows = gadget_rows(sys, &ROOT, "", &|_| true);
        let [g1, free, ours, legacy] = &rows[..] else {
            panic!("{rows:?}")
        };
        assert!(rows.iter().all(|r| r.name.len() <= 24), "{rows:?}");
        assert!(
            !g1.usable
                && g1.detail.contains("gadget 'g1' (acm.usb0, ffs.adb)")
                && g1.detail.contains("usb_gadget/g1/UDC"),
            "{}",
            g1.detail
        );
        assert!(
            free.usable
                && free.detail.contains("not attached")
                && free.detail.contains("usb:gadget:dummy_udc.1"),
            "{}",
            free.detail
        );
        assert!(
            !ours.usable
                && ours.detail.contains("running gateway")
                && ours.detail.contains("usb:gadget:dummy_udc.2"),
            "{}",
            ours.detail
        );
        assert!(
            !legacy.usable && legacy.detail.contains("modprobe -r g_serial"),
            "{}",
            legacy.detail
        );
        // Not root: the free UDC says so, with the command to run.
        let free = &gadget_rows(sys, &USER, "", &|_| true)[1];
        assert!(
            !free.usable
                && free.detail.contains("needs root")
                && free
                    .detail
                    .contains("sudo gateway serve --listen usb:gadget:dummy_udc.1"),
            "{}",
            free.detail
        );
    }

    #[test]
    fn a_prepared_gadget_is_served_without_root_by_its_owner() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        udc(sys, "fe980000.usb", "not attached", "");
        configfs_gadget(sys, "gateway", "", &["ffs.gateway", "acm.usb0"]);
        let ffs = t.path().join("usb-ffs/gateway");
        let mounts = format!(
            "sysfs /sys sysfs rw 0 0\ngateway {} functionfs rw,relatime,uid=998,gid=998 0 0\n",
            ffs.display()
        );
        let sel = format!("usb:gadget:fe980000.usb?ffs={}", ffs.display());
        // Its owner: usable, with the ?ffs= selector.
        let rows = gadget_rows(sys, &USER, &mounts, &|_| true);
        assert!(
            rows[0].usable && rows[0].detail.contains(&sel),
            "{}",
            rows[0].detail
        );
        // Root too should use it, not build a gadget of its own (which would
        // remove the prepared one as stale).
        let rows = gadget_rows(sys, &ROOT, &mounts, &|_| true);
        assert!(rows[0].usable && rows[0].detail.contains(&sel));
        // Someone else: not usable, and how to hand it over.
        let ep0 = ffs.join("ep0");
        let rows = gadget_rows(sys, &USER, &mounts, &|p| p != ep0.as_path());
        assert!(
            !rows[0].usable && rows[0].detail.contains("usb-gadget setup --user"),
            "{}",
            rows[0].detail
        );
        // Not mounted (a gadget a killed process left): not prepared; a user
        // is told about root and about setup.
        let rows = gadget_rows(sys, &USER, "", &|_| true);
        assert!(
            !rows[0].usable
                && rows[0].detail.contains("needs root")
                && rows[0].detail.contains("usb-gadget setup"),
            "{}",
            rows[0].detail
        );
    }

    #[test]
    fn identity_comes_from_proc_status() {
        let status = "Name:\tgateway\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\nCapEff:\t000001ffffffffff\n";
        let who = Who::from_status(status);
        assert_eq!(who, ROOT);
        assert!(who.can_build_gadget());
        let user = Who::from_status("Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n");
        assert_eq!(user, USER);
        assert!(!user.can_build_gadget());
        // Root with its capabilities dropped (a sandboxed unit) cannot either.
        let boxed = Who::from_status("Uid:\t0\t0\t0\t0\nCapEff:\t0000000000000000\n");
        assert!(!boxed.can_build_gadget());
        // CAP_SYS_ADMIN + CAP_DAC_OVERRIDE without uid 0 can.
        let caps = Who::from_status("Uid:\t998\t998\t998\t998\nCapEff:\t0000000000200002\n");
        assert!(caps.can_build_gadget());
    }
}
