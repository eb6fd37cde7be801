//! Directory trees: the entry list of a directory to send, the one byte
//! stream its files make (in list order), reading that stream on the sender,
//! and staging it on the receiver until it is verified and lands.
//!
//! A tree is one transfer, so everything a file transfer does — striping over
//! links, checkpoints, resume, the whole-stream BLAKE3 — a tree does too, and
//! many small files share chunks, acks and fsyncs instead of paying a round
//! trip each. The receiver stages the files under
//! `DIR/.NAME.<id>.gateway-part/` at their relative paths (created at their
//! final sizes when the Offer is accepted) and moves them into `DIR/NAME`
//! only after the verdict.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gateway_proto::{Entry, EntryKind};

use crate::NodeError;
use crate::file_stream::{rename_no_clobber, sync_dir};
use crate::tree::hash_file;

/// Positional reads of a file, or of a tree's byte stream.
pub trait ReadAt: Sync {
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// Where each file of a tree sits in its byte stream.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    entries: Vec<Entry>,
    /// (stream offset, entry index) of every non-empty file, by offset.
    files: Vec<(u64, usize)>,
    size: u64,
}

impl Layout {
    pub(crate) fn new(entries: Vec<Entry>) -> Layout {
        let mut files = Vec::new();
        let mut at = 0u64;
        for (i, e) in entries.iter().enumerate() {
            if e.kind == EntryKind::File && e.size > 0 {
                files.push((at, i));
                at += e.size;
            }
        }
        Layout {
            entries,
            files,
            size: at,
        }
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Bytes of the stream.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Files of the tree (empty ones included).
    pub(crate) fn file_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .count()
    }

    /// The pieces of stream range `[offset, offset + len)`: (entry index,
    /// offset in that file, length), in order.
    pub(crate) fn pieces(&self, offset: u64, len: usize) -> Vec<(usize, u64, usize)> {
        let end = offset + len as u64;
        let mut out = Vec::new();
        // The file holding `offset`: the last one starting at or before it.
        let first = self.files.partition_point(|&(start, _)| start <= offset);
        let mut i = first.saturating_sub(1);
        while let Some(&(start, idx)) = self.files.get(i) {
            if start >= end {
                break;
            }
            let fend = start + self.entries[idx].size;
            let (a, b) = (offset.max(start), end.min(fend));
            if a < b {
                out.push((idx, a - start, (b - a) as usize));
            }
            i += 1;
        }
        out
    }

    /// Reads stream range `buf` at `offset` through `read(entry, offset in
    /// file, buf)`.
    fn read_with(
        &self,
        buf: &mut [u8],
        offset: u64,
        mut read: impl FnMut(usize, u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut at = 0;
        for (idx, off, len) in self.pieces(offset, buf.len()) {
            read(idx, off, &mut buf[at..at + len])?;
            at += len;
        }
        if at != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the tree",
            ));
        }
        Ok(())
    }

    /// An identity of the tree as listed (paths, kinds, sizes, modes, times,
    /// targets): a send that finds a saved transfer with the same identity
    /// resumes it; any change starts a new one.
    pub(crate) fn identity(&self) -> i64 {
        let mut h = blake3::Hasher::new();
        for e in &self.entries {
            h.update(e.path.as_bytes());
            h.update(&[0, e.kind as u8]);
            h.update(&e.size.to_le_bytes());
            h.update(&e.mode.to_le_bytes());
            h.update(&e.mtime_ns.to_le_bytes());
            h.update(e.target.as_bytes());
            h.update(&[0]);
        }
        i64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
    }
}

/// A file's modification time, ns since the Unix epoch.
pub(crate) fn mtime_ns(md: &std::fs::Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

/// Lists the tree under `root` for sending: directories before what they
/// hold, names sorted, files hashed (BLAKE3). Symlinks are kept as links and
/// refused when they point outside the tree; sockets, FIFOs and devices are
/// skipped with a warning. Without `hash`, files carry no hash (enough to
/// tell whether the tree changed).
pub(crate) fn scan(root: &Path, hash: bool) -> Result<Vec<Entry>, NodeError> {
    let mut out = Vec::new();
    walk(root, "", &mut out)?;
    // The receiver's whole-tree check (a link out of the tree through
    // another link), said here, before anything is sent.
    let size = out
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| e.size)
        .sum();
    gateway_proto::validate_tree(&out, size).map_err(|e| {
        NodeError::Other(format!(
            "{}: {e}; gateway sends links as links and never follows them out of the tree: remove it, or send what it points to",
            root.display()
        ))
    })?;
    if hash {
        hash_files(root, &mut out)?;
    }
    Ok(out)
}

