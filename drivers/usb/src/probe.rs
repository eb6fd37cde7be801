//! `gateway links`: the USB devices with a gateway interface (host end) and
//! the USB device controllers (gadget end) here, usable or not, and why.

use std::path::Path;

use gateway_link::Adapter;

use crate::host;

/// Lists host-end devices and gadget-end UDCs.
pub(crate) async fn probe() -> Vec<Adapter> {
    let mut out = match host::matching(&host::HostFilter::default()).await {
        Ok(found) => {
            let seen = std::fs::read_dir("/sys/bus/usb/devices")
                .map(|d| {
                    d.flatten()
                        .filter(|e| !e.file_name().to_string_lossy().contains(':'))
                        .count()
                })
                .unwrap_or(0);
            host_rows(
                found
                    .iter()
                    .map(|(d, i)| HostDevice {
                        name: host::describe(d),
                        selector: format!("usb:{:04x}:{:04x}", d.vendor_id(), d.product_id()),
                        node: host::node(d),
                        writable: writable(Path::new(&host::node(d))),
                        driver: host::interface_driver(d, *i),
                    })
                    .collect(),
                seen,
            )
        }
        Err(_) if !Path::new("/sys/bus/usb").exists() => vec![row(
            "host",
            false,
            "no USB host controller here (/sys/bus/usb is absent): this machine cannot be the host end of a cable".into(),
        )],
        Err(e) => vec![row("host", false, e.to_string())],
    };
    out.extend(gadget_rows(
        Path::new("/sys/class/udc"),
        Path::new("/sys/kernel/config/usb_gadget"),
        nix_root(),
    ));
    out
}

fn row(name: &str, usable: bool, detail: String) -> Adapter {
    Adapter {
        scheme: "usb".into(),
        name: name.into(),
        usable,
        detail,
    }
}

fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Whether this process may open `node` for writing (usbfs needs it).
fn writable(node: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .is_ok()
}

/// One attached device with the gateway interface.
#[derive(Debug)]
struct HostDevice {
    name: String,
    selector: String,
    node: String,
    writable: bool,
    driver: Option<String>,
}

fn host_rows(found: Vec<HostDevice>, seen: usize) -> Vec<Adapter> {
    if found.is_empty() {
        return vec![row(
            "host",
            false,
            format!(
                "no gateway device attached ({seen} USB devices seen); plug in a board running `gateway serve --listen usb:gadget`"
            ),
        )];
    }
    found
        .into_iter()
        .map(|d| match (&d.driver, d.writable) {
            (Some(drv), _) => row(
                &d.name,
                false,
                format!(
                    "busy: its gateway interface is held by {} ({})",
                    if drv == "usbfs" {
                        "a process (another gateway?)".to_string()
                    } else {
                        format!("kernel driver {drv}")
                    },
                    d.selector
                ),
            ),
            (None, false) => row(
                &d.name,
                false,
                format!("no write access to {}: {}", d.node, host::permission_fix()),
            ),
            (None, true) => row(
                &d.name,
                true,
                format!("gateway device; open with {}", d.selector),
            ),
        })
        .collect()
}

/// The UDCs under `udc_dir` (`/sys/class/udc`), as gadget-end rows.
fn gadget_rows(udc_dir: &Path, configfs: &Path, root: bool) -> Vec<Adapter> {
    let mut udcs: Vec<String> = std::fs::read_dir(udc_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    udcs.sort();
    if udcs.is_empty() {
        return vec![row(
            "gadget",
            false,
            "no USB device controller (UDC) here, so this machine cannot be the device end of a cable: boards with an OTG or device port have one (dwc2 on a Raspberry Pi: dtoverlay=dwc2); `modprobe dummy_hcd` makes a virtual one for tests; use usb: from the host end".into(),
        )];
    }
    let read = |udc: &str, attr: &str| {
        std::fs::read_to_string(udc_dir.join(udc).join(attr))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    udcs.iter()
        .map(|udc| {
            let state = read(udc, "state");
            let bound = read(udc, "function");
            let sel = format!("usb:gadget:{udc}");
            let (usable, detail) = if !bound.is_empty() && bound != crate::GADGET_NAME {
                (false, format!("busy: gadget '{bound}' is bound to it"))
            } else if !configfs.is_dir() {
                (false, "configfs gadgets unavailable: `modprobe libcomposite usb_f_fs` (and mount configfs on /sys/kernel/config)".into())
            } else if !root {
                (false, format!("needs root to build a gadget (configfs, FunctionFS); run `sudo gateway serve --listen {sel}`"))
            } else if bound == crate::GADGET_NAME {
                (true, format!("the gateway gadget is bound ({state}); {sel}"))
            } else {
                (true, format!("free ({state}); listen or open {sel}"))
            };
            row(udc, usable, detail)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(writable: bool, driver: Option<&str>) -> HostDevice {
        HostDevice {
            name: "1-1 1d6b:0104 pi".into(),
            selector: "usb:1d6b:0104".into(),
            node: "/dev/bus/usb/001/002".into(),
            writable,
            driver: driver.map(String::from),
        }
    }

    #[test]
    fn a_host_row_says_usable_or_names_the_permission_fix_or_the_holder() {
        let rows = host_rows(
            vec![
                dev(true, None),
                dev(false, None),
                dev(true, Some("usbfs")),
                dev(true, Some("usbtest")),
            ],
            4,
        );
        assert!(rows[0].usable && rows[0].detail.contains("usb:1d6b:0104"));
        assert!(
            !rows[1].usable
                && rows[1].detail.contains("60-gateway.rules")
                && rows[1].detail.contains("/dev/bus/usb/001/002")
        );
        assert!(!rows[2].usable && rows[2].detail.contains("process"));
        assert!(!rows[3].usable && rows[3].detail.contains("usbtest"));
        let none = host_rows(vec![], 3);
        assert!(!none[0].usable && none[0].detail.contains("3 USB devices"));
    }

    #[test]
    fn gadget_rows_say_why_a_udc_cannot_be_used() {
        let t = tempfile::tempdir().unwrap();
        let udc = t.path().join("udc");
        let cfs = t.path().join("usb_gadget");
        // No controller at all.
        let rows = gadget_rows(&udc, &cfs, true);
        assert!(!rows[0].usable && rows[0].detail.contains("no USB device controller"));
        for (name, function) in [("a.udc", ""), ("b.udc", "g1"), ("c.udc", "gateway")] {
            std::fs::create_dir_all(udc.join(name)).unwrap();
            std::fs::write(udc.join(name).join("state"), "configured\n").unwrap();
            std::fs::write(udc.join(name).join("function"), format!("{function}\n")).unwrap();
        }
        // No configfs: the modprobe hint; bound to someone else: busy.
        let rows = gadget_rows(&udc, &cfs, true);
        assert!(!rows[0].usable && rows[0].detail.contains("modprobe libcomposite"));
        assert!(!rows[1].usable && rows[1].detail.contains("'g1'"));
        std::fs::create_dir_all(&cfs).unwrap();
        let rows = gadget_rows(&udc, &cfs, false);
        assert!(!rows[0].usable && rows[0].detail.contains("root"));
        let rows = gadget_rows(&udc, &cfs, true);
        assert!(rows[0].usable && rows[0].detail.contains("usb:gadget:a.udc"));
        assert!(rows[2].usable && rows[2].detail.contains("gateway gadget is bound"));
    }
}
