//! Every metric the server records, as typed events, and the Prometheus
//! recorder that `/metrics` renders.
//!
//! Code elsewhere never names a metric: it builds an event and calls
//! [`emit`], and the event's `emit` is the one place that knows the metric's
//! name, type, unit and labels (vector's `internal_events`). So the list below
//! is the whole catalogue, and a rename is one edit.
//!
//! | metric                           | type      | what                                                        |
//! |----------------------------------|-----------|-------------------------------------------------------------|
//! | `lanyard_streams_active`         | gauge     | WebSocket streams open now                                  |
//! | `lanyard_frames_received_total`  | counter   | audio frames accepted (duplicates of held frames excluded)  |
//! | `lanyard_frames_duplicate_total` | counter   | audio frames the server already held, sent again: a relay   |
//! |                                  |           | that resumes from `opened.next_seq` never causes one        |
//! | `lanyard_time_to_safe_seconds`   | histogram | a batch's oldest frame read off the socket -> fdatasync done|
//! | `lanyard_ack_latency_seconds`    | histogram | the same frame read -> its ACK written to the socket        |
//! | `lanyard_stt_queue_depth`        | gauge     | complete utterances waiting for speech-to-text              |
//! | `lanyard_ttfs_seconds`           | histogram | time to final transcript: `received_end` -> `stt_done`      |
//! | `lanyard_limited_total{limit}`   | counter   | requests and streams refused by a limit (see `limits`), and |
//! |                                  |           | connections by `[connections]` (see `listen`): `connections`,|
//! |                                  |           | `header_timeout`, `body_timeout`, `send_timeout`, `too_large`;|
//! |                                  |           | and uploads past their `expires_ms`: `expired`              |
//! | `lanyard_transcriptions_total{status}` | counter | `POST /v1/audio/transcriptions` answered, by HTTP status  |
//! |                                  |           | (requests refused before the handler, e.g. 401, excluded)   |
//! | `lanyard_audio_purged_total`     | counter   | audio files deleted by the retention sweeper                |
//! | `lanyard_abandoned_total`        | counter   | utterances left `receiving` past `abandoned_after_hours`,   |
//! |                                  |           | given up: failed, audio deleted                             |
//! | `lanyard_deleted_refused_total`  | counter   | opens, uploads and text posts of a deleted utterance,       |
//! |                                  |           | refused (HTTP 410 or `error` `gone`): deletion is final     |
//! | `lanyard_stt_drafts_total{kind,outcome}` | counter | speculative and partial decodes: `run`, or dropped as   |
//! |                                  |           | `superseded`, `stale` or `ended` (see `stt_pool`)           |
//! | `lanyard_partials_sent_total`    | counter   | partial transcripts sent down a stream                      |
//! | `lanyard_endpoints_sent_total`   | counter   | `endpoint` messages: the VAD heard speech stop              |
//! | `lanyard_finals_total{source}`   | counter   | final transcripts: `speculative` (decoded at silence onset) |
//! |                                  |           | or `full` (decoded after the end)                           |
//! | `lanyard_silent_utterances_total`| counter   | unmarked utterances (no start marker: an Omi pendant) in    |
//! |                                  |           | which nothing was heard, stored and not answered            |
//!
//! Time-to-safe ends when the audio is durable, which is when the server
//! *may* ack; ack latency adds the socket write, and is what the relay sees
//! (less the network). The two differ only when the socket is backed up.
//!
//! The recorder is process-wide (`metrics` has one global recorder), so it is
//! installed once, on first use, and every server in the process (tests run
//! several) renders the same registry. If the embedding program installed a
//! recorder of its own first, the events go there and `/metrics` answers from
//! an empty registry of its own.
//!
//! # Memory
//!
//! The recorder keeps every histogram sample (8 bytes, in blocks) until its
//! upkeep folds them into the buckets; a scrape runs one, but a server that
//! nobody scrapes would keep every ack's two samples for its whole life (the
//! `ingest` bench's long-running server grew by about 9 MiB a run of 2,000
//! streams, see docs/benchmarks.md). So [`handle`] starts a thread,
//! `metrics-upkeep`, that runs it every [`UPKEEP_EVERY`]: what waits is at
//! most that long's samples (2,000 streams acking five times a second, two
//! histograms: about 0.8 MB), and the rest is the fixed buckets.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const STREAMS_ACTIVE: &str = "lanyard_streams_active";
const FRAMES_RECEIVED: &str = "lanyard_frames_received_total";
const FRAMES_DUPLICATE: &str = "lanyard_frames_duplicate_total";
const TIME_TO_SAFE: &str = "lanyard_time_to_safe_seconds";
const ACK_LATENCY: &str = "lanyard_ack_latency_seconds";
const STT_QUEUE_DEPTH: &str = "lanyard_stt_queue_depth";
const TTFS: &str = "lanyard_ttfs_seconds";
const LIMITED: &str = "lanyard_limited_total";
const TRANSCRIPTIONS: &str = "lanyard_transcriptions_total";
const AUDIO_PURGED: &str = "lanyard_audio_purged_total";
const ABANDONED: &str = "lanyard_abandoned_total";
const DELETED_REFUSED: &str = "lanyard_deleted_refused_total";
const STT_DRAFTS: &str = "lanyard_stt_drafts_total";
const PARTIALS_SENT: &str = "lanyard_partials_sent_total";
const SETTLED_MS: &str = "lanyard_stt_settled_audio_ms_total";
const ENDPOINTS_SENT: &str = "lanyard_endpoints_sent_total";
const FINALS: &str = "lanyard_finals_total";
const SILENT: &str = "lanyard_silent_utterances_total";

