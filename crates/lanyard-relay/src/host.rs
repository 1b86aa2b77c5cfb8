//! The tokio shell around the relay's state machines, for a Linux host (and
//! the simulator) and the phone library. It owns the I/O and nothing else:
//! every decision is made by [`crate::boundary::Tracker`],
//! [`crate::spool::Spool`], [`crate::uplink::Uplink`] and [`crate::planner`].
//!
//! # Threads and wake-ups
//!
//! [`open`] recovers the spool and returns a [`Relay`] and a [`Link`]. The
//! pendant transport calls [`Link::event`] on its own thread (CoreBluetooth's
//! delegate queue, the simulator's socket thread): the notification is
//! reassembled and its frame appended to the spool with one `write()` before
//! the call returns, so the uplink can only ever send what is already on
//! disk, and a frame handed over survives the app being killed.
//!
//! [`Relay::run`] is one loop that owns the uplink. It is woken only by what
//! needs it at once: an utterance beginning or ending, a WebSocket message,
//! the app's lifecycle, a timer the state machines asked for. While an
//! utterance goes on it also wakes every [`HostConfig::send_interval`]
//! (200 ms): it hands the frames that arrived to the uplink, which sends
//! them in one write, and fsyncs them (without holding the spool's lock, so
//! a slow disk never holds up the transport). On this project's 2-core VM a
//! bare thread wake-up costs about 20 µs of CPU and an fsync about 130 µs:
//! a loop woken per 20 ms frame would cost several milliseconds per second
//! of audio, a phone's battery pays for each, and the relay is meant to run
//! all day. `cargo bench -p lanyard --bench relay_cost` measures it.
//!
//! # Endpoints
//!
//! The server's `endpoint` for an utterance no marker opened ends it in
//! the round it arrives in, under the core's lock (see
//! [`crate::boundary`]). It names the frame count the server split at,
//! and the spool may hold more frames of the utterance by then: the next
//! utterance begins at once and starts with copies of those frames, read
//! back from the spool and appended with one `write()` each, in order,
//! before any frame the pendant sends next. The ended utterance keeps its
//! copies too and is sent whole (the server transcribes it whole, so a
//! carried fragment may be heard twice, but never lost).
//!
//! A kill between those writes would leave the next utterance without the
//! frames not yet copied, its first syllable cut again. So the carry is
//! written down first, in the spool directory's `carry` file, and removed
//! once the copies are in the spool; [`open`] finishes a carry it finds
//! there (ending the old utterance, beginning the new one, copying what is
//! missing), and the tracker goes on with the new utterance as one no
//! marker opened. The file is not fsynced: it is read only in the boot it
//! was written in, since after an OS restart the utterance in progress is
//! ended where the spool's copy ends, as any other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use lanyard_proto::ble::Framing;
use lanyard_proto::opus_toc::check_frame;
use lanyard_proto::reassembly::{Frame, Reassembler};
use lanyard_proto::wire::{self, Audio, Binary, PushRegistration, STREAM_PATH};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};
use uuid::Uuid;

use crate::boundary::{BoundaryConfig, MAX_UTTERANCE_FRAMES, Step, Tracker};
use crate::link::LinkEvent;
use crate::planner::{Decision, DiscardReason, PlanInput, PlannerConfig, UttView, plan};
use crate::seal::{seal, sealed_ids};
use crate::spool::{Spool, SpoolError};
use crate::transport::Transport;
use crate::uplink::{Action, Input, MALFORMED_FRAMES, RelayEvent, RelayStats, Uplink, UplinkConfig};

/// Everything the host needs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where the spool lives. Must survive app restarts.
    pub spool_dir: PathBuf,
    /// The server's base URL, `http://host:port` or `https://...`.
    pub server: String,
    /// The device's bearer token.
    pub token: String,
    /// The fsync window (see [`crate::spool`]): every frame is durable this
    /// long after it was written, at the latest.
    pub sync_interval: Duration,
    /// How long frames may wait in the spool before the uplink hears of
    /// them, while an utterance goes on. The relay's loop wakes this often
    /// (or every `sync_interval`, if shorter) and sends what arrived in one
    /// write, instead of waking for every 20 ms frame; the end of an
    /// utterance is sent at once. 200 ms by default.
    pub send_interval: Duration,
    pub boundary: BoundaryConfig,
    pub uplink: UplinkConfig,
    pub planner: PlannerConfig,
    /// Registered with the server at start, so replies reach the phone.
    pub push: Option<PushRegistration>,
    /// Exit once this many replies have arrived and nothing is pending (for
    /// the demo and tests); `None` runs until stopped.
    pub exit_after: Option<usize>,
    /// Extra time each spool fsync takes, to simulate a slow disk (`lanyard
    /// sim`'s slow-disk fault, `lanyard relay --fsync-delay-ms`). Zero in
    /// production. The delay blocks the relay's loop, as a slow `fsync()` does.
    pub fsync_delay: Duration,
    /// Allow `http://` to a server that is not on this machine: the token
    /// and audio then cross the network in clear text (see
    /// [`crate::transport`]). Off by default, and never for production.
    pub insecure: bool,
    /// PEM files of CAs to trust besides the Mozilla roots: a private CA,
    /// or a self-signed server's.
    pub extra_root_certs: Vec<PathBuf>,
}

