//! Turns BLE notifications back into codec frames, for either framing.
//!
//! The reassembler is a sans-I/O state machine: feed it notification bytes
//! with [`Reassembler::push`], get complete frames back. It never panics on
//! input and holds at most one partial frame ([`MAX_FRAME_LEN`] bytes), so a
//! misbehaving pendant cannot make the phone grow memory.
//!
//! It never emits a frame it cannot prove whole, and never emits the same
//! frame twice. What it does with imperfect links, and how [`LinkStats`]
//! counts it:
//!
//! - **duplicates**: a notification that repeats one already received (BLE
//!   stacks produce them after a reconnect) is dropped, and each dropped copy
//!   counts once in `duplicates`. In Lanyard framing that is any notification
//!   of a frame whose sequence number is not ahead of the last frame
//!   delivered, or a fragment the pending frame already has; in Omi framing,
//!   any notification whose packet index is not ahead of the last one seen.
//! - **incomplete frames**: a frame of which some but not all notifications
//!   arrived is dropped and counted once in `incomplete`, however many of its
//!   notifications follow the hole (those are dropped silently).
//! - **lost**: Lanyard counts every frame missing between two delivered
//!   frames (the gap in their sequence numbers), so incomplete frames count
//!   both as lost and as incomplete: `lost` is what the utterance lacks,
//!   `incomplete` how much of that arrived in part. Omi numbers
//!   notifications, not frames, so there `lost` counts missing notifications.
//!
//! The Lanyard framing says when a frame is whole (the fragment without
//! MORE). Omi does not: a frame is whole when the next frame's first
//! notification (sub-index 0) arrives with no packet index missing in
//! between, or, for the last frame before the link goes quiet, when the relay
//! calls [`Reassembler::flush`]. After any missing packet index the pending
//! Omi frame is dropped, because the missing notification may have been its
//! tail.
//!
//! Sequence history is per BLE connection: call [`Reassembler::reset_link`]
//! on reconnect, since the pendant then numbers afresh.
//!
//! **Reordering** (Lanyard framing): a whole frame that arrives ahead of a
//! gap is held, up to [`REORDER_WINDOW`] frames, in case the missing ones
//! are only late. When the gap fills, the held frames follow in order. When
//! the window overflows, or the relay calls [`Reassembler::flush`] because
//! the link went quiet, the held frames are released in order and the
//! frames still missing are counted as lost. A frame [`Reassembler::push`]
//! releases beyond the first is queued: take it with
//! [`Reassembler::pop_ready`]. Fragments of different frames must not
//! interleave (the pendant never does that); a frame whose fragments do is
//! dropped as incomplete.

use std::collections::VecDeque;

use crate::ble::{self, Codec, FrameError, MAX_FRAME_LEN, seq_distance};

/// Most frames held while waiting for a gap to fill: 4 frames are 80 ms of
/// audio, more than any BLE retransmission delay, and bound the memory a
/// pendant can make the phone hold to 4 x [`MAX_FRAME_LEN`].
pub const REORDER_WINDOW: usize = 4;
use crate::omi::{self, OmiCodec};

/// A complete codec frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The pendant's frame sequence number (wrapping). For Omi, which numbers
    /// notifications rather than frames, this is the packet index of the
    /// frame's first notification.
    pub seq: u16,
    /// Codec of `data`: from the notification header (Lanyard) or the codec
    /// characteristic (Omi).
    pub codec: Codec,
    /// First frame of an utterance (Lanyard framing only).
    pub start: bool,
    /// Last frame of an utterance (Lanyard framing only).
    pub end: bool,
    /// The whole codec frame.
    pub data: Vec<u8>,
}

/// Counters of what the link did wrong, for the loss report. The module doc
/// defines each precisely.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    /// Notifications pushed, whatever became of them.
    pub notifications: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Notifications that did not parse.
    pub malformed: u64,
    /// Notifications dropped because they repeated one already received.
    pub duplicates: u64,
    /// Frames (Lanyard) or notifications (Omi) missing from the sequence,
    /// incomplete frames included.
    pub lost: u64,
    /// Frames dropped because some, but not all, of their notifications arrived.
    pub incomplete: u64,
}

