//! Group commit across connections: one sync makes the frames of every
//! connection durable.
//!
//! A connection hands its batch to [`Committer::submit`] (through
//! [`AudioStore::commit`](super::AudioStore::commit)) and awaits the
//! [`Ticket`]. One thread, the committer, loops:
//!
//! 1. wait until an append is queued (no timer: an idle server starts at
//!    once), and until [`COMMIT_WINDOW`] has passed since the previous sync
//!    started (so under load at most one sync a window, and every append
//!    queued meanwhile joins the next one);
//! 2. take every queued append and `write()` it to its utterance's file
//!    (page cache only; [`UtteranceAudio::write`]);
//! 3. sync once for all of them ([`FsSync`]: one `syncfs(2)` of the data
//!    directory's filesystem, or one `fdatasync` per file for a single
//!    file or when `syncfs` fails);
//! 4. only then answer the tickets, with the frames now durable; then hand
//!    each append's `then` (the live transcriber's feed) to a feeder thread,
//!    in commit order.
//!
//! Every ticket answered in step 4 is for a write made in step 2, before the
//! sync of step 3 started, so an acknowledgement never covers a frame that is
//! not durable. A failed sync fails the tickets of the files it covered and
//! marks those files failed (the store reopens them, recounting what they
//! hold).
//!
//! Memory is bounded by the connections: each has at most one batch (of at
//! most `ingest::BATCH` messages) queued here and reads nothing more from its
//! socket until the ticket is answered, so storage that falls behind slows
//! the senders through TCP. The feeder's queue is bounded too
//! ([`FEED_QUEUE`]); a feed that does not fit is dropped, which the live
//! transcriber sees as a gap (it stops following that utterance and the
//! pipeline decodes it in full).

use std::collections::HashSet;
use std::fs::File;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::UtteranceAudio;

/// The shortest time between the starts of two syncs: the fsync window.
/// Appends that come while a sync runs, or within this of the previous
/// one's start, wait for the next. An append on an idle server waits for
/// nothing but its own sync.
pub const COMMIT_WINDOW: Duration = Duration::from_millis(5);

/// From this many files touched in one window, one `syncfs` instead of an
/// `fdatasync` each (on this VM an `fdatasync` costs about as much as a
/// `syncfs`, about 2 ms, and they do not overlap).
pub const SYNCFS_MIN_FILES: usize = 2;

/// A sync this long is logged (at warn): every ack waits for it.
pub const SLOW_SYNC: Duration = Duration::from_millis(50);

/// Feeds waiting for the feeder thread, at most.
pub const FEED_QUEUE: usize = 4096;

/// Runs after the frames are durable: `(first, frames)` of the append.
pub type Then = Box<dyn FnOnce(u32, &[Vec<u8>]) + Send>;

/// Frames `first`, `first + 1`, ... of an utterance, to append (as
/// [`UtteranceAudio::write`]: frames the file holds already are skipped).
pub struct Append {
    pub audio: Arc<Mutex<UtteranceAudio>>,
    pub first: u32,
    pub frames: Vec<Vec<u8>>,
    /// Run once the frames are durable, off the committer's thread, in the
    /// order of the appends.
    pub then: Option<Then>,
}

/// The answer to an [`Append`]: the frames the utterance holds durably once
/// its frames are, or why they could not be stored.
pub struct Ticket(oneshot::Receiver<io::Result<u32>>);

impl Future for Ticket {
    type Output = io::Result<u32>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(io::Error::other("the audio committer stopped"))))
    }
}

impl Ticket {
    /// Waits for the answer on a thread that is not a runtime's.
    pub fn wait(self) -> io::Result<u32> {
        self.0.blocking_recv().unwrap_or_else(|_| Err(io::Error::other("the audio committer stopped")))
    }
}

/// How written records become durable.
pub trait Syncer: Send + 'static {
    /// Makes everything written to `files` so far durable; one result a file.
    fn sync(&mut self, files: &[Arc<Mutex<UtteranceAudio>>]) -> Vec<io::Result<()>>;
}

