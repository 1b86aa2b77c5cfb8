//! The store story: one walk through every [`Store`] method, in the order the
//! server uses them, checking the semantics the trait documents, ending with
//! listing and deletion.
//!
//! [`store_story`] knows only the trait, so that every backend can run the
//! same story (a PostgreSQL one would call it with its own store). It is here
//! rather than in `lanyard-store` because SQLite is the only backend yet; move
//! it there, behind a feature, when a second one arrives.
//!
//! The tests below the story are SQLite's own: the file survives a reopen,
//! the pragmas are in force, and unreadable values are reported as corrupt.

use std::path::Path;
use std::sync::Arc;

use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{PushPlatform, Timings, UtteranceState};
use lanyard_store::{
    Completion, Device, PushEnvironment, PushOutcome, PushStatus, PushTarget, ReplyRecord, Segment, Store, StoreError,
    Word,
};
use lanyard_store_sqlite::SqliteStore;
use sqlx::Connection;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::Barrier;
use uuid::Uuid;

/// What the story left in the store, for a backend that can reopen its data
/// to check that all of it is still there.
struct Written {
    devices: Vec<([u8; 32], Device)>,
    utterances: Vec<Uuid>,
}

/// Concurrent callers in the exactly-once test. More than the file pool's
/// connections, so that some wait for a connection as well as for the lock.
const RACERS: usize = 8;

