//! Word error rate, the yardstick for every STT backend and setting.
//!
//! Both texts are normalised before comparison so that the score measures
//! recognition, not formatting: lower case, and every character that is not
//! a letter or digit becomes a word break, except apostrophes, which are
//! dropped (`"Don't"` and `"dont"` compare equal). Numbers are not spelled
//! out, so references should avoid digits. The distance is Levenshtein over
//! words (substitutions, insertions and deletions all cost 1), divided by the
//! number of reference words.

/// Word error rate of `hypothesis` against `reference`, in `[0, ∞)` (insertions
/// can push it above 1). An empty reference scores 0 against an empty
/// hypothesis and 1 against anything else.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f32 {
    let reference = normalize(reference);
    let hypothesis = normalize(hypothesis);
    if reference.is_empty() {
        return if hypothesis.is_empty() { 0.0 } else { 1.0 };
    }
    edit_distance(&reference, &hypothesis) as f32 / reference.len() as f32
}

/// Lower-cased words with punctuation removed (also the sentence check's).
pub(crate) fn normalize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .chars()
        .filter(|c| !matches!(c, '\'' | '’'))
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Levenshtein distance over words, with one rolling row.
fn edit_distance(a: &[String], b: &[String]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, word_a) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, word_b) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(word_a != word_b);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::word_error_rate;

    #[test]
    fn identical_after_normalisation_is_zero() {
        assert_eq!(word_error_rate("Hello, world!", "hello world"), 0.0);
        assert_eq!(word_error_rate("Don't stop.", "dont   STOP"), 0.0);
        assert_eq!(word_error_rate("well-known", "well known"), 0.0);
    }

    #[test]
    fn counts_substitutions_insertions_and_deletions() {
        // One substitution in four words.
        assert_eq!(word_error_rate("the cat sat down", "the bat sat down"), 0.25);
        // One deletion.
        assert_eq!(word_error_rate("the cat sat down", "the cat down"), 0.25);
        // Two insertions.
        assert_eq!(word_error_rate("the cat", "oh the cat sat"), 1.0);
        // Everything wrong, and longer: above 1.
        assert_eq!(word_error_rate("yes", "no no"), 2.0);
    }

    #[test]
    fn empty_texts() {
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate("...", "hello"), 1.0);
        assert_eq!(word_error_rate("hello there", ""), 1.0);
    }
}
