//! The endpointer on real (synthesised) speech: where it says speech stops,
//! and that the speculative cut it proposes transcribes like the whole.

mod common;

use lanyard_stt::{EndpointConfig, Endpointer, SpeechToText, VadEvent, WhisperConfig, WhisperCt2, word_error_rate};

const RATE: usize = 16_000;

fn ms(samples: usize) -> usize {
    samples * 1000 / RATE
}

#[test]
fn speech_then_silence_gives_onset_then_endpoint_at_the_speech_end() {
    let speech = common::synthesize("Please remind me to call my sister tomorrow morning.");
    // Where the voice really stops: the last sample louder than -40 dBFS.
    let last_loud = speech.iter().rposition(|s| s.abs() > 0.01).unwrap();
    let mut audio = vec![0.0; RATE / 2];
    audio.extend_from_slice(&speech);
    audio.extend(std::iter::repeat_n(0.0, RATE * 2));
    let voice_end = RATE / 2 + last_loud;

    let cfg = EndpointConfig::default();
    let mut e = Endpointer::new(cfg.clone());
    let mut events = Vec::new();
    for (i, chunk) in audio.chunks(320).enumerate() {
        for ev in e.push(chunk) {
            events.push((ev, (i + 1) * 320));
        }
    }
    let starts: Vec<usize> = events
        .iter()
        .filter_map(|(e, _)| match e {
            VadEvent::Speech { start } => Some(*start),
            _ => None,
        })
        .collect();
    assert!(!starts.is_empty(), "{events:?}");
    assert!((ms(starts[0]) as i64 - 500).abs() <= 150, "speech starts at {} ms: {events:?}", ms(starts[0]));
    let Some(&(VadEvent::Endpoint { speech_end }, seen_at)) =
        events.iter().rev().find(|(e, _)| matches!(e, VadEvent::Endpoint { .. }))
    else {
        panic!("no endpoint: {events:?}");
    };
    assert!(
        (ms(speech_end) as i64 - ms(voice_end) as i64).abs() <= 200,
        "speech end {} ms, voice end {} ms",
        ms(speech_end),
        ms(voice_end)
    );
    assert!(ms(seen_at - speech_end) >= cfg.end_ms as usize && ms(seen_at - speech_end) <= cfg.end_ms as usize + 40);
    let onset = events.iter().rev().find(|(e, _)| matches!(e, VadEvent::SilenceOnset { .. })).unwrap();
    assert_eq!(onset.0, VadEvent::SilenceOnset { speech_end });
    assert!(
        ms(onset.1 - speech_end) >= cfg.onset_ms as usize && ms(onset.1 - speech_end) <= cfg.onset_ms as usize + 40
    );
    // Pauses between words did not end the speech early.
    assert_eq!(events.iter().filter(|(e, _)| matches!(e, VadEvent::Endpoint { .. })).count(), 1, "{events:?}");
}

#[test]
fn the_cut_at_silence_onset_transcribes_like_the_whole_utterance() {
    let stt = WhisperCt2::load(&common::model_dir(), WhisperConfig::default()).unwrap();
    for text in ["What is on my calendar this afternoon?", "Turn on the lights in the kitchen."] {
        let mut audio = common::synthesize(text);
        audio.extend(std::iter::repeat_n(0.0, RATE));
        let mut e = Endpointer::new(EndpointConfig::default());
        let mut cut = None;
        for (i, chunk) in audio.chunks(320).enumerate() {
            if e.push(chunk).iter().any(|ev| matches!(ev, VadEvent::SilenceOnset { .. })) && cut.is_none() {
                cut = Some((i + 1) * 320);
            }
        }
        let cut = cut.expect("a silence onset");
        let whole = stt.transcribe(&audio).unwrap().text;
        let early = stt.transcribe(&audio[..cut]).unwrap().text;
        common::report(&format!("cut at {} of {} ms: {early:?} / whole: {whole:?}", ms(cut), ms(audio.len())));
        assert!(word_error_rate(&whole, &early) <= 0.15, "{early:?} vs {whole:?}");
    }
}
