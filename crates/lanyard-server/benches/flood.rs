//! Benchmark: does one device's flood of utterances move another device's
//! latency? (issue 13's flood bar: B's end of speech → reply p95 moves by
//! no more than 20 %.)
//!
//! A real server on 127.0.0.1:0 with the local speech model and the default
//! limits. Device B streams a spoken question (Opus, as a relay does), ends
//! it, and the clock runs from its `end` to the `reply` on its stream; B
//! asks `LANYARD_BENCH_N` questions (40 by default: a p95 of 20 moved by 0.3 between runs), one after another,
//! a second apart (within its own responder budget of one reply a second).
//! This runs twice in one process: quiet, then while device A opens, sends a
//! frame of and ends `LANYARD_FLOOD_N` utterances (1,000 by default) as fast
//! as it can, reconnecting at once whenever the server closes its stream
//! (the opens budget closes it with 4004) or refuses it (429 while the
//! device has no opens left). The report gives the median and
//! p95 of both runs, their ratio, and what the flood achieved.
//!
//! Run: `cargo test -p lanyard-server --bench flood` (the test profile: the
//! bench profile would build CTranslate2 a second time, in release).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use lanyard_proto::Uuid;
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{ClientMsg, ServerMsg};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// B's questions, one after another: seconds from `end` to `reply`.
async fn questions(h: &Harness, frames: &[Vec<u8>], n: usize) -> Vec<f64> {
    let mut ws = h.ws(&h.token_b).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = Uuid::now_v7();
        send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false })
            .await;
        expect_opened(&mut ws).await;
        for (seq, f) in frames.iter().enumerate() {
            send_audio(&mut ws, 1, seq as u32, f).await;
        }
        expect_ack(&mut ws, frames.len() as u32).await;
        send_text(&mut ws, &ClientMsg::End { utterance: id, frames: frames.len() as u32, speech_frames: None }).await;
        let ended = Instant::now();
        loop {
            match recv(&mut ws).await {
                In::Text(ServerMsg::Reply { utterance, .. }) if utterance == id => break,
                In::Close(c, r) => panic!("B's stream closed {c} {r}"),
                _ => {}
            }
        }
        out.push(ended.elapsed().as_secs_f64());
        // A person's pace, and within B's own responder budget (1 a second).
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    out.sort_by(f64::total_cmp);
    out
}

/// A stream of `token`'s device, or `None` if the server refused it.
async fn try_ws(h: &Harness, token: &str) -> Option<Ws> {
    tokio_tungstenite::connect_async(h.ws_request(Some(&format!("Bearer {token}")))).await.ok().map(|(ws, _)| ws)
}

/// Reads until `done` matches a message; `false` if the server closed the
/// stream first.
async fn until(ws: &mut Ws, done: impl Fn(&ServerMsg) -> bool) -> bool {
    loop {
        match recv(ws).await {
            In::Text(m) if done(&m) => return true,
            In::Close(..) => return false,
            _ => {}
        }
    }
}

/// A's flood: open, one frame, end, as fast as the server lets it, until
/// `n` utterances were ended or `stop`. Returns (ended, reconnections).
async fn flood(h: &Harness, n: u32, retry: Duration, stop: &AtomicBool, ended: &AtomicU32) -> u32 {
    let mut reconnects = 0;
    let silence = [0u8; 640];
    'connect: while ended.load(Ordering::Relaxed) < n && !stop.load(Ordering::Relaxed) {
        // Refused (429) while it has no opens left: it tries again at once.
        let Some(mut ws) = try_ws(h, &h.token_a).await else {
            reconnects += 1;
            tokio::time::sleep(retry).await;
            continue;
        };
        while ended.load(Ordering::Relaxed) < n && !stop.load(Ordering::Relaxed) {
            let id = Uuid::now_v7();
            send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Pcm16k, unmarked: false })
                .await;
            let mut done = until(&mut ws, |m| matches!(m, ServerMsg::Opened { .. })).await;
            if done {
                send_audio(&mut ws, 1, 0, &silence).await;
                send_text(&mut ws, &ClientMsg::End { utterance: id, frames: 1, speech_frames: None }).await;
                done = until(&mut ws, |m| matches!(m, ServerMsg::Complete { .. })).await;
            }
            if !done {
                reconnects += 1;
                tokio::time::sleep(retry).await;
                continue 'connect;
            }
            ended.fetch_add(1, Ordering::Relaxed);
        }
    }
    reconnects
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env("LANYARD_BENCH_N", 40);
    let flood_n = env("LANYARD_FLOOD_N", 1000) as u32;
    // How long A waits after a refusal before it tries again: 0, as fast as
    // it can, by default.
    let retry = Duration::from_millis(env("LANYARD_FLOOD_RETRY_MS", 0) as u64);
    let h = Arc::new(harness().await);
    let frames = speech_frames("What is on my calendar tomorrow morning?");
    // Warm-up: the model's first decode, the first reply.
    questions(&h, &frames, 2).await;

    let quiet = questions(&h, &frames, n).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ended = Arc::new(AtomicU32::new(0));
    // A is another client, not a task of the server's runtime: on a
    // thread and runtime of its own, as another process would be, so that
    // its busy loop competes for the CPU (as it does on a shared box) but
    // cannot starve the server's tasks of their runtime's turns.
    let flooder = {
        let (h, stop, ended) = (h.clone(), stop.clone(), ended.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(flood(&h, flood_n, retry, &stop, &ended))
        })
    };
    let started = Instant::now();
    // Let the flood get going before B asks.
    while ended.load(Ordering::Relaxed) < 20 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flooded = questions(&h, &frames, n).await;
    let flood_secs = started.elapsed().as_secs_f64();
    let during = ended.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let reconnects = tokio::task::spawn_blocking(move || flooder.join().unwrap()).await.unwrap();
    let opens = counter(&h.url, "lanyard_limited_total{limit=\"opens\"}").await;
    let replies = counter(&h.url, "lanyard_limited_total{limit=\"replies\"}").await;

    let (q50, q95, f50, f95) =
        (percentile(&quiet, 0.5), percentile(&quiet, 0.95), percentile(&flooded, 0.5), percentile(&flooded, 0.95));
    println!("flood: B's end -> reply over {n} questions each run, the same server and process");
    println!("  quiet    median {:>6.0} ms   p95 {:>6.0} ms", q50 * 1e3, q95 * 1e3);
    println!("  flooded  median {:>6.0} ms   p95 {:>6.0} ms", f50 * 1e3, f95 * 1e3);
    println!("  ratio    median {:>6.2}      p95 {:>6.2}   (bar: p95 <= 1.20)", f50 / q50, f95 / q95);
    println!(
        "  A ended {during} utterances in {flood_secs:.1} s while B asked ({:.0}/s); {reconnects} reconnections; \
         limited: opens {opens}, replies {replies}",
        f64::from(during) / flood_secs
    );
    if let Ok(h) = Arc::try_unwrap(h) {
        h.server.stop().await;
    }
}
