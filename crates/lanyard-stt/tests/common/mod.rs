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

/// The model directory: `$LANYARD_MODEL_DIR`, else where `scripts/setup`
/// installs it; the one rule of every test (`lanyard_stt::require_model_dir`,
/// which `lanyard_testkit::model_dir` wraps too: that crate depends on this
/// one, so these tests call the rule directly). Panics with install
/// instructions otherwise.
pub fn model_dir() -> PathBuf {
    lanyard_stt::require_model_dir().unwrap_or_else(|e| panic!("the STT tests need the real model; {e}"))
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