/// The default [`HostConfig::send_interval`].
pub const DEFAULT_SEND_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Error)]
pub enum HostError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("server URL {0:?} is not http(s)://host[:port]")]
    BadServerUrl(String),
    #[error(
        "refusing to send the device token and audio in clear text to {0}: use https:// (a server with [tls], or behind a TLS proxy), or pass --insecure (`insecure` in the config) on a network you trust"
    )]
    Insecure(String),
    #[error("cannot trust the certificates in {path}: {reason}; give a PEM file with the CA's certificate")]
    RootCert { path: PathBuf, reason: String },
    #[error("registering the push token failed: {0}")]
    PushRegistration(String),
}

/// What the app tells the relay, besides BLE data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The app moved in its lifecycle (see [`crate::planner`]).
    Lifecycle(Lifecycle),
    /// A background upload the relay handed off finished. `ok` means the
    /// server answered 2xx: it holds the whole utterance.
    UploadFinished { id: Uuid, ok: bool },
    /// Finish the current utterance, sync the spool and stop.
    Shutdown,
}

pub use crate::planner::Lifecycle;

/// An event with the time the relay saw it, as printed for the app or tests.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: RelayEvent,
}

/// What the end of an utterance costs to deliver beyond its frames: the
/// `end` message and the server's `complete`. Counting it keeps an utterance
/// whose frames are all acknowledged, but not yet complete, in the plan.
const END_COST_BYTES: u64 = 64;

/// Measured upload throughput: an exponentially weighted average of
/// acknowledged bytes per second over the times the uplink had work.
#[derive(Debug, Default)]
struct Meter {
    last_ms: u64,
    last_frames: u64,
    bps: Option<f64>,
}

impl Meter {
    /// An Opus frame at 32 kb/s is 80 bytes on average.
    const FRAME_BYTES: f64 = 80.0;
    /// Each second-long sample moves the average a quarter of the way.
    const WEIGHT: f64 = 0.25;

    fn update(&mut self, now_ms: u64, acked_frames: u64, busy: bool) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if self.last_ms == 0 || !busy {
            (self.last_ms, self.last_frames) = (now_ms, acked_frames);
            return;
        }
        if elapsed < 1000 {
            return;
        }
        let rate = (acked_frames - self.last_frames) as f64 * Self::FRAME_BYTES * 1000.0 / elapsed as f64;
        self.bps = Some(self.bps.map_or(rate, |b| b + Self::WEIGHT * (rate - b)));
        (self.last_ms, self.last_frames) = (now_ms, acked_frames);
    }
}

/// How often the counters are reported, when they changed. Often enough for
/// a status screen, rare enough to cost nothing.
const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// A quiet link for this long completes a held-back Omi frame: two frame
/// periods, so a frame is never cut while its next notification is in flight.
const OMI_FLUSH_MS: u64 = 40;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Messages from the WebSocket tasks, tagged with the connection generation
/// so that a late message from a dead connection is ignored.
enum WsEvent {
    Up(u64, mpsc::UnboundedSender<Message>),
    Msg(u64, Message),
    Down(u64, String),
}

/// The pendant side of the relay: everything a notification touches, shared
/// between the link's thread and the relay's loop.
struct Core {
    spool: Spool,
    reassembler: Reassembler,
    tracker: Tracker,
    /// The reassembler's loss count when the current utterance began.
    lost_at_begin: u64,
    /// Frames refused since the relay started: not 20 ms of their codec
    /// (see [`Core::route`]). They count as lost.
    malformed: u64,
    /// `malformed` when the current utterance began.
    malformed_at_begin: u64,
    last_notify_ms: u64,
    /// When the spool last went from synced to holding unsynced writes.
    dirty_since_ms: Option<u64>,
    link_open: bool,
    /// What the uplink has not heard yet, oldest first. Consecutive frame
    /// counts of one utterance are merged, so this stays a few entries long.
    news: Vec<Input>,
    /// A spool error on the link's thread; the loop stops with it.
    failed: Option<SpoolError>,
    /// Taken when the relay stops, so that the app's event stream ends even
    /// while transports still hold a [`Link`].
    events: Option<mpsc::UnboundedSender<Stamped>>,
}

