//! Benchmark: time to final transcript (TTFS) and word error rate of
//! lanyard-stt's Whisper engine, side by side with faster-whisper, in one run.
//!
//! # What is measured
//!
//! The server transcribes an utterance once it is complete, so TTFS, from the
//! end of speech to the final transcript, is the wall-clock time of one
//! `SpeechToText::transcribe` call on the whole utterance (log-mel, encoder,
//! decoder and guards). The clock starts with the complete audio in memory;
//! espeak-ng's own trailing silence (about 0.3–0.4 s) is part of the audio,
//! as a VAD's hangover would be on the pendant.
//!
//! Every utterance of the reference set (`benches/reference.txt`: each
//! sentence in each espeak-ng voice listed there) goes through:
//!
//! - **(a) lanyard**: `WhisperCt2` with `WhisperConfig::default()`, exactly as
//!   the server loads it (`lanyard::load_stt` with no `--stt-threads`): the
//!   10 s window floor, beam 5, one intra-op thread per core;
//! - **(b) untrimmed**: the same engine and beam with `min_window_secs = 30`,
//!   i.e. the plain 30 s-padded decode; the WER yardstick for (a);
//! - **(c) faster-whisper**: its default `model.transcribe(audio)` (beam 5,
//!   padded 30 s window, VAD off, temperature fallback) on the same model
//!   directory and the same PCM, at float32 with the same thread count, run
//!   by `benches/faster_whisper_ttfs.py` in a child `python3`;
//! - **(d) 4 speakers**: four different utterances submitted at the same
//!   moment, as four pendants ending their sentences together would, to the
//!   server's worker pool reduced to what latency depends on (`pooled`: one
//!   engine (a); whatever waits when it comes free, up to four, goes as one
//!   batch); each latency runs from the common start to that utterance's
//!   transcript. The set is walked in rounds of four.
//! - **(e) streaming**: what the server does with a streamed utterance
//!   (`lanyard-server`'s `live` module). The audio is replayed through
//!   `Endpointer` in 200 ms batches, as a relay sends it, with a greedy
//!   partial draft each second of speech and LocalAgreement-2 over them
//!   (untimed: they run before the end, on an engine otherwise idle). At
//!   the last silence onset that no speech follows, the audio received so
//!   far is decoded (really, timed) at final quality, starting that batch's
//!   lead before the end of the audio. TTFS is what is left of that decode
//!   after the end (0 if it finished first). An utterance without such an
//!   onset is decoded in full after the end, as in (a). The WER is of that
//!   final text.
//! - **(f) streaming, 4 speakers**: (e) for four utterances whose audio ends
//!   at the same instant: each decode is submitted at its own moment (its
//!   onset, or the end) to the pool as in (d); each TTFS runs from the
//!   common end.
//! - **(g) agreed words as the prompt**: (e), giving the words the partials
//!   agreed on as the previous text (`transcribe_after`). The server does
//!   not do this for short utterances (see the WER column). The
//!   drafts run in step here; on the server a draft finishes a few hundred
//!   ms after it is queued, so its prefix could be one draft shorter.
//! - **(h) (a) on the wheel's CTranslate2**: (a)'s decode (window floor,
//!   log-mel, one encode, beam 5; without (a)'s temperature fallback, which
//!   only a rejected hypothesis triggers) on the CTranslate2 that
//!   faster-whisper's pip wheel ships, timed by the same helper as (c). Only
//!   the CTranslate2 build differs from (a): lanyard's takes its float32
//!   matrix products from OpenBLAS on x86-64 Linux (ruy elsewhere), the
//!   wheel's from oneDNN on AMD or Intel MKL on Intel CPUs (the helper runs
//!   with `CT2_VERBOSE=1` and the bench prints the wheel's choice). This is
//!   the CPU backend comparison; `docs/benchmarks.md` adds ruy, measured
//!   with a ruy build of this bench in the same sitting.
//!
//! The set is processed in chunks of [`CHUNK`] utterances, and each chunk runs
//! (a) to (f) back to back, so that load from other processes
//! falls on all alike rather than on whichever ran last. Each engine
//! gets one untimed warm-up call first (faster-whisper one per chunk, as the
//! helper is started once per chunk; its model load is not timed).
//!
//! Reported per row: p50, p95 and max latency (nearest rank), the word error
//! rate over all words of the set, the ratio of the row's median to
//! faster-whisper's median, and the WER difference to (b) in points; then
//! the issue's bars with PASS/FAIL and the margin. Timings on a shared
//! 2-core machine move with the load average, printed at the start and end
//! and per chunk; rerun when the machine is quiet.
//!
//! # How to run
//!
//! ```text
//! pip install faster-whisper          # once; brings ctranslate2, no model
//! cargo bench -p lanyard-stt --bench ttfs
//! ```
//!
//! Needs `espeak-ng`, `sox`, `python3` with `faster_whisper`, and the model in
//! `$LANYARD_MODEL_DIR` or `~/.local/share/lanyard/models/whisper-tiny.en`.
//! Environment knobs: `LANYARD_PYTHON` (default `python3`);
//! `LANYARD_BENCH_LIMIT=N` runs only the first N utterances (a quick look;
//! the reported figures should come from the full set). Synthesised PCM is
//! cached under Cargo's target tmp dir (`CARGO_TARGET_TMPDIR/lanyard-stt-ttfs`),
//! keyed by voice, rate and text; delete it after changing espeak-ng or sox.
//! The set, its synthesis and cache live in `reference_set/`, shared with the
//! `rtf` bench.
//!
//! Words with errors are listed on stderr, one line per utterance and engine,
//! so a WER change can be traced to the sentences that moved it.

