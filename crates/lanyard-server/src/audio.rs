//! Durable utterance audio on the server.
//!
//! Each utterance's frames live in one append-only file,
//! `audio/{device}/{utterance}.frames`, as records:
//!
//! ```text
//! +--------------+-----------------+---------------------+
//! | len (u32 LE) | crc32c (u32 LE) | codec frame (len)   |
//! +--------------+-----------------+---------------------+
//! ```
//!
//! (`lanyard_proto::record`, the format of the relay's spool too.)
//!
//! Record *i* is frame *i*. The file is the truth about how many frames the
//! server holds: an acknowledgement is sent only after the records are
//! written and made durable, and on open a torn tail (from a crash mid-write)
//! is truncated, so the count never includes a frame that is not fully on disk.
//! Because the count is the resume point, and every append says which frame
//! it starts at (skipping what is held), a frame is never stored twice.
//!
//! Two ways in: [`UtteranceAudio::append_durable`] writes and `fdatasync`s
//! at once (the upload), and [`AudioStore::commit`] hands the append to the
//! store's group committer ([`commit`]), which writes the frames of many
//! connections and makes them durable with one sync (the stream).
//!
//! A file stays open while something holds its writer: a stream that has the
//! utterance open, an upload, a commit in flight. The store keeps only a weak
//! reference, so an utterance that is abandoned mid-way (the phone handed it
//! to a background upload that never came, or discarded it) closes its file
//! with its last holder instead of keeping a descriptor for the life of the
//! server; the next writer reopens it and recounts its frames from the file.
//! A writer whose write or sync fails records how much of its file is
//! durable at that moment, and the next writer cuts the file back to it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use lanyard_proto::ble::MAX_FRAME_LEN;
use lanyard_proto::record;
use uuid::Uuid;

pub mod commit;

pub use commit::{Append, Then};

/// The frames of one utterance, open for appending.
#[derive(Debug)]
pub struct UtteranceAudio {
    path: PathBuf,
    file: File,
    /// Records in the file.
    frames: u32,
    /// Records known to be durable: `frames`, except between a
    /// [`write`](Self::write) and the sync that covers it.
    durable: u32,
    /// File length after the records written, and after the durable ones.
    bytes: u64,
    durable_bytes: u64,
    /// `(frames, bytes)` after each write not yet known durable, so that a
    /// sync covering the first `n` records knows their length.
    pending: Vec<(u32, u64)>,
    /// A write or a sync failed: the file may hold records the disk does
    /// not (Linux marks pages clean after a failed write-back, so a reread
    /// would still see them). The store reopens it, cut back to
    /// `durable_bytes`, instead of appending.
    failed: bool,
    /// The device of the file's filesystem (`st_dev`): the committer's
    /// `syncfs` covers it only if it is the data directory's.
    dev: u64,
    /// Where the writer leaves its `durable_bytes` the moment it fails, so
    /// that the next writer of the file cuts what was never synced, even if
    /// this one has been let go by then. `None` once the file was replaced
    /// or deleted: its length no longer describes the file at that path.
    cuts: Option<Arc<Mutex<HashMap<PathBuf, u64>>>>,
}

impl UtteranceAudio {
    /// Frames held: records written to the file. Equal to [`durable`](Self::durable)
    /// except while a group commit is between its write and its sync.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Frames known to be durable.
    pub fn durable(&self) -> u32 {
        self.durable
    }

