//! The server's wire behaviour, spoken byte by byte over real sockets: the
//! server runs in-process on 127.0.0.1:0 with the real Whisper model.
//!
//! Covers durable acks and resume without duplicates, stream + upload
//! processed once, auth and isolation between devices, and the limits with
//! their close codes and HTTP statuses. The harness is in `common`; the
//! HTTP API beyond streaming and uploads is tested in `api.rs`.

mod common;

use common::*;
use futures::SinkExt;
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{self, ClientMsg, ServerMsg, UploadResponse, UtteranceState, close, limits};
use lanyard_proto::{Uuid, oggopus};
use lanyard_server::auth;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_stream_stores_no_frame_twice_and_is_transcribed_once() {
    let h = harness().await;
    let frames = speech_frames("Turn off the lights in the kitchen please.");
    let id = Uuid::now_v7();

    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
    assert_eq!(expect_opened(&mut ws).await, (0, false));
    for (i, f) in frames[..60].iter().enumerate() {
        send_audio(&mut ws, 1, i as u32, f).await;
    }
    expect_ack(&mut ws, 60).await;
    // The connection breaks.
    drop(ws);

    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 9, codec: Codec::Opus16k20ms, unmarked: false }).await;
    assert_eq!(expect_opened(&mut ws).await, (60, false), "resume from the last durable frame");
    // A client that resends a little too much: the duplicates are dropped.
    for (i, f) in frames.iter().enumerate().skip(50) {
        send_audio(&mut ws, 9, i as u32, f).await;
    }
    let n = frames.len() as u32;
    expect_ack(&mut ws, n).await;
    send_text(&mut ws, &ClientMsg::End { utterance: id, frames: n, speech_frames: None }).await;
    let mut got_final = None;
    loop {
        match recv(&mut ws).await {
            In::Text(ServerMsg::Complete { frames, .. }) => assert_eq!(frames, n),
            In::Text(ServerMsg::Final { text, segments, .. }) => {
                assert!(text.to_lowercase().contains("kitchen"), "{text}");
                // The final carries its timed segments: they make the text,
                // in order, within the utterance's audio.
                let joined: Vec<&str> = segments.iter().map(|s| s.text.as_str()).collect();
                assert_eq!(joined.join(" "), text, "{segments:?}");
                let mut last = 0.0;
                for s in &segments {
                    assert!(last <= s.start && s.start <= s.end && s.end <= n as f32 * 0.02 + 0.01, "{segments:?}");
                    last = s.start;
                }
                got_final = Some(segments);
            }
            In::Text(ServerMsg::Reply { body, .. }) => {
                assert!(got_final.is_some(), "the final transcript precedes the reply");
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
    assert_eq!(Some(u.segments), got_final, "the store holds the segments the relay was sent");
    // The file holds each frame once, in order.
    let device = h.store.device_by_token_hash(&auth::hash_token(&h.token_a)).await.unwrap().unwrap();
    let stored = h.server_audio(device.id, id, n);
    assert_eq!(stored, frames);
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_streamed_then_uploaded_is_processed_once() {
    let h = harness().await;
    let frames = speech_frames("Call the dentist on Monday.");
    let id = Uuid::now_v7();
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
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
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
    assert_eq!(expect_opened(&mut ws).await, (frames.len() as u32, true));
    h.server.stop().await;
}

/// A relay that cut an utterance at the server's endpoint carried the frames
/// after the cut into its next utterance, so the server transcribes only the
/// frames before it (`speech_frames`), by stream and by upload alike, and
/// still holds them all. A cut past the frames is refused, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_utterance_cut_at_an_endpoint_is_transcribed_up_to_the_cut() {
    let h = harness().await;
    let say = |text| lanyard_pendant::speech::synthesize(text, &Default::default()).unwrap();
    let mut pcm = say("Turn off the lights in the kitchen please.");
    pcm.extend(std::iter::repeat_n(0i16, 16_000));
    let cut = pcm.len().div_ceil(320) as u32;
    pcm.extend(say("What will the weather be tomorrow?"));
    let frames = opus_frames(&pcm);
    let n = frames.len() as u32;

    let id = Uuid::now_v7();
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
    expect_opened(&mut ws).await;
    for (i, f) in frames.iter().enumerate() {
        send_audio(&mut ws, 1, i as u32, f).await;
    }
    send_text(&mut ws, &ClientMsg::End { utterance: id, frames: n, speech_frames: Some(n + 1) }).await;
    send_text(&mut ws, &ClientMsg::End { utterance: id, frames: n, speech_frames: Some(cut) }).await;
    let mut refused = false;
    let text = loop {
        match recv(&mut ws).await {
            In::Text(ServerMsg::Error { code, message, .. }) => {
                assert_eq!(code, "frame_count", "{message}");
                assert!(message.contains("speech_frames"), "{message}");
                refused = true;
            }
            In::Text(ServerMsg::Final { text, .. }) => break text,
            In::Text(ServerMsg::Complete { frames, .. }) => assert_eq!(frames, n),
            In::Text(ServerMsg::Endpoint { .. } | ServerMsg::Partial { .. }) | In::Ack(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(refused, "a cut past the frames is an error");
    let lower = text.to_lowercase();
    assert!(lower.contains("kitchen") && !lower.contains("weather"), "only the speech before the cut: {text:?}");
    let u = h.wait_state(id, UtteranceState::Replied).await;
    assert_eq!((u.frames, u.speech_frames), (n, Some(cut)), "every frame is held");
    drop(ws);

    // The same, handed off to a background upload.
    let id = Uuid::now_v7();
    let ogg = oggopus::write(7, frames.iter().map(Vec::as_slice));
    let client = reqwest::Client::new();
    let put = |query: String| {
        client
            .put(format!("{}/v1/utterances/{id}/audio{query}", h.url))
            .bearer_auth(&h.token_a)
            .header("content-type", "audio/ogg")
            .body(ogg.clone())
            .send()
    };
    let over = put(format!("?speech_frames={}", n + 1)).await.unwrap();
    assert_eq!(over.status(), 400);
    assert!(over.text().await.unwrap().contains("speech_frames"));
    assert_eq!(put("?frames=3".into()).await.unwrap().status(), 400, "an unknown parameter is refused");
    let r: UploadResponse =
        put(format!("?speech_frames={cut}")).await.unwrap().error_for_status().unwrap().json().await.unwrap();
    assert_eq!(r.frames, n);
    let u = h.wait_state(id, UtteranceState::Replied).await;
    let lower = u.transcript.clone().unwrap().to_lowercase();
    assert!(lower.contains("kitchen") && !lower.contains("weather"), "{:?}", u.transcript);
    assert_eq!(u.speech_frames, Some(cut));
    h.server.stop().await;
}

/// After an OS crash inside its fsync window, a phone's spool can hold fewer
/// frames of an utterance than it streamed and the server acknowledged. Its
/// background upload of what it still has completes the utterance with the
/// server's longer copy, answered once, instead of being refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_shorter_than_the_acknowledged_audio_completes_with_the_servers_copy() {
    let h = harness().await;
    let frames = speech_frames("Call the dentist on Monday.");
    let n = frames.len() as u32;
    let id = Uuid::now_v7();
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
    expect_opened(&mut ws).await;
    for (i, f) in frames.iter().enumerate() {
        send_audio(&mut ws, 1, i as u32, f).await;
    }
    // Partial transcripts may come before the last ack.
    loop {
        match recv(&mut ws).await {
            In::Ack(a) if a.next == n => break,
            In::Ack(_) | In::Text(_) => {}
            In::Close(c, r) => panic!("closed {c} {r}"),
        }
    }
    drop(ws);

    let ogg = oggopus::write(7, frames[..n as usize / 2].iter().map(Vec::as_slice));
    let resp = reqwest::Client::new()
        .put(format!("{}/v1/utterances/{id}/audio", h.url))
        .bearer_auth(&h.token_a)
        .header("content-type", "audio/ogg")
        .body(ogg)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r: UploadResponse = resp.json().await.unwrap();
    assert_eq!((r.frames, r.added), (n, 0), "the utterance is the server's whole copy");

    let u = h.wait_state(id, UtteranceState::Replied).await;
    assert_eq!(u.frames, n);
    assert!(u.transcript.unwrap().to_lowercase().contains("monday"), "the second half, not uploaded, is transcribed");
    assert_eq!(h.store.transcript_writes(id).await.unwrap(), 1);
    h.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_cannot_see_each_other() {
    let h = harness().await;
    let id = Uuid::now_v7();
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
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
    send_text(&mut ws_b, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false })
        .await;
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
    // This test sends an utterance's worth of frames as fast as it can; the
    // frame rate limit has its own test (tests/api.rs).
    let h = harness_with(|cfg| {
        cfg.limits.frames_per_sec = 1e9;
        cfg.limits.frame_burst = 1e9;
    })
    .await;
    // A frame over the size limit.
    let mut ws = h.ws(&h.token_a).await;
    send_text(
        &mut ws,
        &ClientMsg::Open { utterance: Uuid::now_v7(), handle: 1, codec: Codec::Opus16k20ms, unmarked: false },
    )
    .await;
    expect_opened(&mut ws).await;
    send_audio(&mut ws, 1, 0, &vec![0u8; limits::MAX_FRAME_BYTES + 1]).await;
    assert_eq!(expect_close(&mut ws).await, close::FRAME_TOO_LARGE);

    // A frame that skips ahead breaks the no-gaps rule.
    let mut ws = h.ws(&h.token_a).await;
    send_text(
        &mut ws,
        &ClientMsg::Open { utterance: Uuid::now_v7(), handle: 1, codec: Codec::Opus16k20ms, unmarked: false },
    )
    .await;
    expect_opened(&mut ws).await;
    send_audio(&mut ws, 1, 5, b"x").await;
    assert_eq!(expect_close(&mut ws).await, close::PROTOCOL);

    // Too many utterances open on one connection.
    let mut ws = h.ws(&h.token_a).await;
    for handle in 0..=limits::MAX_OPEN_UTTERANCES as u32 {
        send_text(
            &mut ws,
            &ClientMsg::Open { utterance: Uuid::now_v7(), handle, codec: Codec::Opus16k20ms, unmarked: false },
        )
        .await;
    }
    for _ in 0..limits::MAX_OPEN_UTTERANCES {
        expect_opened(&mut ws).await;
    }
    assert_eq!(expect_close(&mut ws).await, close::TOO_MANY_STREAMS);

    // An utterance past its length limit.
    let mut ws = h.ws(&h.token_a).await;
    send_text(
        &mut ws,
        &ClientMsg::Open { utterance: Uuid::now_v7(), handle: 1, codec: Codec::Pcm16k, unmarked: false },
    )
    .await;
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

/// An Omi pendant in a quiet room: its relay opens utterances itself
/// (`unmarked`) and ends them at the server's endpoint or the frame limit,
/// so one may hold nothing but silence. That one is stored, completed (the
/// relay may drop its copy) and counted, and nobody is answered. A silent
/// utterance the user opened with the button is still answered "I didn't
/// catch anything", and an upload that says `unmarked=1` is treated as the
/// stream's `open` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_unmarked_utterance_is_stored_and_counted_but_not_answered() {
    const SILENT: &str = "lanyard_silent_utterances_total";
    let h = harness().await;
    let silence = opus_frames(&[0; 16_000 * 3]);
    let n = silence.len() as u32;
    let counted = counter(&h.url, SILENT).await;
    let mut ws = h.ws(&h.token_a).await;
    let stream = async |ws: &mut Ws, id: Uuid, handle: u32, unmarked: bool| {
        send_text(ws, &ClientMsg::Open { utterance: id, handle, codec: Codec::Opus16k20ms, unmarked }).await;
        assert_eq!(expect_opened(ws).await, (0, false));
        for (i, f) in silence.iter().enumerate() {
            send_audio(ws, handle, i as u32, f).await;
        }
        expect_ack(ws, n).await;
        send_text(ws, &ClientMsg::End { utterance: id, frames: n, speech_frames: None }).await;
    };

    // Streamed, unmarked: complete, then an empty final, and no reply.
    let quiet = Uuid::now_v7();
    stream(&mut ws, quiet, 1, true).await;
    let mut completed = false;
    loop {
        match recv(&mut ws).await {
            In::Text(ServerMsg::Complete { utterance, frames }) => {
                assert_eq!((utterance, frames), (quiet, n), "the relay may delete its copy");
                completed = true;
            }
            In::Text(ServerMsg::Final { utterance, text, segments }) => {
                assert_eq!((utterance, text.as_str(), segments.len()), (quiet, "", 0));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(completed);

    // Marked (the user pressed the button): answered although nothing was
    // heard. The silent one's reply, were there one, would come meanwhile.
    let pressed = Uuid::now_v7();
    stream(&mut ws, pressed, 2, false).await;
    loop {
        match recv(&mut ws).await {
            In::Text(ServerMsg::Complete { utterance, .. } | ServerMsg::Final { utterance, .. }) => {
                assert_eq!(utterance, pressed)
            }
            In::Text(ServerMsg::Reply { utterance, body, .. }) => {
                assert_eq!((utterance, body.as_str()), (pressed, lanyard_respond::builtin::NOTHING_HEARD));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    h.wait_state(pressed, UtteranceState::Replied).await;

    // Uploaded, unmarked: the same. A flag other than 0 or 1 is refused.
    let upload = |id: Uuid, query: &'static str| {
        let ogg = oggopus::write(7, silence.iter().map(Vec::as_slice));
        reqwest::Client::new()
            .put(format!("{}/v1/utterances/{id}/audio{query}", h.url))
            .bearer_auth(&h.token_a)
            .header("content-type", "audio/ogg")
            .body(ogg)
            .send()
    };
    let uploaded = Uuid::now_v7();
    assert_eq!(upload(uploaded, "?unmarked=2").await.unwrap().status(), 400);
    let r = upload(uploaded, "?expires_ms=99999999999999&unmarked=1").await.unwrap();
    assert_eq!(r.status(), 200);
    let r: UploadResponse = r.json().await.unwrap();
    assert_eq!(r.frames, n);
    match recv(&mut ws).await {
        In::Text(ServerMsg::Final { utterance, text, .. }) => assert_eq!((utterance, text.as_str()), (uploaded, "")),
        other => panic!("unexpected {other:?}"),
    }

    // Both counted, once each; once counted, their processing is over.
    for _ in 0..200 {
        if counter(&h.url, SILENT).await >= counted + 2.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(counter(&h.url, SILENT).await, counted + 2.0);
    for id in [quiet, uploaded] {
        let u = h.store.utterance(id).await.unwrap().unwrap();
        assert_eq!((u.state, u.frames, u.transcript.as_deref()), (UtteranceState::Transcribed, n, Some("")));
        assert!(u.unmarked && u.silent(), "{u:?}");
        assert_eq!((u.reply_title, u.reply_body, u.error), (None, None, None));
        assert_eq!(h.store.push_request(id).await.unwrap(), None);
        assert_eq!(h.store.transcript_writes(id).await.unwrap(), 1);
        // The device's view: transcribed as nothing, and no reply.
        let view: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/v1/utterances/{id}", h.url))
            .bearer_auth(&h.token_a)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (&view["state"], &view["transcript"], &view["reply_body"]),
            (&"transcribed".into(), &"".into(), &serde_json::Value::Null)
        );
    }
    // A restarted server does not take them up again.
    let unfinished = h.store.unfinished().await.unwrap();
    assert!(!unfinished.contains(&quiet) && !unfinished.contains(&uploaded), "{unfinished:?}");
    h.server.stop().await;
}
