//! Batched transcription: four speakers' utterances in one encoder batch and
//! one beam search give the texts each gets alone.

mod common;

use std::time::Instant;

use lanyard_stt::{SpeechToText, WhisperConfig, WhisperCt2, word_error_rate};

const SENTENCES: [&str; 4] = [
    "Please remind me to call my sister tomorrow morning.",
    "What is on my calendar this afternoon?",
    "Turn off the lights in the kitchen please.",
    "How far is the nearest train station from here?",
];

#[test]
fn a_batch_gives_the_texts_each_utterance_gets_alone() {
    let stt = WhisperCt2::load(&common::model_dir(), WhisperConfig::default()).unwrap();
    let audio: Vec<Vec<f32>> = SENTENCES.iter().map(|s| common::synthesize(s)).collect();
    stt.transcribe(&audio[0]).unwrap(); // warm-up

    let t = Instant::now();
    let alone: Vec<String> = audio.iter().map(|a| stt.transcribe(a).unwrap().text).collect();
    let alone_secs = t.elapsed().as_secs_f32();
    let refs: Vec<&[f32]> = audio.iter().map(Vec::as_slice).collect();
    let t = Instant::now();
    let batched: Vec<String> = stt.transcribe_batch(&refs).into_iter().map(|r| r.unwrap().text).collect();
    let batch_secs = t.elapsed().as_secs_f32();
    common::report(&format!("one by one {alone_secs:.3} s, batched {batch_secs:.3} s: {batched:?}"));
    for ((a, b), reference) in alone.iter().zip(&batched).zip(SENTENCES) {
        assert!(word_error_rate(a, b) <= 0.1, "alone {a:?}, batched {b:?}");
        assert!(word_error_rate(reference, b) <= 0.25, "{b:?}");
    }
}

#[test]
fn what_cannot_share_a_window_is_transcribed_one_by_one() {
    let stt = WhisperCt2::load(&common::model_dir(), WhisperConfig::default()).unwrap();
    let short = common::synthesize(SENTENCES[1]);
    // 12 s: past the 10 s floor, so its window differs from the short one's.
    let mut long = common::synthesize(SENTENCES[0]);
    long.resize(16_000 * 12, 0.0);
    let out = stt.transcribe_batch(&[&short, &long, &[f32::NAN, 0.0]]);
    assert!(word_error_rate(SENTENCES[1], &out[0].as_ref().unwrap().text) <= 0.25);
    assert!(word_error_rate(SENTENCES[0], &out[1].as_ref().unwrap().text) <= 0.25);
    assert!(out[2].is_err(), "bad audio fails alone, not the batch");
}
