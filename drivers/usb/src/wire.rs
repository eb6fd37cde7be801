//! What travels on the bulk pipes: u32 big-endian length-prefixed frames, as
//! over TCP, after a session handshake that makes a stale byte from an
//! earlier session impossible to mistake for a frame.
//!
//! A session starts with the host's vendor control request [`REQ_OPEN`] on
//! the gateway interface. The gadget drops everything of the session before
//! (queued transfers on both endpoints), answers with a fresh 8-byte session
//! id, and sends a HELLO frame carrying it; the host checks that HELLO (so
//! nothing stale came before it) and answers with its own. The length
//! [`CLOSE`] (never a frame's: frames are at most `MAX_FRAME`) closes a
//! direction cleanly, so an empty frame is an empty frame.

use gateway_link::LinkError;
pub(crate) use gateway_link::framer::{CLOSE, HEADER_LEN, Item, KEEPALIVE, Reassembler, header};

/// Vendor control request (IN, recipient interface) that starts a session.
pub(crate) const REQ_OPEN: u8 = 0x47;
/// Bytes of the answer to [`REQ_OPEN`]: the session id.
pub(crate) const OPEN_REPLY_LEN: u16 = 8;
const HELLO_MAGIC: &[u8; 8] = b"GWUSB\x00\x02\x00";
/// How often each end sends a keepalive.
pub(crate) const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// A receiver waiting this long with not one byte arriving (not even a
/// keepalive) declares the peer gone.
pub(crate) const SILENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// The HELLO frame of session `id`, as sent by either side.
pub(crate) fn hello(id: u64) -> Vec<u8> {
    let mut v = HELLO_MAGIC.to_vec();
    v.extend_from_slice(&id.to_be_bytes());
    v
}

/// Checks that `frame` is the HELLO of session `id`.
pub(crate) fn check_hello(frame: &[u8], id: u64) -> Result<(), LinkError> {
    if frame.len() == 16 && &frame[..8] == HELLO_MAGIC {
        let got = u64::from_be_bytes(frame[8..16].try_into().expect("8 bytes"));
        if got == id {
            return Ok(());
        }
        return Err(LinkError::Corrupt(format!(
            "USB session hello for session {got:016x}, expected {id:016x} (a stale session's data)"
        )));
    }
    Err(LinkError::Corrupt(format!(
        "the first USB frame of a session is not a gateway hello ({} bytes); is the other end a gateway node?",
        frame.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_of_another_session_or_of_another_protocol_is_refused() {
        assert!(check_hello(&hello(5), 5).is_ok());
        assert!(
            matches!(check_hello(&hello(6), 5), Err(LinkError::Corrupt(m)) if m.contains("stale"))
        );
        assert!(matches!(
            check_hello(b"hello world 1234", 5),
            Err(LinkError::Corrupt(_))
        ));
        assert!(check_hello(&hello(5)[..15], 5).is_err());
    }
}