mod reference_set;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use lanyard_stt::{
    EndpointConfig, Endpointer, LocalAgreement, MAX_BATCH, SpeechToText, Transcript, VadEvent, WhisperConfig,
    WhisperCt2, word_error_rate,
};
use reference_set::{
    REFERENCE, Utterance, cpu_model, load_average, model_dir, parse_reference, percentile, synthesize_set,
};

/// Utterances per chunk; a multiple of [`SPEAKERS`].
const CHUNK: usize = 12;
/// Simultaneous speakers in (d).
const SPEAKERS: usize = 4;

const HELPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/faster_whisper_ttfs.py");

/// Latencies and texts of one engine, in utterance order.
#[derive(Default)]
struct Row {
    secs: Vec<f64>,
    texts: Vec<String>,
}

fn main() {
    check_tools();
    let model_dir = model_dir();
    let (sentences, voices) = parse_reference(&fs::read_to_string(REFERENCE).expect("read reference.txt"));
    let mut utterances = synthesize_set(&sentences, &voices);
    if let Some(limit) = std::env::var("LANYARD_BENCH_LIMIT").ok().and_then(|v| v.parse::<usize>().ok()) {
        utterances.truncate(limit.max(SPEAKERS));
    }
    let n = utterances.len();

    let default_config = WhisperConfig::default();
    let threads = default_config.threads;
    let lanyard = Arc::new(WhisperCt2::load(&model_dir, default_config.clone()).expect("load the model (a)"));
    let untrimmed = WhisperCt2::load(&model_dir, WhisperConfig { min_window_secs: 30.0, ..default_config.clone() })
        .expect("load the model (b)");
    // Untimed warm-up: thread pools, allocators, first-call paths.
    lanyard.transcribe(&utterances[0].samples).expect("warm-up (a)");
    untrimmed.transcribe(&utterances[0].samples).expect("warm-up (b)");

    let durations: Vec<f32> = utterances.iter().map(Utterance::secs).collect();
    let (short, long) =
        (durations.iter().copied().fold(f32::INFINITY, f32::min), durations.iter().copied().fold(0.0, f32::max));
    println!("lanyard-stt TTFS benchmark");
    println!("  model       {}", model_dir.display());
    println!("  machine     {} ({} cores available)", cpu_model(), threads);
    println!(
        "  set         {} sentences x {} voices ({}) = {n} utterances, {:.1}-{:.1} s (median {:.1} s), {} words",
        sentences.len(),
        voices.len(),
        voices.iter().map(|(v, r)| format!("{v} {r} wpm")).collect::<Vec<_>>().join(", "),
        short,
        long,
        median_f32(&durations),
        utterances.iter().map(Utterance::words).sum::<f32>()
    );
    let outside: Vec<String> = utterances
        .iter()
        .filter(|u| !(3.0..=10.0).contains(&u.secs()))
        .map(|u| format!("{:.1} s {} {}: {:?}", u.secs(), u.voice, u.rate, u.text))
        .collect();
    if !outside.is_empty() {
        println!("  note        {} utterance(s) outside 3-10 s: {}", outside.len(), outside.join("; "));
    }
    println!(
        "  lanyard     WhisperConfig::default(): floor {} s, beam {}, {} threads; untrimmed: floor 30 s, same beam and threads",
        default_config.min_window_secs, default_config.beam_size, threads
    );
    println!("  backend     lanyard's CTranslate2 computes float32 matrix products with {LANYARD_BACKEND}");
    let load_start = load_average();
    println!("  load avg    {} at start", load_start);

    let scratch = tempfile::tempdir().expect("temp dir for the PCM files");
    let mut rows: [Row; 8] = Default::default();
    let mut speaker_secs = vec![0.0; n];
    let mut speaker_texts = vec![String::new(); n];
    let mut stream_secs = vec![0.0; n];
    let mut stream_texts = vec![String::new(); n];
    // The endpointer's settings: the server's, or LANYARD_BENCH_ONSET_MS to
    // try another silence onset.
    let endpoint_cfg = EndpointConfig {
        onset_ms: std::env::var("LANYARD_BENCH_ONSET_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(EndpointConfig::default().onset_ms),
        ..EndpointConfig::default()
    };
    println!(
        "  endpointer  silence onset after {} ms, endpoint after {} ms",
        endpoint_cfg.onset_ms, endpoint_cfg.end_ms
    );
    // The server's drafts while each utterance is spoken (untimed here; they
    // run on the engine before the silence onset, when it is otherwise idle).
    eprintln!("  replaying the utterances through the endpointer and partial drafts...");
    let streams: Vec<Stream> = utterances.iter().map(|u| replay(&lanyard, &u.samples, &endpoint_cfg)).collect();
    let cuts: Vec<Option<Cut>> = streams.iter().map(|s| s.cut).collect();
    let mut loads = Vec::new();
    let mut versions = String::new();
    let started = Instant::now();

    for (chunk_index, chunk) in utterances.chunks(CHUNK).enumerate() {
        let base = chunk_index * CHUNK;
        loads.push(load_average_1m());

        for (engine, row) in [(&*lanyard, 0), (&untrimmed, 1)] {
            for u in chunk {
                let t = Instant::now();
                let transcript = engine.transcribe(&u.samples).expect("transcribe");
                rows[row].secs.push(t.elapsed().as_secs_f64());
                rows[row].texts.push(transcript.text);
            }
        }

        let files: Vec<PathBuf> = chunk
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let path = scratch.path().join(format!("u{:03}.pcm", base + i));
                fs::write(&path, &u.pcm).expect("write PCM for faster-whisper");
                path
            })
            .collect();
        let (v, results) = faster_whisper(&model_dir, &default_config, &files);
        versions = v;
        for r in results {
            rows[2].secs.push(r.secs);
            rows[2].texts.push(r.text);
            rows[7].secs.push(r.same_secs);
            rows[7].texts.push(r.same_text);
        }

        // (d): rounds of four different utterances ending at the same moment,
        // through the server's worker pool (see `pooled`).
        for (round_index, round) in chunk.chunks(SPEAKERS).enumerate() {
            if round.len() < SPEAKERS {
                break;
            }
            let jobs: Vec<(f64, &[f32])> = round.iter().map(|u| (0.0, &u.samples[..])).collect();
            for (i, (secs, text)) in pooled(&lanyard, &jobs, 0.0).into_iter().enumerate() {
                let k = base + round_index * SPEAKERS + i;
                speaker_secs[k] = secs;
                speaker_texts[k] = text;
            }
        }
        // (e): the server's streaming path, one speaker.
        for u in chunk {
            let (secs, text) = simulated(&lanyard, &u.samples, &endpoint_cfg);
            rows[4].secs.push(secs);
            rows[4].texts.push(text);
        }
        // (f): the streaming path, four speakers whose audio ends together.
        for (round_index, round) in chunk.chunks(SPEAKERS).enumerate() {
            if round.len() < SPEAKERS {
                break;
            }
            let first = base + round_index * SPEAKERS;
            let results = streamed_together(&lanyard, round, &streams[first..first + SPEAKERS]);
            for (i, (secs, text)) in results.into_iter().enumerate() {
                stream_secs[first + i] = secs;
                stream_texts[first + i] = text;
            }
        }
        // (g): (e) with the partials' agreed words forced as the start.
        for (i, u) in chunk.iter().enumerate() {
            let (secs, text) = streamed(&lanyard, u, &streams[base + i], true);
            rows[6].secs.push(secs);
            rows[6].texts.push(text);
        }
        eprintln!(
            "  chunk {}/{} done ({:.0} s elapsed, load {:.2})",
            chunk_index + 1,
            n.div_ceil(CHUNK),
            started.elapsed().as_secs_f64(),
            loads.last().copied().unwrap_or(f64::NAN)
        );
    }
    let measured = n / SPEAKERS * SPEAKERS;
    rows[3].secs = speaker_secs[..measured].to_vec();
    rows[3].texts = speaker_texts[..measured].to_vec();
    rows[5].secs = stream_secs[..measured].to_vec();
    rows[5].texts = stream_texts[..measured].to_vec();
    let speculative = cuts.iter().filter(|c| c.is_some()).count();

    // Which utterances each engine got wrong, for tracing a WER change.
    let names = [
        "lanyard",
        "untrimmed",
        "faster-whisper",
        "4 speakers",
        "streaming",
        "streaming 4 speakers",
        "agreed prefix",
        "wheel",
    ];
    for (row, name) in rows.iter().zip(names) {
        for (u, text) in utterances.iter().zip(&row.texts) {
            let wer = word_error_rate(&u.text, text);
            if wer > 0.0 {
                eprintln!("  [{name}] {} {} WER {:.0}%: {:?} -> {:?}", u.voice, u.rate, 100.0 * wer, u.text, text);
            }
        }
    }

    let wer: Vec<f64> = rows.iter().map(|row| set_wer(&utterances, &row.texts)).collect();
    let medians: Vec<f64> = rows.iter().map(|row| percentile(&row.secs, 0.5)).collect();
    let fw_median = medians[2];
    let load_end = load_average();

    println!();
    println!("  faster-whisper side: {versions}");
    let wheel_backend = versions.rsplit("SGEMM ").next().unwrap_or("?").to_owned();
    println!(
        "  load avg    {} at end; 1-min load at chunk starts: min {:.2}, median {:.2}, max {:.2}",
        load_end,
        loads.iter().copied().fold(f64::INFINITY, f64::min),
        percentile(&loads, 0.5),
        loads.iter().copied().fold(0.0, f64::max)
    );
    println!("  wall time   {:.0} s for the whole run", started.elapsed().as_secs_f64());
    println!();
    println!(
        "| {:<44} | {:>4} | {:>6} | {:>6} | {:>6} | {:>6} | {:>10} | {:>10} |",
        "engine", "n", "p50 s", "p95 s", "max s", "WER %", "p50 / fw", "WER vs (b)"
    );
    println!("|{:-<46}|{:->6}|{:->8}|{:->8}|{:->8}|{:->8}|{:->12}|{:->12}|", "", "", "", "", "", "", "", "");
    let labels = [
        "(a) lanyard default, 1 speaker".to_owned(),
        "(b) untrimmed (30 s window, beam 5)".to_owned(),
        "(c) faster-whisper default transcribe".to_owned(),
        format!("(d) lanyard default, {SPEAKERS} speakers at once"),
        "(e) streaming: final decoded at silence onset".to_owned(),
        format!("(f) streaming, {SPEAKERS} speakers at once"),
        "(g) (e) with the partials' agreed words as the prompt".to_owned(),
        "(h) (a) on the wheel's CTranslate2".to_owned(),
    ];
    for (i, (row, label)) in rows.iter().zip(&labels).enumerate() {
        println!(
            "| {:<44} | {:>4} | {:>6.3} | {:>6.3} | {:>6.3} | {:>6.2} | {:>9.2}x | {:>+7.2} pt |",
            label,
            row.secs.len(),
            medians[i],
            percentile(&row.secs, 0.95),
            row.secs.iter().copied().fold(0.0, f64::max),
            100.0 * wer[i],
            medians[i] / fw_median,
            100.0 * (wer[i] - wer[1]),
        );
    }
    let paired: Vec<f64> = rows[0].secs.iter().zip(&rows[2].secs).map(|(a, c)| a / c).collect();
    println!();
    println!(
        "  per-utterance lanyard / faster-whisper time ratio: median {:.2}x (faster-whisper {:.1}x slower)",
        percentile(&paired, 0.5),
        1.0 / percentile(&paired, 0.5)
    );
    let backends: Vec<f64> = rows[0].secs.iter().zip(&rows[7].secs).map(|(a, h)| a / h).collect();
    println!(
        "  CPU backend: per-utterance (a) {} / (h) {} time ratio: median {:.2}x",
        LANYARD_BACKEND,
        wheel_backend,
        percentile(&backends, 0.5)
    );

    let leads: Vec<f64> = cuts.iter().flatten().map(|c| c.lead).collect();
    println!(
        "  streaming   {speculative} of {n} utterances had a valid silence onset (the rest decode in full after the end, as in (a)); \
         the decode started a median {:.0} ms before the end of the audio",
        1000.0 * percentile(&leads, 0.5)
    );

    println!();
    println!("Bars (issue): TTFS for 3-10 s utterances with tiny.en, WER vs the untrimmed decode");
    println!("  what the server does, streaming (e, f):");
    bar("1 speaker p50 <= 0.5 s", medians[4], 0.5, "s");
    bar("1 speaker p95 <= 1.0 s", percentile(&rows[4].secs, 0.95), 1.0, "s");
    bar(&format!("{SPEAKERS} speakers p95 <= 2.0 s"), percentile(&rows[5].secs, 0.95), 2.0, "s");
    bar("WER within 1 point of untrimmed", 100.0 * (wer[4] - wer[1]), 1.0, "pt");
    println!("  the decode after the end alone (a, d):");
    bar("1 speaker p50 <= 0.5 s", medians[0], 0.5, "s");
    bar("1 speaker p95 <= 1.0 s", percentile(&rows[0].secs, 0.95), 1.0, "s");
    bar(&format!("{SPEAKERS} speakers p95 <= 2.0 s"), percentile(&rows[3].secs, 0.95), 2.0, "s");
    bar("WER within 1 point of untrimmed", 100.0 * (wer[0] - wer[1]), 1.0, "pt");
}

