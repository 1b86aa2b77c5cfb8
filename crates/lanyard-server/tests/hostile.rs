//! The attack suite (issue 13): what an outsider with a socket, or a device
//! with a token, tries against a real server on 127.0.0.1:0, and what must
//! hold.
//!
//! - Connection hygiene: slow headers, slow bodies, too many connections,
//!   WebSocket frames over the protocol's size, a stream that never reads.
//!   `LANYARD_HOSTILE_SLOW_CLIENTS` sets how many slow-header connections
//!   the header test opens (100 by default; the bar is 500).
//! - Privacy: transcripts, replies and push tokens never reach the log at
//!   INFO.
//! - Utterance ids: only UUIDs of version 4 or 7, on every route and on
//!   `open`; another device's id answers as an unknown one does.
//! - Deletion is final: a deleted utterance's id gets 410 `gone` on upload
//!   and text, and `error` `gone` on `open`.
//! - Audio is limited by its duration before decoding: a small file of
//!   Opus packets that claim an hour is refused on every entry point, with
//!   bounded memory.
//! - Fairness across devices: a flood of utterances from one device does
//!   not hold up another's reply; opens, unfinished utterances, live
//!   transcription slots, transcription requests and uploaded frames are
//!   budgeted per device, and a device out of opens is refused before the
//!   upgrade (`benches/flood.rs` measures the latency bar).
//! - What already held, kept as regressions: path traversal in ids, deep
//!   and broken JSON, missing, wrong and swapped tokens, WebSocket protocol
//!   violations. Cross-device access on every route is `api.rs`'s
//!   `every_device_route_keeps_devices_apart` and `stream.rs`'s
//!   `devices_cannot_see_each_other`; the API contract, `schemathesis.rs`.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use futures::SinkExt;
use lanyard_proto::Uuid;
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{ClientMsg, ServerMsg, UtteranceState, close};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Reads until the peer closes; `Err` if it has not within `limit`. A reset
/// counts as closed.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    match tokio::time::timeout(limit, read_all).await {
        Ok(()) => Ok(got),
        Err(_) => Err(got),
    }
}