impl Core {
    fn emit(&self, event: RelayEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(Stamped { at_ms: now_ms(), event });
        }
    }

    /// Handles one link event at `now`. Returns whether the loop must look
    /// at once (an utterance began or ended, the link changed); plain frames
    /// wait for its next round.
    fn on_link(&mut self, ev: LinkEvent, now: u64) -> Result<bool, SpoolError> {
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
    fn end_now(&mut self, now: u64) -> Result<bool, SpoolError> {
        let mut steps = Vec::new();
        if let Some(frame) = self.reassembler.flush() {
            self.route(frame, now, &mut steps);
        }
        self.tracker.end_now(&mut steps);
        self.apply(steps, now)
    }

    /// The server's endpoint for `id`, which it heard after `frames` frames
    /// (see `Tracker::on_endpoint`).
    fn on_endpoint(&mut self, id: Uuid, frames: u32, now: u64) -> Result<bool, SpoolError> {
        let mut steps = Vec::new();
        self.tracker.on_endpoint(id, frames, Uuid::now_v7, &mut steps);
        self.apply(steps, now)
    }

    /// The clock's part: a quiet link completes a held-back Omi frame, and
    /// silence ends an utterance.
    fn on_tick(&mut self, now: u64) -> Result<bool, SpoolError> {
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
                Step::Begin { id, codec } => {
                    self.spool.begin(id, codec, now)?;
                    self.lost_at_begin = self.reassembler.stats().lost;
                    self.malformed_at_begin = self.malformed;
                    self.emit(RelayEvent::UtteranceStarted { id });
                    self.news.push(Input::Spooled { id, codec, frames: 0 });
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
                    let codec = self.spool.utterance(id).map(|u| u.codec).expect("just ended");
                    self.emit(RelayEvent::UtteranceEnded { id, frames, lost });
                    self.news.push(Input::Ended { id, codec, frames, speech_frames: speech });
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
        let codec = self.spool.utterance(id).map(|u| u.codec).expect("just appended");
        let frames = seq + 1;
        match self.news.last_mut() {
            Some(Input::Spooled { id: last, frames: f, .. }) if *last == id => *f = frames,
            _ => self.news.push(Input::Spooled { id, codec, frames }),
        }
        Ok(())
    }
}

/// State shared by the relay's loop and its [`Link`] handles.
struct Shared {
    core: Mutex<Core>,
    wake: Notify,
    /// Set when [`Relay::run`] returns.
    stopped: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves nothing half-written that the
        // spool's own recovery would not handle; carry on with the state.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The way into a running relay for a pendant transport (CoreBluetooth's
/// delegate queue through the FFI, btleplug, the simulator's socket).
///
/// [`Link::event`] does the relay's ingest on the caller's thread: the
/// notification is reassembled and its frame written to the spool before
/// the call returns, so a frame the transport handed over survives the app
/// being killed the next instant. The relay's loop is woken only when an
/// utterance begins or ends; it picks up plain frames on its next round (see
/// [`HostConfig::send_interval`]). A phone's CPU and battery pay for one
/// `write()` per frame, not for a thread hand-off per frame.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

impl Link {
    /// Feeds one event from the pendant's link.
    pub fn event(&self, ev: LinkEvent) {
        self.with(|core, now| core.on_link(ev, now));
    }

    /// Whether the relay has stopped running: a transport thread may end.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Relaxed)
    }

    /// The transport is gone for good: the current utterance ends, and a
    /// relay without `exit_after` stops once everything is delivered.
    pub fn close(&self) {
        self.with(|core, now| {
            core.link_open = false;
            core.end_now(now).map(|_| true)
        });
    }

    fn with(&self, f: impl FnOnce(&mut Core, u64) -> Result<bool, SpoolError>) {
        let mut core = self.shared.lock();
        if core.failed.is_some() || self.is_stopped() {
            return;
        }
        let urgent = match f(&mut core, now_ms()) {
            Ok(urgent) => urgent,
            Err(e) => {
                core.failed = Some(e);
                true
            }
        };
        drop(core);
        if urgent {
            self.shared.wake.notify_one();
        }
    }
}

/// A relay with its spool open and recovered, ready to [`Relay::run`].
pub struct Relay {
    cfg: HostConfig,
    ws_url: String,
    transport: Transport,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Stamped>,
}

impl Relay {
    /// The HTTP client the relay uses, trusting what its stream trusts
    /// ([`HostConfig::extra_root_certs`]): for a shell that carries out the
    /// upload tasks itself.
    pub fn http_client(&self) -> reqwest::Client {
        self.transport.http.clone()
    }
}

/// Opens (and recovers) the spool. Returns the relay, to be run on a tokio
/// runtime, and the [`Link`] its pendant transport feeds.
pub fn open(cfg: HostConfig, events: mpsc::UnboundedSender<Stamped>) -> Result<(Relay, Link), HostError> {
    crate::transport::check_server(&cfg.server, cfg.insecure)?;
    let ws_url = stream_url(&cfg.server)?;
    let transport = Transport::new(&cfg.extra_root_certs)?;
    let (mut spool, recovery) = Spool::open(&cfg.spool_dir)?;
    tracing::info!(?recovery, "spool recovered");
    let boot = boot_id();
    let recorded = std::fs::read_to_string(cfg.spool_dir.join(BOOT_FILE)).ok();
    let same_boot = matches!((&recorded, &boot), (Some(r), Some(b)) if r.trim() == b);
    let now = now_ms();
    // A kill in the middle of a carry: finish it (see "Endpoints").
    let carried = CarryIntent::finish_recorded(&mut spool, same_boot, now)?;
    let mut resumed =
        spool.open_utterance().and_then(|id| spool.utterance(id)).map(|u| (u.id, u.codec, u.frame_count()));
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
        // The new utterance of a finished carry: no marker opened it.
        Some(r) if Some(r.0) == carried => Tracker::resume_unmarked(cfg.boundary.clone(), r, now),
        r => Tracker::new(cfg.boundary.clone(), r, now),
    };
    let core = Core {
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
        events: Some(events.clone()),
    };
    let shared = Arc::new(Shared { core: Mutex::new(core), wake: Notify::new(), stopped: AtomicBool::new(false) });
    Ok((Relay { cfg, ws_url, transport, shared: shared.clone(), events }, Link { shared }))
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
                spool.begin(self.to, codec, now)?;
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

/// Runs the relay on events from a pendant link channel until the link ends
/// (and nothing is left to send) or `exit_after` is reached: [`open`] and
/// [`Relay::run`] for transports that deliver through a channel.
pub async fn run(
    cfg: HostConfig,
    link_rx: mpsc::Receiver<LinkEvent>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Stamped>,
) -> Result<(), HostError> {
    let (relay, _link) = open(cfg, events)?;
    relay.run(Some(link_rx), control_rx).await
}

impl Relay {
    /// Runs until the link is closed and nothing is left to send, or
    /// `exit_after` replies have arrived, or [`Control::Shutdown`].
    ///
    /// `link_rx`, when given, is drained into the relay's [`Link`] on this
    /// loop (and its end closes the link); transports that hold a [`Link`]
    /// pass `None`.
    pub async fn run(
        self,
        mut link_rx: Option<mpsc::Receiver<LinkEvent>>,
        mut control_rx: mpsc::UnboundedReceiver<Control>,
    ) -> Result<(), HostError> {
        let Relay { cfg, ws_url, transport, shared, events } = self;
        let link = Link { shared: shared.clone() };
        /// Marks the relay stopped however `run` returns, and ends the
        /// event stream.
        struct Stopped(Arc<Shared>);
        impl Drop for Stopped {
            fn drop(&mut self) {
                // Under the lock: no `Link::event` is halfway through, and
                // none will touch the spool from now on (the spool may soon
                // belong to another relay).
                let mut core = self.0.lock();
                self.0.stopped.store(true, Ordering::Relaxed);
                core.events = None;
            }
        }
        let _stopped = Stopped(shared.clone());
        let emit = |event: RelayEvent| {
            let _ = events.send(Stamped { at_ms: now_ms(), event });
        };
        /// Aborts a task when the relay stops.
        struct AbortOnDrop(tokio::task::JoinHandle<()>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let mut _registration = None;
        if let Some(push) = cfg.push.clone() {
            // An app that starts offline must still spool: registration retries
            // in the background until it succeeds (or the relay stops).
            let (server, token, events) = (cfg.server.clone(), cfg.token.clone(), events.clone());
            let http = transport.http.clone();
            _registration = Some(AbortOnDrop(tokio::spawn(async move {
                let mut delay = Duration::from_millis(500);
                loop {
                    match register_push(&http, &server, &token, &push).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "push registration failed; retrying");
                            let _ = events.send(Stamped {
                                at_ms: now_ms(),
                                event: RelayEvent::Error {
                                    id: None,
                                    code: "push_registration".into(),
                                    message: e.to_string(),
                                },
                            });
                        }
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            })));
        }
        let mut uplink = Uplink::new(cfg.uplink.clone(), rand::random());
        let mut actions = Vec::new();
        // Uploads handed off before a restart are still the app's to finish.
        let mut handed_off: HashMap<Uuid, PathBuf> = HashMap::new();
        {
            let core = shared.lock();
            for (id, path) in sealed_ids(&cfg.spool_dir) {
                if core.spool.utterance(id).is_some_and(|u| !u.done) {
                    handed_off.insert(id, path);
                } else {
                    let _ = std::fs::remove_file(path);
                }
            }
            // Re-announce them: the app may have died before it started the upload,
            // and an app that still runs one ignores a task id it already has.
            // One whose time-to-live ran out meanwhile is announced too: its
            // upload may have reached the server in time, and the server
            // decides (200, or 410 `expired`, after which the app reports it
            // failed and the relay discards it, below).
            for (&id, path) in &handed_off {
                let content_type = if path.extension().is_some_and(|e| e == "wav") { "audio/wav" } else { "audio/ogg" };
                if let Some(u) = core.spool.utterance(id) {
                    emit(upload_task(&cfg, id, path, content_type, u));
                }
            }
            // Everything else the spool holds from before a restart goes to the uplink.
            for u in core.spool.pending().filter(|u| !handed_off.contains_key(&u.id)) {
                let input = if u.ended {
                    Input::Ended { id: u.id, codec: u.codec, frames: u.frame_count(), speech_frames: u.speech_frames }
                } else {
                    Input::Spooled { id: u.id, codec: u.codec, frames: u.frame_count() }
                };
                uplink.handle(now_ms(), input, &mut actions);
            }
        }

        let mut control_open = true;
        let mut deadline: Option<u64> = None;
        let mut suspending = false;
        // Whether the plan at the deadline minus the margin has run.
        let mut final_plan_done = false;
        let mut meter = Meter::default();
        let mut discarded = 0u64;
        let mut last_stats: Option<RelayStats> = None;
        let mut stats_timer = tokio::time::interval(STATS_INTERVAL);
        stats_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut shutdown = false;
        let (ws_tx, mut ws_rx) = mpsc::unbounded_channel();
        let mut socket = Socket {
            url: ws_url,
            token: cfg.token.clone(),
            tls: transport.ws.clone(),
            generation: 0,
            out: None,
            events: ws_tx,
        };
        let mut replies = 0usize;
        // While frames arrive the loop looks at least this often: to hand them
        // to the uplink, and to fsync them within the sync interval.
        let round = cfg.send_interval.min(cfg.sync_interval).as_millis().max(1) as u64;
        let mut next_wake = now_ms();
        let mut round_at: Option<u64> = None;

        'relay: loop {
            let sleep_for = Duration::from_millis(next_wake.saturating_sub(now_ms()));
            tokio::select! {
                () = tokio::time::sleep(sleep_for) => {}
                () = shared.wake.notified() => {}
                ev = async { link_rx.as_mut().expect("guarded").recv().await }, if link_rx.is_some() => match ev {
                    Some(ev) => link.event(ev),
                    None => {
                        link_rx = None;
                        link.close();
                    }
                },
                Some(ev) = ws_rx.recv() => match ev {
                    WsEvent::Up(g, tx) if g == socket.generation => {
                        socket.out = Some(tx);
                        uplink.handle(now_ms(), Input::Connected, &mut actions);
                    }
                    WsEvent::Msg(g, msg) if g == socket.generation => {
                        if let Some(input) = ws_input(msg) {
                            uplink.handle(now_ms(), input, &mut actions);
                        }
                    }
                    WsEvent::Down(g, reason) if g == socket.generation => {
                        socket.out = None;
                        uplink.handle(now_ms(), Input::Disconnected { reason }, &mut actions);
                    }
                    _ => {}
                },
                c = control_rx.recv(), if control_open => {
                    let now = now_ms();
                    match c {
                        None => control_open = false,
                        Some(Control::Lifecycle(l)) => {
                            tracing::info!(?l, "lifecycle");
                            (deadline, suspending) = match l {
                                Lifecycle::Foreground => (None, false),
                                Lifecycle::Background { remaining_ms } => (Some(now + remaining_ms), false),
                                // BLE data stops with the app: what was said so far is the utterance.
                                Lifecycle::WillSuspend => {
                                    link.with(|core, now| core.end_now(now));
                                    (deadline, true)
                                }
                            };
                            final_plan_done = false;
                        }
                        Some(Control::UploadFinished { id, ok }) => match handed_off.remove(&id) {
                            Some(path) => {
                                let _ = std::fs::remove_file(path);
                                let mut core = shared.lock();
                                let u = core.spool.utterance(id).map(|u| (u.codec, u.frame_count(), u.speech_frames));
                                match (ok, u) {
                                    (true, Some((_, frames, _))) => {
                                        core.spool.mark_done(id)?;
                                        // The sealed file stopped at the server's limit.
                                        emit(RelayEvent::Complete { id, frames: frames.min(MAX_UTTERANCE_FRAMES) });
                                    }
                                    (false, Some((codec, frames, speech_frames))) => {
                                        let age_ms = core.spool.utterance(id).map_or(0, |u| now.saturating_sub(u.started_ms));
                                        if age_ms > cfg.planner.ttl_ms {
                                            // Past its time-to-live (the server refuses it, 410
                                            // `expired`): discarded by the planner's rule, before
                                            // the uplink could open it again.
                                            let reason = format!(
                                                "{} (its background upload failed)",
                                                DiscardReason::Stale { age_ms }
                                            );
                                            core.spool.mark_dropped(id, &reason)?;
                                            discarded += 1;
                                            emit(RelayEvent::Discarded { id, reason });
                                        } else {
                                            // Back to the planner: stream it, or hand it off again.
                                            tracing::warn!(%id, "background upload failed");
                                            uplink.handle(now, Input::Ended { id, codec, frames, speech_frames }, &mut actions);
                                        }
                                    }
                                    (_, None) => {}
                                }
                            }
                            None => tracing::warn!(%id, "upload result for an utterance that was not handed off"),
                        },
                        Some(Control::Shutdown) => {
                            // Notifications the app already handed over are spooled
                            // before the utterance ends: nothing accepted is dropped.
                            if let Some(rx) = link_rx.as_mut() {
                                while let Ok(ev @ LinkEvent::Notification(_)) = rx.try_recv() {
                                    link.event(ev);
                                }
                            }
                            link.with(|core, now| core.end_now(now));
                            shutdown = true;
                        }
                    }
                }
                _ = stats_timer.tick() => {
                    let core = shared.lock();
                    let ble = core.reassembler.stats();
                    let stats = RelayStats {
                        spool_bytes: core.spool.disk_bytes(),
                        pending_utterances: core.spool.pending().count() as u32,
                        handed_off: handed_off.len() as u32,
                        lost_frames: ble.lost + core.malformed,
                        duplicate_notifications: ble.duplicates,
                        discarded,
                    };
                    if last_stats != Some(stats) {
                        emit(RelayEvent::Stats(stats));
                        last_stats = Some(stats);
                    }
                }
            }

            // One round: whatever woke the loop, catch up on everything. It
            // ends with the spool's fsync, if one comes due, to run without
            // the lock.
            let sync_job = 'round: {
                let now = now_ms();
                let mut core = shared.lock();
                if let Some(e) = core.failed.take() {
                    return Err(e.into());
                }
                core.on_tick(now)?;
                for input in std::mem::take(&mut core.news) {
                    uplink.handle(now, input, &mut actions);
                }
                uplink.handle(now, Input::Tick, &mut actions);
                meter.update(now, uplink.acked_frames(), uplink.is_connected() && uplink.pending() > 0);

                // The spool makes room by evicting the oldest audio when it is full:
                // each eviction is reported, and the uplink stops sending it.
                for (id, reason) in core.spool.take_evicted() {
                    discarded += 1;
                    uplink.handle(now, Input::Forget { id }, &mut actions);
                    actions.retain(|a| !matches!(a, Action::SendAudio { id: i, .. } if *i == id));
                    emit(RelayEvent::Discarded { id, reason });
                }

                // The server heard speech stop: an utterance no marker opened
                // ends here, and its `end` goes out in this round; what was
                // spooled after the server's split begins the next one.
                let endpoints: Vec<(Uuid, u32)> = actions
                    .iter()
                    .filter_map(|a| if let Action::Endpoint { id, frames } = a { Some((*id, *frames)) } else { None })
                    .collect();
                if !endpoints.is_empty() {
                    actions.retain(|a| !matches!(a, Action::Endpoint { .. }));
                    for (id, frames) in endpoints {
                        core.on_endpoint(id, frames, now)?;
                    }
                    for input in std::mem::take(&mut core.news) {
                        uplink.handle(now, input, &mut actions);
                    }
                }

                // Carry out the uplink's decisions first: a `complete` that came in
                // this round marks the spool done, and the planner must not hand
                // off (or discard) an utterance the server already holds.
                replies += socket.carry_out(&mut actions, &mut core.spool, &emit)?;

                // The planner is a few comparisons per utterance: run it every round.
                let final_plan_at = deadline.map(|d| d.saturating_sub(cfg.planner.safety_margin_ms));
                if final_plan_at.is_some_and(|t| now >= t) {
                    final_plan_done = true;
                }
                let views: Vec<UttView> = core
                    .spool
                    .pending()
                    .filter(|u| u.ended && !handed_off.contains_key(&u.id))
                    .map(|u| UttView {
                        id: u.id,
                        started_ms: u.started_ms,
                        // Frames past the server's limit are never sent (see `Uplink`).
                        unacked_bytes: core
                            .spool
                            .bytes_from(u.id, uplink.acked(u.id).unwrap_or(0))
                            .saturating_sub(core.spool.bytes_from(u.id, MAX_UTTERANCE_FRAMES))
                            + END_COST_BYTES,
                    })
                    .collect();
                let input = PlanInput {
                    now_ms: now,
                    deadline_ms: deadline,
                    suspending,
                    network_up: !uplink.failing(),
                    connected: uplink.is_connected(),
                    throughput_bps: meter.bps,
                    utterances: &views,
                };
                for (id, decision) in plan(&cfg.planner, &input) {
                    match decision {
                        Decision::Stream => {}
                        Decision::HandOff => {
                            let sealed = seal(&core.spool, id)?;
                            uplink.handle(now, Input::Forget { id }, &mut actions);
                            if let Some(u) = core.spool.utterance(id) {
                                emit(upload_task(&cfg, id, &sealed.path, sealed.content_type, u));
                            }
                            handed_off.insert(id, sealed.path);
                        }
                        Decision::Discard(reason) => {
                            let reason = reason.to_string();
                            core.spool.mark_dropped(id, &reason)?;
                            discarded += 1;
                            uplink.handle(now, Input::Forget { id }, &mut actions);
                            emit(RelayEvent::Discarded { id, reason });
                        }
                    }
                }

                replies += socket.carry_out(&mut actions, &mut core.spool, &emit)?;

                let live = core.tracker.current().is_some();
                let idle = uplink.pending() == 0 && !live && handed_off.is_empty();
                if shutdown
                    || (idle
                        && (cfg.exit_after.is_some_and(|n| replies >= n)
                            || (!core.link_open && cfg.exit_after.is_none())))
                {
                    sync(&mut core.spool, cfg.fsync_delay)?;
                    break 'relay;
                }

                // While an utterance goes on, rounds come at a steady cadence
                // whatever else wakes the loop (acks, replies).
                round_at = match round_at {
                    Some(t) if live && now < t => Some(t),
                    _ if live => Some(now + round),
                    _ => None,
                };
                // When to look again if nothing wakes the loop first.
                next_wake = [
                    round_at,
                    core.tracker.next_deadline(),
                    uplink.next_deadline(),
                    final_plan_at.filter(|_| !final_plan_done),
                    // In the background the planner watches the throughput.
                    deadline.map(|_| now + BACKGROUND_PLAN_MS),
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + IDLE_WAKE_MS);
                // Fsync now what would come due before then, so that every write
                // is durable within the sync interval. (If it comes due later, an
                // earlier wake-up looks again.)
                // Frames the server has already acknowledged need no fsync
                // (`Spool::needs_sync`): online, most rounds have none to do.
                match core.dirty_since_ms.map(|t| t + cfg.sync_interval.as_millis() as u64) {
                    Some(due) if due <= next_wake && core.spool.needs_sync(|id| uplink.acked(id)) => {
                        core.dirty_since_ms = None;
                        break 'round core.spool.sync_job()?;
                    }
                    _ => None,
                }
            };
            // The fsync runs without the lock: a slow disk must not hold up
            // the link's thread, which only appends.
            if let Some(job) = sync_job {
                // Let the WebSocket writer send this round's frames first:
                // the server's ack then comes back while the disk flushes,
                // and the loop's next park finds it waiting instead of
                // sleeping until it comes (one sleep and wake-up fewer; the
                // ack is still handled in a round of its own).
                tokio::task::yield_now().await;
                if !cfg.fsync_delay.is_zero() {
                    std::thread::sleep(cfg.fsync_delay);
                }
                job.run()?;
                shared.lock().spool.synced(job);
            }
        }
        Ok(())
    }
}

