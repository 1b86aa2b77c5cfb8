//! The campaign's books: what happened to every utterance, and how fast.
//!
//! The unit of account is the **relay utterance**: an id the relay spooled
//! (`utterance_started`), whichever launch of the relay spooled it. Each
//! ends in exactly one of:
//!
//! - **replied**: the server holds exactly the frames the relay ended it
//!   with (its store's count *and* the checksummed records in its audio
//!   file), transcribed it, stored a reply, and APNs accepted a push for it;
//! - **silent**: an unmarked utterance (no start marker: a pendant without
//!   a button, which the relay ends at the server's endpoint or the frame
//!   limit) in which nothing was heard: the server holds exactly its
//!   frames, transcribed it as nothing, and rightly answered nothing (no
//!   push either). Not lost: there was nothing to answer;
//! - **discarded**: the relay dropped it by policy and said why
//!   (`discarded` with a reason), and the server did not answer it;
//! - **lost**: anything else, with what is missing.
//!
//! **Duplicates** are counted separately, and any fails the run:
//!
//! - an utterance transcribed more than once (the store counts transcript
//!   writes);
//! - a push the user would see twice: a second push accepted by APNs for
//!   the same utterance, *unless* the server was SIGKILLed between the two
//!   (the documented at-most-once-more resend after a crash, which carries
//!   the same collapse id, so the phone shows one notification; these are
//!   reported as `push_resends_after_crash`);
//! - an audio file holding more records than the utterance has frames
//!   (audio stored twice);
//! - a relay finding the server holding less of an utterance than it had
//!   acknowledged (`server_lost_acked_audio`): an ack for audio that was not
//!   durable. The relay re-sends it, so nothing is lost, but it counts;
//! - audio frames the server received again although it held them
//!   (`lanyard_frames_duplicate_total`, summed over server incarnations):
//!   a relay that resends from 0 instead of the resume offset shows here,
//!   one that skips shows as lost frames.
//!
//! The pendant's utterances are matched to relay utterances by time (a
//! relay utterance belongs to the last pendant utterance that started
//! before it). Audio the pendant spoke while its relay was dead, and BLE
//! notifications dropped on purpose, never reached a spool: that is loss
//! over the air, reported per spoken utterance but not counted against the
//! system. Latency and word error rate are measured on spoken utterances
//! heard as exactly one relay utterance that was replied.

use std::collections::{BTreeMap, HashMap, HashSet};

use lanyard_proto::ble::Codec;
use lanyard_proto::wire::Timings;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Server,
    Pendant(usize),
    Relay(usize),
    /// The campaign itself, acting for phone `i` (lifecycle, uploads).
    Sim(usize),
}

/// One JSON line a process printed, with the time the campaign read it.
#[derive(Debug, Clone)]
pub struct Record {
    pub at_ms: u64,
    pub source: Source,
    pub event: Value,
}

impl Record {
    /// The event's own time when it has one, else when it was read.
    fn time(&self) -> u64 {
        self.event["at_ms"].as_u64().unwrap_or(self.at_ms)
    }

    fn kind(&self) -> &str {
        self.event["event"].as_str().unwrap_or_default()
    }

    fn id(&self) -> Option<Uuid> {
        self.event["id"].as_str().and_then(|s| Uuid::parse_str(s).ok())
    }
}

/// A fault that was applied, and what it touched.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    pub at_ms: u64,
    pub kind: String,
    pub target: String,
    pub detail: String,
}

/// One request the APNs peer received.
#[derive(Debug, Clone, Serialize)]
pub struct PushSeen {
    pub at_ms: u64,
    /// From the collapse id, which the server sets to the utterance id.
    pub utterance: Option<Uuid>,
    pub device_token: Option<String>,
    pub status: u16,
}

/// What the server holds for one utterance, read after the campaign.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerFacts {
    pub state: Option<String>,
    pub frames: Option<u32>,
    pub transcript: Option<String>,
    /// The store finished it without a reply: unmarked, transcribed as
    /// nothing (`Utterance::silent`).
    pub silent: bool,
    pub reply_body: Option<String>,
    pub error: Option<String>,
    pub timings: Timings,
    pub transcript_writes: u32,
    /// Whole, checksummed records in the audio file.
    pub audio_records: Option<u32>,
    pub push_status: Option<String>,
}

/// Every fault kind the campaign can apply, in report order.
pub const FAULT_KINDS: &[&str] = &[
    "network_cut",
    "network_delay",
    "black_hole",
    "network_switch",
    "server_kill",
    "relay_kill",
    "ble_drop",
    "ble_reorder",
    "slow_disk",
    "apns_failure",
];

pub struct Inputs<'a> {
    pub log: &'a [Record],
    /// Reference sentences per pendant, in speaking order.
    pub references: &'a [Vec<String>],
    pub server: &'a HashMap<Uuid, ServerFacts>,
    pub pushes: &'a [PushSeen],
    pub faults: &'a [FaultEvent],
    pub frames_duplicate: u64,
    pub frames_received: u64,
    pub timed_out: bool,
}

/// One relay utterance's account.
#[derive(Debug, Clone, Serialize)]
pub struct UttRow {
    pub id: Uuid,
    pub phone: usize,
    /// The spoken utterance it belongs to, as (pendant, index).
    pub spoken: Option<(usize, usize)>,
    /// `replied`, `silent`, `discarded` or `lost`.
    pub outcome: String,
    /// Why, for `discarded` and `lost`; empty otherwise.
    pub reason: String,
    pub duplicate: Option<String>,
    pub spooled_frames: Option<u32>,
    pub stored_frames: Option<u32>,
    pub audio_records: Option<u32>,
    pub transcript_writes: u32,
    pub push_attempts: usize,
    pub pushes_accepted: usize,
    pub handed_off: bool,
    pub transcript: Option<String>,
}

