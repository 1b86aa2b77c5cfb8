//! Known sentences, spoken by espeak-ng, as 16 kHz mono PCM.
//!
//! espeak-ng writes 22.05 kHz WAV; sox resamples it to the pendant's 16 kHz
//! with a proper anti-aliasing filter. Both are Debian packages that the
//! setup script installs.

use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;

/// The demo's reference sentences: everyday requests of the kind a pendant
/// user speaks, 3 to 6 seconds each.
pub const DEMO_SENTENCES: &[&str] = &[
    "Remind me to call my sister tomorrow morning.",
    "What is the weather going to be like this weekend?",
    "Add milk, eggs and bread to my shopping list.",
    "Send a message to Tom saying I will be ten minutes late.",
];

#[derive(Debug, Error)]
pub enum SpeechError {
    #[error("cannot run {tool}: {source}. Install it with `apt-get install espeak-ng sox` (scripts/setup does this)")]
    Spawn { tool: &'static str, source: std::io::Error },
    #[error("{tool} failed: {stderr}")]
    Failed { tool: &'static str, stderr: String },
}

/// A voice and speaking rate for espeak-ng.
#[derive(Debug, Clone)]
pub struct Voice {
    /// espeak-ng voice name, e.g. `en-us`.
    pub name: String,
    /// Words per minute.
    pub rate: u32,
}

impl Default for Voice {
    fn default() -> Self {
        Self { name: "en-us".into(), rate: 150 }
    }
}

/// Speaks `text` and returns 16 kHz mono PCM16 samples.
pub fn synthesize(text: &str, voice: &Voice) -> Result<Vec<i16>, SpeechError> {
    let espeak = Command::new("espeak-ng")
        .args(["-v", &voice.name, "-s", &voice.rate.to_string(), "--stdout", "--", text])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| SpeechError::Spawn { tool: "espeak-ng", source })?;
    if !espeak.status.success() || espeak.stdout.is_empty() {
        return Err(SpeechError::Failed { tool: "espeak-ng", stderr: String::from_utf8_lossy(&espeak.stderr).into() });
    }
    let mut sox = Command::new("sox")
        .args(["-q", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SpeechError::Spawn { tool: "sox", source })?;
    let mut stdin = sox.stdin.take().expect("piped");
    let wav = espeak.stdout;
    let feeder = std::thread::spawn(move || stdin.write_all(&wav));
    let out = sox.wait_with_output().map_err(|source| SpeechError::Spawn { tool: "sox", source })?;
    let _ = feeder.join();
    if !out.status.success() {
        return Err(SpeechError::Failed { tool: "sox", stderr: String::from_utf8_lossy(&out.stderr).into() });
    }
    Ok(lanyard_audio::pcm16_from_le_bytes(&out.stdout))
}

/// Reads a recording of real speech as 16 kHz mono PCM16, for a pendant that
/// speaks recorded people instead of espeak-ng.
///
/// Any file sox reads (WAV, FLAC, ...) is resampled and mixed down as needed.
/// A `.raw` file has no header and is taken as 16 kHz mono signed 16-bit
/// little-endian, the convention of pocketsphinx's test data.
pub fn load_recording(path: &std::path::Path) -> Result<Vec<i16>, SpeechError> {
    let mut sox = Command::new("sox");
    sox.arg("-q");
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("raw")) {
        sox.args(["-t", "raw", "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-L"]);
    }
    let out = sox
        .arg(path)
        .args(["-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-L", "-t", "raw", "-"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SpeechError::Spawn { tool: "sox", source })?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(SpeechError::Failed {
            tool: "sox",
            stderr: format!("{}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(lanyard_audio::pcm16_from_le_bytes(&out.stdout))
}
