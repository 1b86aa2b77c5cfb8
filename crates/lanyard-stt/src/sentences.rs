//! Sentence coverage: did a transcript keep every sentence that was said,
//! and say none more often than it was said?
//!
//! Word error rate averages over a passage, so a long transcript can score
//! well while it silently skips a whole sentence (a decoder that seeks too
//! far) or writes one twice (a window decoded again, a prompt repeated).
//! Those are the failures of long-form decoding that a wearer notices, so
//! they get their own pure check, used by the long-speech benchmark and
//! tests.
//!
//! How it decides:
//! - Both texts are normalised as [`crate::word_error_rate`] does (lower
//!   case, punctuation is a word break, apostrophes dropped).
//! - The reference words (every sentence, in spoken order, repeats
//!   included) are aligned with the hypothesis words by the same word-level
//!   Levenshtein distance as the WER, with a traceback that keeps equal
//!   words on the diagonal. Each hypothesis word is credited to at most one
//!   reference word, so a sentence said twice needs two copies in the
//!   hypothesis to be covered twice.
//! - A sentence is **dropped** when more than half of its words are not
//!   matched by the alignment.
//! - The hypothesis words the alignment left unmatched are searched for
//!   extra copies of each distinct reference sentence: a window as long as
//!   the sentence counts as a copy when more than half of the sentence's
//!   words appear in it in order. A sentence with an extra copy is
//!   **doubled**: it was heard more often than it was said. A one-word
//!   sentence ("Mailbox?") is never doubled: a stray use of a common word
//!   cannot be told from a copy.
//!
//! Numbers are not spelled out, so references should avoid digits. A
//! sentence that normalises to no words is never dropped nor doubled.

use crate::wer::normalize;

/// What [`sentence_coverage`] found. Both lists empty means every sentence
/// was heard as often as it was said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Reference sentences with more than half of their words missing from
    /// the hypothesis, in spoken order. A sentence said twice and heard once
    /// appears here once.
    pub dropped: Vec<Dropped>,
    /// Distinct reference sentences heard more often than they were said, in
    /// order of first saying.
    pub doubled: Vec<Doubled>,
}

impl Coverage {
    /// True when no sentence was dropped and none was doubled.
    pub fn is_complete(&self) -> bool {
        self.dropped.is_empty() && self.doubled.is_empty()
    }
}

/// A reference sentence the hypothesis lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Position of the sentence in the reference list.
    pub index: usize,
    pub sentence: String,
    /// Normalised words in the sentence.
    pub words: usize,
    /// Of those, how many the alignment matched in the hypothesis.
    pub matched: usize,
}

/// A reference sentence the hypothesis holds more often than it was said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doubled {
    /// The sentence as first given in the reference list.
    pub sentence: String,
    /// How many times the reference says it.
    pub said: usize,
    /// How many copies the hypothesis holds: the saids the alignment covered
    /// plus the extra copies found among the unmatched words.
    pub heard: usize,
}

/// Checks that `hypothesis` holds each of `reference_sentences` (in spoken
/// order, a sentence said twice listed twice) as often as it was said: see
/// the module doc for the rules.
pub fn sentence_coverage<S: AsRef<str>>(reference_sentences: &[S], hypothesis: &str) -> Coverage {
    let sentences: Vec<Vec<String>> = reference_sentences.iter().map(|s| normalize(s.as_ref())).collect();
    // The reference as one word sequence, each word tagged with its sentence.
    let reference: Vec<&str> = sentences.iter().flatten().map(String::as_str).collect();
    let owner: Vec<usize> = sentences.iter().enumerate().flat_map(|(i, s)| std::iter::repeat_n(i, s.len())).collect();
    let hypothesis = normalize(hypothesis);
    let hypothesis: Vec<&str> = hypothesis.iter().map(String::as_str).collect();

    let pairs = align(&reference, &hypothesis);
    let mut matched = vec![0usize; sentences.len()];
    let mut hypothesis_used = vec![false; hypothesis.len()];
    for &(r, h) in &pairs {
        matched[owner[r]] += 1;
        hypothesis_used[h] = true;
    }

    let dropped: Vec<Dropped> = sentences
        .iter()
        .enumerate()
        .filter(|(i, words)| !words.is_empty() && 2 * (words.len() - matched[*i]) > words.len())
        .map(|(index, words)| Dropped {
            index,
            sentence: reference_sentences[index].as_ref().to_owned(),
            words: words.len(),
            matched: matched[index],
        })
        .collect();

    let runs = unmatched_runs(&hypothesis, &hypothesis_used);
    let mut doubled = Vec::new();
    for (first, words) in sentences.iter().enumerate() {
        if words.len() < 2 || sentences[..first].contains(words) {
            continue;
        }
        let extra: usize = runs.iter().map(|run| copies_in(words, run)).sum();
        if extra == 0 {
            continue;
        }
        let said = sentences.iter().filter(|s| *s == words).count();
        let lost = dropped.iter().filter(|d| sentences[d.index] == *words).count();
        doubled.push(Doubled {
            sentence: reference_sentences[first].as_ref().to_owned(),
            said,
            heard: said - lost + extra,
        });
    }
    Coverage { dropped, doubled }
}

