//! `decode`, `encode` and the reusable [`Encoder`].

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, VerifierOptions, WIPOffset};

use crate::FILE_IDENTIFIER;
use crate::error::ProtoError;
use crate::generated::gateway::wire;
use crate::limits::Limits;
use crate::name::validate_name;
use crate::ranges::{Range, check_ranges};
use crate::types::{
    Accept, Ack, Body, Checkpoint, Complete, Data, ErrorCode, ErrorFrame, Frame, Hash, Hello,
    Offer, Reject, RejectCode, Reload, Stream, TransferId, Verdict,
};

/// Root offset + file identifier: the smallest thing that can be a frame.
const MIN_FRAME_BYTES: usize = 8;

// ---------------------------------------------------------------- decode

/// Verify with the FlatBuffers verifier, then check every field against `limits`.
///
/// On success `Data.data` is a zero-copy slice of `buf`.
pub fn decode(buf: Bytes, limits: &Limits) -> Result<Frame, ProtoError> {
    if buf.len() > limits.max_frame_bytes {
        return Err(too_large("frame", buf.len(), limits.max_frame_bytes));
    }
    if buf.len() < MIN_FRAME_BYTES {
        return Err(ProtoError::Malformed(format!(
            "{} bytes is too short for a frame",
            buf.len()
        )));
    }
    if &buf[4..8] != FILE_IDENTIFIER.as_bytes() {
        return Err(ProtoError::Malformed(format!(
            "file identifier {:?} is not {FILE_IDENTIFIER:?}",
            String::from_utf8_lossy(&buf[4..8])
        )));
    }
    let opts = VerifierOptions {
        // Frame -> Offer -> entries -> Entry -> string is the deepest path.
        max_depth: 8,
        // Frame, one body table, and an Offer's tree entries (one table each).
        max_tables: limits.max_tree_entries.saturating_add(16),
        // Caps the work of a buffer whose offsets point at the same bytes many times.
        max_apparent_size: limits.max_frame_bytes.saturating_mul(2),
        ignore_missing_null_terminator: false,
    };
    let root = flatbuffers::root_with_opts::<wire::Frame<'_>>(&opts, &buf)
        .map_err(|e| ProtoError::Malformed(e.to_string()))?;

    let stream = match root.stream() {
        wire::Stream::Identity => Stream::Identity,
        wire::Stream::File => Stream::File,
        wire::Stream::Control => Stream::Control,
        other => return Err(ProtoError::Malformed(format!("unknown stream {}", other.0))),
    };
    let body = decode_body(&root, &buf, limits)?;
    Ok(Frame { stream, body })
}

