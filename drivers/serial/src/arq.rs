//! Retransmission over one serial session, without I/O: go-back-N with
//! cumulative acknowledgements, a NAK on the first gap and a retransmission
//! timer for the tail.
//!
//! A line may corrupt bytes; the codec's CRC turns that into a missing
//! packet. Everything above a link (Noise, whose nonces count frames; the
//! control frames of a transfer) expects every frame, in order, or an error,
//! so this layer makes the line reliable the way ZMODEM does inside its own
//! protocol: frames are cut into numbered segments of at most
//! [`SEG_BYTES`]; the receiver takes only the next number it expects, acks
//! what it has, and on a gap says once "from N again" (NAK); the sender
//! keeps what is not yet acked (at most [`WINDOW_BYTES`]) and sends it again
//! from N on a NAK, or from the oldest when nothing was acked for a
//! retransmission timeout (RFC 6298's estimator, doubled on each expiry).
//! A line does not reorder, so go-back-N costs only what was on the wire
//! after the hole (the tty buffers bound it), and a hole costs one segment's
//! round trip instead of a reopened link.
//!
//! Segment body: `seq: u64 LE ‖ flags: u8 ‖ payload`. Ack body:
//! `next: u64 LE ‖ nak: u8` — every segment below `next` arrived.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// Largest payload of one segment: what a hole costs to send again.
pub(crate) const SEG_BYTES: usize = 32 * 1024;
/// Bytes of a segment body before its payload.
pub(crate) const HEADER: usize = 8 + 1;
/// Most payload bytes sent and not yet acknowledged.
pub(crate) const WINDOW_BYTES: usize = 1 << 20;
/// The receiver acks after this many segments in a row (a quarter of the
/// window), at the end of every frame, and whenever something odd happened.
const ACK_EVERY: u32 = (WINDOW_BYTES / SEG_BYTES / 4) as u32;
/// Retransmission timeout before the first round-trip sample.
const RTO_INITIAL: Duration = Duration::from_secs(1);
const RTO_MIN: Duration = Duration::from_millis(200);
const RTO_MAX: Duration = Duration::from_secs(10);

/// The last segment of a frame.
pub(crate) const FLAG_LAST: u8 = 1;
/// The sender closed its direction (an empty segment, numbered like data so
/// it cannot overtake a segment being sent again).
pub(crate) const FLAG_FIN: u8 = 2;
/// Forget the frame being assembled: its sender was cancelled mid-frame.
pub(crate) const FLAG_ABORT: u8 = 4;

/// A segment body.
fn segment_body(seq: u64, flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + payload.len());
    b.put_u64_le(seq);
    b.put_u8(flags);
    b.put_slice(payload);
    b.freeze()
}

/// `(seq, flags, payload)` of a segment body; `None` if too short.
pub(crate) fn parse_segment(mut body: Bytes) -> Option<(u64, u8, Bytes)> {
    if body.len() < HEADER {
        return None;
    }
    let seq = u64::from_le_bytes(body[..8].try_into().ok()?);
    let flags = body[8];
    Some((seq, flags, body.split_off(HEADER)))
}

/// An ack body.
pub(crate) fn ack_body(next: u64, nak: bool) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[..8].copy_from_slice(&next.to_le_bytes());
    b[8] = u8::from(nak);
    b
}

/// `(next, nak)` of an ack body.
pub(crate) fn parse_ack(body: &[u8]) -> Option<(u64, bool)> {
    match body {
        [n @ .., nak] if n.len() == 8 && *nak <= 1 => {
            Some((u64::from_le_bytes(n.try_into().ok()?), *nak == 1))
        }
        _ => None,
    }
}

#[derive(Debug)]
struct Sent {
    seq: u64,
    body: Bytes,
    sent_at: Instant,
    resent: bool,
}

impl Sent {
    fn payload_len(&self) -> usize {
        self.body.len() - HEADER
    }
}

/// What an arriving segment produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// Nothing for the layer above (a piece of a frame, a duplicate, a gap).
    Nothing,
    /// A whole frame.
    Frame(Bytes),
    /// The other end closed its direction; every frame before it arrived.
    Fin,
}

/// Both directions of one session.
#[derive(Debug)]
pub(crate) struct Arq {
    max_frame: usize,
    // Sending.
    next_seq: u64,
    unacked: VecDeque<Sent>,
    unacked_bytes: usize,
    /// Send everything from this number again, at the next chance.
    resend_from: Option<u64>,
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    /// When the oldest unacked segment is sent again if nothing is acked.
    timer: Option<Instant>,
    /// Segments sent more than once.
    pub(crate) resent_segments: u64,
    // Receiving.
    expect: u64,
    assembling: BytesMut,
    ack_due: bool,
    /// Segments taken since the last ack.
    unacked_in: u32,
    nak_due: bool,
    nak_sent_for: Option<u64>,
    /// A segment in order was refused for want of room above (see
    /// [`Arq::refuse`]); a NAK asks for it again once there is room.
    starved: bool,
}

