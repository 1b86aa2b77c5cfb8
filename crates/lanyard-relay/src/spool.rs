//! The durable spool: audio is on disk before anything else happens to it.
//!
//! # Why
//!
//! iOS may suspend or kill the app at any moment, and a memory buffer dies
//! with it. So every frame that comes off BLE is written to a file first, and
//! the uplink reads what it sends from that file. A frame leaves the spool
//! only when the server has said it holds the whole utterance durably.
//!
//! # On-disk format
//!
//! The spool is a directory of append-only segment files named after the id
//! of their first record, `{id:020}.seg`, so that sorting names sorts records.
//! A segment is a sequence of records:
//!
//! ```text
//! +--------------+----------------+--------------------------------------+
//! | len (u32 LE) | crc32c (u32 LE)| body (len bytes)                     |
//! +--------------+----------------+--------------------------------------+
//! body: | id (u64 LE) | kind (u8) | utterance id (16) | kind-specific ... |
//!   kind 1 BEGIN  codec id (u8), started at Unix ms (u64 LE)
//!   kind 2 FRAME  seq (u32 LE), codec frame bytes
//!   kind 3 END    frame count (u32 LE), frames lost on BLE (u32 LE)
//!   kind 4 DONE   (nothing): the server confirmed the utterance complete
//!   kind 5 DROP   reason (UTF-8): discarded by an explicit policy (TTL, eviction)
//! ```
//!
//! Record ids grow by one per record across segments and restarts, so they
//! order everything the spool ever wrote.
//!
//! # Durability
//!
//! Each record is handed to the kernel with one `write()` as soon as it is
//! appended. That alone survives the app being killed, which is the common
//! failure on a phone. Surviving an OS crash or power loss needs `fsync`; the
//! host calls [`Spool::sync`] on a timer, every [`DEFAULT_SYNC_INTERVAL`] by
//! default. That interval is the acceptable window of data loss on an OS
//! crash. A segment is also synced before the spool moves on to the next one,
//! so only the newest segment can ever have a torn tail.
//!
//! # Recovery
//!
//! [`Spool::open`] reads every segment in order. A record whose length runs
//! past the end of the file, whose checksum does not match, or whose body does
//! not parse ends the segment: the file is truncated to the last good record.
//! The spool never guesses at what a damaged record held and never returns a
//! corrupt one. Truncations are reported in [`Recovery`].
//!
//! # Deletion
//!
//! A segment file is deleted when every utterance with a record in it is
//! done (the server acknowledged all of its frames and its end) and it is not
//! the segment being written. Acknowledged frames of an unfinished utterance
//! stay on disk until the utterance finishes; that costs a little space and
//! keeps the rule simple: nothing is deleted that the server does not hold.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_proto::ble::Codec;
use thiserror::Error;
use uuid::Uuid;

/// The default fsync window (see the module doc).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(200);
/// A segment is closed once it passes this size. Small enough that a finished
/// utterance's space comes back soon, large enough that file churn is rare.
pub const SEGMENT_BYTES: u64 = 1 << 20;
/// Largest record body accepted on recovery. Anything longer is corruption.
const MAX_BODY: usize = 64 + lanyard_proto::ble::MAX_FRAME_LEN;
const RECORD_HEADER: usize = 8;
const BODY_HEADER: usize = 8 + 1 + 16;

const KIND_BEGIN: u8 = 1;
const KIND_FRAME: u8 = 2;
const KIND_END: u8 = 3;
const KIND_DONE: u8 = 4;
const KIND_DROP: u8 = 5;

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
    /// Set by DONE or DROP: nothing more to deliver.
    pub done: bool,
    /// Set by DROP: why the utterance was discarded instead of delivered.
    pub dropped: Option<String>,
    segments: BTreeSet<u64>,
}

impl SpooledUtterance {
    pub fn frame_count(&self) -> u32 {
        self.frames.len() as u32
    }
}

/// See the module doc.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Segment first-id -> utterances with records in it.
    segments: BTreeMap<u64, BTreeSet<Uuid>>,
    active: File,
    active_id: u64,
    active_len: u64,
    next_id: u64,
    /// Ordered by id; UUIDv7 ids sort by creation time, so this is oldest first.
    utterances: BTreeMap<Uuid, SpooledUtterance>,
    /// Records written since the last sync.
    unsynced: bool,
    scratch: Vec<u8>,
}