fn decode_body(root: &wire::Frame<'_>, buf: &Bytes, limits: &Limits) -> Result<Body, ProtoError> {
    let t = root.body_type();
    // `body` is required, so the verifier has checked it exists; the table type
    // still has to match `body_type`, which the accessors below guarantee.
    let wrong = || ProtoError::Malformed(format!("unknown body type {}", t.0));
    Ok(match t {
        wire::Body::Hello => {
            let h = root.body_as_hello().ok_or_else(wrong)?;
            let s = limits.max_string_bytes;
            Body::Hello(Hello {
                name: string(h.name(), "hello name", s)?,
                node_id: string(h.node_id(), "node_id", s)?,
                node_type: string(h.node_type(), "node_type", s)?,
                macs: string_list(h.macs(), "macs", limits)?,
                ips: string_list(h.ips(), "ips", limits)?,
                links: string_list(h.links(), "links", limits)?,
                version: h.version(),
            })
        }
        wire::Body::Offer => {
            let o = root.body_as_offer().ok_or_else(wrong)?;
            let name = file_name(o.name(), limits)?;
            check_size(o.size(), limits)?;
            check_chunk_size(o.chunk_size(), limits)?;
            let entries = match o.entries() {
                None => None,
                Some(v) => {
                    let list = tree_entries(v, limits)?;
                    crate::validate_tree(&list, o.size())?;
                    Some(list)
                }
            };
            Body::Offer(Offer {
                transfer_id: o.transfer_id().0,
                name,
                size: o.size(),
                mtime_ns: o.mtime_ns(),
                mode: o.mode(),
                chunk_size: o.chunk_size(),
                file_hash: o.file_hash().map(|h| h.0),
                entries,
            })
        }
        wire::Body::Reload => {
            let r = root.body_as_reload().ok_or_else(wrong)?;
            let name = file_name(r.name(), limits)?;
            check_size(r.size(), limits)?;
            check_chunk_size(r.chunk_size(), limits)?;
            Body::Reload(Reload {
                transfer_id: r.transfer_id().0,
                name,
                size: r.size(),
                chunk_size: r.chunk_size(),
                durable: ranges(r.durable(), limits)?,
            })
        }
        wire::Body::Accept => {
            let a = root.body_as_accept().ok_or_else(wrong)?;
            Body::Accept(Accept {
                transfer_id: a.transfer_id().0,
                have: ranges(a.have(), limits)?,
            })
        }
        wire::Body::Reject => {
            let r = root.body_as_reject().ok_or_else(wrong)?;
            Body::Reject(Reject {
                transfer_id: r.transfer_id().0,
                code: reject_code_from_wire(r.code()),
                message: string(r.message(), "message", limits.max_message_bytes)?,
            })
        }
        wire::Body::Data => {
            let d = root.body_as_data().ok_or_else(wrong)?;
            let payload = d.data().bytes();
            let len = payload.len() as u64;
            if len > u64::from(limits.max_chunk_bytes) {
                return Err(ProtoError::TooLarge {
                    what: "data",
                    got: len,
                    max: u64::from(limits.max_chunk_bytes),
                });
            }
            let end = d.offset().checked_add(len).ok_or_else(|| {
                ProtoError::OutOfBounds(format!(
                    "data offset {} + length {len} overflows",
                    d.offset()
                ))
            })?;
            if end > limits.max_file_bytes {
                return Err(ProtoError::OutOfBounds(format!(
                    "data ends at {end}, past the largest file size {}",
                    limits.max_file_bytes
                )));
            }
            Body::Data(Data {
                transfer_id: d.transfer_id().0,
                offset: d.offset(),
                data: buf.slice_ref(payload),
                chunk_hash: d.chunk_hash().map(|h| h.0),
            })
        }
        wire::Body::Ack => {
            let a = root.body_as_ack().ok_or_else(wrong)?;
            Body::Ack(Ack {
                transfer_id: a.transfer_id().0,
                ranges: ranges(a.ranges(), limits)?,
            })
        }
        wire::Body::Checkpoint => {
            let c = root.body_as_checkpoint().ok_or_else(wrong)?;
            Body::Checkpoint(Checkpoint {
                transfer_id: c.transfer_id().0,
                durable: ranges(c.durable(), limits)?,
            })
        }
        wire::Body::Complete => {
            let c = root.body_as_complete().ok_or_else(wrong)?;
            Body::Complete(Complete {
                transfer_id: c.transfer_id().0,
                file_hash: c.file_hash().0,
                round: c.round(),
            })
        }
        wire::Body::Verdict => {
            let v = root.body_as_verdict().ok_or_else(wrong)?;
            Body::Verdict(Verdict {
                transfer_id: v.transfer_id().0,
                ok: v.ok(),
                bad_chunks: ranges(v.bad_chunks(), limits)?,
                message: string(v.message(), "message", limits.max_message_bytes)?,
                round: v.round(),
            })
        }
        wire::Body::Error => {
            let e = root.body_as_error().ok_or_else(wrong)?;
            Body::Error(ErrorFrame {
                transfer_id: e.transfer_id().map(|t| t.0),
                code: error_code_from_wire(e.code()),
                message: string(e.message(), "message", limits.max_message_bytes)?,
            })
        }
        wire::Body::Ping => Body::Ping(root.body_as_ping().ok_or_else(wrong)?.nonce()),
        wire::Body::Pong => Body::Pong(root.body_as_pong().ok_or_else(wrong)?.nonce()),
        wire::Body::Bye => {
            let b = root.body_as_bye().ok_or_else(wrong)?;
            Body::Bye(string(b.reason(), "reason", limits.max_message_bytes)?)
        }
        _ => return Err(wrong()),
    })
}

fn too_large(what: &'static str, got: usize, max: usize) -> ProtoError {
    ProtoError::TooLarge {
        what,
        got: got as u64,
        max: max as u64,
    }
}

