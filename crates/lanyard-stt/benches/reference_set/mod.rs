//! The speech-to-text benches' reference set and helpers, shared by
//! `ttfs.rs` and `rtf.rs` (each includes it with `mod reference_set;`; it is
//! in a folder of its own so that Cargo does not take it for a bench).
//!
//! The set is `benches/reference.txt`: every sentence in every espeak-ng
//! voice listed there, synthesised through `lanyard_pendant::speech` and
//! cached as raw 16 kHz s16le PCM under `CARGO_TARGET_TMPDIR/lanyard-stt-ttfs`,
//! keyed by voice, rate and text (delete it after changing espeak-ng or sox).
//! Also here: the model directory, nearest-rank percentiles, and the machine
//! facts (CPU, load average) that go with every figure.

// Each bench uses a part of this module.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const SAMPLE_RATE: f32 = 16_000.0;

pub const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/reference.txt");

/// One reference utterance: a sentence in one voice.
pub struct Utterance {
    pub text: String,
    pub voice: String,
    pub rate: u32,
    /// Raw s16le PCM, exactly what faster-whisper reads.
    pub pcm: Vec<u8>,
    pub samples: Vec<f32>,
}

impl Utterance {
    pub fn secs(&self) -> f32 {
        self.samples.len() as f32 / SAMPLE_RATE
    }
    pub fn words(&self) -> f32 {
        self.text.split_whitespace().count() as f32
    }
}

/// Nearest-rank percentile, as the server's push_latency bench computes it.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Sentences and `(voice, rate)` pairs from reference.txt.
pub fn parse_reference(text: &str) -> (Vec<String>, Vec<(String, u32)>) {
    let (mut sentences, mut voices) = (Vec::new(), Vec::new());
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("voice:") {
            let mut parts = rest.split_whitespace();
            let (Some(voice), Some(rate), None) = (parts.next(), parts.next(), parts.next()) else {
                panic!("reference.txt: expected `voice: NAME RATE`, got {line:?}");
            };
            let rate = rate.parse().unwrap_or_else(|_| panic!("reference.txt: bad rate in {line:?}"));
            voices.push((voice.to_owned(), rate));
        } else {
            assert!(
                !line.chars().any(|c| c.is_ascii_digit()),
                "reference.txt: spell numbers out (word_error_rate does not): {line:?}"
            );
            sentences.push(line.to_owned());
        }
    }
    assert!(!sentences.is_empty() && !voices.is_empty(), "reference.txt has no sentences or no voices");
    (sentences, voices)
}

/// Every sentence in every voice, ordered so that neighbours differ in both
/// sentence and voice (the rounds of (d) mix voices and texts): utterance k
/// has voice `k % V` and sentence `(k / V + v * S / V) % S`.
pub fn synthesize_set(sentences: &[String], voices: &[(String, u32)]) -> Vec<Utterance> {
    let (s, v) = (sentences.len(), voices.len());
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lanyard-stt-ttfs");
    fs::create_dir_all(&cache).expect("create the PCM cache dir");
    (0..s * v)
        .map(|k| {
            let voice_index = k % v;
            let sentence = &sentences[(k / v + voice_index * s / v) % s];
            let (voice, rate) = &voices[voice_index];
            let pcm = synthesize_cached(&cache, sentence, voice, *rate);
            let samples = pcm.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0).collect();
            Utterance { text: sentence.clone(), voice: voice.clone(), rate: *rate, pcm, samples }
        })
        .collect()
}

/// The pendant simulator's espeak-ng voice as raw 16 kHz mono s16le, cached
/// by voice, rate and text.
pub fn synthesize_cached(cache: &Path, text: &str, voice: &str, rate: u32) -> Vec<u8> {
    let key = format!("{voice}\0{rate}\0{text}");
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let path = cache.join(format!("{voice}-{rate}-{hash:016x}.pcm"));
    if let Ok(pcm) = fs::read(&path)
        && pcm.len() > 16_000
    {
        return pcm;
    }
    let voice_cfg = lanyard_pendant::speech::Voice { name: voice.to_string(), rate };
    let samples = lanyard_pendant::speech::synthesize(text, &voice_cfg)
        .unwrap_or_else(|e| panic!("cannot synthesize {voice} {rate} {text:?}: {e}"));
    assert!(samples.len() > 8_000, "espeak-ng produced under half a second for {text:?}");
    let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, &pcm).and_then(|()| fs::rename(&tmp, &path)).expect("write the PCM cache");
    pcm
}

/// `$LANYARD_MODEL_DIR`, else the installed model (the rule every test
/// uses, `lanyard_stt::require_model_dir`); exits with instructions if no
/// model is there.
pub fn model_dir() -> PathBuf {
    lanyard_stt::require_model_dir().unwrap_or_else(|e| {
        let _ = writeln!(std::io::stderr(), "{} bench: {e}", env!("CARGO_CRATE_NAME"));
        std::process::exit(1);
    })
}

/// `/proc/loadavg`'s three averages, or "unknown".
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Exits with a message, prefixed by the bench's name, when `espeak-ng` or
/// `sox` (which synthesise the set) is missing.
pub fn check_speech_tools() {
    for tool in ["espeak-ng", "sox"] {
        if Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            let _ = writeln!(
                std::io::stderr(),
                "{} bench: {tool} is not installed: apt-get install espeak-ng sox",
                env!("CARGO_CRATE_NAME")
            );
            std::process::exit(1);
        }
    }
}
