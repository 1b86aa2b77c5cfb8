//! The durable spool: audio is on disk before anything else happens to it.
//!
//! # Why
//!
//! iOS may suspend or kill the app at any moment, and a memory buffer dies
//! with it. So every frame that comes off BLE is written to a file first, and
//! the uplink reads what it sends from that file. A frame leaves the spool
//! only when the server has said it holds the whole utterance durably, or
//! when an explicit policy (a TTL, the size bound) drops it and says so.
//!
//! # On-disk format
//!
//! The spool is a directory of append-only segment files named after the id
//! of their first record, `{id:020}.seg`, so that sorting names sorts records.
//! A segment is a sequence of checksummed records (`lanyard_proto::record`,
//! the format of the server's audio files too):
//!
//! ```text
//! +--------------+----------------+--------------------------------------+
//! | len (u32 LE) | crc32c (u32 LE)| body (len bytes)                     |
//! +--------------+----------------+--------------------------------------+
//! body: | id (u64 LE) | kind (u8) | utterance id (16) | kind-specific ... |
//!   kind 1 BEGIN  codec id (u8), started at Unix ms (u64 LE),
//!                 [flags (u8): only for an utterance no start marker
//!                 opened; bit 0 `unmarked`, the other bits 0]
//!   kind 2 FRAME  seq (u32 LE), codec frame bytes
//!   kind 3 END    frame count (u32 LE), frames lost on BLE (u32 LE),
//!                 [speech frames (u32 LE): only for an utterance cut at the
//!                 server's endpoint, whose later frames were carried on]
//!   kind 4 DONE   (nothing): the server confirmed the utterance complete
//!   kind 5 DROP   reason (UTF-8): discarded by an explicit policy (TTL, eviction)
//! ```
//!
//! A record grows only by optional fields at its end, written only when
//! they say something: END's speech frames, BEGIN's flags. So a spool
//! written by an older relay reads as it always did (no flags: marked, as
//! every utterance was before the flag), and one of a newer relay holds
//! records an older one can still read unless it used the new field.
//! Recovery ignores BEGIN flag bits it does not know: a newer relay's,
//! which say nothing about the audio, and dropping the segment for them
//! would lose it.
//!
//! Record ids grow by one per record across segments and restarts, so they
//! order everything the spool ever wrote. **Invariant:** no id that was
//! synced is ever handed out again, and every record in a segment has an id
//! at least the segment's name (recovery relies on the name when every
//! record of the newest segment was lost).
//!
//! # Durability
//!
//! Each record is handed to the kernel with one `write()` as soon as it is
//! appended. That alone survives the app being killed, which is the common
//! failure on a phone. Surviving an OS crash or power loss needs `fsync`; the
//! host syncs on a timer (a [`Spool::sync_job`], run off the lock), within
//! [`DEFAULT_SYNC_INTERVAL`] of a write by default. That interval is the
//! acceptable window of data loss on an OS crash. The timer skips the fsync
//! when everything unsynced is frames the server has already acknowledged
//! ([`Spool::needs_sync`]): the server's copy is durable, and after an OS
//! crash the uplink resumes from it (an utterance is never carried on
//! across a restart). Online, that is nearly every round, so a streamed
//! frame costs one `write()` and no fsync. Besides the timer:
//!
//! - a segment is synced before the spool moves on to the next one, so only
//!   the newest segment can ever have a torn tail;
//! - a new segment's name is made durable (the directory is synced) before
//!   anything is written to it;
//! - DONE and DROP are synced before any file they allow to go is deleted,
//!   and each deletion is made durable (directory sync) before the next one,
//!   oldest first (see "Deletion");
//! - recovery's truncations are synced before anything is appended after them.
//!
//! The failure model this is checked against is [`fs::FaultyFs`]: file
//! content is durable only once synced, a name created or removed only once
//! its directory is synced (before that, each may or may not survive), and a
//! crash keeps any prefix of a file's unsynced appends, possibly garbling the
//! write it cut through. `tests/spool_crash.rs` crashes the spool at every
//! kind of operation under that model.
//!
//! All file access goes through [`SpoolFs`]; [`Spool::open`] uses the real
//! filesystem, [`Spool::open_with`] any other.
//!
//! # Recovery
//!
//! [`Spool::open`] reads every segment in name order. A record whose length
//! runs past the end of the file, whose checksum does not match, or whose
//! body does not parse or does not follow (an id that goes back, a frame out
//! of sequence, a record for an utterance that already ended) ends the
//! segment: the file is truncated to the last good record. The spool never
//! guesses at what a damaged record held and never returns a corrupt one.
//! Truncations are reported in [`Recovery`]. Records of an utterance whose
//! BEGIN is gone belong to an utterance that was finished and collected, and
//! are skipped. What recovery promises, after any crash the model allows:
//!
//! - every record a completed [`Spool::sync`] covered is back, byte for byte;
//! - an utterance that was durably DONE or DROPped never comes back pending;
//! - ids go on from past every synced record.
//!
//! # Deletion
//!
//! A segment file is deleted when every utterance with a record in it is
//! done (delivered or dropped), none of those utterances still has a record
//! in an older segment that stays, and it is not the segment being written.
//! The second rule means an utterance loses its segments oldest first: a gap
//! in the middle would read back as a frame out of sequence, and deleting the
//! segment with its DONE while its BEGIN stays would bring it back as
//! pending. Acknowledged frames of an unfinished utterance stay on disk until
//! the utterance finishes; that costs a little space and keeps the rule
//! simple: nothing is deleted that the server does not hold, unless a policy
//! dropped it and wrote down why.
//!
//! # Eviction
//!
//! The spool is bounded by [`SpoolConfig::max_bytes`], 64 MiB by default
//! ([`DEFAULT_MAX_BYTES`]). That is about 4.5 hours of Opus at 32 kb/s (the
//! primary codec) or 35 minutes of PCM: hours of speech-gated recording
//! with no network, which covers a long flight or a day in a dead zone,
//! while staying small next to a phone's free space, so the app is not what
//! the OS's low-storage warnings point at. Recovery reads the whole spool
//! at start, so the bound also bounds start-up work.
//!
//! Before a BEGIN or FRAME that would take the spool past the bound, the
//! oldest pending utterances (by their BEGIN's record id), never the one
//! being appended to, are evicted one at a time until it fits: each gets a
//! DROP record with the reason `evicted: spool full (N bytes)`, N being the
//! bound, which makes its segments collectable under the usual rule. Space
//! comes back a whole segment at a time, so the bound should be several
//! segments. Evictions are counted ([`Spool::evictions`]) and reported: the
//! host drains [`Spool::take_evicted`] after each append and tells the
//! uplink and the app, as for any other drop.
//!
//! If evicting everything else is not enough, because the utterance being
//! recorded is itself larger than the bound, the spool keeps appending:
//! live audio is never dropped silently, and where to cut an utterance is
//! the boundary tracker's decision, not the spool's. It logs a
//! warning once and [`Spool::over_bound`] says so until space comes back.
//! END, DONE and DROP records are never refused or made room for: they are
//! small, and they are what lets space come back.

