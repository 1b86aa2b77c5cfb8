//! The spool's crash model: random work on a [`FaultyFs`] that crashes at a
//! random mutating operation (mid-record included), reboots with random torn
//! writes and half-applied directory changes, and must recover to a state
//! that keeps every promise the spool made before the crash:
//!
//! - (a) everything a completed `sync()` (or `mark_done`/`mark_dropped`,
//!   which sync) covered is there, byte for byte;
//! - (b) no frame comes back different from what was appended at its seq;
//! - (c) record ids never go back: they rise across segments, and after the
//!   crash the next id is past every id that was synced;
//! - (d) appending after recovery works, and a clean reopen and a second
//!   crash both recover exactly the same state.
//!
//! Also some direct checks of the FaultyFs model itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lanyard_proto::ble::{Codec, MAX_FRAME_LEN};
use lanyard_relay::spool::{FaultyFs, Spool, SpoolConfig, SpoolFile, SpoolFs};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use uuid::Uuid;

const DIR: &str = "/spool";

/// Small segments, so that a few large frames rotate, and collection runs
/// often; no bound, so nothing is evicted (eviction has its own tests).
fn cfg() -> SpoolConfig {
    SpoolConfig { segment_bytes: 2048, max_bytes: u64::MAX }
}

#[derive(Debug, Clone)]
enum Op {
    /// A new utterance, unmarked (no start marker opened it) if true.
    Begin(bool),
    /// A frame of this many bytes into the chosen unended utterance.
    Frame(usize, Index),
    /// A frame of the largest size: with small segments, a rotation.
    Large(Index),
    End(Index),
    Sync,
    /// The host's timed fsync: a sync job is made, a frame of this many
    /// bytes is appended to the chosen utterance while it runs (if one is
    /// open), then the job runs and is handed back.
    SyncJob(usize, Index),
    Done(Index),
    Dropped(Index),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<bool>().prop_map(Op::Begin),
        10 => (0usize..200, any::<Index>()).prop_map(|(n, i)| Op::Frame(n, i)),
        2 => any::<Index>().prop_map(Op::Large),
        2 => any::<Index>().prop_map(Op::End),
        3 => Just(Op::Sync),
        3 => (0usize..200, any::<Index>()).prop_map(|(n, i)| Op::SyncJob(n, i)),
        2 => any::<Index>().prop_map(Op::Done),
        1 => any::<Index>().prop_map(Op::Dropped),
    ]
}

