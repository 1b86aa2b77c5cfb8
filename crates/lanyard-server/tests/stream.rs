//! The server's wire behaviour, spoken byte by byte over real sockets: the
//! server runs in-process on 127.0.0.1:0 with the real Whisper model.
//!
//! Covers durable acks and resume without duplicates, stream + upload
//! processed once, auth and isolation between devices, and the limits with
//! their close codes and HTTP statuses.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use lanyard_audio::{FRAME_SAMPLES, FrameEncoder};
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{self, Ack, Audio, Binary, ClientMsg, ServerMsg, UploadResponse, UtteranceState, close, limits};
use lanyard_proto::{Uuid, oggopus};
use lanyard_server::{ServerConfig, ServerHandle, auth};
use lanyard_store::Store;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Harness {
    _dir: tempfile::TempDir,
    server: ServerHandle,
    store: Arc<dyn Store>,
    token_a: String,
    token_b: String,
    url: String,
}

fn model_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("LANYARD_MODEL_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".local/share/lanyard/models/whisper-tiny.en")
    });
    assert!(dir.join("model.bin").exists(), "no model at {}: run scripts/setup", dir.display());
    dir
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::new(([127, 0, 0, 1], 0).into(), dir.path().to_owned());
    let store = lanyard_server::open_store(&cfg).await.unwrap();
    let mut tokens = Vec::new();
    for name in ["a", "b"] {
        let token = auth::mint_token();
        store.add_device(Uuid::now_v7(), name, &auth::hash_token(&token), 0).await.unwrap();
        tokens.push(token);
    }
    let stt = lanyard_stt::WhisperCt2::load(&model_dir(), Default::default()).unwrap();
    let server = lanyard_server::start(cfg, Arc::new(stt)).await.unwrap();
    let url = format!("http://{}", server.addr);
    let token_b = tokens.pop().unwrap();
    let token_a = tokens.pop().unwrap();
    Harness { _dir: dir, server, store, token_a, token_b, url }
}

impl Harness {
    async fn ws(&self, token: &str) -> Ws {
        let mut req = format!("ws://{}{}", self.server.addr, wire::STREAM_PATH).into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    }

