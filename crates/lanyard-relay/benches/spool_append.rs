//! Benchmark: spool append throughput, in frames per second.
//!
//! Appends 20 ms Opus-sized frames (80 bytes) to a spool in a temporary
//! directory, one `write()` per frame as the relay does, and measures three
//! ways side by side in one run: without fsync, with the default fsync
//! window (a `sync` every 10 frames = 200 ms of audio), and with a `sync`
//! after every frame (what acking-before-fsync would have to pay). Reports
//! median and spread over several rounds.
//!
//! Run: `cargo bench -p lanyard-relay --bench spool_append`.

use std::time::Instant;

use lanyard_proto::ble::Codec;
use lanyard_relay::spool::Spool;
use uuid::Uuid;

const FRAMES: usize = 20_000;
const ROUNDS: usize = 5;

fn round(sync_every: Option<usize>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path()).unwrap();
    let frame = [0x5au8; 80];
    let id = Uuid::now_v7();
    spool.begin(id, Codec::Opus16k20ms, 0).unwrap();
    let t = Instant::now();
    for i in 0..FRAMES {
        spool.append_frame(id, &frame).unwrap();
        if sync_every.is_some_and(|n| i % n == n - 1) {
            spool.sync().unwrap();
        }
    }
    spool.sync().unwrap();
    FRAMES as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    println!("spool append, {FRAMES} frames of 80 bytes, {ROUNDS} rounds (frames/s; 50 frames/s is real time):");
    for (name, sync) in
        [("no fsync", None), ("fsync every 10 frames (200 ms)", Some(10)), ("fsync every frame", Some(1))]
    {
        let mut r: Vec<f64> = (0..ROUNDS).map(|_| round(sync)).collect();
        r.sort_by(f64::total_cmp);
        println!(
            "  {name:32} median {:>10.0}   min {:>10.0}   max {:>10.0}   ({:.0}x real time)",
            r[ROUNDS / 2],
            r[0],
            r[ROUNDS - 1],
            r[ROUNDS / 2] / 50.0
        );
    }
}
