//! `gateway links` for BLE: every adapter BlueZ knows, whether it can carry a
//! link now, and if not, why and what to do.

use gateway_bluez::gatt::open_error;
use gateway_link::Adapter;

/// rfkill state of `hciN`: Some("soft"/"hard") when blocked.
fn rfkill_block(name: &str) -> Option<&'static str> {
    let dir = std::fs::read_dir("/sys/class/rfkill").ok()?;
    for e in dir.flatten() {
        let p = e.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        if read("type").trim() != "bluetooth" || read("name").trim() != name {
            continue;
        }
        if read("hard").trim() == "1" {
            return Some("hard");
        }
        if read("soft").trim() == "1" {
            return Some("soft");
        }
    }
    None
}

fn unusable(name: &str, detail: String) -> Adapter {
    Adapter {
        scheme: "ble".into(),
        name: name.into(),
        usable: false,
        detail,
    }
}

pub(crate) async fn probe() -> Vec<Adapter> {
    let session = match bluer::Session::new().await {
        Ok(s) => s,
        Err(e) => {
            return vec![unusable(
                "ble",
                open_error(&e, "connecting to BlueZ").to_string(),
            )];
        }
    };
    let names = match session.adapter_names().await {
        Ok(n) => n,
        Err(e) => {
            return vec![unusable(
                "ble",
                open_error(&e, "listing Bluetooth adapters").to_string(),
            )];
        }
    };
    if names.is_empty() {
        return vec![unusable(
            "ble",
            "no Bluetooth adapter; plug one in, or check `rfkill list` and dmesg (a missing firmware shows there)".into(),
        )];
    }
    let mut out = Vec::new();
    for n in names {
        let Ok(a) = session.adapter(&n) else { continue };
        let addr = a
            .address()
            .await
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "address unknown".into());
        let powered = a.is_powered().await.unwrap_or(false);
        out.push(match (rfkill_block(&n), powered) {
            (Some("hard"), _) => unusable(
                &n,
                format!("{addr}: blocked by a hardware switch (rfkill); flip the radio switch or key"),
            ),
            (Some(_), _) => unusable(
                &n,
                format!("{addr}: blocked by rfkill; `rfkill unblock bluetooth`, then `bluetoothctl power on`"),
            ),
            (None, false) => unusable(
                &n,
                format!("{addr}: powered off; `bluetoothctl power on` (select it first with `bluetoothctl select {addr}`)"),
            ),
            (None, true) => Adapter {
                scheme: "ble".into(),
                name: n.clone(),
                usable: true,
                detail: format!("{addr}: powered; open ble:PEER_ADDRESS, listen ble:{addr}"),
            },
        });
    }
    out
}
