//! `lanyard demo`: the whole path, end to end, as separate processes.
//!
//! 1. registers a device in a fresh data directory;
//! 2. starts `lanyard serve` on a loopback port, over TLS with a throwaway
//!    CA's certificate (`dev_tls`) unless `--plain`;
//! 3. starts `lanyard pendant-sim`, which speaks known sentences (espeak-ng)
//!    through the BLE framing at real-time pace;
//! 4. starts `lanyard relay`, which trusts that CA (`--ca-cert`), spools and
//!    streams them;
//! 5. reads what each process reports and the server's stored timings, and
//!    prints, per utterance: reference, transcript, reply, and latency from
//!    end of speech to final transcript and to the push request; then the
//!    word error rate over all of them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use lanyard_pendant::sim::SimEvent;
use lanyard_proto::wire::UtteranceView;
use lanyard_relay::RelayEvent;
use lanyard_relay::host::Stamped;
use lanyard_server::ServeEvent;
use lanyard_testkit::Lanyard;
use serde::de::DeserializeOwned;
use tokio::process::Child;
use tokio::sync::mpsc;
use uuid::Uuid;

#[derive(Args)]
pub struct DemoArgs {
    /// How many of the built-in sentences to speak (1 to 4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4))]
    sentences: u64,
    /// The speech model directory [env: LANYARD_MODEL_DIR] [default:
    /// ~/.local/share/lanyard/models/whisper-tiny.en, which `scripts/setup` installs].
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Keep the demo's data (store, audio, spool, push sink) in this directory
    /// instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Fail (exit 1) if the word error rate is above this fraction.
    #[arg(long)]
    max_wer: Option<f32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Serve plain HTTP instead of TLS. By default the demo makes a
    /// throwaway CA and certificate, serves HTTPS with them, and has the
    /// relay trust that CA (`--ca-cert`), as a deployment runs.
    #[arg(long)]
    plain: bool,
}

/// A child process, whose stdout events are forwarded into one stream.
struct Proc {
    name: &'static str,
    child: Child,
}

/// What one of the roles printed, as its own event type.
#[derive(Debug)]
enum Reported {
    Server(ServeEvent),
    Pendant(SimEvent),
    Relay(Stamped),
}

/// Starts `lanyard ARGS` as `name` and forwards its events, read as `E`.
fn spawn<E: DeserializeOwned + 'static>(
    name: &'static str,
    args: &[String],
    tx: &mpsc::UnboundedSender<Reported>,
    tag: fn(E) -> Reported,
) -> Result<Proc> {
    let lanyard = Lanyard::current_exe().context("cannot find the lanyard executable")?;
    let child = lanyard_testkit::forward(name, lanyard.command(args), tx.clone(), tag)
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Proc { name, child })
}

#[derive(Default, Debug)]
struct Utt {
    reference: String,
    speech_end_ms: Option<u64>,
    id: Option<Uuid>,
    transcript: Option<String>,
    final_at_ms: Option<u64>,
    reply: Option<String>,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let deadline = Duration::from_secs(args.timeout_secs);
    let n = args.sentences as usize;
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let work = args.keep.clone().unwrap_or_else(|| tmp.path().to_owned());
    let server_dir = work.join("server");
    let spool_dir = work.join("spool");
    if args.keep.is_some() {
        // A kept directory from an earlier run would mix two runs' utterances.
        for d in [&server_dir, &spool_dir] {
            if d.exists() {
                std::fs::remove_dir_all(d).with_context(|| format!("cannot clear {}", d.display()))?;
            }
        }
    }
    eprintln!("lanyard demo: working in {}", work.display());

    let cfg = lanyard_server::ServerConfig::new(([127, 0, 0, 1], 0).into(), server_dir.clone());
    let (_device, token) = crate::add_device(&cfg, "demo-phone").await?;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = |x: &str| x.to_string();
    let mut server_args = vec![
        s("serve"),
        s("--listen"),
        s("127.0.0.1:0"),
        s("--data-dir"),
        path(&server_dir),
        s("--model-dir"),
        path(&lanyard_stt::model_dir(args.model_dir.clone())),
    ];
    let mut trust = Vec::new();
    let mut ca = None;
    if !args.plain {
        let tls = lanyard_server::dev_tls::make(&work.join("tls"))?;
        ca = Some(tls.ca.clone());
        server_args.extend([s("--tls-cert"), path(&tls.cert), s("--tls-key"), path(&tls.key)]);
        trust.extend([s("--ca-cert"), path(&tls.ca)]);
    }
    let mut procs = vec![spawn("server", &server_args, &tx, Reported::Server)?];
    let server_url =
        wait_for(&mut rx, &mut procs, "the server's listening", deadline - started.elapsed(), |r| match r {
            Reported::Server(ServeEvent::Listening { url, .. }) => Some(url),
            _ => None,
        })
        .await?;
    let tls_note = if args.plain { "plain HTTP" } else { "TLS, a throwaway CA's certificate" };
    eprintln!("lanyard demo: server up at {server_url} ({tls_note}; model loaded)");

