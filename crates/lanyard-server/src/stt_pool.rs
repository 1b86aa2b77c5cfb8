//! The speech-to-text worker pool: one engine, shared, with priorities.
//!
//! Three kinds of work want the engine:
//!
//! - **finals**: the transcript of a complete utterance (the pipeline) and
//!   `POST /v1/audio/transcriptions`. Someone is waiting for each one.
//! - **speculative** decodes, started when the endpointer hears speech stop
//!   (`crate::live`). One becomes the final transcript if no speech follows,
//!   which saves the wearer a decode after the end marker.
//! - **partials**: drafts of an utterance still being spoken, about one a
//!   second, for the phone to show while the user talks.
//!
//! Workers take finals first, in turns across devices, so that a device
//! catching up on an hour of uploads does not hold up another device's
//! single utterance; then speculative decodes; then partials. A final waits
//! at most for the one draft already running. The finals waiting when a
//! worker comes free, up to `lanyard_stt::MAX_BATCH` (4), go to the engine
//! together (`SpeechToText::transcribe_batch`): on this 2-core box the
//! `ttfs` bench's four speakers ending together get their transcripts in a
//! median 1.18 s, where one utterance alone takes 0.56 s (so four one by
//! one would take about 2.3 s). A final that asks for word times (a
//! `/v1/audio/transcriptions` request with `timestamp_granularities[]=word`)
//! goes alone, to `SpeechToText::transcribe_with_words`.
//!
//! # Dropped drafts: an explicit, counted policy
//!
//! Speculative and partial requests are best effort. One that has not
//! started is dropped, and counted in `lanyard_stt_drafts_total{kind,
//! outcome}`, when:
//!
//! - a newer request of the same kind for the same utterance replaces it
//!   (`superseded`): a partial of 3 s of audio is worthless once 4 s are in;
//! - it waited longer than [`DRAFT_MAX_WAIT`] (`stale`; not a settling
//!   decode, which stays worth running however late, and of which an
//!   utterance has one at a time), because finals kept
//!   the engine busy: the server is past its capacity for partials;
//! - its utterance ended first (`ended`).
//!
//! A dropped speculative decode only means the final is decoded in full; a
//! dropped partial only means the phone shows the next one. Finals are never
//! dropped.
//!
//! # Size
//!
//! [`DEFAULT_WORKERS`] is 1: CTranslate2 already spreads one decode over
//! every core (`WhisperConfig::threads`), so on a small box a second
//! concurrent decode only splits the cores between two waiting users. The
//! engine is `Send + Sync`, so more workers with fewer threads each is a
//! configuration change for a bigger machine.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lanyard_stt::{MAX_BATCH, Segment, SpeechToText, SttError, Transcript};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::metrics::{self, DraftOutcome, DraftSettled};

/// Workers by default; see the module doc.
pub const DEFAULT_WORKERS: usize = 1;

/// A draft that waited this long without starting is dropped as stale.
pub const DRAFT_MAX_WAIT: Duration = Duration::from_secs(2);

/// What a draft is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DraftKind {
    /// A decode at silence onset, at final quality, that may become the final.
    Speculative,
    /// A quick decode for a partial transcript.
    Partial,
    /// A decode of a long utterance still being spoken, of the audio not
    /// settled yet: what comes back is settled for good
    /// (`SpeechToText::transcribe_settled`). The transcript's `segments` are
    /// the settled ones, timed from the start of the audio sent, and its
    /// `audio_secs` is how much of that audio they account for.
    Settle,
}

impl DraftKind {
    pub fn label(self) -> &'static str {
        match self {
            DraftKind::Speculative => "speculative",
            DraftKind::Partial => "partial",
            DraftKind::Settle => "settle",
        }
    }
}

/// Called with the draft's result, or `None` if it was dropped (and counted).
pub type DraftDone = Box<dyn FnOnce(Option<Result<Transcript, SttError>>) + Send>;

struct FinalJob {
    pcm: Vec<f32>,
    /// Segments settled before `pcm` (its prompt); empty for a whole utterance.
    previous: Vec<Segment>,
    /// Word times wanted (`SpeechToText::transcribe_with_words`): such a
    /// final goes to the engine alone, since a batch cannot ask for them.
    words: bool,
    done: FinalDone,
}

/// Who waits for a final.
enum FinalDone {
    /// An `await`ing caller.
    Caller(oneshot::Sender<Result<Transcript, SttError>>),
    /// A speculative decode that became its utterance's final (see
    /// [`SttPool::promote`]).
    Promoted(DraftDone),
}

