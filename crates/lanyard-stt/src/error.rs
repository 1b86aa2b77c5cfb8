//! The one error type of this crate.
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
}
