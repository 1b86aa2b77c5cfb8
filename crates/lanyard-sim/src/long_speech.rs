//! Long utterances for the `[corpus] long_utterances_per_pendant` key of a
//! scenario: passages of several sentences, 30 s to a few minutes of speech.
//!
//! People dictate notes, tell stories and hold conversations, and they
//! repeat themselves. A transcript that stops after the first sentences, or
//! that drops a sentence because it was said twice, loses words without a
//! sign; these passages are written so that such a transcript shows in the
//! word error rate. Each says something twice on purpose (a question and its
//! answer, a refrain, a step of directions), counts through a list, or
//! begins clause after clause alike. None holds a number, which the WER
//! normaliser would not match against Whisper's digits.
//!
//! A passage is spoken as the corpus speaks a sentence: each sentence by
//! espeak-ng in the pendant's voice and rate
//! ([`lanyard_pendant::speech::synthesize`]), then joined with a pause of
//! silence before each, drawn from [`PAUSE_MS`] (a breath between sentences,
//! up to a speaker gathering their thoughts). [`assemble`] picks the
//! sentences: in order, round again if the passage runs out, until the drawn
//! length is reached, never past the scenario's maximum. The reference text
//! is every sentence said, in order.
//!
//! The result is 16 kHz mono PCM16 in a `.raw` file that the pendant
//! simulator speaks with `--say-wav` (after its `--say` sentences).

use std::path::Path;

use anyhow::{Context, Result};
use lanyard_pendant::speech::{self, Voice};
use rand::Rng;

/// The pause before each sentence but the first, ms, drawn uniformly.
pub const PAUSE_MS: [u64; 2] = [300, 1200];

/// Samples per millisecond at the pendant's 16 kHz.
const SAMPLES_PER_MS: u64 = 16;

/// The built-in passages, one per long utterance in turn.
pub const PASSAGES: &[&[&str]] = &[
    // A question and its answer, said twice (a bad line), then a list.
    &[
        "Can you hear me at the back of the room?",
        "Yes, we can hear you at the back of the room.",
        "Can you hear me at the back of the room?",
        "Yes, we can hear you at the back of the room.",
        "Good, then let us begin the meeting.",
        "First, the budget for the spring.",
        "Second, the move to the new office.",
        "Third, the date of the summer party.",
        "Does anyone have a question before we start?",
        "Does anyone have a question before we start?",
        "Then we will start with the budget.",
        "The budget for the spring is the same as last year.",
        "The budget for the spring is the same as last year, and that is good news.",
        "Now let us talk about the new office.",
    ],
    // A counted list, read out and then read again in part.
    &[
        "Here is the shopping list for the weekend.",
        "First, a bag of green apples.",
        "Second, a loaf of brown bread.",
        "Third, a box of eggs.",
        "Fourth, a bottle of milk.",
        "Fifth, a jar of honey.",
        "Sixth, a bunch of bananas.",
        "Seventh, a block of cheese.",
        "Eighth, a bag of coffee.",
        "Let me read the list once more.",
        "First, a bag of green apples.",
        "Second, a loaf of brown bread.",
        "Third, a box of eggs.",
        "Fourth, a bottle of milk.",
        "That is all we need from the shop.",
    ],
    // Clauses that all begin alike.
    &[
        "It was a cold morning in the valley.",
        "It was a quiet morning on the hill.",
        "It was a long walk to the station.",
        "It was a short ride to the town.",
        "It was the best of weather and it was the worst of roads.",
        "We walked and we talked and we walked again.",
        "Every field was white and every tree was bare.",
        "Every window was dark and every door was closed.",
        "By the time we reached the station, the train had gone.",
        "By the time we reached the town, the shops had closed.",
        "So we sat by the fire and waited for the evening.",
        "It was a cold morning in the valley, and a warm night by the fire.",
    ],
    // A telephone call: greetings, the order, and its read-back.
    &[
        "Hello, is this the garden shop?",
        "Yes, this is the garden shop.",
        "Hello, is this the garden shop?",
        "Yes, this is the garden shop. Can you hear me now?",
        "I can hear you now.",
        "I would like to order some roses for my mother.",
        "Which colour would you like?",
        "Red roses, please. Red roses, not white ones.",
        "Red roses, not white ones. I have written that down.",
        "When would you like them to arrive?",
        "On Saturday morning, if you can.",
        "On Saturday morning. That is fine.",
        "Thank you very much, and have a good day.",
        "Thank you, and you too.",
    ],
    // Directions, with the step that matters said twice.
    &[
        "Let me tell you how to get to my house from the station.",
        "Walk out of the station and turn left.",
        "Walk past the bakery and the bank.",
        "At the church, turn left again.",
        "At the church, turn left again, not right.",
        "Go up the hill until you see a green gate.",
        "Go through the green gate and follow the path.",
        "The path goes round the pond and over a little bridge.",
        "My house is the white one with the blue door.",
        "The white one with the blue door.",
        "If you get lost, call me and I will come to meet you.",
        "If you get lost, call me.",
    ],
    // A note to self, with a refrain.
    &[
        "Note to self for tomorrow.",
        "Pick up the car from the garage before noon.",
        "Pay the electricity bill before the end of the week.",
        "Write back to the school about the trip.",
        "And do not forget to call the plumber.",
        "Buy a present for the wedding next month.",
        "Book the dentist for the children.",
        "And do not forget to call the plumber.",
        "Clean the windows if the weather is dry.",
        "Take the old books back to the library.",
        "Ask the neighbours to feed the cat while we are away.",
        "And once again, do not forget to call the plumber.",
    ],
    // A story, its exchange told twice.
    &[
        "Once upon a time there was a small fox who lived by a river.",
        "Every morning the fox went down to the river to drink.",
        "Every morning the fox saw an old heron standing in the water.",
        "Good morning, said the fox.",
        "Good morning, said the heron.",
        "What are you waiting for, asked the fox.",
        "I am waiting for the fish, said the heron.",
        "What are you waiting for, asked the fox again.",
        "I am waiting for the fish, said the heron again.",
        "The fox sat down by the river and waited too.",
        "They waited all morning and all afternoon.",
        "And when the evening came, the fish came too.",
    ],
];