struct DraftJob {
    utterance: Uuid,
    kind: DraftKind,
    pcm: Vec<f32>,
    /// Segments settled before `pcm` (its prompt), for speculative and settle decodes.
    previous: Vec<Segment>,
    queued: Instant,
    done: DraftDone,
}

#[derive(Default)]
struct Queues {
    /// Finals waiting, by device.
    finals: HashMap<Uuid, VecDeque<FinalJob>>,
    /// Devices with finals waiting, in the order they get their next turn.
    turns: VecDeque<Uuid>,
    /// Drafts waiting: at most one per utterance and kind.
    drafts: Vec<DraftJob>,
    closed: bool,
}

/// The engine and its queues, shared by every handle and worker: workers
/// wait on `ready` for the next job in priority order.
struct Scheduler {
    stt: Arc<dyn SpeechToText>,
    queues: Mutex<Queues>,
    ready: Condvar,
}

/// Closes the pool when the last handle goes.
struct Guard(Arc<Scheduler>);

impl Drop for Guard {
    fn drop(&mut self) {
        let (finals, drafts) = {
            let mut q = self.0.queues.lock().expect("stt pool poisoned");
            q.closed = true;
            (std::mem::take(&mut q.finals), std::mem::take(&mut q.drafts))
        };
        self.0.ready.notify_all();
        // Callers see their sender dropped; promoted drafts hear `None`.
        for job in finals.into_values().flatten() {
            if let FinalDone::Promoted(done) = job.done {
                done(None);
            }
        }
        for d in drafts {
            settle(d, DraftOutcome::Ended);
        }
    }
}

/// A handle on the pool; clones share it. The workers stop when the last
/// handle is dropped.
#[derive(Clone)]
pub struct SttPool {
    shared: Arc<Scheduler>,
    _guard: Arc<Guard>,
}

