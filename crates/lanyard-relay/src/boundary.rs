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
//! may have taken frames the server already holds).

use lanyard_proto::ble::Codec;
use lanyard_proto::reassembly::Frame;
pub use lanyard_proto::wire::limits::MAX_UTTERANCE_FRAMES;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct BoundaryConfig {
    /// BLE silence that ends an utterance. 1.5 s is longer than a breath
    /// between clauses and short enough for a reply within seconds.
    pub silence_timeout_ms: u64,
    /// The most frames one utterance holds; the next frame starts a new one.
    /// [`MAX_UTTERANCE_FRAMES`], the server's limit, by default.
    pub max_frames: u32,
}

impl Default for BoundaryConfig {
    fn default() -> Self {
        Self { silence_timeout_ms: 1500, max_frames: MAX_UTTERANCE_FRAMES }
    }
}

/// What the tracker tells the shell to do with the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Begin { id: Uuid, codec: Codec },
    Frame { id: Uuid, data: Vec<u8> },
    End { id: Uuid },
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
                out.push(Step::Begin { id, codec: frame.codec });
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

    /// The server heard speech stop in `id`. Ends it if it is the current
    /// utterance and no start marker opened it (an Omi pendant); the next
    /// frame starts a new one.
    pub fn on_endpoint(&mut self, id: Uuid, out: &mut Vec<Step>) {
        if self.current.is_some_and(|(c, _)| c == id) && !self.marked {
            self.end(out);
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
                Step::Begin { id: a, codec: Codec::Opus16k20ms },
                Step::Frame { id: a, data: b"a".to_vec() },
                Step::Frame { id: a, data: b"b".to_vec() },
                Step::End { id: a },
                Step::Begin { id: b, codec: Codec::Opus16k20ms },
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
        t.on_endpoint(Uuid::from_u128(9), &mut out);
        assert_eq!(out.len(), 2, "an endpoint for another utterance changes nothing");
        t.on_endpoint(Uuid::from_u128(1), &mut out);
        assert_eq!(out[2], Step::End { id: Uuid::from_u128(1) });
        t.on_frame(frame(false, false, b"b"), 20, || ids.next().unwrap(), &mut out);
        assert_eq!(out[3], Step::Begin { id: Uuid::from_u128(2), codec: Codec::Opus16k20ms });
        // A marked utterance stays whole through a pause the server heard.
        out.clear();
        t.on_frame(frame(true, false, b"c"), 40, || ids.next().unwrap(), &mut out);
        let marked = t.current().unwrap();
        t.on_endpoint(marked, &mut out);
        assert_eq!(t.current(), Some(marked));
        assert!(!out.contains(&Step::End { id: marked }), "{out:?}");
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
                Step::Begin { id: a, codec: opus },
                Step::Frame { id: a, data: b"a".to_vec() },
                Step::Frame { id: a, data: b"b".to_vec() },
                Step::End { id: a },
                Step::Begin { id: b, codec: opus },
                Step::Frame { id: b, data: b"c".to_vec() },
                Step::Frame { id: b, data: b"d".to_vec() },
                Step::End { id: b },
                Step::Begin { id: c, codec: opus },
                Step::Frame { id: c, data: b"e".to_vec() },
            ]
        );
        // Marked from the start, so the continuation is too: the server's
        // endpoint leaves it alone.
        t.on_endpoint(c, &mut out);
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
        assert_eq!(out[1], Step::Begin { id: Uuid::from_u128(8), codec: opus });
        t.on_endpoint(Uuid::from_u128(8), &mut out);
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
        assert_eq!(out[1], Step::Begin { id: Uuid::from_u128(8), codec: Codec::Opus16k20ms });
    }
}
