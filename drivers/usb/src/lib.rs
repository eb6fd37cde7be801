//! gateway-usb: the `usb:` link driver, for two Linux boxes joined by a USB
//! cable, one as host and one as device (gadget).
#![warn(missing_docs)]

/// USB vendor id of the gateway gadget: the Linux Foundation's.
pub const VENDOR_ID: u16 = 0x1d6b;
/// USB product id of the gateway gadget: "Multifunction Composite Gadget".
pub const PRODUCT_ID: u16 = 0x0104;
/// The gateway interface is vendor-specific ...
pub const INTERFACE_CLASS: u8 = 0xff;
/// ... with subclass 'G' ...
pub const INTERFACE_SUBCLASS: u8 = b'G';
/// ... and protocol 'W', so a host finds it among other functions (CDC-ACM).
pub const INTERFACE_PROTOCOL: u8 = b'W';
/// The interface's string descriptor.
pub const INTERFACE_NAME: &str = "gateway";
/// The configfs gadget `usb:gadget` creates: `/sys/kernel/config/usb_gadget/gateway`.
pub const GADGET_NAME: &str = "gateway";
/// Bytes per bulk transfer (URB on the host, AIO request on the gadget).
pub const TRANSFER_BYTES: usize = 256 * 1024;
/// Bulk transfers kept in flight per direction on each side.
pub const TRANSFERS_IN_FLIGHT: usize = 8;