/// Samples in one relay send round: 200 ms of audio.
const BATCH_SAMPLES: usize = 3_200;

/// Where the server's speculative decode cuts an utterance.
#[derive(Clone, Copy, Debug)]
struct Cut {
    /// Samples decoded: the endpointer's position at the silence onset.
    len: usize,
    /// Seconds from the moment the batch with the onset arrived to the end
    /// of the audio: how early the decode can start.
    lead: f64,
}

/// What the server's live state made of one streamed utterance.
struct Stream {
    /// The speculative cut, if one is valid at the end.
    cut: Option<Cut>,
    /// The words the partials agreed on: at the cut's onset for a
    /// speculative final, at the end otherwise.
    prefix: String,
}

/// Replays `samples` as `lanyard-server`'s `live` module sees a relay's
/// stream: 200 ms batches through the endpointer, a greedy draft each
/// second of audio while speech goes on (LocalAgreement-2 over them), and
/// the cut of the last silence onset if no speech follows it (`None` if the
/// final must be decoded after the end).
fn replay(engine: &WhisperCt2, samples: &[f32], cfg: &EndpointConfig) -> Stream {
    let mut e = Endpointer::new(cfg.clone());
    let mut agreement = LocalAgreement::new();
    let (mut received, mut drafted, mut cut) = (0, 0, None);
    for batch in samples.chunks(BATCH_SAMPLES) {
        received += batch.len();
        for event in e.push(batch) {
            if let VadEvent::SilenceOnset { .. } = event {
                cut = Some((e.position().min(received), received, agreement.text()));
            }
        }
        if e.voiced_now() && received >= drafted + 16_000 {
            drafted = received;
            agreement.push(&engine.transcribe_draft(&samples[..received]).expect("draft").text);
        }
    }
    match cut {
        Some((len, at, prefix)) if e.speech_end().is_some_and(|end| end <= len) => {
            Stream { cut: Some(Cut { len, lead: (samples.len() - at) as f64 / 16_000.0 }), prefix }
        }
        _ => Stream { cut: None, prefix: agreement.text() },
    }
}