/// One spoken utterance, as the pendant said it.
#[derive(Debug, Clone, Serialize)]
pub struct SpokenRow {
    pub pendant: usize,
    pub index: usize,
    pub reference: String,
    pub frames_spoken: u64,
    /// How long the pendant spoke: its frames of 20 ms.
    pub length_ms: u64,
    /// Frames the relay spooled for it, over all its relay utterances.
    pub frames_spooled: u64,
    pub injected_drops: u64,
    pub reordered_frames: u64,
    pub relay_utterances: Vec<Uuid>,
    pub transcript: Option<String>,
    pub wer: Option<f32>,
    /// Latencies in ms from the end of speech (see [`METRICS`]).
    pub latency_ms: BTreeMap<String, i64>,
}

/// A latency metric over utterances.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub key: String,
    pub name: String,
    pub values_ms: Vec<i64>,
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub p99: Option<i64>,
    /// Why there are no values, when there are none by design.
    pub note: Option<String>,
}

/// Latency metrics: key, name, and the note for one that cannot be measured.
pub const METRICS: &[(&str, &str, Option<&str>)] = &[
    ("eou_detect", "end of speech → relay ends the utterance (end-of-utterance detection)", None),
    ("safe", "end of speech → server holds every frame durably (time to safe)", None),
    (
        "first_partial",
        "start of speech → first partial transcript",
        Some(
            "n/a: no partial arrived (the server sends one once two drafts, a second of speech apart, agree; short utterances end first)",
        ),
    ),
    ("ttfs", "end of speech → final transcript (TTFS)", None),
    ("push", "end of speech → push request accepted at APNs", None),
];

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub spoken: usize,
    pub relay_utterances: usize,
    pub replied: usize,
    /// Unmarked utterances with no speech, stored whole and not answered.
    pub silent: usize,
    pub discarded: usize,
    pub lost: usize,
    /// Utterances answered more than once (see the module doc).
    pub duplicated: usize,
    pub duplicate_frames: u64,
    /// Times a relay found the server holding less of an utterance than it
    /// had acknowledged (`server_lost_acked_audio`): the server acked audio
    /// that was not durable. The relay re-sends it, so nothing is lost, but
    /// the promise behind every ack was broken, and the run fails.
    pub acked_audio_lost: usize,
    pub frames_received: u64,
    pub frames_spooled: u64,
    pub frames_stored: u64,
    pub frames_spoken: u64,
    pub push_resends_after_crash: usize,
    pub handed_off: usize,
    pub heard_as_one: usize,
    /// Spoken utterances of which no frame reached a spool: lost before the
    /// relay (over the air, or queued in a relay that was then killed).
    pub spoken_unheard: usize,
    /// Spoken utterances the relay spooled as several utterances (a
    /// suspension or a kill mid-sentence, or a lost END marker).
    pub spoken_split: usize,
    pub timed_out: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Wer {
    pub utterances: usize,
    pub reference_words: usize,
    pub rate: f32,
}

/// The utterance lengths the by-length table tells apart: key, label, and
/// the longest length in the bucket, ms (none: no limit). A length on a
/// limit belongs to the bucket below it: 10 s is "10 to 30 s", 30 s too.
pub const LENGTH_BUCKETS: &[(&str, &str, Option<u64>)] = &[
    ("under_10s", "under 10 s", Some(9_999)),
    ("10_to_30s", "10 to 30 s", Some(30_000)),
    ("over_30s", "over 30 s", None),
];

/// Which of [`LENGTH_BUCKETS`] an utterance of `length_ms` falls in.
pub fn length_bucket(length_ms: u64) -> usize {
    LENGTH_BUCKETS
        .iter()
        .position(|(_, _, max)| max.is_none_or(|max| length_ms <= max))
        .unwrap_or(LENGTH_BUCKETS.len() - 1)
}

/// WER and TTFS over the spoken utterances of one length bucket.
#[derive(Debug, Clone, Serialize)]
pub struct LengthRow {
    pub key: String,
    pub label: String,
    /// Spoken utterances of this length.
    pub spoken: usize,
    /// Of those, the ones that reached a spool and of which every relay
    /// utterance was replied.
    pub replied: usize,
    /// Of those, the ones heard whole: as one relay utterance, replied,
    /// holding every frame the pendant spoke but those dropped on purpose
    /// (a relay killed mid-sentence leaves the rest of it unsaid, and its
    /// WER would blame the engine). WER and TTFS are over these.
    pub measured: usize,
    pub reference_words: usize,
    /// Word error rate over the measured utterances, weighted by words.
    pub wer: Option<f32>,
    /// End of speech to final transcript, as [`METRICS`]' `ttfs`.
    pub ttfs_n: usize,
    pub ttfs_p50: Option<i64>,
    pub ttfs_p95: Option<i64>,
}

