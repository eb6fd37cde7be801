//! BLAKE3 as a tree over our chunks.
//!
//! With a power-of-two chunk size, every chunk of a file is a whole subtree
//! of the file's BLAKE3 tree. So the hash a Data frame carries is that
//! subtree's chaining value (CV), and the whole-file hash is those CVs merged
//! up the tree: each byte is hashed once per side, chunks can be hashed in any
//! order and on several cores, and a mismatch points at the bad chunks.

use std::fs::File;
use std::path::Path;

use blake3::hazmat::{
    HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use gateway_engine::Geometry;
use gateway_proto::Hash;

use crate::NodeError;
use crate::dirtree::ReadAt;

/// Whether `chunk_size` makes every chunk a BLAKE3 subtree.
pub fn valid_chunk_size(chunk_size: u32) -> bool {
    chunk_size >= blake3::CHUNK_LEN as u32 && chunk_size.is_power_of_two()
}

/// The chaining value of the chunk of `data` that starts at `offset`.
pub fn chunk_cv(offset: u64, data: &[u8]) -> Hash {
    if data.is_empty() {
        return [0; 32];
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(data);
    h.finalize_non_root()
}

/// The file's BLAKE3 from the CVs of all its chunks, or `None` when the file
/// is one chunk or less (then the root is the plain hash of that chunk).
pub fn root_from_cvs(cvs: &[Hash], geo: Geometry) -> Option<Hash> {
    if cvs.len() < 2 {
        return None;
    }
    let c = u64::from(geo.chunk_size);
    let bytes = |a: usize, b: usize| (b as u64 * c).min(geo.size) - a as u64 * c;
    fn merge(
        cvs: &[Hash],
        a: usize,
        b: usize,
        c: u64,
        bytes: &dyn Fn(usize, usize) -> u64,
    ) -> Hash {
        if b - a == 1 {
            return cvs[a];
        }
        let left = (left_subtree_len(bytes(a, b)) / c) as usize;
        let l = merge(cvs, a, a + left, c, bytes);
        let r = merge(cvs, a + left, b, c, bytes);
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
    let n = cvs.len();
    let left = (left_subtree_len(bytes(0, n)) / c) as usize;
    let l = merge(cvs, 0, left, c, &bytes);
    let r = merge(cvs, left, n, c, &bytes);
    Some(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes())
}

/// What [`hash_chunks`] found.
#[derive(Debug, Default)]
pub struct Hashed {
    /// (chunk index, CV) for every chunk asked for, in no particular order.
    pub cvs: Vec<(u64, Hash)>,
    /// The plain hash of chunk 0 when the file is that one chunk (its root).
    pub single_root: Option<Hash>,
}

type PartResult = std::io::Result<Vec<(u64, Hash, Option<Hash>)>>;

/// Reads and hashes the chunks `indices` of `file` on up to `threads` threads.
pub fn hash_chunks<R: ReadAt + ?Sized>(
    file: &R,
    geo: Geometry,
    indices: &[u64],
    threads: usize,
) -> std::io::Result<Hashed> {
    let threads = threads.clamp(1, 8).min(indices.len().max(1));
    let per = indices.len().div_ceil(threads.max(1)).max(1);
    let results: Vec<PartResult> = std::thread::scope(|s| {
        let handles: Vec<_> = indices
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    let mut buf = vec![0u8; geo.chunk_size as usize];
                    let mut out = Vec::with_capacity(part.len());
                    for &idx in part {
                        let c = geo.chunk(idx).expect("index in range");
                        let b = &mut buf[..c.len as usize];
                        file.read_exact_at(b, c.offset)?;
                        let single = (geo.chunks() == 1).then(|| *blake3::hash(b).as_bytes());
                        out.push((idx, chunk_cv(c.offset, b), single));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("hash thread panicked")))
            })
            .collect()
    });
    let mut out = Hashed {
        cvs: Vec::with_capacity(indices.len()),
        single_root: None,
    };
    for r in results {
        for (idx, cv, s) in r? {
            out.cvs.push((idx, cv));
            out.single_root = out.single_root.or(s);
        }
    }
    Ok(out)
}

/// BLAKE3 of a whole file, read sequentially.
pub fn hash_file(path: &Path) -> Result<Hash, NodeError> {
    let f = File::open(path)
        .map_err(|e| NodeError::io(format!("cannot open {}", path.display()), e))?;
    let mut h = blake3::Hasher::new();
    h.update_reader(f)
        .map_err(|e| NodeError::io(format!("cannot read {}", path.display()), e))?;
    Ok(*h.finalize().as_bytes())
}

/// Threads to use for whole-file hashing.
pub fn hash_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    #[test]
    fn merged_chunk_cvs_equal_the_plain_blake3_for_many_sizes() {
        let chunk = 4096u32;
        for size in [
            4097usize,
            8192,
            8193,
            12288,
            20000,
            4096 * 5,
            4096 * 7 + 1,
            4096 * 8,
            4096 * 9 - 3,
            100_000,
        ] {
            let d = data(size);
            let geo = Geometry::new(size as u64, chunk);
            let cvs: Vec<Hash> = (0..geo.chunks())
                .map(|i| {
                    let c = geo.chunk(i).unwrap();
                    chunk_cv(c.offset, &d[c.offset as usize..][..c.len as usize])
                })
                .collect();
            assert_eq!(
                root_from_cvs(&cvs, geo),
                Some(*blake3::hash(&d).as_bytes()),
                "size {size}"
            );
        }
    }

    #[test]
    fn hashing_a_file_on_threads_gives_the_same_root() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let d = data(1_000_000);
        std::fs::write(&p, &d).unwrap();
        let f = File::open(&p).unwrap();
        let geo = Geometry::new(d.len() as u64, 1 << 16);
        let idx: Vec<u64> = (0..geo.chunks()).collect();
        let Hashed {
            mut cvs,
            single_root,
        } = hash_chunks(&f, geo, &idx, 3).unwrap();
        assert!(single_root.is_none());
        cvs.sort();
        let cvs: Vec<Hash> = cvs.into_iter().map(|(_, h)| h).collect();
        assert_eq!(root_from_cvs(&cvs, geo), Some(*blake3::hash(&d).as_bytes()));
    }

    #[test]
    fn a_single_chunk_file_has_its_plain_hash_as_root() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let f = File::open(&p).unwrap();
        let geo = Geometry::new(5, 1 << 20);
        let single = hash_chunks(&f, geo, &[0], 2).unwrap().single_root;
        assert_eq!(single, Some(*blake3::hash(b"hello").as_bytes()));
    }

    #[test]
    fn chunk_sizes_must_be_powers_of_two_of_at_least_one_kib() {
        assert!(valid_chunk_size(1 << 20));
        assert!(valid_chunk_size(1024));
        assert!(!valid_chunk_size(1000));
        assert!(!valid_chunk_size(512));
        assert!(!valid_chunk_size(3 << 20));
    }
}