/// One sentence of an assembled passage and the silence before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Index into the passage's sentences.
    pub sentence: usize,
    pub pause_ms: u64,
}

/// Which of a passage's `sentences` are said, in order and round again if
/// they run out, each after a pause drawn by `pause` (none before the
/// first): sentences are added while the passage is shorter than
/// `target_ms`, and one that would carry it past `max_ms` ends it. So it
/// never runs past `max_ms` (unless its first sentence alone does), and it
/// falls short of `target_ms` by less than one pause and sentence.
/// `len_ms(k)` says how long sentence `k` lasts (synthesizing it, say).
pub fn assemble<E>(
    sentences: usize,
    mut len_ms: impl FnMut(usize) -> Result<u64, E>,
    mut pause: impl FnMut() -> u64,
    target_ms: u64,
    max_ms: u64,
) -> Result<Vec<Part>, E> {
    let mut parts: Vec<Part> = Vec::new();
    let mut total = 0;
    while sentences > 0 && total < target_ms {
        let sentence = parts.len() % sentences;
        let pause_ms = if parts.is_empty() { 0 } else { pause() };
        let next = total + pause_ms + len_ms(sentence)?;
        if next > max_ms && !parts.is_empty() {
            break;
        }
        parts.push(Part { sentence, pause_ms });
        total = next;
    }
    Ok(parts)
}

/// At which of a pendant's first `slots` utterances (those that are not
/// recordings) pendant `pendant` of `pendants` speaks its `long` long ones.
/// The pendants take turns, evenly over the campaign, so that long
/// utterances rarely overlap: with 5 pendants, 1 each and 21 slots, they
/// come at 3, 7, 10, 14 and 17.
pub fn positions(pendant: usize, pendants: usize, long: usize, slots: usize) -> Vec<usize> {
    let turns = long * pendants + 1;
    let mut out: Vec<usize> = Vec::with_capacity(long);
    for k in 0..long {
        let even = (k * pendants + pendant + 1) * slots / turns;
        // Distinct and in order, with room left for the ones still to come.
        let floor = out.last().map_or(0, |p| p + 1);
        out.push(even.max(floor).min(slots - (long - k)));
    }
    out
}

/// A long utterance: the passage as 16 kHz mono PCM16, and what is said.
pub struct Spoken {
    pub pcm: Vec<i16>,
    pub text: String,
}

/// Speaks passage `passage` (an index into [`PASSAGES`], taken round) in
/// `voice`, for a length drawn from `secs` = [min, max] seconds.
pub fn speak(passage: usize, voice: &Voice, secs: [u64; 2], rng: &mut impl Rng) -> Result<Spoken> {
    let sentences = PASSAGES[passage % PASSAGES.len()];
    let mut pcm: Vec<Option<Vec<i16>>> = vec![None; sentences.len()];
    let target_ms = rng.gen_range(secs[0]..=secs[1]) * 1000;
    let parts = assemble(
        sentences.len(),
        |k| -> Result<u64> {
            if pcm[k].is_none() {
                let samples = speech::synthesize(sentences[k], voice)
                    .with_context(|| format!("cannot synthesize {:?}", sentences[k]))?;
                pcm[k] = Some(samples);
            }
            Ok(pcm[k].as_ref().map_or(0, |s| s.len() as u64) / SAMPLES_PER_MS)
        },
        || rng.gen_range(PAUSE_MS[0]..=PAUSE_MS[1]),
        target_ms,
        secs[1] * 1000,
    )?;
    let mut out = Spoken { pcm: Vec::new(), text: String::new() };
    for part in &parts {
        out.pcm.resize(out.pcm.len() + (part.pause_ms * SAMPLES_PER_MS) as usize, 0);
        out.pcm.extend_from_slice(pcm[part.sentence].as_deref().unwrap_or_default());
        if !out.text.is_empty() {
            out.text.push(' ');
        }
        out.text.push_str(sentences[part.sentence]);
    }
    Ok(out)
}