/// The by-length table: WER and TTFS per [`LENGTH_BUCKETS`] bucket, over
/// the spoken utterances heard whole (see [`LengthRow::measured`]).
/// `replied` holds the relay utterances that ended replied.
pub fn by_length(spoken: &[SpokenRow], replied: &HashSet<Uuid>) -> Vec<LengthRow> {
    let mut rows: Vec<LengthRow> = LENGTH_BUCKETS
        .iter()
        .map(|(key, label, _)| LengthRow {
            key: key.to_string(),
            label: label.to_string(),
            spoken: 0,
            replied: 0,
            measured: 0,
            reference_words: 0,
            wer: None,
            ttfs_n: 0,
            ttfs_p50: None,
            ttfs_p95: None,
        })
        .collect();
    let mut errors = vec![0.0f32; rows.len()];
    let mut ttfs: Vec<Vec<i64>> = vec![Vec::new(); rows.len()];
    for s in spoken {
        let b = length_bucket(s.length_ms);
        let row = &mut rows[b];
        row.spoken += 1;
        let heard = !s.relay_utterances.is_empty();
        row.replied += usize::from(heard && s.relay_utterances.iter().all(|id| replied.contains(id)));
        let whole = s.relay_utterances.len() == 1 && s.frames_spooled + s.injected_drops >= s.frames_spoken;
        let Some(wer) = s.wer.filter(|_| whole) else {
            continue;
        };
        row.measured += 1;
        let words = s.reference.split_whitespace().count();
        row.reference_words += words;
        errors[b] += wer * words as f32;
        ttfs[b].extend(s.latency_ms.get("ttfs").copied());
    }
    for ((row, errors), mut ttfs) in rows.iter_mut().zip(errors).zip(ttfs) {
        row.wer = (row.reference_words > 0).then(|| errors / row.reference_words as f32);
        ttfs.sort_unstable();
        row.ttfs_n = ttfs.len();
        row.ttfs_p50 = percentile(&ttfs, 50.0);
        row.ttfs_p95 = percentile(&ttfs, 95.0);
    }
    rows
}

/// A point on the timeline of one utterance.
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    pub lane: String,
    pub at_ms: u64,
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Accounting {
    pub totals: Totals,
    pub utterances: Vec<UttRow>,
    pub spoken: Vec<SpokenRow>,
    pub latency: Vec<Metric>,
    pub wer: Wer,
    /// WER and TTFS by utterance length (see [`by_length`]).
    pub by_length: Vec<LengthRow>,
    pub fault_counts: Vec<(String, usize)>,
    /// The utterance shown on the timeline (the median TTFS), and its marks.
    pub timeline_id: Option<Uuid>,
    pub timeline: Vec<Mark>,
}

/// Every relay utterance id, in order of first sight.
pub fn relay_ids(log: &[Record]) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for r in log {
        if let (Source::Relay(_), "utterance_started" | "utterance_ended") = (r.source, r.kind())
            && let Some(id) = r.id()
            && seen.insert(id)
        {
            ids.push(id);
        }
    }
    ids
}

/// Which phone spooled each relay utterance.
pub fn relay_owner(log: &[Record]) -> HashMap<Uuid, usize> {
    let mut owner = HashMap::new();
    for r in log {
        if let (Source::Relay(i), "utterance_started" | "utterance_ended") = (r.source, r.kind())
            && let Some(id) = r.id()
        {
            owner.entry(id).or_insert(i);
        }
    }
    owner
}

pub fn discarded_ids(log: &[Record]) -> HashSet<Uuid> {
    log.iter()
        .filter(|r| matches!(r.source, Source::Relay(_)) && r.kind() == "discarded")
        .filter_map(Record::id)
        .collect()
}

/// Relay utterances started but not (yet) ended.
pub fn unended_ids(log: &[Record]) -> HashSet<Uuid> {
    let ended: HashSet<Uuid> = log
        .iter()
        .filter(|r| matches!(r.source, Source::Relay(_)) && r.kind() == "utterance_ended")
        .filter_map(Record::id)
        .collect();
    relay_ids(log).into_iter().filter(|id| !ended.contains(id)).collect()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[derive(Default)]
struct Spoken {
    start_ms: u64,
    end_ms: Option<u64>,
    frames: u64,
    injected_drops: u64,
    reordered: u64,
    text: String,
}

#[derive(Default)]
struct RelayUtt {
    phone: usize,
    started_ms: Option<u64>,
    ended: Option<(u64, u32)>,
    /// When the relay passed on the server's first partial transcript.
    first_partial_ms: Option<u64>,
    discarded: Option<String>,
    handed_off: bool,
}

/// What became of one relay utterance (see [`verdict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `replied`, `silent`, `discarded` or `lost`.
    pub outcome: &'static str,
    /// Why, for `discarded` and `lost`; empty otherwise.
    pub reason: String,
    /// What the user or the server had twice, one line each; empty if nothing.
    pub duplicates: Vec<String>,
    /// Pushes accepted again after a server crash between the two: the
    /// resend the outbox makes by design (the collapse id shows it once).
    pub resends_after_crash: usize,
}

