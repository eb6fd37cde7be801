//! gateway-secure: the node key, Noise XX over any link, pairing and trust.
//!
//! (Being built for issue 4; not yet used by the node.)
#![warn(missing_docs)]