/// The real thing: `syncfs` on the data directory when the files are on its
/// filesystem, else (or if `syncfs` fails) `fdatasync` on each file.
///
/// `syncfs` writes back everything dirty on that filesystem, other
/// programs' files included: put the data directory on a filesystem of its
/// own so its syncs carry only audio.
pub struct FsSync {
    /// The data directory, and its device.
    root: Option<(File, u64)>,
    /// Off after `syncfs` said it cannot work here.
    syncfs: bool,
}

impl FsSync {
    pub fn new(root: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let root = File::open(root).and_then(|f| f.metadata().map(|m| (f, m.dev()))).ok();
        // Before Linux 5.8, syncfs returned 0 even when write-back failed:
        // an ack could then cover frames the disk never took.
        let syncfs = kernel_at_least(5, 8);
        if !syncfs {
            tracing::warn!(
                "this kernel's syncfs does not report write-back errors (before Linux 5.8); audio is synced file by file"
            );
        }
        Self { root, syncfs }
    }
}

/// Whether the running Linux kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

impl Syncer for FsSync {
    fn sync(&mut self, files: &[Arc<Mutex<UtteranceAudio>>]) -> Vec<io::Result<()>> {
        if files.len() >= SYNCFS_MIN_FILES
            && self.syncfs
            && let Some((root, dev)) = &self.root
            && files.iter().all(|f| f.lock().expect("audio lock poisoned").dev == *dev)
        {
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs takes an open descriptor we own.
            if unsafe { libc::syncfs(root.as_raw_fd()) } == 0 {
                return files.iter().map(|_| Ok(())).collect();
            }
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL | libc::EPERM | libc::EBADF)) {
                tracing::warn!(error = %e, "syncfs is not available; the audio committer falls back to fdatasync per file");
                self.syncfs = false;
            } else {
                // A write-back error somewhere on the filesystem: the files'
                // own fdatasync says whether it was ours.
                tracing::warn!(error = %e, "syncfs failed; syncing each audio file instead");
            }
        }
        files.iter().map(|f| f.lock().expect("audio lock poisoned").file.sync_data()).collect()
    }
}

/// Counters, for tests and tuning.
#[derive(Debug, Default)]
pub struct Stats {
    /// Appends answered.
    pub appends: AtomicU64,
    /// Syncs run (one a window with something to sync).
    pub syncs: AtomicU64,
    /// Feeds dropped because the feeder's queue was full.
    pub feeds_dropped: AtomicU64,
}

struct Job {
    append: Append,
    reply: oneshot::Sender<io::Result<u32>>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    stop: bool,
}

/// The appends waiting for the committer, shared with its threads.
struct CommitQueue {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Stats,
}

/// The group committer: a thread that writes and syncs for everyone, and a
/// feeder thread that runs the appends' `then`s.
pub struct Committer {
    shared: Arc<CommitQueue>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").field("stats", &self.shared.stats).finish_non_exhaustive()
    }
}

type Feed = (Then, u32, Vec<Vec<u8>>);

impl Committer {
    pub fn start(syncer: impl Syncer, window: Duration) -> Self {
        let shared = Arc::new(CommitQueue {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats: Stats::default(),
        });
        let (feed, feeds) = std::sync::mpsc::sync_channel::<Feed>(FEED_QUEUE);
        std::thread::Builder::new()
            .name("audio-feed".into())
            .spawn(move || {
                for (then, first, frames) in feeds {
                    // A panicking feed must not stop the ones after it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(first, &frames)));
                }
            })
            .expect("cannot start the audio feeder thread");
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audio-commit".into())
            .spawn(move || run(&s, syncer, window, feed))
            .expect("cannot start the audio committer thread");
        Self { shared, thread: Some(thread) }
    }

