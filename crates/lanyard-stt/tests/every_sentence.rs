//! Every word: the default engine transcribes each passage of the long
//! reference set (`benches/long_set/`: real readings, passages that repeat
//! on purpose, monologues with pauses, 30 s to 3 min) in full. The test fails
//! if any reference sentence has more than half its words missing from the
//! transcript, or if any sentence appears more often than it was said
//! (`lanyard_stt::sentences::sentence_coverage`). All passages are checked
//! before it fails, and each failure is listed with the transcript.
//!
//! The WER and time against faster-whisper are the `longform` bench's job;
//! this is the floor that must never give. It is ignored while the engine
//! does not meet it yet (see the attribute), so CI stays green for the rest;
//! run it with `cargo test -p lanyard-stt --test every_sentence -- --ignored
//! --nocapture` (about 5 minutes on 2 cores).

#[path = "../benches/long_set/mod.rs"]
mod long_set;

mod common;

use lanyard_stt::sentences::sentence_coverage;
use lanyard_stt::{SpeechToText, WhisperConfig, WhisperCt2, word_error_rate};

#[test]
#[ignore = "issue 12 is open: on 2026-12-07 at e29a082 (longform bench, seed 1) 4 of 18 passages still doubled or lost a sentence whole-file (prompts-03, prompts-05, dialogue-station, counting-sheep; faster-whisper fails 3); run with --ignored"]
fn no_sentence_of_the_long_set_is_dropped_or_doubled() {
    // The fallback's sampling is seeded, so that a failure can be had again.
    lanyard_stt::seed_sampling(1);
    let engine = WhisperCt2::load(&common::model_dir(), WhisperConfig::default()).expect("load the model");
    let mut failures = Vec::new();
    for p in long_set::passages() {
        let t = engine.transcribe(&p.pcm16k).expect("transcribe");
        let coverage = sentence_coverage(&p.sentences, &t.text);
        common::report(&format!(
            "{:<20} {:>6.1} s in {:>5.1} s, WER {:>5.1}%, {} segments{}",
            p.name,
            p.secs(),
            t.compute_secs,
            100.0 * word_error_rate(&p.sentences.join(" "), &t.text),
            t.segments.len(),
            if coverage.is_complete() { String::new() } else { format!(": {coverage:?}") }
        ));
        // Segments are in order, inside the audio, and make up the text.
        let mut last = 0.0;
        for s in &t.segments {
            assert!(s.start >= last - 0.05 && s.end >= s.start && s.end <= p.secs() as f32 + 0.05, "{}: {s:?}", p.name);
            last = s.start;
        }
        assert_eq!(t.text, lanyard_stt::join_segment_texts(&t.segments), "{}", p.name);
        if !coverage.is_complete() {
            failures.push(format!("{}: {coverage:?}\n  transcript: {:?}", p.name, t.text));
        }
    }
    assert!(failures.is_empty(), "{} passage(s) lost or doubled sentences:\n{}", failures.len(), failures.join("\n"));
}
