//! Utterance boundaries: which frames belong to which utterance.
//!
//! A Lanyard pendant marks the first and last frame of each utterance. Omi
//! pendants mark nothing, and any pendant may go out of range mid-sentence,
//! so an utterance also ends after [`BoundaryConfig::silence_timeout_ms`]
//! without BLE data.
//!
//! An Omi pendant also streams without pause, silence included, so BLE
//! silence never comes while it is on: there, the server's voice activity
//! detector says where speech stopped (`endpoint`), and
//! [`Tracker::on_endpoint`] ends an utterance that no start marker opened.
//! A pendant that marks its utterances knows better, and keeps them whole.
//!
//! The endpoint names the frame count the server had when it heard speech
//! stop (`k`), and it arrives later than that: by then the relay may have
//! spooled more frames of the utterance (`k..N`), often the onset of the
//! next sentence. Left there, the next utterance would start mid-word and
//! lose its first syllable. Instead the tracker carries them: it
//! begins the next utterance at once and tells the shell to copy frames
//! `k..N` of the ended one into it ([`Step::Carry`]), before anything the
//! pendant sends next. The ended utterance still holds (and the uplink
//! still sends) all `N` frames: what the server holds is never rewritten.
//! Its `end` (and its upload, if it is handed off) says `speech_frames: k`,
//! written down in the spool's END record so that it survives a kill, and
//! the server transcribes it only up to `k`: each frame is heard once. The
//! proptest below checks that against a model server.
//!
//! The server takes at most [`MAX_UTTERANCE_FRAMES`] frames (10 minutes) in
//! one utterance, and closes a stream that sends more (4002). An Omi pendant
//! in a quiet room never gives the server an endpoint, and a monologue can
//! outlast any limit, so an utterance that reaches
//! [`BoundaryConfig::max_frames`] ends there and the next frame starts the
//! next one (opened the way the full one was: by a marker or not, and as not
//! marked after an adopted one, whose opening is unknown).
//!
//! After a relay restart the spool may hold an utterance that never ended
//! (the app was killed while the user spoke). If the pendant carries on with
//! frames that do not start a new utterance, they are the rest of that one:
//! the tracker adopts it rather than splitting one sentence in two. Not after
//! an OS restart, though: `host::open` ends that utterance first (the crash
//! may have taken frames the server already holds). The host resumes an
//! adopted utterance as unmarked ([`Tracker::resume_unmarked`]) when the
//! spool's BEGIN record says no marker opened it, and so does the next
//! utterance of a carry (see above) that a kill cut short, which the host
//! finishes: a carry only ever follows an endpoint that ended an unmarked
//! utterance. Any other adopted utterance (a marked one, or one from a
//! spool older than the flag) counts as marked.

use lanyard_proto::ble::Codec;
use lanyard_proto::reassembly::Frame;
pub use lanyard_proto::wire::limits::MAX_UTTERANCE_FRAMES;
use uuid::Uuid;

/// The default [`BoundaryConfig::silence_timeout_ms`]: 1.5 s is longer than
/// a breath between clauses and short enough for a reply within seconds.
pub const DEFAULT_SILENCE_TIMEOUT_MS: u64 = 1500;

#[derive(Debug, Clone)]
pub struct BoundaryConfig {
    /// BLE silence that ends an utterance; [`DEFAULT_SILENCE_TIMEOUT_MS`] by
    /// default.
    pub silence_timeout_ms: u64,
    /// The most frames one utterance holds; the next frame starts a new one.
    /// [`MAX_UTTERANCE_FRAMES`], the server's limit, by default.
    pub max_frames: u32,
}

impl Default for BoundaryConfig {
    fn default() -> Self {
        Self { silence_timeout_ms: DEFAULT_SILENCE_TIMEOUT_MS, max_frames: MAX_UTTERANCE_FRAMES }
    }
}