pub mod fs;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_proto::ble::Codec;
use lanyard_proto::record;
use thiserror::Error;
use uuid::Uuid;

pub use fs::{FaultyFile, FaultyFs, FileSync, SpoolFile, SpoolFs, StdFs};

/// The default fsync window (see the module doc).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(200);
/// A segment is closed once it passes this size. Small enough that a finished
/// utterance's space comes back soon, large enough that file churn is rare.
pub const SEGMENT_BYTES: u64 = 1 << 20;
/// The default bound on the spool's size on disk (see "Eviction" in the
/// module doc for why 64 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Largest record body accepted on recovery. Anything longer is corruption.
const MAX_BODY: usize = 64 + lanyard_proto::ble::MAX_FRAME_LEN;
const RECORD_HEADER: usize = record::HEADER;
const BODY_HEADER: usize = 8 + 1 + 16;

const KIND_BEGIN: u8 = 1;
const KIND_FRAME: u8 = 2;
const KIND_END: u8 = 3;
const KIND_DONE: u8 = 4;
const KIND_DROP: u8 = 5;
/// BEGIN's flag for an utterance no start marker opened.
const BEGIN_UNMARKED: u8 = 1;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool I/O error at {path}: {source}; check that the spool directory is writable and the disk is not full")]
    Io { path: PathBuf, source: io::Error },
    #[error("utterance {0} is not in the spool")]
    UnknownUtterance(Uuid),
    #[error("utterance {0} has already ended; no more frames can be added")]
    Ended(Uuid),
    #[error("utterance {0} already exists in the spool")]
    Exists(Uuid),
    #[error("frame {seq} of utterance {id} is not in the spool")]
    NoFrame { id: Uuid, seq: u32 },
    #[error("frame of {0} bytes is larger than any codec frame")]
    FrameTooLong(usize),
}

type Result<T, E = SpoolError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_owned(), source }
}

/// How big the spool may grow and how it is cut into files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The bound on bytes on disk, past which the oldest utterances are
    /// evicted (see the module doc). Should be several times
    /// `segment_bytes`: space comes back a whole segment at a time, and the
    /// segment being written never goes.
    pub max_bytes: u64,
    /// A segment is closed once it reaches this size.
    pub segment_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig { max_bytes: DEFAULT_MAX_BYTES, segment_bytes: SEGMENT_BYTES }
    }
}

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    /// Segments cut short because of a torn or corrupt record, with the bytes removed.
    pub truncated: Vec<(PathBuf, u64)>,
    /// Utterances with frames still to deliver.
    pub pending_utterances: usize,
}

