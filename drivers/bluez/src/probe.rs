//! `gateway links` for Bluetooth: which adapters there are, whether links can
//! be opened through them, and when not, why and what to do.
//!
//! Read without bluetoothd: the kernel's Bluetooth sockets (is there
//! `AF_BLUETOOTH`?), `/sys/class/bluetooth` (which adapters), rfkill (soft or
//! hard block) and the HCI `HCIGETDEVINFO` ioctl (address, up or down).
//! Whether bluetoothd answers on D-Bus is said too: RFCOMM and L2CAP work
//! without it, the SDP record and BLE need it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use gateway_link::Adapter;

/// What the kernel says of one adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HciInfo {
    /// BD address, "AA:BB:CC:DD:EE:FF".
    pub address: String,
    /// The adapter is up (powered).
    pub up: bool,
}

/// An rfkill block on an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// Blocked by software: `rfkill unblock bluetooth` lifts it.
    Soft,
    /// Blocked by a switch or the firmware.
    Hard,
}

/// Everything `gateway links` looks at, gathered (from the machine, or from
/// a fake tree in tests).
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Why the kernel has no Bluetooth sockets, if it has none.
    pub no_sockets: Option<String>,
    /// Adapters: name, rfkill block, kernel info (or why it could not be read).
    pub adapters: Vec<(String, Option<Block>, Result<HciInfo, String>)>,
    /// Why bluetoothd cannot be reached over D-Bus, if it cannot.
    pub no_bluetoothd: Option<String>,
}

/// Gathers the facts from this machine.
pub async fn facts() -> Facts {
    let no_sockets = match socket(libc::SOCK_RAW, BTPROTO_HCI) {
        Ok(_) => None,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => Some(format!(
            "this kernel has no Bluetooth sockets ({e}): load the modules (`modprobe bluetooth rfcomm`) or use a kernel built with CONFIG_BT"
        )),
        Err(e) => Some(format!("cannot open a Bluetooth socket: {e}")),
    };
    let names = adapter_names(Path::new("/sys/class/bluetooth"));
    let adapters = names
        .into_iter()
        .map(|name| {
            let block = rfkill_block(&Path::new("/sys/class/bluetooth").join(&name));
            let info = match name.strip_prefix("hci").and_then(|n| n.parse::<u16>().ok()) {
                Some(id) if no_sockets.is_none() => hci_info(id).map_err(|e| e.to_string()),
                Some(_) => Err("no Bluetooth sockets".into()),
                None => Err("not an hci adapter".into()),
            };
            (name, block, info)
        })
        .collect();
    let no_bluetoothd = bluetoothd_down().await;
    Facts {
        no_sockets,
        adapters,
        no_bluetoothd,
    }
}

/// The `gateway links` rows for `scheme` ("rfcomm" or "l2cap").
pub fn rows(scheme: &str, f: &Facts) -> Vec<Adapter> {
    let row = |name: &str, usable: bool, detail: String| Adapter {
        scheme: scheme.into(),
        name: name.into(),
        usable,
        detail,
    };
    if let Some(why) = &f.no_sockets {
        return vec![row("(kernel)", false, why.clone())];
    }
    if f.adapters.is_empty() {
        return vec![row(
            "(none)",
            false,
            "no Bluetooth adapter (/sys/class/bluetooth is empty): plug one in, or see `dmesg | grep -i bluetooth` for firmware errors".into(),
        )];
    }
    let daemon = match &f.no_bluetoothd {
        None => "bluetoothd: running".to_string(),
        Some(why) => format!(
            "bluetoothd: {why} (RFCOMM/L2CAP work without it; the SDP record and BLE need it)"
        ),
    };
    let (example, default) = match scheme {
        "rfcomm" => ("rfcomm", format!("/{}", crate::DEFAULT_RFCOMM_CHANNEL)),
        _ => ("l2cap", format!("/{:#x}", crate::DEFAULT_L2CAP_PSM)),
    };
    f.adapters
        .iter()
        .map(|(name, block, info)| {
            let index = name.strip_prefix("hci").unwrap_or(name);
            match (block, info) {
                (Some(Block::Hard), _) => row(
                    name,
                    false,
                    "blocked by rfkill (hard): a switch, key or the firmware turned the radio off; turn it on there".into(),
                ),
                (Some(Block::Soft), _) => row(
                    name,
                    false,
                    format!("blocked by rfkill (soft): run `rfkill unblock bluetooth`, then `btmgmt --index {index} power on`"),
                ),
                (None, Err(e)) => row(name, false, format!("cannot read the adapter's state: {e}")),
                (None, Ok(i)) if !i.up => row(
                    name,
                    false,
                    format!(
                        "{} is powered off: run `bluetoothctl power on` (or `btmgmt --index {index} power on` without bluetoothd); {daemon}",
                        i.address
                    ),
                ),
                (None, Ok(i)) => row(
                    name,
                    true,
                    format!(
                        "{addr} up; listen {example}:any{default}, peers open {example}:{addr}{default}; {daemon}",
                        addr = i.address
                    ),
                ),
            }
        })
        .collect()
}

/// Adapter names under `class` (sorted: hci0, hci1, ...).
pub fn adapter_names(class: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(class)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("hci") && !n.contains(':'))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|n| (n.len(), n.clone()));
    v
}

/// The rfkill block of the adapter at `dev` (its `rfkillN` child).
pub fn rfkill_block(dev: &Path) -> Option<Block> {
    let dirs: Vec<PathBuf> = fs::read_dir(dev)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rfkill"))
        .map(|e| e.path())
        .collect();
    let read = |d: &Path, f: &str| {
        fs::read_to_string(d.join(f))
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
    };
    for d in dirs {
        if read(&d, "hard") {
            return Some(Block::Hard);
        }
        if read(&d, "soft") {
            return Some(Block::Soft);
        }
    }
    None
}