/// (e): TTFS of one utterance on the server's streaming path. With a valid
/// cut, the decode of the cut starts `lead` before the end of the audio and
/// TTFS is what is left of it after the end (0 if it finished first); with
/// none, the whole utterance is decoded after the end, as in (a). (g):
/// the same, forcing the agreed prefix.
fn streamed(engine: &WhisperCt2, u: &Utterance, stream: &Stream, prefix: bool) -> (f64, String) {
    let audio = stream.cut.map_or(&u.samples[..], |c| &u.samples[..c.len]);
    // The agreed words as one segment over the audio they were heard in.
    let previous = if prefix {
        Transcript::untimed(stream.prefix.clone(), audio.len() as f32 / 16_000.0, 0.0).segments
    } else {
        Vec::new()
    };
    let t = Instant::now();
    let text = engine.transcribe_after(audio, &previous).expect("transcribe (e)").text;
    let decode = t.elapsed().as_secs_f64();
    ((decode - stream.cut.map_or(0.0, |c| c.lead)).max(0.0), text)
}

/// (e): one speaker on the server's streaming path, as a discrete-event
/// replay on the audio's own clock. The audio arrives in 200 ms batches
/// (a batch at the time its last sample was spoken). The engine runs one
/// job at a time, for as long as the job really takes here: a partial draft
/// (greedy) each second of audio while speech goes on, and a speculative
/// decode at each silence onset (the newest replaces one still queued;
/// speculative before partial, as `stt_pool` orders them; a running job is
/// never interrupted). At the end of the audio the end marker arrives:
/// queued partials go, and if the newest speculative decode covers all the
/// speech it is the final (a queued one is promoted and runs when the
/// engine is free); otherwise the whole utterance is decoded once the
/// engine is free. TTFS runs from the end of the audio to that decode's end.
fn simulated(engine: &WhisperCt2, samples: &[f32], cfg: &EndpointConfig) -> (f64, String) {
    struct Sim<'a> {
        engine: &'a WhisperCt2,
        samples: &'a [f32],
        /// When the engine is next free, in seconds of audio.
        free_at: f64,
        /// Queued jobs: (queued at, samples).
        spec: Option<(f64, usize)>,
        partial: Option<(f64, usize)>,
        /// The newest speculative decode that started: (ends at, samples, text).
        spec_run: Option<(f64, usize, String)>,
    }
    impl Sim<'_> {
        /// Runs the queued jobs that start by `now`.
        fn run_until(&mut self, now: f64) {
            loop {
                let (kind, job) = match (self.spec, self.partial) {
                    (Some(j), _) => (true, j),
                    (None, Some(j)) => (false, j),
                    (None, None) => return,
                };
                let start = self.free_at.max(job.0);
                if start > now {
                    return;
                }
                let t = Instant::now();
                let audio = &self.samples[..job.1];
                let text = if kind {
                    self.spec = None;
                    self.engine.transcribe(audio).expect("speculative decode").text
                } else {
                    self.partial = None;
                    self.engine.transcribe_draft(audio).expect("draft").text
                };
                self.free_at = start + t.elapsed().as_secs_f64();
                if kind {
                    self.spec_run = Some((self.free_at, job.1, text));
                }
            }
        }
    }
    let rate = 16_000.0;
    let mut sim = Sim { engine, samples, free_at: 0.0, spec: None, partial: None, spec_run: None };
    let mut e = Endpointer::new(cfg.clone());
    let (mut received, mut drafted) = (0, 0);
    for batch in samples.chunks(BATCH_SAMPLES) {
        received += batch.len();
        let now = received as f64 / rate;
        sim.run_until(now);
        for event in e.push(batch) {
            if let VadEvent::SilenceOnset { .. } = event {
                sim.spec = Some((now, e.position().min(received)));
            }
        }
        if e.voiced_now() && received >= drafted + 16_000 && sim.partial.is_none() {
            drafted = received;
            sim.partial = Some((now, received));
        }
    }
    let end = samples.len() as f64 / rate;
    sim.run_until(end);
    sim.partial = None;
    let speech_end = e.speech_end();
    // The newest speculative decode: still queued (promoted now), or run.
    if let Some((_, len)) = sim.spec
        && speech_end.is_some_and(|s| s <= len)
    {
        sim.run_until(f64::INFINITY);
    }
    match sim.spec_run {
        Some((done, len, text)) if sim.spec.is_none() && speech_end.is_some_and(|s| s <= len) => {
            ((done - end).max(0.0), text)
        }
        _ => {
            let start = sim.free_at.max(end);
            let t = Instant::now();
            let text = engine.transcribe(samples).expect("final decode").text;
            (start + t.elapsed().as_secs_f64() - end, text)
        }
    }
}

