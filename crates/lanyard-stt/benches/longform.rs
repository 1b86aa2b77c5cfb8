//! Benchmark: long speech (30 s to 3 min) transcribed in full, side by side
//! with faster-whisper, and the time to final speech (TTFS) when it is
//! streamed at real time, in one run.
//!
//! # What is measured
//!
//! Every passage of the long reference set (`benches/long_set/`: real
//! people's readings joined into passages, passages that repeat on purpose,
//! and monologues with pauses) goes through:
//!
//! - **(a) lanyard, whole file**: `SpeechToText::transcribe` of the whole
//!   passage (the long-form loop: timestamped windows, seeking, the previous
//!   text as prompt, temperature fallback, VAD). This is what an upload or
//!   `POST /v1/audio/transcriptions` gets. Timed from the audio in memory.
//! - **(b) faster-whisper**: its default `model.transcribe(audio)` on the
//!   same model directory and PCM, at float32 with the same thread count,
//!   run by `benches/faster_whisper_ttfs.py` in a child `python3`.
//! - **(c) lanyard, streamed**: what the server's live state does with the
//!   passage streamed at real time, as a discrete-event replay on the
//!   audio's own clock. The audio arrives in 200 ms batches. The engine runs
//!   one job at a time, each for as long as it really takes here:
//!   speculative decodes at silence onsets (the settled text as prompt, the
//!   rest of the audio decoded; from 10 s into the passage each also
//!   settles what it decoded, since its cut is in a pause, unless something
//!   settled meanwhile: `SettlePolicy::settles_speculative`), settling
//!   decodes when
//!   `SettlePolicy::default()` says so, and greedy partial drafts of the
//!   unsettled audio each second while the voice is on, in that priority
//!   order (as `live` and `stt_pool` do; a partial or speculative decode
//!   that waited over 2 s is dropped, as there). A settling decode's
//!   segments count from the moment it finishes. At the end of the audio
//!   the final is the
//!   newest speculative decode if it covers all the speech, else a decode of
//!   the unsettled rest once the engine is free. TTFS runs from the end of
//!   the audio to the end of that decode.
//!
//! For each row: WER over the set and per passage, and the no-dropped-
//! sentence check (`lanyard_stt::sentences`): a reference sentence with more
//! than half its words missing, or a sentence said more often than it was
//! spoken, fails the passage. For (c): TTFS p50, p95 and max, and the ratio
//! of each passage's TTFS to faster-whisper's whole-file time.
//!
//! # How to run
//!
//! ```text
//! pip install faster-whisper          # once; brings ctranslate2, no model
//! cargo test -p lanyard-stt --bench longform   # the dev profile: one CTranslate2 build
//! ```
//!
//! (`cargo bench` works too, but builds CTranslate2 a second time, in the
//! release profile: about 16 minutes on 2 cores.)
//!
//! Both engines' temperature fallback samples at random; the bench seeds
//! both with `LANYARD_BENCH_SEED` (default 1), so a run can be repeated
//! exactly, and other seeds show how much the figures move by chance.
//!
//! `LANYARD_BENCH_LIMIT=N` runs the first N passages only, and
//! `LANYARD_BENCH_ONLY=name,name` the named ones (a quick look; the
//! figures to report come from the whole set). `LANYARD_BENCH_TRACE=1`
//! prints every job of the streamed replay (when it was queued, started,
//! how long it took, what a settling decode settled) and both transcripts
//! of each passage: how to see why a passage streams slowly.

#[path = "long_set/mod.rs"]
mod long_set;
mod reference_set;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lanyard_stt::{
    EndpointConfig, Endpointer, Segment, SettlePolicy, SpeechToText, Transcript, VadEvent, WhisperConfig, WhisperCt2,
    sentences::sentence_coverage, word_error_rate,
};
use reference_set::{cpu_model, load_average, model_dir, percentile};

const HELPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/faster_whisper_ttfs.py");

/// Samples in one relay send round: 200 ms of audio.
const BATCH_SAMPLES: usize = 3_200;
const RATE: f64 = 16_000.0;
/// `lanyard-server`'s `stt_pool::DRAFT_MAX_WAIT`.
const DRAFT_MAX_WAIT_SECS: f64 = 2.0;

struct Result_ {
    secs: f64,
    text: String,
}