/// Optional string (absent = ""), capped at `max` bytes. UTF-8 was checked by the verifier.
fn string(s: Option<&str>, what: &'static str, max: usize) -> Result<String, ProtoError> {
    let s = s.unwrap_or("");
    if s.len() > max {
        return Err(too_large(what, s.len(), max));
    }
    Ok(s.to_owned())
}

fn string_list(
    v: Option<Vector<'_, ForwardsUOffset<&str>>>,
    what: &'static str,
    limits: &Limits,
) -> Result<Vec<String>, ProtoError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    if v.len() > limits.max_list_items {
        return Err(too_large(what, v.len(), limits.max_list_items));
    }
    v.iter()
        .map(|s| string(Some(s), what, limits.max_string_bytes))
        .collect()
}

fn tree_entries(
    v: Vector<'_, ForwardsUOffset<wire::Entry<'_>>>,
    limits: &Limits,
) -> Result<Vec<crate::Entry>, ProtoError> {
    if v.len() > limits.max_tree_entries {
        return Err(too_large("tree entries", v.len(), limits.max_tree_entries));
    }
    v.iter()
        .map(|e| {
            let kind = match e.kind() {
                wire::EntryKind::File => crate::EntryKind::File,
                wire::EntryKind::Dir => crate::EntryKind::Dir,
                wire::EntryKind::Symlink => crate::EntryKind::Symlink,
                other => {
                    return Err(ProtoError::Malformed(format!(
                        "unknown tree entry kind {}",
                        other.0
                    )));
                }
            };
            Ok(crate::Entry {
                path: string(Some(e.path()), "entry path", crate::MAX_PATH_BYTES)?,
                kind,
                size: e.size(),
                mode: e.mode(),
                mtime_ns: e.mtime_ns(),
                target: string(e.target(), "symlink target", crate::MAX_PATH_BYTES)?,
                hash: e.hash().map(|h| h.0),
            })
        })
        .collect()
}

fn entry_list<'f>(
    fbb: &mut Fbb<'f>,
    entries: &Option<Vec<crate::Entry>>,
) -> Option<WIPOffset<Vector<'f, ForwardsUOffset<wire::Entry<'f>>>>> {
    let list = entries.as_ref()?;
    let offs: Vec<_> = list
        .iter()
        .map(|e| {
            let path = fbb.create_string(&e.path);
            let target = (!e.target.is_empty()).then(|| fbb.create_string(&e.target));
            let hash = e.hash.map(wire::Hash);
            let args = wire::EntryArgs {
                path: Some(path),
                kind: match e.kind {
                    crate::EntryKind::File => wire::EntryKind::File,
                    crate::EntryKind::Dir => wire::EntryKind::Dir,
                    crate::EntryKind::Symlink => wire::EntryKind::Symlink,
                },
                size: e.size,
                mode: e.mode,
                mtime_ns: e.mtime_ns,
                target,
                hash: hash.as_ref(),
            };
            wire::Entry::create(fbb, &args)
        })
        .collect();
    Some(fbb.create_vector(&offs))
}

fn file_name(name: &str, limits: &Limits) -> Result<String, ProtoError> {
    validate_name(name)?;
    if name.len() > limits.max_string_bytes {
        return Err(too_large("name", name.len(), limits.max_string_bytes));
    }
    Ok(name.to_owned())
}

fn check_size(size: u64, limits: &Limits) -> Result<(), ProtoError> {
    if size > limits.max_file_bytes {
        return Err(ProtoError::TooLarge {
            what: "file size",
            got: size,
            max: limits.max_file_bytes,
        });
    }
    Ok(())
}

fn check_chunk_size(chunk_size: u32, limits: &Limits) -> Result<(), ProtoError> {
    if chunk_size == 0 {
        return Err(ProtoError::Malformed("chunk_size is 0".into()));
    }
    if chunk_size > limits.max_chunk_bytes {
        return Err(ProtoError::TooLarge {
            what: "chunk_size",
            got: chunk_size.into(),
            max: limits.max_chunk_bytes.into(),
        });
    }
    Ok(())
}

/// Range list (absent = empty): count capped, each non-empty, sorted, disjoint,
/// ends within the largest file (chunk size is at least 1 byte).
fn ranges(v: Option<Vector<'_, wire::Range>>, limits: &Limits) -> Result<Vec<Range>, ProtoError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    if v.len() > limits.max_ranges {
        return Err(too_large("ranges", v.len(), limits.max_ranges));
    }
    let out: Vec<Range> = v.iter().map(|r| Range::new(r.start(), r.end())).collect();
    check_ranges(out.iter().copied(), limits.max_file_bytes)?;
    Ok(out)
}

