//! The store story: one walk through every [`Store`] method, in the order the
//! server uses them, checking the semantics the trait documents.
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
use lanyard_store::{Device, PushTarget, Store, StoreError};
use lanyard_store_sqlite::SqliteStore;
use sqlx::Connection;
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
    assert_eq!(kitchen.push, None);
    assert_eq!(store.device_by_token_hash(&kitchen_hash).await.unwrap(), Some(kitchen.clone()));
    assert_eq!(store.device_by_token_hash(&[9u8; 32]).await.unwrap(), None);

    let dup = store.add_device(Uuid::now_v7(), "kitchen", &[3u8; 32], 1_001).await;
    assert!(matches!(dup, Err(StoreError::DuplicateDeviceName(ref n)) if n == "kitchen"), "{dup:?}");
    assert_eq!(store.device_by_token_hash(&[3u8; 32]).await.unwrap(), None, "the failed add left a row");

    assert_eq!(store.device(kitchen.id).await.unwrap(), Some(kitchen.clone()));
    assert_eq!(store.device(Uuid::now_v7()).await.unwrap(), None);

    let hall_hash = [2u8; 32];
    let hall = store.add_device(Uuid::now_v7(), "hall", &hall_hash, 1_002).await.unwrap();

    // --- Push target: set, then replaced as a whole ---
    let apns = PushTarget { platform: PushPlatform::Apns, token: "apns-token".into() };
    store.set_push_target(kitchen.id, &apns).await.unwrap();
    let fcm = PushTarget { platform: PushPlatform::Fcm, token: "fcm-token".into() };
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
    assert_eq!(opened.codec, Codec::Opus16k20ms);
    assert_eq!(opened.state, UtteranceState::Receiving);
    assert_eq!(opened.frames, 0);
    assert_eq!(opened.created_ms, 2_000);
    assert_eq!(opened.timings, Timings::default());
    assert_eq!((&opened.transcript, &opened.reply_title, &opened.error), (&None, &None, &None));
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
                store.mark_complete(u1, 50, 3_000 + i as i64).await.unwrap()
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
    assert!(matches!(u.timings.received_end_ms, Some(t) if (3_000..3_000 + RACERS as i64).contains(&t)));
    // A replayed end, later: still not the winner, and nothing moves.
    assert!(!store.mark_complete(u1, 99, 3_900).await.unwrap());
    assert_eq!(store.utterance(u1).await.unwrap().unwrap(), u);

    // A second utterance that stays receiving, to show what unfinished skips.
    let u2 = Uuid::now_v7();
    store.open_utterance(u2, kitchen.id, Codec::Pcm16k, 2_100).await.unwrap();
    assert_eq!(store.unfinished().await.unwrap(), vec![u1]);

    // --- Speech to text ---
    store.mark_stt_started(u1, 4_000).await.unwrap();
    assert_eq!(store.transcript_writes(u1).await.unwrap(), 0);
    store.set_transcript(u1, "what is the weather", 5_000).await.unwrap();
    let u = store.utterance(u1).await.unwrap().unwrap();
    assert_eq!(u.state, UtteranceState::Transcribed);
    assert_eq!(u.transcript.as_deref(), Some("what is the weather"));
    assert_eq!((u.timings.stt_start_ms, u.timings.stt_done_ms), (Some(4_000), Some(5_000)));
    assert_eq!(store.transcript_writes(u1).await.unwrap(), 1);
    // Transcribed but not replied: a restarted server must pick it up again.
    assert_eq!(store.unfinished().await.unwrap(), vec![u1]);
    // A second transcription is counted (that is what the counter is for),
    // but the first transcript stands and the state does not move.
    store.set_transcript(u1, "what is the feather", 5_500).await.unwrap();
    assert_eq!(store.transcript_writes(u1).await.unwrap(), 2);
    assert_eq!(store.utterance(u1).await.unwrap().unwrap(), u);

    // --- Reply and its push request, once ---
    store.set_reply(u1, "Weather", "Sunny, 21 °C", Some(&fcm), 6_000).await.unwrap();
    let u = store.utterance(u1).await.unwrap().unwrap();
    assert_eq!(u.state, UtteranceState::Replied);
    assert_eq!((u.reply_title.as_deref(), u.reply_body.as_deref()), (Some("Weather"), Some("Sunny, 21 °C")));
    assert_eq!(u.timings.reply_ms, Some(6_000));
    // Replayed with other words and another target: nothing changes.
    store.set_reply(u1, "Again", "Other", Some(&apns), 6_500).await.unwrap();
    assert_eq!(store.utterance(u1).await.unwrap().unwrap(), u);
    assert_eq!(store.unfinished().await.unwrap(), Vec::<Uuid>::new());

    let pushes = store.unsent_pushes(10).await.unwrap();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    let p = &pushes[0];
    assert_eq!((p.utterance_id, p.device_id), (u1, kitchen.id));
    assert_eq!(p.target, fcm);
    assert_eq!((p.title.as_str(), p.body.as_str()), ("Weather", "Sunny, 21 °C"));
    assert_eq!((p.created_ms, p.sent_ms), (6_000, None));

    // A reply without a push target queues nothing.
    let u3 = walk_to_transcribed(&*store, kitchen.id, 7_000).await;
    store.set_reply(u3, "Quiet", "No push", None, 7_400).await.unwrap();
    assert_eq!(store.utterance(u3).await.unwrap().unwrap().state, UtteranceState::Replied);
    // A later one with a target queues behind the first: oldest first.
    let u4 = walk_to_transcribed(&*store, hall.id, 8_000).await;
    store.set_reply(u4, "Hall", "Second", Some(&apns), 8_400).await.unwrap();
    let order: Vec<Uuid> = store.unsent_pushes(10).await.unwrap().iter().map(|p| p.utterance_id).collect();
    assert_eq!(order, vec![u1, u4]);
    let first: Vec<Uuid> = store.unsent_pushes(1).await.unwrap().iter().map(|p| p.utterance_id).collect();
    assert_eq!(first, vec![u1]);

    // --- Push sent ---
    store.mark_push_sent(u1, 9_000).await.unwrap();
    let left: Vec<Uuid> = store.unsent_pushes(10).await.unwrap().iter().map(|p| p.utterance_id).collect();
    assert_eq!(left, vec![u4]);
    assert_eq!(store.utterance(u1).await.unwrap().unwrap().timings.push_ms, Some(9_000));
    // Marked again: the first send time stays.
    store.mark_push_sent(u1, 9_500).await.unwrap();
    assert_eq!(store.utterance(u1).await.unwrap().unwrap().timings.push_ms, Some(9_000));
    // No push request for u3.
    assert!(matches!(store.mark_push_sent(u3, 9_600).await, Err(StoreError::NoUtterance(id)) if id == u3));

    // --- Failure ---
    store.set_failed(u2, "stream abandoned").await.unwrap();
    store.set_failed(u2, "a later consequence").await.unwrap();
    let u = store.utterance(u2).await.unwrap().unwrap();
    assert_eq!(u.state, UtteranceState::Failed);
    assert_eq!(u.error.as_deref(), Some("stream abandoned"), "the first error is the cause");
    assert!(!store.mark_complete(u2, 10, 10_000).await.unwrap());
    // A replied utterance is not failed after the fact.
    store.set_failed(u1, "too late").await.unwrap();
    assert_eq!(store.utterance(u1).await.unwrap().unwrap().state, UtteranceState::Replied);

    // --- Out of order calls change nothing ---
    let u5 = Uuid::now_v7();
    store.open_utterance(u5, hall.id, Codec::Opus16k20ms, 11_000).await.unwrap();
    store.mark_stt_started(u5, 11_100).await.unwrap();
    store.set_reply(u5, "Early", "Reply", Some(&apns), 11_200).await.unwrap();
    let u = store.utterance(u5).await.unwrap().unwrap();
    assert_eq!(u.state, UtteranceState::Receiving);
    assert_eq!(u.timings, Timings::default());
    assert_eq!(store.unsent_pushes(10).await.unwrap().len(), 1);

    // --- Unknown ids ---
    let nobody = Uuid::now_v7();
    let no = |r: Result<(), StoreError>| matches!(r, Err(StoreError::NoUtterance(id)) if id == nobody);
    assert!(matches!(store.mark_complete(nobody, 1, 0).await, Err(StoreError::NoUtterance(_))));
    assert!(no(store.mark_stt_started(nobody, 0).await));
    assert!(no(store.set_transcript(nobody, "x", 0).await));
    assert!(no(store.set_reply(nobody, "x", "y", Some(&fcm), 0).await));
    assert!(no(store.set_failed(nobody, "x").await));
    assert!(no(store.mark_push_sent(nobody, 0).await));
    assert!(matches!(store.transcript_writes(nobody).await, Err(StoreError::NoUtterance(_))));

    Written {
        devices: vec![(kitchen_hash, kitchen), (hall_hash, hall)],
        utterances: vec![u1, u2, u3, u4, u5],
    }
}