impl Arq {
    /// A session whose frames are at most `max_frame` bytes.
    pub(crate) fn new(max_frame: usize) -> Arq {
        Arq {
            max_frame,
            next_seq: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            resend_from: None,
            srtt: None,
            rttvar: Duration::ZERO,
            rto: RTO_INITIAL,
            timer: None,
            resent_segments: 0,
            expect: 0,
            assembling: BytesMut::new(),
            ack_due: false,
            unacked_in: 0,
            nak_due: false,
            nak_sent_for: None,
            starved: false,
        }
    }

    /// Whether a segment of `len` payload bytes may be sent now (one always
    /// may when nothing is outstanding).
    pub(crate) fn room(&self, len: usize) -> bool {
        self.unacked.is_empty() || self.unacked_bytes + len <= WINDOW_BYTES
    }

    /// Numbers and keeps a new segment; returns the body to write.
    pub(crate) fn push(&mut self, flags: u8, payload: &[u8], now: Instant) -> Bytes {
        let body = segment_body(self.next_seq, flags, payload);
        self.unacked.push_back(Sent {
            seq: self.next_seq,
            body: body.clone(),
            sent_at: now,
            resent: false,
        });
        self.unacked_bytes += payload.len();
        self.next_seq += 1;
        self.timer.get_or_insert(now + self.rto);
        body
    }

    /// The other end has every segment below `next`; with `nak`, it lacks
    /// `next`. Returns whether the window moved.
    pub(crate) fn on_ack(&mut self, next: u64, nak: bool, now: Instant) -> bool {
        if next > self.next_seq {
            return false; // acks what was never sent: ignore
        }
        let mut sample = None;
        let mut moved = false;
        while let Some(front) = self.unacked.front()
            && front.seq < next
        {
            let s = self.unacked.pop_front().expect("front exists");
            self.unacked_bytes -= s.payload_len();
            // Karn: a segment sent twice gives no round-trip sample.
            if !s.resent {
                sample = Some(now.saturating_duration_since(s.sent_at));
            }
            moved = true;
        }
        if let Some(r) = sample {
            self.observe_rtt(r);
        }
        if moved {
            self.timer = (!self.unacked.is_empty()).then(|| now + self.rto);
        }
        if nak
            && self.unacked.front().is_some_and(|f| f.seq == next)
            && self.resend_from.is_none_or(|r| r > next)
        {
            self.resend_from = Some(next);
        }
        moved
    }

