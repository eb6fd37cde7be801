//! How a file is cut into chunks: index <-> (offset, length).

use crate::EngineError;

/// The chunk layout of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes (the last chunk may be shorter).
    pub chunk_size: u32,
}

/// One chunk: where it lives in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// Chunk index.
    pub index: u64,
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

impl Geometry {
    /// A layout; `chunk_size` must be non-zero (the protocol layer checks it).
    pub fn new(size: u64, chunk_size: u32) -> Self {
        Self {
            size,
            chunk_size: chunk_size.max(1),
        }
    }

    /// Number of chunks (0 for an empty file).
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }

    /// The chunk at `index`; `None` past the end.
    pub fn chunk(&self, index: u64) -> Option<ChunkRef> {
        if index >= self.chunks() {
            return None;
        }
        let offset = index * u64::from(self.chunk_size);
        let len = (self.size - offset).min(u64::from(self.chunk_size)) as u32;
        Some(ChunkRef { index, offset, len })
    }

    /// Bytes covered by `count` chunks of a set, counting the short last chunk right.
    pub fn bytes_of(&self, set: &gateway_proto::RangeSet) -> u64 {
        set.ranges()
            .iter()
            .map(|r| {
                let start = r.start * u64::from(self.chunk_size);
                let end = (r.end * u64::from(self.chunk_size)).min(self.size);
                end.saturating_sub(start)
            })
            .sum()
    }

    /// Maps a Data frame's (offset, len) to its chunk, checking that it is
    /// exactly one whole chunk of this file: aligned, in bounds, right length.
    pub fn locate(&self, offset: u64, len: usize) -> Result<ChunkRef, EngineError> {
        let end = offset
            .checked_add(len as u64)
            .ok_or(EngineError::OutOfBounds {
                offset,
                len: len as u64,
                size: self.size,
            })?;
        if end > self.size {
            return Err(EngineError::OutOfBounds {
                offset,
                len: len as u64,
                size: self.size,
            });
        }
        if !offset.is_multiple_of(u64::from(self.chunk_size)) {
            return Err(EngineError::Misaligned {
                offset,
                chunk_size: self.chunk_size,
            });
        }
        let chunk =
            self.chunk(offset / u64::from(self.chunk_size))
                .ok_or(EngineError::OutOfBounds {
                    offset,
                    len: len as u64,
                    size: self.size,
                })?;
        if chunk.len as usize != len {
            return Err(EngineError::WrongChunkLength {
                index: chunk.index,
                expected: chunk.len,
                got: len as u64,
            });
        }
        Ok(chunk)
    }
}
