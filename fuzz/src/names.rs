//! What an accepted name or tree must satisfy: the node joins names and
//! tree paths to its target directory with `Path::join` (`dirtree.rs`:
//! `root.join(&e.path)`, `dest.join(&e.path)`; `file_stream.rs`:
//! `dir.join(name)`, `NAME.<id>.gateway-part`, `.NAME.<id>.gateway-part`),
//! so each check here runs exactly that join.

use std::collections::HashMap;
use std::path::{Component, Path};

use gateway_proto::{Entry, EntryKind, MAX_NAME_BYTES, path_components};

use crate::{TARGET_DIR, stays_under};

/// A name `validate_name` accepted is one normal path component, and every
/// path the node makes from it stays directly in the target directory.
pub fn check_accepted_name(name: &str) {
    assert!(
        !name.is_empty() && name.len() <= MAX_NAME_BYTES,
        "accepted a name of {} bytes",
        name.len()
    );
    let comps: Vec<Component<'_>> = Path::new(name).components().collect();
    assert!(
        comps.len() == 1 && comps[0] == Component::Normal(name.as_ref()),
        "accepted {name:?}, which is not one path component: {comps:?}"
    );
    let dir = Path::new(TARGET_DIR);
    for made in [
        name.to_string(),
        format!("{name}.0a1b2c3d.gateway-part"),
        format!(".{name}.0a1b2c3d.gateway-part"),
        format!("{name} (1)"),
        format!(".{name}.gateway-link"),
    ] {
        let p = dir.join(&made);
        assert!(
            p.parent() == Some(dir) && stays_under(dir, &p),
            "{name:?} makes {}, not a file directly in {TARGET_DIR}",
            p.display()
        );
    }
}

/// Where a path lands when the kernel resolves it inside a landed tree.
#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    /// Somewhere below (or at) the tree's root.
    Inside,
    /// Above the tree's root: the escape `validate_tree` must prevent.
    Outside,
    /// The lookup fails (a missing directory, a file used as one, a loop).
    Fails,
}

/// Symlink targets are followed as the kernel does (each link through the
/// tree's own links, `..` from where resolution really is, not lexically).
struct Tree<'a> {
    kinds: HashMap<&'a str, (EntryKind, &'a str)>,
}

impl<'a> Tree<'a> {
    fn new(entries: &'a [Entry]) -> Self {
        Tree {
            kinds: entries
                .iter()
                .map(|e| (e.path.as_str(), (e.kind, e.target.as_str())))
                .collect(),
        }
    }

    /// Resolves `target` from directory `from` (components below the
    /// root), following the tree's symlinks; `hops` bounds the links
    /// followed (ELOOP).
    fn resolve(&self, from: &[String], target: &str, hops: &mut u32) -> (Resolved, Vec<String>) {
        let mut at: Vec<String> = from.to_vec();
        let parts: Vec<&str> = target.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            match *part {
                "" | "." => {}
                ".." => {
                    if at.pop().is_none() {
                        return (Resolved::Outside, at);
                    }
                }
                name => {
                    let mut next = at.clone();
                    next.push(name.to_string());
                    let key = next.join("/");
                    match self.kinds.get(key.as_str()) {
                        Some((EntryKind::Dir, _)) => at = next,
                        Some((EntryKind::Symlink, t)) => {
                            if *hops == 0 {
                                return (Resolved::Fails, at);
                            }
                            *hops -= 1;
                            let (r, there) = self.resolve(&at, t, hops);
                            if r != Resolved::Inside {
                                return (r, there);
                            }
                            at = there;
                        }
                        // A file or nothing: fine as the last part, a
                        // failed lookup before it.
                        _ if last => at = next,
                        _ => return (Resolved::Fails, at),
                    }
                }
            }
        }
        (Resolved::Inside, at)
    }
}

/// A tree `validate_tree` accepted: every path is relative and made of
/// accepted names, joins under the target directory, and every symlink,
/// followed as the kernel would (through the tree's other links), ends
/// inside the tree or fails to resolve; it never reaches above the root.
pub fn check_accepted_tree(root_name: &str, entries: &[Entry]) {
    let dest = Path::new(TARGET_DIR).join(root_name);
    for e in entries {
        let parts = path_components(&e.path)
            .unwrap_or_else(|err| panic!("accepted tree path {:?}: {err}", e.path));
        for p in &parts {
            check_accepted_name(p);
        }
        let joined = dest.join(&e.path);
        assert!(
            stays_under(&dest, &joined),
            "tree path {:?} joins to {}, outside {}",
            e.path,
            joined.display(),
            dest.display()
        );
        assert_eq!(
            joined.components().count(),
            dest.components().count() + parts.len(),
            "tree path {:?} does not join as {} components",
            e.path,
            parts.len()
        );
    }
    let tree = Tree::new(entries);
    for e in entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
        let mut from: Vec<String> = e.path.split('/').map(str::to_string).collect();
        from.pop();
        let mut hops = 40;
        let (r, _) = tree.resolve(&from, &e.target, &mut hops);
        assert!(
            r != Resolved::Outside,
            "accepted symlink {:?} -> {:?} resolves (through the tree's links) above the tree's root; tree: {:?}",
            e.path,
            e.target,
            entries
                .iter()
                .map(|e| (&e.path, e.kind, &e.target))
                .collect::<Vec<_>>()
        );
    }
}
