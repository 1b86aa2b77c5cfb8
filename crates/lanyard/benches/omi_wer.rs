//! Benchmark: an Omi-style pendant's unmarked stream of real speech against
//! the same recordings sent with utterance markers (issue "Every word":
//! "Omi-style streams of real speech (no markers): all finals together are
//! within 1 point of the WER of the same recordings sent with markers").
//!
//! # What is measured
//!
//! Real processes on loopback, as a user runs them: `lanyard serve` (the
//! default engine, Whisper tiny.en), `lanyard pendant-sim` speaking passages
//! of the long reference set (`lanyard-stt/benches/long_set`: real people's
//! readings and recorded prompts by default) at real time through BLE
//! framing, and `lanyard relay` taking them to the server. Twice, each on a
//! fresh server:
//!
//! - **marked**: Lanyard framing, each passage one utterance with start and
//!   end markers;
//! - **omi**: Omi framing with `--continuous`: no markers, silent frames
//!   through the gaps, so only the server's voice activity detector splits
//!   the stream (its `endpoint` messages, on which the relay ends an
//!   utterance and carries the frames past the cut into the next).
//!
//! When the pendant is done and every utterance of the device has its final
//! transcript, all finals are joined in order (utterance ids are UUIDv7,
//! ordered by time) and scored against all reference sentences joined: the
//! word error rate, and the no-dropped-sentence check of
//! `lanyard_stt::sentences` (a reference sentence with more than half its
//! words missing, or a sentence more often in the text than spoken).
//!
//! # How to run
//!
//! ```text
//! cargo test -p lanyard --bench omi_wer     # the dev profile: one CTranslate2 build
//! ```
//!
//! It streams at real time, so it takes twice the audio's length and a
//! minute more. `LANYARD_BENCH_ONLY=name,name` picks passages of the long
//! set (default: three real ones, about four minutes of audio), and
//! `LANYARD_BENCH_TRACE=1` prints every final of both runs.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../lanyard-stt/benches/long_set/mod.rs"]
mod long_set;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{SimEvent, add_device, expect_event, pendant, relay, start_server};
use lanyard_proto::wire::UtteranceState;
use lanyard_store::Store;
use lanyard_store_sqlite::SqliteStore;
use lanyard_stt::sentences::sentence_coverage;
use lanyard_stt::word_error_rate;

const DEFAULT_PASSAGES: &str = "austen-readings,prompts-01,ivr-call-loops";
/// Silence between two passages, as the pendant streams it.
const GAP_MS: &str = "2000";

struct Run {
    finals: Vec<String>,
    wall_secs: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let only = std::env::var("LANYARD_BENCH_ONLY").unwrap_or_else(|_| DEFAULT_PASSAGES.into());
    let names: Vec<&str> = only.split(',').map(str::trim).collect();
    let passages: Vec<long_set::Passage> =
        long_set::passages().into_iter().filter(|p| names.contains(&p.name.as_str())).collect();
    assert!(!passages.is_empty(), "LANYARD_BENCH_ONLY={only} names no passage of the long set");
    let audio: f64 = passages.iter().map(|p| p.secs()).sum();
    println!("lanyard Omi-style streams against marked ones");
    println!("  passages    {} ({:.1} min of audio): {}", passages.len(), audio / 60.0, names.join(", "));
    let scratch = tempfile::tempdir().unwrap();
    let mut say = Vec::new();
    for (i, p) in passages.iter().enumerate() {
        let path = scratch.path().join(format!("p{i:02}.raw"));
        let bytes: Vec<u8> =
            p.pcm16k.iter().flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        // The transcript is for the simulator's report only; `=` ends the path.
        say.push(format!("{}={}", path.display(), p.transcript().replace('\n', " ")));
    }
    let sentences: Vec<String> = passages.iter().flat_map(|p| p.sentences.clone()).collect();
    let reference = sentences.join(" ");

    let marked = run(scratch.path(), "marked", &say, audio).await;
    let omi = run(scratch.path(), "omi", &say, audio).await;

