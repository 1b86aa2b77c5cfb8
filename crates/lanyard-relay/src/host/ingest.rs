//! The pendant side of the relay: a notification is reassembled, checked,
//! given to the boundary tracker, and its frame written to the spool before
//! [`super::PendantPort::event`] returns. Shared between the link's thread and the
//! relay's loop, under one lock. See "Endpoints" in [`super`] for carries.

use lanyard_proto::ble::Framing;
use lanyard_proto::opus_toc::check_frame;
use lanyard_proto::reassembly::{Frame, Reassembler};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{HostConfig, HostError, Stamped, now_ms};
use crate::boundary::{Step, Tracker};
use crate::link::LinkEvent;
use crate::spool::{Spool, SpoolError};
use crate::uplink::{Input, MALFORMED_FRAMES, RelayEvent};

/// A quiet link for this long completes a held-back Omi frame: two frame
/// periods, so a frame is never cut while its next notification is in flight.
const OMI_FLUSH_MS: u64 = 40;

/// The pendant side of the relay: everything a notification touches, shared
/// between the link's thread and the relay's loop.
pub(crate) struct Ingest {
    pub(super) spool: Spool,
    pub(super) reassembler: Reassembler,
    pub(super) tracker: Tracker,
    /// The reassembler's loss count when the current utterance began.
    lost_at_begin: u64,
    /// Frames refused since the relay started: not 20 ms of their codec
    /// (see [`Ingest::route`]). They count as lost.
    pub(super) malformed: u64,
    /// `malformed` when the current utterance began.
    malformed_at_begin: u64,
    last_notify_ms: u64,
    /// When the spool last went from synced to holding unsynced writes.
    pub(super) dirty_since_ms: Option<u64>,
    pub(super) link_open: bool,
    /// What the uplink has not heard yet, oldest first. Consecutive frame
    /// counts of one utterance are merged, so this stays a few entries long.
    pub(super) news: Vec<Input>,
    /// A spool error on the link's thread; the loop stops with it.
    pub(super) failed: Option<SpoolError>,
    /// Taken when the relay stops, so that the app's event stream ends even
    /// while transports still hold a [`PendantPort`].
    pub(super) events: Option<mpsc::UnboundedSender<Stamped>>,
}

