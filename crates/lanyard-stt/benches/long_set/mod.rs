//! The long-speech reference set: passages of 30 s to 3 min, built as
//! 16 kHz mono PCM from `passages.toml` beside this file, each with the
//! sentences said in it (in spoken order, a sentence said twice listed
//! twice). README.md here lists the sources, their licences and lengths.
//!
//! Shared by benches and integration tests of lanyard-stt, which include it
//! by path (it is in a folder of its own so that Cargo does not take it for
//! a bench):
//!
//! ```ignore
//! #[path = "long_set/mod.rs"]            // from benches/
//! #[path = "../benches/long_set/mod.rs"] // from tests/
//! mod long_set;
//! ```
//!
//! Recordings are read with sox and speech is synthesised with espeak-ng,
//! both through `lanyard_pendant::speech`; the recordings are the packages
//! that `scripts/setup` fetches into `~/.local/share/lanyard/speech`. A
//! built passage is cached as raw s16le under `~/.cache/lanyard/long-set`
//! (`$LANYARD_CACHE/long-set`), keyed by a hash of everything that makes its
//! audio, so editing a passage rebuilds that passage only. Missing tools or
//! recordings panic with what to install: a reference set that silently
//! shrinks would change every figure measured on it.

// Each user takes a part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

/// The manifest. Through `crates/`, so that a sibling crate including this
/// module (the `lanyard` crate's `omi_wer` bench) finds it too.
pub const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../lanyard-stt/benches/long_set/passages.toml");

/// Samples per second of every built passage.
pub const SAMPLE_RATE: usize = 16_000;

/// Longest silence a piece may be followed by: the set models pauses in
/// speech, not gaps between recordings.
pub const MAX_PAUSE_SECS: f32 = 3.0;

/// Bumped when the way audio is built changes, so that every cached
/// passage is built again.
const BUILD_VERSION: &str = "long-set 1";

/// What a passage is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Recordings of real people.
    Real,
    /// espeak-ng speech that repeats on purpose (dialogue, anaphora, lists,
    /// counting, a quotation that echoes itself).
    Repetitive,
    /// espeak-ng sentences joined by natural pauses of 0.3 to 1.5 s.
    Monologue,
}

/// One passage, built.
#[derive(Debug, Clone)]
pub struct Passage {
    pub name: String,
    pub kind: Kind,
    /// 16 kHz mono samples in [-1, 1].
    pub pcm16k: Vec<f32>,
    /// The reference: every sentence in spoken order, repeats included.
    pub sentences: Vec<String>,
}

impl Passage {
    pub fn secs(&self) -> f64 {
        self.pcm16k.len() as f64 / SAMPLE_RATE as f64
    }

    /// The reference as one text.
    pub fn transcript(&self) -> String {
        self.sentences.join(" ")
    }
}

/// `passages.toml`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Where `prompt = KEY` pieces come from.
    pub prompts: Option<Prompts>,
    pub passage: Vec<PassageSpec>,
}

/// A folder of recorded prompts with a `KEY: words` list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompts {
    /// Under the speech directory.
    pub dir: String,
    /// Under `dir`: the recordings, `KEY.wav`.
    pub audio: String,
    /// Under `dir`: one `KEY: words` line per prompt; `;` starts a comment.
    pub list: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassageSpec {
    pub name: String,
    pub kind: Kind,
    /// espeak-ng voice of the `say` pieces that name none.
    pub voice: Option<String>,
    /// Words a minute of the `say` pieces that give none.
    pub rate: Option<u32>,
    pub piece: Vec<PieceSpec>,
}

/// One piece: exactly one of `clip`, `prompt` and `say`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PieceSpec {
    /// A recording under the speech directory; needs `sentences`.
    pub clip: Option<String>,
    /// A key of the manifest's `[prompts]`.
    pub prompt: Option<String>,
    /// Text for espeak-ng.
    pub say: Option<String>,
    pub voice: Option<String>,
    pub rate: Option<u32>,
    /// What a `clip` says.
    pub sentences: Option<Vec<String>>,
    /// Seconds of silence after the piece.
    #[serde(default)]
    pub pause: f32,
}