impl SttPool {
    /// Starts `workers` threads over `stt`.
    pub fn start(stt: Arc<dyn SpeechToText>, workers: usize) -> Self {
        let shared = Arc::new(Scheduler { stt, queues: Mutex::new(Queues::default()), ready: Condvar::new() });
        for i in 0..workers.max(1) {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("lanyard-stt-{i}"))
                .spawn(move || work(&shared))
                .expect("cannot start a speech-to-text worker thread");
        }
        Self { _guard: Arc::new(Guard(shared.clone())), shared }
    }

    /// The engine, for what only needs its name or kind.
    pub fn engine(&self) -> &Arc<dyn SpeechToText> {
        &self.shared.stt
    }

    /// Transcribes `pcm` as a final, in `device`'s turn.
    pub async fn transcribe(&self, device: Uuid, pcm: Vec<f32>) -> Result<Transcript, SttError> {
        self.transcribe_after(device, pcm, Vec::new()).await
    }

    /// Transcribes `pcm`, the rest of an utterance whose start was settled
    /// as `previous`, as a final in `device`'s turn.
    pub async fn transcribe_after(
        &self,
        device: Uuid,
        pcm: Vec<f32>,
        previous: Vec<Segment>,
    ) -> Result<Transcript, SttError> {
        self.final_job(device, pcm, previous, false).await
    }

    /// Like [`SttPool::transcribe`], with word times where the engine can
    /// give them (`SpeechToText::transcribe_with_words`).
    pub async fn transcribe_with_words(&self, device: Uuid, pcm: Vec<f32>) -> Result<Transcript, SttError> {
        self.final_job(device, pcm, Vec::new(), true).await
    }

    async fn final_job(
        &self,
        device: Uuid,
        pcm: Vec<f32>,
        previous: Vec<Segment>,
        words: bool,
    ) -> Result<Transcript, SttError> {
        let (done, rx) = oneshot::channel();
        {
            let mut q = self.shared.queues.lock().expect("stt pool poisoned");
            if q.closed {
                return Err(stopped());
            }
            let queue = q.finals.entry(device).or_default();
            queue.push_back(FinalJob { pcm, previous, words, done: FinalDone::Caller(done) });
            if queue.len() == 1 {
                q.turns.push_back(device);
            }
        }
        self.shared.ready.notify_one();
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Queues a draft for `utterance`; `done` gets its result, or `None` if it
    /// is dropped (see the module doc). Replaces a waiting draft of the same
    /// kind for the same utterance.
    pub fn draft(&self, utterance: Uuid, kind: DraftKind, pcm: Vec<f32>, done: DraftDone) {
        self.draft_after(utterance, kind, pcm, Vec::new(), done);
    }

    /// [`SttPool::draft`] of audio that follows `previous`, the segments
    /// settled before it (see `SpeechToText::transcribe_after`).
    pub fn draft_after(
        &self,
        utterance: Uuid,
        kind: DraftKind,
        pcm: Vec<f32>,
        previous: Vec<Segment>,
        done: DraftDone,
    ) {
        let job = DraftJob { utterance, kind, pcm, previous, queued: Instant::now(), done };
        let replaced = {
            let mut q = self.shared.queues.lock().expect("stt pool poisoned");
            if q.closed {
                drop(q);
                settle(job, DraftOutcome::Ended);
                return;
            }
            let old =
                q.drafts.iter().position(|d| d.utterance == utterance && d.kind == kind).map(|i| q.drafts.remove(i));
            q.drafts.push(job);
            old
        };
        self.shared.ready.notify_one();
        if let Some(old) = replaced {
            settle(old, DraftOutcome::Superseded);
        }
    }

    /// `utterance` (of `device`) has ended: its waiting partial drafts go
    /// (counted `ended`), and a speculative decode still waiting becomes a
    /// final in the device's turn, since it is now what someone waits for.
    /// Its callback gets the result as before.
    pub fn promote(&self, utterance: Uuid, device: Uuid) {
        let (gone, promoted) = {
            let mut q = self.shared.queues.lock().expect("stt pool poisoned");
            let (mine, keep): (Vec<DraftJob>, Vec<DraftJob>) =
                std::mem::take(&mut q.drafts).into_iter().partition(|d| d.utterance == utterance);
            q.drafts = keep;
            let (spec, gone): (Vec<DraftJob>, Vec<DraftJob>) =
                mine.into_iter().partition(|d| d.kind == DraftKind::Speculative);
            let promoted = !spec.is_empty();
            for d in spec {
                let queue = q.finals.entry(device).or_default();
                queue.push_back(FinalJob {
                    pcm: d.pcm,
                    previous: d.previous,
                    words: false,
                    done: FinalDone::Promoted(d.done),
                });
                if queue.len() == 1 {
                    q.turns.push_back(device);
                }
            }
            (gone, promoted)
        };
        if promoted {
            self.shared.ready.notify_one();
        }
        for d in gone {
            settle(d, DraftOutcome::Ended);
        }
    }

    /// Drops every waiting draft of `utterance`, which has ended.
    pub fn cancel(&self, utterance: Uuid) {
        let gone: Vec<DraftJob> = {
            let mut q = self.shared.queues.lock().expect("stt pool poisoned");
            let (gone, keep) = std::mem::take(&mut q.drafts).into_iter().partition(|d| d.utterance == utterance);
            q.drafts = keep;
            gone
        };
        for d in gone {
            settle(d, DraftOutcome::Ended);
        }
    }
}

fn stopped() -> SttError {
    SttError::Inference { message: "the speech-to-text pool has stopped (the server is shutting down)".into() }
}

/// Counts a draft that will not run, and tells its owner.
fn settle(job: DraftJob, outcome: DraftOutcome) {
    metrics::emit(DraftSettled { kind: job.kind.label(), outcome });
    (job.done)(None);
}

enum Job {
    Finals(Vec<FinalJob>),
    Draft(DraftJob),
}