/// BLAKE3 of every file entry, on every core: for many small files the
/// opens and reads dominate, and they overlap well.
fn hash_files(root: &Path, entries: &mut [Entry]) -> Result<(), NodeError> {
    let mut files: Vec<&mut Entry> = entries
        .iter_mut()
        .filter(|e| e.kind == EntryKind::File)
        .collect();
    let threads = crate::tree::hash_threads().clamp(1, 8);
    let per = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks_mut(per)
            .map(|part| {
                s.spawn(move || -> Result<(), NodeError> {
                    for e in part {
                        e.hash = Some(hash_file(&root.join(&e.path))?);
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(NodeError::Other("hash thread panicked".into())))
        })
    })
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> Result<(), NodeError> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
        .map_err(|e| NodeError::io(format!("cannot list {}", dir.display()), e))?
        .map(|d| d.map(|d| d.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| NodeError::io(format!("cannot list {}", dir.display()), e))?;
    names.sort();
    for os in names {
        let path = dir.join(&os);
        let Some(name) = os.to_str() else {
            return Err(NodeError::Other(format!(
                "{} is not UTF-8; gateway sends UTF-8 names only (rename it)",
                path.display()
            )));
        };
        gateway_proto::validate_name(name)
            .map_err(|e| NodeError::Other(format!("{}: {e}", path.display())))?;
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let md = std::fs::symlink_metadata(&path)
            .map_err(|e| NodeError::io(format!("cannot read {}", path.display()), e))?;
        let ft = md.file_type();
        let mut e = Entry {
            path: rel.clone(),
            kind: EntryKind::File,
            size: 0,
            mode: md.permissions().mode() & 0o7777,
            mtime_ns: mtime_ns(&md),
            target: String::new(),
            hash: None,
        };
        if ft.is_dir() {
            e.kind = EntryKind::Dir;
            out.push(e);
            walk(&path, &rel, out)?;
        } else if ft.is_file() {
            e.size = md.len();
            out.push(e);
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(|err| NodeError::io(format!("cannot read {}", path.display()), err))?;
            let target = target.to_str().ok_or_else(|| {
                NodeError::Other(format!("{} points to a non-UTF-8 path", path.display()))
            })?;
            gateway_proto::check_link_target(&rel, target).map_err(|_| {
                NodeError::Other(format!(
                    "{} is a symlink to {target}, outside the tree; gateway sends links as links and never follows them out of the tree: remove it, or send what it points to",
                    path.display()
                ))
            })?;
            e.kind = EntryKind::Symlink;
            e.mode = 0o777;
            e.target = target.to_string();
            out.push(e);
        } else {
            tracing::warn!(path = %path.display(), "not a file, directory or symlink (a socket, FIFO or device): skipped");
        }
    }
    Ok(())
}

/// Whether `path` is a regular file with the size and BLAKE3 of file entry `e`.
fn holds_same(path: &Path, e: &Entry) -> bool {
    e.hash.is_some()
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == e.size)
        && hash_file(path).ok() == e.hash
}

/// Opens files of a tree on demand and keeps a bounded number open.
#[derive(Debug)]
struct Handles {
    root: PathBuf,
    open: Mutex<HashMap<usize, Arc<File>>>,
    writable: bool,
}

/// A tree's byte stream over its files under `root`: the sender's files in
/// place, or the receiver's staged copies.
#[derive(Debug)]
pub(crate) struct TreeFiles {
    layout: Layout,
    files: Handles,
}

impl TreeFiles {
    pub(crate) fn new(root: &Path, layout: Layout, writable: bool) -> TreeFiles {
        TreeFiles {
            layout,
            files: Handles {
                root: root.to_path_buf(),
                open: Mutex::new(HashMap::new()),
                writable,
            },
        }
    }