/// `GET /healthz` on a fresh connection; how long the answer took.
async fn healthz(h: &Harness) -> Duration {
    let start = Instant::now();
    let mut tcp = TcpStream::connect(h.server.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let answer = closed_within(&mut tcp, Duration::from_secs(5)).await.expect("a fresh client is answered");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    start.elapsed()
}

/// The value of `lanyard_limited_total{limit="<limit>"}`.
async fn limited(h: &Harness, limit: &str) -> f64 {
    counter(&h.url, &format!("lanyard_limited_total{{limit=\"{limit}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_closed_within_the_header_timeout() {
    let n: usize = std::env::var("LANYARD_HOSTILE_SLOW_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let timeout = Duration::from_secs(2);
    let h = harness_with(|cfg| cfg.connections.header_timeout_secs = timeout.as_secs()).await;
    let before = limited(&h, "header_timeout").await;
    let opened = Instant::now();
    let mut slow = Vec::with_capacity(n);
    for _ in 0..n {
        let mut tcp = TcpStream::connect(h.server.addr).await.unwrap();
        // Headers begun, never finished.
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ").await.unwrap();
        slow.push(tcp);
    }
    let spread = opened.elapsed();
    let fresh = healthz(&h).await;
    assert!(fresh < Duration::from_millis(500), "a new client waited {fresh:?} behind {n} slow ones");
    // Each must be closed by its own deadline: opened at most `spread` ago.
    let mut last = Duration::ZERO;
    for tcp in &mut slow {
        let left = (timeout + spread + Duration::from_secs(1)).saturating_sub(opened.elapsed());
        let answer = closed_within(tcp, left).await.expect("a connection that never finished its headers is closed");
        assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
        last = opened.elapsed();
    }
    println!(
        "{n} slow-header connections opened in {spread:?}; the last was closed {last:?} after the first opened (timeout {timeout:?}); a fresh client was answered in {fresh:?}"
    );
    assert!(last >= timeout, "closed before the timeout: {last:?}");
    assert!(limited(&h, "header_timeout").await - before >= n as f64);
    assert!(healthz(&h).await < Duration::from_millis(500));
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_with_503_and_websockets_count() {
    let h = harness_with(|cfg| cfg.connections.max_connections = 2).await;
    // No scrape of the metrics first: its connection could still hold a place.
    // One upgraded stream and one idle socket take both places.
    let ws = h.ws(&h.token_a).await;
    let idle = TcpStream::connect(h.server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(h.server.addr).await.unwrap();
    let answer = closed_within(&mut third, Duration::from_secs(3)).await.expect("refused at once, and closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1") && answer.contains("\"code\":\"too_many_connections\""), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(body).expect("the refusal's body is JSON of its stated length");
    assert_eq!(parsed["code"], "too_many_connections");
    drop((ws, idle));
    // The places come back once the server sees both ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut tcp = TcpStream::connect(h.server.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let answer = closed_within(&mut tcp, Duration::from_secs(3)).await.unwrap();
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "places never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only this test fills the server, so the process-wide count is its own.
    assert!(limited(&h, "connections").await >= 1.0);
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_is_refused_after_the_body_timeout() {
    let h = harness_with(|cfg| cfg.connections.body_timeout_secs = 1).await;
    let before = limited(&h, "body_timeout").await;
    let mut tcp = TcpStream::connect(h.server.addr).await.unwrap();
    let head = format!(
        "PUT /v1/utterances/{}/audio HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: audio/ogg\r\ncontent-length: 100000\r\n\r\n",
        Uuid::now_v7(),
        h.token_a
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(b"OggS").await.unwrap();
    let start = Instant::now();
    let answer = closed_within(&mut tcp, Duration::from_secs(5)).await.expect("answered and closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("body_timeout_secs"), "the answer names the setting: {answer}");
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    assert!(limited(&h, "body_timeout").await - before >= 1.0);
    h.server.stop().await;
}

/// A WebSocket handshake spoken by hand, so a test can then send frames no
/// client library would.
async fn raw_ws(h: &Harness, token: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(h.server.addr).await.unwrap();
    let req = format!(
        "GET /v1/stream HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tcp.read(&mut b).await.unwrap(), 1, "the handshake's answer ended early");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_frame_over_the_protocol_limit_is_refused_from_its_header() {
    let h = harness().await;
    let before = limited(&h, "too_large").await;
    let mut tcp = raw_ws(&h, &h.token_a).await;
    // A masked binary frame that claims 16 MiB, then 1 KiB of it, then nothing.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(16u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[0u8; 1024]);
    tcp.write_all(&frame).await.unwrap();
    let start = Instant::now();
    let got = closed_within(&mut tcp, Duration::from_secs(5)).await.expect("closed at once, not at the idle timeout");
    // An unmasked close frame: 0x88, its length, then the code.
    assert!(got.len() >= 4 && got[0] == 0x88, "expected a close frame, got {got:?}");
    assert_eq!(u16::from_be_bytes([got[2], got[3]]), close::FRAME_TOO_LARGE);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(limited(&h, "too_large").await - before >= 1.0);
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_reads_is_closed_after_the_send_timeout() {
    let h = harness_with(|cfg| cfg.connections.send_timeout_secs = 1).await;
    let before = limited(&h, "send_timeout").await;
    // A small receive buffer, so the server's answers back up quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(h.server.addr).await.unwrap();
    let req = h.ws_request(Some(&format!("Bearer {}", h.token_a)));
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    // Each `open` of the nil id is answered with an error, and never read.
    let open =
        ClientMsg::Open { utterance: Uuid::nil(), handle: 1, codec: Codec::Opus16k20ms, unmarked: false }.to_json();
    let start = Instant::now();
    let sent = tokio::time::timeout(Duration::from_secs(60), async {
        let mut n = 0u64;
        while ws.send(Message::text(open.clone())).await.is_ok() {
            n += 1;
        }
        n
    })
    .await
    .expect("the server closes a stream that reads nothing");
    println!("the server gave up after {sent} unread answers, {:?}", start.elapsed());
    assert!(limited(&h, "send_timeout").await - before >= 1.0);
    h.server.stop().await;
}

/// Everything logged in this test process at INFO and above.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .init();
        log
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_at_info_hold_no_transcript_reply_or_push_token() {
    let log = captured_log();
    let h = harness().await;
    let http = reqwest::Client::new();
    let push_token = format!("pushsecret{}", Uuid::now_v7().simple());
    let r = http
        .put(format!("{}/v1/device/push", h.url))
        .bearer_auth(&h.token_a)
        .json(&serde_json::json!({"platform": "apns", "token": push_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // A typed utterance with words no log line has a reason to hold.
    let text = format!("the heron nests beside marigold quarry {}", Uuid::now_v7().simple());
    let typed = Uuid::now_v7();
    let r = http
        .post(format!("{}/v1/utterances/{typed}/text", h.url))
        .bearer_auth(&h.token_a)
        .json(&serde_json::json!({"text": text}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // A spoken one, through the stream, speech-to-text and the pipeline.
    let spoken = Uuid::now_v7();
    let frames = speech_frames("Remind me to water the orchids on Friday.");
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: spoken, handle: 1, codec: Codec::Opus16k20ms, unmarked: false })
        .await;
    expect_opened(&mut ws).await;
    for (i, f) in frames.iter().enumerate() {
        send_audio(&mut ws, 1, i as u32, f).await;
    }
    send_text(&mut ws, &ClientMsg::End { utterance: spoken, frames: frames.len() as u32, speech_frames: None }).await;
    let mut secrets = vec![push_token.clone(), text.clone()];
    for id in [typed, spoken] {
        let u = h.wait_state(id, UtteranceState::Replied).await;
        secrets.extend([u.transcript.unwrap(), u.reply_body.unwrap()]);
        if let Some(title) = u.reply_title.filter(|t| t.len() > 8) {
            secrets.push(title);
        }
    }
    // The push went out (to the file sink, which is a delivery, not a log).
    let sink = h._dir.path().join("push-sink.jsonl");
    for _ in 0..200 {
        if std::fs::read_to_string(&sink).unwrap_or_default().matches(&push_token).count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(std::fs::read_to_string(&sink).unwrap().contains(&push_token), "the push was sent");
    h.server.stop().await;
    let log = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(log.contains(&spoken.to_string()), "the capture works, and ids are logged:\n{log}");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret:?} is in the log:\n{log}");
    }
}

/// A request with device A's token; the status and the JSON error body.
async fn call(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", h.url)).bearer_auth(&h.token_a);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_random_utterance_ids_are_accepted_on_every_route_and_on_open() {
    use reqwest::Method;
    let h = harness().await;
    let v1 = "c232ab00-9414-11ec-b3c8-9f6bdeced846";
    for bad in [Uuid::nil().to_string(), Uuid::max().to_string(), v1.to_string()] {
        let text = Some(serde_json::json!({"text": "hello"}));
        for (method, path, body) in [
            (Method::GET, format!("/v1/utterances/{bad}"), None),
            (Method::DELETE, format!("/v1/utterances/{bad}"), None),
            (Method::PUT, format!("/v1/utterances/{bad}/audio"), None),
            (Method::POST, format!("/v1/utterances/{bad}/text"), text),
            (Method::GET, format!("/v1/utterances?before={bad}"), None),
        ] {
            let (status, err) = call(&h, method.clone(), &path, body).await;
            assert_eq!(status, 400, "{method} {path}: {err}");
            assert!(err["message"].as_str().unwrap().contains("version 4 or 7"), "{method} {path}: {err}");
        }
    }
    let mut ws = h.ws(&h.token_a).await;
    send_text(
        &mut ws,
        &ClientMsg::Open { utterance: Uuid::nil(), handle: 1, codec: Codec::Opus16k20ms, unmarked: false },
    )
    .await;
    match recv(&mut ws).await {
        In::Text(ServerMsg::Error { code, utterance, .. }) => {
            assert_eq!((code.as_str(), utterance), ("invalid_id", Some(Uuid::nil())))
        }
        _ => panic!("the nil id must be refused on open"),
    }
    assert!(h.store.utterance(Uuid::nil()).await.unwrap().is_none(), "nothing was created");

    // Device B's utterance: device A's `open` gets the words an unknown id
    // gets on every route.
    let theirs = Uuid::now_v7();
    let mut wb = h.ws(&h.token_b).await;
    send_text(&mut wb, &ClientMsg::Open { utterance: theirs, handle: 1, codec: Codec::Opus16k20ms, unmarked: false })
        .await;
    expect_opened(&mut wb).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: theirs, handle: 2, codec: Codec::Opus16k20ms, unmarked: false })
        .await;
    let In::Text(ServerMsg::Error { code, message, .. }) = recv(&mut ws).await else { panic!("expected an error") };
    let unknown = Uuid::now_v7();
    let (status, err) = call(&h, reqwest::Method::GET, &format!("/v1/utterances/{unknown}"), None).await;
    assert_eq!(status, 404);
    assert_eq!(code, err["code"].as_str().unwrap());
    assert_eq!(message, err["message"].as_str().unwrap().replace(&unknown.to_string(), &theirs.to_string()));
    let (status, err_theirs) = call(&h, reqwest::Method::GET, &format!("/v1/utterances/{theirs}"), None).await;
    assert_eq!((status, err_theirs["message"].as_str().unwrap()), (404, message.as_str()));
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_utterance_never_comes_back() {
    use reqwest::Method;
    let h = harness().await;
    let before = counter(&h.url, "lanyard_deleted_refused_total").await;
    let id = Uuid::now_v7();
    let text = Some(serde_json::json!({"text": "forget I said this"}));
    assert_eq!(call(&h, Method::POST, &format!("/v1/utterances/{id}/text"), text.clone()).await.0, 202);
    h.wait_state(id, UtteranceState::Replied).await;
    assert_eq!(call(&h, Method::DELETE, &format!("/v1/utterances/{id}"), None).await.0, 204);

    // A retried text post: 410, and nothing is created.
    let (status, err) = call(&h, Method::POST, &format!("/v1/utterances/{id}/text"), text).await;
    assert_eq!((status, err["code"].as_str()), (410, Some("gone")), "{err}");
    // A background upload delayed past the delete.
    let ogg = lanyard_proto::oggopus::write(7, speech_frames("Hello.").iter().map(Vec::as_slice));
    let r = reqwest::Client::new()
        .put(format!("{}/v1/utterances/{id}/audio", h.url))
        .bearer_auth(&h.token_a)
        .header("content-type", "audio/ogg")
        .body(ogg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    // A relay resuming the stream.
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
    match recv(&mut ws).await {
        In::Text(ServerMsg::Error { code, utterance, message }) => {
            assert_eq!((code.as_str(), utterance), ("gone", Some(id)));
            assert!(message.contains("drop your copy"), "{message}");
        }
        _ => panic!("open of a deleted utterance must answer gone"),
    }
    assert!(h.store.utterance(id).await.unwrap().is_none(), "nothing came back");
    assert_eq!(call(&h, Method::GET, &format!("/v1/utterances/{id}"), None).await.0, 404);
    // Another device learns nothing: its answer is an unknown id's.
    let mut wb = h.ws(&h.token_b).await;
    send_text(&mut wb, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
    let In::Text(ServerMsg::Error { code, .. }) = recv(&mut wb).await else { panic!("expected an error") };
    assert_eq!(code, "not_found");
    assert!(counter(&h.url, "lanyard_deleted_refused_total").await - before >= 3.0);
    h.server.stop().await;
}

/// This process's resident memory and its peak since the last reset, in
/// bytes (`/proc/self/status`). Writing 5 to `clear_refs` resets the peak.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = |key: &str| -> u64 {
        let line =
            status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_claiming_an_hour_is_refused_before_decoding_on_every_entry_point() {
    // Six at once from one device, as the review sent them: past the
    // per-device cap of simultaneous transcriptions (2), raised here so
    // that every one reaches the duration check.
    let h = harness_with(|cfg| cfg.limits.transcriptions_per_device = 6).await;
    let before = limited(&h, "audio_duration").await;
    // 30,000 one-byte Opus packets whose TOC says 2 x 60 ms: 3,600 s of
    // audio in under 100 KB of Ogg.
    let bomb: Vec<Vec<u8>> = vec![vec![(3u8 << 3) | 1]; 30_000];
    let ogg = lanyard_proto::oggopus::write(7, bomb.iter().map(Vec::as_slice));
    assert!(ogg.len() < 100 * 1024, "{} bytes", ogg.len());

    // Six transcription requests at once, as the review sent them; the peak
    // memory of this process (server included) must grow by < 20 MB.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let (rss_before, _) = rss();
    let (ct, body) = multipart(Some(&ogg), &[("model", "whisper-1")]);
    let answers = futures::future::join_all((0..6).map(|_| {
        reqwest::Client::new()
            .post(format!("{}/v1/audio/transcriptions", h.url))
            .bearer_auth(&h.token_a)
            .header("content-type", ct.clone())
            .body(body.clone())
            .send()
    }))
    .await;
    let (_, peak) = rss();
    for r in answers {
        let r = r.unwrap();
        assert_eq!(r.status(), 400);
        let text = r.text().await.unwrap();
        assert!(text.contains("3600.0 s") && text.contains("600 s"), "{text}");
    }
    let growth = peak.saturating_sub(rss_before);
    assert!(growth < 20 * 1024 * 1024, "peak RSS grew by {} MB", growth / (1024 * 1024));

    // An upload of the same file: every stored frame must be 20 ms.
    let id = Uuid::now_v7();
    let r = reqwest::Client::new()
        .put(format!("{}/v1/utterances/{id}/audio", h.url))
        .bearer_auth(&h.token_a)
        .header("content-type", "audio/ogg")
        .body(ogg.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("packet 0") && text.contains("20 ms"), "{text}");
    assert!(h.store.utterance(id).await.unwrap().is_none(), "nothing opened for a refused upload");

    // Over the WebSocket: a 120 ms frame closes the stream with 4007,
    // before it is stored, acked or decoded.
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
    expect_opened(&mut ws).await;
    send_audio(&mut ws, 1, 0, &bomb[0]).await;
    assert_eq!(expect_close(&mut ws).await, close::BAD_FRAME);
    assert_eq!(h.store.utterance(id).await.unwrap().map(|u| u.frames), Some(0));

    assert!(limited(&h, "audio_duration").await - before >= 8.0, "each refusal is counted");
    h.server.stop().await;
}

/// Seconds from posting a text utterance as device B to its reply.
async fn text_reply_secs(h: &Harness) -> f64 {
    let id = Uuid::now_v7();
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/utterances/{id}/text", h.url))
        .bearer_auth(&h.token_b)
        .json(&serde_json::json!({"text": "what time is it"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    h.wait_state(id, UtteranceState::Replied).await;
    started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_flooding_utterances_does_not_hold_up_another() {
    // The opens budget would close A's stream after its burst (see
    // `opens_past_the_budget_close_the_stream`); raised here so that all
    // 150 reach the pipeline, whose fairness is what this test is about.
    let h = harness_with(|cfg| {
        cfg.limits.opens_per_sec = 10_000.0;
        cfg.limits.open_burst = 10_000.0;
    })
    .await;
    let quiet = text_reply_secs(&h).await;
    let limited_before = limited(&h, "replies").await;

    // Device A opens, sends one frame and ends 150 utterances, as fast as it can.
    let mut ws = h.ws(&h.token_a).await;
    let mut ids = Vec::new();
    for _ in 0..150 {
        let id = Uuid::now_v7();
        send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Pcm16k, unmarked: false }).await;
        send_audio(&mut ws, 1, 0, &[0u8; 640]).await;
        send_text(&mut ws, &ClientMsg::End { utterance: id, frames: 1, speech_frames: None }).await;
        ids.push(id);
    }
    // Wait until the last one is complete (queued), then measure B.
    let last = *ids.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.store.utterance(last).await.unwrap().map(|u| u.state) == Some(UtteranceState::Receiving) {
        assert!(Instant::now() < deadline, "A's utterances were never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flooded = text_reply_secs(&h).await;
    assert!(
        flooded <= (quiet * 2.0).max(quiet + 1.0),
        "B's reply took {flooded:.2} s under A's flood, {quiet:.2} s without"
    );
    // A's replies past its burst wait for their turn at the responder.
    let deadline = Instant::now() + Duration::from_secs(30);
    while limited(&h, "replies").await <= limited_before {
        assert!(Instant::now() < deadline, "A's responder calls were never limited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.server.stop().await;
}

/// Opens `id` on `handle` and reads the answer: `Ok` when opened, the close
/// code otherwise.
async fn try_open(ws: &mut Ws, id: Uuid, handle: u32) -> Result<(), (u16, String)> {
    send_text(ws, &ClientMsg::Open { utterance: id, handle, codec: Codec::Pcm16k, unmarked: false }).await;
    loop {
        match recv(ws).await {
            In::Text(ServerMsg::Opened { .. }) => return Ok(()),
            In::Close(c, r) => return Err((c, r)),
            In::Text(ServerMsg::Error { code, message, .. }) => panic!("open answered error {code}: {message}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_utterances_past_the_cap_close_the_stream_and_live_slots_are_per_device() {
    let h = harness_with(|cfg| cfg.limits.unfinished_per_device = 3).await;
    let (unfinished_before, live_before) = (limited(&h, "unfinished").await, limited(&h, "live").await);
    let mut ws = h.ws(&h.token_a).await;
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for (i, id) in ids.iter().enumerate() {
        let handle = i as u32 + 1;
        try_open(&mut ws, *id, handle).await.unwrap();
        // A frame each: the third finds its device's live slots taken.
        send_audio(&mut ws, handle, 0, &[0u8; 640]).await;
        expect_ack(&mut ws, 1).await;
    }
    assert!(limited(&h, "live").await > live_before, "a third live utterance of one device is refused a slot");
    // A fourth new id, with three left unfinished: closed 4004, counted.
    let (code, reason) = try_open(&mut ws, Uuid::now_v7(), 4).await.unwrap_err();
    assert_eq!(code, close::RATE_LIMITED, "{reason}");
    assert!(reason.contains("not ended"), "the reason says what to do: {reason}");
    assert!(limited(&h, "unfinished").await > unfinished_before);
    // Resuming one of them is always allowed, and ending it frees a place.
    let mut ws = h.ws(&h.token_a).await;
    try_open(&mut ws, ids[0], 1).await.unwrap();
    send_text(&mut ws, &ClientMsg::End { utterance: ids[0], frames: 1, speech_frames: None }).await;
    loop {
        if let In::Text(ServerMsg::Complete { .. }) = recv(&mut ws).await {
            break;
        }
    }
    try_open(&mut ws, Uuid::now_v7(), 2).await.unwrap();
    // Another device has its own count.
    let mut b = h.ws(&h.token_b).await;
    for handle in 1..=3 {
        try_open(&mut b, Uuid::now_v7(), handle).await.unwrap();
    }
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_past_the_budget_close_the_stream() {
    let h = harness_with(|cfg| {
        cfg.limits.opens_per_sec = 0.1;
        cfg.limits.open_burst = 5.0;
    })
    .await;
    let before = limited(&h, "opens").await;
    let mut ws = h.ws(&h.token_a).await;
    for _ in 0..5 {
        let id = Uuid::now_v7();
        try_open(&mut ws, id, 1).await.unwrap();
        send_text(&mut ws, &ClientMsg::End { utterance: id, frames: 0, speech_frames: None }).await;
    }
    let (code, reason) = try_open(&mut ws, Uuid::now_v7(), 2).await.unwrap_err();
    assert_eq!(code, close::RATE_LIMITED, "{reason}");
    assert!(reason.contains("opens a second") && reason.contains("reconnect in"), "{reason}");
    assert_eq!(limited(&h, "opens").await, before + 1.0);
    // Reconnecting at once gets a plain 429 before any upgrade, with when
    // to come back (0.1 opens a second: about 10 s).
    match tokio_tungstenite::connect_async(h.ws_request(Some(&format!("Bearer {}", h.token_a)))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((5..=10).contains(&retry), "Retry-After {retry}");
        }
        other => panic!("a device with no opens left was let in: {:?}", other.map(|_| ())),
    }
    assert_eq!(limited(&h, "opens").await, before + 2.0);
    // Device B's budget is its own.
    let mut b = h.ws(&h.token_b).await;
    try_open(&mut b, Uuid::now_v7(), 1).await.unwrap();
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_holds_at_most_its_share_of_transcription_requests() {
    let h = harness_with(|cfg| cfg.limits.transcriptions_per_device = 1).await;
    let before = limited(&h, "transcriptions").await;
    // A request whose body never finishes holds A's one slot.
    let mut slow = TcpStream::connect(h.server.addr).await.unwrap();
    let head = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: multipart/form-data; boundary=b\r\ncontent-length: 1000000\r\n\r\n--b\r\n",
        h.token_a
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let post = |token: String| {
        let url = format!("{}/v1/audio/transcriptions", h.url);
        async move {
            let (ctype, body) = multipart(None, &[("model", "whisper-1")]);
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .header("content-type", ctype)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // The slow request reaches its handler first.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let (status, body) = post(h.token_a.clone()).await;
        if status == 429 {
            break body;
        }
        assert_eq!(status, 400, "no file: {body}");
        assert!(Instant::now() < deadline, "the second request was never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused["code"], "too_many_requests", "{refused}");
    assert!(limited(&h, "transcriptions").await > before);
    // B is not held up by A's slots.
    assert_eq!(post(h.token_b.clone()).await.0, 400);
    // The slot is A's again once its request ends, however it ended.
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(h.token_a.clone()).await.0 == 429 {
        assert!(Instant::now() < deadline, "the slot of a dropped request was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_spend_a_frame_budget_of_their_own() {
    let h = harness().await;
    let before = limited(&h, "frames").await;
    // 400 s of silence each (one silent Opus frame, repeated): the bucket
    // holds one whole utterance (30,000 frames), so the first fits, and the
    // second, at once, lacks 10,000 frames: 6.7 s at 1,500 a second.
    let silent = opus_frames(&[0i16; 320]).remove(0);
    let ogg = lanyard_proto::oggopus::write(7, std::iter::repeat_n(silent.as_slice(), 20_000));
    let put = |token: &str| {
        reqwest::Client::new()
            .put(format!("{}/v1/utterances/{}/audio", h.url, Uuid::now_v7()))
            .bearer_auth(token)
            .header("content-type", "audio/ogg")
            .body(ogg.clone())
            .send()
    };
    assert_eq!(put(&h.token_a).await.unwrap().status(), 200);
    let refused = put(&h.token_a).await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((5..=7).contains(&retry), "Retry-After {retry}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert!(limited(&h, "frames").await > before);
    // Another device's budget is its own.
    assert_eq!(put(&h.token_b).await.unwrap().status(), 200);
    h.server.stop().await;
}

/// A background upload that comes after the expiry its phone gave it (the
/// end of its time-to-live) is refused, 410 `expired`, counted, and leaves
/// nothing to answer; one before its expiry is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_past_its_expiry_is_refused_and_counted() {
    let h = harness().await;
    let before = limited(&h, "expired").await;
    let ogg = lanyard_proto::oggopus::write(7, speech_frames("Hello.").iter().map(Vec::as_slice));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let put = |id: Uuid, expires_ms: i64| {
        reqwest::Client::new()
            .put(format!("{}/v1/utterances/{id}/audio?expires_ms={expires_ms}", h.url))
            .bearer_auth(&h.token_a)
            .header("content-type", "audio/ogg")
            .body(ogg.clone())
            .send()
    };
    let late = Uuid::now_v7();
    let refused = put(late, now - 60_000).await.unwrap();
    assert_eq!(refused.status(), 410);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "expired", "{body}");
    assert!(body["message"].as_str().unwrap().contains("time-to-live"), "{body}");
    assert_eq!(limited(&h, "expired").await, before + 1.0);
    let gone = reqwest::Client::new()
        .get(format!("{}/v1/utterances/{late}", h.url))
        .bearer_auth(&h.token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404, "nothing was stored for it");
    let on_time = Uuid::now_v7();
    assert_eq!(put(on_time, now + 3_600_000).await.unwrap().status(), 200, "before its expiry: taken");
    // The same upload run again after the expiry: it was delivered in time,
    // so it is answered as a repeat, not refused.
    assert_eq!(put(on_time, now - 60_000).await.unwrap().status(), 200, "already complete");
    assert_eq!(limited(&h, "expired").await, before + 1.0);
    h.server.stop().await;
}

/// Path traversal in ids, deep and broken JSON, and missing, wrong and
/// swapped tokens: each refused with its status, and nothing outside the
/// data directory touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_deep_json_and_bad_tokens_are_refused() {
    use reqwest::Method;
    let h = harness().await;
    // Ids that climb out of the audio directory, raw and encoded.
    for id in ["..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..%5C..%5Cwindows", "a/../../b", "%00"] {
        for (method, path) in [
            (Method::GET, format!("/v1/utterances/{id}")),
            (Method::DELETE, format!("/v1/utterances/{id}")),
            (Method::PUT, format!("/v1/utterances/{id}/audio")),
            (Method::POST, format!("/v1/utterances/{id}/text")),
        ] {
            let (status, _) = call(&h, method.clone(), &path, Some(serde_json::json!({"text": "x"}))).await;
            assert!(status == 400 || status == 404 || status == 405, "{method} {path}: {status}");
        }
    }
    let escaped: Vec<_> = std::fs::read_dir(h._dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(
        escaped.iter().all(|n| ["audio", "lanyard.db", "lanyard.db-wal", "lanyard.db-shm", "push-sink.jsonl"]
            .contains(&n.to_str().unwrap())),
        "{escaped:?}"
    );

    // JSON nested 100,000 deep, and JSON that is not JSON: 400, no crash.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for body in [deep.clone(), format!("{{\"text\": {deep}}}"), "{\"text\": \"unterminated".into(), "\u{0}".into()] {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/utterances/{}/text", h.url, Uuid::now_v7()))
            .bearer_auth(&h.token_a)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    let r = reqwest::Client::new()
        .put(format!("{}/v1/device/push", h.url))
        .bearer_auth(&h.token_a)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(healthz(&h).await < Duration::from_secs(5), "the server still answers");

    // Tokens: none, malformed, unknown, another scheme, the admin route's.
    let a_id = {
        let id = Uuid::now_v7();
        let (status, _) =
            call(&h, Method::POST, &format!("/v1/utterances/{id}/text"), Some(serde_json::json!({"text": "mine"})))
                .await;
        assert_eq!(status, 202);
        id
    };
    for auth in [
        None,
        Some("Bearer"),
        Some("Bearer lyd_not-a-token"),
        Some("Basic YTpi"),
        Some(&*format!("bearer {}", h.token_a)),
    ] {
        let mut req = reqwest::Client::new().get(format!("{}/v1/utterances/{a_id}", h.url));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        match tokio_tungstenite::connect_async(h.ws_request(auth)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401, "{auth:?}"),
            other => panic!("stream with {auth:?}: {:?}", other.map(|_| ())),
        }
    }
    // Swapped: B's token on A's utterance answers as an unknown id does.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/utterances/{a_id}", h.url))
        .bearer_auth(&h.token_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A device token on an admin route: 401 or 404 (admin off), never 2xx.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/admin/devices", h.url))
        .bearer_auth(&h.token_a)
        .json(&serde_json::json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert!(!r.status().is_success(), "{}", r.status());
    h.server.stop().await;
}

/// WebSocket protocol violations close the stream with their code and hold
/// nothing: binary garbage, audio for a handle never opened, text where
/// audio goes, a control message that is not JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_protocol_violations_close_the_stream() {
    let h = harness().await;
    let cases: Vec<Message> = vec![
        Message::binary(vec![0xFFu8; 12]),
        Message::binary(lanyard_proto::wire::encode_audio(&lanyard_proto::wire::Audio {
            handle: 9,
            seq: 0,
            frame: &[0; 640],
        })),
        Message::binary(Vec::<u8>::new()),
        Message::text("not json"),
        Message::text("{\"type\":\"open\",\"utterance\":\"x\",\"handle\":1,\"codec\":\"pcm16k\"}"),
        Message::text(
            serde_json::to_string(&ClientMsg::End { utterance: Uuid::now_v7(), frames: 0, speech_frames: None })
                .unwrap(),
        ),
    ];
    for (i, m) in cases.into_iter().enumerate() {
        let mut ws = h.ws(&h.token_a).await;
        ws.send(m).await.unwrap();
        assert_eq!(expect_close(&mut ws).await, close::PROTOCOL, "case {i}");
    }
    // The device's stream slots were all given back.
    let mut ws = h.ws(&h.token_a).await;
    send_text(
        &mut ws,
        &ClientMsg::Open { utterance: Uuid::now_v7(), handle: 1, codec: Codec::Pcm16k, unmarked: false },
    )
    .await;
    expect_opened(&mut ws).await;
    h.server.stop().await;
}

/// A PCM16 upload is limited by the seconds it holds (32,000 bytes a
/// second, 10 minutes), not by the Ogg Opus body limit, which a long PCM16
/// utterance handed off to a background upload used to exceed; and a device
/// holds at most two upload bodies in the server's memory at once.
#[tokio::test]
async fn a_pcm16_upload_is_limited_by_its_seconds_and_a_device_by_two_uploads_at_once() {
    use lanyard_proto::wire::limits;
    let h = harness().await;
    let client = reqwest::Client::new();
    let put = |body: Vec<u8>| {
        client
            .put(format!("{}/v1/utterances/{}/audio", h.url, Uuid::now_v7()))
            .bearer_auth(&h.token_a)
            .header("content-type", "audio/wav")
            .body(body)
            .send()
    };
    // 150 s of PCM16: 4.8 MB, over the Ogg limit, well within its own.
    let silence = vec![0u8; 640];
    let long = lanyard_proto::wav::write(std::iter::repeat_n(silence.as_slice(), 150 * 50));
    assert!(long.len() > limits::MAX_UPLOAD_BYTES);
    let resp = put(long).await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    // Past 10 minutes of PCM16: refused before it is all read, saying why.
    let resp = put(vec![0; limits::MAX_WAV_UPLOAD_BYTES + 1]).await.unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("10 minutes"), "{body}");

    // Two uploads whose bodies are still coming hold the device's slots...
    let addr = h.url.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..limits::MAX_UPLOADS_PER_DEVICE {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "PUT /v1/utterances/{}/audio HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
             content-type: audio/wav\r\ncontent-length: 1000000\r\n\r\n",
            Uuid::now_v7(),
            h.token_a
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&[0u8; 1000]).await.unwrap();
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
            panic!("a slow upload was answered before its body came: {:?}", String::from_utf8_lossy(&buf[..n]));
        }
        slow.push(tcp);
    }
    // ...so a third is refused, and another device is not affected.
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let resp = put(lanyard_proto::wav::write([silence.as_slice()])).await.unwrap();
            if resp.status() == 429 {
                break resp.json::<serde_json::Value>().await.unwrap();
            }
            // The slow uploads' handlers may not have started yet.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a third upload at once is refused");
    assert_eq!(refused["code"], "too_many_uploads", "{refused}");
    let other = client
        .put(format!("{}/v1/utterances/{}/audio", h.url, Uuid::now_v7()))
        .bearer_auth(&h.token_b)
        .header("content-type", "audio/wav")
        .body(lanyard_proto::wav::write([silence.as_slice()]))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    drop(slow);
}
