/// Caps applied while decoding; `Limits::default()` is what the node uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded frame accepted (default 16 MiB + 64 KiB).
    pub max_frame_bytes: usize,
    /// Largest Data payload and Offer/Reload `chunk_size` (default 16 MiB).
    pub max_chunk_bytes: u32,
    /// Largest file size in Offer/Reload; also the bound for range ends (default 2^50).
    pub max_file_bytes: u64,
    /// Most ranges in one frame's range list (default 65536).
    pub max_ranges: usize,
    /// Longest name or Hello string, in bytes (default 255).
    pub max_string_bytes: usize,
    /// Most items in a Hello list (default 64).
    pub max_list_items: usize,
    /// Longest Reject/Error/Verdict message or Bye reason, in bytes (default 1024).
    pub max_message_bytes: usize,
    /// Most entries in an Offer's directory tree (default 2^20; the frame
    /// size bounds it too).
    pub max_tree_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: (16 << 20) + (64 << 10),
            max_chunk_bytes: 16 << 20,
            max_file_bytes: 1 << 50,
            max_ranges: 1 << 16,
            max_string_bytes: 255,
            max_list_items: 64,
            max_message_bytes: 1024,
            max_tree_entries: 1 << 20,
        }
    }
}
