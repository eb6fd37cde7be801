//! The link drivers this build knows.

use std::sync::Arc;

use gateway_link::Registry;

/// Transports not in this build, and why, for `gateway links`.
#[cfg(feature = "bluetooth")]
pub const NOT_BUILT: &[(&str, &str)] =
    &[("ble", "Bluetooth Low Energy — driver not in this build yet")];
/// Transports not in this build, and why, for `gateway links`.
#[cfg(not(feature = "bluetooth"))]
pub const NOT_BUILT: &[(&str, &str)] = &[
    (
        "rfcomm",
        "Bluetooth RFCOMM — built without the `bluetooth` feature (rebuild with default features)",
    ),
    (
        "l2cap",
        "Bluetooth L2CAP — built without the `bluetooth` feature (rebuild with default features)",
    ),
    (
        "ble",
        "Bluetooth Low Energy — built without the `bluetooth` feature (rebuild with default features)",
    ),
];

/// A registry with every driver of this build (mock links are always there).
pub fn default_registry() -> Registry {
    let mut reg = Registry::new();
    reg.register(Arc::new(gateway_tcp::TcpDriver));
    reg.register(Arc::new(gateway_serial::SerialDriver::new()));
    reg.register(Arc::new(gateway_usb::UsbDriver::new()));
    #[cfg(feature = "bluetooth")]
    {
        reg.register(Arc::new(gateway_bluez::RfcommDriver));
        reg.register(Arc::new(gateway_bluez::L2capDriver));
    }
    reg
}
