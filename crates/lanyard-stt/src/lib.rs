//! Speech-to-text for the Lanyard server: one trait, one default engine.
//!
//! The server hands each finished utterance (16 kHz mono `f32`, decoded from
//! the pendant's Opus) to a [`SpeechToText`] and stores the [`Transcript`].
//! Every engine implements the same trait, so the server, the tests and the
//! benchmarks never name a backend.
//!
//! The default engine, [`WhisperCt2`], runs an OpenAI Whisper model converted
//! to CTranslate2 (any faster-whisper model directory) on the CPU. Its design
//! choices (a trimmed encoder window with a 10 s floor, the English-only
//! prompt, the loop guards) are explained in the `whisper` module's doc.
//!
//! The other engine, `RemoteStt` (feature `remote`), sends each utterance to
//! an OpenAI-compatible `POST /v1/audio/transcriptions` endpoint: OpenAI,
//! Groq, a faster-whisper server, or another Lanyard server. It needs no
//! model on this machine.
//!
//! Code map:
//! - `whisper`: [`WhisperCt2`] and its [`WhisperConfig`];
//! - `remote` (feature `remote`): `RemoteStt` and its `RemoteConfig`;
//! - [`resample`]: band-limited conversion of other rates to 16 kHz;
//! - [`mel`]: Whisper's log-mel front end, matched against numpy;
//! - [`guards`]: pure checks against decoder loops;
//! - [`agreement`]: [`LocalAgreement`], partial transcripts that only grow;
//! - [`endpoint`]: [`Endpointer`], voice activity (earshot) on streamed audio:
//!   silence onset for speculative decoding, and endpoints;
//! - [`settle`]: [`SettlePolicy`], when to settle a long utterance being spoken;
//! - `preprocessor`: [`ensure_preprocessor_config`] and [`PreprocessorConfig`];
//! - `wer`: [`word_error_rate`], the quality yardstick for tests and benchmarks;
//! - [`sentences`]: [`sentences::sentence_coverage`], whether a transcript kept every
//!   sentence said, as often as it was said (long speech);
//! - `error`: [`SttError`], whose messages say what to do next.
//!
//! **Architecture invariant:** only this crate knows about CTranslate2,
//! tokenizers and mel spectrograms; callers see PCM in and text out.

pub mod agreement;
pub mod endpoint;
mod error;
pub mod guards;
mod location;
pub mod mel;
mod preprocessor;
#[cfg(feature = "remote")]
mod remote;
pub mod resample;
pub mod sentences;
pub mod settle;
mod wer;
mod whisper;

pub use agreement::LocalAgreement;
pub use endpoint::{EndpointConfig, Endpointer, VadEvent};
pub use error::SttError;
pub use location::{MODEL_DIR_ENV, data_home, default_model_dir, installed_model_dir, model_dir, require_model_dir};
pub use preprocessor::{
    EXPECTED_SAMPLING_RATE, PREPROCESSOR_CONFIG_FILE, PreprocessorConfig, ensure_preprocessor_config,
};
#[cfg(feature = "remote")]
pub use remote::{
    DEFAULT_REMOTE_ATTEMPTS, DEFAULT_REMOTE_BACKOFF, DEFAULT_REMOTE_MODEL, DEFAULT_REMOTE_TIMEOUT, MAX_RETRY_AFTER,
    RemoteConfig, RemoteStt, TRANSCRIPTIONS_PATH, endpoint_url,
};
pub use settle::SettlePolicy;
pub use wer::word_error_rate;

pub use whisper::{DEFAULT_MIN_WINDOW_SECS, MAX_BATCH, SETTLE_MARGIN_SECS, WhisperConfig, WhisperCt2};

/// A speech recogniser. Implementations are loaded once and shared across
/// connections, hence `Send + Sync` and `&self`.
pub trait SpeechToText: Send + Sync {
    /// Transcribes one utterance of 16 kHz mono samples in `[-1, 1]`.
    /// Blocking and CPU-bound: async callers should use `spawn_blocking`.
    fn transcribe(&self, pcm16k: &[f32]) -> Result<Transcript, SttError>;

    /// Transcribes like [`SpeechToText::transcribe`], and also times each
    /// word (`Segment::words`) where the engine can. An engine that cannot
    /// leaves the words empty; callers must not assume they are there.
    fn transcribe_with_words(&self, pcm16k: &[f32]) -> Result<Transcript, SttError> {
        self.transcribe(pcm16k)
    }

    /// Transcribes the audio received so far of an utterance that is still
    /// being spoken, after `previous` (the segments settled before this
    /// audio, timed from the utterance's start; the engine gives them to
    /// the decoder as context). Returns the segments that will not change whatever follows,
    /// timed from the start of `pcm16k`, and how many samples of `pcm16k`
    /// they account for: the caller keeps them and calls again later with
    /// the audio from there on. An engine that cannot tell settles nothing
    /// (the default), and the final decode then covers the whole utterance.
    fn transcribe_settled(&self, pcm16k: &[f32], previous: &[Segment]) -> Result<(Vec<Segment>, usize), SttError> {
        let _ = (pcm16k, previous);
        Ok((Vec::new(), 0))
    }