/// (f): four speakers whose audio ends at the same instant. Each decode is
/// submitted `lead` before that instant (a speculative one) or at it, to
/// the pool as in `pooled`; TTFS runs from the common end.
fn streamed_together(engine: &WhisperCt2, round: &[Utterance], streams: &[Stream]) -> Vec<(f64, String)> {
    let lead_max = streams.iter().filter_map(|s| s.cut).map(|c| c.lead).fold(0.0, f64::max);
    let jobs: Vec<(f64, &[f32])> = round
        .iter()
        .zip(streams)
        .map(|(u, s)| match s.cut {
            Some(c) => (lead_max - c.lead, &u.samples[..c.len]),
            None => (lead_max, &u.samples[..]),
        })
        .collect();
    pooled(engine, &jobs, lead_max)
}

/// The server's worker pool (`lanyard-server`'s `stt_pool`), reduced to what
/// latency depends on: one engine; whatever is waiting when it comes free,
/// up to `MAX_BATCH`, goes to it as one batch (`transcribe_batch`). Each job
/// is submitted at its offset in seconds from the start; returns, per job,
/// the seconds from `clock_start` (an offset) to its transcript, at least 0.
fn pooled(engine: &WhisperCt2, jobs: &[(f64, &[f32])], clock_start: f64) -> Vec<(f64, String)> {
    use std::sync::{Condvar, Mutex};
    let queue: (Mutex<Vec<usize>>, Condvar) = (Mutex::new(Vec::new()), Condvar::new());
    let start = Instant::now();
    let mut out: Vec<Option<(f64, String)>> = vec![None; jobs.len()];
    std::thread::scope(|scope| {
        for (i, (offset, _)) in jobs.iter().enumerate() {
            let queue = &queue;
            scope.spawn(move || {
                let at = start + std::time::Duration::from_secs_f64(*offset);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                queue.0.lock().expect("queue").push(i);
                queue.1.notify_one();
            });
        }
        let mut done = 0;
        while done < jobs.len() {
            let batch: Vec<usize> = {
                let mut q = queue.0.lock().expect("queue");
                while q.is_empty() {
                    q = queue.1.wait(q).expect("queue");
                }
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect()
            };
            let pcms: Vec<&[f32]> = batch.iter().map(|&i| jobs[i].1).collect();
            let results = engine.transcribe_batch(&pcms);
            let at = start.elapsed().as_secs_f64();
            for (i, result) in batch.into_iter().zip(results) {
                out[i] = Some(((at - clock_start).max(0.0), result.expect("transcribe (pool)").text));
                done += 1;
            }
        }
    });
    out.into_iter().map(|r| r.expect("every job ran")).collect()
}