    let mut sim_args =
        vec![s("pendant-sim"), s("--listen"), s("127.0.0.1:0"), s("--wait-for-central"), s("--linger-secs"), s("600")];
    for sentence in &lanyard_pendant::speech::DEMO_SENTENCES[..n] {
        sim_args.extend([s("--say"), s(sentence)]);
    }
    procs.push(spawn("pendant", &sim_args, &tx, Reported::Pendant)?);
    let sim_addr =
        wait_for(&mut rx, &mut procs, "the pendant's listening", deadline - started.elapsed(), |r| match r {
            Reported::Pendant(SimEvent::Listening { addr }) => Some(addr.to_string()),
            _ => None,
        })
        .await?;
    eprintln!("lanyard demo: pendant simulator at {sim_addr}");

    procs.push(spawn(
        "relay",
        &[
            s("relay"),
            s("--server"),
            server_url.clone(),
            s("--token"),
            token.clone(),
            s("--pendant"),
            sim_addr,
            s("--spool-dir"),
            path(&spool_dir),
            s("--push-token"),
            s("apns:demo-device-token"),
            s("--exit-after"),
            n.to_string(),
        ]
        .into_iter()
        .chain(trust)
        .collect::<Vec<_>>(),
        &tx,
        Reported::Relay,
    )?);
    drop(tx);

    let utts = follow(&mut rx, &mut procs, n, started, deadline, args.timeout_secs).await?;

    let client = lanyard_relay::transport::Transport::new(&ca.into_iter().collect::<Vec<_>>())?.http().clone();
    let views = server_views(&client, &server_url, &token, &utts, started, deadline).await?;
    let pushes = std::fs::read_to_string(server_dir.join("push-sink.jsonl")).unwrap_or_default();

    let wer = report(&utts, &views, &server_url, tls_note, &pushes, started);

    for p in &mut procs {
        let _ = p.child.start_kill();
    }
    if pushes.lines().count() != n {
        bail!("expected {n} push requests in the sink, found {}", pushes.lines().count());
    }
    if let Some(max) = args.max_wer
        && wer > max
    {
        bail!("word error rate {:.1}% is above the allowed {:.1}%", wer * 100.0, max * 100.0);
    }
    Ok(())
}