/// The relay's WebSocket, as the loop sees it: the writer of the current
/// connection, and the generation that tells its messages from a dead one's.
struct Socket {
    url: String,
    token: String,
    tls: Option<tokio_tungstenite::Connector>,
    generation: u64,
    out: Option<mpsc::UnboundedSender<Message>>,
    events: mpsc::UnboundedSender<WsEvent>,
}

impl Socket {
    /// Carries out the uplink's actions, in order. Returns how many replies
    /// were among the events.
    fn carry_out(
        &mut self,
        actions: &mut Vec<Action>,
        spool: &mut Spool,
        emit: &impl Fn(RelayEvent),
    ) -> Result<usize, HostError> {
        let mut replies = 0;
        for action in actions.drain(..) {
            match action {
                Action::Connect => {
                    self.generation += 1;
                    tokio::spawn(connect(
                        self.url.clone(),
                        self.token.clone(),
                        self.tls.clone(),
                        self.generation,
                        self.events.clone(),
                    ));
                }
                Action::Disconnect => {
                    self.generation += 1;
                    if let Some(tx) = self.out.take() {
                        let _ = tx.send(Message::Close(None));
                    }
                }
                Action::SendText(msg) => {
                    if let Some(tx) = &self.out {
                        let _ = tx.send(Message::text(msg.to_json()));
                    }
                }
                Action::SendAudio { id, handle, seq } => {
                    let frame = spool.read_frame(id, seq)?;
                    if let Some(tx) = &self.out {
                        let _ = tx.send(Message::binary(wire::encode_audio(&Audio { handle, seq, frame: &frame })));
                    }
                }
                Action::Done(id) => spool.mark_done(id)?,
                Action::Drop { id, reason } => {
                    spool.mark_dropped(id, &reason)?;
                    emit(RelayEvent::Discarded { id, reason });
                }
                Action::Emit(event) => {
                    replies += usize::from(matches!(event, RelayEvent::Reply { .. }));
                    emit(event);
                }
                // Taken out by the loop before this, under the core's lock.
                Action::Endpoint { .. } => {}
            }
        }
        Ok(replies)
    }
}

