//! Benchmark: the server's per-frame ingest work outside the network, with
//! criterion.
//!
//! One iteration is one group commit of the streaming endpoint (see the
//! `ingest` module doc) for a single utterance, as the connection loop does
//! it after the socket: parse each AUDIO message (`wire::parse_binary`), copy
//! its frame into the batch, append the batch to the utterance's file with one
//! write and one `fdatasync` (`UtteranceAudio::append_durable`), and encode
//! the cumulative ACK. Batches of 1, 10 and 50 frames of 80 bytes (20 ms Opus
//! frames), so the per-frame cost of one fsync amortised over a batch shows:
//! the time per iteration is one commit, the throughput is frames per second
//! (50 frames a second is one live stream).
//!
//! The files are in a temporary directory under Cargo's target tmp dir
//! (`CARGO_TARGET_TMPDIR`), i.e. on the disk the build lives on, not a tmpfs:
//! the figures are the fdatasync latency of that disk. Each batch size
//! appends to its own utterance file, which grows through the run, as a long
//! utterance's does. The tokio hop (`spawn_blocking`), the socket and the
//! metrics are not included.
//!
//! `group_commit_*`: what the streaming endpoint does now, through the
//! store's group committer (`AudioStore::commit`): N utterances (one a
//! connection) of 10 frames each (200 ms of audio, one relay send) submitted
//! together, then every answer awaited. One iteration is one group commit:
//! the committer writes the N appends and syncs once for all of them
//! (`syncfs` from two files up, `fdatasync` for one; see
//! `lanyard_server`'s `audio::commit`). The parse and the ACK are as above
//! and not repeated. Back-to-back iterations meet the committer's window
//! (`COMMIT_WINDOW`, 5 ms between sync starts), so an iteration takes at
//! least that: `group_commit_1x10_frames` shows the window, not the sync,
//! and the larger ones what the writes and one sync add to it.
//!
//! Run: `cargo bench -p lanyard-server --bench ingest`
//! (a quick look: `-- --warm-up-time 1 --measurement-time 3`).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lanyard_proto::Uuid;
use lanyard_proto::wire::{self, Ack, Audio, Binary};
use lanyard_server::{Append, AudioStore};

/// Bytes in one 20 ms Opus frame at 32 kb/s.
const FRAME_LEN: usize = 80;
/// The stream handle every message carries.
const HANDLE: u32 = 1;

/// One batch of AUDIO messages as they arrive on the socket.
fn messages(batch: usize) -> Vec<Vec<u8>> {
    (0..batch)
        .map(|i| {
            let frame: Vec<u8> = (0..FRAME_LEN).map(|j| (i * 31 + j * 7) as u8).collect();
            wire::encode_audio(&Audio { handle: HANDLE, seq: i as u32, frame: &frame })
        })
        .collect()
}

fn ingest(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = AudioStore::new(dir.path().join("audio")).unwrap();
    let device = Uuid::now_v7();
    let mut g = c.benchmark_group("ingest");
    for batch in [1usize, 10, 50] {
        let msgs = messages(batch);
        let writer = store.writer(device, Uuid::now_v7()).unwrap();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("commit_{batch}_frames"), |b| {
            b.iter(|| {
                // The connection loop's `on_binary`: parse, then copy the frame
                // out of the socket buffer into the batch.
                let frames: Vec<Vec<u8>> = msgs
                    .iter()
                    .map(|m| match wire::parse_binary(black_box(m)).unwrap() {
                        Binary::Audio(a) => a.frame.to_vec(),
                        Binary::Ack(_) => unreachable!("only AUDIO is sent"),
                    })
                    .collect();
                // `commit`: one write and one fdatasync, then the ACK.
                let mut w = writer.lock().unwrap();
                let first = w.frames();
                let next = w.append_durable(first, frames.iter().map(Vec::as_slice)).unwrap();
                black_box(wire::encode_ack(Ack { handle: HANDLE, next }))
            })
        });
    }
    for streams in [1usize, 100, 1000] {
        let writers: Vec<_> = (0..streams).map(|_| store.writer(device, Uuid::now_v7()).unwrap()).collect();
        let frames: Vec<Vec<u8>> = messages(10)
            .iter()
            .map(|m| match wire::parse_binary(m).unwrap() {
                Binary::Audio(a) => a.frame.to_vec(),
                Binary::Ack(_) => unreachable!("only AUDIO is sent"),
            })
            .collect();
        g.throughput(Throughput::Elements(streams as u64 * 10));
        g.bench_function(format!("group_commit_{streams}x10_frames"), |b| {
            b.iter(|| {
                let tickets: Vec<_> = writers
                    .iter()
                    .map(|w| {
                        let first = w.lock().unwrap().frames();
                        store.commit(Append { audio: w.clone(), first, frames: frames.clone(), then: None })
                    })
                    .collect();
                for t in tickets {
                    black_box(t.wait().unwrap());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