/// A piece resolved to the audio it makes and the sentences it says.
#[derive(Debug, Clone, PartialEq)]
pub enum Audio {
    Recording(PathBuf),
    Speech { text: String, voice: String, rate: u32 },
}

#[derive(Debug, Clone)]
pub struct Piece {
    pub audio: Audio,
    pub sentences: Vec<String>,
    pub pause: f32,
}

/// The default espeak-ng voice and rate, the pendant simulator's.
const DEFAULT_VOICE: &str = "en-us";
const DEFAULT_RATE: u32 = 150;

/// Where `scripts/setup` puts recordings of speech:
/// `$XDG_DATA_HOME/lanyard/speech`, else `~/.local/share/lanyard/speech`.
pub fn speech_dir() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/share"));
    data.join("lanyard/speech")
}

/// Where built passages are cached: `$LANYARD_CACHE/long-set`, else
/// `~/.cache/lanyard/long-set` (beside the shared build directory).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LANYARD_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/lanyard"))
        .join("long-set")
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
}

/// The manifest, parsed; panics on a malformed one.
pub fn manifest() -> Manifest {
    let text = fs::read_to_string(MANIFEST).unwrap_or_else(|e| panic!("read {MANIFEST}: {e}"));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{MANIFEST}: {e}"))
}

/// Every passage of the set, in manifest order, built or read from the
/// cache (two at a time per core on a cold cache: espeak-ng and sox run as
/// child processes).
pub fn passages() -> Vec<Passage> {
    let manifest = manifest();
    let prompts = load_prompt_list(&manifest);
    let specs = &manifest.passage;
    let next = AtomicUsize::new(0);
    let built: Mutex<Vec<Option<Passage>>> = Mutex::new(vec![None; specs.len()]);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(specs.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(spec) = specs.get(i) else { break };
                    let passage = build(spec, manifest.prompts.as_ref(), &prompts);
                    built.lock().unwrap()[i] = Some(passage);
                }
            });
        }
    });
    built.into_inner().unwrap().into_iter().map(|p| p.expect("every passage built")).collect()
}

/// The `KEY: words` list of the manifest's `[prompts]`, or an empty map when
/// it has none. Panics, saying to run scripts/setup, when the list is missing.
pub fn load_prompt_list(manifest: &Manifest) -> HashMap<String, String> {
    let Some(prompts) = &manifest.prompts else {
        return HashMap::new();
    };
    let path = speech_dir().join(&prompts.dir).join(&prompts.list);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the long-speech set needs {} ({e}): run scripts/setup, which fetches the recorded prompts",
            path.display()
        )
    });
    parse_prompt_list(&text)
}

/// `KEY: words` lines; blank lines and `;` comments are skipped.
pub fn parse_prompt_list(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with(';'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Resolves one passage's pieces, checking the manifest's rules.
pub fn resolve(spec: &PassageSpec, prompts: Option<&Prompts>, list: &HashMap<String, String>) -> Vec<Piece> {
    let name = &spec.name;
    spec.piece
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let at = format!("{MANIFEST}: passage {name:?}, piece {}", i + 1);
            assert!(
                (0.0..=MAX_PAUSE_SECS).contains(&piece.pause),
                "{at}: pause {} is outside 0 to {MAX_PAUSE_SECS} s",
                piece.pause
            );
            let (audio, sentences) = match (&piece.clip, &piece.prompt, &piece.say) {
                (Some(clip), None, None) => {
                    assert!(piece.voice.is_none() && piece.rate.is_none(), "{at}: a clip has no voice or rate");
                    let sentences = piece.sentences.clone().unwrap_or_else(|| panic!("{at}: a clip needs `sentences`"));
                    (Audio::Recording(speech_dir().join(clip)), sentences)
                }
                (None, Some(key), None) => {
                    assert!(piece.sentences.is_none(), "{at}: a prompt's sentences come from its list");
                    let prompts = prompts.unwrap_or_else(|| panic!("{at}: `prompt` needs a [prompts] table"));
                    let text = list.get(key).unwrap_or_else(|| panic!("{at}: no prompt {key:?} in {}", prompts.list));
                    let path = speech_dir().join(&prompts.dir).join(&prompts.audio).join(format!("{key}.wav"));
                    (Audio::Recording(path), split_sentences(text))
                }
                (None, None, Some(text)) => {
                    assert!(piece.sentences.is_none(), "{at}: the sentences of `say` are its text");
                    let voice = piece.voice.clone().or_else(|| spec.voice.clone()).unwrap_or(DEFAULT_VOICE.into());
                    let rate = piece.rate.or(spec.rate).unwrap_or(DEFAULT_RATE);
                    (Audio::Speech { text: text.clone(), voice, rate }, split_sentences(text))
                }
                _ => panic!("{at}: give exactly one of `clip`, `prompt` and `say`"),
            };
            assert!(!sentences.is_empty(), "{at}: says no sentence");
            for s in &sentences {
                assert!(!s.chars().any(|c| c.is_ascii_digit()), "{at}: spell numbers out (the WER does not): {s:?}");
            }
            Piece { audio, sentences, pause: piece.pause }
        })
        .collect()
}