/// Frame content that differs for every (utterance, seq), so a frame read
/// from the wrong place cannot pass for the right one.
fn frame_bytes(utt: usize, seq: usize, len: usize) -> Vec<u8> {
    let mut x = (utt as u64) << 32 | seq as u64 | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What the test knows about one utterance. `frames`, `end_at` and
/// `finish_tried` include an operation the crash interrupted, so they bound
/// what may be on disk from above; the `durable_*` fields, set at each
/// completed sync, bound it from below.
#[derive(Debug, Clone, Default)]
struct Utt {
    /// Begun unmarked: BEGIN's flag, which must come back as written.
    unmarked: bool,
    frames: Vec<Vec<u8>>,
    /// Frame count at END, if an END was tried.
    end_at: Option<usize>,
    /// A DONE or DROP was tried.
    finish_tried: bool,
    durable_begun: bool,
    durable_frames: usize,
    durable_ended: bool,
    durable_finished: bool,
}

#[derive(Debug, Default)]
struct Model {
    utts: Vec<(Uuid, Utt)>,
    /// `next_record_id()` at the last completed sync: no id below it may be
    /// handed out again.
    durable_next_id: u64,
}

/// What a sync made now would cover: per utterance, frames, ended,
/// finished; and the next record id.
type Covered = (Vec<(usize, bool, bool)>, u64);

impl Model {
    /// Everything so far is durable (a sync completed).
    fn synced(&mut self, s: &Spool<FaultyFs>) {
        let covered = self.covered(s);
        self.durable(&covered);
    }

    fn covered(&self, s: &Spool<FaultyFs>) -> Covered {
        let utts = self.utts.iter().map(|(_, u)| (u.frames.len(), u.end_at.is_some(), u.finish_tried)).collect();
        (utts, s.next_record_id())
    }

    /// What `covered` described is durable (a sync made then completed).
    fn durable(&mut self, (utts, next_id): &Covered) {
        for ((_, u), &(frames, ended, finished)) in self.utts.iter_mut().zip(utts) {
            u.durable_begun = true;
            u.durable_frames = u.durable_frames.max(frames);
            u.durable_ended |= ended;
            u.durable_finished |= finished;
        }
        self.durable_next_id = self.durable_next_id.max(*next_id);
    }

    fn pick(&self, i: &Index, f: impl Fn(&Utt) -> bool) -> Option<usize> {
        let open: Vec<usize> = (0..self.utts.len()).filter(|&k| f(&self.utts[k].1)).collect();
        (!open.is_empty()).then(|| open[i.index(open.len())])
    }
}

/// Runs `ops` until the first error. Every error must be the crash.
fn run(s: &mut Spool<FaultyFs>, fs: &FaultyFs, model: &mut Model, ops: &[Op]) -> Result<(), TestCaseError> {
    for op in ops {
        let res = apply(s, model, op);
        if let Err(e) = res {
            prop_assert!(fs.is_crashed(), "{op:?} failed without a crash: {e}");
            return Ok(());
        }
    }
    Ok(())
}

fn apply(s: &mut Spool<FaultyFs>, model: &mut Model, op: &Op) -> Result<(), Box<dyn std::error::Error>> {
    let unended = |u: &Utt| u.end_at.is_none() && !u.finish_tried;
    match op {
        Op::Begin(unmarked) => {
            let id = Uuid::from_u128(model.utts.len() as u128 + 1);
            model.utts.push((id, Utt { unmarked: *unmarked, ..Utt::default() }));
            s.begin_with(id, Codec::Pcm16k, 7, *unmarked)?;
        }
        Op::Frame(_, i) | Op::Large(i) => {
            let Some(k) = model.pick(i, unended) else { return Ok(()) };
            let len = if let Op::Frame(n, _) = op { *n } else { MAX_FRAME_LEN };
            let (id, u) = &mut model.utts[k];
            let f = frame_bytes(k, u.frames.len(), len);
            u.frames.push(f.clone());
            let seq = s.append_frame(*id, &f)?;
            assert_eq!(seq as usize, u.frames.len() - 1);
        }
        Op::End(i) => {
            let Some(k) = model.pick(i, unended) else { return Ok(()) };
            let (id, u) = &mut model.utts[k];
            u.end_at = Some(u.frames.len());
            s.end(*id, 0)?;
        }
        Op::Sync => {
            s.sync()?;
            model.synced(s);
        }
        Op::SyncJob(n, i) => {
            // As the host does: the job is made under the lock, the fsync
            // runs while appends go on, and the job is handed back.
            let covered = model.covered(s);
            let job = s.sync_job()?;
            if let Some(k) = model.pick(i, unended) {
                let (id, u) = &mut model.utts[k];
                let f = frame_bytes(k, u.frames.len(), *n);
                u.frames.push(f.clone());
                s.append_frame(*id, &f)?;
            }
            if let Some(job) = job {
                job.run()?;
                s.synced(job);
            }
            // Everything appended before the job was made is durable now
            // (and if nothing was unsynced, it already was).
            model.durable(&covered);
        }
        Op::Done(i) | Op::Dropped(i) => {
            let Some(k) = model.pick(i, |u| !u.finish_tried) else { return Ok(()) };
            let (id, u) = &mut model.utts[k];
            u.finish_tried = true;
            if matches!(op, Op::Done(_)) {
                s.mark_done(*id)?
            } else {
                s.mark_dropped(*id, "ttl")?
            }
            // Both sync before they return.
            model.synced(s);
        }
    }
    Ok(())
}

/// Checks a recovered spool against what the model allows.
fn check(s: &Spool<FaultyFs>, fs: &FaultyFs, model: &Model) -> Result<(), TestCaseError> {
    for (k, (id, m)) in model.utts.iter().enumerate() {
        let Some(u) = s.utterance(*id) else {
            // Gone: never begun durably, or finished and collected.
            prop_assert!(!m.durable_begun || m.finish_tried, "utterance {k} was synced and is gone");
            continue;
        };
        if m.durable_finished {
            prop_assert!(u.done, "utterance {k} was finished durably and came back pending");
        }
        prop_assert!(!u.done || m.finish_tried, "utterance {k} is done but was never finished");
        prop_assert_eq!(u.unmarked, m.unmarked, "utterance {} came back with another BEGIN flag", k);
        if u.done {
            continue;
        }
        let n = u.frame_count() as usize;
        prop_assert!(n <= m.frames.len(), "utterance {k} has {n} frames, {} were appended", m.frames.len());
        prop_assert!(n >= m.durable_frames, "utterance {k} has {n} frames, {} were synced", m.durable_frames);
        for (seq, f) in m.frames.iter().take(n).enumerate() {
            let got = s.read_frame(*id, seq as u32).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(&got == f, "utterance {k} frame {seq} differs");
        }
        if m.durable_ended {
            prop_assert!(u.ended, "utterance {k} ended durably and is open again");
        }
        if u.ended {
            prop_assert_eq!(m.end_at, Some(n), "utterance {} ended at the wrong frame", k);
        }
    }
    for u in s.pending() {
        prop_assert!(model.utts.iter().any(|(id, _)| *id == u.id), "an utterance nobody began: {}", u.id);
    }
    prop_assert!(
        s.next_record_id() >= model.durable_next_id,
        "next id {} is below the synced {}",
        s.next_record_id(),
        model.durable_next_id
    );
    check_ids(s, fs)
}

/// (c), from the raw bytes: ids rise across the segments in name order, no
/// record is below its segment's name, and the next id is past them all.
fn check_ids(s: &Spool<FaultyFs>, fs: &FaultyFs) -> Result<(), TestCaseError> {
    let dir = Path::new(DIR);
    let mut names = fs.list(dir).unwrap();
    names.sort();
    let mut last: Option<u64> = None;
    for name in names {
        let first: u64 = name.strip_suffix(".seg").unwrap().parse().unwrap();
        let bytes = fs.contents(&dir.join(&name)).unwrap();
        let mut records = lanyard_proto::record::read(&bytes, 0..=usize::MAX);
        for body in records.by_ref() {
            let id = u64::from_le_bytes(body[0..8].try_into().unwrap());
            prop_assert!(id >= first, "record {id} in segment {name}");
            prop_assert!(last.is_none_or(|l| id > l), "record {id} after {last:?}");
            last = Some(id);
        }
        prop_assert_eq!(records.intact_len(), bytes.len(), "recovery left a torn tail or a bad record in {}", name);
    }
    prop_assert!(last.is_none_or(|l| l < s.next_record_id()));
    Ok(())
}

/// Each pending utterance's frame count, ended, dropped and frame checksums
/// (checksums keep a failure's report readable).
type Snapshot = BTreeMap<Uuid, (u32, bool, Option<String>, Vec<u32>)>;

fn snapshot(s: &Spool<FaultyFs>) -> Snapshot {
    s.pending()
        .map(|u| {
            let frames = (0..u.frame_count()).map(|i| crc32c::crc32c(&s.read_frame(u.id, i).unwrap())).collect();
            (u.id, (u.frame_count(), u.ended, u.dropped.clone(), frames))
        })
        .collect()
}

fn open(fs: &FaultyFs) -> Spool<FaultyFs> {
    Spool::open_with(fs.clone(), Path::new(DIR), cfg()).expect("recovery after a crash").0
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=20000 for a longer soak.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/spool_crash.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_crash_at_any_operation_keeps_every_promise(
        ops in proptest::collection::vec(op(), 1..60),
        crash_at in 0u64..300,
        seed in any::<u64>(),
        seed2 in any::<u64>(),
    ) {
        let fs = FaultyFs::new();
        fs.crash_at_op(crash_at);
        let mut model = Model::default();
        match Spool::open_with(fs.clone(), Path::new(DIR), cfg()) {
            Ok((mut s, _)) => run(&mut s, &fs, &mut model, &ops)?,
            Err(_) => prop_assert!(fs.is_crashed()),
        }
        if !fs.is_crashed() {
            fs.crash_now();
        }
        fs.reboot(seed);

        let mut s = open(&fs);
        check(&s, &fs, &model)?;

        // (d) Appending after recovery works and numbering continues.
        let before = s.next_record_id();
        if let Some(id) = s.open_utterance() {
            let n = s.utterance(id).unwrap().frame_count();
            prop_assert_eq!(s.append_frame(id, b"after").unwrap(), n);
        }
        let fresh = Uuid::from_u128(u128::MAX);
        s.begin(fresh, Codec::Opus16k20ms, 1).unwrap();
        for i in 0..3u8 {
            prop_assert_eq!(s.append_frame(fresh, &[i; MAX_FRAME_LEN]).unwrap(), u32::from(i));
        }
        s.end(fresh, 0).unwrap();
        prop_assert!(s.next_record_id() > before);
        s.sync().unwrap();
        let want = snapshot(&s);
        let next = s.next_record_id();
        drop(s);

        // A clean reopen agrees...
        let s = open(&fs);
        prop_assert_eq!(&snapshot(&s), &want);
        prop_assert_eq!(s.next_record_id(), next);
        check_ids(&s, &fs)?;
        drop(s);
        // ...and so does a second crash, since everything was synced.
        fs.crash_now();
        fs.reboot(seed2);
        let s = open(&fs);
        prop_assert_eq!(&snapshot(&s), &want);
        prop_assert_eq!(s.next_record_id(), next);
        check_ids(&s, &fs)?;
    }
}

/// The rare path the random search seldom finds: a rotation collects every
/// older segment (all done), the new segment's first record is torn away,
/// and recovery finds one empty segment. Its name still says where the ids
/// were, so they must not start again from zero.
#[test]
fn ids_never_go_back_when_only_an_empty_segment_is_left() {
    for seed in 0..32 {
        let fs = FaultyFs::new();
        let mut s = open(&fs);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        // BEGIN (42 bytes) + FRAME (37 + 1900) + END (41) + DONE (33): the
        // DONE takes the segment past its 2048 bytes, so the next record
        // rotates, and the rotation collects the segment (all done).
        s.begin(a, Codec::Pcm16k, 0).unwrap();
        s.append_frame(a, &[1; 1900]).unwrap();
        s.end(a, 0).unwrap();
        s.mark_done(a).unwrap();
        assert_eq!(s.segment_count(), 1);
        let synced = s.next_record_id();
        s.begin(b, Codec::Pcm16k, 0).unwrap(); // rotates, collects the rest
        assert_eq!(s.segment_count(), 1);
        assert!(s.utterance(a).is_none(), "a's segment was collected");
        drop(s);
        fs.reboot(seed);
        let mut s = open(&fs);
        assert!(s.next_record_id() >= synced, "seed {seed}: next id {} < {synced}", s.next_record_id());
        if s.utterance(b).is_none() {
            s.begin(b, Codec::Pcm16k, 0).unwrap();
        }
        s.append_frame(b, b"x").unwrap();
        drop(s);
        let s = open(&fs);
        assert_eq!(s.utterance(b).unwrap().frame_count(), 1, "seed {seed}");
    }
}

/// The model's own promises, so the property test stands on known ground.
mod faulty_fs {
    use super::*;

    fn p(name: &str) -> PathBuf {
        Path::new(DIR).join(name)
    }

    #[test]
    fn synced_data_and_names_survive_and_unsynced_data_may_tear() {
        let fs = FaultyFs::new();
        fs.create_dir_all(Path::new(DIR)).unwrap();
        let mut f = fs.open_append(&p("a")).unwrap();
        f.write_all(b"durable").unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(Path::new(DIR)).unwrap();
        f.write_all(b"-volatile").unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let fs2 = FaultyFs::new();
            fs2.create_dir_all(Path::new(DIR)).unwrap();
            let mut g = fs2.open_append(&p("a")).unwrap();
            g.write_all(b"durable").unwrap();
            g.sync_data().unwrap();
            fs2.sync_dir(Path::new(DIR)).unwrap();
            g.write_all(b"-volatile").unwrap();
            drop(g);
            fs2.reboot(seed);
            let got = fs2.contents(&p("a")).expect("a synced name survives");
            assert!(got.starts_with(b"durable"), "synced bytes are kept: {got:?}");
            assert!(got.len() <= b"durable-volatile".len());
            seen.insert(got.len());
        }
        // Every cut, from nothing to everything, happens.
        assert_eq!(seen.len(), b"-volatile".len() + 1, "{seen:?}");
        // Handles from before a reboot are dead.
        fs.reboot(0);
        assert!(f.write_all(b"x").is_err());
    }

    #[test]
    fn names_need_sync_dir() {
        let (mut kept, mut lost) = (0, 0);
        for seed in 0..64 {
            let fs = FaultyFs::new();
            fs.create_dir_all(Path::new(DIR)).unwrap();
            let mut f = fs.open_append(&p("synced")).unwrap();
            f.write_all(b"x").unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(Path::new(DIR)).unwrap();
            let mut g = fs.open_append(&p("new")).unwrap();
            g.write_all(b"y").unwrap();
            g.sync_data().unwrap();
            fs.remove(&p("synced")).unwrap();
            drop((f, g));
            fs.reboot(seed);
            // Each pending change survives or not, independently.
            match (fs.contents(&p("synced")).is_some(), fs.contents(&p("new")).is_some()) {
                (true, false) => lost += 1,
                (false, true) => kept += 1,
                _ => {}
            }
            // After a sync_dir, the change is certain.
            let fs = FaultyFs::new();
            fs.create_dir_all(Path::new(DIR)).unwrap();
            drop(fs.open_append(&p("new")).unwrap());
            fs.sync_dir(Path::new(DIR)).unwrap();
            fs.reboot(seed);
            assert!(fs.contents(&p("new")).is_some());
        }
        assert!(kept > 0 && lost > 0, "kept {kept}, lost {lost}");
    }

    #[test]
    fn a_crash_armed_at_a_write_fails_it_and_everything_after() {
        let fs = FaultyFs::new();
        fs.create_dir_all(Path::new(DIR)).unwrap();
        let mut f = fs.open_append(&p("a")).unwrap(); // op 0
        fs.crash_at_op(2);
        f.write_all(b"one").unwrap(); // op 1
        assert!(f.write_all(b"two").is_err()); // op 2: the crash
        assert!(fs.is_crashed());
        assert!(f.sync_data().is_err());
        assert!(fs.read(&p("a")).is_err());
        fs.reboot(3);
        let got = fs.contents(&p("a")).unwrap_or_default();
        // The name was never synced, so it may be gone; if not, the bytes
        // are some prefix of both writes, the torn one perhaps garbled.
        assert!(got.len() <= 6);
        assert!(got.len() <= 3 || got.starts_with(b"one"));
    }
}
