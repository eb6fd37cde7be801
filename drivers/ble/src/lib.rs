//! gateway-ble: the `ble:` link driver. A BLE central (btleplug) opens
//! `ble:ADDR`; `listen ble:` serves the gateway GATT service as a peripheral
//! (gateway-bluez's bluer GATT application). Work in progress.
#![warn(missing_docs)]