fn reject_code_from_wire(c: wire::RejectCode) -> RejectCode {
    match c {
        wire::RejectCode::NoSpace => RejectCode::NoSpace,
        wire::RejectCode::NameTaken => RejectCode::NameTaken,
        wire::RejectCode::NotTrusted => RejectCode::NotTrusted,
        wire::RejectCode::BadName => RejectCode::BadName,
        wire::RejectCode::TooBig => RejectCode::TooBig,
        wire::RejectCode::UnknownTransfer => RejectCode::UnknownTransfer,
        wire::RejectCode::Busy => RejectCode::Busy,
        // Other, and codes added by newer peers.
        _ => RejectCode::Other,
    }
}

fn reject_code_to_wire(c: RejectCode) -> wire::RejectCode {
    match c {
        RejectCode::NoSpace => wire::RejectCode::NoSpace,
        RejectCode::NameTaken => wire::RejectCode::NameTaken,
        RejectCode::NotTrusted => wire::RejectCode::NotTrusted,
        RejectCode::BadName => wire::RejectCode::BadName,
        RejectCode::TooBig => wire::RejectCode::TooBig,
        RejectCode::UnknownTransfer => wire::RejectCode::UnknownTransfer,
        RejectCode::Busy => wire::RejectCode::Busy,
        RejectCode::Other => wire::RejectCode::Other,
    }
}

fn error_code_from_wire(c: wire::ErrorCode) -> ErrorCode {
    match c {
        wire::ErrorCode::Malformed => ErrorCode::Malformed,
        wire::ErrorCode::TooLarge => ErrorCode::TooLarge,
        wire::ErrorCode::OutOfBounds => ErrorCode::OutOfBounds,
        wire::ErrorCode::UnknownTransfer => ErrorCode::UnknownTransfer,
        wire::ErrorCode::BadName => ErrorCode::BadName,
        wire::ErrorCode::DiskFull => ErrorCode::DiskFull,
        wire::ErrorCode::Io => ErrorCode::Io,
        wire::ErrorCode::Protocol => ErrorCode::Protocol,
        wire::ErrorCode::NotTrusted => ErrorCode::NotTrusted,
        wire::ErrorCode::Busy => ErrorCode::Busy,
        // Internal, and codes added by newer peers.
        _ => ErrorCode::Internal,
    }
}

fn error_code_to_wire(c: ErrorCode) -> wire::ErrorCode {
    match c {
        ErrorCode::Malformed => wire::ErrorCode::Malformed,
        ErrorCode::TooLarge => wire::ErrorCode::TooLarge,
        ErrorCode::OutOfBounds => wire::ErrorCode::OutOfBounds,
        ErrorCode::UnknownTransfer => wire::ErrorCode::UnknownTransfer,
        ErrorCode::BadName => wire::ErrorCode::BadName,
        ErrorCode::DiskFull => wire::ErrorCode::DiskFull,
        ErrorCode::Io => wire::ErrorCode::Io,
        ErrorCode::Protocol => wire::ErrorCode::Protocol,
        ErrorCode::NotTrusted => wire::ErrorCode::NotTrusted,
        ErrorCode::Internal => wire::ErrorCode::Internal,
        ErrorCode::Busy => wire::ErrorCode::Busy,
    }
}

// ---------------------------------------------------------------- encode

/// Encode any frame (allocates).
///
/// Encoding does not check limits or names: a frame that breaks them encodes
/// fine and is refused by the peer's [`decode`].
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(initial_capacity(frame));
    build_frame(&mut fbb, frame);
    fbb.finished_data().to_vec()
}

/// Reusable encoder for the hot path: encodes a Data frame copying `data` once.
///
/// Keeps one `FlatBufferBuilder` whose buffer is reused (reset) by every call,
/// so after the first frame of a given size no allocation happens.
pub struct Encoder {
    fbb: FlatBufferBuilder<'static>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    /// A new encoder with a small buffer; it grows to the largest frame encoded.
    pub fn new() -> Self {
        Encoder {
            fbb: FlatBufferBuilder::with_capacity(1024),
        }
    }