async fn store_story(store: Arc<dyn Store>) -> Written {
    // --- Devices ---
    let kitchen_hash = [1u8; 32];
    let kitchen = store.add_device(Uuid::now_v7(), "kitchen", &kitchen_hash, 1_000).await.unwrap();
    assert_eq!(kitchen.name, "kitchen");
    assert_eq!(kitchen.created_ms, 1_000);
    assert_eq!((&kitchen.push, &kitchen.push_disabled_reason), (&None, &None));
    assert_eq!(store.device_by_token_hash(&kitchen_hash).await.unwrap(), Some(kitchen.clone()));
    assert_eq!(store.device_by_token_hash(&[9u8; 32]).await.unwrap(), None);

    let dup = store.add_device(Uuid::now_v7(), "kitchen", &[3u8; 32], 1_001).await;
    assert!(matches!(dup, Err(StoreError::DuplicateDeviceName(ref n)) if n == "kitchen"), "{dup:?}");
    assert_eq!(store.device_by_token_hash(&[3u8; 32]).await.unwrap(), None, "the failed add left a row");

    assert_eq!(store.device(kitchen.id).await.unwrap(), Some(kitchen.clone()));
    assert_eq!(store.device(Uuid::now_v7()).await.unwrap(), None);

    let hall_hash = [2u8; 32];
    let hall = store.add_device(Uuid::now_v7(), "hall", &hall_hash, 1_002).await.unwrap();

    // --- Push target: set, then replaced as a whole, environment included ---
    let apns =
        PushTarget { platform: PushPlatform::Apns, token: "apns-token".into(), environment: PushEnvironment::Sandbox };
    store.set_push_target(kitchen.id, &apns).await.unwrap();
    assert_eq!(store.device(kitchen.id).await.unwrap().unwrap().push, Some(apns.clone()));
    let fcm =
        PushTarget { platform: PushPlatform::Fcm, token: "fcm-token".into(), environment: PushEnvironment::Production };
    store.set_push_target(kitchen.id, &fcm).await.unwrap();
    let kitchen = store.device_by_token_hash(&kitchen_hash).await.unwrap().unwrap();
    assert_eq!(kitchen.push, Some(fcm.clone()));
    assert_eq!(store.device(kitchen.id).await.unwrap(), Some(kitchen.clone()));
    assert_eq!(store.device_by_token_hash(&hall_hash).await.unwrap().unwrap().push, None);

    // --- open_utterance: creates once, then returns the same row ---
    let u1 = Uuid::now_v7();
    let opened = store.open_utterance(u1, kitchen.id, Codec::Opus16k20ms, 2_000).await.unwrap();
    assert_eq!(opened.id, u1);
    assert_eq!(opened.device_id, kitchen.id);
    assert_eq!(opened.codec, Some(Codec::Opus16k20ms));
    assert_eq!(opened.state, UtteranceState::Receiving);
    assert_eq!(opened.frames, 0);
    assert_eq!(opened.created_ms, 2_000);
    assert_eq!(opened.timings, Timings::default());
    assert_eq!((&opened.transcript, &opened.reply_title, &opened.error), (&None, &None, &None));
    assert_eq!(opened.reply_data, None);
    // A retried open, even with another codec, changes nothing.
    let again = store.open_utterance(u1, kitchen.id, Codec::Pcm16k, 2_500).await.unwrap();
    assert_eq!(again, opened);
    // Another device cannot open (or learn about) it.
    let stolen = store.open_utterance(u1, hall.id, Codec::Opus16k20ms, 2_600).await;
    assert!(matches!(stolen, Err(StoreError::WrongDevice(id)) if id == u1), "{stolen:?}");
    assert_eq!(store.utterance(u1).await.unwrap(), Some(opened));
    assert_eq!(store.utterance(Uuid::now_v7()).await.unwrap(), None);

    // --- mark_complete: exactly one winner among concurrent callers ---
    let barrier = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.mark_complete(u1, Completion::frames(50), 3_000 + i as i64).await.unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for racer in racers {
        winners += usize::from(racer.await.unwrap());
    }
    assert_eq!(winners, 1, "mark_complete must return true exactly once");
    let u = store.utterance(u1).await.unwrap().unwrap();
    assert_eq!(u.state, UtteranceState::Complete);
    assert_eq!(u.frames, 50);
    assert_eq!(u.speech_frames, None);
    assert!(matches!(u.timings.received_end_ms, Some(t) if (3_000..3_000 + RACERS as i64).contains(&t)));
    // A replayed end, later: still not the winner, and nothing moves.
    assert!(
        !store
            .mark_complete(u1, Completion { frames: 99, speech_frames: Some(20), unmarked: false }, 3_900)
            .await
            .unwrap()
    );
    assert_eq!(store.utterance(u1).await.unwrap().unwrap(), u);

    // A second utterance that stays receiving, to show what unfinished skips.
    let u2 = Uuid::now_v7();
    store.open_utterance(u2, kitchen.id, Codec::Pcm16k, 2_100).await.unwrap();
    assert_eq!(store.unfinished().await.unwrap(), vec![u1]);

    // --- Speech to text ---
    store.mark_stt_started(u1, 4_000).await.unwrap();
    assert_eq!(store.transcript_writes(u1).await.unwrap(), 0);
    assert!(store.utterance(u1).await.unwrap().unwrap().segments.is_empty(), "no segments before the transcript");
    // Two segments, the first with word times; times that are not exact in
    // binary (0.1, 0.7) must come back as the same f32.
    let segments = vec![
        Segment {
            start: 0.1,
            end: 0.7,
            text: "what is".into(),
            words: vec![
                Word { word: "what".into(), start: 0.1, end: 0.32, probability: 0.93 },
                Word { word: "is".into(), start: 0.32, end: 0.7, probability: 0.61 },
            ],
        },
        Segment { start: 0.7, end: 1.9, text: "the weather".into(), words: vec![] },
    ];
    store.set_transcript(u1, "what is the weather", &segments, 5_000).await.unwrap();
    let u = store.utterance(u1).await.unwrap().unwrap();
    assert_eq!(u.state, UtteranceState::Transcribed);
    assert_eq!(u.transcript.as_deref(), Some("what is the weather"));
    assert_eq!(u.segments, segments, "the segments read back as written");
    assert_eq!(u.view().segments, segments, "and the device's view carries them");
    assert_eq!((u.timings.stt_start_ms, u.timings.stt_done_ms), (Some(4_000), Some(5_000)));
    assert_eq!(store.transcript_writes(u1).await.unwrap(), 1);
    // Transcribed but not replied: a restarted server must pick it up again.
    assert_eq!(store.unfinished().await.unwrap(), vec![u1]);
    // A second transcription is counted (that is what the counter is for),
    // but the first transcript stands and the state does not move.
    let other = vec![Segment { start: 0.0, end: 2.0, text: "what is the feather".into(), words: vec![] }];
    store.set_transcript(u1, "what is the feather", &other, 5_500).await.unwrap();
    assert_eq!(store.transcript_writes(u1).await.unwrap(), 2);
    assert_eq!(store.utterance(u1).await.unwrap().unwrap(), u);

    // --- Reply and its push request, once ---
    let weather = reply("Weather", "Sunny, 21 °C", r#"{"kind":"weather","temp_c":21}"#);
    store.set_reply(u1, &weather, Some(&fcm), 6_000).await.unwrap();
    let u = store.utterance(u1).await.unwrap().unwrap();
    assert_eq!(u.state, UtteranceState::Replied);
    assert_eq!((u.reply_title.as_deref(), u.reply_body.as_deref()), (Some("Weather"), Some("Sunny, 21 °C")));
    assert_eq!(u.reply_data.as_deref(), Some(weather.data_json.as_str()));
    assert_eq!(u.timings.reply_ms, Some(6_000));
    // Replayed with other words and another target: nothing changes.
    store.set_reply(u1, &reply("Again", "Other", "{}"), Some(&apns), 6_500).await.unwrap();
    assert_eq!(store.utterance(u1).await.unwrap().unwrap(), u);
    assert_eq!(store.unfinished().await.unwrap(), Vec::<Uuid>::new());

    // --- Unmarked utterances: no reply owed for one transcribed as nothing ---
    let porch = store.add_device(Uuid::now_v7(), "porch", &[10u8; 32], 6_600).await.unwrap();
    let quiet = Uuid::now_v7();
    store.open_utterance(quiet, porch.id, Codec::Opus16k20ms, 6_600).await.unwrap();
    let omi = Completion { frames: 30_000, speech_frames: None, unmarked: true };
    assert!(store.mark_complete(quiet, omi, 6_700).await.unwrap());
    let q = store.utterance(quiet).await.unwrap().unwrap();
    assert!(q.unmarked && !q.silent(), "{q:?}");
    assert_eq!(store.unfinished().await.unwrap(), vec![quiet], "it still needs its transcript");
    store.set_transcript(quiet, "", &[], 6_800).await.unwrap();
    let q = store.utterance(quiet).await.unwrap().unwrap();
    assert!(q.silent(), "{q:?}");
    assert_eq!((q.state, q.transcript.as_deref()), (UtteranceState::Transcribed, Some("")));
    assert_eq!(store.unfinished().await.unwrap(), Vec::<Uuid>::new(), "a silent utterance is finished");
    // A marked one the user opened is owed its reply though nothing was
    // heard, and so is an unmarked one with words.
    let pressed = Uuid::now_v7();
    let talked = Uuid::now_v7();
    for (id, unmarked, text) in [(pressed, false, ""), (talked, true, "hello")] {
        store.open_utterance(id, porch.id, Codec::Opus16k20ms, 6_900).await.unwrap();
        let end = Completion { frames: 10, speech_frames: None, unmarked };
        assert!(store.mark_complete(id, end, 6_950).await.unwrap());
        store.set_transcript(id, text, &[], 7_000).await.unwrap();
        assert!(!store.utterance(id).await.unwrap().unwrap().silent());
    }
    assert_eq!(store.unfinished().await.unwrap(), vec![pressed, talked]);
    for id in [pressed, talked] {
        store.set_reply(id, &reply("Heard", "ok", "{}"), None, 7_100).await.unwrap();
    }
    assert_eq!(store.unfinished().await.unwrap(), Vec::<Uuid>::new());

    // Queued pending, unclaimed and due at once, with the reply's data.
    let p = store.push_request(u1).await.unwrap().unwrap();
    assert_eq!((p.utterance_id, p.device_id), (u1, kitchen.id));
    assert_eq!(p.target, fcm);
    assert_eq!((p.title.as_str(), p.body.as_str()), ("Weather", "Sunny, 21 °C"));
    assert_eq!(p.data_json, weather.data_json);
    assert_eq!((p.created_ms, p.next_attempt_ms, p.sent_ms), (6_000, 6_000, None));
    assert_eq!((p.status, p.attempts, p.last_error.as_deref()), (PushStatus::Pending, 0, None));
    assert_eq!(store.push_request(Uuid::now_v7()).await.unwrap(), None);
    // Not due before it was made.
    assert_eq!(claimed(&*store, 5_999, 1_000, 10).await, Vec::<Uuid>::new());

    // A reply without a push target queues nothing.
    let u3 = walk_to_transcribed(&*store, kitchen.id, 7_000).await;
    store.set_reply(u3, &reply("Quiet", "No push", "{}"), None, 7_400).await.unwrap();
    assert_eq!(store.utterance(u3).await.unwrap().unwrap().state, UtteranceState::Replied);
    assert_eq!(store.push_request(u3).await.unwrap(), None);
    // A later one with a target queues behind the first, with its sandbox
    // environment.
    let u4 = walk_to_transcribed(&*store, hall.id, 8_000).await;
    store.set_reply(u4, &reply("Hall", "Second", "{}"), Some(&apns), 8_400).await.unwrap();
    assert_eq!(store.push_request(u4).await.unwrap().unwrap().target, apns);

    // --- Claims: oldest first, leased, and claimable again after the lease ---
    let first = store.claim_pushes(9_000, 1_000, 1).await.unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0], p, "a claim returns the request as stored");
    // u1 is leased until 10 000: the next claimer gets only u4.
    let second = store.claim_pushes(9_000, 1_000, 10).await.unwrap();
    assert_eq!(second.iter().map(|p| p.utterance_id).collect::<Vec<_>>(), vec![u4]);
    assert_eq!(second[0].target, apns);
    assert_eq!(claimed(&*store, 9_999, 1_000, 10).await, Vec::<Uuid>::new(), "claimed while leased");
    assert_eq!(claimed(&*store, 10_000, 1_000, 0).await, Vec::<Uuid>::new(), "limit 0");
    // The senders died: at 10 000 both leases are out, and both are claimed
    // again, oldest first, until 11 000.
    assert_eq!(claimed(&*store, 10_000, 1_000, 10).await, vec![u1, u4]);
    assert_eq!(claimed(&*store, 10_999, 1_000, 10).await, Vec::<Uuid>::new());

    // --- record_push: Sent, once ---
    store.record_push(u1, &PushOutcome::Sent, 10_100).await.unwrap();
    let sent = store.push_request(u1).await.unwrap().unwrap();
    assert_eq!((sent.status, sent.attempts, sent.sent_ms), (PushStatus::Sent, 1, Some(10_100)));
    assert_eq!(store.utterance(u1).await.unwrap().unwrap().timings.push_ms, Some(10_100));
    // Recorded again (the other sender whose lease ran out), or as a failure:
    // the first send stands, and the attempt is not counted.
    store.record_push(u1, &PushOutcome::Sent, 10_200).await.unwrap();
    store.record_push(u1, &retry(10_300, "late"), 10_250).await.unwrap();
    store.record_push(u1, &PushOutcome::Undeliverable { reason: "late".into() }, 10_300).await.unwrap();
    assert_eq!(store.push_request(u1).await.unwrap().unwrap(), sent);
    assert_eq!(store.utterance(u1).await.unwrap().unwrap().timings.push_ms, Some(10_100));
    // Never claimed again: when u4's lease runs out, only u4 is claimed.
    assert_eq!(claimed(&*store, 11_000, 1_000, 10).await, vec![u4]);

    // --- record_push: Retry releases the claim and waits for its time ---
    // u4 is leased until 12 000; the retry releases it, due at 11 400.
    store.record_push(u4, &retry(11_400, "503 unavailable"), 11_100).await.unwrap();
    let p4 = store.push_request(u4).await.unwrap().unwrap();
    assert_eq!((p4.status, p4.attempts, p4.next_attempt_ms), (PushStatus::Pending, 1, 11_400));
    assert_eq!((p4.last_error.as_deref(), p4.sent_ms), (Some("503 unavailable"), None));
    assert_eq!(claimed(&*store, 11_399, 1_000, 10).await, Vec::<Uuid>::new(), "claimed before due");
    assert_eq!(claimed(&*store, 11_400, 1_000, 10).await, vec![u4], "the retry kept the claim");
    store.record_push(u4, &retry(13_000, "timeout"), 11_500).await.unwrap();
    let p4 = store.push_request(u4).await.unwrap().unwrap();
    assert_eq!((p4.attempts, p4.next_attempt_ms, p4.last_error.as_deref()), (2, 13_000, Some("timeout")));
    assert_eq!(claimed(&*store, 12_999, 1_000, 10).await, Vec::<Uuid>::new());
    assert_eq!(claimed(&*store, 13_000, 1_000, 10).await, vec![u4]);

    // --- record_push: Undeliverable is final ---
    let dead = PushOutcome::Undeliverable { reason: "BadDeviceToken".into() };
    store.record_push(u4, &dead, 13_100).await.unwrap();
    let p4 = store.push_request(u4).await.unwrap().unwrap();
    assert_eq!((p4.status, p4.attempts, p4.sent_ms), (PushStatus::Undeliverable, 3, None));
    assert_eq!(p4.last_error.as_deref(), Some("BadDeviceToken"));
    store.record_push(u4, &PushOutcome::Sent, 13_200).await.unwrap();
    assert_eq!(store.push_request(u4).await.unwrap().unwrap(), p4, "a late send undid undeliverable");
    assert_eq!(store.utterance(u4).await.unwrap().unwrap().timings.push_ms, None);
    // Sent and undeliverable requests are never claimed again.
    assert_eq!(claimed(&*store, 1_000_000, 1_000, 10).await, Vec::<Uuid>::new());
    // No push request for u3.
    let none = store.record_push(u3, &PushOutcome::Sent, 13_300).await;
    assert!(matches!(none, Err(StoreError::NoUtterance(id)) if id == u3), "{none:?}");

    // --- Failure ---
    store.set_failed(u2, "stream abandoned").await.unwrap();
    store.set_failed(u2, "a later consequence").await.unwrap();
    let u = store.utterance(u2).await.unwrap().unwrap();
    assert_eq!(u.state, UtteranceState::Failed);
    assert_eq!(u.error.as_deref(), Some("stream abandoned"), "the first error is the cause");
    assert!(!store.mark_complete(u2, Completion::frames(10), 10_000).await.unwrap());
    // A replied utterance is not failed after the fact.
    store.set_failed(u1, "too late").await.unwrap();
    assert_eq!(store.utterance(u1).await.unwrap().unwrap().state, UtteranceState::Replied);

    // --- Out of order calls change nothing ---
    let u5 = Uuid::now_v7();
    store.open_utterance(u5, hall.id, Codec::Opus16k20ms, 11_000).await.unwrap();
    store.mark_stt_started(u5, 11_100).await.unwrap();
    store.set_reply(u5, &reply("Early", "Reply", "{}"), Some(&apns), 11_200).await.unwrap();
    let u = store.utterance(u5).await.unwrap().unwrap();
    assert_eq!(u.state, UtteranceState::Receiving);
    assert_eq!(u.timings, Timings::default());
    assert_eq!(store.push_request(u5).await.unwrap(), None);

    // --- Text utterances: transcribed on the phone, created once ---
    let t1 = Uuid::now_v7();
    let (text, created) = store.create_text_utterance(t1, kitchen.id, "lights on", 14_000).await.unwrap();
    assert!(created, "the first create must tell its caller to queue the reply");
    assert_eq!((text.id, text.device_id, text.codec), (t1, kitchen.id, None));
    assert_eq!(text.state, UtteranceState::Transcribed);
    assert_eq!(text.transcript.as_deref(), Some("lights on"));
    assert!(text.segments.is_empty(), "the phone sent no times");
    assert_eq!((text.frames, text.created_ms), (0, 14_000));
    assert_eq!(text.timings, Timings { received_end_ms: Some(14_000), ..Timings::default() });
    assert_eq!((&text.reply_title, &text.reply_data, &text.error), (&None, &None, &None));
    assert_eq!(store.transcript_writes(t1).await.unwrap(), 1);
    assert_eq!(store.utterance(t1).await.unwrap(), Some(text.clone()));
    // Retried, even with other words: the same row, and not the creator.
    let (again, created) = store.create_text_utterance(t1, kitchen.id, "lights off", 14_100).await.unwrap();
    assert!(!created);
    assert_eq!(again, text);
    assert_eq!(store.transcript_writes(t1).await.unwrap(), 1);
    // Another device cannot create (or learn about) it.
    let stolen = store.create_text_utterance(t1, hall.id, "lights on", 14_200).await;
    assert!(matches!(stolen, Err(StoreError::WrongDevice(id)) if id == t1), "{stolen:?}");
    // The id of an audio utterance is taken too: that row, unchanged.
    let (audio, created) = store.create_text_utterance(u1, kitchen.id, "x", 14_300).await.unwrap();
    assert!(!created);
    assert_eq!(audio, store.utterance(u1).await.unwrap().unwrap());
    assert_eq!(store.transcript_writes(u1).await.unwrap(), 2);
    // Queued for a reply, like a transcribed audio utterance.
    assert_eq!(store.unfinished().await.unwrap(), vec![t1]);
    let lights = reply("Lights", "On", r#"{"room":"kitchen","on":true}"#);
    store.set_reply(t1, &lights, Some(&fcm), 14_500).await.unwrap();
    let text = store.utterance(t1).await.unwrap().unwrap();
    assert_eq!(text.state, UtteranceState::Replied);
    assert_eq!(text.reply_data.as_deref(), Some(lights.data_json.as_str()));
    assert_eq!(store.push_request(t1).await.unwrap().unwrap().data_json, lights.data_json);
    assert_eq!(store.unfinished().await.unwrap(), Vec::<Uuid>::new());

    // --- Dead tokens: disabled only while the token is still the device's ---
    let wrong = store.disable_push_target(kitchen.id, "apns-token", "Unregistered", 15_000).await.unwrap();
    assert!(!wrong, "an old token's death removed the current one");
    assert_eq!(store.device(kitchen.id).await.unwrap(), Some(kitchen.clone()));
    assert!(store.disable_push_target(kitchen.id, "fcm-token", "Unregistered", 15_100).await.unwrap());
    let disabled = store.device(kitchen.id).await.unwrap().unwrap();
    assert_eq!(disabled.push, None);
    assert_eq!(disabled.push_disabled_reason.as_deref(), Some("Unregistered"));
    assert_eq!(store.device_by_token_hash(&kitchen_hash).await.unwrap(), Some(disabled.clone()));
    // Told again (another request to the same token failed): already done.
    assert!(!store.disable_push_target(kitchen.id, "fcm-token", "NotRegistered", 15_200).await.unwrap());
    assert_eq!(store.device(kitchen.id).await.unwrap(), Some(disabled));
    assert!(!store.disable_push_target(Uuid::now_v7(), "fcm-token", "x", 15_300).await.unwrap());
    // Re-registration brings the device back and clears the reason.
    let fresh = PushTarget { token: "fcm-token-2".into(), ..fcm.clone() };
    store.set_push_target(kitchen.id, &fresh).await.unwrap();
    let kitchen = store.device(kitchen.id).await.unwrap().unwrap();
    assert_eq!((kitchen.push.as_ref(), kitchen.push_disabled_reason.as_ref()), (Some(&fresh), None));
    // The request queued for the old token still names it: it went where
    // the device pointed when the reply was made.
    assert_eq!(store.push_request(t1).await.unwrap().unwrap().target, fcm);

    // --- Unknown ids ---
    let nobody = Uuid::now_v7();
    let no = |r: Result<(), StoreError>| matches!(r, Err(StoreError::NoUtterance(id)) if id == nobody);
    assert!(matches!(store.mark_complete(nobody, Completion::frames(1), 0).await, Err(StoreError::NoUtterance(_))));
    assert!(no(store.mark_stt_started(nobody, 0).await));
    assert!(no(store.set_transcript(nobody, "x", &[], 0).await));
    assert!(no(store.set_reply(nobody, &reply("x", "y", "{}"), Some(&fcm), 0).await));
    assert!(no(store.set_failed(nobody, "x").await));
    assert!(no(store.record_push(nobody, &PushOutcome::Sent, 0).await));
    assert_eq!(store.push_request(nobody).await.unwrap(), None);
    assert!(matches!(store.transcript_writes(nobody).await, Err(StoreError::NoUtterance(_))));

    // --- Listing: newest first, keyset pages, one device only ---
    let mut kitchen_ids = vec![u1, u2, u3, t1];
    kitchen_ids.sort_unstable_by(|a, b| b.cmp(a));
    let listed = |page: Vec<lanyard_store::Utterance>| page.iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(listed(store.list_utterances(kitchen.id, None, 10).await.unwrap()), kitchen_ids);
    let page1 = listed(store.list_utterances(kitchen.id, None, 3).await.unwrap());
    assert_eq!(page1, kitchen_ids[..3]);
    let page2 = listed(store.list_utterances(kitchen.id, Some(page1[2]), 3).await.unwrap());
    assert_eq!(page2, kitchen_ids[3..], "the next page starts after the last id of the previous one");
    assert!(store.list_utterances(kitchen.id, Some(kitchen_ids[3]), 3).await.unwrap().is_empty());
    // Rows come whole, as `utterance` reads them.
    assert_eq!(store.list_utterances(hall.id, None, 1).await.unwrap()[0], store.utterance(u5).await.unwrap().unwrap());
    assert!(store.list_utterances(kitchen.id, None, 0).await.unwrap().is_empty());
    assert!(store.list_utterances(Uuid::now_v7(), None, 10).await.unwrap().is_empty());

    // --- Deletion, on a device of its own so the rows above stay ---
    let attic_hash = [4u8; 32];
    let attic = store.add_device(Uuid::now_v7(), "attic", &attic_hash, 20_000).await.unwrap();
    store.set_push_target(attic.id, &fcm).await.unwrap();
    let a1 = walk_to_transcribed(&*store, attic.id, 20_100).await;
    store.set_reply(a1, &reply("A", "1", "{}"), Some(&fcm), 20_500).await.unwrap();
    let a2 = walk_to_transcribed(&*store, attic.id, 21_000).await;
    store.set_reply(a2, &reply("A", "2", "{}"), Some(&fcm), 21_500).await.unwrap();
    let a3 = Uuid::now_v7();
    store.open_utterance(a3, attic.id, Codec::Pcm16k, 22_000).await.unwrap();
    // Another device's id: refused, and nothing moves.
    let stolen = store.delete_utterance(kitchen.id, a1).await;
    assert!(matches!(stolen, Err(StoreError::WrongDevice(id)) if id == a1), "{stolen:?}");
    assert!(store.utterance(a1).await.unwrap().is_some());
    // The utterance and its push request go together.
    assert!(store.delete_utterance(attic.id, a1).await.unwrap());
    assert_eq!(store.utterance(a1).await.unwrap(), None);
    assert_eq!(store.push_request(a1).await.unwrap(), None);
    assert!(!store.delete_utterance(attic.id, a1).await.unwrap(), "deleted twice");
    assert!(!store.delete_utterance(attic.id, Uuid::now_v7()).await.unwrap());
    // Deletion is final: the id cannot come back by open or by text, and
    // another device sees it as it sees any id of someone else's.
    let opened = store.open_utterance(a1, attic.id, Codec::Opus16k20ms, 22_050).await.map(|_| ());
    let typed = store.create_text_utterance(a1, attic.id, "again", 22_050).await.map(|_| ());
    for again in [opened, typed] {
        assert!(matches!(again, Err(StoreError::Deleted(id)) if id == a1), "{again:?}");
    }
    let theirs = store.open_utterance(a1, kitchen.id, Codec::Opus16k20ms, 22_050).await;
    assert!(matches!(theirs, Err(StoreError::WrongDevice(id)) if id == a1), "{theirs:?}");
    assert_eq!(store.utterance(a1).await.unwrap(), None, "nothing came back");
    // A late outcome for the deleted request finds nothing and changes nothing.
    assert!(matches!(store.record_push(a1, &PushOutcome::Sent, 22_100).await, Err(StoreError::NoUtterance(_))));
    // All of a device's data, with its push requests; the device stays.
    assert_eq!(store.delete_device_data(attic.id).await.unwrap(), 2);
    assert_eq!((store.utterance(a2).await.unwrap(), store.utterance(a3).await.unwrap()), (None, None));
    assert_eq!(store.push_request(a2).await.unwrap(), None);
    assert!(store.list_utterances(attic.id, None, 10).await.unwrap().is_empty());
    let attic_now = store.device_by_token_hash(&attic_hash).await.unwrap().unwrap();
    assert_eq!((attic_now.id, attic_now.push.as_ref()), (attic.id, Some(&fcm)));
    assert_eq!(store.delete_device_data(attic.id).await.unwrap(), 0);
    let again = store.open_utterance(a3, attic.id, Codec::Pcm16k, 22_900).await;
    assert!(matches!(again, Err(StoreError::Deleted(id)) if id == a3), "deleted with the device's data: {again:?}");
    // The device itself, with whatever it made since; its token stops working.
    let a4 = Uuid::now_v7();
    store.create_text_utterance(a4, attic.id, "hello again", 23_000).await.unwrap();
    store.set_reply(a4, &reply("A", "4", "{}"), Some(&fcm), 23_100).await.unwrap();
    assert_eq!(store.delete_device(attic.id).await.unwrap(), Some(1));
    assert_eq!(store.device(attic.id).await.unwrap(), None);
    assert_eq!(store.device_by_token_hash(&attic_hash).await.unwrap(), None);
    assert_eq!((store.utterance(a4).await.unwrap(), store.push_request(a4).await.unwrap()), (None, None));
    assert_eq!(store.delete_device(attic.id).await.unwrap(), None);
    // The name is free again.
    store.add_device(Uuid::now_v7(), "attic", &[6u8; 32], 24_000).await.unwrap();
    // Nothing of the other devices moved.
    assert_eq!(listed(store.list_utterances(kitchen.id, None, 10).await.unwrap()), kitchen_ids);
    assert!(store.push_request(u1).await.unwrap().is_some());

    // --- Audio retention ---
    // Everything finished so far was created before 30_000. Purging it first
    // checks that only finished audio utterances are listed, and leaves the
    // rows below to themselves.
    for c in store.audio_to_purge(30_000, 1_000).await.unwrap() {
        let u = store.utterance(c.id).await.unwrap().unwrap();
        assert!(u.codec.is_some(), "a text utterance has no audio to purge: {u:?}");
        assert!(
            matches!(u.state, UtteranceState::Transcribed | UtteranceState::Replied | UtteranceState::Failed),
            "{u:?}"
        );
        assert_eq!((c.device_id, c.created_ms), (u.device_id, u.created_ms));
        assert!(store.mark_audio_purged(c.id, 30_000).await.unwrap());
    }
    assert!(store.audio_to_purge(30_000, 1_000).await.unwrap().is_empty());
    let cellar = store.add_device(Uuid::now_v7(), "cellar", &[8u8; 32], 40_000).await.unwrap();
    let receiving = Uuid::now_v7();
    store.open_utterance(receiving, cellar.id, Codec::Pcm16k, 40_000).await.unwrap();
    let waiting = Uuid::now_v7();
    store.open_utterance(waiting, cellar.id, Codec::Pcm16k, 40_100).await.unwrap();
    assert!(
        store
            .mark_complete(waiting, Completion { frames: 3, speech_frames: Some(2), unmarked: false }, 40_150)
            .await
            .unwrap()
    );
    // A relay's cut (the `end`'s `speech_frames`) is kept beside the count.
    let w = store.utterance(waiting).await.unwrap().unwrap();
    assert_eq!((w.frames, w.speech_frames), (3, Some(2)));
    let done = walk_to_transcribed(&*store, cellar.id, 40_200).await;
    let failed = Uuid::now_v7();
    store.open_utterance(failed, cellar.id, Codec::Opus16k20ms, 40_300).await.unwrap();
    assert!(store.mark_complete(failed, Completion::frames(3), 40_350).await.unwrap());
    store.set_failed(failed, "decoding audio: corrupt").await.unwrap();
    let text = Uuid::now_v7();
    store.create_text_utterance(text, cellar.id, "typed", 40_400).await.unwrap();
    let recent = walk_to_transcribed(&*store, cellar.id, 50_000).await;
    let ids = |cs: Vec<lanyard_store::PurgeCandidate>| cs.iter().map(|c| c.id).collect::<Vec<_>>();
    // Finished audio only, created strictly before the cutoff, oldest first.
    assert_eq!(ids(store.audio_to_purge(50_000, 10).await.unwrap()), vec![done, failed]);
    assert_eq!(ids(store.audio_to_purge(50_000, 1).await.unwrap()), vec![done]);
    assert_eq!(ids(store.audio_to_purge(40_250, 10).await.unwrap()), vec![done]);
    assert!(store.utterance(done).await.unwrap().unwrap().audio_purged_ms.is_none());
    assert!(store.mark_audio_purged(done, 60_000).await.unwrap());
    assert!(!store.mark_audio_purged(done, 61_000).await.unwrap(), "the first purge time stays");
    let purged = store.utterance(done).await.unwrap().unwrap();
    assert_eq!(
        (purged.audio_purged_ms, purged.state, purged.transcript.as_deref()),
        (Some(60_000), UtteranceState::Transcribed, Some("hello"))
    );
    for not_finished in [receiving, waiting, text, Uuid::now_v7()] {
        assert!(!store.mark_audio_purged(not_finished, 60_000).await.unwrap());
    }
    assert_eq!(store.utterance(waiting).await.unwrap().unwrap().audio_purged_ms, None);
    assert_eq!(ids(store.audio_to_purge(50_001, 10).await.unwrap()), vec![failed, recent]);
    // The reply step still works on a purged utterance: it needs only the transcript.
    store.set_reply(done, &reply("T", "B", "{}"), None, 60_100).await.unwrap();
    assert_eq!(store.utterance(done).await.unwrap().unwrap().audio_purged_ms, Some(60_000));

    // --- Unfinished utterances: the per-device cap and the abandoned sweep ---
    assert_eq!(store.receiving_count(cellar.id).await.unwrap(), 1, "only `receiving` counts");
    assert_eq!(store.receiving_count(kitchen.id).await.unwrap(), 0);
    let cellar_only = |cs: Vec<lanyard_store::PurgeCandidate>| {
        cs.iter().filter(|c| c.device_id == cellar.id).map(|c| c.id).collect::<Vec<_>>()
    };
    assert_eq!(cellar_only(store.receiving_before(40_001, 1_000).await.unwrap()), vec![receiving]);
    assert!(cellar_only(store.receiving_before(40_000, 1_000).await.unwrap()).is_empty(), "strictly before");
    let late = Uuid::now_v7();
    store.open_utterance(late, cellar.id, Codec::Pcm16k, 70_000).await.unwrap();
    assert_eq!(store.receiving_count(cellar.id).await.unwrap(), 2);
    assert_eq!(
        cellar_only(store.receiving_before(80_000, 1_000).await.unwrap()),
        vec![receiving, late],
        "oldest first"
    );
    // The sweep gives up on one: failed, and then its audio may go; only
    // once, and never on one that is no longer receiving.
    assert!(store.abandon(receiving, "abandoned").await.unwrap());
    assert!(!store.abandon(receiving, "again").await.unwrap());
    assert!(!store.abandon(waiting, "abandoned").await.unwrap(), "a complete utterance is not abandoned");
    assert_eq!(store.utterance(waiting).await.unwrap().unwrap().state, UtteranceState::Complete);
    assert_eq!(store.utterance(receiving).await.unwrap().unwrap().error.as_deref(), Some("abandoned"));
    assert_eq!(store.receiving_count(cellar.id).await.unwrap(), 1);
    assert!(store.mark_audio_purged(receiving, 80_000).await.unwrap());
    assert_eq!(cellar_only(store.receiving_before(80_000, 1_000).await.unwrap()), vec![late]);

    Written { devices: vec![(kitchen_hash, kitchen), (hall_hash, hall)], utterances: vec![u1, u2, u3, u4, u5, t1] }
}