/// Why a notification was rejected. The reassembler also counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Omi(#[from] omi::OmiError),
    #[error("fragment {got} of frame {seq} arrived out of order (expected {expected}); the frame is dropped")]
    OutOfOrderFragment { seq: u16, expected: u8, got: u8 },
    #[error("frame {seq} grew past {MAX_FRAME_LEN} bytes or 256 fragments; the frame is dropped")]
    FrameTooLong { seq: u16 },
}

/// A frame being put together.
#[derive(Debug)]
struct Pending {
    /// Lanyard: the frame's sequence number. Omi: packet index of its first notification.
    seq: u16,
    codec: Codec,
    start: bool,
    end: bool,
    /// Lanyard: fragment index of the last piece appended. Omi: its sub-index.
    last_fragment: u8,
    data: Vec<u8>,
}

impl Pending {
    fn into_frame(self) -> Frame {
        Frame { seq: self.seq, codec: self.codec, start: self.start, end: self.end, data: self.data }
    }
}

/// The frame in progress, if any.
#[derive(Debug, Default)]
enum Current {
    /// Between frames.
    #[default]
    Idle,
    /// Collecting a frame.
    Pending(Pending),
    /// Dropping what is left of an incomplete frame, already counted. Holds
    /// the frame's sequence number (Lanyard) or the packet index of the last
    /// notification seen (Omi), and the last fragment or sub-index seen, so
    /// that repeats and further pieces of the same frame are recognised.
    Discarding { seq: u16, fragment: u8 },
}

/// The framing-specific part of the state.
#[derive(Debug)]
enum Mode {
    Lanyard,
    Omi {
        /// What the codec characteristic said, mapped to a Lanyard codec.
        codec: Codec,
        /// Packet index of the last notification accepted, for duplicate and
        /// gap detection.
        last_index: Option<u16>,
    },
}

/// See the module doc.
#[derive(Debug)]
pub struct Reassembler {
    mode: Mode,
    current: Current,
    /// Sequence number of the last frame delivered: anything not ahead of it
    /// is a repeat.
    last_seq: Option<u16>,
    /// Frames ahead of a gap, sorted by sequence (Lanyard only).
    held: Vec<Frame>,
    /// Frames released, beyond the one `push` or `flush` returned.
    ready: VecDeque<Frame>,
    stats: LinkStats,
}

impl Default for Reassembler {
    fn default() -> Self {
        Self::lanyard()
    }
}

impl Reassembler {
    /// A reassembler for Lanyard's own framing.
    pub fn lanyard() -> Self {
        Self::with_mode(Mode::Lanyard)
    }

    /// A reassembler for Omi framing. `codec` is what the pendant's codec
    /// characteristic says; only codecs the relay can carry are accepted.
    pub fn omi(codec: OmiCodec) -> Option<Self> {
        Some(Self::with_mode(Mode::Omi { codec: codec.to_lanyard()?, last_index: None }))
    }

    fn with_mode(mode: Mode) -> Self {
        Self {
            mode,
            current: Current::Idle,
            last_seq: None,
            held: Vec::new(),
            ready: VecDeque::new(),
            stats: LinkStats::default(),
        }
    }

    /// The next frame released by the last `push` or `flush`, if more than
    /// one was. Call it until `None` after each of them.
    pub fn pop_ready(&mut self) -> Option<Frame> {
        self.ready.pop_front()
    }

    /// What the link did so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Forgets sequence history, for a new BLE connection: a reconnected
    /// pendant restarts its numbering and must not be mistaken for
    /// duplicates. A frame in progress is dropped without being counted, since
    /// nothing says whether its rest was sent. The counters are kept.
    pub fn reset_link(&mut self) {
        // Frames held for a reorder are whole: release them, with their gaps.
        self.release_held();
        self.last_seq = None;
        self.current = Current::Idle;
        if let Mode::Omi { last_index, .. } = &mut self.mode {
            *last_index = None;
        }
    }