fn segment_path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(format!("{first_id:020}.seg"))
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and recovers its state.
    pub fn open(dir: &Path) -> Result<(Self, Recovery)> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();

        let mut recovery = Recovery { segments: ids.len(), ..Recovery::default() };
        let mut utterances = BTreeMap::new();
        let mut segments = BTreeMap::new();
        let mut next_id = 0u64;
        let mut last_len = 0u64;
        for &seg in &ids {
            let path = segment_path(dir, seg);
            let (good_len, file_len, touched) = replay_segment(&path, seg, &mut utterances, &mut next_id, &mut recovery)?;
            if good_len < file_len {
                let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                f.set_len(good_len).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                recovery.truncated.push((path.clone(), file_len - good_len));
            }
            segments.insert(seg, touched);
            last_len = good_len;
        }
        let (active_id, active_len) = match ids.last() {
            Some(&id) if last_len < SEGMENT_BYTES => (id, last_len),
            _ => {
                segments.insert(next_id, BTreeSet::new());
                (next_id, 0)
            }
        };
        let path = segment_path(dir, active_id);
        let active = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io_err(&path))?;
        recovery.pending_utterances = utterances.values().filter(|u: &&SpooledUtterance| !u.done).count();
        let mut spool = Spool {
            dir: dir.to_owned(),
            segments,
            active,
            active_id,
            active_len,
            next_id,
            utterances,
            unsynced: false,
            scratch: Vec::with_capacity(256),
        };
        spool.sync_dir()?;
        spool.collect_garbage()?;
        Ok((spool, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts an utterance.
    pub fn begin(&mut self, id: Uuid, codec: Codec, started_ms: u64) -> Result<()> {
        if self.utterances.contains_key(&id) {
            return Err(SpoolError::Exists(id));
        }
        let mut body = [0u8; 9];
        body[0] = codec.id();
        body[1..].copy_from_slice(&started_ms.to_le_bytes());
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
                done: false,
                dropped: None,
                segments: BTreeSet::from([segment]),
            },
        );
        Ok(())
    }

    /// Appends a frame; returns its sequence number within the utterance.
    pub fn append_frame(&mut self, id: Uuid, frame: &[u8]) -> Result<u32> {
        if frame.len() > lanyard_proto::ble::MAX_FRAME_LEN {
            return Err(SpoolError::FrameTooLong(frame.len()));
        }
        let u = self.utterances.get(&id).ok_or(SpoolError::UnknownUtterance(id))?;
        if u.ended {
            return Err(SpoolError::Ended(id));
        }
        let seq = u.frame_count();
        let (segment, offset) = self.append(KIND_FRAME, id, &seq.to_le_bytes(), frame)?;
        let u = self.utterances.get_mut(&id).expect("checked above");
        u.frames.push(FrameLoc { segment, offset, len: frame.len() as u32 });
        u.segments.insert(segment);
        Ok(seq)
    }

    /// Ends an utterance; returns its frame count.
    pub fn end(&mut self, id: Uuid, lost: u32) -> Result<u32> {
        let u = self.utterances.get(&id).ok_or(SpoolError::UnknownUtterance(id))?;
        if u.ended {
            return Ok(u.frame_count());
        }
        let frames = u.frame_count();
        let mut body = [0u8; 8];
        body[..4].copy_from_slice(&frames.to_le_bytes());
        body[4..].copy_from_slice(&lost.to_le_bytes());
        let (segment, _) = self.append(KIND_END, id, &body, &[])?;
        let u = self.utterances.get_mut(&id).expect("checked above");
        u.ended = true;
        u.lost = lost;
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
        self.utterances
            .get(&id)
            .map_or(0, |u| u.frames.iter().skip(from as usize).map(|f| u64::from(f.len)).sum())
    }

    /// Reads frame `seq` of utterance `id` back from disk.
    pub fn read_frame(&self, id: Uuid, seq: u32) -> Result<Vec<u8>> {
        let u = self.utterances.get(&id).ok_or(SpoolError::UnknownUtterance(id))?;
        let loc = *u.frames.get(seq as usize).ok_or(SpoolError::NoFrame { id, seq })?;
        let path = segment_path(&self.dir, loc.segment);
        let mut buf = vec![0u8; loc.len as usize];
        if loc.segment == self.active_id {
            self.active.read_exact_at(&mut buf, loc.offset).map_err(io_err(&path))?;
        } else {
            let f = File::open(&path).map_err(io_err(&path))?;
            f.read_exact_at(&mut buf, loc.offset).map_err(io_err(&path))?;
        }
        Ok(buf)
    }

    /// Makes everything appended so far survive an OS crash.
    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced {
            let path = segment_path(&self.dir, self.active_id);
            self.active.sync_data().map_err(io_err(&path))?;
            self.unsynced = false;
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

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments
            .keys()
            .filter_map(|&s| fs::metadata(segment_path(&self.dir, s)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn append(&mut self, kind: u8, id: Uuid, head: &[u8], tail: &[u8]) -> Result<(u64, u64)> {
        if self.active_len >= SEGMENT_BYTES {
            self.rotate()?;
        }
        let body_len = BODY_HEADER + head.len() + tail.len();
        let rec_id = self.next_id;
        let buf = &mut self.scratch;
        buf.clear();
        buf.extend_from_slice(&(body_len as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&rec_id.to_le_bytes());
        buf.push(kind);
        buf.extend_from_slice(id.as_bytes());
        buf.extend_from_slice(head);
        buf.extend_from_slice(tail);
        let crc = crc32c::crc32c(&buf[RECORD_HEADER..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let path = segment_path(&self.dir, self.active_id);
        // One write() per record: once it returns, the record survives the
        // process being killed.
        self.active.write_all(buf).map_err(io_err(&path))?;
        let tail_offset = self.active_len + (buf.len() - tail.len()) as u64;
        self.active_len += buf.len() as u64;
        self.next_id += 1;
        self.unsynced = true;
        self.segments.entry(self.active_id).or_default().insert(id);
        Ok((self.active_id, tail_offset))
    }

    fn rotate(&mut self) -> Result<()> {
        self.sync()?;
        let id = self.next_id;
        let path = segment_path(&self.dir, id);
        self.active = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io_err(&path))?;
        self.active_id = id;
        self.active_len = 0;
        self.segments.insert(id, BTreeSet::new());
        self.sync_dir()?;
        self.collect_garbage()
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))
    }

    /// Deletes closed segments whose utterances are all done, and forgets
    /// utterances that have no segment left.
    fn collect_garbage(&mut self) -> Result<()> {
        let dead: Vec<u64> = self
            .segments
            .iter()
            .filter(|&(&seg, utts)| {
                seg != self.active_id && utts.iter().all(|u| self.utterances.get(u).is_none_or(|u| u.done))
            })
            .map(|(&seg, _)| seg)
            .collect();
        for seg in &dead {
            let path = segment_path(&self.dir, *seg);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::Io { path, source: e }),
            }
            self.segments.remove(seg);
        }
        if !dead.is_empty() {
            self.sync_dir()?;
            for u in self.utterances.values_mut() {
                u.segments.retain(|s| !dead.contains(s));
            }
            let segments = &self.segments;
            self.utterances.retain(|_, u| !(u.done && u.segments.iter().all(|s| !segments.contains_key(s))));
        }
        Ok(())
    }
}