/// The `(reference, hypothesis)` index pairs of equal words on a minimal
/// word-level Levenshtein alignment, in order.
///
/// The full cost matrix is kept for the traceback: a 3-minute passage is
/// about 500 words a side, a quarter of a million cells.
fn align(reference: &[&str], hypothesis: &[&str]) -> Vec<(usize, usize)> {
    let (n, m) = (reference.len(), hypothesis.len());
    let width = m + 1;
    let mut cost = vec![0u32; (n + 1) * width];
    for (j, c) in cost[..width].iter_mut().enumerate() {
        *c = j as u32;
    }
    for i in 1..=n {
        cost[i * width] = i as u32;
        for j in 1..=m {
            let diagonal = cost[(i - 1) * width + j - 1] + u32::from(reference[i - 1] != hypothesis[j - 1]);
            let deletion = cost[(i - 1) * width + j] + 1;
            let insertion = cost[i * width + j - 1] + 1;
            cost[i * width + j] = diagonal.min(deletion).min(insertion);
        }
    }
    // Back from the end, preferring a match, then a deletion of a reference
    // word, then an insertion, then a substitution: a lost word stays
    // unmatched rather than being paired with a different one.
    let (mut i, mut j) = (n, m);
    let mut pairs = Vec::new();
    while i > 0 && j > 0 {
        let here = cost[i * width + j];
        if reference[i - 1] == hypothesis[j - 1] && here == cost[(i - 1) * width + j - 1] {
            pairs.push((i - 1, j - 1));
            (i, j) = (i - 1, j - 1);
        } else if here == cost[(i - 1) * width + j] + 1 {
            i -= 1;
        } else if here == cost[i * width + j - 1] + 1 {
            j -= 1;
        } else {
            (i, j) = (i - 1, j - 1);
        }
    }
    pairs.reverse();
    pairs
}