    async fn wait_state(&self, id: Uuid, want: UtteranceState) -> lanyard_store::Utterance {
        for _ in 0..600 {
            if let Some(u) = self.store.utterance(id).await.unwrap()
                && u.state == want
            {
                return u;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("utterance {id} never reached {want:?}");
    }
}

/// Real speech, Opus-encoded into 20 ms frames.
fn speech_frames(text: &str) -> Vec<Vec<u8>> {
    let pcm = lanyard_pendant::speech::synthesize(text, &Default::default()).unwrap();
    let mut enc = FrameEncoder::new(Codec::Opus16k20ms).unwrap();
    pcm.chunks(FRAME_SAMPLES)
        .map(|c| {
            let mut b = c.to_vec();
            b.resize(FRAME_SAMPLES, 0);
            enc.encode(&b).unwrap()
        })
        .collect()
}

async fn send_text(ws: &mut Ws, msg: &ClientMsg) {
    ws.send(Message::text(msg.to_json())).await.unwrap();
}

async fn send_audio(ws: &mut Ws, handle: u32, seq: u32, frame: &[u8]) {
    ws.send(Message::binary(wire::encode_audio(&Audio { handle, seq, frame }))).await.unwrap();
}

enum In {
    Text(ServerMsg),
    Ack(Ack),
    Close(u16, String),
}

async fn recv(ws: &mut Ws) -> In {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("server answers").expect("open");
        match m.unwrap() {
            Message::Text(t) => return In::Text(wire::parse_server_text(&t).unwrap()),
            Message::Binary(b) => match wire::parse_binary(&b).unwrap() {
                Binary::Ack(a) => return In::Ack(a),
                Binary::Audio(_) => panic!("server sent audio"),
            },
            Message::Close(f) => return f.map_or((1005, String::new()).into(), |f| In::Close(f.code.into(), f.reason.to_string())),
            _ => {}
        }
    }
}

impl From<(u16, String)> for In {
    fn from((c, r): (u16, String)) -> Self {
        In::Close(c, r)
    }
}

async fn expect_opened(ws: &mut Ws) -> (u32, bool) {
    match recv(ws).await {
        In::Text(ServerMsg::Opened { next_seq, complete, .. }) => (next_seq, complete),
        _ => panic!("expected opened"),
    }
}

/// Reads until the ack covers `next`.
async fn expect_ack(ws: &mut Ws, next: u32) {
    loop {
        match recv(ws).await {
            In::Ack(a) if a.next >= next => {
                assert_eq!(a.next, next, "acks never run ahead of what was sent");
                return;
            }
            In::Ack(_) => {}
            In::Close(c, r) => panic!("closed {c} {r}"),
            In::Text(t) => panic!("unexpected {t:?}"),
        }
    }
}

async fn expect_close(ws: &mut Ws) -> u16 {
    loop {
        if let In::Close(code, _) = recv(ws).await {
            return code;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_stream_stores_no_frame_twice_and_is_transcribed_once() {
    let h = harness().await;
    let frames = speech_frames("Turn off the lights in the kitchen please.");
    let id = Uuid::now_v7();

    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms }).await;
    assert_eq!(expect_opened(&mut ws).await, (0, false));
    for (i, f) in frames[..60].iter().enumerate() {
        send_audio(&mut ws, 1, i as u32, f).await;
    }
    expect_ack(&mut ws, 60).await;
    // The connection breaks.
    drop(ws);

    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 9, codec: Codec::Opus16k20ms }).await;
    assert_eq!(expect_opened(&mut ws).await, (60, false), "resume from the last durable frame");
    // A client that resends a little too much: the duplicates are dropped.
    for (i, f) in frames.iter().enumerate().skip(50) {
        send_audio(&mut ws, 9, i as u32, f).await;
    }
    let n = frames.len() as u32;
    expect_ack(&mut ws, n).await;
    send_text(&mut ws, &ClientMsg::End { utterance: id, frames: n }).await;
    let mut got_final = false;
    loop {
        match recv(&mut ws).await {
            In::Text(ServerMsg::Complete { frames, .. }) => assert_eq!(frames, n),
            In::Text(ServerMsg::Final { text, .. }) => {
                assert!(text.to_lowercase().contains("kitchen"), "{text}");
                got_final = true;
            }
            In::Text(ServerMsg::Reply { body, .. }) => {
                assert!(got_final, "the final transcript precedes the reply");
                assert!(body.to_lowercase().contains("kitchen"), "the reply quotes the transcript: {body}");
                break;
            }
            In::Ack(_) => {}
            other => panic!("unexpected {:?}", matches!(other, In::Close(..))),
        }
    }
    let u = h.wait_state(id, UtteranceState::Replied).await;
    assert_eq!(u.frames, n);
    assert_eq!(h.store.transcript_writes(id).await.unwrap(), 1);
    // The file holds each frame once, in order.
    let device = h.store.device_by_token_hash(&auth::hash_token(&h.token_a)).await.unwrap().unwrap();
    let stored = h.server_audio(device.id, id, n);
    assert_eq!(stored, frames);
    h.server.stop().await;
}

impl Harness {
    fn server_audio(&self, device: Uuid, id: Uuid, n: u32) -> Vec<Vec<u8>> {
        lanyard_server::AudioStore::new(self._dir.path().join("audio")).unwrap().read(device, id, n).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_streamed_then_uploaded_is_processed_once() {
    let h = harness().await;
    let frames = speech_frames("Call the dentist on Monday.");
    let id = Uuid::now_v7();
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms }).await;
    expect_opened(&mut ws).await;
    for (i, f) in frames[..40].iter().enumerate() {
        send_audio(&mut ws, 1, i as u32, f).await;
    }
    expect_ack(&mut ws, 40).await;
    drop(ws);

    // The app is suspended: the rest goes as a background upload of the whole file.
    let ogg = oggopus::write(7, frames.iter().map(Vec::as_slice));
    let client = reqwest::Client::new();
    let put = |token: &str| {
        client
            .put(format!("{}/v1/utterances/{id}/audio", h.url))
            .bearer_auth(token)
            .header("content-type", "audio/ogg")
            .body(ogg.clone())
            .send()
    };
    let r: UploadResponse = put(&h.token_a).await.unwrap().error_for_status().unwrap().json().await.unwrap();
    assert_eq!(r.frames, frames.len() as u32);
    assert_eq!(r.added, frames.len() as u32 - 40, "only the missing frames are appended");
    // iOS retries uploads; a retry changes nothing.
    let again: UploadResponse = put(&h.token_a).await.unwrap().error_for_status().unwrap().json().await.unwrap();
    assert_eq!(again.added, 0);
    // Another device cannot complete or overwrite it.
    assert_eq!(put(&h.token_b).await.unwrap().status(), 404);