fn reply(title: &str, body: &str, data_json: &str) -> ReplyRecord {
    ReplyRecord { title: title.into(), body: body.into(), data_json: data_json.into() }
}

fn retry(next_attempt_ms: i64, error: &str) -> PushOutcome {
    PushOutcome::Retry { next_attempt_ms, error: error.into() }
}

/// The ids `claim_pushes` claims, in the order it returns them.
async fn claimed(store: &dyn Store, now_ms: i64, lease_ms: i64, limit: u32) -> Vec<Uuid> {
    store.claim_pushes(now_ms, lease_ms, limit).await.unwrap().iter().map(|p| p.utterance_id).collect()
}

/// Opens an utterance and takes it through complete to transcribed.
async fn walk_to_transcribed(store: &dyn Store, device: Uuid, t: i64) -> Uuid {
    let id = Uuid::now_v7();
    store.open_utterance(id, device, Codec::Opus16k20ms, t).await.unwrap();
    assert!(store.mark_complete(id, Completion::frames(10), t + 100).await.unwrap());
    store.mark_stt_started(id, t + 200).await.unwrap();
    store.set_transcript(id, "hello", &[], t + 300).await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_in_memory() {
    store_story(Arc::new(SqliteStore::open_in_memory().await.unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_on_file_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    // A parent that does not exist yet: open creates it.
    let path = dir.path().join("state").join("lanyard.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let written = store_story(Arc::new(store.clone())).await;

    let mut before = Vec::new();
    for id in &written.utterances {
        before.push(store.utterance(*id).await.unwrap().unwrap());
    }
    let mut pushes_before = Vec::new();
    for id in &written.utterances {
        pushes_before.push(store.push_request(*id).await.unwrap());
    }
    drop(store);

    let store = SqliteStore::open(&path).await.unwrap();
    for (hash, device) in &written.devices {
        assert_eq!(store.device_by_token_hash(hash).await.unwrap().as_ref(), Some(device));
    }
    for u in &before {
        assert_eq!(store.utterance(u.id).await.unwrap().as_ref(), Some(u));
    }
    let mut pushes_after = Vec::new();
    for id in &written.utterances {
        pushes_after.push(store.push_request(*id).await.unwrap());
    }
    assert_eq!(pushes_after, pushes_before);
    assert_eq!(store.transcript_writes(written.utterances[0]).await.unwrap(), 2);
    // Migrations ran once; running them again on reopen is a no-op.
    let dup = store.add_device(Uuid::now_v7(), "kitchen", &[7u8; 32], 0).await;
    assert!(matches!(dup, Err(StoreError::DuplicateDeviceName(_))));
}

/// Two pools on one file stand in for two server processes (or a restart that
/// overlaps the old one): the conditional update still has one winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mark_complete_once_across_two_pools() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lanyard.db");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();
    let device = a.add_device(Uuid::now_v7(), "pendant", &[5u8; 32], 0).await.unwrap();
    for round in 0..10 {
        let id = Uuid::now_v7();
        a.open_utterance(id, device.id, Codec::Opus16k20ms, round).await.unwrap();
        let barrier = Arc::new(Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.mark_complete(id, Completion::frames(7), i as i64).await.unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for racer in racers {
            winners += usize::from(racer.await.unwrap());
        }
        assert_eq!(winners, 1, "round {round}");
    }
}

/// Claimers on two pools (two sender processes, or a restarted one beside
/// the old) race for one batch of due requests: while the leases last, each
/// request goes to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_are_disjoint() {
    const DUE: usize = 100;
    const NOW: i64 = 1_000;
    const LEASE: i64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lanyard.db");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();
    let device = a.add_device(Uuid::now_v7(), "pendant", &[6u8; 32], 0).await.unwrap();
    let target =
        PushTarget { platform: PushPlatform::Fcm, token: "t".into(), environment: PushEnvironment::Production };
    let mut due = Vec::new();
    for i in 0..DUE as i64 {
        let id = Uuid::now_v7();
        assert!(a.create_text_utterance(id, device.id, "hi", i).await.unwrap().1);
        a.set_reply(id, &reply("t", "b", "{}"), Some(&target), i).await.unwrap();
        due.push(id);
    }

    let barrier = Arc::new(Barrier::new(RACERS));
    let claimers: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let mut mine = Vec::new();
                loop {
                    // Small batches, so that the claimers interleave.
                    let batch = store.claim_pushes(NOW, LEASE, 3).await.unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|p| p.utterance_id));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }
    let claims = all.len();
    all.sort();
    all.dedup();
    assert_eq!(claims, all.len(), "a request was claimed by two claimers");
    due.sort();
    assert_eq!(all, due, "every due request is claimed");

    // Nothing is claimable while the leases last; all of it once they end.
    assert_eq!(claimed(&a, NOW + LEASE - 1, LEASE, 1_000).await, Vec::<Uuid>::new());
    let mut again = claimed(&b, NOW + LEASE, LEASE, 1_000).await;
    again.sort();
    assert_eq!(again, due);
}

/// A database that the previous version left at migration 0001, with one push
/// request sent and one waiting, is brought up to date without losing either.
#[tokio::test]
async fn a_database_at_0001_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lanyard.db");
    // Only 0001, run the way the previous version ran it, so that the
    // migrations table holds what a database in the field holds.
    let old = dir.path().join("migrations-0001");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("0001_initial.sql"), include_str!("../migrations/0001_initial.sql")).unwrap();
    let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path()).await.unwrap().run(&mut conn).await.unwrap();

    let (device, sent, unsent) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO devices (id, name, token_hash, created_ms, push_platform, push_token)
         VALUES (?, 'old', ?, 0, 'apns', 'old-token')",
    )
    .bind(device.to_string())
    .bind(&[8u8; 32][..])
    .execute(&mut conn)
    .await
    .unwrap();
    for (id, t, push_ms) in [(sent, 100, Some(300)), (unsent, 150, None)] {
        sqlx::query(
            "INSERT INTO utterances (id, device_id, codec, state, frames, transcript, transcript_writes,
                                     reply_title, reply_body, created_ms, reply_ms, push_ms)
             VALUES (?1, ?2, 'opus16k20ms', 'replied', 5, 'hi', 1, 'T', 'B', ?3, ?3 + 100, ?4)",
        )
        .bind(id.to_string())
        .bind(device.to_string())
        .bind(t)
        .bind(push_ms)
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO push_outbox (utterance_id, device_id, platform, token, title, body, created_ms, sent_ms)
             VALUES (?, ?, 'apns', 'old-token', 'T', 'B', ?, ?)",
        )
        .bind(id.to_string())
        .bind(device.to_string())
        .bind(t + 100)
        .bind(push_ms)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.close().await.unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    // Targets from before the environment existed were production ones.
    let old_target = PushTarget {
        platform: PushPlatform::Apns,
        token: "old-token".into(),
        environment: PushEnvironment::Production,
    };
    let d = store.device(device).await.unwrap().unwrap();
    assert_eq!((d.push.as_ref(), d.push_disabled_reason.as_ref()), (Some(&old_target), None));
    let u = store.utterance(sent).await.unwrap().unwrap();
    assert_eq!((u.codec, u.state, u.reply_data), (Some(Codec::Opus16k20ms), UtteranceState::Replied, None));
    assert_eq!(u.timings.push_ms, Some(300));

    let p = store.push_request(sent).await.unwrap().unwrap();
    assert_eq!((p.status, p.attempts, p.sent_ms, p.last_error), (PushStatus::Sent, 1, Some(300), None));
    assert_eq!((p.target, p.data_json.as_str(), p.created_ms), (old_target.clone(), "{}", 200));
    let p = store.push_request(unsent).await.unwrap().unwrap();
    assert_eq!((p.status, p.attempts, p.sent_ms, p.next_attempt_ms), (PushStatus::Pending, 0, None, 0));

    // The waiting one is due at once and goes out; the sent one stays sent.
    assert_eq!(claimed(&store, 1_000, 100, 10).await, vec![unsent]);
    store.record_push(unsent, &PushOutcome::Sent, 1_050).await.unwrap();
    assert_eq!(store.utterance(unsent).await.unwrap().unwrap().timings.push_ms, Some(1_050));
    assert_eq!(claimed(&store, 1_000_000, 100, 10).await, Vec::<Uuid>::new());

    // The schema is the new one, and claims use its index.
    let mut conn = raw(&path).await;
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version").fetch_all(&mut conn).await.unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // Rows from before 0004 keep their audio; rows from before 0005 keep
    // their transcript and have no segments; rows from before 0008 are
    // speech in full; rows from before 0009 are marked.
    let u = store.utterance(unsent).await.unwrap().unwrap();
    assert_eq!((u.audio_purged_ms, u.speech_frames, u.unmarked), (None, None, false));
    assert_eq!((u.transcript.as_deref(), u.segments.len()), (Some("hi"), 0));
    // `sql IS NOT NULL` leaves out the primary key's automatic index.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master
         WHERE type = 'index' AND tbl_name = 'push_outbox' AND sql IS NOT NULL ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(indexes, vec!["push_outbox_device".to_owned(), "push_outbox_due".to_owned()]);
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT utterance_id FROM push_outbox
         WHERE status = 'pending' AND next_attempt_ms <= 5 AND claimed_until_ms <= 5
         ORDER BY next_attempt_ms, created_ms, utterance_id LIMIT 10",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(plan.iter().any(|(.., detail)| detail.contains("push_outbox_due")), "{plan:?}");
    // The per-device count of unfinished utterances reads only those
    // (migration 0007), not the device's whole history.
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM utterances INDEXED BY utterances_receiving
         WHERE device_id = 'd' AND state = 'receiving'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(plan.iter().any(|(.., detail)| detail.contains("utterances_receiving")), "{plan:?}");
    assert_eq!(store.receiving_count(Uuid::now_v7()).await.unwrap(), 0);
}

