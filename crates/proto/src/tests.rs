//! Hand-built hostile frames that `encode` cannot produce.

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;

use crate::generated::gateway::wire;
use crate::*;

const ID: TransferId = [1; 16];

fn finish(
    mut fbb: FlatBufferBuilder<'_>,
    stream: wire::Stream,
    body_type: wire::Body,
    body: Option<flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>>,
) -> Bytes {
    let root = wire::Frame::create(
        &mut fbb,
        &wire::FrameArgs {
            stream,
            body_type,
            body,
        },
    );
    wire::finish_frame_buffer(&mut fbb, root);
    Bytes::copy_from_slice(fbb.finished_data())
}

fn ping_frame(stream: wire::Stream, body_type: wire::Body) -> Bytes {
    let mut fbb = FlatBufferBuilder::new();
    let ping = wire::Ping::create(&mut fbb, &wire::PingArgs { nonce: 9 }).as_union_value();
    finish(fbb, stream, body_type, Some(ping))
}

fn malformed(b: Bytes) -> String {
    match decode(b, &Limits::default()) {
        Err(ProtoError::Malformed(m)) => m,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn hand_built_ping_decodes() {
    let f = decode(
        ping_frame(wire::Stream::Control, wire::Body::Ping),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        f,
        Frame {
            stream: Stream::Control,
            body: Body::Ping(9)
        }
    );
}

#[test]
fn rejects_unknown_stream() {
    let m = malformed(ping_frame(wire::Stream(3), wire::Body::Ping));
    assert!(m.contains("stream"), "{m}");
}

#[test]
fn rejects_unknown_or_none_body_type() {
    for t in [wire::Body(15), wire::Body(200), wire::Body::NONE] {
        malformed(ping_frame(wire::Stream::Control, t));
    }
}

#[test]
fn rejects_missing_body() {
    // The generated builder refuses to omit a required field, so build by hand.
    let mut fbb = FlatBufferBuilder::new();
    let start = fbb.start_table();
    fbb.push_slot::<wire::Stream>(
        wire::Frame::VT_STREAM,
        wire::Stream::Control,
        wire::Stream::Identity,
    );
    fbb.push_slot::<wire::Body>(
        wire::Frame::VT_BODY_TYPE,
        wire::Body::Ping,
        wire::Body::NONE,
    );
    let root = fbb.end_table(start);
    fbb.finish(root, Some(FILE_IDENTIFIER));
    let m = malformed(Bytes::copy_from_slice(fbb.finished_data()));
    assert!(m.contains("body"), "{m}");
}

#[test]
fn rejects_body_table_of_the_wrong_type() {
    // A Ping table labelled as Data: the verifier checks it as Data and finds
    // the required fields missing.
    malformed(ping_frame(wire::Stream::File, wire::Body::Data));
}

/// A table built field by field, skipping the generated builder's required-field asserts.
fn raw_table(
    fbb: &mut FlatBufferBuilder<'_>,
    fill: impl FnOnce(&mut FlatBufferBuilder<'_>),
) -> flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset> {
    let start = fbb.start_table();
    fill(fbb);
    flatbuffers::WIPOffset::new(fbb.end_table(start).value())
}

#[test]
fn rejects_data_without_transfer_id() {
    let mut fbb = FlatBufferBuilder::new();
    let bytes = fbb.create_vector(&[1u8, 2, 3]);
    let data = raw_table(&mut fbb, |fbb| {
        fbb.push_slot_always(wire::Data::VT_DATA, bytes);
    });
    let m = malformed(finish(
        fbb,
        wire::Stream::File,
        wire::Body::Data,
        Some(data),
    ));
    assert!(m.contains("transfer_id"), "{m}");
}

#[test]
fn rejects_complete_without_file_hash() {
    let mut fbb = FlatBufferBuilder::new();
    let id = wire::TransferId(ID);
    let c = raw_table(&mut fbb, |fbb| {
        fbb.push_slot_always(wire::Complete::VT_TRANSFER_ID, id);
    });
    let m = malformed(finish(
        fbb,
        wire::Stream::File,
        wire::Body::Complete,
        Some(c),
    ));
    assert!(m.contains("file_hash"), "{m}");
}

#[test]
fn rejects_offer_without_name() {
    let mut fbb = FlatBufferBuilder::new();
    let id = wire::TransferId(ID);
    let o = raw_table(&mut fbb, |fbb| {
        fbb.push_slot_always(wire::Offer::VT_TRANSFER_ID, id);
        fbb.push_slot::<u32>(wire::Offer::VT_CHUNK_SIZE, 1, 0);
    });
    let m = malformed(finish(fbb, wire::Stream::File, wire::Body::Offer, Some(o)));
    assert!(m.contains("name"), "{m}");
}

#[test]
fn rejects_invalid_utf8_in_strings() {
    let mut fbb = FlatBufferBuilder::new();
    // A byte string has the same layout as a string, without the UTF-8 promise.
    let bad = fbb.create_byte_string(b"bad\xff\xfename");
    let name = flatbuffers::WIPOffset::new(bad.value());
    let id = wire::TransferId(ID);
    let o = wire::Offer::create(
        &mut fbb,
        &wire::OfferArgs {
            transfer_id: Some(&id),
            name: Some(name),
            size: 1,
            chunk_size: 1,
            ..Default::default()
        },
    )
    .as_union_value();
    malformed(finish(fbb, wire::Stream::File, wire::Body::Offer, Some(o)));
}

#[test]
fn unknown_reject_and_error_codes_decode_to_catch_alls() {
    let mut fbb = FlatBufferBuilder::new();
    let id = wire::TransferId(ID);
    let r = wire::Reject::create(
        &mut fbb,
        &wire::RejectArgs {
            transfer_id: Some(&id),
            code: wire::RejectCode(99),
            message: None,
        },
    )
    .as_union_value();
    let b = finish(fbb, wire::Stream::File, wire::Body::Reject, Some(r));
    let Body::Reject(r) = decode(b, &Limits::default()).unwrap().body else {
        panic!()
    };
    assert_eq!(r.code, RejectCode::Other);

    let mut fbb = FlatBufferBuilder::new();
    let e = wire::Error::create(
        &mut fbb,
        &wire::ErrorArgs {
            transfer_id: None,
            code: wire::ErrorCode(99),
            message: None,
        },
    )
    .as_union_value();
    let b = finish(fbb, wire::Stream::Control, wire::Body::Error, Some(e));
    let Body::Error(e) = decode(b, &Limits::default()).unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::Internal);
}

#[test]
fn rejects_list_of_many_aliased_strings_cheaply() {
    // 100k offsets all pointing at one string: verified within the frame-size
    // budget, then refused by the list cap.
    let mut fbb = FlatBufferBuilder::new();
    let s = fbb.create_string("aa:bb:cc:dd:ee:ff");
    let offs = vec![s; 100_000];
    let macs = fbb.create_vector(&offs);
    let h = wire::Hello::create(
        &mut fbb,
        &wire::HelloArgs {
            macs: Some(macs),
            ..Default::default()
        },
    )
    .as_union_value();
    let b = finish(fbb, wire::Stream::Identity, wire::Body::Hello, Some(h));
    let err = decode(b, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, ProtoError::TooLarge { what: "macs", .. }),
        "{err:?}"
    );
}