    let u = h.wait_state(id, UtteranceState::Replied).await;
    assert!(u.transcript.unwrap().to_lowercase().contains("dentist"));
    assert_eq!(h.store.transcript_writes(id).await.unwrap(), 1);

    // Resuming the stream now is told the utterance is complete.
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms }).await;
    assert_eq!(expect_opened(&mut ws).await, (frames.len() as u32, true));
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_cannot_see_each_other() {
    let h = harness().await;
    let id = Uuid::now_v7();
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms }).await;
    expect_opened(&mut ws).await;

    let client = reqwest::Client::new();
    let get = |token: &str| client.get(format!("{}/v1/utterances/{id}", h.url)).bearer_auth(token).send();
    assert_eq!(get(&h.token_a).await.unwrap().status(), 200);
    let resp = get(&h.token_b).await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    // B cannot stream into A's utterance either.
    let mut ws_b = h.ws(&h.token_b).await;
    send_text(&mut ws_b, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms }).await;
    match recv(&mut ws_b).await {
        In::Text(ServerMsg::Error { code, .. }) => assert_eq!(code, "not_found"),
        _ => panic!("expected an error"),
    }
    // No token, or a wrong one: 401 with a JSON body, before any upgrade.
    let resp = client.get(format!("{}/v1/utterances/{id}", h.url)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = get("lyd_not-a-token").await.unwrap();
    assert_eq!(resp.status(), 401);
    let req = format!("ws://{}{}", h.server.addr, wire::STREAM_PATH).into_client_request().unwrap();
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("unauthenticated stream must be refused, got {:?}", other.map(|_| ())),
    }
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_close_with_their_codes() {
    let h = harness().await;
    // A frame over the size limit.
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: Uuid::now_v7(), handle: 1, codec: Codec::Opus16k20ms }).await;
    expect_opened(&mut ws).await;
    send_audio(&mut ws, 1, 0, &vec![0u8; limits::MAX_FRAME_BYTES + 1]).await;
    assert_eq!(expect_close(&mut ws).await, close::FRAME_TOO_LARGE);

    // A frame that skips ahead breaks the no-gaps rule.
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: Uuid::now_v7(), handle: 1, codec: Codec::Opus16k20ms }).await;
    expect_opened(&mut ws).await;
    send_audio(&mut ws, 1, 5, b"x").await;
    assert_eq!(expect_close(&mut ws).await, close::PROTOCOL);

    // Too many utterances open on one connection.
    let mut ws = h.ws(&h.token_a).await;
    for handle in 0..=limits::MAX_OPEN_UTTERANCES as u32 {
        send_text(&mut ws, &ClientMsg::Open { utterance: Uuid::now_v7(), handle, codec: Codec::Opus16k20ms }).await;
    }
    for _ in 0..limits::MAX_OPEN_UTTERANCES {
        expect_opened(&mut ws).await;
    }
    assert_eq!(expect_close(&mut ws).await, close::TOO_MANY_STREAMS);

    // An utterance past its length limit.
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: Uuid::now_v7(), handle: 1, codec: Codec::Pcm16k }).await;
    expect_opened(&mut ws).await;
    for seq in 0..=limits::MAX_UTTERANCE_FRAMES {
        send_audio(&mut ws, 1, seq, b"\0\0").await;
    }
    assert_eq!(expect_close(&mut ws).await, close::UTTERANCE_TOO_LONG);

    // Garbage JSON.
    let mut ws = h.ws(&h.token_a).await;
    ws.send(Message::text("{\"type\":\"nope\"}")).await.unwrap();
    assert_eq!(expect_close(&mut ws).await, close::PROTOCOL);

    // Uploads: wrong media type, not Ogg, too large.
    let client = reqwest::Client::new();
    let put = |ctype: &'static str, body: Vec<u8>| {
        client
            .put(format!("{}/v1/utterances/{}/audio", h.url, Uuid::now_v7()))
            .bearer_auth(&h.token_a)
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    assert_eq!(put("text/plain", b"hi".to_vec()).await.unwrap().status(), 415);
    let resp = put("audio/ogg", b"not ogg".to_vec()).await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("Ogg"));
    let resp = put("audio/ogg", vec![0; limits::MAX_UPLOAD_BYTES + 1]).await.unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large");
    h.server.stop().await;
}