/// Replays one segment into `utterances`. Returns the length of its valid
/// prefix, the file length, and the utterances it touched.
fn replay_segment(
    path: &Path,
    seg: u64,
    utterances: &mut BTreeMap<Uuid, SpooledUtterance>,
    next_id: &mut u64,
    recovery: &mut Recovery,
) -> Result<(u64, u64, BTreeSet<Uuid>)> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(path))?;
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
    Ok((pos as u64, bytes.len() as u64, touched))
}

/// The next well-formed record at the start of `b`: its body and its total length.
fn next_record(b: &[u8]) -> Option<(&[u8], usize)> {
    if b.len() < RECORD_HEADER {
        return None;
    }
    let len = u32::from_le_bytes(b[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b[4..8].try_into().ok()?);
    if !(BODY_HEADER..=MAX_BODY).contains(&len) || b.len() < RECORD_HEADER + len {
        return None;
    }
    let body = &b[RECORD_HEADER..RECORD_HEADER + len];
    (crc32c::crc32c(body) == crc).then_some((body, RECORD_HEADER + len))
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
    let ok = collected || match kind {
        KIND_BEGIN if rest.len() == 9 && !utterances.contains_key(&id) => match Codec::from_id(rest[0]) {
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
                        done: false,
                        dropped: None,
                        segments: BTreeSet::new(),
                    },
                );
                true
            }
            None => false,
        },
        KIND_FRAME if rest.len() >= 4 => match utterances.get_mut(&id) {
            Some(u) if !u.ended && u32::from_le_bytes(rest[0..4].try_into().expect("len")) == u.frame_count() => {
                u.frames.push(FrameLoc {
                    segment: seg,
                    offset: body_offset + (BODY_HEADER + 4) as u64,
                    len: (rest.len() - 4) as u32,
                });
                true
            }
            _ => false,
        },
        KIND_END if rest.len() == 8 => match utterances.get_mut(&id) {
            Some(u) if u32::from_le_bytes(rest[0..4].try_into().expect("len")) == u.frame_count() => {
                u.ended = true;
                u.lost = u32::from_le_bytes(rest[4..8].try_into().expect("len"));
                true
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