/// Where a frame lives on disk.
#[derive(Debug, Clone, Copy)]
struct FrameLoc {
    segment: u64,
    /// Offset of the codec frame bytes within the segment file.
    offset: u64,
    len: u32,
    /// Codec bytes of the frames before this one in the utterance, so that
    /// [`Spool::bytes_from`], which the planner asks every tick, is O(1).
    before: u64,
}

impl SpooledUtterance {
    /// Where the next frame's record will be counted from.
    fn frame_bytes(&self) -> u64 {
        self.frames.last().map_or(0, |f| f.before + u64::from(f.len))
    }
}

/// An utterance as the spool knows it.
#[derive(Debug, Clone)]
pub struct SpooledUtterance {
    pub id: Uuid,
    pub codec: Codec,
    pub started_ms: u64,
    frames: Vec<FrameLoc>,
    /// Set by END: the utterance will get no more frames.
    pub ended: bool,
    /// Frames the pendant sent that never reached the phone.
    pub lost: u32,
    /// Set by BEGIN for an utterance no start marker opened (an Omi
    /// pendant's, see `boundary`): the server stores one with no speech
    /// without a reply. Told to the server in `open` and on the upload.
    pub unmarked: bool,
    /// Set by END for an utterance the relay cut at the server's endpoint:
    /// the frames from here on were carried into the next utterance, and
    /// the server transcribes only the ones before (see `boundary`).
    pub speech_frames: Option<u32>,
    /// Set by DONE or DROP: nothing more to deliver.
    pub done: bool,
    /// Set by DROP: why the utterance was discarded instead of delivered.
    pub dropped: Option<String>,
    segments: BTreeSet<u64>,
    /// Id of its BEGIN record: eviction goes oldest first by this, which
    /// does not depend on the utterance ids being time-ordered.
    first_record: u64,
}

impl SpooledUtterance {
    pub fn frame_count(&self) -> u32 {
        self.frames.len() as u32
    }
}

/// One segment file as the spool tracks it.
#[derive(Debug, Default)]
struct Segment {
    /// Bytes of whole records in it: its length on disk.
    len: u64,
    /// Utterances with a record in it; it can go once all of them are done.
    utterances: BTreeSet<Uuid>,
}

/// See the module doc. `F` is where the files live: the real filesystem
/// unless a test says otherwise.
pub struct Spool<F: SpoolFs = StdFs> {
    fs: F,
    cfg: SpoolConfig,
    dir: PathBuf,
    /// Segment first-id -> what it holds.
    segments: BTreeMap<u64, Segment>,
    active: F::File,
    active_id: u64,
    next_id: u64,
    /// Ordered by id; UUIDv7 ids sort by creation time, so this is oldest first.
    utterances: BTreeMap<Uuid, SpooledUtterance>,
    /// Records written since the last sync.
    unsynced: bool,
    /// A record other than a frame was written since the last sync.
    unsynced_marks: bool,
    /// Per utterance, its frame count after the last frame written since
    /// the last sync (see [`Spool::needs_sync`]).
    unsynced_frames: BTreeMap<Uuid, u32>,
    /// Records written since the spool was opened: tells a [`SyncJob`]
    /// whether it covered everything.
    writes: u64,
    /// Utterances evicted since the caller last asked, with the reason.
    evicted: Vec<(Uuid, String)>,
    /// Utterances evicted since the spool was opened.
    evictions: u64,
    /// Set while the spool is past `max_bytes` with nothing left to evict,
    /// so that the warning is logged once per episode, not once per frame.
    over_bound: bool,
    scratch: Vec<u8>,
    /// The newest bytes of the active segment, as written: what the uplink
    /// sends back out is nearly always a frame appended moments ago, and
    /// reading it from here spares a `pread` and an allocation per frame.
    /// Starts at `tail_base` in the file; at most [`TAIL_CACHE_BYTES`].
    tail: Vec<u8>,
    tail_base: u64,
    /// A second handle on the active segment for [`Spool::sync_job`], made
    /// once per segment rather than per fsync; a rotation drops it.
    sync_handle: Option<std::sync::Arc<<F::File as SpoolFile>::Syncer>>,
}

/// Bound on [`Spool`]'s in-memory copy of the active segment's newest bytes:
/// 6 to 11 s of Opus frames with their record headers (it keeps the newer
/// half when full), many send rounds.
const TAIL_CACHE_BYTES: usize = 64 << 10;

impl<F: SpoolFs> fmt::Debug for Spool<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("cfg", &self.cfg)
            .field("segments", &self.segments)
            .field("active_id", &self.active_id)
            .field("next_id", &self.next_id)
            .field("utterances", &self.utterances)
            .field("evictions", &self.evictions)
            .finish_non_exhaustive()
    }
}

fn segment_path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(format!("{first_id:020}.seg"))
}

impl Spool<StdFs> {
    /// Opens (creating if needed) the spool in `dir` on the real filesystem,
    /// with the default [`SpoolConfig`], and recovers its state.
    pub fn open(dir: &Path) -> Result<(Self, Recovery)> {
        Spool::open_with(StdFs, dir, SpoolConfig::default())
    }
}

