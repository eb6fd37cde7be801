//! File names and directory trees from a peer: `validate_name`,
//! `path_components`, `check_link_target`, `validate_tree`, and the node's
//! joining of what they accept to its target directory.
//!
//! Input: `[mode]`, then
//! - mode 0: a name (bytes, lossy UTF-8);
//! - mode 1: a link path and a target, split at the first 0xFF byte;
//! - mode 2: `[size: u8]` then tree records (see `gateway_fuzz::tree_from`):
//!   `[kind][size][path: u8 len + bytes][target: u8 len + bytes]`...; the
//!   transfer's size is the files' sum plus the first byte (mod 2: 0 or 1
//!   byte off, so both the right and a wrong total are tried).
//!
//! Checks: an accepted name is exactly one normal path component and every
//! name the node derives from it (`.gateway-part`, the staging directory,
//! `name (1)`, the link temp name) is a file directly in the target
//! directory; an accepted path joins under the target directory as one
//! component per part; an accepted symlink, resolved lexically from where
//! it sits, stays in the tree; an accepted tree's symlinks, followed as the
//! kernel would (through the tree's other links), never reach above its root.
#![no_main]

use gateway_fuzz::names::{check_accepted_name, check_accepted_tree};
use gateway_fuzz::{Cursor, TARGET_DIR, stays_under, tree_from};
use gateway_proto::{EntryKind, check_link_target, path_components, validate_name, validate_tree};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    match c.u8() % 3 {
        0 => {
            let name = String::from_utf8_lossy(c.rest());
            if validate_name(&name).is_ok() {
                check_accepted_name(&name);
            }
        }
        1 => {
            let rest = c.rest();
            let (link, target) = match rest.iter().position(|&b| b == 0xff) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let link = String::from_utf8_lossy(link);
            let target = String::from_utf8_lossy(target);
            if let Ok(parts) = path_components(&link) {
                let dest = Path::new(TARGET_DIR);
                let joined = dest.join(&*link);
                assert!(stays_under(dest, &joined), "{link:?} joins outside");
                assert_eq!(
                    joined.components().count(),
                    dest.components().count() + parts.len()
                );
                parts.iter().for_each(|p| check_accepted_name(p));
                if check_link_target(&link, &target).is_ok() {
                    // Lexically, from the link's directory, the target stays
                    // at or below the tree's root.
                    let mut depth = parts.len() as i64 - 1;
                    for part in target.split('/') {
                        match part {
                            "" | "." => {}
                            ".." => depth -= 1,
                            _ => depth += 1,
                        }
                        assert!(depth >= 0, "{link:?} -> {target:?} accepted but climbs out");
                    }
                    assert!(!target.starts_with('/'), "absolute target accepted");
                }
            }
        }
        _ => {
            let off = u64::from(c.u8() % 2);
            let entries = tree_from(&mut c);
            let total: u64 = entries
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .map(|e| e.size)
                .sum();
            if validate_tree(&entries, total + off).is_ok() {
                assert_eq!(off, 0, "a tree accepted with a wrong total size");
                check_accepted_tree("tree", &entries);
            }
        }
    }
});