/// Writes 16 kHz mono PCM16 as a headerless little-endian `.raw` file, the
/// form the pendant simulator's `--say-wav` reads as is.
pub fn write_raw(path: &Path, pcm: &[i16]) -> Result<()> {
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ok(ms: u64) -> impl FnMut(usize) -> Result<u64, ()> {
        move |_| Ok(ms)
    }

    #[test]
    fn a_passage_reaches_its_length_and_never_passes_the_maximum() {
        // 4 s sentences, 1 s pauses: 4, 9, 14, ..., 34, 39 s.
        let parts = assemble(3, ok(4000), || 1000, 35_000, 50_000).unwrap();
        assert_eq!(parts.len(), 8, "39 s: the first length at or past 35 s");
        assert_eq!(parts[0].pause_ms, 0, "no pause before the first sentence");
        assert!(parts[1..].iter().all(|p| p.pause_ms == 1000));
        // Round again when the passage runs out.
        let order: Vec<usize> = parts.iter().map(|p| p.sentence).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0, 1]);
        // A sentence that would pass the maximum ends it short of the target.
        let parts = assemble(3, ok(4000), || 1000, 50_000, 42_000).unwrap();
        assert_eq!(parts.len(), 8, "39 s; 44 s would pass 42 s");
        // The first sentence is said even when it alone is too long.
        assert_eq!(assemble(3, ok(9000), || 1000, 5000, 4000).unwrap().len(), 1);
        assert!(assemble(0, ok(4000), || 1000, 5000, 9000).unwrap().is_empty());
        // A sentence that cannot be synthesized fails the passage.
        assert_eq!(assemble(3, |_| Err("espeak"), || 1000, 5000, 9000), Err("espeak"));
    }

    #[test]
    fn pendants_take_turns_with_long_utterances() {
        let at: Vec<Vec<usize>> = (0..5).map(|i| positions(i, 5, 1, 21)).collect();
        assert_eq!(at, [[3], [7], [10], [14], [17]]);
        // Several each: distinct, in order, within the slots.
        for (pendants, long, slots) in [(5, 2, 21), (1, 3, 3), (2, 4, 4), (3, 1, 1), (4, 2, 100)] {
            for i in 0..pendants {
                let p = positions(i, pendants, long, slots);
                assert_eq!(p.len(), long);
                assert!(p.windows(2).all(|w| w[0] < w[1]), "{p:?}");
                assert!(p.iter().all(|&s| s < slots), "{p:?}");
            }
        }
        assert!(positions(0, 5, 0, 21).is_empty());
    }

    #[test]
    fn passages_repeat_on_purpose_and_hold_no_numbers() {
        for passage in PASSAGES {
            let mut seen = std::collections::HashSet::new();
            let repeats = passage.iter().filter(|s| !seen.insert(**s)).count();
            let alike = passage.windows(2).filter(|w| w[0].split(' ').take(2).eq(w[1].split(' ').take(2))).count();
            assert!(repeats + alike > 0, "{passage:?} repeats nothing");
            assert!(passage.iter().all(|s| !s.chars().any(|c| c.is_ascii_digit())), "{passage:?}");
        }
    }

    #[test]
    fn a_long_utterance_is_espeak_sentences_joined_by_pauses() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let voice = Voice::default();
        let spoken = speak(0, &voice, [12, 16], &mut rng).unwrap();
        let secs = spoken.pcm.len() as f64 / 16_000.0;
        assert!((6.0..=16.0).contains(&secs), "{secs} s");
        assert!(spoken.text.starts_with(PASSAGES[0][0]), "{}", spoken.text);
        // The first sentence, then a pause of silence. (sox dithers as it
        // resamples, so two syntheses match in length, not sample for sample.)
        let first = speech::synthesize(PASSAGES[0][0], &voice).unwrap().len();
        assert!(spoken.pcm[..first].iter().any(|s| s.unsigned_abs() > 1000));
        let gap = &spoken.pcm[first..first + PAUSE_MS[0] as usize * 16];
        assert!(gap.iter().all(|&s| s == 0), "a pause follows the first sentence");
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("long.raw");
        write_raw(&raw, &spoken.pcm).unwrap();
        assert_eq!(speech::load_recording(&raw).unwrap(), spoken.pcm);
    }
}
