//! `validate_name`: one safe path component.

use gateway_proto::{MAX_NAME_BYTES, ProtoError, validate_name};

fn why(name: &str) -> &'static str {
    match validate_name(name) {
        Err(ProtoError::BadName { why, .. }) => why,
        other => panic!("{name:?}: expected BadName, got {other:?}"),
    }
}

#[test]
fn rejects_name_with_slash() {
    assert_eq!(why("a/b"), "contains '/'");
}

#[test]
fn rejects_absolute_path() {
    assert_eq!(why("/etc/passwd"), "contains '/'");
}

#[test]
fn rejects_dot_and_dotdot() {
    assert!(why(".").contains('.'));
    assert!(why("..").contains(".."));
}

#[test]
fn rejects_empty_name() {
    assert_eq!(why(""), "empty");
}

#[test]
fn rejects_name_with_nul() {
    assert_eq!(why("a\0b"), "contains NUL");
}

#[test]
fn rejects_256_byte_name() {
    assert!(why(&"a".repeat(256)).contains("255"));
    assert!(why(&"é".repeat(128)).contains("255"), "256 bytes of UTF-8");
    validate_name(&"a".repeat(MAX_NAME_BYTES)).unwrap();
}

#[test]
fn rejects_control_characters() {
    for c in (1u8..0x20).chain([0x7f]) {
        let name = format!("a{}b", c as char);
        assert!(why(&name).contains("control"), "{c:#x}");
    }
}

#[test]
fn accepts_legal_odd_names() {
    for name in [
        "a",
        "with spaces .txt",
        " ",
        ".bashrc",
        "...",
        "a..b",
        "ünïcødé",
        "文件.txt",
        "emoji 🚀",
        "back\\slash",
        "colon:name",
        "\u{80}c1 control is not ASCII",
    ] {
        validate_name(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
}

#[test]
fn bad_name_error_keeps_the_name_short() {
    let huge = "x".repeat(100_000);
    let Err(ProtoError::BadName { name, .. }) = validate_name(&huge) else {
        panic!()
    };
    assert!(name.len() < 400);
}