/// A separate raw connection, to look under the store and to write what a
/// newer version might have written.
async fn raw(path: &Path) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap()
}

#[tokio::test]
async fn pragmas_are_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lanyard.db");
    let _store = SqliteStore::open(&path).await.unwrap();
    let mut conn = raw(&path).await;
    // journal_mode is stored in the file; the others are per connection and
    // are checked through the store's own behaviour (foreign keys below).
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut conn).await.unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn foreign_keys_are_enforced() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let r = store.open_utterance(Uuid::now_v7(), Uuid::now_v7(), Codec::Pcm16k, 0).await;
    assert!(matches!(r, Err(StoreError::Backend(_))), "an utterance of no device was stored: {r:?}");
}

#[tokio::test]
async fn unknown_values_read_back_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lanyard.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let device = store.add_device(Uuid::now_v7(), "pendant", &[4u8; 32], 0).await.unwrap();
    let id = Uuid::now_v7();
    store.open_utterance(id, device.id, Codec::Opus16k20ms, 0).await.unwrap();
    let mut conn = raw(&path).await;

    sqlx::query("UPDATE utterances SET codec = 'flac'").execute(&mut conn).await.unwrap();
    assert!(matches!(store.utterance(id).await, Err(StoreError::Corrupt(m)) if m.contains("flac")));

    sqlx::query("UPDATE utterances SET codec = 'pcm16k', state = 'paused'").execute(&mut conn).await.unwrap();
    assert!(matches!(store.utterance(id).await, Err(StoreError::Corrupt(m)) if m.contains("paused")));

    sqlx::query("UPDATE utterances SET state = 'transcribed', segments = '[{\"start\":\"soon\"}]'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(matches!(store.utterance(id).await, Err(StoreError::Corrupt(m)) if m.contains("segments")));
    sqlx::query("UPDATE utterances SET segments = NULL").execute(&mut conn).await.unwrap();

    sqlx::query("UPDATE devices SET push_platform = 'pager', push_token = 't'").execute(&mut conn).await.unwrap();
    assert!(matches!(store.device_by_token_hash(&[4u8; 32]).await, Err(StoreError::Corrupt(m)) if m.contains("pager")));

    sqlx::query("UPDATE devices SET push_platform = 'apns', push_environment = 'staging'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(matches!(store.device(device.id).await, Err(StoreError::Corrupt(m)) if m.contains("staging")));

    sqlx::query(
        "INSERT INTO push_outbox (utterance_id, device_id, platform, token, title, body, created_ms, status)
         SELECT id, device_id, 'fcm', 't', 'a', 'b', 0, 'lost' FROM utterances",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(matches!(store.push_request(id).await, Err(StoreError::Corrupt(m)) if m.contains("lost")));
    // A claim that meets a row it cannot read fails rather than skip it.
    sqlx::query("UPDATE push_outbox SET status = 'pending', environment = 'staging'").execute(&mut conn).await.unwrap();
    assert!(matches!(store.claim_pushes(0, 1, 10).await, Err(StoreError::Corrupt(m)) if m.contains("staging")));
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lanyard.db");
    SqliteStore::open(&path).await.unwrap().close().await;
    // What a later Lanyard's migration would leave behind.
    let mut conn = raw(&path).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999999, 'from the future', 1, x'00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let r = SqliteStore::open(&path).await;
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
}