    /// Appends frames without syncing them (see [`append_durable`](Self::append_durable)
    /// for `first` and the return value); they count in [`durable`](Self::durable)
    /// only once a sync that started after this write has succeeded and
    /// [`synced`](Self::synced) says so.
    pub fn write<'a>(&mut self, first: u32, frames: impl IntoIterator<Item = &'a [u8]>) -> io::Result<u32> {
        if self.failed {
            return Err(io::Error::other(format!("{}: an earlier sync failed", self.path.display())));
        }
        if first > self.frames {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame {first} would leave a gap after the {} held", self.frames),
            ));
        }
        let mut buf = Vec::new();
        let mut n = 0u32;
        for f in frames.into_iter().skip((self.frames - first) as usize) {
            record::push(&mut buf, f);
            n += 1;
        }
        if n == 0 {
            return Ok(self.frames);
        }
        if let Err(e) = self.file.write_all(&buf) {
            // Part of the buffer may be in the file: a torn tail that only a
            // reopen (which truncates it) can account for.
            self.fail();
            return Err(e);
        }
        self.frames += n;
        self.bytes += buf.len() as u64;
        self.pending.push((self.frames, self.bytes));
        Ok(self.frames)
    }

    /// A sync that started after the first `frames` records were written
    /// has succeeded.
    pub fn synced(&mut self, frames: u32) {
        self.durable = self.durable.max(frames.min(self.frames));
        let durable = self.durable;
        if let Some(&(_, bytes)) = self.pending.iter().rev().find(|(f, _)| *f <= durable) {
            self.durable_bytes = self.durable_bytes.max(bytes);
        }
        self.pending.retain(|(f, _)| *f > durable);
    }

    /// A sync that covered this file's unsynced records failed.
    fn sync_failed(&mut self) {
        self.fail();
    }

    /// Marks the writer failed and leaves its durable length where the
    /// next writer of the file finds it, whether or not this one is still
    /// held by then (see [`AudioStore::writer`]).
    fn fail(&mut self) {
        self.failed = true;
        if let Some(cuts) = &self.cuts {
            cuts.lock().expect("audio cuts poisoned").insert(self.path.clone(), self.durable_bytes);
        }
    }

    /// `fdatasync`s the file if records written are not known durable yet.
    pub fn make_durable(&mut self) -> io::Result<u32> {
        if self.failed {
            return Err(io::Error::other(format!("{}: an earlier sync failed", self.path.display())));
        }
        if self.durable < self.frames {
            if let Err(e) = self.file.sync_data() {
                self.fail();
                return Err(e);
            }
            self.durable = self.frames;
            self.durable_bytes = self.bytes;
            self.pending.clear();
        }
        Ok(self.durable)
    }

    /// Appends frames and makes them durable: `frames` are frames `first`,
    /// `first + 1`, ... of the utterance. Those the file already holds are
    /// skipped, so two writers racing on one utterance (a stream resuming
    /// while a background upload completes it) never store a frame twice. A
    /// `first` past the end would leave a gap and is refused. Returns the
    /// frames held; on return `frames()` counts them.
    pub fn append_durable<'a>(&mut self, first: u32, frames: impl IntoIterator<Item = &'a [u8]>) -> io::Result<u32> {
        self.write(first, frames)?;
        self.make_durable()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every intact frame of a file; the second value is the length of the
/// intact prefix in bytes.
pub fn read_records(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut records = record::read(bytes, 0..=MAX_FRAME_LEN);
    let frames = records.by_ref().collect();
    (frames, records.intact_len())
}

/// All utterance audio files, and the ones currently open.
#[derive(Debug)]
pub struct AudioStore {
    root: PathBuf,
    /// Utterances being written, held weakly (see the module doc). A stream
    /// and an upload of the same utterance share one writer, so their
    /// appends are serialized.
    open: Mutex<OpenWriters>,
    /// Failed writers' durable lengths, by path (see [`UtteranceAudio`]):
    /// an entry stays until a reopen has cut the file to it.
    cuts: Arc<Mutex<HashMap<PathBuf, u64>>>,
    /// The group committer of [`commit`](Self::commit), started on first use.
    committer: std::sync::OnceLock<commit::Committer>,
}

impl AudioStore {
    pub fn new(root: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            open: Mutex::new(OpenWriters::default()),
            cuts: Arc::default(),
            committer: std::sync::OnceLock::new(),
        })
    }

    /// Audio files open now: utterances whose writer something still holds.
    pub fn open_files(&self) -> usize {
        self.open.lock().expect("audio map poisoned").live.values().filter(|w| w.strong_count() > 0).count()
    }

    /// Appends frames through the group committer (see [`commit`]): the
    /// answer comes once they are durable, with the frames held, as from
    /// [`UtteranceAudio::append_durable`]; then `append.then` runs, on the
    /// committer's feeder thread, in the order of the commits.
    pub fn commit(&self, append: Append) -> commit::Ticket {
        self.committer
            .get_or_init(|| commit::Committer::start(commit::FsSync::new(&self.root), commit::COMMIT_WINDOW))
            .submit(append)
    }

    pub fn path(&self, device: Uuid, utterance: Uuid) -> PathBuf {
        self.root.join(device.to_string()).join(format!("{utterance}.frames"))
    }

    /// Opens an utterance for appending, recovering its frame count. Blocking.
    pub fn writer(&self, device: Uuid, utterance: Uuid) -> io::Result<Arc<Mutex<UtteranceAudio>>> {
        let mut open = self.open.lock().expect("audio map poisoned");
        let path = self.path(device, utterance);
        if let Some(w) = open.live.get(&utterance).and_then(Weak::upgrade) {
            let mut a = w.lock().expect("audio lock poisoned");
            if !a.failed {
                drop(a);
                drop(open);
                // The count is a resume point: what it counts must be
                // durable (frames a group commit wrote and has not synced
                // yet are synced here, outside the map's lock).
                w.lock().expect("audio lock poisoned").make_durable()?;
                return Ok(w);
            }
            // A failed writer is replaced. It recorded its durable length
            // when it failed; from now on it must not record again, since
            // the file at its path will hold newer data.
            a.cuts = None;
        }
        // After a failed write or sync: how much of the file is known
        // durable, as the failed writer recorded it (held or not by now).
        // The entry goes only once the file is cut, so a reopen that fails
        // on a sick disk leaves it for the next try.
        let cut_to = self.cuts.lock().expect("audio cuts poisoned").get(&path).copied();
        // Not open, or a write or sync of it failed: (re)open and recount.
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        if let Some(len) = cut_to
            && len < file.metadata()?.len()
        {
            // What is past the last successful sync may be in the page cache
            // only: cut it, and make the cut durable, before counting.
            tracing::warn!(path = %path.display(), keep = len, "reopening audio after a failed write or sync; cutting what was not synced");
            file.set_len(len)?;
            file.sync_all()?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, good) = read_records(&bytes);
        let frames = records.len() as u32;
        if good < bytes.len() {
            tracing::warn!(path = %path.display(), cut = bytes.len() - good, "truncating a torn audio tail");
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        let dev = std::os::unix::fs::MetadataExt::dev(&file.metadata()?);
        self.cuts.lock().expect("audio cuts poisoned").remove(&path);
        let good = good as u64;
        let w = Arc::new(Mutex::new(UtteranceAudio {
            path,
            file,
            frames,
            durable: frames,
            bytes: good,
            durable_bytes: good,
            pending: Vec::new(),
            failed: false,
            dev,
            cuts: Some(self.cuts.clone()),
        }));
        open.insert(utterance, &w);
        Ok(w)
    }

    /// Forgets an open writer once the utterance is complete.
    pub fn close(&self, utterance: Uuid) {
        self.open.lock().expect("audio map poisoned").live.remove(&utterance);
    }

    /// Deletes an utterance's audio file, if it has one, and forgets its
    /// writer. Returns whether a file was removed. Blocking.
    ///
    /// A stream still appending to it writes into the unlinked file, which
    /// the filesystem frees when the writer closes; its `end` then finds no
    /// utterance row and fails.
    pub fn remove(&self, device: Uuid, utterance: Uuid) -> io::Result<bool> {
        if let Some(w) = self.open.lock().expect("audio map poisoned").live.remove(&utterance).and_then(|w| w.upgrade())
        {
            // Its length must not apply to a new file at the same path.
            w.lock().expect("audio lock poisoned").cuts = None;
        }
        self.cuts.lock().expect("audio cuts poisoned").remove(&self.path(device, utterance));
        match fs::remove_file(self.path(device, utterance)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes every audio file of a device, with its folder, and forgets
    /// their writers. Returns the number of utterance files removed. Blocking.
    pub fn remove_device(&self, device: Uuid) -> io::Result<u64> {
        let dir = self.root.join(device.to_string());
        self.open.lock().expect("audio map poisoned").live.retain(|_, w| {
            w.upgrade().is_some_and(|w| {
                let mut a = w.lock().expect("audio lock poisoned");
                let keep = !a.path.starts_with(&dir);
                if !keep {
                    a.cuts = None;
                }
                keep
            })
        });
        self.cuts.lock().expect("audio cuts poisoned").retain(|path, _| !path.starts_with(&dir));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "frames") {
                removed += 1;
            }
            fs::remove_file(&path)?;
        }
        match fs::remove_dir(&dir) {
            // A stream of the device opened a new file meanwhile: it stays,
            // as new data, and the folder with it.
            Err(e) if e.kind() != io::ErrorKind::NotFound && e.kind() != io::ErrorKind::DirectoryNotEmpty => Err(e),
            _ => Ok(removed),
        }
    }

    /// Reads the first `frames` frames of an utterance. Blocking.
    pub fn read(&self, device: Uuid, utterance: Uuid, frames: u32) -> io::Result<Vec<Vec<u8>>> {
        let path = self.path(device, utterance);
        let bytes = fs::read(&path)?;
        let (records, _) = read_records(&bytes);
        if records.len() < frames as usize {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} holds {} frames, expected {frames}", path.display(), records.len()),
            ));
        }
        Ok(records.into_iter().take(frames as usize).map(<[u8]>::to_vec).collect())
    }
}