/// Maximal runs of hypothesis words that the alignment left unmatched.
fn unmatched_runs<'a>(hypothesis: &[&'a str], used: &[bool]) -> Vec<Vec<&'a str>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for (word, &used) in hypothesis.iter().zip(used) {
        if used {
            if !run.is_empty() {
                runs.push(std::mem::take(&mut run));
            }
        } else {
            run.push(*word);
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// Non-overlapping copies of `sentence` in `run`, scanning left to right: a
/// window as long as the sentence (or the rest of the run) is a copy when it
/// holds more than half of the sentence's words in order.
fn copies_in(sentence: &[String], run: &[&str]) -> usize {
    let mut copies = 0;
    let mut start = 0;
    while start < run.len() {
        let end = (start + sentence.len()).min(run.len());
        if 2 * common_subsequence(sentence, &run[start..end]) > sentence.len() {
            copies += 1;
            start = end;
        } else {
            start += 1;
        }
    }
    copies
}

/// Length of the longest common subsequence of two word lists.
fn common_subsequence(a: &[String], b: &[&str]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for word_a in a {
        let mut diagonal = 0;
        for (j, word_b) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if word_a == word_b { diagonal + 1 } else { above.max(row[j]) };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Coverage, Doubled, Dropped, sentence_coverage};

    fn owned(sentences: &[&str]) -> Vec<String> {
        sentences.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn identical_text_is_complete() {
        let reference = owned(&["The cat sat down.", "Then it slept."]);
        assert!(sentence_coverage(&reference, "The cat sat down. Then it slept.").is_complete());
        // Normalised as the WER is: case, punctuation and apostrophes.
        assert!(sentence_coverage(&["Don't stop."], "dont STOP").is_complete());
    }

    #[test]
    fn a_lost_sentence_is_dropped() {
        let reference = owned(&["The cat sat down.", "Then it slept.", "The dog barked twice."]);
        let coverage = sentence_coverage(&reference, "The cat sat down. The dog barked twice.");
        assert_eq!(
            coverage,
            Coverage {
                dropped: vec![Dropped { index: 1, sentence: "Then it slept.".into(), words: 3, matched: 0 }],
                doubled: vec![],
            }
        );
    }

    #[test]
    fn half_the_words_is_not_dropped_but_more_than_half_is() {
        let reference = owned(&["one two three four"]);
        assert!(sentence_coverage(&reference, "one two").dropped.is_empty());
        assert!(sentence_coverage(&reference, "one nine two eight").dropped.is_empty());
        let dropped = sentence_coverage(&reference, "four").dropped;
        assert_eq!(dropped.len(), 1);
        assert_eq!((dropped[0].words, dropped[0].matched), (4, 1));
    }

    #[test]
    fn a_sentence_written_twice_is_doubled() {
        let reference = owned(&["The cat sat down.", "Then it slept."]);
        let coverage = sentence_coverage(&reference, "The cat sat down. The cat sat down. Then it slept.");
        assert!(coverage.dropped.is_empty());
        assert_eq!(coverage.doubled, vec![Doubled { sentence: "The cat sat down.".into(), said: 1, heard: 2 }]);
    }

    #[test]
    fn a_one_word_sentence_is_never_doubled() {
        let reference = owned(&["Login incorrect.", "Mailbox?", "The mailbox is full."]);
        let coverage = sentence_coverage(&reference, "Login incorrect. Mailbox? The mailbox is full. Mailbox?");
        assert!(coverage.is_complete(), "{coverage:?}");
        // It can still be dropped.
        let coverage = sentence_coverage(&reference, "Login incorrect. The box is full.");
        assert_eq!(coverage.dropped.iter().map(|d| d.index).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_near_copy_counts_as_a_copy() {
        let reference = owned(&["Please enter your password now.", "Thank you."]);
        let coverage =
            sentence_coverage(&reference, "Please enter your password now. Please enter a password. Thank you.");
        assert_eq!(coverage.doubled.len(), 1);
        assert_eq!(coverage.doubled[0].heard, 2);
    }

    #[test]
    fn said_twice_and_heard_twice_is_complete() {
        let reference = owned(&["Where is the station?", "It is on the left.", "Where is the station?"]);
        let hypothesis = "Where is the station? It is on the left. Where is the station?";
        assert!(sentence_coverage(&reference, hypothesis).is_complete());
        // Adjacent repeats too.
        let reference = owned(&["Count to three.", "Count to three."]);
        assert!(sentence_coverage(&reference, "Count to three. Count to three.").is_complete());
    }

    #[test]
    fn said_twice_and_heard_once_drops_one() {
        let reference = owned(&["Where is the station?", "It is on the left.", "Where is the station?"]);
        let coverage = sentence_coverage(&reference, "Where is the station? It is on the left.");
        assert_eq!(coverage.dropped.len(), 1);
        assert_eq!(coverage.dropped[0].sentence, "Where is the station?");
        assert!(coverage.doubled.is_empty());
    }

    #[test]
    fn said_twice_and_heard_three_times_is_doubled() {
        let reference = owned(&["Count to three.", "Count to three."]);
        let coverage = sentence_coverage(&reference, "Count to three. Count to three. Count to three.");
        assert!(coverage.dropped.is_empty());
        assert_eq!(coverage.doubled, vec![Doubled { sentence: "Count to three.".into(), said: 2, heard: 3 }]);
    }

    #[test]
    fn a_misheard_word_is_neither_dropped_nor_doubled() {
        let reference = owned(&["Turn left at the bridge.", "Turn right at the bank."]);
        let coverage = sentence_coverage(&reference, "Turn left at the ridge. Turn right at the tank.");
        assert!(coverage.is_complete(), "{coverage:?}");
    }

    #[test]
    fn empty_texts() {
        let none: [&str; 0] = [];
        assert!(sentence_coverage(&none, "").is_complete());
        // Extra words that are no reference sentence are the WER's business.
        assert!(sentence_coverage(&none, "hello there").is_complete());
        assert!(sentence_coverage(&["..."], "").is_complete());
        let coverage = sentence_coverage(&["Hello there.", "Bye."], "");
        assert_eq!(coverage.dropped.iter().map(|d| d.index).collect::<Vec<_>>(), [0, 1]);
    }

    /// A pool of sentences of two words or more, each with words of its own
    /// (`w{k}x{j}`), and a reference that says them in a random order,
    /// repeats included.
    fn pool_and_order() -> impl Strategy<Value = (Vec<String>, Vec<usize>)> {
        (prop::collection::vec(2usize..8, 1..6)).prop_flat_map(|lengths| {
            let pool: Vec<String> = lengths
                .iter()
                .enumerate()
                .map(|(k, &len)| (0..len).map(|j| format!("w{k}x{j}")).collect::<Vec<_>>().join(" ") + ".")
                .collect();
            let n = pool.len();
            (Just(pool), prop::collection::vec(0..n, 1..12))
        })
    }

    fn say(pool: &[String], order: &[usize]) -> Vec<String> {
        order.iter().map(|&k| pool[k].clone()).collect()
    }

    proptest! {
        #[test]
        fn the_reference_itself_is_complete(words in prop::collection::vec("[a-e]{1,3}", 0..40), cuts in prop::collection::vec(1usize..6, 1..20)) {
            // Sentences cut from a small vocabulary: shared words and repeats.
            let mut reference = Vec::new();
            let mut rest = &words[..];
            for cut in cuts {
                let (sentence, tail) = rest.split_at(cut.min(rest.len()));
                reference.push(sentence.join(" "));
                rest = tail;
            }
            let coverage = sentence_coverage(&reference, &reference.join(". "));
            prop_assert!(coverage.is_complete(), "{:?}", coverage);
        }

        #[test]
        fn a_deleted_sentence_is_dropped((pool, order) in pool_and_order(), pick in any::<prop::sample::Index>()) {
            let reference = say(&pool, &order);
            let gone = pick.index(reference.len());
            let mut heard = reference.clone();
            heard.remove(gone);
            let coverage = sentence_coverage(&reference, &heard.join(" "));
            prop_assert_eq!(coverage.dropped.len(), 1, "{:?}", coverage);
            prop_assert_eq!(&coverage.dropped[0].sentence, &reference[gone]);
            prop_assert!(coverage.doubled.is_empty(), "{:?}", coverage);
        }

        #[test]
        fn a_duplicated_sentence_is_doubled((pool, order) in pool_and_order(), pick in any::<prop::sample::Index>(), later in any::<prop::sample::Index>()) {
            let reference = say(&pool, &order);
            let copied = pick.index(reference.len());
            let mut heard = reference.clone();
            // The copy goes anywhere after the original.
            let at = copied + 1 + later.index(reference.len() - copied);
            heard.insert(at, reference[copied].clone());
            let coverage = sentence_coverage(&reference, &heard.join(" "));
            prop_assert!(coverage.dropped.is_empty(), "{:?}", coverage);
            let said = reference.iter().filter(|s| **s == reference[copied]).count();
            prop_assert_eq!(coverage.doubled, vec![Doubled { sentence: reference[copied].clone(), said, heard: said + 1 }]);
        }

        #[test]
        fn repeats_heard_as_said_are_complete((pool, order) in pool_and_order()) {
            // Every pool sentence said at least twice, some adjacent.
            let mut doubled_order = order.clone();
            doubled_order.extend(0..pool.len());
            doubled_order.extend(order.iter().rev());
            let reference = say(&pool, &doubled_order);
            let coverage = sentence_coverage(&reference, &reference.join(" "));
            prop_assert!(coverage.is_complete(), "{:?}", coverage);
        }
    }
}