impl Ingest {
    fn emit(&self, event: RelayEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(Stamped { at_ms: now_ms(), event });
        }
    }

    /// Handles one link event at `now`. Returns whether the loop must look
    /// at once (an utterance began or ended, the link changed); plain frames
    /// wait for its next round.
    pub(super) fn on_link(&mut self, ev: LinkEvent, now: u64) -> Result<bool, SpoolError> {
        let mut steps = Vec::new();
        match ev {
            LinkEvent::Connected { framing, omi_codec, att_mtu } => {
                tracing::info!(?framing, att_mtu, "pendant connected");
                // Whole frames of the previous connection still count.
                if let Some(frame) = self.reassembler.flush() {
                    self.route(frame, now, &mut steps);
                }
                self.reassembler.reset_link();
                while let Some(frame) = self.reassembler.pop_ready() {
                    self.route(frame, now, &mut steps);
                }
                self.reassembler = match (framing, omi_codec) {
                    (Framing::Omi, Some(c)) => match Reassembler::omi(c) {
                        Some(r) => r,
                        None => {
                            self.emit(RelayEvent::Error { id: None, code: "unsupported_codec".into(),
                                message: format!("Omi codec {c:?} needs transcoding, which the relay does not do; set the pendant to Opus 16 kHz (21) or PCM16 (0)") });
                            Reassembler::lanyard()
                        }
                    },
                    _ => Reassembler::lanyard(),
                };
                self.lost_at_begin = 0;
            }
            LinkEvent::Notification(bytes) => {
                self.last_notify_ms = now;
                match self.reassembler.push(&bytes) {
                    Ok(Some(frame)) => self.route(frame, now, &mut steps),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "notification dropped"),
                }
            }
            LinkEvent::Battery(level) => tracing::debug!(level, "pendant battery"),
            LinkEvent::Disconnected { reason } => {
                tracing::debug!(%reason, "pendant link down");
                if let Some(frame) = self.reassembler.flush() {
                    self.route(frame, now, &mut steps);
                }
            }
        }
        self.apply(steps, now)
    }

    /// Ends the current utterance: the link is gone for good, the app is
    /// suspending or shutting down. What was said so far is the utterance.
    pub(super) fn end_now(&mut self, now: u64) -> Result<bool, SpoolError> {
        let mut steps = Vec::new();
        if let Some(frame) = self.reassembler.flush() {
            self.route(frame, now, &mut steps);
        }
        self.tracker.end_now(&mut steps);
        self.apply(steps, now)
    }

    /// The server's endpoint for `id`, which it heard after `frames` frames
    /// (see `Tracker::on_endpoint`).
    pub(super) fn on_endpoint(&mut self, id: Uuid, frames: u32, now: u64) -> Result<bool, SpoolError> {
        let mut steps = Vec::new();
        self.tracker.on_endpoint(id, frames, Uuid::now_v7, &mut steps);
        self.apply(steps, now)
    }

    /// The clock's part: a quiet link completes a held-back Omi frame, and
    /// silence ends an utterance.
    pub(super) fn on_tick(&mut self, now: u64) -> Result<bool, SpoolError> {
        let mut steps = Vec::new();
        // Omi frames are only known whole when the next one starts.
        if now.saturating_sub(self.last_notify_ms) >= OMI_FLUSH_MS
            && let Some(frame) = self.reassembler.flush()
        {
            self.route(frame, now, &mut steps);
        }
        self.tracker.on_tick(now, &mut steps);
        self.apply(steps, now)
    }

    /// Hands one reassembled frame to the tracker, as long as the server
    /// would store it: 20 ms of its codec (`opus_toc::check_frame`, the
    /// server's own rule, read from the Opus TOC byte). A frame that is not
    /// would have the stream closed with 4007 each time the relay sent it,
    /// so it is never spooled: it counts as lost (and its markers still
    /// count), and the utterance's end says how many went.
    fn route(&mut self, mut frame: Frame, now: u64, steps: &mut Vec<Step>) {
        if !frame.data.is_empty()
            && let Err(e) = check_frame(frame.codec, &frame.data)
        {
            if self.malformed == self.malformed_at_begin {
                tracing::warn!(error = %e, "pendant frame refused: not 20 ms of its codec");
            }
            self.malformed += 1;
            frame.data.clear();
        }
        self.tracker.on_frame(frame, now, Uuid::now_v7, steps);
    }

    /// Writes the tracker's steps to the spool, each frame with one `write()`
    /// before anything else hears of it.
    fn apply(&mut self, mut steps: Vec<Step>, now: u64) -> Result<bool, SpoolError> {
        // Frames released together (a reorder gap filled or given up on).
        while let Some(frame) = self.reassembler.pop_ready() {
            self.route(frame, now, &mut steps);
        }
        // A carry is written down before anything it does (see "Endpoints").
        let carry = steps.iter().find_map(|s| match s {
            Step::Carry { from, id, frames } => Some(CarryIntent { from: *from, to: *id, frames: frames.clone() }),
            _ => None,
        });
        if let Some(carry) = &carry {
            carry.record(self.spool.dir());
        }
        let mut urgent = false;
        for step in steps {
            match step {
                Step::Begin { id, codec, unmarked } => {
                    self.spool.begin_with(id, codec, now, unmarked)?;
                    self.lost_at_begin = self.reassembler.stats().lost;
                    self.malformed_at_begin = self.malformed;
                    self.emit(RelayEvent::UtteranceStarted { id });
                    self.news.push(Input::Spooled { id, codec, frames: 0, unmarked });
                    urgent = true;
                }
                Step::Frame { id, data } => self.spool_frame(id, &data)?,
                Step::Carry { from, id, frames } => {
                    // Read them all before appending any: an append may
                    // evict older utterances to make room, `from` among them.
                    let copies = frames.map(|seq| self.spool.read_frame(from, seq)).collect::<Result<Vec<_>, _>>()?;
                    for data in copies {
                        self.spool_frame(id, &data)?;
                    }
                    CarryIntent::done(self.spool.dir());
                }
                Step::End { id } => {
                    let malformed = (self.malformed - self.malformed_at_begin) as u32;
                    let lost = (self.reassembler.stats().lost - self.lost_at_begin) as u32 + malformed;
                    if malformed > 0 {
                        self.emit(RelayEvent::Error {
                            id: Some(id),
                            code: MALFORMED_FRAMES.into(),
                            message: format!(
                                "{malformed} frames were not 20 ms of their codec and were not spooled (the server refuses them \
                                 with close 4007); they count as lost. Check the pendant's codec settings: Opus at 16 kHz, 20 ms frames"
                            ),
                        });
                    }
                    // Cut at the server's endpoint: its speech is what
                    // comes before the carried frames (see `boundary`).
                    let speech = carry.as_ref().filter(|c| c.from == id).map(|c| c.frames.start);
                    let frames = self.spool.end_cut(id, lost, speech)?;
                    let (codec, unmarked) =
                        self.spool.utterance(id).map(|u| (u.codec, u.unmarked)).expect("just ended");
                    self.emit(RelayEvent::UtteranceEnded { id, frames, lost });
                    self.news.push(Input::Ended { id, codec, frames, speech_frames: speech, unmarked });
                    urgent = true;
                }
            }
            self.dirty_since_ms.get_or_insert(now);
        }
        Ok(urgent)
    }

    /// Appends one frame to `id` with one `write()`, and notes it for the uplink.
    fn spool_frame(&mut self, id: Uuid, data: &[u8]) -> Result<(), SpoolError> {
        let seq = self.spool.append_frame(id, data)?;
        let (codec, unmarked) = self.spool.utterance(id).map(|u| (u.codec, u.unmarked)).expect("just appended");
        let frames = seq + 1;
        match self.news.last_mut() {
            Some(Input::Spooled { id: last, frames: f, .. }) if *last == id => *f = frames,
            _ => self.news.push(Input::Spooled { id, codec, frames, unmarked }),
        }
        Ok(())
    }
}