/// What the tracker tells the shell to do with the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A new utterance; `unmarked` if no start marker opened it (the
    /// spool keeps that, and the server answers such an utterance only if
    /// it holds speech).
    Begin {
        id: Uuid,
        codec: Codec,
        unmarked: bool,
    },
    Frame {
        id: Uuid,
        data: Vec<u8>,
    },
    /// Append copies of frames `frames` of the ended utterance `from` to
    /// `id`, in order, each as a [`Step::Frame`] would be: the frames the
    /// relay spooled after the server's endpoint (see the module doc). It
    /// comes right after `id`'s `Begin`.
    Carry {
        from: Uuid,
        id: Uuid,
        frames: std::ops::Range<u32>,
    },
    End {
        id: Uuid,
    },
}

#[derive(Debug)]
pub struct Tracker {
    cfg: BoundaryConfig,
    current: Option<(Uuid, Codec)>,
    /// The current utterance began with a start marker: its pendant marks
    /// boundaries, so the server's endpoints are not for it.
    marked: bool,
    /// The current utterance was adopted from the spool after a restart: it
    /// counts as marked, but how it was opened is unknown.
    adopted: bool,
    /// Frames in the current utterance.
    frames: u32,
    last_frame_ms: u64,
}

impl Tracker {
    /// `resumed` is the spool's unfinished utterance after a restart, if
    /// any, with the frames it holds.
    pub fn new(cfg: BoundaryConfig, resumed: Option<(Uuid, Codec, u32)>, now_ms: u64) -> Self {
        // An adopted utterance's start is unknown: treat it as marked, so
        // that only the pendant (or silence) ends it.
        Self {
            cfg,
            marked: resumed.is_some(),
            adopted: resumed.is_some(),
            current: resumed.map(|(id, codec, _)| (id, codec)),
            frames: resumed.map_or(0, |(_, _, frames)| frames),
            last_frame_ms: now_ms,
        }
    }

    /// Like [`Tracker::new`] resuming `resumed`, for an utterance known to
    /// have no start marker: the next utterance of a carry that a kill cut
    /// short, which the relay finished when it opened the spool again (see
    /// `host`). The server's endpoints end it, as before the kill.
    pub fn resume_unmarked(cfg: BoundaryConfig, resumed: (Uuid, Codec, u32), now_ms: u64) -> Self {
        Self { marked: false, adopted: false, ..Self::new(cfg, Some(resumed), now_ms) }
    }

    pub fn current(&self) -> Option<Uuid> {
        self.current.map(|(id, _)| id)
    }

    /// Routes one reassembled frame. `mint` makes a new utterance id.
    pub fn on_frame(&mut self, frame: Frame, now_ms: u64, mint: impl FnOnce() -> Uuid, out: &mut Vec<Step>) {
        self.last_frame_ms = now_ms;
        if frame.start || self.current.is_some_and(|(_, c)| c != frame.codec) {
            self.end(out);
        }
        // A full utterance goes on as a new one, opened as it was. (Not an
        // adopted one: if its pendant were an Omi, a continuation counted as
        // marked would ignore the endpoints of every one after it.)
        let full = self.current.is_some() && !frame.data.is_empty() && self.frames >= self.cfg.max_frames;
        let marked = if full { self.marked && !self.adopted } else { frame.start };
        if full {
            self.end(out);
        }
        let id = match self.current {
            Some((id, _)) => id,
            None => {
                let id = mint();
                self.current = Some((id, frame.codec));
                self.marked = marked;
                self.adopted = false;
                self.frames = 0;
                out.push(Step::Begin { id, codec: frame.codec, unmarked: !marked });
                id
            }
        };
        // An empty frame only carries a marker.
        if !frame.data.is_empty() {
            out.push(Step::Frame { id, data: frame.data });
            self.frames += 1;
        }
        if frame.end {
            self.end(out);
        }
    }