    fn get(&self, idx: usize) -> io::Result<Arc<File>> {
        self.files.get(&self.layout, idx)
    }
}

impl ReadAt for TreeFiles {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.layout.read_with(buf, offset, |idx, off, b| {
            FileExt::read_exact_at(&*self.get(idx)?, b, off)
        })
    }
}

/// Files kept open at once (well under the usual 1024 descriptors).
const MAX_OPEN: usize = 128;

impl Handles {
    fn get(&self, layout: &Layout, idx: usize) -> io::Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(&idx) {
            return Ok(f.clone());
        }
        let path = self.root.join(&layout.entries[idx].path);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(self.writable)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if open.len() >= MAX_OPEN {
            open.clear();
        }
        let f = Arc::new(f);
        open.insert(idx, f.clone());
        Ok(f)
    }
}

/// What to do when a name the transfer lands on is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Conflict {
    /// Keep the existing file; land as `name (1).ext`, `(2)`… (default).
    #[default]
    Rename,
    /// Replace the existing file (atomically, at the final rename).
    Overwrite,
    /// Keep the existing file; drop the received one.
    Skip,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conflict::Rename => "rename",
            Conflict::Overwrite => "overwrite",
            Conflict::Skip => "skip",
        })
    }
}

impl std::str::FromStr for Conflict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rename" => Ok(Conflict::Rename),
            "overwrite" => Ok(Conflict::Overwrite),
            "skip" => Ok(Conflict::Skip),
            other => Err(format!(
                "{other:?} is not a conflict policy; use rename, overwrite or skip"
            )),
        }
    }
}

/// The receiver's staging area of one tree.
#[derive(Debug)]
pub(crate) struct Staged {
    pub(crate) root: PathBuf,
    stream: TreeFiles,
    /// Files written since the last sync.
    dirty: Mutex<HashSet<usize>>,
}

/// More dirty files than this at a checkpoint are synced with one
/// `syncfs` instead of an fdatasync each.
const SYNCFS_OVER: usize = 8;

