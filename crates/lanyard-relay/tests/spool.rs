//! The spool against real files: recovery after torn writes, deletion only
//! after the server's word, and a property test that any crash point leaves
//! a clean prefix of what was written.

use std::fs::{self, OpenOptions};
use std::io::Write;

use lanyard_proto::ble::Codec;
use lanyard_relay::spool::Spool;
use proptest::prelude::*;
use uuid::Uuid;

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Frames read back while the spool is open come from its in-memory copy of
/// the newest bytes when they are recent and from the file when the copy has
/// moved on (or the segment rotated): both must give the bytes appended.
#[test]
fn frames_read_back_from_memory_and_disk_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(dir.path()).unwrap();
    let ids = [Uuid::now_v7(), Uuid::now_v7()];
    let frame =
        |u: usize, i: u32| -> Vec<u8> { (0..80 + (i % 7) as usize).map(|b| (b as u32 ^ i ^ u as u32) as u8).collect() };
    // About 4 MiB: many times the in-memory copy, and several segments.
    for (u, id) in ids.iter().enumerate() {
        s.begin(*id, Codec::Opus16k20ms, 0).unwrap();
        for i in 0..25_000u32 {
            assert_eq!(s.append_frame(*id, &frame(u, i)).unwrap(), i);
            // The uplink's pattern: the frame just written, read back at once.
            assert_eq!(s.read_frame(*id, i).unwrap(), frame(u, i));
        }
    }
    assert!(s.segment_count() > 2, "the test must cross segment rotations");
    for (u, id) in ids.iter().enumerate() {
        for i in (0..25_000u32).step_by(97).chain([24_999]) {
            assert_eq!(s.read_frame(*id, i).unwrap(), frame(u, i), "frame {i} of utterance {u}");
        }
    }
}

/// Frames the server already holds need no fsync; a frame it lacks, or any
/// other record, does (the relay's battery bar: see `Spool::needs_sync`).
#[test]
fn only_records_the_server_lacks_need_an_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(dir.path()).unwrap();
    let id = Uuid::now_v7();
    let none = |_| None;
    assert!(!s.needs_sync(none), "nothing written");
    s.begin(id, Codec::Opus16k20ms, 0).unwrap();
    assert!(s.needs_sync(|_| Some(0)), "a BEGIN always needs one");
    s.sync().unwrap();
    for _ in 0..3 {
        s.append_frame(id, &[1; 40]).unwrap();
    }
    assert!(s.needs_sync(none), "frames the server has not acknowledged");
    assert!(s.needs_sync(|_| Some(2)), "the third frame is not acknowledged yet");
    assert!(!s.needs_sync(|_| Some(3)), "all three are durable at the server");
    s.end(id, 0).unwrap();
    assert!(s.needs_sync(|_| Some(3)), "an END always needs one");
    s.sync().unwrap();
    assert!(!s.needs_sync(none), "synced");
}

#[test]
fn frames_survive_reopen_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::now_v7();
    {
        let (mut s, r) = Spool::open(dir.path()).unwrap();
        assert_eq!(r.records, 0);
        s.begin(id, Codec::Opus16k20ms, 1234).unwrap();
        for i in 0..10u8 {
            assert_eq!(s.append_frame(id, &[i; 7]).unwrap(), u32::from(i));
        }
        assert_eq!((s.bytes_from(id, 0), s.bytes_from(id, 3)), (70, 49));
        // No sync: a killed process still leaves every write() in the file.
    }
    let (s, r) = Spool::open(dir.path()).unwrap();
    assert_eq!(r.records, 11);
    assert!(r.truncated.is_empty());
    let u = s.utterance(id).unwrap();
    assert_eq!((u.frame_count(), u.ended, u.started_ms), (10, false, 1234));
    assert_eq!(s.read_frame(id, 9).unwrap(), vec![9; 7]);
    assert_eq!(s.open_utterance(), Some(id));
    // What is left to send, as the planner asks it, after recovery too.
    assert_eq!((s.bytes_from(id, 0), s.bytes_from(id, 9), s.bytes_from(id, 10)), (70, 7, 0));
}

