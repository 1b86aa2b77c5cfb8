//! Fitting text into a notification: cuts counted in characters, marked with an ellipsis.
//!
//! Limits are in Unicode scalar values (`char`s), not bytes, so a cut never
//! splits a character and a limit means roughly the same on-screen length in
//! any script. The ellipsis counts towards the limit: the result of a cut to
//! `max` is never longer than `max`.

/// The mark that says "there was more". One character, so it costs one of the budget.
pub(crate) const ELLIPSIS: char = '\u{2026}';

/// Characters that look wrong right before an ellipsis ("milk, eggs,…").
fn dangling(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | ';' | ':' | '-' | '\u{2013}' | '\u{2014}')
}

/// Cuts `text` to at most `max` characters, ending with an ellipsis when cut.
pub(crate) fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push(ELLIPSIS);
    cut
}

/// Like [`truncate_chars`], but prefers to cut between words.
///
/// The cut moves back to the last whitespace as long as that keeps at least
/// half the budget; a single enormous "word" (a URL, say) is cut mid-word
/// rather than dropped.
pub(crate) fn truncate_words(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let budget = max - 1;
    let mut end = budget;
    // `chars.len() > max > budget`, so `chars[budget]` exists: it is the first
    // character dropped. If it is whitespace, the cut already falls between words.
    if !chars[budget].is_whitespace()
        && let Some(space) = chars[..budget].iter().rposition(|c| c.is_whitespace())
        && space >= budget / 2
    {
        end = space;
    }
    let mut cut: String = chars[..end].iter().collect();
    cut.truncate(cut.trim_end_matches(dangling).len());
    cut.push(ELLIPSIS);
    cut
}

/// Trims and turns every run of whitespace (newlines included) into one space:
/// a lock screen shows two or three lines, and blank ones waste them.
pub(crate) fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_text_is_untouched() {
        assert_eq!(truncate_chars("hello", 5), "hello");
        assert_eq!(truncate_words("hello there", 11), "hello there");
    }

    #[test]
    fn chars_cut_counts_the_ellipsis() {
        assert_eq!(truncate_chars("abcdef", 4), "abc\u{2026}");
        assert_eq!(truncate_chars("ab   cdef", 4), "ab\u{2026}");
        assert_eq!(truncate_chars("abc", 0), "");
        assert_eq!(truncate_chars("\u{e9}\u{e9}\u{e9}\u{e9}", 3), "\u{e9}\u{e9}\u{2026}");
    }

    #[test]
    fn words_cut_between_words() {
        assert_eq!(truncate_words("the quick brown fox", 12), "the quick\u{2026}");
        // The first dropped character is a space: the cut is already clean.
        assert_eq!(truncate_words("the quick brown fox", 10), "the quick\u{2026}");
        assert_eq!(truncate_words("milk, eggs, bread", 12), "milk, eggs\u{2026}");
    }

    #[test]
    fn words_cut_mid_word_when_the_word_is_huge() {
        let url = "see https://example.com/a/very/long/path/indeed";
        let cut = truncate_words(url, 20);
        assert_eq!(cut, "see https://example\u{2026}");
    }

    #[test]
    fn whitespace_collapses() {
        assert_eq!(collapse_whitespace("  one\n\ntwo \t three  "), "one two three");
    }

    proptest! {
        #[test]
        fn cuts_fit_and_keep_a_prefix(text in "\\PC{0,300}", max in 0usize..200) {
            for cut in [truncate_chars(&text, max), truncate_words(&text, max)] {
                prop_assert!(cut.chars().count() <= max);
                let kept = cut.strip_suffix(ELLIPSIS).unwrap_or(&cut);
                prop_assert!(text.starts_with(kept));
                if text.chars().count() <= max {
                    prop_assert_eq!(&cut, &text);
                }
            }
        }
    }
}
