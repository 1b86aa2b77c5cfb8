//! Benchmark: real-time factor (RTF) of lanyard-stt's Whisper engine:
//! compute seconds over audio seconds, per utterance.
//!
//! The engine is `WhisperCt2` with `WhisperConfig::default()`, as the server
//! loads it (10 s window floor, beam 5, one intra-op thread per core). Each
//! utterance of the reference set (`benches/reference.txt`, synthesised by
//! espeak-ng and cached exactly as the `ttfs` bench does, see
//! `reference_set/`) is transcribed once, one at a time, after one untimed
//! warm-up call; the clock covers one `SpeechToText::transcribe` call with
//! the audio in memory (log-mel, encoder, decoder, guards).
//!
//! Reported: audio seconds, compute seconds and RTF per utterance as median,
//! p10–p90 and min–max, plus the set's total (sum of compute over sum of
//! audio). An RTF below 1 is faster than real time. Because short
//! utterances are padded to the window floor, RTF falls as utterances grow;
//! the set's 3–10 s sentences are what the pendant sends.
//!
//! To keep a run under about two minutes on a 2-core machine, it takes the
//! first 40 utterances of the set by default, which cover the three voices and
//! nearly all sentences; `LANYARD_BENCH_LIMIT=N` takes N (`120` is the whole
//! set). Timings on a shared machine move with the load average, printed at
//! the start and end.
//!
//! Run: `cargo bench -p lanyard-stt --bench rtf`. Needs `espeak-ng`, `sox`
//! and the model in `$LANYARD_MODEL_DIR` or
//! `~/.local/share/lanyard/models/whisper-tiny.en`.

mod reference_set;

use std::fs;
use std::time::Instant;

use lanyard_stt::{SpeechToText, WhisperConfig, WhisperCt2};
use reference_set::{
    REFERENCE, Utterance, cpu_model, load_average, model_dir, parse_reference, percentile, synthesize_set,
};

/// Utterances taken by default: about a minute of compute on a busy 2-core machine.
const DEFAULT_LIMIT: usize = 40;

/// Median, p10–p90 and min–max of `values`, formatted to `decimals`.
fn spread(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!(
        "median {:>6.d$}   p10-p90 {:.d$}-{:.d$}   min-max {:.d$}-{:.d$}",
        percentile(values, 0.5),
        percentile(values, 0.1),
        percentile(values, 0.9),
        min,
        max,
        d = decimals
    )
}

fn main() {
    reference_set::check_speech_tools();
    let model_dir = model_dir();
    let (sentences, voices) = parse_reference(&fs::read_to_string(REFERENCE).expect("read reference.txt"));
    let limit =
        std::env::var("LANYARD_BENCH_LIMIT").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(DEFAULT_LIMIT);
    let mut utterances: Vec<Utterance> = synthesize_set(&sentences, &voices);
    let set_len = utterances.len();
    utterances.truncate(limit.max(1));

    let config = WhisperConfig::default();
    println!("lanyard-stt real-time factor benchmark");
    println!("  model       {}", model_dir.display());
    println!("  machine     {} ({} threads for the engine)", cpu_model(), config.threads);
    println!(
        "  lanyard     WhisperConfig::default(): floor {} s, beam {}, {} threads",
        config.min_window_secs, config.beam_size, config.threads
    );
    println!(
        "  set         {} of {set_len} utterances of benches/reference.txt (LANYARD_BENCH_LIMIT)",
        utterances.len()
    );
    println!("  load avg    {} at start", load_average());

    let engine = WhisperCt2::load(&model_dir, config).expect("load the model");
    // Untimed warm-up: thread pools, allocators, first-call paths.
    engine.transcribe(&utterances[0].samples).expect("warm-up");

    let started = Instant::now();
    let (mut audio, mut compute, mut rtf) = (Vec::new(), Vec::new(), Vec::new());
    for u in &utterances {
        let t = Instant::now();
        let transcript = engine.transcribe(&u.samples).expect("transcribe");
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(transcript);
        audio.push(f64::from(u.secs()));
        compute.push(secs);
        rtf.push(secs / f64::from(u.secs()));
    }
    let (audio_total, compute_total): (f64, f64) = (audio.iter().sum(), compute.iter().sum());

    println!("  load avg    {} at end; {:.0} s wall time", load_average(), started.elapsed().as_secs_f64());
    println!();
    println!("  audio s     {}", spread(&audio, 2));
    println!("  compute s   {}", spread(&compute, 3));
    println!("  RTF         {}", spread(&rtf, 3));
    println!(
        "  total       {audio_total:.1} s of audio in {compute_total:.1} s: RTF {:.3} ({:.1}x real time)",
        compute_total / audio_total,
        audio_total / compute_total
    );
}