    /// Transcribes the rest of an utterance whose start was settled as
    /// `previous` (see [`SpeechToText::transcribe_settled`]). The default
    /// ignores them.
    fn transcribe_after(&self, pcm16k: &[f32], previous: &[Segment]) -> Result<Transcript, SttError> {
        let _ = previous;
        self.transcribe(pcm16k)
    }

    /// Transcribes several utterances, in input order. The default runs
    /// them one by one; an engine that gains from batching overrides it.
    fn transcribe_batch(&self, batch: &[&[f32]]) -> Vec<Result<Transcript, SttError>> {
        batch.iter().map(|pcm| self.transcribe(pcm)).collect()
    }

    /// A quick transcription for a partial result while the user is still
    /// speaking: cheaper than [`SpeechToText::transcribe`] where the engine
    /// can make it so (greedy search, no fallback), and never used as the
    /// final transcript.
    fn transcribe_draft(&self, pcm16k: &[f32]) -> Result<Transcript, SttError> {
        self.transcribe(pcm16k)
    }

    /// Whether the engine runs on this machine, so that drafts while the user
    /// speaks cost only local CPU. A remote engine says no, and the server
    /// then sends no partials rather than a request a second to someone
    /// else's endpoint.
    fn is_local(&self) -> bool {
        false
    }

    /// A short, stable name for logs and metrics, e.g. `"whisper-ct2"`.
    fn name(&self) -> &str;
}

/// The text of one utterance, with the costs needed to watch the real-time factor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transcript {
    /// The recognised text, trimmed; empty when no speech was found. It is
    /// the segments' texts joined with single spaces.
    pub text: String,
    /// Duration of the input audio in seconds.
    pub audio_secs: f32,
    /// Wall-clock seconds spent transcribing (features, encoder and decoder).
    pub compute_secs: f32,
    /// The text in timed pieces, in order, with times in seconds from the
    /// start of the input audio. An engine that cannot time its text gives
    /// one segment spanning the whole audio (or none for empty text).
    pub segments: Vec<Segment>,
}

impl Transcript {
    /// A transcript from timed segments: the text is theirs, joined.
    pub fn from_segments(segments: Vec<Segment>, audio_secs: f32, compute_secs: f32) -> Self {
        let text = join_segment_texts(&segments);
        Self { text, audio_secs, compute_secs, segments }
    }

    /// A transcript from an engine that gives only text: one segment over
    /// the whole audio, none when the text is empty.
    pub fn untimed(text: String, audio_secs: f32, compute_secs: f32) -> Self {
        let text = text.trim().to_owned();
        let segments = if text.is_empty() {
            Vec::new()
        } else {
            vec![Segment { start: 0.0, end: audio_secs, text: text.clone(), words: Vec::new() }]
        };
        Self { text, audio_secs, compute_secs, segments }
    }

    /// The same transcript with every time moved `secs` later: for a piece of
    /// audio that starts `secs` into the utterance.
    pub fn shifted(mut self, secs: f32) -> Self {
        for segment in &mut self.segments {
            segment.shift(secs);
        }
        self
    }
}

/// Seeds the sampling of every Whisper decode in this process: the
/// temperature fallback draws its hypotheses at random, so without a seed
/// the same audio may come back with different words from one run to the
/// next. CTranslate2 reads the seed once per thread, when that thread
/// first samples, so call this before the first decode (the benchmarks do,
/// to be reproducible; the server leaves sampling random).
pub fn seed_sampling(seed: u32) {
    ct2rs::sys::set_random_seed(seed);
}

/// Joins segment texts with one space, skipping empty ones.
pub fn join_segment_texts(segments: &[Segment]) -> String {
    segments.iter().map(|s| s.text.trim()).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" ")
}

/// A timed piece of a transcript: what Whisper calls a segment, usually a
/// sentence or a clause. Times are seconds from the start of the audio.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// Start of the segment's speech, in seconds.
    pub start: f32,
    /// End of the segment's speech, in seconds (`>= start`).
    pub end: f32,
    /// The segment's text, trimmed.
    pub text: String,
    /// Word times, when the engine was asked for them and can give them;
    /// otherwise empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<Word>,
}

impl Segment {
    /// Moves the segment (and its words) `secs` later.
    pub fn shift(&mut self, secs: f32) {
        self.start += secs;
        self.end += secs;
        for word in &mut self.words {
            word.start += secs;
            word.end += secs;
        }
    }
}

/// One word with its time, as OpenAI's `verbose_json` gives it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Word {
    /// The word as spoken, without surrounding spaces (punctuation attached).
    pub word: String,
    /// Start, in seconds from the start of the audio.
    pub start: f32,
    /// End, in seconds from the start of the audio.
    pub end: f32,
    /// The decoder's probability of the word's tokens (their product's
    /// geometric mean is not used: this is their mean).
    pub probability: f32,
}
