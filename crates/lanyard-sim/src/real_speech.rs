//! Recordings of real people speaking, with their transcripts, for the
//! `[corpus] real_speech_per_pendant` key of a scenario.
//!
//! They come from the test data of the pocketsphinx 5.1.1 source package on
//! PyPI (CMU's BSD-style licence, in its `LICENSE`): five sentences of
//! *Sense and Sensibility* read by a LibriVox volunteer (LibriVox recordings
//! are in the public domain) and a man saying "go forward ten meters".
//! `scripts/setup` downloads the package with pip and keeps the package's
//! `LICENSE` and those files in [`default_dir`], laid out as in the package.
//!
//! The transcripts are the package's own: `test/data/librivox/*.txt`, which
//! its alignment tests use (with the reader's "a more a amiable" as spoken),
//! and the hypothesis its decoder tests expect for `goforward.raw`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The package the recordings come from.
pub const PACKAGE: &str = "pocketsphinx 5.1.1";

/// Each recording's path in the package, and what is said in it.
pub const RECORDINGS: &[(&str, &str)] = &[
    (
        "test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav",
        "and mister john dashwood had then leisure to consider how much there might be prudently in his power to do for them",
    ),
    ("test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav", "he was not an ill disposed young man"),
    (
        "test/data/librivox/sense_and_sensibility_01_austen_64kb-0890.wav",
        "unless to be rather cold hearted and rather selfish is to be ill disposed",
    ),
    (
        "test/data/librivox/sense_and_sensibility_01_austen_64kb-0920.wav",
        "had he married a more a amiable woman he might have been made still more respectable than he was",
    ),
    (
        "test/data/librivox/sense_and_sensibility_01_austen_64kb-0930.wav",
        "he might even have been made amiable himself",
    ),
    ("test/data/goforward.raw", "go forward ten meters"),
];

/// Where `scripts/setup` puts the recordings: `$LANYARD_SPEECH_DIR`, else
/// `speech/pocketsphinx-5.1.1` in Lanyard's data directory.
pub fn default_dir() -> PathBuf {
    lanyard_stt::data_home().join("speech/pocketsphinx-5.1.1")
}

/// The recordings under `dir` with their transcripts, or an error that says
/// how to install them.
pub fn recordings(dir: &Path) -> Result<Vec<(PathBuf, &'static str)>> {
    let list: Vec<_> = RECORDINGS.iter().map(|(p, t)| (dir.join(p), *t)).collect();
    let missing: Vec<_> = list.iter().filter(|(p, _)| !p.is_file()).map(|(p, _)| p.display().to_string()).collect();
    if !missing.is_empty() {
        bail!(
            "the scenario asks for real speech, but {} of the recordings from {PACKAGE} are missing (first: {}). \
             scripts/setup installs them into {}; give another place with --speech-dir or LANYARD_SPEECH_DIR",
            missing.len(),
            missing[0],
            default_dir().display()
        );
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcripts_spell_out_what_is_said() {
        // The WER normaliser does not spell out numbers, so a reference holds
        // words only, in lower case as the package writes them.
        for (path, text) in RECORDINGS {
            assert!(!text.is_empty() && text.chars().all(|c| c.is_ascii_lowercase() || c == ' '), "{path}: {text}");
        }
    }

    #[test]
    fn recordings_decode_to_16_khz_mono() {
        // A headerless .raw file is 16 kHz mono PCM16 already: read as is.
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("ramp.raw");
        let samples: Vec<i16> = (0..1600).map(|i| (i * 20 - 16000) as i16).collect();
        std::fs::write(&raw, samples.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        assert_eq!(lanyard_pendant::speech::load_recording(&raw).unwrap(), samples);
        // A WAV at another rate and in stereo is resampled and mixed down.
        let wav = dir.path().join("tone.wav");
        let made = std::process::Command::new("sox")
            .args(["-q", "-n", "-r", "8000", "-c", "2", "-b", "16"])
            .arg(&wav)
            .args(["synth", "0.5", "sine", "440"])
            .status()
            .expect("sox is installed (scripts/setup)");
        assert!(made.success());
        let pcm = lanyard_pendant::speech::load_recording(&wav).unwrap();
        assert!((7990..=8010).contains(&pcm.len()), "0.5 s at 16 kHz, got {} samples", pcm.len());
        assert!(pcm.iter().any(|&s| s.unsigned_abs() > 1000));
    }

    #[test]
    fn a_missing_recording_says_how_to_install_it() {
        let err = recordings(Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(err.contains("scripts/setup") && err.contains("6 of the recordings"), "{err}");
    }
}