/// How often the planner looks while the app is in the background.
const BACKGROUND_PLAN_MS: u64 = 1000;

/// The longest the loop sleeps with nothing to do; the planner's TTL is
/// minutes, so this only bounds how late a stale utterance is noticed.
const IDLE_WAKE_MS: u64 = 10_000;

/// Fsyncs the spool, taking `delay` longer (see [`HostConfig::fsync_delay`]).
fn sync(spool: &mut Spool, delay: Duration) -> Result<(), SpoolError> {
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    spool.sync()
}

/// The upload task the app carries out for a sealed utterance; one cut at
/// the server's endpoint says which of its frames are speech, as `end` does.
/// The background upload of a sealed utterance, for the app to carry out.
/// Its URL carries when the utterance's time-to-live ends
/// (`expires_ms`: `started_ms` plus [`PlannerConfig::ttl_ms`]), so that an
/// upload iOS runs later than that, with no relay awake to cancel it, is
/// refused by the server (410 `expired`) rather than answered.
fn upload_task(
    cfg: &HostConfig,
    id: Uuid,
    path: &std::path::Path,
    content_type: &str,
    u: &crate::spool::SpooledUtterance,
) -> RelayEvent {
    let mut url = format!("{}/v1/utterances/{id}/audio", cfg.server.trim_end_matches('/'));
    url.push_str(&format!("?expires_ms={}", u.started_ms.saturating_add(cfg.planner.ttl_ms)));
    // A sealed file stops at the server's limit (see `seal`); a cut past it cuts nothing.
    if let Some(s) = u.speech_frames.filter(|&s| s < MAX_UTTERANCE_FRAMES) {
        url.push_str(&format!("&speech_frames={s}"));
    }
    RelayEvent::UploadTask {
        id,
        path: path.to_string_lossy().into_owned(),
        url,
        method: "PUT".into(),
        headers: vec![
            ("Authorization".into(), format!("Bearer {}", cfg.token)),
            ("Content-Type".into(), content_type.into()),
        ],
    }
}

