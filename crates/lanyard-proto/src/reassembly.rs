//! Turns BLE notifications back into codec frames, for either framing.
//!
//! The reassembler is a sans-I/O state machine: feed it notification bytes
//! with [`Reassembler::push`], get complete frames back. It never panics on
//! input and holds at most one partial frame ([`MAX_FRAME_LEN`] bytes), so a
//! misbehaving pendant cannot make the phone grow memory.
//!
//! What it does with imperfect links:
//! - **duplicates** (the same frame sequence number again, which BLE stacks
//!   produce after a reconnect) are dropped and counted;
//! - **gaps** in the frame sequence are counted as lost frames;
//! - a frame whose fragments arrive incomplete is dropped and counted.

use crate::ble::{self, Codec, FrameError, MAX_FRAME_LEN, seq_distance};
use crate::omi::{self, OmiCodec};

/// A complete codec frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The pendant's frame sequence number (wrapping). For Omi, which numbers
    /// notifications rather than frames, this is the packet index of the
    /// frame's first notification.
    pub seq: u16,
    pub codec: Codec,
    /// First frame of an utterance (Lanyard framing only).
    pub start: bool,
    /// Last frame of an utterance (Lanyard framing only).
    pub end: bool,
    pub data: Vec<u8>,
}

/// Counters of what the link did wrong, for the loss report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    pub notifications: u64,
    pub frames: u64,
    /// Notifications that did not parse.
    pub malformed: u64,
    /// Frames dropped because they repeated an earlier sequence number.
    pub duplicates: u64,
    /// Frames (Lanyard) or notifications (Omi) missing from the sequence.
    pub lost: u64,
    /// Frames dropped because some of their fragments never arrived.
    pub incomplete: u64,
}

/// The framing-specific half of the reassembler.
#[derive(Debug)]
enum Mode {
    Lanyard { pending: Option<Pending> },
    Omi { codec: Codec, pending: Option<Pending>, last_index: Option<u16> },
}

#[derive(Debug)]
struct Pending {
    seq: u16,
    codec: Codec,
    start: bool,
    end: bool,
    next_fragment: u8,
    data: Vec<u8>,
}

/// Why a notification was rejected. The reassembler also counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Omi(#[from] omi::OmiError),
    #[error("fragment {got} of frame {seq} arrived out of order (expected {expected})")]
    OutOfOrderFragment { seq: u16, expected: u8, got: u8 },
    #[error("frame {seq} grew past {MAX_FRAME_LEN} bytes")]
    FrameTooLong { seq: u16 },
}

/// See the module doc.
#[derive(Debug)]
pub struct Reassembler {
    mode: Mode,
    last_seq: Option<u16>,
    stats: LinkStats,
}

impl Reassembler {
    /// A reassembler for Lanyard's own framing.
    pub fn lanyard() -> Self {
        Self { mode: Mode::Lanyard { pending: None }, last_seq: None, stats: LinkStats::default() }
    }

    /// A reassembler for Omi framing. `codec` is what the pendant's codec
    /// characteristic says; only codecs the relay can carry are accepted.
    pub fn omi(codec: OmiCodec) -> Option<Self> {
        Some(Self {
            mode: Mode::Omi { codec: codec.to_lanyard()?, pending: None, last_index: None },
            last_seq: None,
            stats: LinkStats::default(),
        })
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Forgets sequence history, for a new BLE connection: a rebooted pendant
    /// restarts its numbering and must not be mistaken for duplicates.
    pub fn reset_link(&mut self) {
        self.last_seq = None;
        match &mut self.mode {
            Mode::Lanyard { pending } => *pending = None,
            Mode::Omi { pending, last_index, .. } => {
                *pending = None;
                *last_index = None;
            }
        }
    }

    /// Feeds one notification. Returns the frame it completed, if any.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Frame>, ReassemblyError> {
        self.stats.notifications += 1;
        let result = match &mut self.mode {
            Mode::Lanyard { pending } => Self::push_lanyard(pending, &mut self.stats, bytes),
            Mode::Omi { codec, pending, last_index } => {
                Self::push_omi(*codec, pending, last_index, &mut self.stats, bytes)
            }
        };
        match result {
            Ok(Some(frame)) => Ok(self.accept(frame)),
            Ok(None) => Ok(None),
            Err(e) => {
                match e {
                    ReassemblyError::OutOfOrderFragment { .. } | ReassemblyError::FrameTooLong { .. } => {
                        self.stats.incomplete += 1
                    }
                    _ => self.stats.malformed += 1,
                }
                Err(e)
            }
        }
    }