fn main() {
    let model_dir = model_dir();
    let mut passages = long_set::passages();
    if let Some(limit) = std::env::var("LANYARD_BENCH_LIMIT").ok().and_then(|v| v.parse::<usize>().ok()) {
        passages.truncate(limit.max(1));
    }
    if let Ok(only) = std::env::var("LANYARD_BENCH_ONLY") {
        let names: Vec<&str> = only.split(',').map(str::trim).collect();
        passages.retain(|p| names.contains(&p.name.as_str()));
        assert!(!passages.is_empty(), "LANYARD_BENCH_ONLY={only} names no passage of the set");
    }
    // Both engines sample with the same seed (see `seed_sampling`): one
    // run's figures can be had again, and `LANYARD_BENCH_SEED` draws others.
    let seed: u32 = std::env::var("LANYARD_BENCH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    lanyard_stt::seed_sampling(seed);
    let config = WhisperConfig::default();
    let engine = WhisperCt2::load(&model_dir, config.clone()).expect("load the model");
    let total: f64 = passages.iter().map(|p| p.pcm16k.len() as f64 / RATE).sum();
    println!("lanyard-stt long-form benchmark");
    println!("  model       {}", model_dir.display());
    println!("  machine     {} ({} threads for both engines)", cpu_model(), config.threads);
    println!("  set         {} passages, {:.1} min of audio", passages.len(), total / 60.0);
    println!("  load avg    {} at start", load_average());
    println!("  seed        {seed} for both engines' sampling (LANYARD_BENCH_SEED)");
    engine.transcribe(&passages[0].pcm16k[..16_000 * 5]).expect("warm-up");

    // (b) first, in one child process (its model load is not timed).
    let scratch = tempfile::tempdir().expect("temp dir");
    let files: Vec<PathBuf> = passages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let path = scratch.path().join(format!("p{i:03}.pcm"));
            let bytes: Vec<u8> =
                p.pcm16k.iter().flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes()).collect();
            fs::write(&path, bytes).expect("write PCM");
            path
        })
        .collect();
    let started = Instant::now();
    let (versions, fw) = faster_whisper(&model_dir, config.threads, seed, &files);
    let mut whole = Vec::new();
    let mut streamed = Vec::new();
    for (i, p) in passages.iter().enumerate() {
        let t = Instant::now();
        let text = engine.transcribe(&p.pcm16k).expect("transcribe (a)").text;
        whole.push(Result_ { secs: t.elapsed().as_secs_f64(), text });
        let (ttfs, transcript, settled) = replay(&engine, &p.pcm16k);
        if std::env::var_os("LANYARD_BENCH_TRACE").is_some() {
            eprintln!("  (a) {}\n  (c) {}", whole[i].text, transcript.text);
        }
        streamed.push((Result_ { secs: ttfs, text: transcript.text }, settled));
        eprintln!(
            "  {}/{} {} ({:.0} s): whole {:.1} s, fw {:.1} s, streamed TTFS {:.2} s ({:.0} s settled before the end)",
            i + 1,
            passages.len(),
            p.name,
            p.pcm16k.len() as f64 / RATE,
            whole[i].secs,
            fw[i].secs,
            ttfs,
            settled
        );
    }
    println!("  faster-whisper side: {versions}");
    println!("  wall time   {:.0} s; load avg {} at end", started.elapsed().as_secs_f64(), load_average());
    println!();
    report(&passages, &whole, &fw, &streamed);
}

