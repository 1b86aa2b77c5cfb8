//! The one error type of this crate.
//!
//! The `Remote*` variants come from `RemoteStt` (feature `remote`);
//! they name the endpoint, never the API key, and say which `[stt]` setting
//! to look at.
//!
//! Every message ends with what the operator should do next, because these
//! errors surface at server start-up (a missing or broken model directory)
//! far more often than mid-stream. Errors from the C++ engine and the
//! tokenizer arrive as foreign types (`anyhow::Error`, boxed errors); they are
//! kept as their rendered text so that this enum stays `Send + Sync + 'static`
//! and the crate does not leak those dependencies into its public API.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong when loading a model or transcribing audio.
#[derive(Debug, thiserror::Error)]
pub enum SttError {
    /// The model directory does not exist at all.
    #[error(
        "speech model directory {} does not exist: run scripts/setup to install the model, or pass --model-dir",
        dir.display()
    )]
    ModelDirMissing { dir: PathBuf },

    /// The directory exists but lacks a file every CTranslate2 Whisper export has.
    #[error(
        "speech model directory {} has no {file}: it must be a CTranslate2 Whisper model (the faster-whisper format); run scripts/setup again or pass --model-dir",
        dir.display()
    )]
    ModelFileMissing { dir: PathBuf, file: &'static str },

    /// `preprocessor_config.json` was missing and could not be written.
    #[error(
        "cannot write {}: {source}; make the model directory writable once so the file can be created, or create it yourself with Whisper's standard values (see lanyard_stt::PreprocessorConfig::WHISPER)",
        path.display()
    )]
    PreprocessorConfigWrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// `preprocessor_config.json` exists but is unreadable, malformed, or
    /// disagrees with the model or with this crate's 16 kHz input contract.
    #[error(
        "bad {}: {reason}; fix it, or delete it so that Whisper's standard values are written again",
        path.display()
    )]
    PreprocessorConfigInvalid { path: PathBuf, reason: String },

    /// CTranslate2 refused to load the model.
    #[error(
        "cannot load the Whisper model from {}: {message}; check that model.bin is complete (run scripts/setup again) and that it is a CTranslate2 Whisper export",
        dir.display()
    )]
    ModelLoad { dir: PathBuf, message: String },

    /// The Hugging Face tokenizer could not be loaded or lacks Whisper's special tokens.
    #[error(
        "cannot use the tokenizer {}: {message}; it must be the tokenizer.json of the same Whisper model (run scripts/setup again)",
        path.display()
    )]
    Tokenizer { path: PathBuf, message: String },

    /// The caller handed over samples that are not audio (NaN or infinity).
    #[error(
        "audio sample {index} is {value}: the input must be finite 16 kHz mono samples in [-1, 1]; check the decoder that produced it"
    )]
    InvalidAudio { index: usize, value: f32 },

    /// The engine failed while encoding or decoding.
    #[error(
        "speech recognition failed in CTranslate2: {message}; retry, and if it persists re-install the model with scripts/setup"
    )]
    Inference { message: String },

    /// `[stt] url` is not an http(s) URL of an OpenAI-compatible endpoint.
    #[error(
        "[stt] url {url:?} is not usable: {reason}; give the API's base URL (e.g. https://api.openai.com/v1, https://api.groq.com/openai/v1, http://host:8080/v1) or the full .../audio/transcriptions URL"
    )]
    RemoteUrl { url: String, reason: String },

    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot set up the HTTP client for remote speech recognition: {message}; check the system's TLS set-up")]
    RemoteClient { message: String },

    /// The endpoint refused the credentials (401 or 403).
    #[error(
        "the speech-to-text endpoint {url} refused the API key (HTTP {status}: {detail}); set [stt] api_key_env (or api_key, or LANYARD_STT_API_KEY) to a valid key; for a Lanyard node, a device token of that node (`lanyard device add`)"
    )]
    RemoteAuth { url: String, status: u16, detail: String },

    /// The endpoint kept failing (5xx or 429) through every attempt.
    #[error(
        "the speech-to-text endpoint {url} failed {attempts} time(s), last with HTTP {status}: {detail}; the utterance is marked failed; check that server's logs and load, or raise [stt] max_attempts"
    )]
    RemoteUnavailable { url: String, status: u16, attempts: u32, detail: String },

    /// The endpoint rejected the request itself (a 4xx other than 401, 403, 429).
    #[error(
        "the speech-to-text endpoint {url} rejected the request (HTTP {status}: {detail}); check [stt] url, model and language against what that server accepts"
    )]
    RemoteRejected { url: String, status: u16, detail: String },

    /// No connection could be made (or it broke) through every attempt.
    #[error(
        "cannot reach the speech-to-text endpoint {url} after {attempts} attempt(s): {message}; is that server running, and is [stt] url right?"
    )]
    RemoteConnect { url: String, attempts: u32, message: String },

    /// No answer within the timeout. Not retried: the far side may still be
    /// working, and a second request would double its load.
    #[error(
        "the speech-to-text endpoint {url} did not answer within {secs} s; raise [stt] timeout_secs, or check that server's load"
    )]
    RemoteTimeout { url: String, secs: u64 },

    /// A 2xx answer that is not `{"text": "..."}`.
    #[error(
        "the speech-to-text endpoint {url} answered, but not with {{\"text\": ...}}: {message}; is [stt] url an OpenAI-compatible /audio/transcriptions endpoint?"
    )]
    RemoteResponse { url: String, message: String },
}