impl Ingest {
    /// Opens and recovers the spool in `cfg.spool_dir` at `now`: finishes a
    /// carry a kill interrupted, and ends the utterance in progress if the
    /// OS restarted since.
    pub(super) fn open(
        cfg: &HostConfig,
        now: u64,
        events: mpsc::UnboundedSender<Stamped>,
    ) -> Result<Ingest, HostError> {
        let (mut spool, recovery) = Spool::open(&cfg.spool_dir)?;
        tracing::info!(?recovery, "spool recovered");
        let boot = boot_id();
        let recorded = std::fs::read_to_string(cfg.spool_dir.join(BOOT_FILE)).ok();
        let same_boot = matches!((&recorded, &boot), (Some(r), Some(b)) if r.trim() == b);
        // A kill in the middle of a carry: finish it (see "Endpoints").
        let carried = CarryIntent::finish_recorded(&mut spool, same_boot, now)?;
        let mut resumed = spool
            .open_utterance()
            .and_then(|id| spool.utterance(id))
            .map(|u| (u.id, u.codec, u.frame_count(), u.unmarked));
        // An utterance the app was killed in is carried on by the frames that
        // follow (see `boundary`), but not across an OS restart: the crash may
        // have taken its last frames from the spool after the server had
        // acknowledged them, and frames appended after the shorter tail would
        // reuse numbers the server holds. It ends where the spool's copy ends,
        // and the uplink completes it from the server's copy.
        // Same boot only if both the recorded boot and this one are known and
        // equal: a spool from before the check, or a platform without a boot
        // id, gets the careful answer.
        if !same_boot && let Some((id, ..)) = resumed.take() {
            let frames = spool.end(id, 0)?;
            spool.sync()?;
            tracing::warn!(%id, frames, "the OS restarted since the relay last ran; ending the utterance it was in");
        }
        // Only now, once that end is durable: a crash before it must find the
        // old boot recorded and end the utterance again.
        if !same_boot && let Some(boot) = &boot {
            record_boot(&cfg.spool_dir, boot);
        }
        let tracker = match resumed {
            // No marker opened it, as its BEGIN record says (or it is the new
            // utterance of a finished carry): the server's endpoints end it,
            // as before the kill.
            Some((id, codec, frames, unmarked)) if unmarked || Some(id) == carried => {
                Tracker::resume_unmarked(cfg.boundary.clone(), (id, codec, frames), now)
            }
            // Marked, or from a spool older than the flag: how it was opened
            // is unknown, and it counts as marked.
            r => Tracker::new(cfg.boundary.clone(), r.map(|(id, codec, frames, _)| (id, codec, frames)), now),
        };
        Ok(Ingest {
            spool,
            reassembler: Reassembler::lanyard(),
            tracker,
            lost_at_begin: 0,
            malformed: 0,
            malformed_at_begin: 0,
            last_notify_ms: now,
            dirty_since_ms: None,
            link_open: true,
            news: Vec::new(),
            failed: None,
            events: Some(events),
        })
    }
}

