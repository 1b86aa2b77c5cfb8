//! The bounded spool: past `max_bytes` the oldest utterances are evicted,
//! durably and reported, and the one being recorded never is.

use std::path::Path;

use lanyard_proto::ble::Codec;
use lanyard_relay::spool::{DEFAULT_MAX_BYTES, FaultyFs, SEGMENT_BYTES, Spool, SpoolConfig};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use uuid::Uuid;

const MAX: u64 = 32 * 1024;

fn cfg() -> SpoolConfig {
    SpoolConfig { max_bytes: MAX, segment_bytes: 4096 }
}

fn open(fs: &FaultyFs) -> Spool<FaultyFs> {
    Spool::open_with(fs.clone(), Path::new("/spool"), cfg()).unwrap().0
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// Records an utterance of `frames` frames of 1000 bytes and ends it.
fn record(s: &mut Spool<FaultyFs>, u: Uuid, frames: usize) {
    s.begin(u, Codec::Opus16k20ms, 0).unwrap();
    for _ in 0..frames {
        s.append_frame(u, &[7; 1000]).unwrap();
    }
    s.end(u, 0).unwrap();
}

#[test]
fn the_default_bound_is_64_mib_of_1_mib_segments() {
    assert_eq!(SpoolConfig::default(), SpoolConfig { max_bytes: DEFAULT_MAX_BYTES, segment_bytes: SEGMENT_BYTES });
    assert_eq!(DEFAULT_MAX_BYTES, 64 << 20);
}

#[test]
fn the_oldest_utterances_go_first_and_are_reported_once() {
    let fs = FaultyFs::new();
    let mut s = open(&fs);
    record(&mut s, id(1), 12);
    record(&mut s, id(2), 12);
    assert_eq!(s.evictions(), 0);
    assert!(s.take_evicted().is_empty());
    // A third one does not fit next to both: the oldest goes.
    record(&mut s, id(3), 12);
    let reason = format!("evicted: spool full ({MAX} bytes)");
    assert_eq!(s.take_evicted(), vec![(id(1), reason.clone())]);
    assert!(s.take_evicted().is_empty(), "drained");
    assert_eq!(s.evictions(), 1);
    assert!(s.disk_bytes() <= MAX, "{} bytes", s.disk_bytes());
    assert!(!s.over_bound());
    assert!(s.utterance(id(1)).is_none_or(|u| u.done && u.dropped.as_deref() == Some(reason.as_str())));
    assert_eq!(s.pending().map(|u| u.id).collect::<Vec<_>>(), vec![id(2), id(3)]);
    for seq in 0..12 {
        assert_eq!(s.read_frame(id(3), seq).unwrap(), vec![7; 1000]);
    }
    // The eviction is durable: after a crash, the evicted one stays gone.
    drop(s);
    fs.reboot(1);
    let s = open(&fs);
    assert_eq!(s.pending().map(|u| u.id).collect::<Vec<_>>(), vec![id(2), id(3)]);
    assert_eq!(s.evictions(), 0, "the count is per open spool");
}

#[test]
fn the_live_utterance_is_kept_past_the_bound() {
    let fs = FaultyFs::new();
    let mut s = open(&fs);
    record(&mut s, id(1), 5);
    let live = id(2);
    s.begin(live, Codec::Opus16k20ms, 0).unwrap();
    // Twice the bound: everything else is evicted, then the spool grows.
    for seq in 0..64u32 {
        assert_eq!(s.append_frame(live, &[seq as u8; 1000]).unwrap(), seq);
    }
    assert_eq!(s.take_evicted().iter().map(|(u, _)| *u).collect::<Vec<_>>(), vec![id(1)]);
    assert!(s.over_bound());
    assert!(s.disk_bytes() > MAX);
    assert_eq!(s.utterance(live).unwrap().frame_count(), 64);
    for seq in 0..64u32 {
        assert_eq!(s.read_frame(live, seq).unwrap(), vec![seq as u8; 1000]);
    }
    // Once it is delivered, the space comes back.
    s.end(live, 0).unwrap();
    s.mark_done(live).unwrap();
    assert!(!s.over_bound());
    assert!(s.disk_bytes() <= 4096 + 1100);
}

#[derive(Debug, Clone)]
enum Op {
    Begin,
    Frame(usize),
    End,
    Done,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Begin),
        12 => (0usize..2000).prop_map(Op::Frame),
        1 => Just(Op::End),
        1 => Just(Op::Done),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/spool_evict.txt"))),
        ..ProptestConfig::default()
    })]

    /// Whatever the traffic: the spool is over the bound only while the one
    /// utterance being appended to is all that is left to deliver; evictions
    /// are reported oldest first, never the live one, and agree with the count.
    #[test]
    fn the_bound_holds_unless_only_the_live_utterance_is_left(ops in proptest::collection::vec(op(), 1..200)) {
        let fs = FaultyFs::new();
        let mut s = open(&fs);
        let mut n = 0u128;
        let mut live: Option<Uuid> = None;
        let mut evicted = Vec::new();
        for op in ops {
            match op {
                Op::Begin => {
                    n += 1;
                    s.begin(id(n), Codec::Pcm16k, 0).unwrap();
                    live = Some(id(n));
                }
                Op::Frame(len) => {
                    let Some(u) = live else { continue };
                    s.append_frame(u, &vec![1; len]).unwrap();
                }
                Op::End => if let Some(u) = live.take() { s.end(u, 0).unwrap(); },
                Op::Done => {
                    let oldest = s.pending().map(|u| u.id).find(|u| Some(*u) != live);
                    if let Some(u) = oldest { s.mark_done(u).unwrap(); }
                }
            }
            let new = s.take_evicted();
            for (u, reason) in &new {
                prop_assert!(Some(*u) != live, "the live utterance was evicted");
                prop_assert!(reason.starts_with("evicted: spool full"));
                prop_assert!(evicted.last().is_none_or(|l| l < u), "not oldest first: {u} after {evicted:?}");
                evicted.push(*u);
            }
            if matches!(op, Op::Begin | Op::Frame(_)) && s.disk_bytes() > MAX {
                let pending: Vec<Uuid> = s.pending().map(|u| u.id).collect();
                prop_assert_eq!(pending, live.into_iter().collect::<Vec<_>>());
            }
        }
        prop_assert_eq!(s.evictions(), evicted.len() as u64);
    }
}
