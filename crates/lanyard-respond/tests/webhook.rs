//! The webhook responder against a real HTTP server that checks every request.
//!
//! The server verifies the HMAC signature with its own HMAC code (not the
//! crate's `verify_signature`, which is checked too) and compares the JSON
//! body with the request; a request that fails either check gets a 401, which
//! the responder does not retry, so a signing bug fails these tests loudly.

mod support;

use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use lanyard_respond::builtin::acknowledge;
use lanyard_respond::webhook::{DEFAULT_TOLERANCE, FALLBACK_MARKER, verify_signature};
use lanyard_respond::{Fallback, Reply, ReplyRequest, RespondError, Responder, Webhook, WebhookConfig};
use serde_json::json;
use sha2::Sha256;
use support::{Answer, Seen, TestServer, closed_port_url};
use uuid::Uuid;

const SECRET: &str = "test-secret-0123456789";

fn request() -> ReplyRequest {
    ReplyRequest {
        utterance_id: Uuid::from_u128(0x0190_f5a2_0000_7000_8000_0000_0000_0001),
        device_id: Uuid::from_u128(0x0190_f5a2_0000_7000_8000_0000_0000_0002),
        device_name: "kitchen".into(),
        transcript: "remind me to buy milk".into(),
        segments: vec![lanyard_proto::wire::Segment {
            start: 0.25,
            end: 2.5,
            text: "remind me to buy milk".into(),
            words: vec![lanyard_proto::wire::Word {
                word: "remind".into(),
                start: 0.25,
                end: 0.625,
                probability: 0.875,
            }],
        }],
        received_end_ms: 1_718_000_000_123,
        audio_secs: 2.5,
    }
}

/// Fast retries so the tests take milliseconds; the timeout is generous
/// except where a test is about timeouts.
fn config(url: String) -> WebhookConfig {
    WebhookConfig { timeout_ms: 2_000, backoff_base_ms: 5, ..WebhookConfig::new(url, SECRET) }
}

fn failing(url: String) -> WebhookConfig {
    WebhookConfig { fallback: Fallback::Fail, ..config(url) }
}

/// The signature check a receiver would write, from the documented scheme alone.
fn signature_ok(seen: &Seen) -> Result<(), String> {
    let header = seen.header("x-lanyard-signature").ok_or("no X-Lanyard-Signature")?;
    let (t, v1) = header.split_once(',').ok_or("no comma")?;
    let t = t.strip_prefix("t=").ok_or("no t=")?;
    let v1 = v1.strip_prefix("v1=").ok_or("no v1=")?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let t_secs: u64 = t.parse().map_err(|_| "t is not a number")?;
    if now.abs_diff(t_secs) > 60 {
        return Err(format!("t={t} is {}s from now", now.abs_diff(t_secs)));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&seen.body);
    let expected = hex::encode(mac.finalize().into_bytes());
    if v1 != expected {
        return Err("v1 does not match the HMAC".into());
    }
    if !verify_signature(SECRET.as_bytes(), header, &seen.body, SystemTime::now(), DEFAULT_TOLERANCE) {
        return Err("verify_signature disagrees".into());
    }
    Ok(())
}

/// Everything a hook may rely on, checked on one request.
fn request_ok(seen: &Seen) -> Result<(), String> {
    signature_ok(seen)?;
    if seen.method != "POST" || seen.path != "/hook" {
        return Err(format!("{} {}", seen.method, seen.path));
    }
    if seen.header("content-type") != Some("application/json") {
        return Err(format!("content-type {:?}", seen.header("content-type")));
    }
    let id = request().utterance_id.to_string();
    if seen.header("x-lanyard-utterance") != Some(id.as_str()) {
        return Err(format!("X-Lanyard-Utterance {:?}", seen.header("x-lanyard-utterance")));
    }
    let expected = json!({
        "utterance_id": "0190f5a2-0000-7000-8000-000000000001",
        "device_id": "0190f5a2-0000-7000-8000-000000000002",
        "device_name": "kitchen",
        "transcript": "remind me to buy milk",
        "segments": [{
            "start": 0.25, "end": 2.5, "text": "remind me to buy milk",
            "words": [{"word": "remind", "start": 0.25, "end": 0.625, "probability": 0.875}]
        }],
        "received_end_ms": 1_718_000_000_123_i64,
        "audio_secs": 2.5,
    });
    if seen.json() != expected {
        return Err(format!("body {}", seen.json()));
    }
    Ok(())
}