/// The file in the spool directory that names the OS boot the relay last
/// opened the spool in.
const BOOT_FILE: &str = "boot-id";

/// The file in the spool directory that holds a carry while its copies are
/// written (see "Endpoints" in the module doc).
const CARRY_FILE: &str = "carry";

/// A carry: frames `frames` of the ended utterance `from` are copied into
/// the new utterance `to`. Written down as one line, `from to start end`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CarryIntent {
    from: Uuid,
    to: Uuid,
    frames: std::ops::Range<u32>,
}

impl CarryIntent {
    /// Writes the carry down with one `write()`, before any of its steps. If
    /// that fails the carry still goes ahead, only without its protection
    /// against a kill in the middle.
    fn record(&self, dir: &std::path::Path) {
        let line = format!("{} {} {} {}\n", self.from, self.to, self.frames.start, self.frames.end);
        if let Err(e) = std::fs::write(dir.join(CARRY_FILE), line) {
            tracing::warn!(error = %e, "cannot record the carry; a kill before its copies are spooled would lose them");
        }
    }

    /// The copies are all in the spool.
    fn done(dir: &std::path::Path) {
        match std::fs::remove_file(dir.join(CARRY_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, "cannot remove the finished carry's record");
            }
            _ => {}
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let from = words.next()?.parse().ok()?;
        let to = words.next()?.parse().ok()?;
        let (start, end) = (words.next()?.parse().ok()?, words.next()?.parse().ok()?);
        (start < end && words.next().is_none()).then_some(CarryIntent { from, to, frames: start..end })
    }

    /// Finishes the carry recorded in the spool's directory, if a kill cut
    /// it short, and forgets it. Returns the utterance it carried into,
    /// open. Only in the boot it was recorded in (see "Endpoints").
    fn finish_recorded(spool: &mut Spool, same_boot: bool, now: u64) -> Result<Option<Uuid>, SpoolError> {
        let path = spool.dir().join(CARRY_FILE);
        let Ok(line) = std::fs::read_to_string(&path) else { return Ok(None) };
        let carried = match CarryIntent::parse(&line).filter(|_| same_boot) {
            Some(carry) => carry.finish(spool, now)?,
            None => None,
        };
        spool.sync()?;
        CarryIntent::done(spool.dir());
        Ok(carried)
    }