impl Staged {
    /// Creates (or, on resume, reopens) the staging directory: every
    /// directory, and every file at its final size (sparse until written).
    /// Made durable before it returns, so later checkpoints need only sync
    /// file data.
    pub(crate) fn open(root: &Path, entries: Vec<Entry>) -> Result<Staged, NodeError> {
        let layout = Layout::new(entries);
        std::fs::create_dir_all(root)
            .map_err(|e| NodeError::io(format!("cannot create {}", root.display()), e))?;
        for e in layout.entries() {
            let p = root.join(&e.path);
            match e.kind {
                EntryKind::Dir => std::fs::create_dir_all(&p)
                    .map_err(|err| NodeError::io(format!("cannot create {}", p.display()), err))?,
                EntryKind::File => {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&p)
                        .map_err(|err| {
                            NodeError::io(format!("cannot create {}", p.display()), err)
                        })?;
                    f.set_len(e.size).map_err(|err| {
                        NodeError::io(format!("cannot size {}", p.display()), err)
                    })?;
                    // The mode now, through the open handle; the time at
                    // landing (writes would move it).
                    f.set_permissions(std::fs::Permissions::from_mode(landing_mode(e)))
                        .map_err(|err| {
                            NodeError::io(format!("cannot chmod {}", p.display()), err)
                        })?;
                }
                EntryKind::Symlink => {} // made when the tree lands
            }
        }
        let staged = Staged {
            root: root.to_path_buf(),
            stream: TreeFiles::new(root, layout, true),
            dirty: Mutex::new(HashSet::new()),
        };
        staged.syncfs()?;
        Ok(staged)
    }

    /// Copies into the staging area every file that `dest` (where the tree
    /// will land) already holds with the same size and BLAKE3, and returns
    /// the stream's chunks (of `chunk_size` bytes) that these copies cover
    /// entirely: the receiver holds them already and the sender skips them.
    /// The copies are made durable before this returns.
    pub(crate) fn prefill(&self, dest: &Path, chunk_size: u32) -> Result<Vec<u64>, NodeError> {
        let mut have: HashSet<usize> = HashSet::new();
        let layout = &self.stream.layout;
        for (&(_, idx), e) in layout.files.iter().map(|f| (f, &layout.entries[f.1])) {
            let there = dest.join(&e.path);
            if !holds_same(&there, e) {
                continue;
            }
            let mut from = File::open(&there)
                .map_err(|err| NodeError::io(format!("cannot open {}", there.display()), err))?;
            let to = self.stream.get(idx).map_err(|err| {
                NodeError::io(
                    format!("cannot open a staged file of {}", self.root.display()),
                    err,
                )
            })?;
            // copy_file_range under the hood: in the kernel, a reflink where
            // the file system can.
            io::copy(&mut from, &mut &*to)
                .map_err(|err| NodeError::io(format!("cannot copy {}", there.display()), err))?;
            have.insert(idx);
        }
        if have.is_empty() {
            return Ok(Vec::new());
        }
        self.syncfs()?;
        let c = u64::from(chunk_size.max(1));
        let chunks = self.stream.layout.size.div_ceil(c);
        Ok((0..chunks)
            .filter(|&i| {
                let start = i * c;
                let len = (self.stream.layout.size - start).min(c) as usize;
                self.stream
                    .layout
                    .pieces(start, len)
                    .iter()
                    .all(|(idx, _, _)| have.contains(idx))
            })
            .collect())
    }

    /// Its byte stream, for reading back (the final hash).
    pub(crate) fn reader(&self) -> &dyn ReadAt {
        &self.stream
    }

    /// Writes stream bytes at `offset` into the files they belong to.
    pub(crate) fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut at = 0;
        for (idx, off, len) in self.stream.layout.pieces(offset, data.len()) {
            self.stream
                .get(idx)?
                .write_all_at(&data[at..at + len], off)?;
            self.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(idx);
            at += len;
        }
        Ok(())
    }

    /// Makes what was written durable: an fdatasync per file written since
    /// the last call, or one `syncfs` when many small files were.
    pub(crate) fn sync_data(&self) -> Result<(), NodeError> {
        let dirty: Vec<usize> = self
            .dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let r = if dirty.len() > SYNCFS_OVER {
            self.syncfs()
        } else {
            dirty.iter().try_for_each(|&idx| {
                self.stream
                    .get(idx)
                    .and_then(|f| f.sync_data())
                    .map_err(|e| NodeError::io(format!("fdatasync in {}", self.root.display()), e))
            })
        };
        if r.is_err() {
            // Not synced: they stay dirty for the next attempt.
            self.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(dirty);
        }
        r
    }

    fn syncfs(&self) -> Result<(), NodeError> {
        let d = File::open(&self.root)
            .map_err(|e| NodeError::io(format!("cannot open {}", self.root.display()), e))?;
        nix::unistd::syncfs(&d)
            .map_err(|e| NodeError::io(format!("syncfs {}", self.root.display()), e.into()))
    }

    /// Moves the verified tree to `dest` (created if missing; merged into if
    /// it is a directory), applying `policy` to names that are taken. A file
    /// already there with the same content is kept as it is. Directories get
    /// their modes and times last, deepest first; everything is synced.
    pub(crate) fn land(&self, dest: &Path, policy: Conflict) -> Result<Landed, NodeError> {
        if std::fs::symlink_metadata(dest).is_err()
            && let Some(landed) = self.land_whole(dest)?
        {
            return Ok(landed);
        }
        let mut landed = Landed::default();
        let io = |what: &str, p: &Path, e: io::Error| {
            NodeError::io(format!("{what} {}", p.display()), e)
        };
        std::fs::create_dir_all(dest).map_err(|e| io("cannot create", dest, e))?;
        let mut parents: HashSet<PathBuf> = HashSet::from([dest.to_path_buf()]);
        for e in self.stream.layout.entries() {
            let from = self.root.join(&e.path);
            let to = dest.join(&e.path);
            match e.kind {
                EntryKind::Dir => {
                    match std::fs::symlink_metadata(&to) {
                        Ok(m) if m.is_dir() => {}
                        Ok(_) => {
                            return Err(NodeError::Other(format!(
                                "{} is in the way of a directory of the tree; move it and send again",
                                to.display()
                            )));
                        }
                        Err(_) => {
                            std::fs::create_dir(&to).map_err(|err| io("cannot create", &to, err))?
                        }
                    }
                    parents.insert(to);
                }
                EntryKind::File => {
                    if !from.exists() {
                        // Landed before a crash: it is in place already.
                        landed.files += 1;
                        continue;
                    }
                    set_mtime(&from, e)?;
                    if holds_same(&to, e) {
                        std::fs::remove_file(&from)
                            .map_err(|err| io("cannot remove", &from, err))?;
                        landed.unchanged += 1;
                        continue;
                    }
                    match (to.symlink_metadata().is_ok(), policy) {
                        (false, _) | (true, Conflict::Overwrite) => {
                            std::fs::rename(&from, &to)
                                .map_err(|err| io("cannot move to", &to, err))?;
                        }
                        (true, Conflict::Rename) => {
                            let parent = to.parent().unwrap_or(dest);
                            let name = to.file_name().and_then(|n| n.to_str()).unwrap_or("file");
                            let got = rename_no_clobber(&from, parent, name)?;
                            landed.renamed.push(got.display().to_string());
                        }
                        (true, Conflict::Skip) => {
                            std::fs::remove_file(&from)
                                .map_err(|err| io("cannot remove", &from, err))?;
                            landed.skipped += 1;
                            continue;
                        }
                    }
                    landed.files += 1;
                }
                EntryKind::Symlink => {
                    match std::fs::symlink_metadata(&to) {
                        Ok(m)
                            if m.file_type().is_symlink()
                                && std::fs::read_link(&to)
                                    .is_ok_and(|t| t == Path::new(&e.target)) =>
                        {
                            landed.unchanged += 1;
                            continue;
                        }
                        Ok(_) if policy == Conflict::Skip => {
                            landed.skipped += 1;
                            continue;
                        }
                        Ok(_) => {
                            // Made beside the taken name, then moved over it
                            // (overwrite) or next to it (rename).
                            let parent = to.parent().unwrap_or(dest);
                            let name = to.file_name().and_then(|n| n.to_str()).unwrap_or("link");
                            let tmp = parent.join(format!(".{name}.gateway-link"));
                            let _ = std::fs::remove_file(&tmp);
                            std::os::unix::fs::symlink(&e.target, &tmp)
                                .map_err(|err| io("cannot create", &tmp, err))?;
                            if policy == Conflict::Overwrite {
                                std::fs::rename(&tmp, &to)
                                    .map_err(|err| io("cannot move to", &to, err))?;
                            } else {
                                let got = rename_no_clobber(&tmp, parent, name)?;
                                landed.renamed.push(got.display().to_string());
                            }
                        }
                        Err(_) => std::os::unix::fs::symlink(&e.target, &to)
                            .map_err(|err| io("cannot create", &to, err))?,
                    }
                    landed.links += 1;
                }
            }
        }
        self.dirs_meta(dest, &mut landed)?;
        for p in &parents {
            sync_dir(p);
        }
        let _ = std::fs::remove_dir_all(&self.root);
        Ok(landed)
    }

    /// Directory modes and times under `base`, last (writing into a
    /// directory changes its mtime) and deepest first (a read-only parent
    /// would refuse).
    fn dirs_meta(&self, base: &Path, landed: &mut Landed) -> Result<(), NodeError> {
        for e in self.stream.layout.entries().iter().rev() {
            if e.kind == EntryKind::Dir {
                apply_meta(&base.join(&e.path), e)?;
                landed.dirs += 1;
            }
        }
        Ok(())
    }

    /// A tree whose destination does not exist yet lands in one rename of
    /// the whole staging directory: times, links and directory modes are
    /// put in place inside it first. `None` if the destination appeared
    /// meanwhile (then the caller merges file by file).
    fn land_whole(&self, dest: &Path) -> Result<Option<Landed>, NodeError> {
        let mut landed = Landed::default();
        for e in self.stream.layout.entries() {
            let p = self.root.join(&e.path);
            match e.kind {
                EntryKind::File => {
                    set_mtime(&p, e)?;
                    landed.files += 1;
                }
                EntryKind::Symlink => {
                    match std::fs::symlink_metadata(&p) {
                        Ok(_) => {} // made before a crash
                        Err(_) => std::os::unix::fs::symlink(&e.target, &p).map_err(|err| {
                            NodeError::io(format!("cannot create {}", p.display()), err)
                        })?,
                    }
                    landed.links += 1;
                }
                EntryKind::Dir => {}
            }
        }
        self.dirs_meta(&self.root, &mut landed)?;
        sync_dir(&self.root);
        match nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &self.root,
            nix::fcntl::AT_FDCWD,
            dest,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => return Ok(None),
            Err(e) => {
                return Err(NodeError::io(
                    format!("cannot move {} to {}", self.root.display(), dest.display()),
                    e.into(),
                ));
            }
        }
        if let Some(parent) = dest.parent() {
            sync_dir(parent);
        }
        Ok(Some(landed))
    }
}