/// The verdict on one relay utterance, from what the relay spooled
/// (`spooled`: its frame count once ended; `discarded`: the reason the relay
/// gave), what the server holds for it, the pushes the APNs peer saw for it
/// and when the server was killed.
///
/// - **replied**: the server replied, holds exactly the frames spooled (in
///   its store and its audio file), and APNs accepted a push;
/// - **silent**: the server holds exactly the frames spooled, and finished
///   the utterance without a reply because it was unmarked and nothing was
///   heard in it; no push was accepted for it;
/// - **discarded**: the relay dropped it by an explicit policy, and the
///   server never replied;
/// - **lost**: anything else, with the first reason found.
///
/// Independently, it is a **duplicate** if transcribed more than once, if
/// the audio file holds more records than frames were spooled, or if APNs
/// accepted two pushes for it with no server crash between them.
pub fn verdict(
    spooled: Option<u32>,
    discarded: Option<&str>,
    facts: &ServerFacts,
    pushes: &[&PushSeen],
    kills: &[u64],
) -> Verdict {
    let accepted: Vec<&&PushSeen> = pushes.iter().filter(|p| (200..300).contains(&p.status)).collect();
    let replied_at_server = facts.state.as_deref() == Some("replied");
    // More records on disk than frames is audio stored twice: counted below
    // as a duplicate, not as a loss.
    let frames_ok = spooled.is_some() && facts.frames == spooled && facts.audio_records >= spooled;
    let (outcome, reason) = if replied_at_server && frames_ok && !accepted.is_empty() {
        ("replied", String::new())
    } else if facts.silent && frames_ok && accepted.is_empty() {
        ("silent", String::new())
    } else if let (Some(why), false) = (discarded, replied_at_server) {
        ("discarded", why.to_owned())
    } else if spooled.is_none() {
        ("lost", "the relay never ended it (still open in a spool)".to_string())
    } else if facts.state.is_none() {
        ("lost", "the server has no record of it".to_string())
    } else if !frames_ok {
        (
            "lost",
            format!(
                "the relay spooled {} frames; the server's store says {}, its audio file holds {}",
                spooled.unwrap_or(0),
                facts.frames.map_or("none".into(), |f| f.to_string()),
                facts.audio_records.map_or("no file".into(), |f| f.to_string())
            ),
        )
    } else if !replied_at_server {
        (
            "lost",
            format!(
                "server state {}{}",
                facts.state.as_deref().unwrap_or("?"),
                facts.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
        )
    } else {
        (
            "lost",
            format!(
                "no push accepted by APNs ({} attempts, outbox {})",
                pushes.len(),
                facts.push_status.as_deref().unwrap_or("empty")
            ),
        )
    };
    let mut duplicates = Vec::new();
    if facts.transcript_writes > 1 {
        duplicates.push(format!("transcribed {} times", facts.transcript_writes));
    }
    if let (Some(on_disk), Some(spooled)) = (facts.audio_records, spooled)
        && on_disk > spooled
    {
        duplicates
            .push(format!("the server's audio file holds {on_disk} records for {spooled} frames: audio stored twice"));
    }
    let (mut resends_after_crash, mut unexplained) = (0, 0);
    for pair in accepted.windows(2) {
        let (a, b) = (pair[0].at_ms, pair[1].at_ms);
        if kills.iter().any(|&k| k >= a && k <= b) {
            resends_after_crash += 1;
        } else {
            unexplained += 1;
        }
    }
    if unexplained > 0 {
        duplicates.push(format!("{} pushes accepted, {unexplained} without a server crash in between", accepted.len()));
    }
    Verdict { outcome, reason, duplicates, resends_after_crash }
}

/// What the processes said, gathered: the spoken utterances by (pendant,
/// index), the relay utterances by id, and their ids in order of first sight.
struct Gathered {
    spoken: BTreeMap<(usize, usize), Spoken>,
    relay: HashMap<Uuid, RelayUtt>,
    order: Vec<Uuid>,
}

fn gather(log: &[Record]) -> Gathered {
    let mut spoken: BTreeMap<(usize, usize), Spoken> = BTreeMap::new();
    let mut relay: HashMap<Uuid, RelayUtt> = HashMap::new();
    let mut order = Vec::new();
    for r in log {
        match (r.source, r.kind()) {
            (Source::Pendant(p), "utterance_start") => {
                let k = r.event["index"].as_u64().unwrap_or(0) as usize;
                let s = spoken.entry((p, k)).or_default();
                s.start_ms = r.time();
                s.text = r.event["text"].as_str().unwrap_or_default().to_string();
            }
            (Source::Pendant(p), "utterance_end") => {
                let k = r.event["index"].as_u64().unwrap_or(0) as usize;
                let s = spoken.entry((p, k)).or_default();
                s.end_ms = Some(r.time());
                s.frames = r.event["frames"].as_u64().unwrap_or(0);
                s.injected_drops = r.event["injected_drops"].as_u64().unwrap_or(0);
                s.reordered = r.event["reordered_frames"].as_u64().unwrap_or(0);
            }
            (Source::Relay(i), kind) => {
                let Some(id) = r.id() else { continue };
                if !matches!(kind, "utterance_started" | "utterance_ended" | "discarded" | "upload_task" | "partial") {
                    continue;
                }
                let u = relay.entry(id).or_insert_with(|| {
                    order.push(id);
                    RelayUtt { phone: i, ..Default::default() }
                });
                match kind {
                    "utterance_started" => {
                        u.started_ms.get_or_insert(r.time());
                    }
                    "utterance_ended" => {
                        let frames = r.event["frames"].as_u64().unwrap_or(0) as u32;
                        u.ended.get_or_insert((r.time(), frames));
                    }
                    "partial" => {
                        u.first_partial_ms.get_or_insert(r.time());
                    }
                    "discarded" => {
                        u.discarded = Some(r.event["reason"].as_str().unwrap_or("no reason given").to_string())
                    }
                    _ => u.handed_off = true,
                }
            }
            _ => {}
        }
    }
    Gathered { spoken, relay, order }
}

/// Relay utterance -> the spoken utterance it carries, by time: the one its
/// phone's pendant began last before the relay began it (50 ms of slack).
/// Returns both directions: spoken -> relay ids, relay id -> spoken.
#[allow(clippy::type_complexity)]
fn attribute(g: &Gathered) -> (HashMap<(usize, usize), Vec<Uuid>>, HashMap<Uuid, (usize, usize)>) {
    let mut heard: HashMap<(usize, usize), Vec<Uuid>> = HashMap::new();
    let mut belongs: HashMap<Uuid, (usize, usize)> = HashMap::new();
    for id in &g.order {
        let u = &g.relay[id];
        let Some(at) = u.started_ms.or(u.ended.map(|e| e.0)) else {
            continue;
        };
        let key = g
            .spoken
            .iter()
            .filter(|((p, _), s)| *p == u.phone && s.start_ms <= at + 50)
            .max_by_key(|(_, s)| s.start_ms)
            .map(|(k, _)| *k);
        if let Some(key) = key {
            heard.entry(key).or_default().push(*id);
            belongs.insert(*id, key);
        }
    }
    (heard, belongs)
}

pub fn account(inp: &Inputs) -> Accounting {
    let g = gather(inp.log);
    let (heard, belongs) = attribute(&g);
    let Gathered { spoken, relay, order } = g;

    let kills: Vec<u64> = inp.faults.iter().filter(|f| f.kind == "server_kill").map(|f| f.at_ms).collect();
    let mut pushes: HashMap<Uuid, Vec<&PushSeen>> = HashMap::new();
    for p in inp.pushes {
        if let Some(id) = p.utterance {
            pushes.entry(id).or_default().push(p);
        }
    }

    let mut totals = Totals { spoken: spoken.len(), timed_out: inp.timed_out, ..Default::default() };
    let mut rows = Vec::new();
    for id in &order {
        let u = &relay[id];
        let facts = inp.server.get(id).cloned().unwrap_or_default();
        let seen = pushes.get(id).cloned().unwrap_or_default();
        let spooled = u.ended.map(|e| e.1);
        let v = verdict(spooled, u.discarded.as_deref(), &facts, &seen, &kills);
        let (outcome, reason, dups) = (v.outcome, v.reason, v.duplicates);
        totals.push_resends_after_crash += v.resends_after_crash;
        match outcome {
            "replied" => totals.replied += 1,
            "silent" => totals.silent += 1,
            "discarded" => totals.discarded += 1,
            _ => totals.lost += 1,
        }
        totals.duplicated += usize::from(!dups.is_empty());
        totals.frames_spooled += u64::from(spooled.unwrap_or(0));
        totals.frames_stored += u64::from(facts.audio_records.unwrap_or(0));
        totals.handed_off += usize::from(u.handed_off);
        rows.push(UttRow {
            id: *id,
            phone: u.phone,
            spoken: belongs.get(id).copied(),
            outcome: outcome.into(),
            reason,
            duplicate: (!dups.is_empty()).then(|| dups.join("; ")),
            spooled_frames: spooled,
            stored_frames: facts.frames,
            audio_records: facts.audio_records,
            transcript_writes: facts.transcript_writes,
            push_attempts: seen.len(),
            pushes_accepted: seen.iter().filter(|p| (200..300).contains(&p.status)).count(),
            handed_off: u.handed_off,
            transcript: facts.transcript.clone(),
        });
    }
    totals.relay_utterances = rows.len();
    totals.duplicate_frames = inp.frames_duplicate;
    totals.acked_audio_lost = inp
        .log
        .iter()
        .filter(|r| {
            matches!(r.source, Source::Relay(_))
                && r.kind() == "error"
                && r.event["code"] == lanyard_relay::uplink::SERVER_LOST_ACKED_AUDIO
        })
        .count();
    totals.frames_received = inp.frames_received;

    // Spoken utterances: latency and WER where heard as one and replied.
    let replied: HashSet<Uuid> = rows.iter().filter(|r| r.outcome == "replied").map(|r| r.id).collect();
    let (spoken_rows, metric_values, wer) = score_spoken(inp, &spoken, &heard, &rows, &relay, &pushes, &mut totals);
    let latency = latency_metrics(metric_values);
    let fault_counts = fault_counts(inp, &spoken);

    // The timeline: the spoken utterance with the median TTFS.
    let mut candidates: Vec<(&SpokenRow, i64)> =
        spoken_rows.iter().filter_map(|s| s.latency_ms.get("ttfs").map(|t| (s, *t))).collect();
    candidates.sort_by_key(|(_, t)| *t);
    let chosen = candidates.get(candidates.len() / 2).map(|(s, _)| *s);
    let (timeline_id, timeline) = match chosen {
        Some(s) => {
            let id = s.relay_utterances[0];
            (Some(id), timeline(inp, &spoken[&(s.pendant, s.index)], s.pendant, id, pushes.get(&id)))
        }
        None => (None, Vec::new()),
    };

    let lengths = by_length(&spoken_rows, &replied);
    Accounting {
        totals,
        utterances: rows,
        spoken: spoken_rows,
        latency,
        wer,
        by_length: lengths,
        fault_counts,
        timeline_id,
        timeline,
    }
}

/// One row per spoken utterance: how it was heard, and for one heard as a
/// single relay utterance that was replied to, its latencies (into the
/// metrics' values too) and WER. Counts what it sees into `totals`.
fn score_spoken(
    inp: &Inputs,
    spoken: &BTreeMap<(usize, usize), Spoken>,
    heard: &HashMap<(usize, usize), Vec<Uuid>>,
    rows: &[UttRow],
    relay: &HashMap<Uuid, RelayUtt>,
    pushes: &HashMap<Uuid, Vec<&PushSeen>>,
    totals: &mut Totals,
) -> (Vec<SpokenRow>, BTreeMap<&'static str, Vec<i64>>, Wer) {
    let row_of: HashMap<Uuid, &UttRow> = rows.iter().map(|r| (r.id, r)).collect();
    let mut spoken_rows = Vec::new();
    let mut metric_values: BTreeMap<&'static str, Vec<i64>> = BTreeMap::new();
    let (mut errors, mut words, mut wer_n) = (0.0f32, 0usize, 0usize);
    for (&(p, k), s) in spoken {
        let ids = heard.get(&(p, k)).cloned().unwrap_or_default();
        let frames_spooled =
            ids.iter().filter_map(|id| row_of.get(id).and_then(|r| r.spooled_frames)).map(u64::from).sum();
        totals.frames_spoken += s.frames;
        let reference = if s.text.is_empty() {
            inp.references.get(p).and_then(|r| r.get(k)).cloned().unwrap_or_default()
        } else {
            s.text.clone()
        };
        let mut row = SpokenRow {
            pendant: p,
            index: k,
            reference: reference.clone(),
            frames_spoken: s.frames,
            length_ms: s.frames * u64::from(Codec::FRAME_MS),
            frames_spooled,
            injected_drops: s.injected_drops,
            reordered_frames: s.reordered,
            relay_utterances: ids.clone(),
            transcript: None,
            wer: None,
            latency_ms: BTreeMap::new(),
        };
        totals.spoken_unheard += usize::from(ids.is_empty());
        totals.spoken_split += usize::from(ids.len() > 1);
        if let ([id], Some(end)) = (ids.as_slice(), s.end_ms) {
            totals.heard_as_one += 1;
            let r = row_of[id];
            let facts = inp.server.get(id).cloned().unwrap_or_default();
            if r.outcome == "replied" {
                let end = end as i64;
                let mut put = |key: &'static str, at: Option<i64>| {
                    if let Some(at) = at {
                        row.latency_ms.insert(key.to_string(), at - end);
                        metric_values.entry(key).or_default().push(at - end);
                    }
                };
                put("eou_detect", relay[id].ended.map(|e| e.0 as i64));
                put("safe", facts.timings.received_end_ms);
                put("ttfs", facts.timings.stt_done_ms);
                let first_ok = pushes
                    .get(id)
                    .and_then(|v| v.iter().find(|p| (200..300).contains(&p.status)).map(|p| p.at_ms as i64));
                put("push", first_ok);
                // From the start of speech: how long the user waits to see
                // the first words while still talking.
                if let Some(at) = relay[id].first_partial_ms {
                    let v = at as i64 - s.start_ms as i64;
                    row.latency_ms.insert("first_partial".to_string(), v);
                    metric_values.entry("first_partial").or_default().push(v);
                }
                let hyp = facts.transcript.clone().unwrap_or_default();
                let wer = lanyard_stt::word_error_rate(&reference, &hyp);
                let n = reference.split_whitespace().count();
                errors += wer * n as f32;
                words += n;
                wer_n += 1;
                row.wer = Some(wer);
                row.transcript = Some(hyp);
            }
        }
        spoken_rows.push(row);
    }
    let wer =
        Wer { utterances: wer_n, reference_words: words, rate: if words == 0 { 0.0 } else { errors / words as f32 } };
    (spoken_rows, metric_values, wer)
}

