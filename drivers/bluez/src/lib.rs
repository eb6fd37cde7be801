//! gateway-bluez: Bluetooth link drivers over BlueZ. Work in progress.
#![warn(missing_docs)]
pub mod gatt;
