//! The HTTP API beyond streaming, over real sockets against the in-process
//! server: listing and deletion, the admin API, isolation between devices on
//! every device route, `/metrics`, `/openapi.json`, and the per-device
//! limits with their close codes and HTTP statuses.

mod common;

use std::time::Duration;

use common::*;
use lanyard_proto::Uuid;
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{
    self, ClientMsg, DeletedData, DeviceCreated, PushPlatform, ServerMsg, UtteranceList, UtteranceState, UtteranceView,
    close,
};
use lanyard_server::auth;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The admin token of the tests that turn the admin API on.
const ADMIN: &str = "lya_test-admin-token-of-at-least-32-chars";

impl Harness {
    fn http(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let req = reqwest::Client::new().request(method, format!("{}{path}", self.url));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn device_id(&self, token: &str) -> Uuid {
        self.store.device_by_token_hash(&auth::hash_token(token)).await.unwrap().unwrap().id
    }

    async fn post_text(&self, token: &str, id: Uuid, text: &str) -> reqwest::Response {
        self.http(Method::POST, &format!("/v1/utterances/{id}/text"), Some(token))
            .json(&json!({ "text": text }))
            .send()
            .await
            .unwrap()
    }

    async fn list(&self, token: &str, query: &str) -> UtteranceList {
        let resp = self.http(Method::GET, &format!("/v1/utterances{query}"), Some(token)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        resp.json().await.unwrap()
    }

    /// Opens an utterance on a new stream, makes `frames` frames durable,
    /// and leaves it receiving. Returns the stream, still open.
    async fn stream_frames(&self, token: &str, id: Uuid, frames: u32) -> Ws {
        let mut ws = self.ws(token).await;
        send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Pcm16k, unmarked: false }).await;
        assert_eq!(expect_opened(&mut ws).await, (0, false));
        for seq in 0..frames {
            send_audio(&mut ws, 1, seq, &[0u8; 640]).await;
        }
        // Replies to the device's other utterances may come down this
        // stream too; only the ack matters here.
        loop {
            match recv(&mut ws).await {
                In::Ack(a) if a.next == frames => return ws,
                In::Close(c, r) => panic!("closed {c} {r}"),
                _ => {}
            }
        }
    }

    fn audio_path(&self, device: Uuid, id: Uuid) -> std::path::PathBuf {
        self._dir.path().join("audio").join(device.to_string()).join(format!("{id}.frames"))
    }
}