/// A hook that checks each request, then answers from `script` (the last entry repeats).
async fn verifying_hook(script: Vec<Answer>) -> TestServer {
    TestServer::start(move |seen, i| match request_ok(seen) {
        Ok(()) => script[i.min(script.len() - 1)].clone(),
        Err(why) => Answer::Send(401, format!("bad request: {why}")),
    })
    .await
}

fn noted() -> Answer {
    Answer::ok(json!({"title": "Noted", "body": "Milk is on your list.", "data": {"list": "groceries"}}))
}

fn fallback_reply() -> Reply {
    let mut reply = acknowledge(&request().transcript);
    reply.data.insert("fallback".into(), json!(FALLBACK_MARKER));
    reply
}

#[tokio::test]
async fn signed_request_is_retried_through_500s_and_its_answer_shown() {
    let hook = verifying_hook(vec![Answer::status(500), Answer::status(500), noted()]).await;
    let responder = Webhook::new(&failing(hook.url("/hook"))).unwrap();
    let reply = responder.respond(&request()).await.unwrap();
    assert_eq!(reply.title, "Noted");
    assert_eq!(reply.body, "Milk is on your list.");
    assert_eq!(reply.data["list"], "groceries");
    let seen = hook.seen();
    assert_eq!(seen.len(), 3, "two 500s and a 200");
    for s in &seen {
        request_ok(s).unwrap();
    }
    assert_eq!(responder.name(), "webhook");
}

#[tokio::test]
async fn too_many_requests_is_retried() {
    let hook = verifying_hook(vec![Answer::status(429), noted()]).await;
    let reply = Webhook::new(&failing(hook.url("/hook"))).unwrap().respond(&request()).await.unwrap();
    assert_eq!(reply.title, "Noted");
    assert_eq!(hook.seen().len(), 2);
}

#[tokio::test]
async fn a_hook_that_always_fails_falls_back_to_the_builtin_reply_with_its_marker() {
    let hook = verifying_hook(vec![Answer::status(503)]).await;
    let reply = Webhook::new(&config(hook.url("/hook"))).unwrap().respond(&request()).await.unwrap();
    assert_eq!(reply, fallback_reply());
    assert_eq!(reply.data["fallback"], "webhook_failed");
    assert_eq!(hook.seen().len(), 3, "the default is three attempts");
}

