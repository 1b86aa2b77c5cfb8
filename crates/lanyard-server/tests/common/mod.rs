//! The harness the server's socket tests share: a real server on
//! 127.0.0.1:0 with the real Whisper model, two devices, and helpers that
//! speak the stream protocol byte by byte.

#![allow(dead_code, unused_imports)]

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use lanyard_audio::{FRAME_SAMPLES, FrameEncoder};
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{
    self, Ack, Audio, Binary, ClientMsg, ServerMsg, UploadResponse, UtteranceState, close, limits,
};
use lanyard_proto::{Uuid, oggopus};
use lanyard_server::{ServerConfig, ServerHandle, auth};
use lanyard_store::Store;
pub use lanyard_testkit::model_dir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Harness {
    pub _dir: tempfile::TempDir,
    pub server: ServerHandle,
    pub store: Arc<dyn Store>,
    pub token_a: String,
    pub token_b: String,
    pub url: String,
}

pub async fn harness() -> Harness {
    harness_with(|_| {}).await
}

/// A harness whose server config `tweak` adjusts (limits, the admin token).
pub async fn harness_with(tweak: impl FnOnce(&mut ServerConfig)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(([127, 0, 0, 1], 0).into(), dir.path().to_owned());
    tweak(&mut cfg);
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
    pub async fn ws(&self, token: &str) -> Ws {
        tokio_tungstenite::connect_async(self.ws_request(Some(&format!("Bearer {token}")))).await.unwrap().0
    }

    /// The stream's upgrade request, with `authorization` as given (none,
    /// or any value, for the tests that send bad ones).
    pub fn ws_request(
        &self,
        authorization: Option<&str>,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let mut req = format!("ws://{}{}", self.server.addr, wire::STREAM_PATH).into_client_request().unwrap();
        if let Some(a) = authorization {
            req.headers_mut().insert("authorization", a.parse().unwrap());
        }
        req
    }

    pub async fn wait_state(&self, id: Uuid, want: UtteranceState) -> lanyard_store::Utterance {
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
pub fn speech_frames(text: &str) -> Vec<Vec<u8>> {
    opus_frames(&lanyard_pendant::speech::synthesize(text, &Default::default()).unwrap())
}

/// 16 kHz samples as Opus 20 ms frames, the last padded with silence.
pub fn opus_frames(pcm: &[i16]) -> Vec<Vec<u8>> {
    let mut enc = FrameEncoder::new(Codec::Opus16k20ms).unwrap();
    pcm.chunks(FRAME_SAMPLES)
        .map(|c| {
            let mut b = c.to_vec();
            b.resize(FRAME_SAMPLES, 0);
            enc.encode(&b).unwrap()
        })
        .collect()
}

/// A counter's value in a Prometheus scrape (summed over label sets that
/// match `name` exactly, labels included).
pub async fn counter(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

pub async fn send_text(ws: &mut Ws, msg: &ClientMsg) {
    ws.send(Message::text(msg.to_json())).await.unwrap();
}

pub async fn send_audio(ws: &mut Ws, handle: u32, seq: u32, frame: &[u8]) {
    ws.send(Message::binary(wire::encode_audio(&Audio { handle, seq, frame }))).await.unwrap();
}

#[derive(Debug)]
pub enum In {
    Text(ServerMsg),
    Ack(Ack),
    Close(u16, String),
}

/// The next message, partial transcripts and endpoints skipped: the server
/// sends them as its drafts agree and its VAD hears pauses, which most tests
/// do not follow (`streaming.rs` does).
pub async fn recv(ws: &mut Ws) -> In {
    loop {
        match recv_any(ws).await {
            In::Text(ServerMsg::Partial { .. } | ServerMsg::Endpoint { .. }) => continue,
            other => return other,
        }
    }
}

/// The next message, partial transcripts included.
pub async fn recv_any(ws: &mut Ws) -> In {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("server answers").expect("open");
        match m.unwrap() {
            Message::Text(t) => return In::Text(wire::parse_server_text(&t).unwrap()),
            Message::Binary(b) => match wire::parse_binary(&b).unwrap() {
                Binary::Ack(a) => return In::Ack(a),
                Binary::Audio(_) => panic!("server sent audio"),
            },
            Message::Close(f) => {
                return f.map_or((1005, String::new()).into(), |f| In::Close(f.code.into(), f.reason.to_string()));
            }
            _ => {}
        }
    }
}

impl From<(u16, String)> for In {
    fn from((c, r): (u16, String)) -> Self {
        In::Close(c, r)
    }
}

/// Reads until `opened`. Results of the device's other utterances (a final
/// or a reply of one posted earlier) may come down the stream first.
pub async fn expect_opened(ws: &mut Ws) -> (u32, bool) {
    loop {
        match recv(ws).await {
            In::Text(ServerMsg::Opened { next_seq, complete, .. }) => return (next_seq, complete),
            In::Text(ServerMsg::Final { .. } | ServerMsg::Reply { .. }) => {}
            In::Text(other) => panic!("expected opened, got {other:?}"),
            In::Ack(a) => panic!("expected opened, got an ack {a:?}"),
            In::Close(c, r) => panic!("expected opened, the server closed {c} {r}"),
        }
    }
}

/// Reads until the ack covers `next`.
pub async fn expect_ack(ws: &mut Ws, next: u32) {
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

pub async fn expect_close(ws: &mut Ws) -> u16 {
    loop {
        if let In::Close(code, _) = recv(ws).await {
            return code;
        }
    }
}

impl Harness {
    pub fn server_audio(&self, device: Uuid, id: Uuid, n: u32) -> Vec<Vec<u8>> {
        lanyard_server::AudioStore::new(self._dir.path().join("audio")).unwrap().read(device, id, n).unwrap()
    }
}

/// A `multipart/form-data` body: the file part (if any), then text fields.
pub fn multipart(file: Option<&[u8]>, fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "lanyard-test-boundary-7f3a9c";
    let mut body = Vec::new();
    if let Some(file) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(b"\r\n");
    }
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
