//! Transcribes one audio file with the default engine and prints its timed
//! segments: a quick look at what the long-form decoder does with a file.
//!
//! ```text
//! cargo run -p lanyard-stt --example transcribe_file -- FILE [--words] [--model-dir DIR]
//! ```
//!
//! FILE is raw 16 kHz mono signed 16-bit little-endian PCM (`.pcm`/`.raw`),
//! or anything `sox` can read (converted to that first). The model is
//! `--model-dir`, else `$LANYARD_MODEL_DIR`, else the default location.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use lanyard_stt::{SpeechToText, WhisperConfig, WhisperCt2, default_model_dir};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut file, mut words, mut model_dir) = (None, false, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--words" => words = true,
            "--model-dir" => model_dir = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                eprintln!("usage: transcribe_file FILE [--words] [--model-dir DIR]");
                return;
            }
            _ => file = Some(PathBuf::from(arg)),
        }
    }
    let Some(file) = file else {
        eprintln!("usage: transcribe_file FILE [--words] [--model-dir DIR]");
        std::process::exit(2);
    };
    let bytes = if matches!(file.extension().and_then(|e| e.to_str()), Some("pcm" | "raw")) {
        std::fs::read(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
    } else {
        let out = Command::new("sox")
            .arg(&file)
            .args(["-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw", "-"])
            .output()
            .expect("run sox (apt-get install sox)");
        assert!(out.status.success(), "sox could not read {}", file.display());
        out.stdout
    };
    let pcm: Vec<f32> = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0).collect();
    let dir = model_dir
        .or_else(|| std::env::var_os("LANYARD_MODEL_DIR").map(PathBuf::from))
        .unwrap_or_else(default_model_dir);
    let engine = WhisperCt2::load(&dir, WhisperConfig::default()).expect("load the model");
    let started = Instant::now();
    let t = if words { engine.transcribe_with_words(&pcm) } else { engine.transcribe(&pcm) }.expect("transcribe");
    for s in &t.segments {
        println!("[{:7.2} -> {:7.2}] {}", s.start, s.end, s.text);
        for w in &s.words {
            println!("      {:7.2} {:7.2} {:.2} {}", w.start, w.end, w.probability, w.word);
        }
    }
    eprintln!("{:.1} s of audio in {:.2} s", t.audio_secs, started.elapsed().as_secs_f64());
}