/// `text` cut after each `.`, `?` or `!` that ends a word (a run of them, as
/// in "exactly...", ends one sentence); a piece without any is one sentence.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut sentences = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        current.push(c);
        if matches!(c, '.' | '?' | '!') && chars.peek().is_none_or(|n| n.is_whitespace()) {
            sentences.push(std::mem::take(&mut current));
        }
    }
    sentences.push(current);
    sentences.into_iter().map(|s| s.trim().to_owned()).filter(|s| s.chars().any(char::is_alphanumeric)).collect()
}

/// Builds one passage, or reads it from the cache.
pub fn build(spec: &PassageSpec, prompts: Option<&Prompts>, list: &HashMap<String, String>) -> Passage {
    let pieces = resolve(spec, prompts, list);
    let cache = cache_dir();
    let path = cache.join(format!("{}-{:016x}.pcm", spec.name, audio_key(&pieces)));
    let pcm = match fs::read(&path) {
        Ok(bytes) if !bytes.is_empty() => pcm16_from_le(&bytes),
        _ => {
            let pcm = synthesize_passage(&spec.name, &pieces);
            fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("create {}: {e}", cache.display()));
            let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            fs::write(&tmp, &bytes)
                .and_then(|()| fs::rename(&tmp, &path))
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            pcm
        }
    };
    Passage {
        name: spec.name.clone(),
        kind: spec.kind,
        pcm16k: pcm.iter().map(|&s| f32::from(s) / 32768.0).collect(),
        sentences: pieces.into_iter().flat_map(|p| p.sentences).collect(),
    }
}

/// FNV-1a (stable across Rust versions, unlike `DefaultHasher`) of
/// everything that makes a passage's audio.
fn audio_key(pieces: &[Piece]) -> u64 {
    let mut key = String::from(BUILD_VERSION);
    for piece in pieces {
        match &piece.audio {
            Audio::Recording(path) => key.push_str(&format!("\0clip\0{}", path.display())),
            Audio::Speech { text, voice, rate } => key.push_str(&format!("\0say\0{voice}\0{rate}\0{text}")),
        }
        key.push_str(&format!("\0{}", pause_samples(piece.pause)));
    }
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn pause_samples(secs: f32) -> usize {
    (secs * SAMPLE_RATE as f32).round() as usize
}

fn synthesize_passage(name: &str, pieces: &[Piece]) -> Vec<i16> {
    let mut pcm = Vec::new();
    for piece in pieces {
        let audio = match &piece.audio {
            Audio::Recording(path) => {
                assert!(
                    path.is_file(),
                    "long-speech passage {name:?} needs {}: run scripts/setup, which fetches the recordings",
                    path.display()
                );
                lanyard_pendant::speech::load_recording(path)
            }
            Audio::Speech { text, voice, rate } => {
                let voice = lanyard_pendant::speech::Voice { name: voice.clone(), rate: *rate };
                lanyard_pendant::speech::synthesize(text, &voice)
            }
        }
        .unwrap_or_else(|e| panic!("long-speech passage {name:?}: {e}"));
        assert!(audio.len() > SAMPLE_RATE / 4, "long-speech passage {name:?}: a piece under a quarter second");
        pcm.extend_from_slice(&audio);
        pcm.resize(pcm.len() + pause_samples(piece.pause), 0);
    }
    pcm
}

fn pcm16_from_le(bytes: &[u8]) -> Vec<i16> {
    bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}
