//! BLE GATT for the `ble:` link driver: the gateway GATT service as a
//! peripheral ([`listen`]), the packet format both ends speak ([`wire`]) and
//! the fragmenting, flow-controlled link over it ([`spawn_link`]), which
//! gateway-ble's central (btleplug) uses too.
//!
//! The service has two characteristics: [`WRITE_CHARACTERISTIC_UUID`]
//! (write without response, central → peripheral) and
//! [`NOTIFY_CHARACTERISTIC_UUID`] (notify, peripheral → central).

mod link;
mod peripheral;
pub mod wire;

#[cfg(test)]
mod tests;

pub use link::{DEFAULT_MAX_FRAME, GattConfig, PacketSink, Wiring, incoming_queue, spawn_link};
pub use peripheral::listen;

use gateway_link::OpenError;

/// The gateway GATT service (a random 128-bit UUID, fixed).
pub const SERVICE_UUID: u128 = 0x6a1f_0c3e_2b5d_4e77_9c0a_8f3e_1d2c_4b00;
/// Characteristic the central writes (without response) to the peripheral.
pub const WRITE_CHARACTERISTIC_UUID: u128 = 0x6a1f_0c3e_2b5d_4e77_9c0a_8f3e_1d2c_4b01;
/// Characteristic the peripheral notifies the central on.
pub const NOTIFY_CHARACTERISTIC_UUID: u128 = 0x6a1f_0c3e_2b5d_4e77_9c0a_8f3e_1d2c_4b02;

/// Turns a BlueZ error met while `what` into an open error that says what to do.
pub fn open_error(e: &bluer::Error, what: &str) -> OpenError {
    use bluer::ErrorKind as K;
    let text = format!("{e} ({:?})", e.kind);
    match &e.kind {
        K::Internal(bluer::InternalErrorKind::DBus(name))
            if name.contains("ServiceUnknown") || name.contains("NameHasNoOwner") =>
        {
            OpenError::Unsupported(format!(
                "{what}: bluetoothd is not running (no org.bluez on the D-Bus system bus); start it with `systemctl start bluetooth`"
            ))
        }
        K::Internal(bluer::InternalErrorKind::DBus(name))
            if name.contains("FileNotFound")
                || name.contains("NoServer")
                || e.message.contains("system_bus_socket") =>
        {
            OpenError::Unsupported(format!(
                "{what}: no D-Bus system bus ({}); start dbus (`systemctl start dbus`), then bluetoothd",
                e.message
            ))
        }
        K::NotReady => OpenError::AdapterOff(format!(
            "{what}: the adapter is not ready (powered off?); `bluetoothctl power on`, or `rfkill unblock bluetooth` if it is blocked"
        )),
        K::NotPermitted | K::NotAuthorized => OpenError::PermissionDenied {
            what: what.to_string(),
            fix: format!(
                "BlueZ refused ({text}); run as a user D-Bus policy lets talk to org.bluez (root or group bluetooth)"
            ),
        },
        K::DoesNotExist | K::NotFound => OpenError::NotFound(format!("{what}: {text}")),
        K::InProgress | K::AlreadyExists | K::AlreadyConnected => OpenError::Busy(format!(
            "{what}: {text}; stop the other user of the adapter"
        )),
        K::NotSupported | K::NotAvailable => OpenError::Unsupported(format!(
            "{what}: {text}; this adapter or bluetoothd lacks the feature (BLE, advertising, GATT server)"
        )),
        _ => OpenError::Io(std::io::Error::other(format!("{what}: {text}"))),
    }
}

/// The names of the local adapters BlueZ knows, or why there are none.
pub async fn adapter_names(session: &bluer::Session) -> Result<Vec<String>, OpenError> {
    let names = session
        .adapter_names()
        .await
        .map_err(|e| open_error(&e, "listing Bluetooth adapters"))?;
    if names.is_empty() {
        return Err(OpenError::NotFound(
            "this machine has no Bluetooth adapter; plug one in, or check `rfkill list` and dmesg"
                .into(),
        ));
    }
    Ok(names)
}