/// Each latency metric of [`METRICS`] over its values, with percentiles.
fn latency_metrics(mut values: BTreeMap<&str, Vec<i64>>) -> Vec<Metric> {
    METRICS
        .iter()
        .map(|(key, name, note)| {
            let mut v = values.remove(key).unwrap_or_default();
            v.sort_unstable();
            Metric {
                key: key.to_string(),
                name: name.to_string(),
                p50: percentile(&v, 50.0),
                p95: percentile(&v, 95.0),
                p99: percentile(&v, 99.0),
                values_ms: v,
                note: note.map(str::to_string),
            }
        })
        .collect()
}

/// Fault counts: the campaign's log, plus the faults the pendants and the
/// APNs peer applied (counted where they happened). Every kind of
/// [`FAULT_KINDS`] first, in order, then any other.
fn fault_counts(inp: &Inputs, spoken: &BTreeMap<(usize, usize), Spoken>) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for f in inp.faults {
        *counts.entry(f.kind.clone()).or_default() += 1;
    }
    counts.insert("ble_drop".into(), spoken.values().map(|s| s.injected_drops as usize).sum());
    counts.insert("ble_reorder".into(), spoken.values().map(|s| s.reordered as usize).sum());
    counts.insert("apns_failure".into(), inp.pushes.iter().filter(|p| !(200..300).contains(&p.status)).count());
    let mut fault_counts: Vec<(String, usize)> =
        FAULT_KINDS.iter().map(|k| (k.to_string(), counts.remove(*k).unwrap_or(0))).collect();
    fault_counts.extend(counts);
    fault_counts
}

