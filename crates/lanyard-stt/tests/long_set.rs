//! The long-speech reference set (`benches/long_set/`): its manifest keeps
//! the set's rules, and the whole set builds to passages of 30 s to 3 min,
//! at least 20 minutes in all.
//!
//! Building reads the recordings that scripts/setup fetches and runs
//! espeak-ng and sox; a cold build takes about a minute on 2 cores, later
//! runs read `~/.cache/lanyard/long-set`.

#[path = "../benches/long_set/mod.rs"]
mod long_set;

mod common;

use std::collections::HashSet;

use long_set::{Kind, Passage, manifest, parse_prompt_list, passages, split_sentences};

/// Shortest and longest passage, in seconds.
const PASSAGE_SECS: std::ops::RangeInclusive<f64> = 30.0..=180.0;

/// The set must hold at least this much audio.
const MIN_TOTAL_SECS: f64 = 20.0 * 60.0;

#[test]
fn sentences_are_cut_after_end_punctuation() {
    assert_eq!(
        split_sentences("Login incorrect.  Please enter your agent number."),
        ["Login incorrect.", "Please enter your agent number."]
    );
    assert_eq!(
        split_sentences("At the tone, the time will be exactly..."),
        ["At the tone, the time will be exactly..."]
    );
    assert_eq!(split_sentences("...to leave the conference."), ["...to leave the conference."]);
    assert_eq!(split_sentences("Is it? Yes! no punctuation"), ["Is it?", "Yes!", "no punctuation"]);
    // A leading ellipsis is a sentence of no words, and dropped.
    assert_eq!(split_sentences("... for ..."), ["for ..."]);
    assert!(split_sentences("...").is_empty());
}

#[test]
fn prompt_lists_skip_comments() {
    let list = parse_prompt_list("; a comment\nagent-pass: Please enter your password.\n\nfollowme/sorry: I'm sorry\n");
    assert_eq!(list.len(), 2);
    assert_eq!(list["followme/sorry"], "I'm sorry");
}

#[test]
fn manifest_follows_the_rules() {
    let manifest = manifest();
    let mut names = HashSet::new();
    for passage in &manifest.passage {
        assert!(names.insert(passage.name.as_str()), "two passages named {:?}", passage.name);
        assert!(!passage.piece.is_empty(), "{}: no pieces", passage.name);
        let between = &passage.piece[..passage.piece.len() - 1];
        if passage.kind == Kind::Monologue {
            for piece in between {
                assert!((0.3..=1.5).contains(&piece.pause), "{}: a monologue pauses 0.3 to 1.5 s", passage.name);
            }
        }
        for piece in &passage.piece {
            let text = piece.say.iter().chain(piece.sentences.iter().flatten());
            for t in text {
                assert!(!t.chars().any(|c| c.is_ascii_digit()), "{}: spell numbers out: {t:?}", passage.name);
            }
            if passage.kind != Kind::Real {
                assert!(piece.say.is_some(), "{}: only `real` passages hold recordings", passage.name);
            } else {
                assert!(piece.say.is_none(), "{}: a `real` passage holds recordings only", passage.name);
            }
        }
    }
}

#[test]
fn the_whole_set_builds_to_twenty_minutes_of_long_passages() {
    let set = passages();
    let mut total = 0.0;
    let mut real = 0.0;
    common::report(&format!("{:<20} {:<11} {:>7} {:>9} {:>6}", "passage", "kind", "secs", "sentences", "words"));
    for p in &set {
        let words = p.transcript().split_whitespace().count();
        common::report(&format!(
            "{:<20} {:<11} {:>7.1} {:>9} {:>6}",
            p.name,
            format!("{:?}", p.kind).to_lowercase(),
            p.secs(),
            p.sentences.len(),
            words
        ));
        total += p.secs();
        if p.kind == Kind::Real {
            real += p.secs();
        }
        check_passage(p);
    }
    common::report(&format!(
        "{} passages, {:.1} min in all, {:.1} min of it real speech",
        set.len(),
        total / 60.0,
        real / 60.0
    ));
    assert!(total >= MIN_TOTAL_SECS, "the set holds {:.1} min, under {} min", total / 60.0, MIN_TOTAL_SECS / 60.0);
}

fn check_passage(p: &Passage) {
    assert!(PASSAGE_SECS.contains(&p.secs()), "{} lasts {:.1} s, outside {PASSAGE_SECS:?}", p.name, p.secs());
    assert!(!p.sentences.is_empty(), "{} says nothing", p.name);
    // Neither silent nor clipped throughout: the recordings were found and read.
    let peak = p.pcm16k.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!((0.05..=1.0).contains(&peak), "{}: peak {peak}", p.name);
}
