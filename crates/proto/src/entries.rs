//! Directory trees on the wire: the entry list an Offer carries, and the
//! checks that make it safe to create under a target directory.
//!
//! A tree is sent as one transfer: its files, in list order, form one byte
//! stream that the chunks cut. The list is checked as a whole before any of
//! it touches a disk: every path is relative and made of valid names, no
//! path repeats, every parent directory comes before its children, the file
//! sizes add up to the transfer's size, and a symlink's target stays inside
//! the tree when resolved from where the link sits, the kernel's way: a
//! `..` steps out of a directory of the tree only, never out of another
//! link (whose `..` is taken from wherever that link leads).

use std::collections::{HashMap, HashSet};

use crate::error::ProtoError;
use crate::name::validate_name;
use crate::types::Hash;

/// Longest relative path or symlink target, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// What a tree entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file; its bytes are part of the transfer's stream.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, kept as a link.
    Symlink,
}

/// One entry of a directory tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative path, '/'-separated, below the tree's root.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Bytes (files; 0 otherwise).
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Where a symlink points (empty otherwise).
    pub target: String,
    /// BLAKE3 of a file's content, when the sender knows it.
    pub hash: Option<Hash>,
}

fn bad(path: &str, why: &'static str) -> ProtoError {
    ProtoError::BadName {
        name: path.chars().take(300).collect(),
        why,
    }
}