fn ws_input(msg: Message) -> Option<Input> {
    match msg {
        Message::Binary(b) => match wire::parse_binary(&b) {
            Ok(Binary::Ack(ack)) => Some(Input::Ack(ack)),
            Ok(Binary::Audio(_)) | Err(_) => {
                tracing::warn!("server sent an unexpected binary message");
                None
            }
        },
        Message::Text(t) => match wire::parse_server_text(&t) {
            Ok(m) => Some(Input::Server(m)),
            Err(e) => {
                tracing::warn!(error = %e, "server sent an unreadable message");
                None
            }
        },
        _ => None,
    }
}

/// Opens the WebSocket and runs its reader and writer until it closes.
async fn connect(
    url: String,
    token: String,
    tls: Option<tokio_tungstenite::Connector>,
    generation: u64,
    events: mpsc::UnboundedSender<WsEvent>,
) {
    let reason = match open_ws(&url, &token, tls).await {
        Ok(ws) => {
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
            let _ = events.send(WsEvent::Up(generation, tx));
            let writer = async {
                while let Some(m) = rx.recv().await {
                    // A round's messages go out in one write: queue all that
                    // are waiting, then flush once.
                    let mut closing = matches!(m, Message::Close(_));
                    let mut queued = sink.feed(m).await;
                    while queued.is_ok() && !closing {
                        let Ok(m) = rx.try_recv() else { break };
                        closing = matches!(m, Message::Close(_));
                        queued = sink.feed(m).await;
                    }
                    if let Err(e) = queued {
                        return format!("send failed: {e}");
                    }
                    if let Err(e) = sink.flush().await {
                        return format!("send failed: {e}");
                    }
                    if closing {
                        return "closed by relay".to_string();
                    }
                }
                "relay dropped the connection".to_string()
            };
            let reader = async {
                while let Some(m) = stream.next().await {
                    match m {
                        Ok(Message::Close(frame)) => {
                            return match frame {
                                Some(f) => format!("server closed: {} {}", u16::from(f.code), f.reason),
                                None => "server closed".to_string(),
                            };
                        }
                        Ok(m) => {
                            let _ = events.send(WsEvent::Msg(generation, m));
                        }
                        Err(e) => return format!("receive failed: {e}"),
                    }
                }
                "connection ended".to_string()
            };
            tokio::select! { r = writer => r, r = reader => r }
        }
        Err(e) => e,
    };
    let _ = events.send(WsEvent::Down(generation, reason));
}

