use crate::error::ProtoError;

/// Longest file name accepted by [`validate_name`], in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// One path component: non-empty, <= 255 bytes, not "." or "..", no '/', no NUL,
/// no ASCII control characters.
///
/// Anything else is allowed (spaces, leading dots, any Unicode), so the name
/// can be joined to a target directory without escaping it.
pub fn validate_name(name: &str) -> Result<(), ProtoError> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("longer than 255 bytes")
    } else if name == "." || name == ".." {
        Some("is \".\" or \"..\"")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if name.bytes().any(|b| b.is_ascii_control()) {
        Some("contains an ASCII control character")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(ProtoError::BadName {
            name: shorten(name),
            why,
        }),
    }
}

/// Keeps error values small when the peer sent a huge string.
fn shorten(s: &str) -> String {
    const KEEP: usize = 300;
    if s.len() <= KEEP {
        return s.to_owned();
    }
    let mut end = KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