#[test]
fn a_torn_tail_is_truncated_and_appending_continues() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::now_v7();
    {
        let (mut s, _) = Spool::open(dir.path()).unwrap();
        s.begin(id, Codec::Opus16k20ms, 0).unwrap();
        s.append_frame(id, b"good").unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let len = fs::metadata(&seg).unwrap().len();
    // Half a record, as a crash mid-write leaves it.
    OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[40, 0, 0, 0, 9, 9, 9]).unwrap();
    let (mut s, r) = Spool::open(dir.path()).unwrap();
    assert_eq!(r.truncated, vec![(seg.clone(), 7)]);
    assert_eq!(fs::metadata(&seg).unwrap().len(), len);
    assert_eq!(s.append_frame(id, b"next").unwrap(), 1);
    drop(s);
    let (s, r) = Spool::open(dir.path()).unwrap();
    assert!(r.truncated.is_empty());
    assert_eq!(s.read_frame(id, 1).unwrap(), b"next");
}

#[test]
fn a_corrupt_record_is_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::now_v7();
    {
        let (mut s, _) = Spool::open(dir.path()).unwrap();
        s.begin(id, Codec::Opus16k20ms, 0).unwrap();
        s.append_frame(id, b"first").unwrap();
        s.append_frame(id, b"second").unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff; // flip a bit in "second"
    fs::write(&seg, &bytes).unwrap();
    let (s, r) = Spool::open(dir.path()).unwrap();
    assert_eq!(r.truncated.len(), 1);
    assert_eq!(s.utterance(id).unwrap().frame_count(), 1);
    assert!(s.read_frame(id, 1).is_err());
}

#[test]
fn segments_are_deleted_only_when_every_utterance_in_them_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(dir.path()).unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    s.begin(a, Codec::Opus16k20ms, 0).unwrap();
    s.begin(b, Codec::Opus16k20ms, 0).unwrap();
    // Enough audio to fill several segments.
    let frame = vec![7u8; 3000];
    for _ in 0..400 {
        s.append_frame(a, &frame).unwrap();
        s.append_frame(b, &frame).unwrap();
    }
    s.end(a, 0).unwrap();
    s.end(b, 2).unwrap();
    let before = s.segment_count();
    assert!(before >= 3, "{before} segments");
    s.mark_done(a).unwrap();
    assert_eq!(s.segment_count(), before, "b still has records in every segment");
    assert_eq!(s.read_frame(b, 399).unwrap(), frame);
    s.mark_done(b).unwrap();
    assert_eq!(s.segment_count(), 1, "only the active segment remains");
    assert_eq!(segments(dir.path()).len(), 1);
    drop(s);
    let (s, r) = Spool::open(dir.path()).unwrap();
    assert_eq!(r.pending_utterances, 0);
    assert_eq!(s.pending().count(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Begin,
    Frame(Vec<u8>),
    End,
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Begin),
        8 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Op::Frame),
        1 => Just(Op::End),
        1 => Just(Op::Sync),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Cut the newest segment at any byte (a crash at any point of any
    /// write): recovery yields exactly a prefix of the appended frames of each
    /// utterance, every byte intact, and appending continues with the next seq.
    #[test]
    fn any_crash_point_recovers_a_clean_prefix(ops in proptest::collection::vec(op(), 1..80), cut in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut model: Vec<(Uuid, Vec<Vec<u8>>)> = Vec::new();
        {
            let (mut s, _) = Spool::open(dir.path()).unwrap();
            let mut open: Option<Uuid> = None;
            for op in ops {
                match op {
                    Op::Begin => {
                        let id = Uuid::now_v7();
                        s.begin(id, Codec::Pcm16k, 0).unwrap();
                        model.push((id, vec![]));
                        open = Some(id);
                    }
                    Op::Frame(f) => if let Some(id) = open {
                        s.append_frame(id, &f).unwrap();
                        model.last_mut().unwrap().1.push(f);
                    },
                    Op::End => if let Some(id) = open.take() { s.end(id, 0).unwrap(); },
                    Op::Sync => s.sync().unwrap(),
                }
            }
        }
        let seg = segments(dir.path()).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len() as usize;
        let keep = if len == 0 { 0 } else { cut.index(len + 1) };
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(keep as u64).unwrap();

        let (mut s, _) = Spool::open(dir.path()).unwrap();
        let mut seen_missing = false;
        for (id, frames) in &model {
            match s.utterance(*id) {
                None => seen_missing = true,
                Some(u) => {
                    prop_assert!(!seen_missing, "a later utterance survived an earlier one's loss");
                    let n = u.frame_count() as usize;
                    prop_assert!(n <= frames.len());
                    for (i, f) in frames.iter().take(n).enumerate() {
                        prop_assert_eq!(&s.read_frame(*id, i as u32).unwrap(), f);
                    }
                    if n < frames.len() { seen_missing = true; }
                }
            }
        }
        // Appending after recovery works and numbering continues.
        if let Some(id) = s.open_utterance() {
            let n = s.utterance(id).unwrap().frame_count();
            prop_assert_eq!(s.append_frame(id, b"after").unwrap(), n);
        }
    }
}

