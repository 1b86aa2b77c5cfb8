//! The built-in responder: a short acknowledgement quoting the transcript.
//!
//! It needs no network and cannot fail, which is why the remote responders
//! fall back to it (see [`crate::Fallback::Builtin`]).

use async_trait::async_trait;
use serde_json::Map;

use crate::text::truncate_chars;
use crate::{Reply, ReplyRequest, RespondError, Responder};

/// The built-in responder. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Builtin;

/// The acknowledgement's title: the user wants to know their words arrived.
pub const TITLE: &str = "Got it";

/// The longest quote, in characters. Lock screens show about two lines, and
/// the quote's frame (`You said: “…”`) takes the rest.
pub const MAX_QUOTE_CHARS: usize = 120;

/// What the user sees when speech-to-text heard nothing.
pub const NOTHING_HEARD: &str = "I didn't catch anything that time.";

/// The built-in acknowledgement for `transcript`, with empty data.
pub fn acknowledge(transcript: &str) -> Reply {
    let text = transcript.trim();
    let body = if text.is_empty() {
        NOTHING_HEARD.to_string()
    } else {
        format!("You said: \u{201c}{}\u{201d}", truncate_chars(text, MAX_QUOTE_CHARS))
    };
    Reply { title: TITLE.to_string(), body, data: Map::new() }
}

/// The acknowledgement a failed remote responder falls back to, its data
/// marked `"fallback": marker` so the app can tell it from a real answer.
pub(crate) fn fallback(transcript: &str, marker: &str) -> Reply {
    let mut reply = acknowledge(transcript);
    reply.data.insert(crate::FALLBACK_KEY.to_string(), serde_json::Value::String(marker.to_string()));
    reply
}

#[async_trait]
impl Responder for Builtin {
    async fn respond(&self, req: &ReplyRequest) -> Result<Reply, RespondError> {
        Ok(acknowledge(&req.transcript))
    }

    fn name(&self) -> &'static str {
        "builtin"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_truncates() {
        assert_eq!(acknowledge(" hello ").body, "You said: \u{201c}hello\u{201d}");
        let long = "word ".repeat(100);
        assert!(acknowledge(&long).body.chars().count() <= MAX_QUOTE_CHARS + 14);
        assert!(acknowledge(&long).body.ends_with("\u{2026}\u{201d}"));
        assert!(acknowledge("").body.contains("didn't catch"));
        assert!(acknowledge(" \n ").body.contains("didn't catch"));
    }

    #[test]
    fn title_and_data() {
        let reply = acknowledge("hi");
        assert_eq!(reply.title, "Got it");
        assert!(reply.data.is_empty());
    }
}