const BTPROTO_HCI: libc::c_int = 1;
/// `_IOR('H', 211, int)`
const HCIGETDEVINFO: libc::c_ulong = 0x8004_48d3;
/// `struct hci_dev_info` is 92 bytes; room to spare.
const DEV_INFO_BYTES: usize = 128;

#[allow(unsafe_code)] // socket(2) for AF_BLUETOOTH, which std and nix do not open
fn socket(ty: libc::c_int, proto: libc::c_int) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain socket(2) call; the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_BLUETOOTH, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The address and up/down state of `hciN`, from the kernel.
#[allow(unsafe_code)] // the HCIGETDEVINFO ioctl
pub fn hci_info(id: u16) -> io::Result<HciInfo> {
    use std::os::fd::AsRawFd;
    let s = socket(libc::SOCK_RAW, BTPROTO_HCI)?;
    let mut buf = [0u8; DEV_INFO_BYTES];
    buf[..2].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: HCIGETDEVINFO writes a struct hci_dev_info (92 bytes) into a
    // buffer of 128 whose first field (dev_id) is set.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), HCIGETDEVINFO as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(parse_dev_info(&buf))
}

/// Reads `struct hci_dev_info`: bdaddr (little-endian) at 10, flags at 16.
pub fn parse_dev_info(buf: &[u8]) -> HciInfo {
    let a = &buf[10..16];
    let address = format!(
        "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
        a[5], a[4], a[3], a[2], a[1], a[0]
    );
    let flags = u32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
    HciInfo {
        address,
        up: flags & 1 != 0, // HCI_UP
    }
}

/// Why bluetoothd cannot be reached, or `None` when it answers.
async fn bluetoothd_down() -> Option<String> {
    let check = async {
        let s = bluer::Session::new()
            .await
            .map_err(|e| format!("no D-Bus system bus ({e})"))?;
        s.adapter_names().await.map_err(|e| {
            format!("not answering on D-Bus ({e}); start it with `systemctl start bluetooth`")
        })?;
        Ok::<(), String>(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(why),
        Err(_) => Some("no answer on D-Bus within 3 s".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(adapters: Vec<(String, Option<Block>, Result<HciInfo, String>)>) -> Facts {
        Facts {
            no_sockets: None,
            adapters,
            no_bluetoothd: Some("no D-Bus system bus".into()),
        }
    }

    fn up(addr: &str, up: bool) -> Result<HciInfo, String> {
        Ok(HciInfo {
            address: addr.into(),
            up,
        })
    }

    #[test]
    fn each_adapter_state_gets_its_reason_and_its_fix() {
        let f = facts(vec![
            ("hci0".into(), None, up("00:AA:01:00:00:23", true)),
            ("hci1".into(), None, up("00:AA:01:01:00:24", false)),
            ("hci2".into(), Some(Block::Soft), up("x", true)),
            ("hci3".into(), Some(Block::Hard), up("x", true)),
        ]);
        let r = rows("rfcomm", &f);
        assert!(r[0].usable);
        assert!(
            r[0].detail
                .contains("peers open rfcomm:00:AA:01:00:00:23/24"),
            "{}",
            r[0].detail
        );
        assert!(r[0].detail.contains("the SDP record and BLE need it"));
        assert!(!r[1].usable && r[1].detail.contains("btmgmt --index 1 power on"));
        assert!(!r[2].usable && r[2].detail.contains("rfkill unblock bluetooth"));
        assert!(!r[3].usable && r[3].detail.contains("hard"));
        let l = rows("l2cap", &f);
        assert!(
            l[0].detail.contains("l2cap:00:AA:01:00:00:23/0x1047"),
            "{}",
            l[0].detail
        );
    }

    #[test]
    fn no_kernel_support_and_no_adapter_are_told_apart() {
        let mut f = facts(vec![]);
        let r = rows("rfcomm", &f);
        assert_eq!(r.len(), 1);
        assert!(r[0].detail.contains("no Bluetooth adapter"));
        f.no_sockets = Some("this kernel has no Bluetooth sockets".into());
        assert!(rows("l2cap", &f)[0].detail.contains("no Bluetooth sockets"));
    }

    #[test]
    fn adapters_and_rfkill_are_read_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        for n in ["hci10", "hci2", "hci2:70", "rfkill0"] {
            fs::create_dir_all(d.path().join(n)).unwrap();
        }
        assert_eq!(adapter_names(d.path()), vec!["hci2", "hci10"]);
        let rf = d.path().join("hci2/rfkill3");
        fs::create_dir_all(&rf).unwrap();
        fs::write(rf.join("soft"), "1\n").unwrap();
        fs::write(rf.join("hard"), "0\n").unwrap();
        assert_eq!(rfkill_block(&d.path().join("hci2")), Some(Block::Soft));
        fs::write(rf.join("hard"), "1\n").unwrap();
        assert_eq!(rfkill_block(&d.path().join("hci2")), Some(Block::Hard));
        assert_eq!(rfkill_block(&d.path().join("hci10")), None);
    }

    #[test]
    fn dev_info_gives_the_address_msb_first_and_the_up_flag() {
        let mut b = [0u8; DEV_INFO_BYTES];
        b[10..16].copy_from_slice(&[0x23, 0x00, 0x00, 0x01, 0xAA, 0x00]);
        b[16..20].copy_from_slice(&5u32.to_ne_bytes());
        assert_eq!(
            parse_dev_info(&b),
            HciInfo {
                address: "00:AA:01:00:00:23".into(),
                up: true
            }
        );
    }
}