/// Each utterance as the server reports it, once its push request is made
/// (it is made after the reply is stored) or the demo's time is up.
async fn server_views(
    client: &reqwest::Client,
    server_url: &str,
    token: &str,
    utts: &[Utt],
    started: Instant,
    deadline: Duration,
) -> Result<Vec<UtteranceView>> {
    let mut views = Vec::new();
    for u in utts {
        let id = u.id.context("an utterance never started at the relay")?;
        let view = loop {
            let v: UtteranceView = client
                .get(format!("{server_url}/v1/utterances/{id}"))
                .bearer_auth(token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            if v.timings.push_ms.is_some() || started.elapsed() > deadline {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        views.push(view);
    }
    Ok(views)
}

/// Follows the processes' events until every one of the `n` sentences has
/// its reply: what the pendant said, the relay's utterance id, transcript
/// and reply for each.
async fn follow(
    rx: &mut mpsc::UnboundedReceiver<Reported>,
    procs: &mut [Proc],
    n: usize,
    started: Instant,
    deadline: Duration,
    timeout_secs: u64,
) -> Result<Vec<Utt>> {
    let mut utts: Vec<Utt> = (0..n).map(|_| Utt::default()).collect();
    let mut by_id: HashMap<Uuid, usize> = HashMap::new();
    let mut started_ids = 0usize;
    let mut replies = 0usize;
    while replies < n {
        let left = deadline.checked_sub(started.elapsed()).context("the demo timed out")?;
        let Ok(Some(reported)) = tokio::time::timeout(left, rx.recv()).await else {
            check_alive(procs)?;
            bail!("the demo timed out after {}s with {replies} of {n} replies", timeout_secs);
        };
        let relay = |stamped: Stamped| (stamped.at_ms, stamped.event);
        match reported {
            Reported::Pendant(SimEvent::UtteranceStart { index, text, .. }) => {
                if let Some(u) = utts.get_mut(index) {
                    u.reference = text;
                    eprintln!("lanyard demo: [{}/{n}] pendant speaks: {}", index + 1, u.reference);
                }
            }
            Reported::Pendant(SimEvent::UtteranceEnd { index, at_ms, .. }) => {
                if let Some(u) = utts.get_mut(index) {
                    u.speech_end_ms = Some(at_ms);
                }
            }
            Reported::Relay(stamped) => match relay(stamped) {
                (_, RelayEvent::UtteranceStarted { id }) => {
                    if let Some(u) = utts.get_mut(started_ids) {
                        u.id = Some(id);
                        by_id.insert(id, started_ids);
                    }
                    started_ids += 1;
                }
                (at_ms, RelayEvent::Final { id, text }) => {
                    if let Some(u) = by_id.get(&id).and_then(|&i| utts.get_mut(i)) {
                        u.transcript = Some(text);
                        u.final_at_ms = Some(at_ms);
                    }
                }
                (_, RelayEvent::Reply { id, body, .. }) => {
                    if let Some(u) = by_id.get(&id).and_then(|&i| utts.get_mut(i)) {
                        replies += 1;
                        eprintln!("lanyard demo: reply {replies}/{n}: {body}");
                        u.reply = Some(body);
                    }
                }
                (_, error @ RelayEvent::Error { .. }) => eprintln!("lanyard demo: relay reports an error: {error:?}"),
                _ => {}
            },
            _ => {}
        }
    }

    Ok(utts)
}

/// Prints each utterance (reference, transcript, reply, latencies) and the
/// run's word error rate and median latencies; returns the WER.
fn report(
    utts: &[Utt],
    views: &[UtteranceView],
    server_url: &str,
    tls_note: &str,
    pushes: &str,
    started: Instant,
) -> f32 {
    let n = utts.len();
    println!();
    println!(
        "Lanyard demo: {n} utterances, pendant -> BLE framing -> relay spool -> WebSocket -> server -> Whisper -> reply -> push"
    );
    println!("transport: {server_url} ({tls_note})");
    println!();
    let (mut errors, mut words) = (0.0f32, 0usize);
    let mut ttfs = Vec::new();
    let mut to_push = Vec::new();
    for (i, (u, v)) in utts.iter().zip(views).enumerate() {
        let hyp = u.transcript.as_deref().unwrap_or_default();
        let wer = lanyard_stt::word_error_rate(&u.reference, hyp);
        let ref_words = u.reference.split_whitespace().count();
        errors += wer * ref_words as f32;
        words += ref_words;
        let end = u.speech_end_ms.map(|e| e as i64);
        let final_lat = end.zip(u.final_at_ms).map(|(e, f)| f as i64 - e);
        let push_lat = end.zip(v.timings.push_ms).map(|(e, p)| p - e);
        ttfs.extend(final_lat);
        to_push.extend(push_lat);
        println!("#{} {}", i + 1, v.id);
        println!("  reference:  {}", u.reference);
        println!("  transcript: {hyp}");
        println!("  reply:      {}", u.reply.as_deref().unwrap_or("(none)"));
        println!(
            "  latency:    end of speech -> final transcript {}, -> push request {}   (WER {:.0}%)",
            ms(final_lat),
            ms(push_lat),
            wer * 100.0
        );
    }
    let wer = if words == 0 { 0.0 } else { errors / words as f32 };
    println!();
    println!("word error rate: {:.1}% over {words} reference words", wer * 100.0);
    println!("end of speech -> final transcript: median {}", ms(median(&mut ttfs)));
    println!("end of speech -> push request:     median {}", ms(median(&mut to_push)));
    println!("push requests written to the file sink: {}", pushes.lines().count());
    println!("finished in {:.1}s", started.elapsed().as_secs_f32());

    wer
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

fn ms(v: Option<i64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v} ms"))
}

fn median(v: &mut [i64]) -> Option<i64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Waits for the event `pick` accepts (`what` names it), failing early if a
/// process dies.
async fn wait_for<T>(
    rx: &mut mpsc::UnboundedReceiver<Reported>,
    procs: &mut [Proc],
    what: &str,
    within: Duration,
    mut pick: impl FnMut(Reported) -> Option<T>,
) -> Result<T> {
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(Duration::from_millis(500)), rx.recv()).await {
            Ok(Some(reported)) => {
                if let Some(found) = pick(reported) {
                    return Ok(found);
                }
            }
            Ok(None) => bail!("every process ended before {what}"),
            Err(_) => {
                check_alive(procs)?;
                if Instant::now() >= until {
                    bail!("no {what} in time");
                }
            }
        }
    }
}

fn check_alive(procs: &mut [Proc]) -> Result<()> {
    for p in procs {
        if let Ok(Some(status)) = p.child.try_wait()
            && !status.success()
        {
            bail!("the {} process exited with {status}; its log is above", p.name);
        }
    }
    Ok(())
}