    /// Feeds one notification. Returns the frame it completed, if any.
    ///
    /// An `Err` says why this notification was rejected; it is already
    /// counted, and the reassembler stays usable.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Frame>, ReassemblyError> {
        self.stats.notifications += 1;
        let result = match self.mode {
            Mode::Lanyard => self.push_lanyard(bytes),
            Mode::Omi { codec, .. } => self.push_omi(codec, bytes),
        };
        match result {
            Ok(Some(frame)) => Ok(self.deliver(frame)),
            Ok(None) => Ok(None),
            Err(e @ (ReassemblyError::Frame(_) | ReassemblyError::Omi(_))) => {
                self.stats.malformed += 1;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Releases what the link going quiet makes final; the relay calls it
    /// then. Omi only knows a frame is whole when the next one starts, so its
    /// pending frame is completed. Lanyard releases the frames held for a
    /// reorder, counting the gap before them as lost (further frames: see
    /// [`Reassembler::pop_ready`]); a partial Lanyard frame is kept, since
    /// its remaining fragments may still come.
    pub fn flush(&mut self) -> Option<Frame> {
        if !matches!(self.mode, Mode::Omi { .. }) {
            self.release_held();
            return self.ready.pop_front();
        }
        match std::mem::take(&mut self.current) {
            Current::Pending(p) => self.deliver(p.into_frame()),
            other => {
                self.current = other;
                None
            }
        }
    }

    /// Counts a frame dropped as incomplete.
    fn incomplete(&mut self) {
        self.stats.incomplete += 1;
    }

    /// Applies sequence accounting to a completed frame and hands it out,
    /// holding it if it came ahead of a gap (Lanyard).
    fn deliver(&mut self, frame: Frame) -> Option<Frame> {
        if let Some(last) = self.last_seq.filter(|_| matches!(self.mode, Mode::Lanyard)) {
            let d = seq_distance(last, frame.seq);
            if d > 1 {
                if self.held.iter().any(|h| h.seq == frame.seq) {
                    self.stats.duplicates += 1;
                    return None;
                }
                let at = self.held.partition_point(|h| seq_distance(last, h.seq) < d);
                self.held.insert(at, frame);
                if self.held.len() > REORDER_WINDOW {
                    // The gap is not late, it is lost.
                    self.release_held();
                    return self.ready.pop_front();
                }
                return None;
            }
            if d == 1 {
                let out = self.emit(frame);
                // The gap filled: the held frames that now follow, in order.
                while self.last_seq.is_some_and(|l| self.held.first().is_some_and(|h| seq_distance(l, h.seq) == 1)) {
                    let next = self.held.remove(0);
                    let f = self.emit(next);
                    self.ready.extend(f);
                }
                return out;
            }
        }
        self.emit(frame)
    }

    /// Releases every held frame in order, counting the gaps before them.
    fn release_held(&mut self) {
        for frame in std::mem::take(&mut self.held) {
            let f = self.emit(frame);
            self.ready.extend(f);
        }
    }

    /// Hands a frame out: the sequence accounting of [`Self::deliver`].
    fn emit(&mut self, frame: Frame) -> Option<Frame> {
        if let Some(last) = self.last_seq {
            let d = seq_distance(last, frame.seq);
            if d <= 0 {
                // Unreachable for Lanyard, which drops repeats notification
                // by notification; kept as the last line of defence.
                self.stats.duplicates += 1;
                return None;
            }
            // Omi counts lost notifications where it sees the gap.
            if matches!(self.mode, Mode::Lanyard) {
                self.stats.lost += (d - 1) as u64;
            }
        }
        self.last_seq = Some(frame.seq);
        self.stats.frames += 1;
        Some(frame)
    }

    fn push_lanyard(&mut self, bytes: &[u8]) -> Result<Option<Frame>, ReassemblyError> {
        let n = ble::parse(bytes)?;
        if self.last_seq.is_some_and(|last| seq_distance(last, n.seq) <= 0) || self.held.iter().any(|h| h.seq == n.seq)
        {
            // A piece of a frame already delivered, or held for a reorder.
            self.stats.duplicates += 1;
            return Ok(None);
        }
        match &mut self.current {
            Current::Pending(p) if p.seq == n.seq => {
                if n.fragment <= p.last_fragment {
                    self.stats.duplicates += 1;
                    return Ok(None);
                }
                // No overflow: a pending frame never holds fragment 255,
                // which must be the last (checked below).
                let expected = p.last_fragment.wrapping_add(1);
                if n.fragment != expected {
                    // A hole in the middle of the frame.
                    self.current = Current::Discarding { seq: n.seq, fragment: n.fragment };
                    self.incomplete();
                    return Err(ReassemblyError::OutOfOrderFragment { seq: n.seq, expected, got: n.fragment });
                }
                if p.data.len() + n.payload.len() > MAX_FRAME_LEN || (n.more && n.fragment == u8::MAX) {
                    self.current = Current::Discarding { seq: n.seq, fragment: n.fragment };
                    self.incomplete();
                    return Err(ReassemblyError::FrameTooLong { seq: n.seq });
                }
                p.data.extend_from_slice(n.payload);
                p.last_fragment = n.fragment;
                p.start |= n.start;
                p.end |= n.end;
            }
            Current::Discarding { seq, fragment } if *seq == n.seq => {
                if n.fragment <= *fragment {
                    self.stats.duplicates += 1;
                } else {
                    *fragment = n.fragment;
                }
                return Ok(None);
            }
            _ => {
                // A notification of a new frame: whatever was pending lost its tail.
                if matches!(self.current, Current::Pending(_)) {
                    self.incomplete();
                }
                if n.fragment != 0 {
                    // A frame whose first fragment never came.
                    self.current = Current::Discarding { seq: n.seq, fragment: n.fragment };
                    self.incomplete();
                    return Err(ReassemblyError::OutOfOrderFragment { seq: n.seq, expected: 0, got: n.fragment });
                }
                self.current = Current::Pending(Pending {
                    seq: n.seq,
                    codec: n.codec,
                    start: n.start,
                    end: n.end,
                    last_fragment: 0,
                    data: n.payload.to_vec(),
                });
            }
        }
        if n.more {
            return Ok(None);
        }
        match std::mem::take(&mut self.current) {
            Current::Pending(p) => Ok(Some(p.into_frame())),
            _ => unreachable!("a pending frame was just updated"),
        }
    }

    fn push_omi(&mut self, codec: Codec, bytes: &[u8]) -> Result<Option<Frame>, ReassemblyError> {
        let n = omi::parse(bytes)?;
        let Mode::Omi { last_index, .. } = &mut self.mode else { unreachable!("called in Omi mode") };
        let gap = match *last_index {
            Some(last) => {
                let d = seq_distance(last, n.index);
                if d <= 0 {
                    self.stats.duplicates += 1;
                    return Ok(None);
                }
                d - 1
            }
            None => 0,
        };
        *last_index = Some(n.index);
        self.stats.lost += gap as u64;

        if n.sub_index == 0 {
            // A new frame starts. The pending one is whole only if nothing
            // went missing in between.
            let done = match std::mem::take(&mut self.current) {
                Current::Pending(p) if gap == 0 => Some(p.into_frame()),
                Current::Pending(_) => {
                    self.incomplete();
                    None
                }
                _ => None,
            };
            self.current = Current::Pending(Pending {
                seq: n.index,
                codec,
                start: false,
                end: false,
                last_fragment: 0,
                data: n.payload.to_vec(),
            });
            return Ok(done);
        }

        // A continuation. Does it belong to the frame in progress? Its
        // sub-index must have advanced by exactly as many packet indices.
        let (cur_index, cur_sub) = match &self.current {
            Current::Pending(p) => (p.seq.wrapping_add(u16::from(p.last_fragment)), p.last_fragment),
            Current::Discarding { seq, fragment } => (*seq, *fragment),
            Current::Idle => {
                self.current = Current::Discarding { seq: n.index, fragment: n.sub_index };
                self.incomplete();
                return Ok(None);
            }
        };
        let same_frame = i32::from(n.sub_index) - i32::from(cur_sub) == seq_distance(cur_index, n.index);
        match &mut self.current {
            Current::Pending(p) if same_frame && gap == 0 => {
                if p.data.len() + n.payload.len() > MAX_FRAME_LEN {
                    let seq = p.seq;
                    self.current = Current::Discarding { seq: n.index, fragment: n.sub_index };
                    self.incomplete();
                    return Err(ReassemblyError::FrameTooLong { seq });
                }
                p.data.extend_from_slice(n.payload);
                p.last_fragment = n.sub_index;
                Ok(None)
            }
            Current::Discarding { .. } if same_frame => {
                self.current = Current::Discarding { seq: n.index, fragment: n.sub_index };
                Ok(None)
            }
            _ => {
                // Either the pending frame lost a middle piece (counted once
                // here), or this is a new frame whose start never came
                // (counted as its own incomplete frame).
                if matches!(self.current, Current::Pending(_)) {
                    self.incomplete();
                }
                if !same_frame {
                    self.incomplete();
                }
                self.current = Current::Discarding { seq: n.index, fragment: n.sub_index };
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::{FrameSpec, Notification};

    fn note(seq: u16, fragment: u8, more: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let n = Notification { seq, fragment, codec: Codec::Pcm16k, start: false, end: false, more, payload };
        ble::encode(&n, &mut out);
        out
    }

    /// 256 empty fragments that all say MORE used to overflow the fragment
    /// counter; the frame is now refused as too long.
    #[test]
    fn fragment_255_with_more_is_too_long() {
        let mut r = Reassembler::lanyard();
        for i in 0..=254u8 {
            assert_eq!(r.push(&note(1, i, true, &[])), Ok(None));
        }
        assert_eq!(r.push(&note(1, 255, true, &[])), Err(ReassemblyError::FrameTooLong { seq: 1 }));
        assert_eq!(r.stats().incomplete, 1);
        assert_eq!(r.push(&note(2, 0, false, &[9])).unwrap().unwrap().data, vec![9]);
    }

    /// The largest frame fills all 256 fragments of a minimum-MTU link.
    #[test]
    fn largest_frame_at_minimum_mtu() {
        let data = vec![0x5a; MAX_FRAME_LEN];
        let spec = FrameSpec { seq: 0xffff, codec: Codec::Pcm16k, start: true, end: true, data: &data };
        let notes = ble::packetize(&spec, ble::MIN_ATT_MTU).unwrap();
        assert_eq!(notes.len(), ble::MAX_FRAGMENTS);
        let mut r = Reassembler::lanyard();
        let frames: Vec<Frame> = notes.iter().filter_map(|n| r.push(n).unwrap()).collect();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].data, data);
    }

    /// An Omi frame whose last notification is lost must not be delivered
    /// truncated when the next frame starts.
    #[test]
    fn omi_frame_missing_its_tail_is_dropped() {
        let mut r = Reassembler::omi(OmiCodec::OpusFs320).unwrap();
        let a = omi::packetize(10, &[1; 30], 23); // indices 10, 11
        let b = omi::packetize(12, &[2; 5], 23); // index 12
        assert_eq!(r.push(&a[0]), Ok(None));
        assert_eq!(r.push(&b[0]), Ok(None));
        assert_eq!(r.flush().map(|f| f.data), Some(vec![2; 5]));
        let s = r.stats();
        assert_eq!((s.frames, s.incomplete, s.lost), (1, 1, 1));
    }

    /// A repeated START frame is a duplicate like any other.
    #[test]
    fn repeated_start_frame_is_a_duplicate() {
        let spec = FrameSpec { seq: 5, codec: Codec::Opus16k20ms, start: true, end: false, data: &[1, 2] };
        let n = ble::packetize(&spec, 23).unwrap().remove(0);
        let mut r = Reassembler::lanyard();
        assert!(r.push(&n).unwrap().is_some());
        assert_eq!(r.push(&n), Ok(None));
        assert_eq!(r.stats().duplicates, 1);
        r.reset_link();
        assert!(r.push(&n).unwrap().is_some(), "a new connection numbers afresh");
    }
}
