//! Error types of the link layer: typed here, turned into sentences by the CLI.

use std::io;

/// An error on an open link (send, receive, close, accept).
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum LinkError {
    /// The link was closed: the peer closed it cleanly, or this end already did.
    #[error("link closed")]
    Closed,
    /// A frame is larger than the link's `max_frame`. On a received frame the
    /// stream has lost its framing and the link is unusable; open a new one.
    #[error(
        "frame of {len} bytes exceeds this link's limit of {max} bytes; split the data into smaller frames"
    )]
    FrameTooLarge {
        /// Length of the frame that was refused.
        len: usize,
        /// The link's limit (`LinkCaps::max_frame`).
        max: usize,
    },
    /// The transport failed (reset, broken pipe, device gone, ...).
    #[error("link I/O error: {0}")]
    Io(#[from] io::Error),
    /// Nothing happened within the allowed time.
    #[error("link timed out")]
    Timeout,
    /// Received data failed an integrity check, or the stream lost its framing.
    #[error("corrupt data on link: {0}")]
    Corrupt(String),
}

/// An error while opening a link or starting a listener.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// The selector string could not be understood.
    #[error("bad selector: {0}")]
    BadSelector(#[from] SelectorError),
    /// No driver is registered for the selector's scheme.
    #[error("unknown link scheme '{scheme}'; known schemes: {}", known.join(", "))]
    UnknownScheme {
        /// The scheme that was asked for.
        scheme: String,
        /// Schemes the registry knows, sorted.
        known: Vec<String>,
    },
    /// The device, host or address does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The peer exists but refused the connection (nothing listens there).
    #[error("refused: {0}")]
    Refused(String),
    /// The OS denied access; `fix` says what to change (udev rule, group, ...).
    #[error("permission denied on {what}; {fix}")]
    PermissionDenied {
        /// What could not be opened, e.g. "/dev/ttyACM0".
        what: String,
        /// What a person can do about it.
        fix: String,
    },
    /// The device or address is in use by someone else.
    #[error("busy: {0}")]
    Busy(String),
    /// The adapter exists but is powered off or down.
    #[error("adapter off: {0}")]
    AdapterOff(String),
    /// This build or this machine cannot do what the selector asks.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Opening took longer than allowed (addition to the contract).
    #[error("timed out: {0}")]
    Timeout(String),
    /// Any other OS error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// A selector string that could not be parsed, or a parameter with a bad value.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectorError {
    /// The string has no ':' between scheme and address.
    #[error(
        "'{input}' has no scheme; write it as scheme:address, e.g. tcp:192.168.1.7:7878 or serial:/dev/ttyACM0"
    )]
    MissingScheme {
        /// The string as given.
        input: String,
    },
    /// The scheme part is empty or has characters other than a-z, 0-9, '+', '-', '.'.
    #[error(
        "'{input}' does not start with a scheme ('{scheme}' is not one); write it as scheme:address, e.g. tcp:192.168.1.7:7878, with a scheme of letters and digits like tcp, serial, usb, mock"
    )]
    BadScheme {
        /// The string as given.
        input: String,
        /// The scheme part.
        scheme: String,
    },
    /// The address part does not fit the driver (e.g. tcp without a port).
    #[error("'{input}' has a bad address; expected {expected}")]
    BadAddress {
        /// The selector as given.
        input: String,
        /// The form the driver accepts, with an example.
        expected: String,
    },
    /// A `?key=value` parameter is malformed (empty key, or given twice).
    #[error(
        "'{input}': bad parameter '{param}': {why}; write parameters as ?key=value&key2=value2"
    )]
    BadParamSyntax {
        /// The string as given.
        input: String,
        /// The offending parameter text.
        param: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A parameter's value could not be read as the expected type.
    #[error("parameter {key}={value} is not valid: expected {expected}")]
    BadParamValue {
        /// The parameter name.
        key: String,
        /// The value as given.
        value: String,
        /// What would have been accepted, e.g. "a byte rate like 10MB or 512KiB".
        expected: String,
    },
}