/// The components of a relative path, each a valid file name.
pub fn path_components(path: &str) -> Result<Vec<&str>, ProtoError> {
    if path.is_empty() {
        return Err(bad(path, "empty path"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(bad(path, "path longer than 4096 bytes"));
    }
    if path.starts_with('/') {
        return Err(bad(path, "absolute path"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts {
        validate_name(p)?;
    }
    Ok(parts)
}

/// Checks that `target`, the target of a symlink at `link`, is relative and
/// resolves (lexically, from the link's directory) to a place inside the
/// tree. A link whose target climbs out would let a later write escape the
/// target directory, so it is refused, not followed.
pub fn check_link_target(link: &str, target: &str) -> Result<(), ProtoError> {
    if target.is_empty() {
        return Err(bad(link, "symlink with an empty target"));
    }
    if target.len() > MAX_PATH_BYTES {
        return Err(bad(link, "symlink target longer than 4096 bytes"));
    }
    if target.contains('\0') {
        return Err(bad(link, "symlink target contains NUL"));
    }
    if target.starts_with('/') {
        return Err(bad(link, "symlink to an absolute path (outside the tree)"));
    }
    // Depth of the directory holding the link, below the root.
    let mut depth = link.split('/').count() - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| bad(link, "symlink pointing outside the tree"))?;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Checks a whole entry list against the transfer's `size` (see the module
/// docs for the rules).
pub fn validate_tree(entries: &[Entry], size: u64) -> Result<(), ProtoError> {
    let mut seen: HashSet<&str> = HashSet::with_capacity(entries.len());
    // Directory path -> its id (0 is the root), and (parent id, name) -> id,
    // so a symlink's target is walked one name at a time (linear in its length).
    let mut dirs: HashMap<&str, usize> = HashMap::new();
    let mut children: HashMap<(usize, &str), usize> = HashMap::new();
    let mut total: u64 = 0;
    for e in entries {
        let parts = path_components(&e.path)?;
        let mut parent_id = 0;
        if parts.len() > 1 {
            let parent = &e.path[..e.path.len() - parts[parts.len() - 1].len() - 1];
            parent_id = *dirs
                .get(parent)
                .ok_or_else(|| bad(&e.path, "its directory is not listed before it in the tree"))?;
        }
        if !seen.insert(&e.path) {
            return Err(bad(&e.path, "listed twice in the tree"));
        }
        match e.kind {
            EntryKind::File => {
                total = total.checked_add(e.size).ok_or_else(|| {
                    ProtoError::OutOfBounds("the tree's file sizes overflow".into())
                })?;
            }
            EntryKind::Dir | EntryKind::Symlink => {
                if e.size != 0 || e.hash.is_some() {
                    return Err(bad(&e.path, "a directory or symlink with a size or hash"));
                }
                if e.kind == EntryKind::Dir {
                    let id = dirs.len() + 1;
                    dirs.insert(&e.path, id);
                    children.insert((parent_id, parts[parts.len() - 1]), id);
                } else {
                    check_link_target(&e.path, &e.target)?;
                }
            }
        }
        if e.kind != EntryKind::Symlink && !e.target.is_empty() {
            return Err(bad(&e.path, "a target on something that is not a symlink"));
        }
    }
    if total != size {
        return Err(ProtoError::OutOfBounds(format!(
            "the tree's files add up to {total} bytes, the transfer says {size}"
        )));
    }
    // After the loop: a target may name directories listed after the link.
    for e in entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
        check_link_in_tree(&e.path, &e.target, &children)?;
    }
    Ok(())
}

/// Walks `target` from the directory of the symlink at `link` as the kernel
/// resolves it: a `..` may leave only a directory of the tree. Leaving
/// anything else (another symlink, a file, a name the tree does not have)
/// is refused: out of a symlink the kernel steps out of wherever that link
/// leads, so `x -> d/up/..` with `d/up -> ..` would reach above the root
/// although each link alone passes [`check_link_target`].
fn check_link_in_tree(
    link: &str,
    target: &str,
    children: &HashMap<(usize, &str), usize>,
) -> Result<(), ProtoError> {
    // Where resolution stands: the directory ids from the root down, `None`
    // below anything that is not a directory of the tree.
    let mut at: Vec<Option<usize>> = vec![Some(0)];
    let mut parents: Vec<&str> = link.split('/').collect();
    parents.pop();
    for name in parents {
        let here = at.last().copied().flatten();
        at.push(here.and_then(|id| children.get(&(id, name)).copied()));
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if at.len() == 1 {
                    return Err(bad(link, "symlink pointing outside the tree"));
                }
                if at.pop().flatten().is_none() {
                    return Err(bad(
                        link,
                        "symlink whose target steps back (..) out of something that is not a directory of the tree (another symlink, a file or a missing name)",
                    ));
                }
            }
            name => {
                let here = at.last().copied().flatten();
                at.push(here.and_then(|id| children.get(&(id, name)).copied()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: EntryKind, size: u64, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind,
            size,
            mode: 0o644,
            mtime_ns: 0,
            target: target.into(),
            hash: None,
        }
    }

    #[test]
    fn a_well_formed_tree_passes() {
        let t = vec![
            e("a", EntryKind::Dir, 0, ""),
            e("a/b c", EntryKind::File, 5, ""),
            e("a/ünï", EntryKind::Dir, 0, ""),
            e("a/ünï/x", EntryKind::Symlink, 0, "../b c"),
            e("top", EntryKind::File, 7, ""),
            e("up", EntryKind::Symlink, 0, "a/./ünï/../b c"),
        ];
        validate_tree(&t, 12).unwrap();
    }

    #[test]
    fn paths_that_climb_or_hide_are_refused() {
        for p in ["..", "a/../b", "/etc/passwd", "a//b", "a/.", "", "a/b\0c"] {
            assert!(path_components(p).is_err(), "{p:?} should be refused");
        }
        let t = vec![e("..", EntryKind::File, 1, "")];
        assert!(matches!(
            validate_tree(&t, 1),
            Err(ProtoError::BadName { .. })
        ));
    }

    #[test]
    fn symlinks_out_of_the_tree_are_refused() {
        for (link, target) in [
            ("l", ".."),
            ("l", "../x"),
            ("d/l", "../../x"),
            ("l", "/etc"),
            ("d/l", "a/../../.."),
            ("l", ""),
        ] {
            assert!(
                check_link_target(link, target).is_err(),
                "{link} -> {target:?} should be refused"
            );
        }
        check_link_target("d/l", "../x").unwrap();
        check_link_target("l", ".").unwrap();
    }

    #[test]
    fn symlinks_that_climb_out_through_another_link_are_refused() {
        // Each link alone stays inside lexically; followed by the kernel,
        // `x` reaches d/up (the root), then the root's parent.
        let chain = vec![
            e("d", EntryKind::Dir, 0, ""),
            e("d/up", EntryKind::Symlink, 0, ".."),
            e("x", EntryKind::Symlink, 0, "d/up/.."),
        ];
        let err = validate_tree(&chain, 0).unwrap_err();
        assert!(
            matches!(&err, ProtoError::BadName { name, .. } if name == "x"),
            "expected x refused, got {err:?}"
        );
        // Deeper: down through real directories after the link, then up past the root.
        let deep = vec![
            e("a", EntryKind::Dir, 0, ""),
            e("a/b", EntryKind::Dir, 0, ""),
            e("d", EntryKind::Dir, 0, ""),
            e("d/up", EntryKind::Symlink, 0, ".."),
            e("x", EntryKind::Symlink, 0, "d/up/a/b/../../../etc"),
        ];
        assert!(validate_tree(&deep, 0).is_err());
        // `..` out of a file or a name the tree lacks is refused too.
        for t in ["f/..", "nothing/../f"] {
            let tree = vec![
                e("f", EntryKind::File, 0, ""),
                e("l", EntryKind::Symlink, 0, t),
            ];
            assert!(
                validate_tree(&tree, 0).is_err(),
                "l -> {t} should be refused"
            );
        }
        // Through real directories, even ones listed after the link, it is fine.
        let ok = vec![
            e("l", EntryKind::Symlink, 0, "d/e/../f"),
            e("d", EntryKind::Dir, 0, ""),
            e("d/e", EntryKind::Dir, 0, ""),
            e("d/f", EntryKind::File, 0, ""),
            e("d/e/m", EntryKind::Symlink, 0, "../../d/up"),
            e("d/up", EntryKind::Symlink, 0, ".."),
        ];
        validate_tree(&ok, 0).unwrap();
    }

    #[test]
    fn orphans_duplicates_and_wrong_sizes_are_refused() {
        let orphan = vec![e("a/b", EntryKind::File, 1, "")];
        assert!(validate_tree(&orphan, 1).is_err(), "a/b without a");
        let file_as_dir = vec![
            e("a", EntryKind::File, 0, ""),
            e("a/b", EntryKind::File, 1, ""),
        ];
        assert!(validate_tree(&file_as_dir, 1).is_err(), "a is not a dir");
        let twice = vec![
            e("a", EntryKind::File, 1, ""),
            e("a", EntryKind::File, 1, ""),
        ];
        assert!(validate_tree(&twice, 2).is_err());
        let sizes = vec![e("a", EntryKind::File, 3, "")];
        assert!(validate_tree(&sizes, 4).is_err());
        let overflow = vec![
            e("a", EntryKind::File, u64::MAX, ""),
            e("b", EntryKind::File, 1, ""),
        ];
        assert!(validate_tree(&overflow, 0).is_err());
        let sized_dir = vec![e("d", EntryKind::Dir, 1, "")];
        assert!(validate_tree(&sized_dir, 0).is_err());
    }
}
