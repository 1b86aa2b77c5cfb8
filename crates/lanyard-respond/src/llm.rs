//! The LLM responder: ask any OpenAI-compatible chat-completions endpoint.
//!
//! Works with OpenAI, and with the many servers that copy its API (vLLM,
//! llama.cpp's server, Ollama's `/v1`, LiteLLM, OpenRouter, ...). For each
//! utterance it sends
//!
//! ```text
//! POST {base_url}/chat/completions
//! Authorization: Bearer {api_key}        (only when a key is configured)
//! Content-Type: application/json
//!
//! {"model": "{model}",
//!  "messages": [{"role": "system", "content": "{system_prompt}\n\n{brevity note}"},
//!               {"role": "user",   "content": "{transcript}"}],
//!  "max_tokens": 120, "temperature": 0.3, "stream": false}
//! ```
//!
//! and shows `choices[0].message.content` as the notification body, under the
//! configured title.
//!
//! # Fitting a notification
//!
//! A lock screen shows about two lines, so the answer is kept short twice:
//!
//! 1. The system prompt always ends with a note asking for one or two short
//!    plain-text sentences under `max_body_chars` characters, whether the
//!    prompt is the default or the operator's own.
//! 2. Models do not count characters reliably, so the answer's whitespace is
//!    collapsed and it is cut to `max_body_chars` (default 178) at a word
//!    boundary, ending in an ellipsis.
//!
//! `max_tokens` bounds cost and latency, not length on screen.
//!
//! # Failures
//!
//! The same per-attempt timeout, retries and [`Fallback`] as the webhook (see
//! the crate docs): 429 and 5xx are retried; 401 (bad key), 404 (unknown
//! model or wrong `base_url`) and an answer without text are not. A fallback
//! reply is marked `"fallback": "llm_failed"`. An empty transcript is answered
//! with the built-in acknowledgement without calling the model: there is
//! nothing to ask, and it costs nothing.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Map;

use crate::config::{Fallback, LlmConfig, ResolvedLlm, Secret, process_env};
use crate::retry::RetryPolicy;
use crate::text::{collapse_whitespace, truncate_words};
use crate::{ConfigError, Reply, ReplyRequest, RespondError, Responder, builtin};

/// The value of `data.fallback` on a reply made because the LLM failed.
pub const FALLBACK_MARKER: &str = "llm_failed";

/// The responder that asks an LLM. See the module docs.
#[derive(Debug)]
pub struct Llm {
    /// One client per responder, so the TLS connection to the API is reused.
    client: reqwest::Client,
    endpoint: reqwest::Url,
    api_key: Option<Secret>,
    model: String,
    /// The whole system message: the configured prompt and the brevity note.
    system: String,
    max_tokens: u32,
    temperature: f32,
    title: String,
    max_body_chars: usize,
    retry: RetryPolicy,
    fallback: Fallback,
}

/// The request body of `POST /chat/completions`, in the fields every
/// compatible server accepts.
#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [Message<'a>; 2],
    max_tokens: u32,
    temperature: f32,
    /// Explicit, because a streamed answer is a different format.
    stream: bool,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

/// The part of a chat-completions answer we read.
#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Deserialize)]
struct AnswerMessage {
    /// Null when the model answered with a tool call or a refusal object.
    content: Option<String>,
}

impl Llm {
    /// Checks `cfg` (reading `api_key_env` from the environment) and builds the responder.
    pub fn new(cfg: &LlmConfig) -> Result<Self, ConfigError> {
        let r: ResolvedLlm = cfg.resolve(&process_env)?;
        Ok(Llm {
            client: crate::http::client(r.retry.timeout)?,
            system: system_message(&r.system_prompt, r.max_body_chars),
            endpoint: r.endpoint,
            api_key: r.api_key,
            model: r.model,
            max_tokens: r.max_tokens,
            temperature: r.temperature,
            title: r.title,
            max_body_chars: r.max_body_chars,
            retry: r.retry,
            fallback: r.fallback,
        })
    }