async fn error_code(resp: reqwest::Response) -> (StatusCode, String, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    (status, body["code"].as_str().unwrap().to_string(), body["message"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_newest_first_and_deletes_remove_rows_and_audio() {
    let h = harness().await;
    let a = h.device_id(&h.token_a).await;
    // Five text utterances and one with audio on disk, all A's; one of B's.
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = Uuid::now_v7();
        assert_eq!(h.post_text(&h.token_a, id, &format!("note {i}")).await.status(), 202);
        ids.push(id);
    }
    let audio_id = Uuid::now_v7();
    drop(h.stream_frames(&h.token_a, audio_id, 3).await);
    ids.push(audio_id);
    let b_id = Uuid::now_v7();
    assert_eq!(h.post_text(&h.token_b, b_id, "b's note").await.status(), 202);
    ids.reverse(); // newest first

    // Pages of two, chained by next_before, until null.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_string();
    loop {
        let page = h.list(&h.token_a, &query).await;
        assert!(page.utterances.len() <= 2);
        seen.extend(page.utterances.iter().map(|u| u.id));
        match page.next_before {
            Some(before) => query = format!("?limit=2&before={before}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every utterance once, newest first, none of B's");
    let all = h.list(&h.token_a, "").await;
    assert_eq!(all.utterances.iter().map(|u| u.id).collect::<Vec<_>>(), ids, "default limit covers six");
    assert_eq!(all.next_before, None);
    assert_eq!(all.utterances[0].state, UtteranceState::Receiving);
    // Bad queries: 400 with a JSON body that says what the query takes.
    for bad in ["?limit=0", "?limit=201", "?limit=x", "?before=nope", "?page=2"] {
        let resp = h.http(Method::GET, &format!("/v1/utterances{bad}"), Some(&h.token_a)).send().await.unwrap();
        let (status, code, _) = error_code(resp).await;
        assert_eq!((status.as_u16(), code.as_str()), (400, "bad_request"), "{bad}");
    }
    let top = h.list(&h.token_a, "?limit=200").await;
    assert_eq!(top.utterances.len(), 6);

    // Deleting one utterance removes its row and its audio file.
    let path = h.audio_path(a, audio_id);
    assert!(path.exists());
    let del = |id: Uuid, token: &str| h.http(Method::DELETE, &format!("/v1/utterances/{id}"), Some(token)).send();
    assert_eq!(del(audio_id, &h.token_a).await.unwrap().status(), 204);
    assert!(!path.exists(), "the audio file is gone");
    assert_eq!(h.store.utterance(audio_id).await.unwrap(), None);
    let resp = h.http(Method::GET, &format!("/v1/utterances/{audio_id}"), Some(&h.token_a)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(del(audio_id, &h.token_a).await.unwrap().status(), 404, "deleted twice");
    assert_eq!(h.list(&h.token_a, "").await.utterances.len(), 5);

    // The device's data: everything of A's, counted; the device stays.
    let audio2 = Uuid::now_v7();
    drop(h.stream_frames(&h.token_a, audio2, 2).await);
    let resp = h.http(Method::DELETE, "/v1/device/data", Some(&h.token_a)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let deleted: DeletedData = resp.json().await.unwrap();
    assert_eq!(deleted, DeletedData { utterances: 6, audio_files: 1 });
    assert!(!h._dir.path().join("audio").join(a.to_string()).exists());
    let after = h.list(&h.token_a, "").await;
    assert!(after.utterances.is_empty() && after.next_before.is_none());
    // The token still works, and new utterances are taken.
    assert_eq!(h.post_text(&h.token_a, Uuid::now_v7(), "again").await.status(), 202);
    // B's utterance was not touched.
    assert!(h.store.utterance(b_id).await.unwrap().is_some());
    assert_eq!(h.list(&h.token_b, "").await.utterances.len(), 1);
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_route_keeps_devices_apart() {
    let h = harness().await;
    let (a, b) = (h.device_id(&h.token_a).await, h.device_id(&h.token_b).await);
    // A has an audio utterance (with a file) and a text one, and a push target.
    let a_audio = Uuid::now_v7();
    drop(h.stream_frames(&h.token_a, a_audio, 3).await);
    let a_text = Uuid::now_v7();
    assert_eq!(h.post_text(&h.token_a, a_text, "lights on").await.status(), 202);
    let reg = json!({ "platform": "fcm", "token": "a-fcm-token" });
    let resp = h.http(Method::PUT, "/v1/device/push", Some(&h.token_a)).json(&reg).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let a_row = h.store.utterance(a_audio).await.unwrap().unwrap();

    for id in [a_audio, a_text] {
        // GET: 404, the same answer as for an id that does not exist.
        let resp = h.http(Method::GET, &format!("/v1/utterances/{id}"), Some(&h.token_b)).send().await.unwrap();
        assert_eq!(error_code(resp).await.1, "not_found");
        let resp = h.http(Method::GET, &format!("/v1/utterances/{}", Uuid::now_v7()), Some(&h.token_b));
        assert_eq!(resp.send().await.unwrap().status(), 404);
        // DELETE: 404, and nothing is deleted.
        let resp = h.http(Method::DELETE, &format!("/v1/utterances/{id}"), Some(&h.token_b)).send().await.unwrap();
        assert_eq!(error_code(resp).await.1, "not_found");
        assert!(h.store.utterance(id).await.unwrap().is_some());
        // Upload into it: 404.
        let wav = lanyard_proto::wav::write([&[0u8; 640][..]]);
        let resp = h
            .http(Method::PUT, &format!("/v1/utterances/{id}/audio"), Some(&h.token_b))
            .header("content-type", "audio/wav")
            .body(wav)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        // Text into it: 404.
        assert_eq!(h.post_text(&h.token_b, id, "mine now").await.status(), 404);
        // Stream into it: refused with not_found, and the socket stays usable.
        let mut ws = h.ws(&h.token_b).await;
        send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Pcm16k, unmarked: false }).await;
        match recv(&mut ws).await {
            In::Text(ServerMsg::Error { code, .. }) => assert_eq!(code, "not_found"),
            _ => panic!("expected not_found"),
        }
    }
    // A's audio is as it was: no frame added, the file intact.
    assert_eq!(h.store.utterance(a_audio).await.unwrap().unwrap(), a_row);
    assert!(h.audio_path(a, a_audio).exists());
    assert!(!h.audio_path(b, a_audio).exists(), "B's attempts made no file of their own");
    // B's list and B's data deletion see and touch none of A's.
    assert!(h.list(&h.token_b, "").await.utterances.is_empty());
    let resp = h.http(Method::DELETE, "/v1/device/data", Some(&h.token_b)).send().await.unwrap();
    assert_eq!(resp.json::<DeletedData>().await.unwrap(), DeletedData { utterances: 0, audio_files: 0 });
    assert_eq!(h.list(&h.token_a, "").await.utterances.len(), 2);
    assert!(h.audio_path(a, a_audio).exists());
    // Push registration: A's token is A's. B's reply queues no push (B has
    // no target), and A's reply goes to A's token.
    let b_text = Uuid::now_v7();
    assert_eq!(h.post_text(&h.token_b, b_text, "call mum").await.status(), 202);
    h.wait_state(b_text, UtteranceState::Replied).await;
    assert_eq!(h.store.push_request(b_text).await.unwrap(), None, "B's reply went to A's push token");
    assert_eq!(h.store.device(b).await.unwrap().unwrap().push, None);
    let a_push = h.store.device(a).await.unwrap().unwrap().push.unwrap();
    assert_eq!((a_push.platform, a_push.token.as_str()), (PushPlatform::Fcm, "a-fcm-token"));
    let a_text2 = Uuid::now_v7();
    assert_eq!(h.post_text(&h.token_a, a_text2, "lights off").await.status(), 202);
    h.wait_state(a_text2, UtteranceState::Replied).await;
    let req = h.store.push_request(a_text2).await.unwrap().expect("A's reply queues A's push");
    assert_eq!((req.device_id, req.target.token.as_str()), (a, "a-fcm-token"));
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_off_without_a_token_and_takes_only_the_admin_token() {
    // Off: 404 with a message that says how to turn it on.
    let h = harness().await;
    let resp =
        h.http(Method::POST, "/v1/admin/devices", Some(ADMIN)).json(&json!({ "name": "x" })).send().await.unwrap();
    let (status, code, message) = error_code(resp).await;
    assert_eq!((status.as_u16(), code.as_str()), (404, "admin_disabled"));
    assert!(message.contains("admin_token_hash") && message.contains("LANYARD_ADMIN_TOKEN"), "{message}");
    let resp = h.http(Method::DELETE, &format!("/v1/admin/devices/{}", Uuid::now_v7()), Some(&h.token_a));
    assert_eq!(error_code(resp.send().await.unwrap()).await.1, "admin_disabled");
    // With no token at all, 401 first, as on every route that needs one.
    let resp = h.http(Method::POST, "/v1/admin/devices", None).json(&json!({ "name": "x" })).send().await.unwrap();
    assert_eq!(error_code(resp).await.0.as_u16(), 401);
    h.server.stop().await;

    let h = harness_with(|cfg| cfg.admin_token_hash = Some(auth::hash_token(ADMIN))).await;
    let add = |token: Option<&str>, name: &str| {
        h.http(Method::POST, "/v1/admin/devices", token).json(&json!({ "name": name })).send()
    };
    assert_eq!(add(None, "hall").await.unwrap().status(), 401);
    let (status, code, _) = error_code(add(Some(&h.token_a), "hall").await.unwrap()).await;
    assert_eq!((status.as_u16(), code.as_str()), (403, "forbidden"), "a device token on an admin route");
    assert_eq!(add(Some("lya_wrong"), "hall").await.unwrap().status(), 403);
    assert_eq!(add(Some(ADMIN), "").await.unwrap().status(), 400);
    assert_eq!(add(Some(ADMIN), "a").await.unwrap().status(), 409, "the harness's device a exists");

    let resp = add(Some(ADMIN), "hall").await.unwrap();
    assert_eq!(resp.status(), 201);
    let created: DeviceCreated = resp.json().await.unwrap();
    assert_eq!(created.name, "hall");
    assert!(created.token.starts_with("lyd_"));
    // The new token is a device token: it works on device routes...
    assert_eq!(h.post_text(&created.token, Uuid::now_v7(), "hello").await.status(), 202);
    let mut ws = h.ws(&created.token).await;
    // ...and not on admin routes; the admin token does not work on device routes.
    let resp = h.http(Method::DELETE, &format!("/v1/admin/devices/{}", created.id), Some(&created.token));
    assert_eq!(resp.send().await.unwrap().status(), 403);
    let resp = h.http(Method::GET, "/v1/utterances", Some(ADMIN)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let mut req = format!("ws://{}{}", h.server.addr, wire::STREAM_PATH).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("the admin token opened a stream: {:?}", other.map(|_| ())),
    }

    // Removal: the device, its data and audio; its open stream is closed and
    // its token stops working.
    let audio_id = Uuid::now_v7();
    drop(h.stream_frames(&created.token, audio_id, 2).await);
    let audio_dir = h._dir.path().join("audio").join(created.id.to_string());
    assert!(audio_dir.exists());
    let resp = h.http(Method::DELETE, &format!("/v1/admin/devices/{}", created.id), Some(ADMIN)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<DeletedData>().await.unwrap(), DeletedData { utterances: 2, audio_files: 1 });
    assert_eq!(expect_close(&mut ws).await, close::REVOKED);
    assert!(!audio_dir.exists());
    assert_eq!(h.store.device(created.id).await.unwrap(), None);
    assert_eq!(h.store.utterance(audio_id).await.unwrap(), None);
    let resp = h.http(Method::GET, "/v1/utterances", Some(&created.token)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = h.http(Method::DELETE, &format!("/v1/admin/devices/{}", created.id), Some(ADMIN)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = h.http(Method::DELETE, "/v1/admin/devices/not-a-uuid", Some(ADMIN)).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // The other devices are untouched.
    assert_eq!(h.list(&h.token_a, "").await.next_before, None);
    h.server.stop().await;
}

/// Reads a counter or a histogram's `_count` from a Prometheus scrape; 0
/// when absent.
fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.trim().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_when_an_utterance_is_streamed() {
    let h = harness().await;
    let scrape = || async { h.http(Method::GET, "/metrics", None).send().await.unwrap().text().await.unwrap() };
    let before = scrape().await;
    let frames = speech_frames("What time is it?");
    let n = frames.len() as u32;
    let id = Uuid::now_v7();
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
    expect_opened(&mut ws).await;
    let during = scrape().await;
    assert!(during.contains("lanyard_streams_active"), "{during}");
    for (i, f) in frames.iter().enumerate() {
        send_audio(&mut ws, 1, i as u32, f).await;
    }
    expect_ack(&mut ws, n).await;
    send_text(&mut ws, &ClientMsg::End { utterance: id, frames: n, speech_frames: None }).await;
    h.wait_state(id, UtteranceState::Replied).await;
    let after = scrape().await;
    // Other tests in this process stream too, so each moved by at least ours.
    let moved = |name: &str| sample(&after, name) - sample(&before, name);
    assert!(moved("lanyard_frames_received_total") >= f64::from(n), "{after}");
    assert!(moved("lanyard_time_to_safe_seconds_count") >= 1.0, "{after}");
    assert!(moved("lanyard_ack_latency_seconds_count") >= 1.0, "{after}");
    assert!(moved("lanyard_ttfs_seconds_count") >= 1.0, "{after}");
    assert!(after.contains("lanyard_stt_queue_depth"), "{after}");
    assert!(after.contains("lanyard_ack_latency_seconds_bucket{le=\"0.005\"}"), "histograms have buckets: {after}");
    assert!(!after.contains(&id.to_string()), "no utterance or device ids in metrics");
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_route_the_router_serves() {
    let h = harness_with(|cfg| cfg.admin_token_hash = Some(auth::hash_token(ADMIN))).await;
    let doc: Value = h.http(Method::GET, "/openapi.json", None).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = lanyard_server::routes();
    assert!(routes.len() >= 13, "{routes:?}");
    for (method, path) in &routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in /openapi.json");
        assert!(op["responses"].is_object() && op["summary"].is_string(), "{method} {path}");
        let security = op["security"].as_array().unwrap();
        let scheme = security.first().and_then(|s| s.as_object()).and_then(|s| s.keys().next().cloned());
        let want = if path.starts_with("/v1/admin") {
            Some("admin")
        } else if path.starts_with("/v1/") {
            Some("device")
        } else {
            None
        };
        assert_eq!(scheme.as_deref(), want, "{method} {path}");
        if path.contains("{id}") {
            assert_eq!(op["parameters"][0]["in"], "path", "{method} {path}");
        }
        // Every error response names the error shape.
        for (status, resp) in op["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    resp["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    // Nothing described that is not routed.
    let described: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(described, routes.len());
    assert_eq!(doc["components"]["securitySchemes"]["device"]["scheme"], "bearer");
    // And the router serves each: no route answers the router's own 404
    // (empty body) or 405.
    for (method, path) in &routes {
        let url = path.replace("{id}", &Uuid::now_v7().to_string());
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let token = if path.starts_with("/v1/admin") { ADMIN } else { &h.token_a };
        let resp = h.http(m, &url, Some(token)).send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}");
        assert!(status != 404 || body.contains("\"code\""), "{method} {path} is not routed");
    }
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_device_limits_answer_with_their_codes() {
    let h = harness_with(|cfg| {
        cfg.limits.frames_per_sec = 50.0;
        cfg.limits.frame_burst = 100.0;
        cfg.limits.requests_per_sec = 0.5;
        cfg.limits.request_burst = 3.0;
        cfg.limits.streams_per_device = 2;
    })
    .await;

    // Frames faster than the rate, past the burst: 4004.
    let mut ws = h.ws(&h.token_a).await;
    send_text(
        &mut ws,
        &ClientMsg::Open { utterance: Uuid::now_v7(), handle: 1, codec: Codec::Pcm16k, unmarked: false },
    )
    .await;
    expect_opened(&mut ws).await;
    for seq in 0..400 {
        if futures::SinkExt::send(
            &mut ws,
            tokio_tungstenite::tungstenite::Message::binary(wire::encode_audio(&wire::Audio {
                handle: 1,
                seq,
                frame: &[0u8; 64],
            })),
        )
        .await
        .is_err()
        {
            break;
        }
    }
    assert_eq!(expect_close(&mut ws).await, close::RATE_LIMITED);

    // Simultaneous streams: the third of A's is refused with 429 JSON before
    // the upgrade; B has slots of its own; a closed stream frees its slot.
    let ws1 = h.ws(&h.token_a).await;
    let _ws2 = h.ws(&h.token_a).await;
    let mut req = format!("ws://{}{}", h.server.addr, wire::STREAM_PATH).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", h.token_a).parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 429);
            let body: Value = serde_json::from_slice(r.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "too_many_streams");
        }
        other => panic!("a third stream was accepted: {:?}", other.map(|_| ())),
    }
    let _wsb = h.ws(&h.token_b).await;
    drop(ws1);
    let mut reopened = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut req = format!("ws://{}{}", h.server.addr, wire::STREAM_PATH).into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {}", h.token_a).parse().unwrap());
        if tokio_tungstenite::connect_async(req).await.is_ok() {
            reopened = true;
            break;
        }
    }
    assert!(reopened, "the closed stream's slot was never freed");

    // Uploads and text posts over the request rate: 429 JSON with Retry-After.
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..5 {
        let resp = h.post_text(&h.token_a, Uuid::now_v7(), "hello").await;
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert!(resp.headers().get("retry-after").is_some());
    let (_, code, message) = error_code(resp).await;
    assert_eq!(code, "rate_limited", "{message}");
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 3, "the burst passes: {statuses:?}");
    let wav = lanyard_proto::wav::write([&[0u8; 640][..]]);
    let resp = h
        .http(Method::PUT, &format!("/v1/utterances/{}/audio", Uuid::now_v7()), Some(&h.token_a))
        .header("content-type", "audio/wav")
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429, "uploads share the request rate");
    // Per device: B is not limited by A.
    assert_eq!(h.post_text(&h.token_b, Uuid::now_v7(), "hello").await.status(), 202);
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_is_configurable() {
    let h = harness_with(|cfg| cfg.limits.idle_timeout_secs = 1).await;
    let mut ws = h.ws(&h.token_a).await;
    let started = std::time::Instant::now();
    assert_eq!(expect_close(&mut ws).await, close::IDLE_TIMEOUT);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(10), "{waited:?}");
    // A stream that keeps talking stays open past the timeout.
    let id = Uuid::now_v7();
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Pcm16k, unmarked: false }).await;
    expect_opened(&mut ws).await;
    for seq in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        send_audio(&mut ws, 1, seq, &[0u8; 640]).await;
        expect_ack(&mut ws, seq + 1).await;
    }
    let view: UtteranceView = h
        .http(Method::GET, &format!("/v1/utterances/{id}"), Some(&h.token_a))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view.state, UtteranceState::Receiving);
    h.server.stop().await;
}