    /// Encodes a Data frame on the File stream. The returned bytes are valid
    /// until the next call.
    pub fn data(
        &mut self,
        id: &TransferId,
        offset: u64,
        data: &[u8],
        chunk_hash: Option<&Hash>,
    ) -> &[u8] {
        self.fbb.reset();
        let fbb = &mut self.fbb;
        let body = build_data(fbb, id, offset, data, chunk_hash);
        finish(fbb, Stream::File, wire::Body::Data, body);
        self.fbb.finished_data()
    }

    /// Encodes any frame into the reused buffer. The returned bytes are valid
    /// until the next call.
    pub fn encode(&mut self, frame: &Frame) -> &[u8] {
        self.fbb.reset();
        build_frame(&mut self.fbb, frame);
        self.fbb.finished_data()
    }
}

fn initial_capacity(frame: &Frame) -> usize {
    match &frame.body {
        Body::Data(d) => d.data.len() + 256,
        _ => 1024,
    }
}

type Fbb<'f> = FlatBufferBuilder<'f>;
type UnionOff = WIPOffset<flatbuffers::UnionWIPOffset>;

fn finish(fbb: &mut Fbb<'_>, stream: Stream, body_type: wire::Body, body: UnionOff) {
    let stream = match stream {
        Stream::Identity => wire::Stream::Identity,
        Stream::File => wire::Stream::File,
        Stream::Control => wire::Stream::Control,
    };
    let root = wire::Frame::create(
        fbb,
        &wire::FrameArgs {
            stream,
            body_type,
            body: Some(body),
        },
    );
    wire::finish_frame_buffer(fbb, root);
}

fn build_data(
    fbb: &mut Fbb<'_>,
    id: &TransferId,
    offset: u64,
    data: &[u8],
    chunk_hash: Option<&Hash>,
) -> UnionOff {
    // `create_byte_string` is one `copy_from_slice`; `create_vector::<u8>` would go
    // byte by byte. It writes a `[ubyte]` vector (plus a trailing NUL the reader ignores).
    let bytes = fbb.create_byte_string(data);
    let bytes: WIPOffset<Vector<'_, u8>> = WIPOffset::new(bytes.value());
    let id = wire::TransferId(*id);
    let hash = chunk_hash.map(|h| wire::Hash(*h));
    wire::Data::create(
        fbb,
        &wire::DataArgs {
            transfer_id: Some(&id),
            offset,
            data: Some(bytes),
            chunk_hash: hash.as_ref(),
        },
    )
    .as_union_value()
}

fn opt_string<'f>(fbb: &mut Fbb<'f>, s: &str) -> Option<WIPOffset<&'f str>> {
    (!s.is_empty()).then(|| fbb.create_string(s))
}

fn string_vec<'f>(
    fbb: &mut Fbb<'f>,
    items: &[String],
) -> Option<WIPOffset<Vector<'f, ForwardsUOffset<&'f str>>>> {
    if items.is_empty() {
        return None;
    }
    let offs: Vec<_> = items.iter().map(|s| fbb.create_string(s)).collect();
    Some(fbb.create_vector(&offs))
}

fn range_list<'f>(fbb: &mut Fbb<'f>, r: &[Range]) -> Option<WIPOffset<Vector<'f, wire::Range>>> {
    if r.is_empty() {
        return None;
    }
    Some(fbb.create_vector_from_iter(r.iter().map(|x| wire::Range::new(x.start, x.end))))
}

