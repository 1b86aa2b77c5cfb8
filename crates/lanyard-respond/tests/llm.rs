//! The LLM responder against a real OpenAI-compatible HTTP server that checks every request.
//!
//! The server insists on the path, the bearer key, the model, the message
//! order (system prompt first, then the transcript) and the sampling fields;
//! a request that fails a check gets a 400, which is not retried.

mod support;

use std::time::Instant;

use lanyard_respond::builtin::acknowledge;
use lanyard_respond::llm::FALLBACK_MARKER;
use lanyard_respond::{Fallback, Llm, LlmConfig, ReplyRequest, RespondError, Responder};
use serde_json::{Value, json};
use support::{Answer, Seen, TestServer};
use uuid::Uuid;

const KEY: &str = "sk-test-key-0123";
const MODEL: &str = "tiny-chat";
const PROMPT: &str = "You are a terse assistant for a kitchen.";
const TRANSCRIPT: &str = "what can I cook with eggs and spinach";

/// A long, multi-line answer, as models give when they ignore the brevity note.
const LONG_ANSWER: &str = "You could make a spinach omelette: whisk three eggs,\n\nwilt a handful of spinach in butter, \
pour the eggs over and fold when just set. Or try shakshuka-style baked eggs with spinach and garlic, or a quick \
frittata finished under the grill. All take about fifteen minutes.";

fn request(transcript: &str) -> ReplyRequest {
    ReplyRequest {
        utterance_id: Uuid::from_u128(7),
        device_id: Uuid::from_u128(8),
        device_name: "kitchen".into(),
        transcript: transcript.into(),
        segments: Vec::new(),
        received_end_ms: 1_718_000_000_000,
        audio_secs: 3.0,
    }
}

fn config(server: &TestServer) -> LlmConfig {
    LlmConfig {
        api_key: Some(KEY.into()),
        system_prompt: Some(PROMPT.into()),
        max_tokens: 64,
        temperature: 0.5,
        timeout_ms: 2_000,
        backoff_base_ms: 5,
        ..LlmConfig::new(server.url("/v1"), MODEL)
    }
}

fn completion(content: &str) -> Answer {
    Answer::ok(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 60, "total_tokens": 100}
    }))
}

/// What an OpenAI-compatible server requires of the request, checked.
fn request_ok(seen: &Seen, key: Option<&str>) -> Result<(), String> {
    if seen.method != "POST" || seen.path != "/v1/chat/completions" {
        return Err(format!("{} {}", seen.method, seen.path));
    }
    let expected_auth = key.map(|k| format!("Bearer {k}"));
    if seen.header("authorization").map(str::to_string) != expected_auth {
        return Err(format!("authorization {:?}", seen.header("authorization")));
    }
    if seen.header("content-type") != Some("application/json") {
        return Err(format!("content-type {:?}", seen.header("content-type")));
    }
    let body = seen.json();
    if body["model"] != MODEL {
        return Err(format!("model {}", body["model"]));
    }
    let messages = body["messages"].as_array().ok_or("no messages")?;
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap_or("?")).collect();
    if roles != ["system", "user"] {
        return Err(format!("roles {roles:?}"));
    }
    let system = messages[0]["content"].as_str().unwrap_or_default();
    if !system.starts_with(PROMPT) || !system.contains("notification") || !system.contains("under 178 characters") {
        return Err(format!("system prompt {system:?}"));
    }
    if messages[1]["content"] != TRANSCRIPT {
        return Err(format!("user message {}", messages[1]["content"]));
    }
    if body["max_tokens"] != 64 || body["stream"] != false {
        return Err(format!("max_tokens {} stream {}", body["max_tokens"], body["stream"]));
    }
    let temperature = body["temperature"].as_f64().ok_or("no temperature")?;
    if (temperature - 0.5).abs() > 1e-6 {
        return Err(format!("temperature {temperature}"));
    }
    Ok(())
}

async fn verifying_llm(key: Option<&'static str>, script: Vec<Answer>) -> TestServer {
    TestServer::start(move |seen, i| match request_ok(seen, key) {
        Ok(()) => script[i.min(script.len() - 1)].clone(),
        Err(why) => Answer::Send(400, json!({"error": {"message": why}}).to_string()),
    })
    .await
}