    fn observe_rtt(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar = self.rttvar * 3 / 4 + diff / 4;
                self.srtt = Some(srtt * 7 / 8 + r / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.rto =
            (srtt + (self.rttvar * 4).max(Duration::from_millis(10))).clamp(RTO_MIN, RTO_MAX);
    }

    /// When [`Arq::poll_timer`] next has something to do.
    pub(crate) fn timer(&self) -> Option<Instant> {
        self.timer
    }

    /// Nothing acked for a retransmission timeout: send everything from the
    /// oldest again, and wait twice as long next time.
    pub(crate) fn poll_timer(&mut self, now: Instant) {
        if let Some(t) = self.timer
            && t <= now
            && let Some(front) = self.unacked.front()
        {
            self.resend_from = Some(front.seq);
            self.rto = (self.rto * 2).min(RTO_MAX);
            self.timer = Some(now + self.rto);
        }
    }

    /// The segments to send again now (and forget the request).
    pub(crate) fn take_resend(&mut self, now: Instant) -> Vec<Bytes> {
        let Some(from) = self.resend_from.take() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for s in self.unacked.iter_mut().filter(|s| s.seq >= from) {
            s.resent = true;
            s.sent_at = now;
            out.push(s.body.clone());
        }
        self.resent_segments += out.len() as u64;
        if !out.is_empty() {
            self.timer = Some(now + self.rto);
        }
        out
    }

    /// The ack (or NAK) to send now, if one is due.
    pub(crate) fn take_ack(&mut self) -> Option<(u64, bool)> {
        let nak = std::mem::take(&mut self.nak_due);
        let ack = std::mem::take(&mut self.ack_due);
        if nak {
            self.nak_sent_for = Some(self.expect);
        }
        if nak || ack {
            self.unacked_in = 0;
        }
        (nak || ack).then_some((self.expect, nak))
    }

    /// Whether an ack or a retransmission waits to be written.
    pub(crate) fn has_output(&self) -> bool {
        self.ack_due || self.nak_due || self.resend_from.is_some()
    }

    /// A segment arrived intact.
    pub(crate) fn on_segment(
        &mut self,
        seq: u64,
        flags: u8,
        payload: &[u8],
    ) -> Result<Incoming, String> {
        if seq < self.expect {
            // Sent again before our ack reached the other end: say it again.
            self.ack_due = true;
            return Ok(Incoming::Nothing);
        }
        if seq > self.expect {
            // A hole: ask once per hole; the timer covers a lost NAK.
            if self.nak_sent_for != Some(self.expect) {
                self.nak_due = true;
            }
            return Ok(Incoming::Nothing);
        }
        self.expect += 1;
        self.unacked_in += 1;
        // Batched: an ack per segment would cost the other direction a
        // packet per 32 KiB and this end a wake-up each.
        if flags != 0 || self.unacked_in >= ACK_EVERY {
            self.ack_due = true;
        }
        if flags & FLAG_ABORT != 0 {
            self.assembling.clear();
            return Ok(Incoming::Nothing);
        }
        if flags & FLAG_FIN != 0 {
            return Ok(Incoming::Fin);
        }
        if self.assembling.len() + payload.len() > self.max_frame {
            return Err(format!(
                "the other end sent a frame longer than {} bytes",
                self.max_frame
            ));
        }
        self.assembling.extend_from_slice(payload);
        if flags & FLAG_LAST != 0 {
            return Ok(Incoming::Frame(self.assembling.split().freeze()));
        }
        Ok(Incoming::Nothing)
    }

    /// The segment `seq` arrived but there is no room above for it: it is
    /// dropped as if lost, and asked for again by [`Arq::room_again`].
    pub(crate) fn refuse(&mut self, seq: u64) {
        if seq == self.expect {
            self.starved = true;
        }
    }

    /// Room above again: ask for what [`Arq::refuse`] dropped.
    pub(crate) fn room_again(&mut self) -> bool {
        if std::mem::take(&mut self.starved) {
            self.nak_due = true;
            self.nak_sent_for = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moves segments from `a` to `b`, dropping those whose number is in
    /// `lose` the first time they pass; returns the frames `b` assembled.
    fn deliver(b: &mut Arq, bodies: &[Bytes], lose: &mut Vec<u64>) -> Vec<Bytes> {
        let mut out = Vec::new();
        for body in bodies {
            let (seq, flags, payload) = parse_segment(body.clone()).unwrap();
            if let Some(i) = lose.iter().position(|&l| l == seq) {
                lose.remove(i);
                continue;
            }
            if let Incoming::Frame(f) = b.on_segment(seq, flags, &payload).unwrap() {
                out.push(f);
            }
        }
        out
    }

    fn frame(a: &mut Arq, data: &[u8], now: Instant) -> Vec<Bytes> {
        let pieces: Vec<&[u8]> = data.chunks(SEG_BYTES).collect();
        let n = pieces.len();
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, p)| a.push(if i + 1 == n { FLAG_LAST } else { 0 }, p, now))
            .collect()
    }

    #[test]
    fn a_frame_cut_into_segments_is_reassembled_and_acked() {
        let now = Instant::now();
        let (mut a, mut b) = (Arq::new(1 << 20), Arq::new(1 << 20));
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let bodies = frame(&mut a, &data, now);
        assert_eq!(bodies.len(), 4);
        let got = deliver(&mut b, &bodies, &mut vec![]);
        assert_eq!(got, vec![Bytes::from(data)]);
        let (next, nak) = b.take_ack().unwrap();
        assert_eq!((next, nak), (4, false));
        assert!(a.on_ack(next, nak, now));
        assert!(a.timer().is_none(), "nothing outstanding, no timer");
        assert!(b.take_ack().is_none(), "one ack per batch");
    }

    #[test]
    fn a_lost_segment_is_nakked_once_and_sent_again_from_there() {
        let now = Instant::now();
        let (mut a, mut b) = (Arq::new(1 << 20), Arq::new(1 << 20));
        let data = vec![7u8; 5 * SEG_BYTES];
        let bodies = frame(&mut a, &data, now);
        assert!(deliver(&mut b, &bodies, &mut vec![1]).is_empty());
        let (next, nak) = b.take_ack().unwrap();
        assert_eq!((next, nak), (1, true), "one NAK for the hole at 1");
        assert!(b.take_ack().is_none());
        a.on_ack(next, nak, now);
        let again = a.take_resend(now);
        assert_eq!(again.len(), 4, "go-back-N: 1..=4");
        assert_eq!(a.resent_segments, 4);
        let got = deliver(&mut b, &again, &mut vec![]);
        assert_eq!(got, vec![Bytes::from(data)]);
        assert_eq!(b.take_ack(), Some((5, false)));
    }

    #[test]
    fn a_lost_tail_is_sent_again_when_the_timer_expires_with_backoff() {
        let t0 = Instant::now();
        let (mut a, mut b) = (Arq::new(1 << 20), Arq::new(1 << 20));
        let bodies = frame(&mut a, b"tail", t0);
        deliver(&mut b, &bodies, &mut vec![0]);
        assert_eq!(b.take_ack(), None, "nothing arrived, nothing to say");
        let t1 = a.timer().unwrap();
        a.poll_timer(t1 - Duration::from_millis(1));
        assert!(a.take_resend(t1).is_empty(), "not yet");
        a.poll_timer(t1);
        let again = a.take_resend(t1);
        assert_eq!(again.len(), 1);
        let t2 = a.timer().unwrap();
        assert_eq!(t2 - t1, RTO_INITIAL * 2, "the timeout doubles");
        assert_eq!(deliver(&mut b, &again, &mut vec![]).len(), 1);
    }

    #[test]
    fn duplicates_are_dropped_and_acked_again() {
        let now = Instant::now();
        let (mut a, mut b) = (Arq::new(1 << 20), Arq::new(1 << 20));
        let bodies = frame(&mut a, b"once", now);
        assert_eq!(deliver(&mut b, &bodies, &mut vec![]).len(), 1);
        b.take_ack();
        assert!(deliver(&mut b, &bodies, &mut vec![]).is_empty());
        assert_eq!(b.take_ack(), Some((1, false)));
    }

    #[test]
    fn the_window_bounds_what_is_outstanding() {
        let now = Instant::now();
        let mut a = Arq::new(16 << 20);
        let mut n = 0;
        while a.room(SEG_BYTES) {
            a.push(0, &[0; SEG_BYTES], now);
            n += 1;
        }
        assert_eq!(n * SEG_BYTES, WINDOW_BYTES);
        a.on_ack(1, false, now);
        assert!(a.room(SEG_BYTES));
        assert!(
            !a.on_ack(n as u64 + 5, false, now),
            "an ack beyond what was sent is ignored"
        );
    }

    #[test]
    fn fin_and_abort_are_numbered_like_data() {
        let now = Instant::now();
        let (mut a, mut b) = (Arq::new(1 << 20), Arq::new(1 << 20));
        let first = a.push(0, b"half a fr", now);
        let abort = a.push(FLAG_ABORT, &[], now);
        let whole = a.push(FLAG_LAST, b"whole", now);
        let fin = a.push(FLAG_FIN, &[], now);
        // FIN overtakes nothing: it waits behind the lost `whole`.
        let got = deliver(&mut b, &[first, abort, fin.clone()], &mut vec![]);
        assert!(got.is_empty());
        let (seq, flags, p) = parse_segment(whole).unwrap();
        assert_eq!(
            b.on_segment(seq, flags, &p).unwrap(),
            Incoming::Frame(Bytes::from_static(b"whole")),
            "the aborted half frame is not glued to the next"
        );
        let (seq, flags, p) = parse_segment(fin).unwrap();
        assert_eq!(b.on_segment(seq, flags, &p).unwrap(), Incoming::Fin);
    }

    #[test]
    fn an_oversized_frame_is_an_error_and_bad_acks_do_not_parse() {
        let now = Instant::now();
        let (mut a, mut b) = (Arq::new(10), Arq::new(10));
        let body = a.push(0, &[1; 11], now);
        let (seq, flags, p) = parse_segment(body).unwrap();
        assert!(b.on_segment(seq, flags, &p).is_err());
        assert_eq!(parse_ack(&ack_body(9, true)), Some((9, true)));
        assert_eq!(parse_ack(&[0; 8]), None);
        assert_eq!(parse_ack(&[0, 0, 0, 0, 0, 0, 0, 0, 2]), None);
        assert_eq!(parse_segment(Bytes::from_static(&[0; 8])), None);
    }

    #[test]
    fn a_segment_refused_for_room_is_asked_for_again() {
        let now = Instant::now();
        let (mut a, mut b) = (Arq::new(1 << 20), Arq::new(1 << 20));
        let bodies = frame(&mut a, b"later", now);
        b.refuse(0);
        assert!(b.room_again());
        assert_eq!(b.take_ack(), Some((0, true)));
        a.on_ack(0, true, now);
        let again = a.take_resend(now);
        assert_eq!(again, bodies);
    }
}