/// Buckets for the ingest path: an fsync takes 0.1 to 10 ms on flash, and
/// anything past a second is a stall worth seeing.
const INGEST_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Buckets for transcription: Whisper takes from a tenth of a second to
/// tens of seconds for a long utterance on a small CPU.
const TTFS_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often the histogram samples recorded since the last upkeep (or
/// scrape) are folded into their buckets; the exporter's own default.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The name of the thread that runs the recorder's upkeep.
const UPKEEP_THREAD: &str = "metrics-upkeep";

/// The process's Prometheus handle, installing the recorder on first call.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(TIME_TO_SAFE.into()), INGEST_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ACK_LATENCY.into()), INGEST_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(TTFS.into()), TTFS_BUCKETS))
            .expect("bucket lists are non-empty constants");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will stay empty");
        } else {
            spawn_upkeep(handle.clone());
        }
        describe();
        handle
    })
}

/// Runs the recorder's upkeep every [`UPKEEP_EVERY`] for the life of the
/// process (see the module doc, "Memory"). A thread, not a task: the
/// recorder is installed on first use, wherever that is, and outlives any
/// one runtime.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name(UPKEEP_THREAD.into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep; histogram samples wait for a scrape of /metrics");
    }
}

/// Renders the registry in the Prometheus text format.
pub fn render() -> String {
    let h = handle();
    h.run_upkeep();
    h.render()
}

fn describe() {
    describe_gauge!(STREAMS_ACTIVE, "WebSocket streams open now.");
    describe_counter!(FRAMES_RECEIVED, "Audio frames accepted on streams.");
    describe_counter!(FRAMES_DUPLICATE, "Audio frames received again that the server already held.");
    describe_histogram!(TIME_TO_SAFE, Unit::Seconds, "Oldest frame of a batch read off the socket to fdatasync done.");
    describe_histogram!(ACK_LATENCY, Unit::Seconds, "Oldest frame of a batch read off the socket to its ACK written.");
    describe_gauge!(STT_QUEUE_DEPTH, "Complete utterances waiting for speech-to-text.");
    describe_histogram!(TTFS, Unit::Seconds, "Time to final transcript: received_end to stt_done.");
    describe_counter!(LIMITED, "Requests and streams refused by a per-device limit, by limit.");
    describe_counter!(TRANSCRIPTIONS, "Requests to /v1/audio/transcriptions answered, by HTTP status.");
    describe_counter!(AUDIO_PURGED, "Audio files deleted by the retention sweeper.");
    describe_counter!(
        ABANDONED,
        "Utterances left receiving past [limits] abandoned_after_hours, given up and their audio deleted."
    );
    describe_counter!(DELETED_REFUSED, "Opens, uploads and text posts of a deleted utterance, refused (410 gone).");
    describe_counter!(STT_DRAFTS, "Speculative and partial decodes, run or dropped, by kind and outcome.");
    describe_counter!(PARTIALS_SENT, "Partial transcripts sent down a stream.");
    describe_counter!(
        SETTLED_MS,
        "Milliseconds of audio of long utterances settled while being spoken, so the final decodes only the rest."
    );
    describe_counter!(ENDPOINTS_SENT, "Endpoint messages sent: the server's VAD heard speech stop.");
    describe_counter!(FINALS, "Final transcripts, by source: speculative (decoded at silence onset) or full.");
    describe_counter!(
        SILENT,
        "Unmarked utterances (no start marker) in which nothing was heard: stored, not answered."
    );
}

