//! The relay is killed with SIGKILL at 20 random points while the pendant
//! speaks, and restarted on the same spool each time.
//!
//! After every restart, nothing the server acknowledged is sent again (the
//! server counts duplicate frames: there must be none), and nothing the relay
//! spooled is missing at the server (for every utterance, the server holds
//! exactly the frames the relay ended it with). Each utterance is
//! transcribed once. Audio spoken while the relay was dead is lost, as over
//! the air: that is the pendant's loss, not the relay's.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{Child, RelayEvent, SimEvent, Stamped, add_device, expect_event, pendant, relay, start_server};
use lanyard_store::Store;
use lanyard_store_sqlite::SqliteStore;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

const KILLS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_lose_nothing_spooled_and_resend_nothing_acknowledged() {
    let seed: u64 = std::env::var("LANYARD_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("kill points from seed {seed} (set LANYARD_KILL_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let spool = dir.path().join("spool");
    let token = add_device(&server_dir, "kill-many");
    let (_server, url) = start_server(&server_dir).await;

    let mut sim_args = vec!["pendant-sim", "--listen", "127.0.0.1:0", "--wait-for-central", "--linger-secs", "300"];
    sim_args.extend(["--gap-ms", "400", "--mtu", "23"]);
    for s in lanyard_pendant::speech::DEMO_SENTENCES.iter().chain(lanyard_pendant::speech::DEMO_SENTENCES) {
        sim_args.extend(["--say", s]);
    }
    let mut pendant = pendant(&sim_args);
    let sim_addr = expect_event!(pendant, Duration::from_secs(60), SimEvent::Listening { addr } => addr).to_string();
    let relay_args =
        ["relay", "--server", &url, "--token", &token, "--pendant", &sim_addr, "--spool-dir", spool.to_str().unwrap()];

    // Frames each utterance was ended with, by whichever relay ended it.
    let mut ended: BTreeMap<Uuid, u64> = BTreeMap::new();
    let mut started: HashSet<Uuid> = HashSet::new();
    let drain = |p: &mut Child<Stamped>, ended: &mut BTreeMap<Uuid, u64>, started: &mut HashSet<Uuid>| {
        while let Some(stamped) = p.try_next() {
            match stamped.event {
                RelayEvent::UtteranceStarted { id } => {
                    started.insert(id);
                }
                RelayEvent::UtteranceEnded { id, frames, .. } => {
                    ended.insert(id, u64::from(frames));
                }
                _ => {}
            }
        }
    };

    let mut relay_now = relay(&relay_args);
    expect_event!(relay_now, Duration::from_secs(60), Stamped { event: RelayEvent::UtteranceStarted { .. }, .. } => ());
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1200))).await;
        relay_now.process.kill().await.unwrap();
        // What the relay printed before it died is still in the pipe.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
        drain(&mut relay_now, &mut ended, &mut started);
        relay_now = relay(&relay_args);
    }
    // Let the pendant finish and the last relay deliver everything.
    expect_event!(pendant, Duration::from_secs(120), SimEvent::Done { .. } => ());
    let store = SqliteStore::open(&server_dir.join("lanyard.db")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        drain(&mut relay_now, &mut ended, &mut started);
        // Every utterance any relay started, ended and transcribed.
        started.extend(ended.keys().copied());
        let mut all_done = started.iter().all(|id| ended.contains_key(id));
        for id in &started {
            let replied = store.utterance(*id).await.unwrap().is_some_and(|u| u.transcript.is_some());
            all_done &= replied;
        }
        if all_done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every utterance was delivered: {} started, {} ended",
            started.len(),
            ended.len()
        );
    }

    for (id, frames) in &ended {
        let u = store.utterance(*id).await.unwrap().expect("every spooled utterance reached the server");
        assert_eq!(u64::from(u.frames), *frames, "utterance {id}: the server holds exactly what the relay spooled");
        assert_eq!(store.transcript_writes(*id).await.unwrap(), 1, "utterance {id} transcribed once");
    }
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    let duplicates: f64 = metrics
        .lines()
        .find(|l| l.starts_with("lanyard_frames_duplicate_total"))
        .and_then(|l| l.split_whitespace().last())
        .map_or(0.0, |v| v.parse().unwrap());
    let received: f64 = metrics
        .lines()
        .find(|l| l.starts_with("lanyard_frames_received_total"))
        .and_then(|l| l.split_whitespace().last())
        .expect("the server exports lanyard_frames_received_total")
        .parse()
        .unwrap();
    let stored: u64 = ended.values().sum();
    eprintln!(
        "{KILLS} kills: {} utterances, {stored} frames stored, {received} frames received, {duplicates} duplicates",
        ended.len()
    );
    assert_eq!(duplicates, 0.0, "nothing acknowledged was sent again");
    assert_eq!(received as u64, stored, "every frame crossed the wire once");
    relay_now.kill().await;
}