/// Opens an utterance and takes it through complete to transcribed.
async fn walk_to_transcribed(store: &dyn Store, device: Uuid, t: i64) -> Uuid {
    let id = Uuid::now_v7();
    store.open_utterance(id, device, Codec::Opus16k20ms, t).await.unwrap();
    assert!(store.mark_complete(id, 10, t + 100).await.unwrap());
    store.mark_stt_started(id, t + 200).await.unwrap();
    store.set_transcript(id, "hello", t + 300).await.unwrap();
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
    let pushes_before = store.unsent_pushes(100).await.unwrap();
    drop(store);

    let store = SqliteStore::open(&path).await.unwrap();
    for (hash, device) in &written.devices {
        assert_eq!(store.device_by_token_hash(hash).await.unwrap().as_ref(), Some(device));
    }
    for u in &before {
        assert_eq!(store.utterance(u.id).await.unwrap().as_ref(), Some(u));
    }
    assert_eq!(store.unsent_pushes(100).await.unwrap(), pushes_before);
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
                    store.mark_complete(id, 7, i as i64).await.unwrap()
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

    sqlx::query("UPDATE devices SET push_platform = 'pager', push_token = 't'").execute(&mut conn).await.unwrap();
    assert!(matches!(store.device_by_token_hash(&[4u8; 32]).await, Err(StoreError::Corrupt(m)) if m.contains("pager")));
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