    /// Does what the carry did not get to, in its order: ends `from`, begins
    /// `to`, appends the copies `to` lacks. `None` if there is nothing to
    /// carry on: `from` is gone (delivered and collected) or lacks the
    /// frames, or `to` has ended.
    fn finish(&self, spool: &mut Spool, now: u64) -> Result<Option<Uuid>, SpoolError> {
        let Some(from) = spool.utterance(self.from).filter(|u| !u.done && u.frame_count() >= self.frames.end) else {
            return Ok(None);
        };
        let (codec, ended) = (from.codec, from.ended);
        if !ended {
            spool.end_cut(self.from, 0, Some(self.frames.start))?;
        }
        let copied = match spool.utterance(self.to) {
            None => {
                // A carry only follows an endpoint, which ends only an
                // unmarked utterance (see `boundary`).
                spool.begin_with(self.to, codec, now, true)?;
                0
            }
            Some(to) if to.ended || to.done => return Ok(None),
            Some(to) => to.frame_count(),
        };
        // Read before appending, as `Core::apply` does: an append may evict.
        let missing = (self.frames.start.saturating_add(copied)..self.frames.end)
            .map(|seq| spool.read_frame(self.from, seq))
            .collect::<Result<Vec<_>, _>>()?;
        for data in missing {
            spool.append_frame(self.to, &data)?;
        }
        if copied < self.frames.len() as u32 {
            tracing::warn!(from = %self.from, to = %self.to, copied, "a kill cut a carry short; finished it");
        }
        Ok(Some(self.to))
    }
}