/// Prints one bar's verdict and its margin.
fn bar(name: &str, value: f64, limit: f64, unit: &str) {
    let (verdict, how) = if value <= limit {
        ("PASS", format!("{:.3} {unit} to spare", limit - value))
    } else {
        ("FAIL", format!("over by {:.3} {unit}", value - limit))
    };
    println!("  {verdict}  {name:<34} measured {value:>7.3} {unit:<2} ({how})");
}

/// Word error rate over the whole set: errors over reference words.
fn set_wer(utterances: &[Utterance], texts: &[String]) -> f64 {
    let (mut errors, mut words) = (0.0f64, 0.0f64);
    for (u, text) in utterances.iter().zip(texts) {
        errors += f64::from(word_error_rate(&u.text, text) * u.words());
        words += f64::from(u.words());
    }
    errors / words
}

fn median_f32(values: &[f32]) -> f32 {
    percentile(&values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), 0.5) as f32
}

/// The matrix-product library lanyard-stt's CTranslate2 is built with (see
/// `crates/lanyard-stt/Cargo.toml`).
const LANYARD_BACKEND: &str =
    if cfg!(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu")) { "OpenBLAS" } else { "ruy" };

/// One utterance as the helper timed it: (c) and (h).
struct Helper {
    secs: f64,
    text: String,
    same_secs: f64,
    same_text: String,
}

/// Runs the faster-whisper helper on `files`: its version line (with the
/// wheel's SGEMM backend, from CTranslate2's own log), and per file in order
/// faster-whisper's default transcription (c) and `config`'s decode on the
/// wheel's CTranslate2 (h).
fn faster_whisper(model_dir: &Path, config: &WhisperConfig, files: &[PathBuf]) -> (String, Vec<Helper>) {
    let output = Command::new(python())
        .arg(HELPER)
        .args(["--cpu-threads", &config.threads.to_string()])
        .args(["--same-decode", &config.min_window_secs.to_string(), &config.beam_size.to_string()])
        .arg(model_dir)
        .args(files)
        .env("CT2_VERBOSE", "1")
        .output()
        .expect("run the faster-whisper helper");
    // CTranslate2's info log names the SGEMM backend; anything else the
    // helper says goes on to our stderr.
    let log = String::from_utf8_lossy(&output.stderr);
    let mut sgemm = "?".to_owned();
    for line in log.lines() {
        if let Some(rest) = line.split("SGEMM backend: ").nth(1) {
            sgemm = rest.split_whitespace().next().unwrap_or("?").to_owned();
        } else if !line.contains("[ctranslate2]") {
            eprintln!("{line}");
        }
    }
    assert!(output.status.success(), "{HELPER} failed ({})", output.status);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("helper prints JSON");
    let versions = format!(
        "faster-whisper {}, ctranslate2 {} (pip wheel), cpu_threads {}, SGEMM {sgemm}",
        json["faster_whisper"].as_str().unwrap_or("?"),
        json["ctranslate2"].as_str().unwrap_or("?"),
        json["cpu_threads"]
    );
    let results = json["results"]
        .as_array()
        .expect("results array")
        .iter()
        .map(|r| Helper {
            secs: r["secs"].as_f64().expect("secs"),
            text: r["text"].as_str().expect("text").to_owned(),
            same_secs: r["same_secs"].as_f64().expect("same_secs"),
            same_text: r["same_text"].as_str().expect("same_text").to_owned(),
        })
        .collect::<Vec<_>>();
    assert_eq!(results.len(), files.len(), "helper returned one result per file");
    (versions, results)
}

fn python() -> String {
    std::env::var("LANYARD_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fails early, before any synthesis or model load, when a tool is missing.
fn check_tools() {
    let fail = |what: &str| -> ! {
        let _ = writeln!(std::io::stderr(), "ttfs bench: {what}");
        std::process::exit(1);
    };
    let import = Command::new(python())
        .args(["-c", "import faster_whisper"])
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run {} ({e}); install Python 3 or set LANYARD_PYTHON", python())));
    if !import.status.success() {
        fail(&format!(
            "`import faster_whisper` failed in {}:\n{}\nInstall it with `pip install faster-whisper` \
             (it brings ctranslate2 and tokenizers; no model is downloaded, the bench passes the local model dir), \
             or point LANYARD_PYTHON at a Python that has it.",
            python(),
            String::from_utf8_lossy(&import.stderr).trim()
        ));
    }
    reference_set::check_speech_tools();
}

fn load_average_1m() -> f64 {
    load_average().split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}