/// An utterance cut at the server's endpoint keeps where its speech stops
/// across a reopen; one ended plainly has none, and a cut never passes the
/// frames it has.
#[test]
fn a_cut_end_is_read_back_with_its_speech_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(dir.path()).unwrap();
    let (cut, plain, over) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for id in [cut, plain, over] {
        s.begin(id, Codec::Opus16k20ms, 0).unwrap();
        for i in 0..6u8 {
            s.append_frame(id, &[8, i]).unwrap();
        }
    }
    assert_eq!(s.end_cut(cut, 1, Some(4)).unwrap(), 6);
    s.end(plain, 0).unwrap();
    s.end_cut(over, 0, Some(60)).unwrap();
    s.sync().unwrap();
    drop(s);
    let (s, _) = Spool::open(dir.path()).unwrap();
    let read = |id| s.utterance(id).map(|u| (u.ended, u.lost, u.speech_frames));
    assert_eq!(read(cut), Some((true, 1, Some(4))));
    assert_eq!(read(plain), Some((true, 0, None)));
    assert_eq!(read(over), Some((true, 0, Some(6))));
}

/// BEGIN keeps whether a start marker opened the utterance, across a
/// reopen. A marked one is written as before the flag (what an older relay
/// reads, and what a spool of one holds: marked), and flag bits this relay
/// does not know are a newer relay's, not damage.
#[test]
fn an_unmarked_begin_is_read_back_unmarked_and_a_marked_one_as_before_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(dir.path()).unwrap();
    let (marked, unmarked, newer) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let before = s.disk_bytes();
    s.begin(marked, Codec::Opus16k20ms, 5).unwrap();
    // Length, checksum, id, kind and utterance, then the codec and the start
    // time (9 bytes): the BEGIN every relay has written.
    assert_eq!(s.disk_bytes() - before, 8 + 25 + 9, "a marked BEGIN is the old record");
    s.begin_with(unmarked, Codec::Pcm16k, 6, true).unwrap();
    for id in [marked, unmarked] {
        s.append_frame(id, &[1, 2]).unwrap();
    }
    s.sync().unwrap();
    drop(s);
    // A newer relay's BEGIN, with a flag this one does not know besides
    // `unmarked`, appended as a whole record.
    let mut body = Vec::new();
    body.extend_from_slice(&1_000u64.to_le_bytes());
    body.push(1);
    body.extend_from_slice(newer.as_bytes());
    body.push(Codec::Opus16k20ms.id());
    body.extend_from_slice(&7u64.to_le_bytes());
    body.push(0b1000_0001);
    let mut record = vec![0; lanyard_proto::record::HEADER];
    record.extend_from_slice(&body);
    lanyard_proto::record::seal(&mut record);
    let last = segments(dir.path()).pop().unwrap();
    OpenOptions::new().append(true).open(&last).unwrap().write_all(&record).unwrap();

    let (s, recovery) = Spool::open(dir.path()).unwrap();
    assert!(recovery.truncated.is_empty(), "{recovery:?}");
    let read = |id| s.utterance(id).map(|u| (u.unmarked, u.codec, u.started_ms, u.frame_count()));
    assert_eq!(read(marked), Some((false, Codec::Opus16k20ms, 5, 1)));
    assert_eq!(read(unmarked), Some((true, Codec::Pcm16k, 6, 1)));
    assert_eq!(read(newer), Some((true, Codec::Opus16k20ms, 7, 0)));
}