/// Mode (owner keeps read/write, so landing can finish) and mtime, by path
/// (two syscalls: landing 10,000 files is bounded by these).
fn apply_meta(path: &Path, e: &Entry) -> Result<(), NodeError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(landing_mode(e)))
        .map_err(|err| NodeError::io(format!("cannot chmod {}", path.display()), err))?;
    set_mtime(path, e)
}

fn landing_mode(e: &Entry) -> u32 {
    let owner = if e.kind == EntryKind::File {
        0o600
    } else {
        0o700
    };
    (e.mode & 0o7777) | owner
}

fn set_mtime(path: &Path, e: &Entry) -> Result<(), NodeError> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    if e.mtime_ns <= 0 {
        return Ok(());
    }
    let t = TimeSpec::new(e.mtime_ns / 1_000_000_000, e.mtime_ns % 1_000_000_000);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|err| {
        NodeError::io(
            format!("cannot set the time of {}", path.display()),
            err.into(),
        )
    })
}

/// What landing a tree did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Landed {
    /// Files moved into place.
    pub files: usize,
    /// Files already there with the same content, kept.
    pub unchanged: usize,
    /// Files whose name was taken, kept out (`--on-conflict skip`).
    pub skipped: usize,
    /// Names that were taken, landed under another name instead.
    pub renamed: Vec<String>,
    /// Directories.
    pub dirs: usize,
    /// Symlinks.
    pub links: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            size,
            mode: 0o640,
            mtime_ns: 1_600_000_000_000_000_000,
            target: String::new(),
            hash: None,
        }
    }

    #[test]
    fn pieces_split_a_range_across_files_and_skip_empty_ones() {
        let l = Layout::new(vec![f("a", 3), f("empty", 0), f("b", 5), f("c", 2)]);
        assert_eq!(l.size(), 10);
        assert_eq!(l.pieces(0, 10), vec![(0, 0, 3), (2, 0, 5), (3, 0, 2)]);
        assert_eq!(l.pieces(2, 3), vec![(0, 2, 1), (2, 0, 2)]);
        assert_eq!(l.pieces(8, 2), vec![(3, 0, 2)]);
        assert_eq!(l.pieces(4, 1), vec![(2, 1, 1)]);
    }

    #[test]
    fn a_staged_tree_reads_back_what_was_written_and_lands_with_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = f("d", 0);
        d.kind = EntryKind::Dir;
        d.mode = 0o750;
        let entries = vec![d, f("d/x", 4), f("y", 3)];
        let st = Staged::open(&tmp.path().join("stage"), entries).unwrap();
        st.write_all_at(b"abcdefg", 0).unwrap();
        st.sync_data().unwrap();
        let mut back = [0u8; 7];
        st.reader().read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"abcdefg");
        let dest = tmp.path().join("out");
        let landed = st.land(&dest, Conflict::Rename).unwrap();
        assert_eq!((landed.files, landed.dirs), (2, 1));
        assert_eq!(std::fs::read(dest.join("d/x")).unwrap(), b"abcd");
        let m = std::fs::metadata(dest.join("d")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o750);
        assert!(!tmp.path().join("stage").exists());
    }
}