/// The store's weak map of writers. Entries of writers that were let go are
/// swept when the map has doubled since the last sweep, so that it stays
/// proportional to the files actually open.
#[derive(Debug, Default)]
struct OpenWriters {
    live: HashMap<Uuid, Weak<Mutex<UtteranceAudio>>>,
    sweep_at: usize,
}

impl OpenWriters {
    fn insert(&mut self, utterance: Uuid, writer: &Arc<Mutex<UtteranceAudio>>) {
        self.live.insert(utterance, Arc::downgrade(writer));
        if self.live.len() >= self.sweep_at {
            self.live.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (2 * self.live.len()).max(1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An utterance abandoned mid-way (its stream gone, never completed)
    /// must not keep its file open: the server would run out of descriptors.
    #[test]
    fn a_file_closes_with_the_last_holder_of_its_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = AudioStore::new(dir.path().to_owned()).unwrap();
        let d = Uuid::now_v7();
        let ids: Vec<Uuid> = (0..3000).map(|_| Uuid::now_v7()).collect();
        for (i, &u) in ids.iter().enumerate() {
            let w = store.writer(d, u).unwrap();
            w.lock().unwrap().append_durable(0, [&[i as u8][..]]).unwrap();
            // A second holder (an upload beside the stream) shares the writer.
            let again = store.writer(d, u).unwrap();
            assert!(Arc::ptr_eq(&w, &again));
            assert_eq!(store.open_files(), 1);
        }
        assert_eq!(store.open_files(), 0);
        // The weak map is swept as it grows: it stays far below one entry per
        // utterance ever written.
        assert!(store.open.lock().unwrap().live.len() <= 1024, "{} entries", store.open.lock().unwrap().live.len());
        // Reopened, each counts what its file holds and goes on from there.
        let w = store.writer(d, ids[7]).unwrap();
        assert_eq!(w.lock().unwrap().frames(), 1);
        assert_eq!(w.lock().unwrap().append_durable(1, [&b"more"[..]]).unwrap(), 2);
        assert_eq!(store.read(d, ids[7], 2).unwrap(), vec![vec![7u8], b"more".to_vec()]);
    }

    #[test]
    fn frames_survive_reopen_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (d, u) = (Uuid::now_v7(), Uuid::now_v7());
        let store = AudioStore::new(dir.path().to_owned()).unwrap();
        let w = store.writer(d, u).unwrap();
        assert_eq!(w.lock().unwrap().append_durable(0, [&b"one"[..], b"two"]).unwrap(), 2);
        let path = w.lock().unwrap().path().to_owned();
        drop(w);
        store.close(u);
        // A crash mid-write leaves half a record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let w = store.writer(d, u).unwrap();
        assert_eq!(w.lock().unwrap().frames(), 2);
        assert_eq!(w.lock().unwrap().append_durable(2, [&b"three"[..]]).unwrap(), 3);
        assert_eq!(store.read(d, u, 3).unwrap(), vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
        assert!(store.read(d, u, 4).is_err());

        // Two writers racing (a resumed stream, an upload that completed the
        // utterance meanwhile): what one stored, the other skips.
        assert_eq!(
            w.lock().unwrap().append_durable(0, [&b"one"[..], &b"two"[..], &b"three"[..], &b"four"[..]]).unwrap(),
            4
        );
        assert_eq!(w.lock().unwrap().append_durable(2, [&b"three"[..], &b"four"[..]]).unwrap(), 4);
        assert_eq!(store.read(d, u, 4).unwrap().len(), 4);
        assert!(store.read(d, u, 5).is_err(), "a frame was stored twice");
        assert!(w.lock().unwrap().append_durable(6, [&b"gap"[..]]).is_err(), "a gap is refused");

        // Removal: one utterance, then the rest of the device.
        let u2 = Uuid::now_v7();
        store.writer(d, u2).unwrap().lock().unwrap().append_durable(0, [&b"x"[..]]).unwrap();
        assert!(store.remove(d, u).unwrap());
        assert!(!store.remove(d, u).unwrap(), "removed twice");
        assert!(store.read(d, u, 0).is_err());
        assert_eq!(store.remove_device(d).unwrap(), 1);
        assert!(!dir.path().join(d.to_string()).exists());
        assert_eq!(store.remove_device(d).unwrap(), 0);
        // A new writer starts from nothing, not from a forgotten one.
        assert_eq!(store.writer(d, u2).unwrap().lock().unwrap().frames(), 0);
    }
}