fn build_frame(fbb: &mut Fbb<'_>, frame: &Frame) {
    let (body_type, body) = match &frame.body {
        Body::Hello(h) => {
            let args = wire::HelloArgs {
                name: opt_string(fbb, &h.name),
                node_id: opt_string(fbb, &h.node_id),
                node_type: opt_string(fbb, &h.node_type),
                macs: string_vec(fbb, &h.macs),
                ips: string_vec(fbb, &h.ips),
                links: string_vec(fbb, &h.links),
                version: h.version,
            };
            (
                wire::Body::Hello,
                wire::Hello::create(fbb, &args).as_union_value(),
            )
        }
        Body::Offer(o) => {
            let id = wire::TransferId(o.transfer_id);
            let hash = o.file_hash.map(wire::Hash);
            let entries = entry_list(fbb, &o.entries);
            let args = wire::OfferArgs {
                transfer_id: Some(&id),
                name: Some(fbb.create_string(&o.name)),
                size: o.size,
                mtime_ns: o.mtime_ns,
                mode: o.mode,
                chunk_size: o.chunk_size,
                file_hash: hash.as_ref(),
                entries,
            };
            (
                wire::Body::Offer,
                wire::Offer::create(fbb, &args).as_union_value(),
            )
        }
        Body::Reload(r) => {
            let id = wire::TransferId(r.transfer_id);
            let args = wire::ReloadArgs {
                transfer_id: Some(&id),
                name: Some(fbb.create_string(&r.name)),
                size: r.size,
                chunk_size: r.chunk_size,
                durable: range_list(fbb, &r.durable),
            };
            (
                wire::Body::Reload,
                wire::Reload::create(fbb, &args).as_union_value(),
            )
        }
        Body::Accept(a) => {
            let id = wire::TransferId(a.transfer_id);
            let args = wire::AcceptArgs {
                transfer_id: Some(&id),
                have: range_list(fbb, &a.have),
            };
            (
                wire::Body::Accept,
                wire::Accept::create(fbb, &args).as_union_value(),
            )
        }
        Body::Reject(r) => {
            let id = wire::TransferId(r.transfer_id);
            let args = wire::RejectArgs {
                transfer_id: Some(&id),
                code: reject_code_to_wire(r.code),
                message: opt_string(fbb, &r.message),
            };
            (
                wire::Body::Reject,
                wire::Reject::create(fbb, &args).as_union_value(),
            )
        }
        Body::Data(d) => (
            wire::Body::Data,
            build_data(
                fbb,
                &d.transfer_id,
                d.offset,
                &d.data,
                d.chunk_hash.as_ref(),
            ),
        ),
        Body::Ack(a) => {
            let id = wire::TransferId(a.transfer_id);
            let args = wire::AckArgs {
                transfer_id: Some(&id),
                ranges: range_list(fbb, &a.ranges),
            };
            (
                wire::Body::Ack,
                wire::Ack::create(fbb, &args).as_union_value(),
            )
        }
        Body::Checkpoint(c) => {
            let id = wire::TransferId(c.transfer_id);
            let args = wire::CheckpointArgs {
                transfer_id: Some(&id),
                durable: range_list(fbb, &c.durable),
            };
            let off = wire::Checkpoint::create(fbb, &args).as_union_value();
            (wire::Body::Checkpoint, off)
        }
        Body::Complete(c) => {
            let id = wire::TransferId(c.transfer_id);
            let hash = wire::Hash(c.file_hash);
            let args = wire::CompleteArgs {
                transfer_id: Some(&id),
                file_hash: Some(&hash),
                round: c.round,
            };
            (
                wire::Body::Complete,
                wire::Complete::create(fbb, &args).as_union_value(),
            )
        }
        Body::Verdict(v) => {
            let id = wire::TransferId(v.transfer_id);
            let args = wire::VerdictArgs {
                transfer_id: Some(&id),
                ok: v.ok,
                bad_chunks: range_list(fbb, &v.bad_chunks),
                message: opt_string(fbb, &v.message),
                round: v.round,
            };
            (
                wire::Body::Verdict,
                wire::Verdict::create(fbb, &args).as_union_value(),
            )
        }
        Body::Error(e) => {
            let id = e.transfer_id.map(wire::TransferId);
            let args = wire::ErrorArgs {
                transfer_id: id.as_ref(),
                code: error_code_to_wire(e.code),
                message: opt_string(fbb, &e.message),
            };
            (
                wire::Body::Error,
                wire::Error::create(fbb, &args).as_union_value(),
            )
        }
        Body::Ping(n) => {
            let args = wire::PingArgs { nonce: *n };
            (
                wire::Body::Ping,
                wire::Ping::create(fbb, &args).as_union_value(),
            )
        }
        Body::Pong(n) => {
            let args = wire::PongArgs { nonce: *n };
            (
                wire::Body::Pong,
                wire::Pong::create(fbb, &args).as_union_value(),
            )
        }
        Body::Bye(reason) => {
            let args = wire::ByeArgs {
                reason: opt_string(fbb, reason),
            };
            (
                wire::Body::Bye,
                wire::Bye::create(fbb, &args).as_union_value(),
            )
        }
    };
    finish(fbb, frame.stream, body_type, body);
}
