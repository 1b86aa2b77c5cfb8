//! Turning a transcript into the reply the user sees.

/// A reply: the notification's title and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub title: String,
    pub body: String,
}

/// Processing behind one trait; each deployment picks one.
pub trait Responder: Send + Sync + 'static {
    fn reply(&self, transcript: &str) -> Reply;
}

/// The built-in responder: a short acknowledgement quoting the transcript.
pub struct Acknowledge;

/// Notification bodies beyond this are cut: lock screens show about two lines.
const MAX_QUOTE_CHARS: usize = 120;

impl Responder for Acknowledge {
    fn reply(&self, transcript: &str) -> Reply {
        let text = transcript.trim();
        let body = if text.is_empty() {
            "I didn't catch anything that time.".to_string()
        } else if text.chars().count() > MAX_QUOTE_CHARS {
            let cut: String = text.chars().take(MAX_QUOTE_CHARS - 1).collect();
            format!("You said: \u{201c}{cut}\u{2026}\u{201d}")
        } else {
            format!("You said: \u{201c}{text}\u{201d}")
        };
        Reply { title: "Got it".to_string(), body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_truncates() {
        assert_eq!(Acknowledge.reply(" hello ").body, "You said: \u{201c}hello\u{201d}");
        let long = "word ".repeat(100);
        assert!(Acknowledge.reply(&long).body.chars().count() <= MAX_QUOTE_CHARS + 14);
        assert!(Acknowledge.reply("").body.contains("didn't catch"));
    }
}