fn timeline(inp: &Inputs, s: &Spoken, pendant: usize, id: Uuid, pushes: Option<&Vec<&PushSeen>>) -> Vec<Mark> {
    let mut marks = vec![Mark { lane: "pendant".into(), at_ms: s.start_ms, label: "speech starts".into() }];
    if let Some(end) = s.end_ms {
        marks.push(Mark { lane: "pendant".into(), at_ms: end, label: "end of speech".into() });
    }
    let (from, to) = (s.start_ms, s.end_ms.unwrap_or(s.start_ms));
    for r in inp.log {
        match r.source {
            Source::Relay(_) if r.id() == Some(id) => {
                let label = match r.kind() {
                    "utterance_started" => "spooling starts",
                    "utterance_ended" => "utterance ended (spooled)",
                    "complete" => "server says complete",
                    "final" => "final transcript received",
                    "reply" => "reply received",
                    "upload_task" => "handed off for upload",
                    _ => continue,
                };
                marks.push(Mark { lane: "relay".into(), at_ms: r.time(), label: label.into() });
            }
            Source::Sim(i) if i == pendant => {
                let label = match r.kind() {
                    "upload_attempt" if r.id() == Some(id) => {
                        format!("upload PUT: {}", r.event["status"])
                    }
                    "lifecycle" if r.time() + 2000 >= from && r.time() <= to + 30_000 => {
                        format!("app: {}", r.event["what"].as_str().unwrap_or_default())
                    }
                    _ => continue,
                };
                marks.push(Mark { lane: "relay".into(), at_ms: r.time(), label });
            }
            _ => {}
        }
    }
    if let Some(f) = inp.server.get(&id) {
        let t = &f.timings;
        for (at, label) in [
            (t.received_end_ms, "all frames durable (complete)"),
            (t.stt_start_ms, "transcription starts"),
            (t.stt_done_ms, "final transcript"),
            (t.reply_ms, "reply stored"),
            (t.push_ms, "push sent"),
        ] {
            if let Some(at) = at {
                marks.push(Mark { lane: "server".into(), at_ms: at as u64, label: label.into() });
            }
        }
    }
    for p in pushes.into_iter().flatten() {
        marks.push(Mark { lane: "push".into(), at_ms: p.at_ms, label: format!("APNs answers {}", p.status) });
    }
    for f in inp.faults.iter().filter(|f| f.at_ms + 2000 >= from && f.at_ms <= to + 30_000) {
        if f.kind == "server_kill"
            || f.target.starts_with(&format!("phone-{pendant} "))
            || f.target == format!("relay-{pendant}")
        {
            marks.push(Mark { lane: "faults".into(), at_ms: f.at_ms, label: f.kind.clone() });
        }
    }
    marks.sort_by_key(|m| m.at_ms);
    marks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server holds for an utterance it replied to, with `frames`
    /// frames in its store and its audio file.
    fn replied_facts(frames: u32) -> ServerFacts {
        ServerFacts {
            state: Some("replied".into()),
            frames: Some(frames),
            audio_records: Some(frames),
            transcript: Some("hello".into()),
            transcript_writes: 1,
            push_status: Some("sent".into()),
            ..Default::default()
        }
    }

    fn push(at_ms: u64, status: u16) -> PushSeen {
        PushSeen { at_ms, utterance: None, device_token: None, status }
    }

    #[test]
    fn replied_needs_the_reply_all_the_frames_and_an_accepted_push() {
        let ok = push(1_000, 200);
        let v = verdict(Some(50), None, &replied_facts(50), &[&ok], &[]);
        assert_eq!((v.outcome, v.reason.as_str(), v.duplicates.len()), ("replied", "", 0));
    }

    #[test]
    fn discarded_is_the_relays_explicit_policy_and_no_reply() {
        let facts = ServerFacts { state: Some("receiving".into()), frames: Some(10), ..Default::default() };
        let v = verdict(Some(50), Some("ttl expired"), &facts, &[], &[]);
        assert_eq!((v.outcome, v.reason.as_str()), ("discarded", "ttl expired"));
        // A reply made anyway wins over the discard: it is judged as replied.
        let ok = push(1_000, 200);
        assert_eq!(verdict(Some(50), Some("ttl expired"), &replied_facts(50), &[&ok], &[]).outcome, "replied");
    }

    #[test]
    fn an_unmarked_utterance_with_nothing_heard_is_silent_not_lost() {
        let silent = ServerFacts {
            state: Some("transcribed".into()),
            transcript: Some(String::new()),
            silent: true,
            push_status: None,
            ..replied_facts(50)
        };
        let v = verdict(Some(50), None, &silent, &[], &[]);
        assert_eq!((v.outcome, v.reason.as_str(), v.duplicates.len()), ("silent", "", 0));
        // Not if the server lacks frames of it: that is still a loss.
        let short = ServerFacts { audio_records: Some(40), ..silent.clone() };
        assert_eq!(verdict(Some(50), None, &short, &[], &[]).outcome, "lost");
        // Transcribed as nothing but not silent (marked, or a reply still
        // owed): the missing reply is a loss.
        let owed = ServerFacts { silent: false, ..silent.clone() };
        let v = verdict(Some(50), None, &owed, &[], &[]);
        assert_eq!((v.outcome, v.reason.as_str()), ("lost", "server state transcribed"));
        // A push accepted for it anyway is no silent outcome.
        let ok = push(1_000, 200);
        assert_eq!(verdict(Some(50), None, &silent, &[&ok], &[]).outcome, "lost");
    }

    #[test]
    fn each_way_of_being_lost_says_why() {
        let ok = push(1_000, 200);
        let lost = |spooled, facts: &ServerFacts, pushes: &[&PushSeen]| {
            let v = verdict(spooled, None, facts, pushes, &[]);
            assert_eq!(v.outcome, "lost");
            v.reason
        };
        assert!(lost(None, &replied_facts(50), &[&ok]).contains("never ended"));
        assert!(lost(Some(50), &ServerFacts::default(), &[]).contains("no record"));
        // The store says fewer frames than were spooled.
        let short = ServerFacts { frames: Some(49), ..replied_facts(50) };
        assert!(lost(Some(50), &short, &[&ok]).contains("spooled 50 frames; the server's store says 49"));
        // The store agrees but the audio file holds fewer: the ack outran the disk.
        let torn = ServerFacts { audio_records: Some(40), ..replied_facts(50) };
        assert!(lost(Some(50), &torn, &[&ok]).contains("its audio file holds 40"));
        let failed = ServerFacts { state: Some("failed".into()), error: Some("stt".into()), ..replied_facts(50) };
        assert_eq!(lost(Some(50), &failed, &[&ok]), "server state failed: stt");
        // Replied, but APNs never accepted a push.
        let refused = push(1_000, 500);
        assert!(lost(Some(50), &replied_facts(50), &[&refused]).contains("no push accepted by APNs (1 attempts"));
    }

    #[test]
    fn answered_twice_is_a_duplicate_unless_a_server_crash_explains_the_second_push() {
        let (a, b) = (push(1_000, 200), push(5_000, 200));
        let v = verdict(Some(50), None, &replied_facts(50), &[&a, &b], &[]);
        assert_eq!(v.outcome, "replied");
        assert_eq!(v.duplicates, vec!["2 pushes accepted, 1 without a server crash in between".to_string()]);
        let v = verdict(Some(50), None, &replied_facts(50), &[&a, &b], &[3_000]);
        assert!(v.duplicates.is_empty(), "{:?}", v.duplicates);
        assert_eq!(v.resends_after_crash, 1);
        let twice = ServerFacts { transcript_writes: 2, ..replied_facts(50) };
        assert_eq!(verdict(Some(50), None, &twice, &[&a], &[]).duplicates, vec!["transcribed 2 times".to_string()]);
    }

    #[test]
    fn audio_stored_twice_is_a_duplicate_not_a_loss() {
        let ok = push(1_000, 200);
        let doubled = ServerFacts { audio_records: Some(60), ..replied_facts(50) };
        let v = verdict(Some(50), None, &doubled, &[&ok], &[]);
        assert_eq!(v.outcome, "replied");
        assert_eq!(v.duplicates.len(), 1);
        assert!(v.duplicates[0].contains("holds 60 records for 50 frames"), "{:?}", v.duplicates);
    }

    /// `account` over a whole log: the run-level counts of frames the server
    /// received twice and of acknowledged audio the server no longer held.
    #[test]
    fn frames_received_twice_and_acked_audio_lost_are_counted_for_the_run() {
        let id = Uuid::now_v7();
        let rec = |source, event: Value| Record { at_ms: 0, source, event };
        let log = vec![
            rec(Source::Pendant(0), serde_json::json!({"event": "utterance_start", "index": 0, "text": "hello"})),
            rec(Source::Relay(0), serde_json::json!({"event": "utterance_started", "id": id.to_string()})),
            rec(Source::Pendant(0), serde_json::json!({"event": "utterance_end", "index": 0, "frames": 50})),
            rec(Source::Relay(0), serde_json::json!({"event": "utterance_ended", "id": id.to_string(), "frames": 50})),
            rec(
                Source::Relay(0),
                serde_json::json!({"event": "error", "code": lanyard_relay::uplink::SERVER_LOST_ACKED_AUDIO}),
            ),
        ];
        let server = HashMap::from([(id, replied_facts(50))]);
        let pushes = vec![PushSeen { utterance: Some(id), ..push(1_000, 200) }];
        let inputs = Inputs {
            log: &log,
            references: &[],
            server: &server,
            pushes: &pushes,
            faults: &[],
            frames_duplicate: 3,
            frames_received: 53,
            timed_out: false,
        };
        let a = account(&inputs);
        assert_eq!((a.totals.replied, a.totals.lost, a.totals.duplicated), (1, 0, 0));
        assert_eq!(a.totals.duplicate_frames, 3);
        assert_eq!(a.totals.acked_audio_lost, 1);
        assert_eq!(a.utterances[0].spoken, Some((0, 0)), "the relay utterance belongs to the spoken one");
        assert_eq!(a.wer.utterances, 1);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 95.0), Some(95));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn lengths_fall_in_buckets_with_each_limit_in_the_lower_one() {
        let key = |ms| LENGTH_BUCKETS[length_bucket(ms)].0;
        assert_eq!(key(0), "under_10s");
        assert_eq!(key(9_980), "under_10s");
        assert_eq!(key(10_000), "10_to_30s");
        assert_eq!(key(30_000), "10_to_30s");
        assert_eq!(key(30_020), "over_30s");
        assert_eq!(key(600_000), "over_30s");
    }

    /// A spoken utterance of `secs` heard as `ids`, with its WER and TTFS
    /// if it was measured.
    fn spoken(secs: u64, ids: &[Uuid], wer_ttfs: Option<(f32, i64)>) -> SpokenRow {
        let frames = secs * 50;
        SpokenRow {
            pendant: 0,
            index: 0,
            reference: "one two three four".into(),
            frames_spoken: frames,
            length_ms: secs * 1000,
            frames_spooled: frames,
            injected_drops: 0,
            reordered_frames: 0,
            relay_utterances: ids.to_vec(),
            transcript: None,
            wer: wer_ttfs.map(|(w, _)| w),
            latency_ms: wer_ttfs.map(|(_, t)| BTreeMap::from([("ttfs".to_string(), t)])).unwrap_or_default(),
        }
    }

    #[test]
    fn the_by_length_table_measures_utterances_heard_whole() {
        let [a, b, c, d, e, f] = [1, 2, 3, 4, 5, 6].map(Uuid::from_u128);
        let replied: HashSet<Uuid> = [a, b, c, d, e].into();
        let mut cut_short = spoken(40, &[e], Some((0.75, 9_000)));
        cut_short.frames_spooled = 500;
        let mut dropped_on_purpose = spoken(45, &[d], Some((0.25, 3_000)));
        dropped_on_purpose.frames_spooled -= 3;
        dropped_on_purpose.injected_drops = 3;
        let rows = by_length(
            &[
                spoken(3, &[a], Some((0.0, 400))),
                spoken(4, &[b], Some((0.5, 600))),
                spoken(5, &[], None),
                spoken(20, &[c, f], None),
                spoken(35, &[c], Some((0.0, 1_000))),
                dropped_on_purpose,
                cut_short,
            ],
            &replied,
        );
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["under_10s", "10_to_30s", "over_30s"]);
        let short = &rows[0];
        assert_eq!((short.spoken, short.replied, short.measured), (3, 2, 2));
        assert_eq!(short.wer, Some(0.25));
        assert_eq!((short.ttfs_n, short.ttfs_p50, short.ttfs_p95), (2, Some(400), Some(600)));
        // Split in two, one half not replied: neither replied nor measured.
        let middle = &rows[1];
        assert_eq!((middle.spoken, middle.replied, middle.measured), (1, 0, 0));
        assert_eq!((middle.wer, middle.ttfs_p50), (None, None));
        // A relay killed mid-passage: replied, but not measured.
        let long = &rows[2];
        assert_eq!((long.spoken, long.replied, long.measured), (3, 3, 2));
        assert_eq!(long.reference_words, 8);
        assert_eq!(long.wer, Some(0.125));
        assert_eq!((long.ttfs_p50, long.ttfs_p95), (Some(1_000), Some(3_000)));
    }
}