    println!();
    println!(
        "| {:<7} | {:>10} | {:>8} | {:>9} | dropped or doubled sentences |",
        "framing", "utterances", "WER", "wall secs"
    );
    println!("|---------|------------|----------|-----------|------------------------------|");
    let mut wers = Vec::new();
    for (name, r) in [("marked", &marked), ("omi", &omi)] {
        let text = r.finals.join(" ");
        let wer = 100.0 * f64::from(word_error_rate(&reference, &text));
        let c = sentence_coverage(&sentences, &text);
        println!(
            "| {name:<7} | {:>10} | {:>7.2}% | {:>9.0} | {} dropped, {} doubled |",
            r.finals.len(),
            wer,
            r.wall_secs,
            c.dropped.len(),
            c.doubled.len()
        );
        if std::env::var_os("LANYARD_BENCH_TRACE").is_some() {
            eprintln!("  {name} finals:");
            for f in &r.finals {
                eprintln!("    {f}");
            }
        }
        for d in &c.dropped {
            println!("    {name}: dropped {d:?}");
        }
        for d in &c.doubled {
            println!("    {name}: more often than spoken {d:?}");
        }
        wers.push(wer);
    }
    let gap = wers[1] - wers[0];
    println!();
    println!(
        "  {}  Omi-style WER <= marked WER + 1 pt: {gap:+.2} pt (margin {:+.2} pt)",
        if gap <= 1.0 { "PASS" } else { "FAIL" },
        1.0 - gap
    );
}

/// One framing's run on a fresh server; the finals in utterance order.
async fn run(scratch: &Path, framing: &str, say: &[String], audio_secs: f64) -> Run {
    let started = Instant::now();
    let dir = scratch.join(framing);
    let server_dir = dir.join("server");
    let token = add_device(&server_dir, "omi-wer");
    let (server, url) = start_server(&server_dir).await;
    let mut args = vec![
        "pendant-sim",
        "--listen",
        "127.0.0.1:0",
        "--wait-for-central",
        "--gap-ms",
        GAP_MS,
        "--linger-secs",
        "600",
    ];
    if framing == "omi" {
        args.extend(["--framing", "omi", "--continuous"]);
    } else {
        args.extend(["--framing", "lanyard"]);
    }
    for s in say {
        args.extend(["--say-wav", s.as_str()]);
    }
    let mut pendant = pendant(&args);
    let addr = expect_event!(pendant, Duration::from_secs(60), SimEvent::Listening { addr } => addr).to_string();
    let spool = dir.join("spool");
    let relay = relay(&[
        "relay",
        "--server",
        &url,
        "--token",
        &token,
        "--pendant",
        &addr,
        "--spool-dir",
        spool.to_str().unwrap(),
    ]);
    let speaking = Duration::from_secs_f64(audio_secs * 1.5 + 120.0);
    expect_event!(pendant, speaking, SimEvent::Done { .. } => ());
    eprintln!(
        "  {framing}: the pendant is done after {:.0} s; waiting for every final",
        started.elapsed().as_secs_f64()
    );

    // Every utterance transcribed, and no new one for a while (the last
    // one ends by the endpoint or the relay's silence timeout).
    let store = SqliteStore::open(&server_dir.join("lanyard.db")).await.unwrap();
    let device =
        store.device_by_token_hash(&lanyard_server::auth::hash_token(&token)).await.unwrap().expect("the device").id;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut stable_since: Option<(usize, Instant)> = None;
    let finals = loop {
        assert!(
            Instant::now() < deadline,
            "{framing}: utterances still not transcribed 180 s after the pendant was done"
        );
        let mut all = store.list_utterances(device, None, 1000).await.unwrap();
        all.sort_by_key(|u| u.id);
        let done = !all.is_empty()
            && all.iter().all(|u| {
                matches!(u.state, UtteranceState::Transcribed | UtteranceState::Replied | UtteranceState::Failed)
            });
        match stable_since {
            Some((n, since)) if done && n == all.len() && since.elapsed() > Duration::from_secs(5) => {
                break all.into_iter().filter_map(|u| u.transcript).collect::<Vec<_>>();
            }
            Some((n, _)) if done && n == all.len() => {}
            _ => stable_since = done.then(|| (all.len(), Instant::now())),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    relay.kill().await;
    pendant.kill().await;
    server.child.kill().await;
    Run { finals, wall_secs: started.elapsed().as_secs_f64() }
}