/// An event the server records. Each implementation is the only place that
/// names its metric.
pub trait InternalEvent {
    fn emit(self);
}

/// Records `event`.
pub fn emit(event: impl InternalEvent) {
    // Installs the recorder before the first event, so none is lost to the
    // no-op recorder `metrics` starts with.
    let _ = handle();
    event.emit();
}

/// A stream was accepted (after the upgrade).
pub struct StreamOpened;

impl InternalEvent for StreamOpened {
    fn emit(self) {
        gauge!(STREAMS_ACTIVE).increment(1.0);
    }
}

/// A stream ended, however.
pub struct StreamClosed;

impl InternalEvent for StreamClosed {
    fn emit(self) {
        gauge!(STREAMS_ACTIVE).decrement(1.0);
    }
}

/// Frames were accepted into a batch.
pub struct FramesReceived {
    pub count: u64,
}

impl InternalEvent for FramesReceived {
    fn emit(self) {
        counter!(FRAMES_RECEIVED).increment(self.count);
    }
}

/// A frame the server already held arrived again and was dropped.
pub struct FrameDuplicate;

impl InternalEvent for FrameDuplicate {
    fn emit(self) {
        counter!(FRAMES_DUPLICATE).increment(1);
    }
}

/// A batch is durable: `received` is when its oldest frame was read.
pub struct FramesDurable {
    pub received: Instant,
}

impl InternalEvent for FramesDurable {
    fn emit(self) {
        histogram!(TIME_TO_SAFE).record(self.received.elapsed().as_secs_f64());
    }
}

/// The ACK covering a batch was written: `received` is when its oldest
/// frame was read.
pub struct AckWritten {
    pub received: Instant,
}

impl InternalEvent for AckWritten {
    fn emit(self) {
        histogram!(ACK_LATENCY).record(self.received.elapsed().as_secs_f64());
    }
}

/// An utterance entered the speech-to-text queue.
pub struct SttQueued;

impl InternalEvent for SttQueued {
    fn emit(self) {
        gauge!(STT_QUEUE_DEPTH).increment(1.0);
    }
}

/// The pipeline took an utterance off the queue.
pub struct SttDequeued;

impl InternalEvent for SttDequeued {
    fn emit(self) {
        gauge!(STT_QUEUE_DEPTH).decrement(1.0);
    }
}

/// A transcript is stored: `ttfs` is from the utterance's `received_end` to now.
pub struct Transcribed {
    pub ttfs: Duration,
}

impl InternalEvent for Transcribed {
    fn emit(self) {
        histogram!(TTFS).record(self.ttfs.as_secs_f64());
    }
}

/// Which limit refused something.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    Frames,
    Requests,
    Streams,
    Idle,
    /// `[connections] max_connections`: a connection answered 503.
    Connections,
    /// `[connections] header_timeout_secs`: headers too slow, closed.
    HeaderTimeout,
    /// `[connections] body_timeout_secs`: a body too slow, refused.
    BodyTimeout,
    /// `[connections] send_timeout_secs`: a stream that read nothing, closed.
    SendTimeout,
    /// A WebSocket frame or message over the protocol's size, closed 4001.
    TooLarge,
    /// An upload past the expiry its phone gave it (`?expires_ms`), refused
    /// 410 `expired`: the phone's time-to-live for it ran out in the
    /// background-upload queue, so nobody wants its answer any more.
    Expired,
    /// Audio refused by its duration before decoding: a stored frame that
    /// is not 20 ms (close 4007, upload 400), or a transcription file over
    /// its length (400).
    FrameDuration,
    /// `[limits] replies_per_sec`: a reply waited for its device's turn
    /// at the responder (counted once per reply that waited).
    Replies,
    /// `[limits] opens_per_sec`: an `open` past the device's burst, closed 4004.
    Opens,
    /// `[limits] unfinished_per_device`: an `open` of a new id while the
    /// device has its maximum of utterances unfinished, closed 4004.
    Unfinished,
    /// `[limits] transcriptions_per_device`: a transcription request while
    /// the device has its maximum in progress, 429.
    Transcriptions,
    /// An utterance got no live transcription slot: its device already has
    /// its share (`live::MAX_LIVE_PER_DEVICE`), or the server is full.
    Live,
}

/// A limit refused a request, a frame, a stream or a connection.
pub struct Limited {
    pub limit: Limit,
}