    /// Queues an append for the next sync.
    pub fn submit(&self, append: Append) -> Ticket {
        let (reply, answer) = oneshot::channel();
        let mut q = self.shared.queue.lock().expect("commit queue poisoned");
        q.jobs.push(Job { append, reply });
        if q.jobs.len() == 1 {
            // The committer sleeps only on an empty queue.
            self.shared.wake.notify_one();
        }
        Ticket(answer)
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.shared.queue.lock().expect("commit queue poisoned").stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &CommitQueue, mut syncer: impl Syncer, window: Duration, feed: SyncSender<Feed>) {
    let mut last_start: Option<Instant> = None;
    loop {
        // 1. Something to do, and the window open.
        {
            let mut q = shared.queue.lock().expect("commit queue poisoned");
            while q.jobs.is_empty() && !q.stop {
                q = shared.wake.wait(q).expect("commit queue poisoned");
            }
            if q.jobs.is_empty() {
                return;
            }
        }
        if let Some(next) = last_start.map(|t| t + window) {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
        }
        let jobs = std::mem::take(&mut shared.queue.lock().expect("commit queue poisoned").jobs);

        // 2. Write.
        let mut written = Vec::with_capacity(jobs.len());
        let mut touched: Vec<Arc<Mutex<UtteranceAudio>>> = Vec::new();
        let mut seen = HashSet::new();
        for job in jobs {
            let Append { audio, first, frames, .. } = &job.append;
            let r = {
                let mut a = audio.lock().expect("audio lock poisoned");
                a.write(*first, frames.iter().map(Vec::as_slice)).inspect(|&n| {
                    if n > a.durable && seen.insert(Arc::as_ptr(audio)) {
                        touched.push(audio.clone());
                    }
                })
            };
            written.push((job, r));
        }

        // 3. Sync.
        if !touched.is_empty() {
            let start = Instant::now();
            last_start = Some(start);
            let results = syncer.sync(&touched);
            shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
            let took = start.elapsed();
            if took >= SLOW_SYNC {
                tracing::warn!(
                    ms = took.as_millis() as u64,
                    files = touched.len(),
                    "a slow audio sync held every ack meanwhile (is the data directory's filesystem busy with other writes?)"
                );
            }
            for (file, r) in touched.iter().zip(results) {
                if let Err(e) = r {
                    tracing::error!(error = %e, path = %file.lock().expect("audio lock poisoned").path.display(), "cannot sync audio");
                    file.lock().expect("audio lock poisoned").sync_failed();
                }
            }
        }

        // 4. Answer, then feed.
        for (job, r) in written {
            let Job { append: Append { audio, first, frames, then }, reply } = job;
            let r = r.and_then(|n| {
                let mut a = audio.lock().expect("audio lock poisoned");
                if a.failed {
                    return Err(io::Error::other(format!("{}: the sync failed", a.path.display())));
                }
                a.synced(n);
                Ok(n)
            });
            let ok = r.is_ok();
            // Counted before the answer: whoever has it sees the count.
            shared.stats.appends.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(r);
            if let (true, Some(then)) = (ok, then) {
                match feed.try_send((then, first, frames)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        if shared.stats.feeds_dropped.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                            tracing::warn!(
                                "the live feed is behind; dropping a batch (its utterance is decoded in full at the end)"
                            );
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use uuid::Uuid;

    use super::*;
    use crate::audio::AudioStore;

    /// Syncs nothing, slowly, and records what each sync covered: for each
    /// file, the records it held when the sync started.
    struct Recorder {
        covered: Arc<Mutex<HashMap<usize, u32>>>,
        syncs: Arc<AtomicU64>,
    }

    impl Syncer for Recorder {
        fn sync(&mut self, files: &[Arc<Mutex<UtteranceAudio>>]) -> Vec<io::Result<()>> {
            let at_start: Vec<(usize, u32)> =
                files.iter().map(|f| (Arc::as_ptr(f) as usize, f.lock().unwrap().frames())).collect();
            std::thread::sleep(Duration::from_millis(2));
            let mut covered = self.covered.lock().unwrap();
            for (file, n) in at_start {
                let c = covered.entry(file).or_default();
                *c = (*c).max(n);
            }
            self.syncs.fetch_add(1, Ordering::Relaxed);
            files.iter().map(|_| Ok(())).collect()
        }
    }

    #[test]
    fn acks_follow_the_sync_that_covers_them_and_connections_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = AudioStore::new(dir.path().to_owned()).unwrap();
        let covered = Arc::new(Mutex::new(HashMap::new()));
        let syncs = Arc::new(AtomicU64::new(0));
        let committer = Arc::new(Committer::start(
            Recorder { covered: covered.clone(), syncs: syncs.clone() },
            Duration::from_millis(1),
        ));
        let fed = Arc::new(Mutex::new(HashMap::<usize, Vec<u32>>::new()));
        let (streams, batches, per_batch) = (16usize, 20u32, 5u32);
        let threads: Vec<_> = (0..streams)
            .map(|i| {
                let (committer, covered, fed) = (committer.clone(), covered.clone(), fed.clone());
                let w = store.writer(Uuid::now_v7(), Uuid::now_v7()).unwrap();
                std::thread::spawn(move || {
                    let key = Arc::as_ptr(&w) as usize;
                    for b in 0..batches {
                        let first = b * per_batch;
                        let frames = (first..first + per_batch).map(|s| vec![i as u8, s as u8]).collect();
                        let fed = fed.clone();
                        let then: Then = Box::new(move |first, frames: &[Vec<u8>]| {
                            fed.lock().unwrap().entry(key).or_default().push(first + frames.len() as u32);
                        });
                        let acked = committer
                            .submit(Append { audio: w.clone(), first, frames, then: Some(then) })
                            .wait()
                            .unwrap();
                        assert_eq!(acked, first + per_batch);
                        // The ack came after a sync that started once these
                        // records were written.
                        let c = covered.lock().unwrap().get(&key).copied().unwrap_or(0);
                        assert!(c >= acked, "ack {acked} before a sync covered it (covered {c})");
                        assert_eq!(w.lock().unwrap().durable(), acked);
                    }
                    w
                })
            })
            .collect();
        let writers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let jobs = u64::from(batches) * streams as u64;
        let n = syncs.load(Ordering::Relaxed);
        assert_eq!(committer.stats().appends.load(Ordering::Relaxed), jobs);
        assert!(n < jobs, "{n} syncs for {jobs} appends: connections do not share syncs");
        // Feeds run in order, after the append, each once.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fed.lock().unwrap().values().map(Vec::len).sum::<usize>() < jobs as usize && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for w in &writers {
            let got = fed.lock().unwrap().get(&(Arc::as_ptr(w) as usize)).cloned().unwrap_or_default();
            assert_eq!(got, (1..=batches).map(|b| b * per_batch).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_failed_sync_fails_its_tickets_and_the_file_is_reopened() {
        struct Failing;
        impl Syncer for Failing {
            fn sync(&mut self, files: &[Arc<Mutex<UtteranceAudio>>]) -> Vec<io::Result<()>> {
                files.iter().map(|_| Err(io::Error::other("disk on fire"))).collect()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = AudioStore::new(dir.path().to_owned()).unwrap();
        let (d, u) = (Uuid::now_v7(), Uuid::now_v7());
        let w = store.writer(d, u).unwrap();
        let committer = Committer::start(Failing, Duration::ZERO);
        let r =
            committer.submit(Append { audio: w.clone(), first: 0, frames: vec![b"one".to_vec()], then: None }).wait();
        assert!(r.is_err(), "acked without a sync: {r:?}");
        assert_eq!(w.lock().unwrap().durable(), 0);
        assert!(w.lock().unwrap().write(1, [&b"two"[..]]).is_err(), "a failed file takes no more appends");
        // A new writer cuts what no sync covered (the record may be in the
        // page cache only) and counts what is left.
        let w2 = store.writer(d, u).unwrap();
        assert!(!Arc::ptr_eq(&w, &w2));
        assert_eq!(w2.lock().unwrap().durable(), 0);
        assert_eq!(std::fs::metadata(store.path(d, u)).unwrap().len(), 0);
    }

    /// A store whose utterance got two frames through a sync that succeeded,
    /// then a third through one that failed: the temporary directory (kept
    /// alive), the store, (device, utterance) and the writer.
    fn two_synced_then_a_failed_sync() -> (tempfile::TempDir, AudioStore, (Uuid, Uuid), Arc<Mutex<UtteranceAudio>>) {
        /// Succeeds once, then fails.
        struct OnceOk(bool);
        impl Syncer for OnceOk {
            fn sync(&mut self, files: &[Arc<Mutex<UtteranceAudio>>]) -> Vec<io::Result<()>> {
                let ok = std::mem::replace(&mut self.0, false);
                files
                    .iter()
                    .map(|f| if ok { f.lock().unwrap().file.sync_data() } else { Err(io::Error::other("EIO")) })
                    .collect()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = AudioStore::new(dir.path().to_owned()).unwrap();
        let (d, u) = (Uuid::now_v7(), Uuid::now_v7());
        let w = store.writer(d, u).unwrap();
        let committer = Committer::start(OnceOk(true), Duration::ZERO);
        let two = vec![b"one".to_vec(), b"two".to_vec()];
        assert_eq!(committer.submit(Append { audio: w.clone(), first: 0, frames: two, then: None }).wait().unwrap(), 2);
        let three = vec![b"three".to_vec()];
        assert!(committer.submit(Append { audio: w.clone(), first: 2, frames: three, then: None }).wait().is_err());
        (dir, store, (d, u), w)
    }

    #[test]
    fn a_reopen_after_a_failed_sync_keeps_exactly_what_was_synced() {
        // The failed writer is still held (its stream has not noticed yet).
        let (_dir, store, (d, u), _failed) = two_synced_then_a_failed_sync();
        let w2 = store.writer(d, u).unwrap();
        let held = {
            let a = w2.lock().unwrap();
            (a.frames(), a.durable())
        };
        assert_eq!(held, (2, 2), "the unsynced third is cut");
        // And appending goes on from there.
        assert_eq!(w2.lock().unwrap().append_durable(2, [&b"again"[..]]).unwrap(), 3);
        assert_eq!(store.read(d, u, 3).unwrap(), vec![b"one".to_vec(), b"two".to_vec(), b"again".to_vec()]);
    }

    #[test]
    fn a_failed_writer_let_go_before_the_reopen_still_has_its_tail_cut() {
        let (_dir, store, (d, u), w) = two_synced_then_a_failed_sync();
        // The stream that held it goes away (and the committer lets go of it
        // once its batch is done): the file closes with the last holder.
        let weak = Arc::downgrade(&w);
        drop(w);
        let deadline = Instant::now() + Duration::from_secs(5);
        while weak.strong_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(weak.strong_count(), 0, "the committer still holds the writer");
        assert_eq!(store.open_files(), 0);
        let w2 = store.writer(d, u).unwrap();
        let held = {
            let a = w2.lock().unwrap();
            (a.frames(), a.durable())
        };
        assert_eq!(held, (2, 2), "the unsynced third is cut even though its writer was let go");
    }

    #[test]
    fn the_real_syncer_commits_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = AudioStore::new(dir.path().to_owned()).unwrap();
        let d = Uuid::now_v7();
        let (u1, u2) = (Uuid::now_v7(), Uuid::now_v7());
        let (w1, w2) = (store.writer(d, u1).unwrap(), store.writer(d, u2).unwrap());
        let frames = || vec![b"a".to_vec(), b"b".to_vec()];
        let t1 = store.commit(Append { audio: w1.clone(), first: 0, frames: frames(), then: None });
        let t2 = store.commit(Append { audio: w2.clone(), first: 0, frames: frames(), then: None });
        assert_eq!((t1.wait().unwrap(), t2.wait().unwrap()), (2, 2));
        // A resend of held frames is acked without writing them again.
        assert_eq!(
            store.commit(Append { audio: w1.clone(), first: 0, frames: frames(), then: None }).wait().unwrap(),
            2
        );
        assert_eq!(store.read(d, u1, 2).unwrap(), frames());
        assert!(store.read(d, u1, 3).is_err());
        assert_eq!(store.read(d, u2, 2).unwrap(), frames());
    }
}