async fn open_ws(
    url: &str,
    token: &str,
    tls: Option<tokio_tungstenite::Connector>,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, String> {
    let mut req = url.into_client_request().map_err(|e| format!("bad stream URL {url}: {e}"))?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "token has invalid characters")?;
    req.headers_mut().insert("authorization", auth);
    // Frames are small writes: send each at once instead of waiting for
    // Nagle's algorithm, which would add up to 40 ms to every ack round trip.
    // The server sends acks and short JSON: a small read buffer is plenty,
    // and tungstenite zero-fills all of it before every read (the 128 KiB
    // default was the largest user-space cost of the relay's loop).
    let config = tungstenite::protocol::WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let connect = tokio_tungstenite::connect_async_tls_with_config(req, Some(config), true, tls);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err(format!("server refused the stream: HTTP {} {body}", resp.status()))
        }
        Ok(Err(e)) => Err(format!("cannot connect to {url}: {e}")),
        Err(_) => Err(format!("connecting to {url} timed out")),
    }
}

/// The WebSocket's read buffer; a longer message is read in several reads.
const READ_BUFFER_BYTES: usize = 4 << 10;

/// `http://h:p` -> `ws://h:p/v1/stream`.
pub fn stream_url(server: &str) -> Result<String, HostError> {
    let base = server.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        return Err(HostError::BadServerUrl(server.to_string()));
    };
    Ok(format!("{ws}{STREAM_PATH}"))
}