fn work(shared: &Scheduler) {
    loop {
        let mut stale = Vec::new();
        let job = {
            let mut q = shared.queues.lock().expect("stt pool poisoned");
            loop {
                if q.closed {
                    return;
                }
                // Every final waiting, up to a batch, in turns across devices;
                // only short ones batch, so that a long one (one by one
                // inside the engine) holds up nobody else's.
                if let Some(first) = next_final(&mut q) {
                    let mut finals = vec![first];
                    let batches = |j: &FinalJob| j.pcm.len() <= BATCH_MAX_SAMPLES && !j.words;
                    while finals.len() < MAX_BATCH && batches(&finals[0]) && peek_final(&q).is_some_and(batches) {
                        finals.extend(next_final(&mut q));
                    }
                    break Job::Finals(finals);
                }
                let now = Instant::now();
                let (fresh, old) = std::mem::take(&mut q.drafts)
                    .into_iter()
                    .partition(|d| d.kind == DraftKind::Settle || now.duration_since(d.queued) <= DRAFT_MAX_WAIT);
                q.drafts = fresh;
                stale.extend(old);
                let pick =
                    q.drafts.iter().enumerate().min_by_key(|(_, d)| (draft_rank(d.kind), d.queued)).map(|(i, _)| i);
                if let Some(i) = pick {
                    break Job::Draft(q.drafts.remove(i));
                }
                if !stale.is_empty() {
                    // Settle them before sleeping: their owners are waiting.
                    drop(q);
                    for d in stale.drain(..) {
                        settle(d, DraftOutcome::Stale);
                    }
                    q = shared.queues.lock().expect("stt pool poisoned");
                    continue;
                }
                q = shared.ready.wait(q).expect("stt pool poisoned");
            }
        };
        for d in stale {
            settle(d, DraftOutcome::Stale);
        }
        match job {
            Job::Finals(jobs) => {
                let pcms: Vec<&[f32]> = jobs.iter().map(|j| j.pcm.as_slice()).collect();
                let results = match jobs.as_slice() {
                    // Asked for words: alone (see `FinalJob::words`).
                    [job] if job.words => vec![guarded(|| shared.stt.transcribe_with_words(&job.pcm)).and_then(|r| r)],
                    // A promoted tail of a long utterance: its prompt matters.
                    _ if jobs.iter().any(|j| !j.previous.is_empty()) => jobs
                        .iter()
                        .map(|j| guarded(|| shared.stt.transcribe_after(&j.pcm, &j.previous)).and_then(|r| r))
                        .collect(),
                    _ => guarded(|| shared.stt.transcribe_batch(&pcms))
                        .unwrap_or_else(|e| pcms.iter().map(|_| Err(e.clone_message())).collect()),
                };
                for (job, result) in jobs.into_iter().zip(results) {
                    match job.done {
                        FinalDone::Caller(tx) => {
                            let _ = tx.send(result);
                        }
                        FinalDone::Promoted(done) => {
                            metrics::emit(DraftSettled {
                                kind: DraftKind::Speculative.label(),
                                outcome: DraftOutcome::Run,
                            });
                            let _ = guarded(move || done(Some(result)));
                        }
                    }
                }
            }
            Job::Draft(job) => {
                let result = guarded(|| match job.kind {
                    DraftKind::Speculative => shared.stt.transcribe_after(&job.pcm, &job.previous),
                    DraftKind::Partial => shared.stt.transcribe_draft(&job.pcm),
                    DraftKind::Settle => shared
                        .stt
                        .transcribe_settled(&job.pcm, &job.previous)
                        .map(|(segments, settled)| Transcript::from_segments(segments, settled as f32 / 16_000.0, 0.0)),
                })
                .and_then(|r| r);
                metrics::emit(DraftSettled { kind: job.kind.label(), outcome: DraftOutcome::Run });
                let done = job.done;
                let _ = guarded(move || done(Some(result)));
            }
        }
    }
}

/// Which waiting draft runs first: speculative decodes (one may be the
/// final), then settling (it keeps a long utterance's final short), then
/// partials.
fn draft_rank(kind: DraftKind) -> u8 {
    match kind {
        DraftKind::Speculative => 0,
        DraftKind::Settle => 1,
        DraftKind::Partial => 2,
    }
}

/// Finals this short (one encoder window at the default floor, 10 s) go to
/// the engine together; a longer one goes alone.
const BATCH_MAX_SAMPLES: usize = 10 * 16_000;

/// Runs `f`; a panic (in the engine or a callback) becomes an error instead
/// of ending the pool's only worker, which would leave every later final
/// waiting for ever.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, SttError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %what, "speech-to-text panicked; the worker carries on");
        SttError::Inference { message: format!("speech-to-text panicked: {what}") }
    })
}

trait CloneMessage {
    fn clone_message(&self) -> SttError;
}

impl CloneMessage for SttError {
    fn clone_message(&self) -> SttError {
        SttError::Inference { message: self.to_string() }
    }
}

/// The final [`next_final`] would return, without taking it.
fn peek_final(q: &Queues) -> Option<&FinalJob> {
    q.turns.iter().find_map(|d| q.finals.get(d).and_then(|queue| queue.front()))
}

