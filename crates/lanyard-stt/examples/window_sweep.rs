//! Sweeps the encoder-window floor and beam size over synthesised sentences,
//! printing word error rate and time per setting.
//!
//! This is how `DEFAULT_MIN_WINDOW_SECS` and the default beam were chosen;
//! rerun it when the model, the machine or CTranslate2 changes:
//!
//! ```text
//! cargo run -p lanyard-stt --example window_sweep
//! ```
//!
//! All settings run in one process on the same audio, so their numbers are
//! comparable with each other (and only with each other). espeak-ng speech is
//! a stand-in for the pendant's; confirm a change on recorded speech.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use lanyard_stt::{SpeechToText, WhisperConfig, WhisperCt2, word_error_rate};

/// Short utterances of the kind the pendant sends, one to six seconds each.
const SENTENCES: [&str; 30] = [
    "Turn off the lights.",
    "What time is it?",
    "The quick brown fox jumps over the lazy dog.",
    "Please remind me to call my sister tomorrow morning.",
    "The meeting has been moved to the small conference room.",
    "Add eggs, butter and flour to the shopping list.",
    "I think we should leave a little earlier tonight.",
    "Send a message to Anna saying I will be late.",
    "How far is the nearest train station from here?",
    "The doctor said I should drink more water every day.",
    "Can you play some quiet music while I read?",
    "Note to self: the garden needs watering before the weekend.",
    "Good morning everyone.",
    "The weather will be sunny this afternoon.",
    "Remember to buy milk and bread on the way home.",
    "My keys are on the kitchen table.",
    "We need to finish the report before Friday.",
    "Could you open the window, please?",
    "The children are playing in the park.",
    "I left my umbrella at the office again.",
    "Let us meet for lunch next week.",
    "The library closes early on Sundays.",
    "She bought a new bicycle for her son.",
    "Do not forget to water the plants.",
    "The train was delayed because of the snow.",
    "I would like a cup of coffee with milk.",
    "Call the plumber about the leaking pipe.",
    "The new restaurant downtown is very popular.",
    "Please turn the volume down a little.",
    "Thank you for your help yesterday.",
];

fn main() {
    let audio: Vec<Vec<f32>> = SENTENCES.iter().map(|s| common::synthesize(s)).collect();
    let dir = common::model_dir();
    let settings = [(30.0, 5), (30.0, 1), (15.0, 1), (10.0, 5), (10.0, 1), (6.0, 1)];

    println!("min_window_s beam  WER%  median_s  max_s  total_s");
    for (min_window_secs, beam_size) in settings {
        let config = WhisperConfig { min_window_secs, beam_size, ..Default::default() };
        let stt = WhisperCt2::load(&dir, config).expect("model loads");
        // One untimed run so that allocation and thread start-up are not counted.
        stt.transcribe(&audio[0]).unwrap();

        let started = Instant::now();
        let (mut errors, mut words, mut times) = (0.0, 0.0, Vec::new());
        for (reference, samples) in SENTENCES.iter().zip(&audio) {
            let transcript = stt.transcribe(samples).unwrap();
            let n = reference.split_whitespace().count() as f32;
            errors += word_error_rate(reference, &transcript.text) * n;
            words += n;
            times.push(transcript.compute_secs);
            if word_error_rate(reference, &transcript.text) > 0.0 {
                eprintln!("  [{min_window_secs} s, beam {beam_size}] {reference:?} -> {:?}", transcript.text);
            }
        }
        times.sort_by(f32::total_cmp);
        println!(
            "{min_window_secs:>12} {beam_size:>4} {:>5.1} {:>9.3} {:>6.3} {:>8.2}",
            100.0 * errors / words,
            times[times.len() / 2],
            times[times.len() - 1],
            started.elapsed().as_secs_f32()
        );
    }
}