/// What this boot of the OS is called: Linux's (and Android's) random boot
/// id, or Apple's boot session UUID (unlike `kern.boottime`, it does not
/// move when the clock is set). `None` elsewhere, or if it cannot be read.
fn boot_id() -> Option<String> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_owned())
    }
    #[cfg(target_vendor = "apple")]
    {
        let mut buf = [0u8; 64];
        let mut size = buf.len();
        // SAFETY: `buf` has room for `size` bytes, which the call may not
        // exceed, and it sets `size` to what it wrote.
        let rc = unsafe {
            libc::sysctlbyname(
                c"kern.bootsessionuuid".as_ptr(),
                buf.as_mut_ptr().cast(),
                &mut size,
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            return None;
        }
        let id = String::from_utf8_lossy(&buf[..size.min(buf.len())]).trim_end_matches('\0').trim().to_owned();
        (!id.is_empty()).then_some(id)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
    {
        None
    }
}

/// Records `boot` for the next open (best effort: if it fails, the next
/// open gives the careful answer).
fn record_boot(dir: &std::path::Path, boot: &str) {
    let path = dir.join(BOOT_FILE);
    let written = std::fs::File::create(&path).and_then(|mut f| {
        std::io::Write::write_all(&mut f, boot.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the OS boot in the spool directory");
    }
}

#[cfg(test)]
mod tests {
    use lanyard_proto::ble::Codec;

    use super::super::open;
    use super::super::testing::*;
    use super::*;

    #[test]
    fn a_frame_the_server_would_refuse_is_never_spooled_and_counts_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cfg = HostConfig { spool_dir: dir.path().to_path_buf(), ..relay_config() };
        let (relay, link) = open(cfg, tx).unwrap();
        link.event(connected());
        link.event(frame(0, true));
        // 60 ms in one packet (configuration 3), then a code-3 packet that
        // lacks its frame count: the server would close the stream with
        // 4007 each time it got them.
        link.event(notification(1, false, false, &[3 << 3, 1, 1, 1]));
        link.event(notification(2, false, false, &[1 << 3 | 3]));
        link.event(frame(3, false));
        // A bad frame that ends the utterance still ends it.
        link.event(notification(4, false, true, &[3 << 3, 4]));
        drop((relay, link));
        let all = spooled(dir.path());
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].1, &all[0].2), (true, &vec![0, 3]), "only the 20 ms frames are spooled");
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e.event);
        }
        let id = all[0].0;
        assert!(events.contains(&RelayEvent::UtteranceEnded { id, frames: 2, lost: 3 }), "{events:?}");
        assert!(
            events.iter().any(
                |e| matches!(e, RelayEvent::Error { id: Some(i), code, .. } if *i == id && code == MALFORMED_FRAMES)
            ),
            "{events:?}"
        );
    }

    #[test]
    fn frames_past_the_servers_endpoint_begin_the_next_utterance() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, link) = relay(dir.path());
        link.event(connected());
        // No start marker: the server's endpoints split this stream.
        for seq in 0..6 {
            link.event(frame(seq, false));
        }
        let first = link.shared.lock().tracker.current().unwrap();
        // The server split at 4 frames; frames 4 and 5 arrived meanwhile.
        let urgent = link.shared.lock().on_endpoint(first, 4, now_ms()).unwrap();
        assert!(urgent, "the end goes out, and the new utterance opens, at once");
        let second = link.shared.lock().tracker.current().expect("begun before the pendant's next frame");
        assert_ne!(first, second);
        let news = std::mem::take(&mut link.shared.lock().news);
        let opus = Codec::Opus16k20ms;
        assert_eq!(
            news[news.len() - 2..],
            [
                Input::Ended { id: first, codec: opus, frames: 6, speech_frames: Some(4), unmarked: true },
                Input::Spooled { id: second, codec: opus, frames: 2, unmarked: true }
            ]
        );
        for seq in 6..8 {
            link.event(frame(seq, false));
        }
        drop((relay, link));
        let all = spooled(dir.path());
        assert_eq!(all, vec![(first, true, vec![0, 1, 2, 3, 4, 5]), (second, false, vec![4, 5, 6, 7])]);
        // What a server that transcribes the first only up to its endpoint
        // (and all of the second) hears: every frame once, in order. (Today's
        // server transcribes both whole; see the module doc.)
        let heard: Vec<u8> = all[0].2[..4].iter().chain(&all[1].2).copied().collect();
        assert_eq!(heard, (0..8).collect::<Vec<u8>>());
    }

    #[test]
    fn a_relay_killed_after_a_carry_goes_on_with_the_carried_utterance() {
        let dir = tempfile::tempdir().unwrap();
        let (relay1, link) = relay(dir.path());
        link.event(connected());
        for seq in 0..6 {
            link.event(frame(seq, false));
        }
        let first = link.shared.lock().tracker.current().unwrap();
        link.shared.lock().on_endpoint(first, 4, now_ms()).unwrap();
        let second = link.shared.lock().tracker.current().unwrap();
        // Killed: nothing synced, nothing sent. Relaunched in the same OS
        // boot, the pendant goes on.
        drop((relay1, link));
        let (relay2, link) = relay(dir.path());
        link.event(connected());
        for seq in 6..8 {
            link.event(frame(seq, false));
        }
        drop((relay2, link));
        assert_eq!(spooled(dir.path()), vec![(first, true, vec![0, 1, 2, 3, 4, 5]), (second, false, vec![4, 5, 6, 7])]);
    }

    /// A kill at every point of a carry: after its record, after the old
    /// utterance's end, after the new one's begin, after each copy. The
    /// relaunched relay finishes the carry and goes on with the new
    /// utterance as one no marker opened. After an OS restart it does not
    /// (the utterance in progress is ended as any other).
    #[test]
    fn a_relay_killed_in_the_middle_of_a_carry_finishes_it() {
        for (writes, os_restarted) in [(0u32, false), (1, false), (2, false), (3, false), (4, false), (2, true)] {
            let dir = tempfile::tempdir().unwrap();
            let (relay1, link) = relay(dir.path());
            link.event(connected());
            for seq in 0..6 {
                link.event(frame(seq, false));
            }
            let first = link.shared.lock().tracker.current().unwrap();
            drop((relay1, link));
            // What an endpoint at 4 frames makes the core write, up to the kill.
            let second = Uuid::now_v7();
            CarryIntent { from: first, to: second, frames: 4..6 }.record(dir.path());
            {
                let (mut spool, _) = Spool::open(dir.path()).unwrap();
                if writes >= 1 {
                    spool.end_cut(first, 0, Some(4)).unwrap();
                }
                if writes >= 2 {
                    spool.begin(second, Codec::Opus16k20ms, 0).unwrap();
                }
                for seq in 4..4 + writes.saturating_sub(2) {
                    let data = spool.read_frame(first, seq).unwrap();
                    spool.append_frame(second, &data).unwrap();
                }
            }
            if os_restarted {
                std::fs::write(dir.path().join(BOOT_FILE), "a boot before this one").unwrap();
            }
            let (relay2, link) = relay(dir.path());
            assert!(!dir.path().join(CARRY_FILE).exists(), "a carry is finished once");
            if os_restarted {
                drop((relay2, link));
                assert_eq!(spooled(dir.path()), vec![(first, true, vec![0, 1, 2, 3, 4, 5]), (second, true, vec![])]);
                continue;
            }
            assert_eq!(link.shared.lock().tracker.current(), Some(second), "after {writes} writes");
            link.event(connected());
            for seq in 6..8 {
                link.event(frame(seq, false));
            }
            // Unmarked, as before the kill: the server's endpoint ends it.
            link.shared.lock().on_endpoint(second, 4, now_ms()).unwrap();
            assert_eq!(link.shared.lock().tracker.current(), None);
            drop((relay2, link));
            assert_eq!(
                spooled(dir.path()),
                vec![(first, true, vec![0, 1, 2, 3, 4, 5]), (second, true, vec![4, 5, 6, 7])],
                "after {writes} writes"
            );
            // The first's speech stops where the carry starts, however far
            // the carry got, and the second (cut at 4 of its own) likewise.
            let (spool, _) = Spool::open(dir.path()).unwrap();
            let speech = |id| spool.utterance(id).unwrap().speech_frames;
            assert_eq!((speech(first), speech(second)), (Some(4), None), "after {writes} writes");
        }
    }

    #[test]
    fn a_carry_is_recorded_while_its_copies_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, link) = relay(dir.path());
        link.event(connected());
        for seq in 0..3 {
            link.event(frame(seq, false));
        }
        let first = link.shared.lock().tracker.current().unwrap();
        link.shared.lock().on_endpoint(first, 1, now_ms()).unwrap();
        assert!(!dir.path().join(CARRY_FILE).exists(), "removed once the copies are spooled");
        drop((relay, link));
        let carry = CarryIntent { from: first, to: Uuid::now_v7(), frames: 1..3 };
        carry.record(dir.path());
        assert_eq!(CarryIntent::parse(&std::fs::read_to_string(dir.path().join(CARRY_FILE)).unwrap()), Some(carry));
        for bad in ["", "x y 1 2", "{first} {first} 2 2", "{first} {first} 1 2 3"] {
            assert_eq!(CarryIntent::parse(&bad.replace("{first}", &first.to_string())), None, "{bad}");
        }
    }

    #[test]
    fn an_endpoint_that_saw_every_frame_or_a_marked_utterance_carries_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, link) = relay(dir.path());
        link.event(connected());
        for seq in 0..3 {
            link.event(frame(seq, false));
        }
        let first = link.shared.lock().tracker.current().unwrap();
        link.shared.lock().on_endpoint(first, 3, now_ms()).unwrap();
        assert_eq!(link.shared.lock().tracker.current(), None, "the next frame starts the next utterance");
        // A marked utterance stays whole through the server's endpoint.
        for seq in 3..6 {
            link.event(frame(seq, seq == 3));
        }
        let marked = link.shared.lock().tracker.current().unwrap();
        link.shared.lock().on_endpoint(marked, 1, now_ms()).unwrap();
        assert_eq!(link.shared.lock().tracker.current(), Some(marked));
        drop((relay, link));
        assert_eq!(spooled(dir.path()), vec![(first, true, vec![0, 1, 2]), (marked, false, vec![3, 4, 5])]);
    }

    /// An unmarked utterance the app was killed in is still unmarked when the
    /// relaunched relay adopts it (its BEGIN record says so): the server's
    /// endpoint ends it. A marked one still ignores endpoints.
    #[test]
    fn an_adopted_utterance_keeps_whether_a_marker_opened_it() {
        for marked in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (relay1, link) = relay(dir.path());
            link.event(connected());
            for seq in 0..3 {
                link.event(frame(seq, marked && seq == 0));
            }
            let id = link.shared.lock().tracker.current().unwrap();
            drop((relay1, link));
            let (relay2, link) = relay(dir.path());
            link.event(connected());
            link.event(frame(3, false));
            assert_eq!(link.shared.lock().tracker.current(), Some(id), "adopted");
            link.shared.lock().on_endpoint(id, 4, now_ms()).unwrap();
            let after = link.shared.lock().tracker.current();
            assert_eq!(after.is_none(), !marked, "marked: {marked}");
            drop((relay2, link));
        }
    }
}