fn report(passages: &[long_set::Passage], whole: &[Result_], fw: &[Result_], streamed: &[(Result_, f64)]) {
    println!(
        "| {:<28} | {:>6} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>7} |",
        "passage", "secs", "WER (a)", "WER fw", "WER (c)", "fw secs", "TTFS (c)", "c / fw"
    );
    println!("|{:-<30}|{:->8}|{:->11}|{:->11}|{:->11}|{:->11}|{:->11}|{:->9}|", "", "", "", "", "", "", "", "");
    let mut failures = Vec::new();
    for (i, p) in passages.iter().enumerate() {
        let reference = p.sentences.join(" ");
        let wer = |t: &str| 100.0 * word_error_rate(&reference, t);
        println!(
            "| {:<28} | {:>6.1} | {:>8.1}% | {:>8.1}% | {:>8.1}% | {:>9.2} | {:>9.2} | {:>6.2}x |",
            p.name,
            p.pcm16k.len() as f64 / RATE,
            wer(&whole[i].text),
            wer(&fw[i].text),
            wer(&streamed[i].0.text),
            fw[i].secs,
            streamed[i].0.secs,
            streamed[i].0.secs / fw[i].secs
        );
        for (row, text) in [("(a)", &whole[i].text), ("fw", &fw[i].text), ("(c)", &streamed[i].0.text)] {
            let c = sentence_coverage(&p.sentences, text);
            for s in &c.dropped {
                failures.push(format!("{row} {}: dropped {s:?}", p.name));
            }
            for s in &c.doubled {
                failures.push(format!("{row} {}: said more often than spoken {s:?}", p.name));
            }
        }
    }
    let set_wer = |texts: Vec<&str>| {
        let (mut errors, mut words) = (0.0f64, 0.0f64);
        for (p, t) in passages.iter().zip(texts) {
            let reference = p.sentences.join(" ");
            let n = reference.split_whitespace().count() as f64;
            errors += f64::from(word_error_rate(&reference, t)) * n;
            words += n;
        }
        100.0 * errors / words.max(1.0)
    };
    let wa = set_wer(whole.iter().map(|r| r.text.as_str()).collect());
    let wf = set_wer(fw.iter().map(|r| r.text.as_str()).collect());
    let wc = set_wer(streamed.iter().map(|r| r.0.text.as_str()).collect());
    let ttfs: Vec<f64> = streamed.iter().map(|r| r.0.secs).collect();
    let ratios: Vec<f64> = streamed.iter().zip(fw).map(|(s, f)| s.0.secs / f.secs).collect();
    let whole_ratio: Vec<f64> = whole.iter().zip(fw).map(|(a, f)| a.secs / f.secs).collect();
    println!();
    println!("  set WER: (a) lanyard whole file {wa:.2}%, faster-whisper {wf:.2}%, (c) streamed {wc:.2}%");
    println!(
        "  (c) TTFS p50 {:.2} s, p95 {:.2} s, max {:.2} s; TTFS / faster-whisper whole-file time: median {:.3}x",
        percentile(&ttfs, 0.5),
        percentile(&ttfs, 0.95),
        ttfs.iter().copied().fold(0.0, f64::max),
        percentile(&ratios, 0.5)
    );
    println!("  (a) whole-file time / faster-whisper's: median {:.2}x", percentile(&whole_ratio, 0.5));
    println!();
    println!("Bars (issue \"Every word\"):");
    bar("WER (a) <= faster-whisper + 0.5 pt", wa - wf, 0.5, "pt");
    bar("WER (c) <= faster-whisper + 0.5 pt", wc - wf, 0.5, "pt");
    bar("TTFS (c) p50 <= 0.6 s", percentile(&ttfs, 0.5), 0.6, "s");
    bar("TTFS (c) p95 <= 1.2 s", percentile(&ttfs, 0.95), 1.2, "s");
    println!("  no dropped or doubled sentence: {}", if failures.is_empty() { "PASS" } else { "FAIL" });
    for f in &failures {
        println!("    {f}");
    }
}

fn bar(name: &str, value: f64, limit: f64, unit: &str) {
    let verdict = if value <= limit { "PASS" } else { "FAIL" };
    println!("  {verdict}  {name}: {value:.3} {unit} (margin {:+.3} {unit})", limit - value);
}