impl InternalEvent for Limited {
    fn emit(self) {
        let limit = match self.limit {
            Limit::Frames => "frames",
            Limit::Requests => "requests",
            Limit::Streams => "streams",
            Limit::Idle => "idle",
            Limit::Connections => "connections",
            Limit::HeaderTimeout => "header_timeout",
            Limit::BodyTimeout => "body_timeout",
            Limit::SendTimeout => "send_timeout",
            Limit::TooLarge => "too_large",
            Limit::Expired => "expired",
            Limit::FrameDuration => "audio_duration",
            Limit::Replies => "replies",
            Limit::Opens => "opens",
            Limit::Unfinished => "unfinished",
            Limit::Transcriptions => "transcriptions",
            Limit::Live => "live",
        };
        counter!(LIMITED, "limit" => limit).increment(1);
    }
}

/// An open, upload or text post named a deleted utterance and was refused.
pub struct DeletedRefused;

impl InternalEvent for DeletedRefused {
    fn emit(self) {
        counter!(DELETED_REFUSED).increment(1);
    }
}

/// `POST /v1/audio/transcriptions` answered with `status`.
pub struct TranscriptionServed {
    pub status: u16,
}

impl InternalEvent for TranscriptionServed {
    fn emit(self) {
        counter!(TRANSCRIPTIONS, "status" => self.status.to_string()).increment(1);
    }
}

/// The sweep of abandoned utterances gave up on `count`.
pub struct Abandoned {
    pub count: u64,
}

impl InternalEvent for Abandoned {
    fn emit(self) {
        counter!(ABANDONED).increment(self.count);
    }
}

/// The retention sweeper deleted `count` audio files.
pub struct AudioPurged {
    pub count: u64,
}

impl InternalEvent for AudioPurged {
    fn emit(self) {
        counter!(AUDIO_PURGED).increment(self.count);
    }
}

/// What became of a speculative or partial decode request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftOutcome {
    Run,
    Superseded,
    Stale,
    Ended,
}

/// A draft ran or was dropped (see `stt_pool`).
pub struct DraftSettled {
    /// `DraftKind::label` (speculative, partial, settle).
    pub kind: &'static str,
    pub outcome: DraftOutcome,
}

impl InternalEvent for DraftSettled {
    fn emit(self) {
        let outcome = match self.outcome {
            DraftOutcome::Run => "run",
            DraftOutcome::Superseded => "superseded",
            DraftOutcome::Stale => "stale",
            DraftOutcome::Ended => "ended",
        };
        counter!(STT_DRAFTS, "kind" => self.kind, "outcome" => outcome).increment(1);
    }
}

/// Audio of an utterance being spoken was settled (`crate::live`).
pub struct Settled {
    pub secs: f64,
}

impl InternalEvent for Settled {
    fn emit(self) {
        counter!(SETTLED_MS).increment((self.secs * 1000.0).round() as u64);
    }
}

/// A partial transcript went down a stream.
pub struct PartialSent;

impl InternalEvent for PartialSent {
    fn emit(self) {
        counter!(PARTIALS_SENT).increment(1);
    }
}

/// A final transcript was taken from a speculative decode (`true`) or
/// decoded in full.
pub struct FinalTranscript {
    pub speculative: bool,
}

impl InternalEvent for FinalTranscript {
    fn emit(self) {
        counter!(FINALS, "source" => if self.speculative { "speculative" } else { "full" }).increment(1);
    }
}

/// An `endpoint` message went down a device's streams.
pub struct EndpointSent;

impl InternalEvent for EndpointSent {
    fn emit(self) {
        counter!(ENDPOINTS_SENT).increment(1);
    }
}

/// An unmarked utterance held no speech: it was stored without a reply
/// (see `crate::pipeline`).
pub struct SilentUtterance;

impl InternalEvent for SilentUtterance {
    fn emit(self) {
        counter!(SILENT).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without its upkeep, the recorder keeps every histogram sample until
    /// `/metrics` is scraped: a server nobody scrapes grows with every ack.
    #[cfg(target_os = "linux")]
    #[test]
    fn installing_the_recorder_starts_its_upkeep() {
        let _ = handle();
        let names = || -> Vec<String> {
            let threads = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
            threads
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect()
        };
        // A new thread names itself once it runs: until then it shows its
        // parent's name. Give it a moment.
        let waited = std::time::Instant::now();
        let mut seen = names();
        while !seen.iter().any(|n| n == UPKEEP_THREAD) && waited.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
            seen = names();
        }
        assert_eq!(seen.iter().filter(|n| *n == UPKEEP_THREAD).count(), 1, "{seen:?}");
    }
}