/// The next final, in turns across devices.
fn next_final(q: &mut Queues) -> Option<FinalJob> {
    while let Some(device) = q.turns.pop_front() {
        let Some(queue) = q.finals.get_mut(&device) else { continue };
        let Some(job) = queue.pop_front() else {
            q.finals.remove(&device);
            continue;
        };
        if queue.is_empty() {
            q.finals.remove(&device);
        } else {
            q.turns.push_back(device);
        }
        return Some(job);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An engine that records the order of its calls (by the first sample,
    /// used as a label) and takes `delay` per call.
    struct Recorder {
        calls: Mutex<Vec<(f32, bool)>>,
        batches: Mutex<Vec<usize>>,
        delay: Duration,
        running: AtomicUsize,
        most: AtomicUsize,
    }

    impl Recorder {
        fn new(delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                calls: Mutex::default(),
                batches: Mutex::default(),
                delay,
                running: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
            })
        }
        fn call(&self, pcm: &[f32], draft: bool) -> Result<Transcript, SttError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            self.calls.lock().unwrap().push((pcm[0], draft));
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(Transcript::untimed(format!("{}", pcm[0]), 0.0, 0.0))
        }
    }

    impl SpeechToText for Recorder {
        fn transcribe(&self, pcm: &[f32]) -> Result<Transcript, SttError> {
            self.call(pcm, false)
        }
        fn transcribe_draft(&self, pcm: &[f32]) -> Result<Transcript, SttError> {
            self.call(pcm, true)
        }
        fn transcribe_with_words(&self, pcm: &[f32]) -> Result<Transcript, SttError> {
            let mut t = self.call(pcm, false)?;
            t.text.push_str(" with words");
            Ok(t)
        }
        fn transcribe_batch(&self, batch: &[&[f32]]) -> Vec<Result<Transcript, SttError>> {
            self.batches.lock().unwrap().push(batch.len());
            batch.iter().map(|pcm| self.call(pcm, false)).collect()
        }
        fn name(&self) -> &str {
            "recorder"
        }
    }

    fn labels(r: &Recorder) -> Vec<f32> {
        r.calls.lock().unwrap().iter().map(|c| c.0).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn finals_take_turns_across_devices() {
        let engine = Recorder::new(Duration::from_millis(20));
        let pool = SttPool::start(engine.clone(), 1);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        // Keep the worker busy so the queue builds up in a known order.
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.transcribe(a, vec![0.0]).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut waits = Vec::new();
        // Device A queues four, then device B one: B's goes second, not fifth.
        for label in [1.0, 2.0, 3.0, 4.0] {
            let pool = pool.clone();
            waits.push(tokio::spawn(async move { pool.transcribe(a, vec![label]).await }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let pool_b = pool.clone();
        waits.push(tokio::spawn(async move { pool_b.transcribe(b, vec![9.0]).await }));
        first.await.unwrap().unwrap();
        for w in waits {
            w.await.unwrap().unwrap();
        }
        assert_eq!(labels(&engine), vec![0.0, 1.0, 9.0, 2.0, 3.0, 4.0]);
        assert_eq!(engine.most.load(Ordering::SeqCst), 1, "one worker, one decode at a time");
        // What waited went in batches of at most four, in that order.
        assert_eq!(*engine.batches.lock().unwrap(), vec![1, 4, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_final_that_wants_words_goes_alone_to_the_word_timing_call() {
        let engine = Recorder::new(Duration::from_millis(20));
        let pool = SttPool::start(engine.clone(), 1);
        let device = Uuid::now_v7();
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move { pool.transcribe(device, vec![0.0]).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Three short finals wait together; the middle one asks for words.
        let mut waits = Vec::new();
        for (label, words) in [(1.0, false), (2.0, true), (3.0, false)] {
            let pool = pool.clone();
            waits.push(tokio::spawn(async move {
                if words {
                    pool.transcribe_with_words(device, vec![label]).await
                } else {
                    pool.transcribe(device, vec![label]).await
                }
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        busy.await.unwrap().unwrap();
        let texts: Vec<String> =
            futures::future::join_all(waits).await.into_iter().map(|r| r.unwrap().unwrap().text).collect();
        assert_eq!(texts, ["1", "2 with words", "3"]);
        assert_eq!(labels(&engine), vec![0.0, 1.0, 2.0, 3.0], "still in turn");
        // Not batched with its neighbours: each plain one went on its own.
        assert_eq!(*engine.batches.lock().unwrap(), vec![1, 1, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn finals_go_before_drafts_and_drafts_are_superseded_and_counted() {
        let engine = Recorder::new(Duration::from_millis(30));
        let pool = SttPool::start(engine.clone(), 1);
        let (device, u) = (Uuid::now_v7(), Uuid::now_v7());
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let record = |label: &'static str| -> DraftDone {
            let outcomes = outcomes.clone();
            Box::new(move |r| outcomes.lock().unwrap().push((label, r.map(|r| r.unwrap().text))))
        };
        // Busy the worker, then queue: partial 1, partial 2 (replaces 1), a
        // speculative, and a final.
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move { pool.transcribe(device, vec![0.0]).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        pool.draft(u, DraftKind::Partial, vec![1.0], record("p1"));
        pool.draft(u, DraftKind::Partial, vec![2.0], record("p2"));
        pool.draft(u, DraftKind::Speculative, vec![3.0], record("s"));
        let fin = pool.transcribe(device, vec![4.0]).await.unwrap();
        assert_eq!(fin.text, "4");
        busy.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(labels(&engine), vec![0.0, 4.0, 3.0, 2.0], "final, then speculative, then the newest partial");
        let calls = engine.calls.lock().unwrap().clone();
        assert_eq!(calls.iter().filter(|c| c.1).count(), 1, "only the partial is a draft decode: {calls:?}");
        let outcomes = outcomes.lock().unwrap().clone();
        assert_eq!(outcomes, vec![("p1", None), ("s", Some("3".into())), ("p2", Some("2".into()))]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn at_the_end_a_waiting_speculative_decode_becomes_the_final() {
        let engine = Recorder::new(Duration::from_millis(30));
        let pool = SttPool::start(engine.clone(), 1);
        let (a, b, u, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (tx, rx) = std::sync::mpsc::channel();
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move { pool.transcribe(b, vec![0.0]).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let report = |label: &'static str| -> DraftDone {
            let tx = tx.clone();
            Box::new(move |r| tx.send((label, r.map(|r| r.unwrap().text))).unwrap())
        };
        pool.draft(other, DraftKind::Speculative, vec![7.0], report("other"));
        pool.draft(u, DraftKind::Partial, vec![1.0], report("partial"));
        pool.draft(u, DraftKind::Speculative, vec![2.0], report("spec"));
        pool.promote(u, a);
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap(), ("partial", None), "the partial is moot");
        busy.await.unwrap().unwrap();
        // The promoted decode runs as a final, before the other utterance's
        // speculative draft that was queued first.
        assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), ("spec", Some("2".into())));
        assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), ("other", Some("7".into())));
        assert_eq!(labels(&engine), vec![0.0, 2.0, 7.0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cancelled_and_stale_drafts_are_dropped_and_reported() {
        let engine = Recorder::new(Duration::from_millis(10));
        let pool = SttPool::start(engine.clone(), 1);
        let u = Uuid::now_v7();
        let (tx, rx) = std::sync::mpsc::channel();
        let busy = {
            // A final long enough for the next draft to go stale.
            let slow = Recorder::new(DRAFT_MAX_WAIT + Duration::from_millis(200));
            let pool = SttPool::start(slow.clone(), 1);
            let tx2 = tx.clone();
            let p = pool.clone();
            let h = tokio::spawn(async move { p.transcribe(Uuid::now_v7(), vec![0.0]).await });
            tokio::time::sleep(Duration::from_millis(20)).await;
            pool.draft(u, DraftKind::Partial, vec![1.0], Box::new(move |r| tx2.send(("stale", r.is_some())).unwrap()));
            (h, pool, slow)
        };
        let tx3 = tx.clone();
        // Queued behind nothing but cancelled before the worker wakes? Not
        // guaranteed; so cancel one that waits behind a final instead.
        let p = pool.clone();
        let hold = tokio::spawn(async move { p.transcribe(Uuid::now_v7(), vec![5.0]).await });
        tokio::time::sleep(Duration::from_millis(2)).await;
        pool.draft(u, DraftKind::Partial, vec![6.0], Box::new(move |r| tx3.send(("cancelled", r.is_some())).unwrap()));
        pool.cancel(u);
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap(), ("cancelled", false));
        hold.await.unwrap().unwrap();
        busy.0.await.unwrap().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), ("stale", false));
        assert_eq!(labels(&busy.2), vec![0.0], "the stale draft never ran");
        assert_eq!(labels(&engine), vec![5.0]);
    }
}