#[tokio::test]
async fn a_long_answer_is_cut_to_a_lock_screen_at_a_word() {
    let server = verifying_llm(Some(KEY), vec![completion(LONG_ANSWER)]).await;
    let llm = Llm::new(&config(&server)).unwrap();
    let reply = llm.respond(&request(TRANSCRIPT)).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    request_ok(&seen[0], Some(KEY)).unwrap();

    assert_eq!(reply.title, "Lanyard");
    assert!(reply.data.is_empty());
    let body = &reply.body;
    assert!(body.chars().count() <= 178, "{} chars: {body}", body.chars().count());
    assert!(body.chars().count() > 120, "cut far too early: {body}");
    let kept = body.strip_suffix('\u{2026}').expect("an ellipsis marks the cut");
    let flat = LONG_ANSWER.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.starts_with(kept), "not a prefix of the answer: {body}");
    let next = flat[kept.len()..].chars().next().unwrap();
    assert!(next.is_whitespace() || next == ',', "cut mid-word: {body}");
    assert!(!body.contains('\n'));
    assert_eq!(llm.name(), "llm");
}

#[tokio::test]
async fn short_answers_and_custom_titles_pass_through() {
    let server = verifying_llm(Some(KEY), vec![completion("  Spinach omelette. ")]).await;
    let cfg = LlmConfig { title: "Chef".into(), ..config(&server) };
    let reply = Llm::new(&cfg).unwrap().respond(&request(TRANSCRIPT)).await.unwrap();
    assert_eq!((reply.title.as_str(), reply.body.as_str()), ("Chef", "Spinach omelette."));
}

#[tokio::test]
async fn no_key_means_no_authorization_header() {
    let server = verifying_llm(None, vec![completion("Omelette.")]).await;
    let cfg = LlmConfig { api_key: None, ..config(&server) };
    let reply = Llm::new(&cfg).unwrap().respond(&request(TRANSCRIPT)).await.unwrap();
    assert_eq!(reply.body, "Omelette.");
}

#[tokio::test]
async fn server_errors_are_retried() {
    let server = verifying_llm(Some(KEY), vec![Answer::status(503), completion("Omelette.")]).await;
    let cfg = LlmConfig { fallback: Fallback::Fail, ..config(&server) };
    let reply = Llm::new(&cfg).unwrap().respond(&request(TRANSCRIPT)).await.unwrap();
    assert_eq!(reply.body, "Omelette.");
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn a_bad_key_is_not_retried_falls_back_and_never_echoes_the_key() {
    // An endpoint that quotes the key it was given back in its error.
    let refusal =
        Answer::Send(401, json!({"error": {"message": format!("Incorrect API key provided: {KEY}")}}).to_string());
    let server = verifying_llm(Some(KEY), vec![refusal]).await;
    let reply = Llm::new(&config(&server)).unwrap().respond(&request(TRANSCRIPT)).await.unwrap();
    let mut expected = acknowledge(TRANSCRIPT);
    expected.data.insert("fallback".into(), Value::from(FALLBACK_MARKER));
    assert_eq!(reply, expected);
    assert_eq!(reply.data["fallback"], "llm_failed");
    assert_eq!(server.seen().len(), 1);

    let cfg = LlmConfig { fallback: Fallback::Fail, ..config(&server) };
    let error = Llm::new(&cfg).unwrap().respond(&request(TRANSCRIPT)).await.unwrap_err();
    assert!(matches!(error, RespondError::Status { status: 401, .. }), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(KEY), "the key leaked: {shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[tokio::test]
async fn a_hanging_model_times_out_and_falls_back() {
    let server = verifying_llm(Some(KEY), vec![Answer::Hang]).await;
    let cfg = LlmConfig { timeout_ms: 150, max_attempts: 2, ..config(&server) };
    let started = Instant::now();
    let reply = Llm::new(&cfg).unwrap().respond(&request(TRANSCRIPT)).await.unwrap();
    assert_eq!(reply.data["fallback"], "llm_failed");
    assert!(started.elapsed().as_millis() < 2_000, "took {:?}", started.elapsed());
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn an_answer_without_text_is_not_retried() {
    let server = verifying_llm(Some(KEY), vec![completion("   ")]).await;
    let cfg = LlmConfig { fallback: Fallback::Fail, ..config(&server) };
    let error = Llm::new(&cfg).unwrap().respond(&request(TRANSCRIPT)).await.unwrap_err();
    assert!(matches!(error, RespondError::InvalidAnswer(_)), "{error:?}");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn an_empty_transcript_is_acknowledged_without_asking_the_model() {
    let server = verifying_llm(Some(KEY), vec![completion("unused")]).await;
    let reply = Llm::new(&config(&server)).unwrap().respond(&request("  ")).await.unwrap();
    assert_eq!(reply, acknowledge(""));
    assert!(server.seen().is_empty());
}