/// See [`Spool::sync_job`]: an fsync of the active segment, through the
/// spool's [`SpoolFs`], that runs without borrowing the spool.
pub struct SyncJob<F: SpoolFs = StdFs> {
    file: std::sync::Arc<<F::File as SpoolFile>::Syncer>,
    path: PathBuf,
    writes: u64,
}

impl<F: SpoolFs> fmt::Debug for SyncJob<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncJob").field("path", &self.path).field("writes", &self.writes).finish_non_exhaustive()
    }
}

impl<F: SpoolFs> SyncJob<F> {
    /// The fsync itself; everything appended before the job was made is then
    /// durable.
    pub fn run(&self) -> Result<()> {
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

impl<F: SpoolFs> Spool<F> {
    /// An fsync of the active segment that runs without borrowing the spool,
    /// so appends can go on while a slow disk flushes; `None` when nothing
    /// is unsynced. Hand the job back to [`Spool::synced`] once it ran.
    pub fn sync_job(&mut self) -> Result<Option<SyncJob<F>>> {
        if !self.unsynced {
            return Ok(None);
        }
        let path = segment_path(&self.dir, self.active_id);
        let file = match &self.sync_handle {
            Some(file) => file.clone(),
            None => self.sync_handle.insert(std::sync::Arc::new(self.active.syncer().map_err(io_err(&path))?)).clone(),
        };
        Ok(Some(SyncJob { file, path, writes: self.writes }))
    }

    /// Records that `job` ran: the spool counts as synced only if nothing
    /// was appended since the job was made (a later append, or a rotation to
    /// a new segment, leaves it unsynced for the next sync).
    pub fn synced(&mut self, job: SyncJob<F>) {
        if job.writes == self.writes {
            self.mark_synced();
        }
    }

    fn mark_synced(&mut self) {
        self.unsynced = false;
        self.unsynced_marks = false;
        self.unsynced_frames.clear();
    }

    /// Whether the unsynced records need an fsync, given how many frames of
    /// each utterance the server has acknowledged as durable (`acked`).
    ///
    /// Frames the server holds need none: if an OS crash takes them from the
    /// page cache, the server's copy is the utterance (the uplink resumes
    /// from what the server holds, and the host never carries an utterance
    /// on across a restart). Any other record (a BEGIN, an END, a DONE or a
    /// DROP) always does, and so does a frame the server has not
    /// acknowledged: only the spool holds it.
    pub fn needs_sync(&self, acked: impl Fn(Uuid) -> Option<u32>) -> bool {
        self.unsynced
            && (self.unsynced_marks || self.unsynced_frames.iter().any(|(id, &n)| acked(*id).is_none_or(|a| a < n)))
    }

    /// Opens (creating if needed) the spool in `dir` on `fs` and recovers
    /// its state (see "Recovery" in the module doc).
    pub fn open_with(fs: F, dir: &Path, cfg: SpoolConfig) -> Result<(Self, Recovery)> {
        fs.create_dir_all(dir).map_err(io_err(dir))?;
        let mut ids: Vec<u64> = fs
            .list(dir)
            .map_err(io_err(dir))?
            .iter()
            .filter_map(|name| name.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();

        let mut recovery = Recovery { segments: ids.len(), ..Recovery::default() };
        let mut utterances = BTreeMap::new();
        let mut segments = BTreeMap::new();
        let mut next_id = 0u64;
        let mut last: Option<F::File> = None;
        for &seg in &ids {
            // A segment is named after its first record, so no record in it
            // or after it has a smaller id, even if every record it held was
            // lost. Without this, an empty newest segment whose older
            // neighbours were collected would restart the ids at zero.
            next_id = next_id.max(seg);
            let path = segment_path(dir, seg);
            let bytes = fs.read(&path).map_err(io_err(&path))?;
            let (good_len, touched) = replay_segment(&bytes, seg, &mut utterances, &mut next_id, &mut recovery);
            last = None;
            if good_len < bytes.len() as u64 {
                let mut f = fs.open_append(&path).map_err(io_err(&path))?;
                f.set_len(good_len).map_err(io_err(&path))?;
                f.sync_data().map_err(io_err(&path))?;
                recovery.truncated.push((path.clone(), bytes.len() as u64 - good_len));
                last = Some(f);
            }
            segments.insert(seg, Segment { len: good_len, utterances: touched });
        }
        let (active_id, active) = match (ids.last(), last) {
            (Some(&id), f) if segments[&id].len < cfg.segment_bytes => {
                let path = segment_path(dir, id);
                let f = match f {
                    Some(f) => f,
                    None => fs.open_append(&path).map_err(io_err(&path))?,
                };
                (id, f)
            }
            _ => {
                let path = segment_path(dir, next_id);
                segments.insert(next_id, Segment::default());
                (next_id, fs.open_append(&path).map_err(io_err(&path))?)
            }
        };
        recovery.pending_utterances = utterances.values().filter(|u: &&SpooledUtterance| !u.done).count();
        let mut spool = Spool {
            fs,
            cfg,
            dir: dir.to_owned(),
            segments,
            active,
            active_id,
            next_id,
            utterances,
            unsynced: false,
            unsynced_marks: false,
            unsynced_frames: BTreeMap::new(),
            writes: 0,
            evicted: Vec::new(),
            evictions: 0,
            over_bound: false,
            scratch: Vec::with_capacity(256),
            tail: Vec::new(),
            tail_base: 0,
            sync_handle: None,
        };
        spool.tail_base = spool.segments[&spool.active_id].len;
        spool.sync_dir()?;
        spool.collect_garbage()?;
        Ok((spool, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> SpoolConfig {
        self.cfg
    }

    /// Starts an utterance that a start marker opened. May evict older
    /// utterances to make room (see [`Spool::take_evicted`]).
    pub fn begin(&mut self, id: Uuid, codec: Codec, started_ms: u64) -> Result<()> {
        self.begin_with(id, codec, started_ms, false)
    }

    /// Starts an utterance, `unmarked` if no start marker opened it (see
    /// [`SpooledUtterance::unmarked`]). May evict older utterances to make
    /// room (see [`Spool::take_evicted`]).
    pub fn begin_with(&mut self, id: Uuid, codec: Codec, started_ms: u64, unmarked: bool) -> Result<()> {
        if self.utterances.contains_key(&id) {
            return Err(SpoolError::Exists(id));
        }
        let mut body = Vec::with_capacity(10);
        body.push(codec.id());
        body.extend_from_slice(&started_ms.to_le_bytes());
        // Only when it says something: a marked BEGIN is what relays
        // before the flag write and read (see the module doc).
        if unmarked {
            body.push(BEGIN_UNMARKED);
        }
        self.make_room(id, record_len(body.len(), 0))?;
        let first_record = self.next_id;
        let segment = self.append(KIND_BEGIN, id, &body, &[])?.0;
        self.utterances.insert(
            id,
            SpooledUtterance {
                id,
                codec,
                started_ms,
                frames: Vec::new(),
                ended: false,
                lost: 0,
                unmarked,
                speech_frames: None,
                done: false,
                dropped: None,
                segments: BTreeSet::from([segment]),
                first_record,
            },
        );
        Ok(())
    }

    /// Appends a frame; returns its sequence number within the utterance.
    /// May evict older utterances to make room (see [`Spool::take_evicted`]).
    pub fn append_frame(&mut self, id: Uuid, frame: &[u8]) -> Result<u32> {
        if frame.len() > lanyard_proto::ble::MAX_FRAME_LEN {
            return Err(SpoolError::FrameTooLong(frame.len()));
        }
        let u = self.utterances.get(&id).ok_or(SpoolError::UnknownUtterance(id))?;
        if u.ended {
            return Err(SpoolError::Ended(id));
        }
        self.make_room(id, record_len(4, frame.len()))?;
        let seq = self.utterances[&id].frame_count();
        let (segment, offset) = self.append(KIND_FRAME, id, &seq.to_le_bytes(), frame)?;
        let u = self.utterances.get_mut(&id).expect("checked above");
        let before = u.frame_bytes();
        u.frames.push(FrameLoc { segment, offset, len: frame.len() as u32, before });
        u.segments.insert(segment);
        Ok(seq)
    }

    /// Ends an utterance; returns its frame count.
    pub fn end(&mut self, id: Uuid, lost: u32) -> Result<u32> {
        self.end_cut(id, lost, None)
    }

    /// Ends an utterance whose speech is only its first `speech_frames`
    /// frames, when `Some` (it was cut at the server's endpoint, and the
    /// frames after were carried on; at most its frame count). Returns its
    /// frame count.
    pub fn end_cut(&mut self, id: Uuid, lost: u32, speech_frames: Option<u32>) -> Result<u32> {
        let u = self.utterances.get(&id).ok_or(SpoolError::UnknownUtterance(id))?;
        if u.ended {
            return Ok(u.frame_count());
        }
        let frames = u.frame_count();
        let speech_frames = speech_frames.map(|s| s.min(frames));
        let mut body = Vec::with_capacity(12);
        body.extend_from_slice(&frames.to_le_bytes());
        body.extend_from_slice(&lost.to_le_bytes());
        if let Some(s) = speech_frames {
            body.extend_from_slice(&s.to_le_bytes());
        }
        let (segment, _) = self.append(KIND_END, id, &body, &[])?;
        let u = self.utterances.get_mut(&id).expect("checked above");
        u.ended = true;
        u.lost = lost;
        u.speech_frames = speech_frames;
        u.segments.insert(segment);
        Ok(frames)
    }

    /// Records that the server holds the whole utterance, and deletes every
    /// segment that no longer holds anything undelivered.
    pub fn mark_done(&mut self, id: Uuid) -> Result<()> {
        let u = self.utterances.get(&id).ok_or(SpoolError::UnknownUtterance(id))?;
        if u.done {
            return Ok(());
        }
        let (segment, _) = self.append(KIND_DONE, id, &[], &[])?;
        // DONE must be durable before any file holding the utterance goes away,
        // or a crash could leave a half-deleted utterance that looks pending.
        self.sync()?;
        let u = self.utterances.get_mut(&id).expect("checked above");
        u.done = true;
        u.segments.insert(segment);
        self.collect_garbage()
    }

    /// Discards an utterance by policy: records why, durably, and deletes
    /// what no longer holds anything undelivered. The caller reports it.
    pub fn mark_dropped(&mut self, id: Uuid, reason: &str) -> Result<()> {
        let u = self.utterances.get(&id).ok_or(SpoolError::UnknownUtterance(id))?;
        if u.done {
            return Ok(());
        }
        let (segment, _) = self.append(KIND_DROP, id, reason.as_bytes(), &[])?;
        self.sync()?;
        let u = self.utterances.get_mut(&id).expect("checked above");
        u.done = true;
        u.dropped = Some(reason.to_string());
        u.segments.insert(segment);
        self.collect_garbage()
    }

    /// Bytes of codec frames of `id` from frame `from` on: what is left to
    /// send once the server holds `from` frames.
    pub fn bytes_from(&self, id: Uuid, from: u32) -> u64 {
        self.utterances.get(&id).map_or(0, |u| u.frames.get(from as usize).map_or(0, |f| u.frame_bytes() - f.before))
    }

    /// Reads frame `seq` of utterance `id` back: from the copy of the active
    /// segment's newest bytes if it is there, from disk otherwise.
    pub fn read_frame(&self, id: Uuid, seq: u32) -> Result<Vec<u8>> {
        let u = self.utterances.get(&id).ok_or(SpoolError::UnknownUtterance(id))?;
        let loc = *u.frames.get(seq as usize).ok_or(SpoolError::NoFrame { id, seq })?;
        if loc.segment == self.active_id
            && let Some(start) = loc.offset.checked_sub(self.tail_base)
            && let Some(bytes) = self.tail.get(start as usize..(start + u64::from(loc.len)) as usize)
        {
            return Ok(bytes.to_vec());
        }
        let mut buf = vec![0u8; loc.len as usize];
        if loc.segment == self.active_id {
            // The common case, a frame just appended: no path to build.
            self.active
                .read_at(loc.offset, &mut buf)
                .map_err(|e| SpoolError::Io { path: segment_path(&self.dir, loc.segment), source: e })?;
        } else {
            let path = segment_path(&self.dir, loc.segment);
            self.fs.read_at(&path, loc.offset, &mut buf).map_err(io_err(&path))?;
        }
        Ok(buf)
    }

    /// Makes everything appended so far survive an OS crash.
    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced {
            let path = segment_path(&self.dir, self.active_id);
            self.active.sync_data().map_err(io_err(&path))?;
            self.mark_synced();
        }
        Ok(())
    }

    /// Utterances not yet done, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &SpooledUtterance> {
        self.utterances.values().filter(|u| !u.done)
    }

    pub fn utterance(&self, id: Uuid) -> Option<&SpooledUtterance> {
        self.utterances.get(&id)
    }

    /// The newest utterance that has not ended, if any: the one a pendant
    /// that resumes after a relay restart is still speaking into.
    pub fn open_utterance(&self) -> Option<Uuid> {
        self.utterances.values().rev().find(|u| !u.ended && !u.done).map(|u| u.id)
    }

    /// Bytes on disk: the length of every segment file.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The id the next record will get. Ids never go back, across segments,
    /// restarts and crashes, for every record that was synced.
    pub fn next_record_id(&self) -> u64 {
        self.next_id
    }

    /// Utterances evicted since the spool was opened.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Utterances evicted since the last call, oldest first, each with the
    /// reason written in its DROP record. The host drains this after every
    /// [`Spool::begin`] and [`Spool::append_frame`] to tell the uplink and
    /// the app; the spool has already forgotten or finished them.
    pub fn take_evicted(&mut self) -> Vec<(Uuid, String)> {
        std::mem::take(&mut self.evicted)
    }

    /// Whether the spool is past `max_bytes` although nothing is left to
    /// evict: the utterance being recorded alone is larger than the bound.
    pub fn over_bound(&self) -> bool {
        self.disk_bytes() > self.cfg.max_bytes
    }

    /// Evicts the oldest pending utterances other than `keep` until a record
    /// of `need` bytes fits under `max_bytes`, or nothing else is left.
    fn make_room(&mut self, keep: Uuid, need: u64) -> Result<()> {
        while self.disk_bytes() + need > self.cfg.max_bytes {
            let victim = self
                .utterances
                .values()
                .filter(|u| !u.done && u.id != keep)
                .min_by_key(|u| u.first_record)
                .map(|u| u.id);
            let Some(victim) = victim else {
                if !self.over_bound {
                    tracing::warn!(
                        utterance = %keep,
                        disk_bytes = self.disk_bytes(),
                        max_bytes = self.cfg.max_bytes,
                        "spool is over its bound with nothing left to evict; keeping the live utterance"
                    );
                    self.over_bound = true;
                }
                return Ok(());
            };
            let reason = format!("evicted: spool full ({} bytes)", self.cfg.max_bytes);
            tracing::warn!(utterance = %victim, %reason, "evicting the oldest utterance");
            self.mark_dropped(victim, &reason)?;
            self.evictions += 1;
            self.evicted.push((victim, reason));
        }
        self.over_bound = false;
        Ok(())
    }

    fn append(&mut self, kind: u8, id: Uuid, head: &[u8], tail: &[u8]) -> Result<(u64, u64)> {
        if self.segments[&self.active_id].len >= self.cfg.segment_bytes {
            self.rotate()?;
        }
        let rec_id = self.next_id;
        let buf = &mut self.scratch;
        buf.clear();
        // The header is written by `seal` once the body is in place.
        buf.extend_from_slice(&[0; RECORD_HEADER]);
        buf.extend_from_slice(&rec_id.to_le_bytes());
        buf.push(kind);
        buf.extend_from_slice(id.as_bytes());
        buf.extend_from_slice(head);
        buf.extend_from_slice(tail);
        record::seal(buf);
        let seg = self.segments.get_mut(&self.active_id).expect("the active segment is tracked");
        // One write() per record: once it returns, the record survives the
        // process being killed.
        if let Err(e) = self.active.write_all(buf) {
            // A failed write (a full disk) may leave part of the record in
            // the file, and everything appended after it would then be cut
            // off at recovery. Take the part back if the file lets us.
            let _ = self.active.set_len(seg.len);
            return Err(SpoolError::Io { path: segment_path(&self.dir, self.active_id), source: e });
        }
        let tail_offset = seg.len + (buf.len() - tail.len()) as u64;
        seg.len += buf.len() as u64;
        if self.tail.len() + buf.len() > TAIL_CACHE_BYTES {
            // Keep the newer half: one move per half of the bound.
            let cut = self.tail.len() / 2;
            self.tail.drain(..cut);
            self.tail_base += cut as u64;
        }
        self.tail.extend_from_slice(buf);
        seg.utterances.insert(id);
        self.next_id += 1;
        self.unsynced = true;
        if kind == KIND_FRAME {
            let seq = u32::from_le_bytes(head[..4].try_into().expect("a frame record's head is its seq"));
            self.unsynced_frames.insert(id, seq + 1);
        } else {
            self.unsynced_marks = true;
        }
        self.writes += 1;
        Ok((self.active_id, tail_offset))
    }

    fn rotate(&mut self) -> Result<()> {
        // Only the newest segment may have a torn tail (see the module doc).
        self.sync()?;
        let id = self.next_id;
        let path = segment_path(&self.dir, id);
        self.active = self.fs.open_append(&path).map_err(io_err(&path))?;
        self.sync_handle = None;
        self.active_id = id;
        self.segments.insert(id, Segment::default());
        self.tail.clear();
        self.tail_base = 0;
        self.sync_dir()?;
        self.collect_garbage()
    }

    fn sync_dir(&self) -> Result<()> {
        self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))
    }

    /// Deletes closed segments whose utterances are all done, and forgets
    /// utterances that have no segment left.
    fn collect_garbage(&mut self) -> Result<()> {
        // A segment may go when every utterance in it is done and none of
        // them has a record in an older segment that stays: each utterance
        // loses its segments oldest first, never one from the middle. A gap
        // would be read back as a frame out of sequence (recovery would cut
        // the segment there), and losing the segment with the DONE while the
        // BEGIN stays would bring a delivered utterance back as pending.
        let mut dead: Vec<u64> = Vec::new();
        for (&seg, s) in &self.segments {
            let collectable = seg != self.active_id
                && s.utterances.iter().all(|id| {
                    self.utterances.get(id).is_none_or(|u| u.done && u.segments.range(..seg).all(|t| dead.contains(t)))
                });
            if collectable {
                dead.push(seg);
            }
        }
        // Oldest first, and each removal durable before the next: an
        // utterance's DONE may sit in a later dead segment than its BEGIN,
        // and if the later removal reached the disk without the earlier one,
        // recovery would find the utterance without its DONE and send it
        // again.
        for seg in &dead {
            let path = segment_path(&self.dir, *seg);
            match self.fs.remove(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::Io { path, source: e }),
            }
            self.sync_dir()?;
            self.segments.remove(seg);
        }
        if !dead.is_empty() {
            for u in self.utterances.values_mut() {
                u.segments.retain(|s| !dead.contains(s));
            }
            let segments = &self.segments;
            self.utterances.retain(|_, u| !(u.done && u.segments.iter().all(|s| !segments.contains_key(s))));
        }
        Ok(())
    }
}

/// Bytes a record with a kind-specific part of `head + tail` bytes takes.
fn record_len(head: usize, tail: usize) -> u64 {
    (RECORD_HEADER + BODY_HEADER + head + tail) as u64
}

/// Replays one segment's bytes into `utterances`. Returns the length of its
/// valid prefix and the utterances it touched.
fn replay_segment(
    bytes: &[u8],
    seg: u64,
    utterances: &mut BTreeMap<Uuid, SpooledUtterance>,
    next_id: &mut u64,
    recovery: &mut Recovery,
) -> (u64, BTreeSet<Uuid>) {
    let mut pos = 0usize;
    let mut touched = BTreeSet::new();
    while let Some((body, len)) = next_record(&bytes[pos..]) {
        let body_offset = (pos + RECORD_HEADER) as u64;
        if !apply_record(body, seg, body_offset, utterances, next_id, &mut touched) {
            break;
        }
        recovery.records += 1;
        pos += len;
    }
    (pos as u64, touched)
}

/// The next well-formed record at the start of `b`: its body and its total length.
fn next_record(b: &[u8]) -> Option<(&[u8], usize)> {
    record::next(b, &(BODY_HEADER..=MAX_BODY))
}

/// Applies one record body. Returns false if it does not make sense, which
/// recovery treats like a bad checksum.
fn apply_record(
    body: &[u8],
    seg: u64,
    body_offset: u64,
    utterances: &mut BTreeMap<Uuid, SpooledUtterance>,
    next_id: &mut u64,
    touched: &mut BTreeSet<Uuid>,
) -> bool {
    let rec_id = u64::from_le_bytes(body[0..8].try_into().expect("length checked"));
    if rec_id < *next_id {
        // Ids only grow; a smaller one is a stale or foreign record.
        return false;
    }
    let kind = body[8];
    let id = Uuid::from_bytes(body[9..25].try_into().expect("length checked"));
    let rest = &body[BODY_HEADER..];
    // Records of an utterance whose BEGIN is gone belong to an utterance
    // that was finished and collected: valid, and nothing to restore.
    let collected = matches!(kind, KIND_FRAME | KIND_END | KIND_DONE | KIND_DROP) && !utterances.contains_key(&id);
    let ok = collected
        || match kind {
            KIND_BEGIN if (rest.len() == 9 || rest.len() == 10) && !utterances.contains_key(&id) => {
                match Codec::from_id(rest[0]) {
                    Some(codec) => {
                        utterances.insert(
                            id,
                            SpooledUtterance {
                                id,
                                codec,
                                started_ms: u64::from_le_bytes(rest[1..9].try_into().expect("length checked")),
                                frames: Vec::new(),
                                ended: false,
                                lost: 0,
                                unmarked: rest.get(9).is_some_and(|flags| flags & BEGIN_UNMARKED != 0),
                                speech_frames: None,
                                done: false,
                                dropped: None,
                                segments: BTreeSet::new(),
                                first_record: rec_id,
                            },
                        );
                        true
                    }
                    None => false,
                }
            }
            KIND_FRAME if rest.len() >= 4 => match utterances.get_mut(&id) {
                Some(u) if !u.ended && u32::from_le_bytes(rest[0..4].try_into().expect("len")) == u.frame_count() => {
                    let before = u.frame_bytes();
                    u.frames.push(FrameLoc {
                        segment: seg,
                        offset: body_offset + (BODY_HEADER + 4) as u64,
                        len: (rest.len() - 4) as u32,
                        before,
                    });
                    true
                }
                _ => false,
            },
            KIND_END if rest.len() == 8 || rest.len() == 12 => match utterances.get_mut(&id) {
                Some(u) if u32::from_le_bytes(rest[0..4].try_into().expect("len")) == u.frame_count() => {
                    let speech = rest.get(8..12).map(|b| u32::from_le_bytes(b.try_into().expect("len")));
                    if speech.is_some_and(|s| s > u.frame_count()) {
                        false
                    } else {
                        u.ended = true;
                        u.lost = u32::from_le_bytes(rest[4..8].try_into().expect("len"));
                        u.speech_frames = speech;
                        true
                    }
                }
                _ => false,
            },
            KIND_DONE if rest.is_empty() => match utterances.get_mut(&id) {
                Some(u) => {
                    u.done = true;
                    true
                }
                None => false,
            },
            KIND_DROP => match (utterances.get_mut(&id), std::str::from_utf8(rest)) {
                (Some(u), Ok(reason)) => {
                    u.done = true;
                    u.dropped = Some(reason.to_string());
                    true
                }
                _ => false,
            },
            _ => false,
        };
    if ok {
        *next_id = rec_id + 1;
        touched.insert(id);
        if let Some(u) = utterances.get_mut(&id) {
            u.segments.insert(seg);
        }
    }
    ok
}
