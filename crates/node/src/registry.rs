//! The link drivers this build knows.

use std::sync::Arc;

use gateway_link::Registry;

/// Transports planned but not in this build, for `gateway links`.
pub const NOT_BUILT: &[(&str, &str)] = &[
    (
        "rfcomm",
        "Bluetooth RFCOMM via BlueZ — driver not in this build yet",
    ),
    (
        "l2cap",
        "Bluetooth L2CAP via BlueZ — driver not in this build yet",
    ),
    ("ble", "Bluetooth Low Energy — driver not in this build yet"),
];

/// A registry with every driver of this build (mock links are always there).
pub fn default_registry() -> Registry {
    let mut reg = Registry::new();
    reg.register(Arc::new(gateway_tcp::TcpDriver));
    reg.register(Arc::new(gateway_serial::SerialDriver::new()));
    reg.register(Arc::new(gateway_usb::UsbDriver::new()));
    reg
}