/// An error with its causes, `: `-separated: reqwest's own message
/// ("error sending request") leaves out why (a certificate not trusted, a
/// refused connection), which is what the user must fix.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn register_push(
    http: &reqwest::Client,
    server: &str,
    token: &str,
    push: &PushRegistration,
) -> Result<(), HostError> {
    let url = format!("{}/v1/device/push", server.trim_end_matches('/'));
    let resp = http
        .put(&url)
        .bearer_auth(token)
        .json(push)
        .send()
        .await
        .map_err(|e| HostError::PushRegistration(format!("{url}: {}", error_chain(&e))))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(HostError::PushRegistration(format!("{url}: HTTP {status}: {body}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lanyard_proto::ble::{Codec, FrameSpec, packetize};

    use super::*;

    /// A relay on the spool in `dir`, its loop never run: the test plays
    /// the loop's part by calling the core.
    fn relay(dir: &std::path::Path) -> (Relay, Link) {
        let cfg = HostConfig { spool_dir: dir.to_path_buf(), ..relay_config() };
        open(cfg, mpsc::unbounded_channel().0).unwrap()
    }

    fn relay_config() -> HostConfig {
        HostConfig {
            spool_dir: PathBuf::new(),
            server: "http://127.0.0.1:1".into(),
            token: "t".into(),
            sync_interval: Duration::from_millis(200),
            send_interval: DEFAULT_SEND_INTERVAL,
            boundary: BoundaryConfig::default(),
            uplink: UplinkConfig::default(),
            planner: PlannerConfig::default(),
            push: None,
            exit_after: None,
            fsync_delay: Duration::ZERO,
            insecure: false,
            extra_root_certs: Vec::new(),
        }
    }

    /// An Opus TOC byte (RFC 6716 3.1) for one 20 ms frame: configuration 1
    /// (SILK narrowband, 20 ms), mono, code 0.
    const TOC_20MS: u8 = 1 << 3;

    /// Frame `seq` as a pendant sends it: an Opus packet of 20 ms whose
    /// other bytes say which frame it is.
    fn frame(seq: u16, start: bool) -> LinkEvent {
        let mut data = [seq as u8; 80];
        data[0] = TOC_20MS;
        notification(seq, start, false, &data)
    }

    fn notification(seq: u16, start: bool, end: bool, data: &[u8]) -> LinkEvent {
        let spec = FrameSpec { seq, codec: Codec::Opus16k20ms, start, end, data };
        LinkEvent::Notification(packetize(&spec, 185).unwrap().remove(0))
    }

    fn connected() -> LinkEvent {
        LinkEvent::Connected { framing: Framing::Lanyard, omi_codec: None, att_mtu: 185 }
    }

    /// Each utterance in the spool, oldest first: whether it ended, and its
    /// frames, each as the byte after the TOC the pendant gave it.
    fn spooled(dir: &std::path::Path) -> Vec<(Uuid, bool, Vec<u8>)> {
        let (spool, _) = Spool::open(dir).unwrap();
        spool
            .pending()
            .map(|u| (u.id, u.ended, (0..u.frame_count()).map(|s| spool.read_frame(u.id, s).unwrap()[1]).collect()))
            .collect()
    }

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
                Input::Ended { id: first, codec: opus, frames: 6, speech_frames: Some(4) },
                Input::Spooled { id: second, codec: opus, frames: 2 }
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
}