    /// Asks the model, with retries, without the fallback.
    async fn ask(&self, req: &ReplyRequest, transcript: &str) -> Result<Reply, RespondError> {
        let body = ChatRequest {
            model: &self.model,
            messages: [
                Message { role: "system", content: &self.system },
                Message { role: "user", content: transcript },
            ],
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            stream: false,
        };
        let key = self.api_key.as_ref().map(Secret::expose);
        self.retry
            .run("llm", req.utterance_id, |_attempt| {
                let mut request = self.client.post(self.endpoint.clone()).json(&body);
                if let Some(key) = key {
                    request = request.bearer_auth(key);
                }
                async move { self.parse(&crate::http::send(request, key).await?) }
            })
            .await
    }

    /// Turns a chat-completions answer into a reply that fits a notification.
    fn parse(&self, bytes: &[u8]) -> Result<Reply, RespondError> {
        let answer: ChatResponse = serde_json::from_slice(bytes).map_err(|e| {
            RespondError::InvalidAnswer(format!(
                "expected a chat completion {{\"choices\":[{{\"message\":{{\"content\"}}}}]}}: {e}"
            ))
        })?;
        let content = answer.choices.into_iter().next().and_then(|c| c.message.content).unwrap_or_default();
        let text = collapse_whitespace(&content);
        if text.is_empty() {
            return Err(RespondError::InvalidAnswer("the model's answer has no text".into()));
        }
        Ok(Reply { title: self.title.clone(), body: truncate_words(&text, self.max_body_chars), data: Map::new() })
    }
}

#[async_trait]
impl Responder for Llm {
    async fn respond(&self, req: &ReplyRequest) -> Result<Reply, RespondError> {
        let transcript = req.transcript.trim();
        if transcript.is_empty() {
            return Ok(builtin::acknowledge(transcript));
        }
        match self.ask(req, transcript).await {
            Ok(reply) => Ok(reply),
            Err(error) => match self.fallback {
                Fallback::Fail => Err(error),
                Fallback::Builtin => {
                    tracing::warn!(utterance = %req.utterance_id, %error, "LLM failed; answering with the built-in acknowledgement");
                    Ok(builtin::fallback(&req.transcript, FALLBACK_MARKER))
                }
            },
        }
    }

    fn name(&self) -> &'static str {
        "llm"
    }
}

/// The system message: the prompt, then the request for brevity.
fn system_message(prompt: &str, max_body_chars: usize) -> String {
    let note = format!(
        "Your reply is shown as a phone notification, so answer in one or two short sentences of plain text \
         (no markdown, no lists), under {max_body_chars} characters in all."
    );
    let prompt = prompt.trim();
    if prompt.is_empty() { note } else { format!("{prompt}\n\n{note}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llm(max_body_chars: usize) -> Llm {
        Llm::new(&LlmConfig { max_body_chars, ..LlmConfig::new("http://127.0.0.1:9/v1", "m") }).unwrap()
    }

    fn completion(content: serde_json::Value) -> Vec<u8> {
        serde_json::json!({"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn system_message_asks_for_brevity_after_the_prompt() {
        let m = system_message("Be kind.", 178);
        assert!(m.starts_with("Be kind.\n\n"));
        assert!(m.contains("under 178 characters"));
        assert!(system_message("  ", 50).starts_with("Your reply"));
    }

    #[test]
    fn answers_are_collapsed_and_cut_at_a_word() {
        let reply = llm(30).parse(&completion("Sure!\n\nThe capital of France is Paris, of course.".into())).unwrap();
        assert_eq!(reply.title, "Lanyard");
        assert_eq!(reply.body, "Sure! The capital of France\u{2026}");
        let short = llm(178).parse(&completion("  Paris. ".into())).unwrap();
        assert_eq!(short.body, "Paris.");
    }

    #[test]
    fn answers_without_text_are_invalid() {
        for bad in [
            completion(serde_json::Value::Null),
            completion("  \n ".into()),
            br#"{"choices":[]}"#.to_vec(),
            b"<html>".to_vec(),
        ] {
            assert!(matches!(llm(178).parse(&bad), Err(RespondError::InvalidAnswer(_))));
        }
    }
}