/// The faster-whisper helper over `files`: its versions line and one result per file.
fn faster_whisper(model_dir: &Path, threads: usize, seed: u32, files: &[PathBuf]) -> (String, Vec<Result_>) {
    let python = std::env::var("LANYARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(python)
        .arg(HELPER)
        .args(["--cpu-threads", &threads.to_string()])
        .args(["--seed", &seed.to_string()])
        .arg(model_dir)
        .args(files)
        .output()
        .expect("run the faster-whisper helper");
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        panic!("{HELPER} failed ({}); `pip install faster-whisper` first", output.status);
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("helper prints JSON");
    let versions = format!(
        "faster-whisper {}, ctranslate2 {} (pip wheel)",
        json["faster_whisper"].as_str().unwrap_or("?"),
        json["ctranslate2"].as_str().unwrap_or("?")
    );
    let results = json["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| Result_ { secs: r["secs"].as_f64().expect("secs"), text: r["text"].as_str().expect("text").into() })
        .collect();
    (versions, results)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Speculative,
    Settle,
    Partial,
}

/// A queued job: what it decodes, snapshotted when queued (as `live` does).
#[derive(Clone)]
struct Job {
    kind: Kind,
    queued: f64,
    /// Settled samples and segments when queued.
    base: usize,
    settled: Vec<Segment>,
    /// End of the audio it decodes (absolute samples).
    len: usize,
}

/// A decode that settles audio `from..to` with `segments` (absolute times)
/// when it finishes at `done`, if nothing else settled since it was queued.
struct Commit {
    done: f64,
    segments: Vec<Segment>,
    from: usize,
    to: usize,
    /// A settling decode (its end frees the settle slot), not a speculative one.
    settle_job: bool,
}

/// Applies the commits finished by `now`, in order, as `live` does.
fn commit(
    pending: &mut Vec<Commit>,
    now: f64,
    base: &mut usize,
    settled: &mut Vec<Segment>,
    settle_busy: &mut bool,
    trace: bool,
) {
    pending.sort_by(|a, b| a.done.total_cmp(&b.done));
    while pending.first().is_some_and(|c| c.done <= now) {
        let c = pending.remove(0);
        if c.settle_job {
            *settle_busy = false;
        }
        let settles = c.settle_job || SettlePolicy::default().settles_speculative(c.to, RATE as u32);
        if c.from == *base && c.to > c.from && settles {
            if trace && !c.settle_job {
                eprintln!("  spec settles {:.2}..{:.2}", c.from as f64 / RATE, c.to as f64 / RATE);
            }
            settled.extend(c.segments);
            *base = c.to;
        }
    }
}

/// (c): one passage through the server's live path, replayed on the
/// audio's clock (see the module doc). Returns TTFS, the final transcript
/// and the seconds settled before the end.
fn replay(engine: &WhisperCt2, samples: &[f32]) -> (f64, Transcript, f64) {
    let policy = SettlePolicy::default();
    let mut e = Endpointer::new(EndpointConfig::default());
    let mut free_at = 0.0;
    let (mut base, mut settled): (usize, Vec<Segment>) = (0, Vec::new());
    let mut queue: Vec<Job> = Vec::new();
    // Decodes that settle, in the order they finished: settling decodes and
    // speculative ones (see `Commit`).
    let mut settling: Vec<Commit> = Vec::new();
    let mut settle_busy = false;
    let mut spec_done: Option<(f64, usize, Transcript)> = None;
    let (mut received, mut drafted, mut tried) = (0usize, 0usize, 0usize);
    let trace = std::env::var_os("LANYARD_BENCH_TRACE").is_some();

    let run_until = |now: f64,
                     queue: &mut Vec<Job>,
                     free_at: &mut f64,
                     settling: &mut Vec<Commit>,
                     spec_done: &mut Option<(f64, usize, Transcript)>| {
        loop {
            let Some(i) = (0..queue.len()).min_by_key(|&i| (queue[i].kind as u8, (queue[i].queued * 1e6) as u64))
            else {
                return;
            };
            let start = free_at.max(queue[i].queued);
            if start > now {
                return;
            }
            let job = queue.remove(i);
            // As `stt_pool` does: a partial or speculative decode that waited
            // longer than DRAFT_MAX_WAIT (2 s) is dropped; settling never is.
            if job.kind != Kind::Settle && start - job.queued > DRAFT_MAX_WAIT_SECS {
                continue;
            }
            let audio = &samples[job.base..job.len.max(job.base)];
            let previous = job.settled.as_slice();
            let t = Instant::now();
            match job.kind {
                Kind::Speculative => {
                    let tail = engine.transcribe_after(audio, previous).expect("speculative");
                    *free_at = start + t.elapsed().as_secs_f64();
                    let mut segs = job.settled.clone();
                    let tail = tail.shifted(job.base as f32 / RATE as f32).segments;
                    // As `live` does: the cut is in a pause, so the decode settles.
                    settling.push(Commit {
                        done: start + t.elapsed().as_secs_f64(),
                        segments: tail.clone(),
                        from: job.base,
                        to: job.len,
                        settle_job: false,
                    });
                    if trace {
                        eprintln!(
                            "  spec   queued {:6.2} start {:6.2} took {:5.2} audio {:5.2}..{:5.2} segs {:?}",
                            job.queued,
                            start,
                            t.elapsed().as_secs_f64(),
                            job.base as f64 / RATE,
                            job.len as f64 / RATE,
                            tail.iter().map(|s| (s.start, s.end, s.text.as_str())).collect::<Vec<_>>()
                        );
                    }
                    segs.extend(tail);
                    *spec_done = Some((*free_at, job.len, Transcript::from_segments(segs, 0.0, 0.0)));
                }
                Kind::Settle => {
                    let (segs, done) = engine.transcribe_settled(audio, previous).expect("settle");
                    *free_at = start + t.elapsed().as_secs_f64();
                    let offset = job.base as f32 / RATE as f32;
                    if trace {
                        eprintln!(
                            "  settle queued {:6.2} start {:6.2} took {:5.2} audio {:5.2}..{:5.2} settles {:5.2} s in {} segs {:?}",
                            job.queued,
                            start,
                            t.elapsed().as_secs_f64(),
                            job.base as f64 / RATE,
                            job.len as f64 / RATE,
                            done as f64 / RATE,
                            segs.len(),
                            segs.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>()
                        );
                    }
                    let segs = segs
                        .into_iter()
                        .map(|mut s| {
                            s.shift(offset);
                            s
                        })
                        .collect();
                    settling.push(Commit {
                        done: *free_at,
                        segments: segs,
                        from: job.base,
                        to: job.base + done,
                        settle_job: true,
                    });
                }
                Kind::Partial => {
                    engine.transcribe_draft(audio).expect("draft");
                    *free_at = start + t.elapsed().as_secs_f64();
                    if trace {
                        eprintln!(
                            "  draft  queued {:6.2} start {:6.2} took {:5.2} audio {:5.2}",
                            job.queued,
                            start,
                            t.elapsed().as_secs_f64(),
                            audio.len() as f64 / RATE
                        );
                    }
                }
            }
        }
    };

    for batch in samples.chunks(BATCH_SAMPLES) {
        received += batch.len();
        let now = received as f64 / RATE;
        run_until(now, &mut queue, &mut free_at, &mut settling, &mut spec_done);
        commit(&mut settling, now, &mut base, &mut settled, &mut settle_busy, trace);
        for event in e.push(batch) {
            if let VadEvent::SilenceOnset { .. } = event {
                let len = e.position().min(received);
                queue.retain(|j| j.kind != Kind::Speculative);
                queue.push(Job { kind: Kind::Speculative, queued: now, base, settled: settled.clone(), len });
            }
        }
        if !settle_busy && policy.due(received - base, received, tried, RATE as u32) {
            tried = received;
            settle_busy = true;
            queue.push(Job { kind: Kind::Settle, queued: now, base, settled: settled.clone(), len: received });
        }
        if e.voiced_now() && received >= drafted + 16_000 && !queue.iter().any(|j| j.kind == Kind::Partial) {
            drafted = received;
            queue.push(Job { kind: Kind::Partial, queued: now, base, settled: settled.clone(), len: received });
        }
    }
    let end = samples.len() as f64 / RATE;
    queue.retain(|j| j.kind != Kind::Partial && j.kind != Kind::Settle);
    let speech_end = e.speech_end();
    let covers = |len: usize| speech_end.is_some_and(|s| s <= len);
    if queue.iter().any(|j| covers(j.len)) {
        run_until(f64::INFINITY, &mut queue, &mut free_at, &mut settling, &mut spec_done);
    }
    // A settle that finished by the end counts; one still running holds the
    // engine, but its result comes after the utterance closed, and the live
    // state ignores it then.
    settling.retain(|c| c.done <= end);
    commit(&mut settling, end, &mut base, &mut settled, &mut settle_busy, trace);
    let settled_secs = base as f64 / RATE;
    match spec_done {
        Some((done, len, t)) if covers(len) && queue.is_empty() => ((done - end).max(0.0), t, settled_secs),
        _ => {
            let start = free_at.max(end);
            let t = Instant::now();
            let rest = engine.transcribe_after(&samples[base..], &settled).expect("final");
            let ttfs = start + t.elapsed().as_secs_f64() - end;
            let mut segs = settled;
            segs.extend(rest.shifted(base as f32 / RATE as f32).segments);
            (ttfs, Transcript::from_segments(segs, 0.0, 0.0), settled_secs)
        }
    }
}