#[tokio::test]
async fn a_hook_that_always_fails_is_an_error_with_fallback_fail() {
    let hook = verifying_hook(vec![Answer::status(500)]).await;
    let error = Webhook::new(&failing(hook.url("/hook"))).unwrap().respond(&request()).await.unwrap_err();
    match &error {
        RespondError::GaveUp { attempts: 3, last } => {
            assert!(matches!(**last, RespondError::Status { status: 500, ref detail } if detail == "scripted 500"));
        }
        other => panic!("expected GaveUp after 3 attempts, got {other:?}"),
    }
    assert!(error.to_string().contains("gave up after 3 attempts"), "{error}");
    assert_eq!(hook.seen().len(), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let hook = verifying_hook(vec![Answer::status(404)]).await;
    let error = Webhook::new(&failing(hook.url("/hook"))).unwrap().respond(&request()).await.unwrap_err();
    assert!(matches!(error, RespondError::Status { status: 404, .. }), "{error:?}");
    assert_eq!(hook.seen().len(), 1);

    let hook = verifying_hook(vec![Answer::status(400)]).await;
    let reply = Webhook::new(&config(hook.url("/hook"))).unwrap().respond(&request()).await.unwrap();
    assert_eq!(reply, fallback_reply());
    assert_eq!(hook.seen().len(), 1);
}

#[tokio::test]
async fn a_hanging_hook_costs_one_timeout_per_attempt() {
    let hook = verifying_hook(vec![Answer::Hang]).await;
    let cfg = WebhookConfig { timeout_ms: 200, max_attempts: 2, ..failing(hook.url("/hook")) };
    let started = Instant::now();
    let error = Webhook::new(&cfg).unwrap().respond(&request()).await.unwrap_err();
    let took = started.elapsed();
    match error {
        RespondError::GaveUp { attempts: 2, last } => {
            assert!(matches!(*last, RespondError::Timeout(t) if t == Duration::from_millis(200)), "{last:?}");
        }
        other => panic!("expected GaveUp(Timeout), got {other:?}"),
    }
    assert!(took >= Duration::from_millis(400), "two attempts of 200 ms took only {took:?}");
    assert!(took < Duration::from_secs(2), "the timeout was not honoured: {took:?}");
    assert_eq!(hook.seen().len(), 2);

    // With the default fallback the user still gets an answer, in the same time.
    let hook = verifying_hook(vec![Answer::Hang]).await;
    let cfg = WebhookConfig { timeout_ms: 200, max_attempts: 1, ..config(hook.url("/hook")) };
    let reply = Webhook::new(&cfg).unwrap().respond(&request()).await.unwrap();
    assert_eq!(reply, fallback_reply());
}

#[tokio::test]
async fn an_invalid_answer_is_not_retried_and_falls_back() {
    let hook = verifying_hook(vec![Answer::Send(200, "<html>oops</html>".into())]).await;
    let reply = Webhook::new(&config(hook.url("/hook"))).unwrap().respond(&request()).await.unwrap();
    assert_eq!(reply, fallback_reply());
    assert_eq!(hook.seen().len(), 1);

    let hook = verifying_hook(vec![Answer::ok(json!({"title": "t", "body": "b", "data": {"count": 3}}))]).await;
    let error = Webhook::new(&failing(hook.url("/hook"))).unwrap().respond(&request()).await.unwrap_err();
    assert!(
        matches!(&error, RespondError::InvalidAnswer(why) if why.contains("`data.count` is a number")),
        "{error:?}"
    );
    assert_eq!(hook.seen().len(), 1);
}

#[tokio::test]
async fn oversized_answers_are_cut_not_rejected() {
    let long_title = "T".repeat(300);
    let hook = verifying_hook(vec![Answer::ok(json!({"title": long_title, "body": "ok"}))]).await;
    let reply = Webhook::new(&failing(hook.url("/hook"))).unwrap().respond(&request()).await.unwrap();
    assert_eq!(reply.title.chars().count(), 100);
    assert!(reply.title.ends_with('\u{2026}'));
    assert!(reply.data.is_empty());
}

#[tokio::test]
async fn an_unreachable_hook_is_retried_then_falls_back() {
    let url = closed_port_url().await;
    let error = Webhook::new(&failing(url.clone())).unwrap().respond(&request()).await.unwrap_err();
    match error {
        RespondError::GaveUp { attempts: 3, last } => assert!(matches!(*last, RespondError::Transport(_)), "{last:?}"),
        other => panic!("expected GaveUp(Transport), got {other:?}"),
    }
    let reply = Webhook::new(&config(url)).unwrap().respond(&request()).await.unwrap();
    assert_eq!(reply, fallback_reply());
}

/// The verifying hook really verifies: a request signed with another secret is refused.
#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_hook() {
    let hook = verifying_hook(vec![noted()]).await;
    let cfg = WebhookConfig::new(hook.url("/hook"), "another-secret-0123456789");
    let error = Webhook::new(&WebhookConfig { fallback: Fallback::Fail, ..cfg })
        .unwrap()
        .respond(&request())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RespondError::Status { status: 401, detail } if detail.contains("v1 does not match")),
        "{error:?}"
    );
    assert_eq!(hook.seen().len(), 1);
}

/// A redirect is reported, not followed: the signed POST must reach the configured URL.
#[tokio::test]
async fn redirects_are_not_followed() {
    let hook = TestServer::scripted(vec![Answer::Send(307, String::new())]).await;
    let error = Webhook::new(&failing(hook.url("/hook"))).unwrap().respond(&request()).await.unwrap_err();
    assert!(matches!(error, RespondError::Status { status: 307, .. }), "{error:?}");
    assert_eq!(hook.seen().len(), 1);
}
