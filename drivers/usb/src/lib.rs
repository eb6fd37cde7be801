//! gateway-usb: the `usb:` link driver (skeleton; see below).
#![warn(missing_docs)]