    /// Completes a frame held back by the framing, if any. Omi only knows a
    /// frame is whole when the next one starts, so the relay calls this when
    /// the link goes quiet.
    pub fn flush(&mut self) -> Option<Frame> {
        let frame = match &mut self.mode {
            Mode::Lanyard { .. } => None,
            Mode::Omi { pending, .. } => pending.take().map(Pending::into_frame),
        }?;
        self.accept(frame)
    }

    /// Applies sequence accounting to a completed frame.
    fn accept(&mut self, frame: Frame) -> Option<Frame> {
        if let Some(last) = self.last_seq {
            let d = seq_distance(last, frame.seq);
            if d <= 0 && !frame.start {
                self.stats.duplicates += 1;
                return None;
            }
            // For Omi the distance counts notifications, and the frame that
            // preceded this one spanned some of them; lost notifications were
            // already counted where the gap was seen.
            if d > 1 && matches!(self.mode, Mode::Lanyard { .. }) && !frame.start {
                self.stats.lost += (d - 1) as u64;
            }
        }
        self.last_seq = Some(frame.seq);
        self.stats.frames += 1;
        Some(frame)
    }

    fn push_lanyard(
        pending: &mut Option<Pending>,
        stats: &mut LinkStats,
        bytes: &[u8],
    ) -> Result<Option<Frame>, ReassemblyError> {
        let n = ble::parse(bytes)?;
        if n.fragment == 0 {
            // A new frame; a previous one still pending lost its tail.
            if pending.take().is_some() {
                stats.incomplete += 1;
            }
            *pending = Some(Pending {
                seq: n.seq,
                codec: n.codec,
                start: n.start,
                end: n.end,
                next_fragment: 1,
                data: n.payload.to_vec(),
            });
        } else {
            let Some(p) = pending.as_mut().filter(|p| p.seq == n.seq && p.next_fragment == n.fragment) else {
                let expected = pending.as_ref().map_or(0, |p| p.next_fragment);
                *pending = None;
                return Err(ReassemblyError::OutOfOrderFragment { seq: n.seq, expected, got: n.fragment });
            };
            if p.data.len() + n.payload.len() > MAX_FRAME_LEN {
                let seq = p.seq;
                *pending = None;
                return Err(ReassemblyError::FrameTooLong { seq });
            }
            p.data.extend_from_slice(n.payload);
            p.next_fragment += 1;
            p.start |= n.start;
            p.end |= n.end;
        }
        Ok(Self::finish_lanyard(pending, n.more))
    }

    fn finish_lanyard(pending: &mut Option<Pending>, more: bool) -> Option<Frame> {
        if more { None } else { pending.take().map(Pending::into_frame) }
    }

    fn push_omi(
        codec: Codec,
        pending: &mut Option<Pending>,
        last_index: &mut Option<u16>,
        stats: &mut LinkStats,
        bytes: &[u8],
    ) -> Result<Option<Frame>, ReassemblyError> {
        let n = omi::parse(bytes)?;
        if let Some(last) = *last_index {
            let d = seq_distance(last, n.index);
            if d <= 0 {
                // A repeated notification: drop it without touching state.
                stats.duplicates += 1;
                return Ok(None);
            }
            if d > 1 {
                stats.lost += (d - 1) as u64;
                // The pending frame may have lost its tail: drop it unless
                // this notification starts a new frame, in which case the
                // missing notifications were whole frames of their own.
                if n.sub_index != 0 && pending.take().is_some() {
                    stats.incomplete += 1;
                }
            }
        }
        *last_index = Some(n.index);
        if n.sub_index == 0 {
            let done = pending.take().map(Pending::into_frame);
            *pending = Some(Pending {
                seq: n.index,
                codec,
                start: false,
                end: false,
                next_fragment: 1,
                data: n.payload.to_vec(),
            });
            return Ok(done);
        }
        match pending.as_mut() {
            Some(p) if p.next_fragment == n.sub_index && p.data.len() + n.payload.len() <= MAX_FRAME_LEN => {
                p.data.extend_from_slice(n.payload);
                p.next_fragment = p.next_fragment.wrapping_add(1);
                Ok(None)
            }
            Some(p) if p.next_fragment == n.sub_index => {
                let seq = p.seq;
                *pending = None;
                Err(ReassemblyError::FrameTooLong { seq })
            }
            // A continuation whose start we never saw: nothing to attach it to.
            _ => {
                *pending = None;
                stats.incomplete += 1;
                Ok(None)
            }
        }
    }
}

impl Pending {
    fn into_frame(self) -> Frame {
        Frame { seq: self.seq, codec: self.codec, start: self.start, end: self.end, data: self.data }
    }
}