    /// Ends the current utterance if the link has been silent too long.
    pub fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Step>) {
        if self.current.is_some() && now_ms.saturating_sub(self.last_frame_ms) >= self.cfg.silence_timeout_ms {
            self.end(out);
        }
    }

    /// When the silence timeout would end the current utterance, if no frame
    /// comes first: the shell need not look before then.
    pub fn next_deadline(&self) -> Option<u64> {
        self.current.map(|_| self.last_frame_ms + self.cfg.silence_timeout_ms)
    }

    /// The server heard speech stop in `id` when it held `frames` of its
    /// frames. Ends it if it is the current utterance and no start marker
    /// opened it (an Omi pendant). If the utterance holds more than
    /// `frames` frames, the next one begins now, unmarked, with those past
    /// `frames` carried into it ([`Step::Carry`]); otherwise the next frame
    /// starts it. `mint` makes its id.
    pub fn on_endpoint(&mut self, id: Uuid, frames: u32, mint: impl FnOnce() -> Uuid, out: &mut Vec<Step>) {
        let Some((current, codec)) = self.current else { return };
        if current != id || self.marked {
            return;
        }
        let held = self.frames;
        self.end(out);
        if frames < held {
            let next = mint();
            // `held` is at most `max_frames`, so the carried frames fit.
            self.current = Some((next, codec));
            self.marked = false;
            self.adopted = false;
            self.frames = held - frames;
            out.push(Step::Begin { id: next, codec, unmarked: true });
            out.push(Step::Carry { from: id, id: next, frames: frames..held });
        }
    }

    /// Ends the current utterance now (the link is gone for good).
    pub fn end_now(&mut self, out: &mut Vec<Step>) {
        self.end(out);
    }

    fn end(&mut self, out: &mut Vec<Step>) {
        if let Some((id, _)) = self.current.take() {
            out.push(Step::End { id });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(start: bool, end: bool, data: &[u8]) -> Frame {
        Frame { seq: 0, codec: Codec::Opus16k20ms, start, end, data: data.to_vec() }
    }

    #[test]
    fn markers_and_silence_split_utterances() {
        let mut ids = (1..).map(Uuid::from_u128);
        let mut t = Tracker::new(BoundaryConfig::default(), None, 0);
        let mut out = vec![];
        t.on_frame(frame(true, false, b"a"), 0, || ids.next().unwrap(), &mut out);
        t.on_frame(frame(false, true, b"b"), 20, || ids.next().unwrap(), &mut out);
        // No start marker (Omi): a new utterance anyway, ended by silence.
        t.on_frame(frame(false, false, b"c"), 5000, || ids.next().unwrap(), &mut out);
        t.on_tick(6000, &mut out);
        assert!(out.iter().all(|s| !matches!(s, Step::End { id } if *id == Uuid::from_u128(2))));
        t.on_tick(6500, &mut out);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(
            out,
            vec![
                Step::Begin { id: a, codec: Codec::Opus16k20ms, unmarked: false },
                Step::Frame { id: a, data: b"a".to_vec() },
                Step::Frame { id: a, data: b"b".to_vec() },
                Step::End { id: a },
                Step::Begin { id: b, codec: Codec::Opus16k20ms, unmarked: true },
                Step::Frame { id: b, data: b"c".to_vec() },
                Step::End { id: b },
            ]
        );
    }

    #[test]
    fn a_server_endpoint_ends_only_an_unmarked_utterance() {
        let mut ids = (1..).map(Uuid::from_u128);
        let mut t = Tracker::new(BoundaryConfig::default(), None, 0);
        let mut out = vec![];
        // Omi: no markers. The endpoint ends it; the next frame is a new one.
        t.on_frame(frame(false, false, b"a"), 0, || ids.next().unwrap(), &mut out);
        t.on_endpoint(Uuid::from_u128(9), 0, || unreachable!(), &mut out);
        assert_eq!(out.len(), 2, "an endpoint for another utterance changes nothing");
        // The server had every frame: nothing to carry.
        t.on_endpoint(Uuid::from_u128(1), 1, || unreachable!(), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], Step::End { id: Uuid::from_u128(1) });
        t.on_frame(frame(false, false, b"b"), 20, || ids.next().unwrap(), &mut out);
        assert_eq!(out[3], Step::Begin { id: Uuid::from_u128(2), codec: Codec::Opus16k20ms, unmarked: true });
        // A marked utterance stays whole through a pause the server heard.
        out.clear();
        t.on_frame(frame(true, false, b"c"), 40, || ids.next().unwrap(), &mut out);
        let marked = t.current().unwrap();
        t.on_endpoint(marked, 0, || unreachable!(), &mut out);
        assert_eq!(t.current(), Some(marked));
        assert!(!out.contains(&Step::End { id: marked }), "{out:?}");
    }

    #[test]
    fn frames_spooled_after_the_endpoint_begin_the_next_utterance() {
        let mut ids = (1..).map(Uuid::from_u128);
        let mut t = Tracker::new(BoundaryConfig::default(), None, 0);
        let mut out = vec![];
        for (i, d) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            t.on_frame(frame(false, false, *d), i as u64 * 20, || ids.next().unwrap(), &mut out);
        }
        // The server heard speech stop after two frames; "c" and "d" came
        // while its message was on the way.
        out.clear();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        t.on_endpoint(a, 2, || ids.next().unwrap(), &mut out);
        let opus = Codec::Opus16k20ms;
        assert_eq!(
            out,
            vec![
                Step::End { id: a },
                Step::Begin { id: b, codec: opus, unmarked: true },
                Step::Carry { from: a, id: b, frames: 2..4 }
            ]
        );
        assert_eq!(t.current(), Some(b));
        // The pendant's next frame follows the carried ones, and the new
        // utterance counts them towards its limit and is unmarked: the
        // server's next endpoint ends it too.
        out.clear();
        t.on_frame(frame(false, false, b"e"), 100, || unreachable!(), &mut out);
        assert_eq!(out, vec![Step::Frame { id: b, data: b"e".to_vec() }]);
        assert_eq!(t.frames, 3);
        t.on_endpoint(b, 1, || ids.next().unwrap(), &mut out);
        assert_eq!(
            out[1..3],
            [Step::End { id: b }, Step::Begin { id: Uuid::from_u128(3), codec: opus, unmarked: true }]
        );
        assert_eq!(out[3], Step::Carry { from: b, id: Uuid::from_u128(3), frames: 1..3 });
        // A stale endpoint (for an utterance no longer current) carries nothing.
        out.clear();
        t.on_endpoint(a, 0, || unreachable!(), &mut out);
        t.on_endpoint(b, 0, || unreachable!(), &mut out);
        assert!(out.is_empty(), "{out:?}");
        // Nor does an endpoint that saw every frame, or more.
        let mut t = Tracker::new(BoundaryConfig::default(), None, 0);
        t.on_frame(frame(false, false, b"x"), 0, || Uuid::from_u128(10), &mut out);
        t.on_endpoint(Uuid::from_u128(10), 5, || unreachable!(), &mut out);
        assert_eq!(out.last(), Some(&Step::End { id: Uuid::from_u128(10) }));
        assert_eq!(t.current(), None);
    }

    #[test]
    fn a_marked_utterance_carries_nothing() {
        let mut t = Tracker::new(BoundaryConfig::default(), None, 0);
        let mut out = vec![];
        t.on_frame(frame(true, false, b"a"), 0, || Uuid::from_u128(1), &mut out);
        t.on_frame(frame(false, false, b"b"), 20, || unreachable!(), &mut out);
        out.clear();
        t.on_endpoint(Uuid::from_u128(1), 1, || unreachable!(), &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(t.current(), Some(Uuid::from_u128(1)));
        // Nor an adopted one (its opening is unknown: it counts as marked).
        let old = Uuid::from_u128(7);
        let mut t = Tracker::new(BoundaryConfig::default(), Some((old, Codec::Opus16k20ms, 3)), 0);
        t.on_endpoint(old, 1, || unreachable!(), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_full_utterance_goes_on_as_a_new_one_opened_as_it_was() {
        let cfg = BoundaryConfig { max_frames: 2, ..Default::default() };
        let mut ids = (1..).map(Uuid::from_u128);
        let mut t = Tracker::new(cfg.clone(), None, 0);
        let mut out = vec![];
        for (i, d) in [b"a", b"b", b"c", b"d", b"e"].iter().enumerate() {
            t.on_frame(frame(i == 0, false, *d), i as u64 * 20, || ids.next().unwrap(), &mut out);
        }
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let opus = Codec::Opus16k20ms;
        assert_eq!(
            out,
            vec![
                Step::Begin { id: a, codec: opus, unmarked: false },
                Step::Frame { id: a, data: b"a".to_vec() },
                Step::Frame { id: a, data: b"b".to_vec() },
                Step::End { id: a },
                Step::Begin { id: b, codec: opus, unmarked: false },
                Step::Frame { id: b, data: b"c".to_vec() },
                Step::Frame { id: b, data: b"d".to_vec() },
                Step::End { id: b },
                Step::Begin { id: c, codec: opus, unmarked: false },
                Step::Frame { id: c, data: b"e".to_vec() },
            ]
        );
        // Marked from the start, so the continuation is too: the server's
        // endpoint leaves it alone.
        t.on_endpoint(c, 0, || unreachable!(), &mut out);
        assert_eq!(t.current(), Some(c));
        // A marker-only frame on a full utterance does not open a new one.
        out.clear();
        t.on_frame(frame(false, false, b"f"), 200, || ids.next().unwrap(), &mut out);
        t.on_frame(frame(false, true, b""), 220, || unreachable!(), &mut out);
        assert_eq!(out, vec![Step::Frame { id: c, data: b"f".to_vec() }, Step::End { id: c }]);
        // An adopted utterance counts the frames the spool holds. How it was
        // opened is unknown, so its continuation is not taken as marked:
        // the server's endpoint ends it.
        let old = Uuid::from_u128(7);
        let mut t = Tracker::new(cfg, Some((old, opus, 2)), 0);
        out.clear();
        t.on_frame(frame(false, false, b"g"), 10, || Uuid::from_u128(8), &mut out);
        assert_eq!(out[0], Step::End { id: old });
        assert_eq!(out[1], Step::Begin { id: Uuid::from_u128(8), codec: opus, unmarked: true });
        t.on_endpoint(Uuid::from_u128(8), 1, || unreachable!(), &mut out);
        assert_eq!(out.last(), Some(&Step::End { id: Uuid::from_u128(8) }));
    }

    #[test]
    fn a_restarted_relay_adopts_the_unfinished_utterance() {
        let old = Uuid::from_u128(7);
        let mut t = Tracker::new(BoundaryConfig::default(), Some((old, Codec::Opus16k20ms, 1)), 0);
        let mut out = vec![];
        t.on_frame(frame(false, true, b"tail"), 10, || unreachable!(), &mut out);
        assert_eq!(out, vec![Step::Frame { id: old, data: b"tail".to_vec() }, Step::End { id: old }]);
    }

    #[test]
    fn a_start_marker_closes_an_adopted_utterance() {
        let old = Uuid::from_u128(7);
        let mut t = Tracker::new(BoundaryConfig::default(), Some((old, Codec::Opus16k20ms, 1)), 0);
        let mut out = vec![];
        t.on_frame(frame(true, false, b"x"), 10, || Uuid::from_u128(8), &mut out);
        assert_eq!(out[0], Step::End { id: old });
        assert_eq!(out[1], Step::Begin { id: Uuid::from_u128(8), codec: Codec::Opus16k20ms, unmarked: false });
    }

    /// What the pendant does, or the server says, next.
    #[derive(Debug, Clone)]
    enum Ev {
        /// A frame; `start` opens a marked utterance, `end` closes one.
        Frame { start: bool, end: bool },
        /// An endpoint for the current utterance (`stale`: the one before
        /// it) at `back` frames before the newest, or past it if negative.
        Endpoint { stale: bool, back: i64 },
    }

    fn ev() -> impl proptest::strategy::Strategy<Value = Ev> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (proptest::bool::weighted(0.05), proptest::bool::weighted(0.05))
                .prop_map(|(start, end)| Ev::Frame { start, end }),
            2 => (proptest::bool::weighted(0.2), -2i64..8).prop_map(|(stale, back)| Ev::Endpoint { stale, back }),
        ]
    }

    proptest::proptest! {
        /// Run against a model spool and a model server that transcribes an
        /// utterance whose `end` names `speech_frames` only up to there (and
        /// any other in full), the relay naming where each carry starts, as
        /// the host does: every frame the pendant sent is transcribed once,
        /// in order, and no utterance outgrows the limit.
        #[test]
        fn every_frame_is_transcribed_once_in_order(
            evs in proptest::collection::vec(ev(), 0..200),
            max_frames in 3u32..12,
        ) {
            use std::collections::HashMap;
            let cfg = BoundaryConfig { max_frames, ..Default::default() };
            let mut t = Tracker::new(cfg, None, 0);
            let mut next_id = 0u128;
            // The model spool: utterances in the order they began.
            let mut order: Vec<Uuid> = vec![];
            let mut spool: HashMap<Uuid, Vec<Vec<u8>>> = HashMap::new();
            // Where the server stops transcribing each utterance.
            let mut cut: HashMap<Uuid, u32> = HashMap::new();
            let mut sent: Vec<Vec<u8>> = vec![];
            for (i, e) in evs.into_iter().enumerate() {
                let mut out = vec![];
                let mut mint = || { next_id += 1; Uuid::from_u128(next_id) };
                match e {
                    Ev::Frame { start, end } => {
                        let data = (i as u32).to_le_bytes().to_vec();
                        sent.push(data.clone());
                        t.on_frame(Frame { seq: 0, codec: Codec::Opus16k20ms, start, end, data }, i as u64, &mut mint, &mut out);
                    }
                    Ev::Endpoint { stale, back } => {
                        let Some(current) = t.current() else { continue };
                        let pos = order.iter().position(|&u| u == current).unwrap();
                        let id = if stale && pos > 0 { order[pos - 1] } else { current };
                        let held = spool[&id].len() as i64;
                        let k = (held - back).max(0) as u32;
                        t.on_endpoint(id, k, &mut mint, &mut out);
                    }
                }
                for step in out {
                    match step {
                        Step::Begin { id, .. } => {
                            proptest::prop_assert!(spool.insert(id, vec![]).is_none());
                            order.push(id);
                        }
                        Step::Frame { id, data } => spool.get_mut(&id).unwrap().push(data),
                        Step::Carry { from, id, frames } => {
                            proptest::prop_assert!(spool[&id].is_empty(), "a carry comes first");
                            let copies = spool[&from][frames.start as usize..frames.end as usize].to_vec();
                            spool.get_mut(&id).unwrap().extend(copies);
                            // As the host does: `from`'s `end` says its
                            // speech stops where the carry starts.
                            cut.insert(from, frames.start);
                        }
                        Step::End { .. } => {}
                    }
                }
            }
            let mut heard: Vec<Vec<u8>> = vec![];
            for id in &order {
                let frames = &spool[id];
                proptest::prop_assert!(frames.len() as u32 <= max_frames);
                let upto = cut.get(id).map_or(frames.len(), |&k| (k as usize).min(frames.len()));
                heard.extend_from_slice(&frames[..upto]);
            }
            proptest::prop_assert_eq!(heard, sent);
        }
    }
}
