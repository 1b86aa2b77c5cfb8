//! `lanyard sim`: a fault campaign run from a scenario file. The `lanyard`
//! binary calls [`run`]; the processes it starts are that same executable.
//!
//! The campaign starts, as separate processes on loopback:
//!
//! - one `lanyard serve`, configured to push to an APNs look-alike that this
//!   process runs ([`lanyard_push::testing::ApnsPeer`], which checks every
//!   request as Apple does) and that fails a fraction of requests;
//! - per simulated phone: a `lanyard pendant-sim` speaking the corpus
//!   (espeak-ng, and if the scenario asks, long passages of several
//!   sentences from [`long_speech`] and recordings of real people from
//!   [`real_speech`]) at real-time pace through the BLE framing, a `lanyard relay` with its own
//!   spool and device token, driven through `--control-stdin` by a simulated
//!   iOS lifecycle ([`phone`]), and a [`proxy::FaultProxy`] that is the
//!   phone's network.
//!
//! Faults are applied for real, each with its scenario rate: connection
//! cuts, delays, black holes and network switches in the proxies, SIGKILL of
//! the server (restarted on the same data and port) and of relays
//! (relaunched on the pendant's next BLE event), BLE notification loss and
//! reordering in the pendant simulators, a slow spool disk in some relay
//! launches, failing APNs answers. Every fault that touched something is
//! logged with its time; one that touched nothing is not counted.
//!
//! Everything the processes print (JSON lines), the server's store and audio
//! files, the server's metrics and the APNs peer's log then go to
//! [`ledger`], which accounts for every utterance and measures latency, and
//! to [`report`], which writes the HTML page and the JSON.

pub mod ledger;
mod long_speech;
mod phone;
mod proxy;
mod real_speech;
mod report;
mod scenario;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;
use lanyard_pendant::speech::Voice;
use lanyard_push::testing::{ApnsPeer, ApnsPeerConfig, PeerReply, TestApnsKey};
use lanyard_server::ServeEvent;
use lanyard_store::Store;
use lanyard_store_sqlite::SqliteStore;
use lanyard_testkit::Lanyard;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use tokio::process::Child;
use tokio::sync::mpsc;
use uuid::Uuid;

pub use ledger::{FaultEvent, PushSeen, Record, ServerFacts, Source};
pub use scenario::Scenario;

#[derive(Args)]
#[command(after_long_help = "A scenario file (TOML) says how many pendants speak how many sentences, in which \
voices, under which simulated iOS lifecycle, and which faults to apply at which rates. Committed scenarios are in \
scenarios/: ci-short.toml (the CI campaign: every fault kind, ~100 utterances, a few minutes), clean.toml (no \
faults: a baseline) and long-1000.toml (1,000 utterances, by hand).\n\n\
Every utterance the relays spool ends in exactly one of: replied (transcribed once, one reply, a push accepted \
by the APNs peer, and the server holding exactly the frames the relay spooled), silent (an unmarked utterance, \
from a pendant with no button, in which nothing was heard: stored whole and rightly not answered), discarded by \
policy (with the relay's reason), or lost (with what is missing). Duplicates are counted: a second transcript write, a push the \
user would see twice, an audio frame the server received again. The command exits 1 if anything is lost or \
duplicated.\n\n\
Latency per utterance, from the pendant's end of speech: end-of-utterance detection (relay), safe (the server \
holds every frame durably), final transcript (TTFS), push request at APNs; p50/p95/p99. Word error rate against \
the reference sentences; both also by utterance length (under 10 s, 10 to 30 s, over 30 s).\n\n\
Scenario keys (all optional; rates of timed faults are per minute, per phone for network and relay faults; \
the others are probabilities):\n  \
[run] name, seed, pendants, utterances_per_pendant, gap_ms, mtu, settle_secs, timeout_secs, stt_threads\n  \
[corpus] voices, rates, sentences, real_speech_per_pendant, long_utterances_per_pendant, long_secs\n  \
[lifecycle] enabled, foreground_ms, wake_window_ms, suspend_grace_ms, foreground_on_wake\n  \
[faults] network_cuts_per_min, delays_per_min, delay_ms, delay_for_ms, black_holes_per_min, black_hole_for_ms, \
network_switches_per_min, switch_outage_ms, server_kills_per_min, relay_kills_per_min, relay_kill_on_suspend, \
ble_drop_rate, ble_reorder_rate, slow_disk_rate, slow_disk_fsync_ms, apns_failure_rate\n\n\
Examples:\n  lanyard sim scenarios/clean.toml\n  lanyard sim scenarios/ci-short.toml --report report.html --json report.json\n\n\
Child processes log to files under the work directory (--keep to look at them afterwards).")]
pub struct CampaignArgs {
    /// The scenario file (TOML); see scenarios/ for examples.
    scenario: PathBuf,
    /// Write a self-contained HTML report here (plots, accounting table, timeline, machine, scenario).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the full results as JSON here [default: next to --report, with .json].
    #[arg(long)]
    json: Option<PathBuf>,
    /// Override the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// The speech model directory [env: LANYARD_MODEL_DIR] [default:
    /// ~/.local/share/lanyard/models/whisper-tiny.en, which `scripts/setup` installs].
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Recordings of real speech for `[corpus] real_speech_per_pendant`, as scripts/setup installs them [default: ~/.local/share/lanyard/speech/pocketsphinx-5.1.1].
    #[arg(long, env = "LANYARD_SPEECH_DIR", hide_default_value = true, default_value_os_t = real_speech::default_dir())]
    speech_dir: PathBuf,
    /// Keep the campaign's data (server store and audio, spools, process logs) here instead of a temporary directory.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// Unix milliseconds: the clock of every `at_ms` the processes print.
pub use lanyard_testkit::now_ms;

/// What every part of the campaign shares: where events and faults go.
#[derive(Clone)]
pub struct CampaignEnv {
    pub exe: PathBuf,
    pub logs: PathBuf,
    pub faults: Arc<Mutex<Vec<FaultEvent>>>,
    /// Every stdout event of every child, with its source.
    pub events: mpsc::UnboundedSender<(Source, Value)>,
    /// `https` with `[run] tls` (the default), else `http`.
    pub scheme: &'static str,
    /// The campaign's own HTTP client (uploads, metrics), trusting the
    /// campaign's CA.
    pub http: reqwest::Client,
}

impl CampaignEnv {
    pub fn fault(&self, kind: &str, target: &str, detail: String) {
        self.fault_at(now_ms(), kind, target, detail);
    }

    /// Logs a fault that began at `at_ms` (one that lasts is logged when it
    /// ends, with what it touched, but dated from its start).
    pub fn fault_at(&self, at_ms: u64, kind: &str, target: &str, detail: String) {
        self.faults.lock().expect("fault log").push(FaultEvent {
            at_ms,
            kind: kind.into(),
            target: target.into(),
            detail,
        });
    }

    /// Starts a `lanyard` child whose stdout JSON lines are tagged with
    /// `source` and whose stderr goes to `logs/{name}.log` (appended across
    /// relaunches).
    pub fn spawn(&self, source: Source, name: &str, args: &[String], stdin: bool) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
            .with_context(|| format!("cannot create the log file for {name}"))?;
        let mut cmd = Lanyard::new(&self.exe).command(args);
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stderr(log)
            // Plain log files, without terminal colour codes.
            .env("NO_COLOR", "1");
        lanyard_testkit::forward(name, cmd, self.events.clone(), move |event: Value| (source, event))
            .with_context(|| format!("cannot start {name}"))
    }

    fn fault_count(&self) -> usize {
        self.faults.lock().expect("fault log").len()
    }
}

/// Draws the wait until the next event of a Poisson process of `per_min`.
pub fn poisson_wait(rng: &mut impl Rng, per_min: f64) -> Option<Duration> {
    if per_min <= 0.0 {
        return None;
    }
    let u: f64 = rng.r#gen::<f64>().max(1e-9);
    Some(Duration::from_secs_f64(-u.ln() * 60.0 / per_min))
}

/// The server process, restartable on the same port and data.
struct Server {
    child: lanyard_testkit::Child<ServeEvent>,
    addr: SocketAddr,
    args: Vec<String>,
    /// Counters scraped from incarnations that were killed.
    dead_duplicates: u64,
    dead_received: u64,
    incarnations: u32,
}

impl Server {
    async fn start(shared: &CampaignEnv, args: Vec<String>) -> Result<Server> {
        let (child, addr) = start_server(shared, &args).await?;
        Ok(Server { child, addr, args, dead_duplicates: 0, dead_received: 0, incarnations: 1 })
    }

    fn url(&self, shared: &CampaignEnv) -> String {
        format!("{}://{}", shared.scheme, self.addr)
    }

    /// SIGKILLs the server and starts it again on the same port and data.
    async fn kill_and_restart(&mut self, shared: &CampaignEnv) -> Result<()> {
        // The counters die with the process: read them first.
        let (dup, recv) = scrape(shared, &self.url(shared)).await.unwrap_or((0, 0));
        self.child.process.kill().await.context("cannot SIGKILL the server")?;
        self.dead_duplicates += dup;
        self.dead_received += recv;
        shared.fault("server_kill", "server", format!("SIGKILL, incarnation {}", self.incarnations));
        let mut args = self.args.clone();
        let listen = args.iter().position(|a| a == "--listen").expect("--listen given") + 1;
        args[listen] = self.addr.to_string();
        let mut tries = 0;
        loop {
            match start_server(shared, &args).await {
                Ok((child, _)) => {
                    self.child = child;
                    self.incarnations += 1;
                    return Ok(());
                }
                Err(e) if tries < 10 => {
                    tracing::warn!(error = %e, "server restart failed; trying again");
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.context("the server did not come back after a kill")),
            }
        }
    }

    async fn counters(&self, shared: &CampaignEnv) -> (u64, u64) {
        let (dup, recv) = scrape(shared, &self.url(shared)).await.unwrap_or((0, 0));
        (self.dead_duplicates + dup, self.dead_received + recv)
    }
}

/// Starts `lanyard serve` and waits for its address. Its stderr goes to
/// `logs/server.log`, appended across restarts.
async fn start_server(
    shared: &CampaignEnv,
    args: &[String],
) -> Result<(lanyard_testkit::Child<ServeEvent>, SocketAddr)> {
    let log_path = shared.logs.join("server.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .context("cannot create the log file for the server")?;
    let mut cmd = Lanyard::new(&shared.exe).command(args);
    cmd.stderr(log).env("NO_COLOR", "1");
    let server = lanyard_testkit::start_server(cmd, Duration::from_secs(120))
        .await
        .with_context(|| format!("see {}", log_path.display()))?;
    Ok((server.child, server.addr))
}

/// Reads `lanyard_frames_duplicate_total` and `lanyard_frames_received_total`.
async fn scrape(shared: &CampaignEnv, url: &str) -> Option<(u64, u64)> {
    let text = shared
        .http
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    Some((value("lanyard_frames_duplicate_total"), value("lanyard_frames_received_total")))
}

/// The machine the campaign ran on, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub os: String,
    pub kernel: String,
    pub memory_gib: f64,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Machine { cpu, cores, os, kernel, memory_gib }
}

const APNS_TOPIC: &str = "org.lanyard.sim";

/// The server's config file: pushes go to the local APNs peer, retried fast
/// so a failing APNs shows up as retries within the campaign.
fn server_config(dir: &Path, key: &TestApnsKey, peer: &ApnsPeer) -> Result<PathBuf> {
    let toml = format!(
        "[push]\nmax_attempts = 12\nretry_base_ms = 200\nretry_max_ms = 2000\nclaim_lease_ms = 3000\n\n{}",
        peer.apns_config_toml(dir, key, APNS_TOPIC)
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, toml).context("cannot write the server config")?;
    Ok(path)
}

/// The campaign's push token for phone `i`: 64 hex digits, as APNs issues.
fn push_token(i: usize) -> String {
    format!("{:064x}", 0x5eed_0000_u64 + i as u64)
}

pub async fn run(args: CampaignArgs) -> Result<()> {
    let mut scenario = Scenario::load(&args.scenario)?;
    if let Some(seed) = args.seed {
        scenario.run.seed = seed;
    }
    let outcome = campaign(&scenario, &args).await?;
    let json_path = args.json.clone().or_else(|| args.report.as_ref().map(|r| r.with_extension("json")));
    if let Some(path) = &json_path {
        let text = serde_json::to_string_pretty(&outcome).context("cannot serialize the results")?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("lanyard sim: results written to {}", path.display());
    }
    if let Some(path) = &args.report {
        std::fs::write(path, report::html(&outcome)?).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("lanyard sim: report written to {}", path.display());
    }
    print!("{}", report::summary(&outcome));
    let t = &outcome.accounting.totals;
    if t.lost > 0 || t.duplicated > 0 || t.duplicate_frames > 0 || t.acked_audio_lost > 0 {
        bail!(
            "{} utterance(s) lost, {} answered twice, {} audio frames received twice, {} acknowledged audio lost by \
             the server; the tables above say which and why",
            t.lost,
            t.duplicated,
            t.duplicate_frames,
            t.acked_audio_lost
        );
    }
    Ok(())
}

/// Everything a campaign produced: the JSON output and the report's input.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub scenario: Scenario,
    pub scenario_path: String,
    pub machine: Machine,
    pub started_ms: u64,
    pub wall_secs: f64,
    pub server_incarnations: u32,
    pub relay_launches: Vec<u32>,
    pub fault_counts: Vec<(String, usize)>,
    pub faults: Vec<FaultEvent>,
    pub accounting: ledger::Accounting,
}

/// A campaign's working directory, its TLS and its shared environment,
/// made before any process starts.
struct Prepared {
    /// Removed when the campaign ends, unless `--keep` named the directory.
    _tmp: tempfile::TempDir,
    work: PathBuf,
    server_dir: PathBuf,
    rng: rand::rngs::StdRng,
    /// Every child's events, as `env.events` sends them.
    rx: mpsc::UnboundedReceiver<(Source, Value)>,
    tls: Option<lanyard_server::dev_tls::DevTls>,
    recordings: Vec<(PathBuf, &'static str)>,
    env: CampaignEnv,
}

/// Checks the recordings, makes the working directory and the TLS, and
/// the environment every part of the campaign shares.
fn prepare(scenario: &Scenario, args: &CampaignArgs) -> Result<Prepared> {
    // Recordings of real speech, checked before anything starts.
    let real = scenario.corpus.real_speech_per_pendant;
    let recordings = if real > 0 { real_speech::recordings(&args.speech_dir)? } else { Vec::new() };
    let (_tmp, work) = work_dir(args.keep.as_deref())?;
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let server_dir = work.join("server");
    eprintln!(
        "lanyard sim: scenario {:?}, seed {}, working in {}",
        scenario.run.name,
        scenario.run.seed,
        work.display()
    );
    let rng = rand::rngs::StdRng::seed_from_u64(scenario.run.seed);
    let (tx, rx) = mpsc::unbounded_channel();
    // Over TLS by default, as a deployment runs: a throwaway CA that the
    // relays (and this runner's own client) trust.
    let tls = scenario.run.tls.then(|| lanyard_server::dev_tls::make(&work.join("tls"))).transpose()?;
    let ca: Vec<PathBuf> = tls.iter().map(|t| t.ca.clone()).collect();
    let env = CampaignEnv {
        exe: std::env::current_exe().context("cannot find the lanyard executable")?,
        logs,
        faults: Arc::default(),
        events: tx,
        scheme: if tls.is_some() { "https" } else { "http" },
        http: lanyard_relay::transport::Transport::new(&ca)?.http().clone(),
    };
    Ok(Prepared { _tmp, work, server_dir, rng, rx, tls, recordings, env })
}

async fn campaign(scenario: &Scenario, args: &CampaignArgs) -> Result<Outcome> {
    let started = Instant::now();
    let started_ms = now_ms();
    let Prepared { _tmp, work, server_dir, mut rng, mut rx, tls, recordings, env: shared } = prepare(scenario, args)?;

    let key = TestApnsKey::generate();
    let peer = apns_peer(&key, scenario.faults.apns_failure_rate, rng.r#gen()).await?;
    std::fs::create_dir_all(&server_dir).context("cannot create the server directory")?;
    let config = server_config(&work, &key, &peer)?;

    // Devices first: the store must exist before the server opens it.
    let n = scenario.run.pendants;
    let devices = register_devices(&server_dir, n).await?;
    let server = Server::start(&shared, server_args(args, scenario, &server_dir, &config, tls.as_ref())).await?;
    let server_addr = server.addr;
    let server_url = server.url(&shared);
    eprintln!("lanyard sim: server up at {server_url}, APNs peer at {}", peer.url());
    let server = Arc::new(tokio::sync::Mutex::new(server));

    // Pendants: each its own voice and rate, and its own part of the corpus
    // (see `pendant_speech`).
    let corpus = scenario.corpus.sentences();
    announce_corpus(scenario);
    let speech = pendants_speech(scenario, &corpus, &recordings, &work.join("speech")).await?;
    let Pendants { children: pendants, addrs: pendant_addrs, early, references } =
        launch_pendants(scenario, &shared, speech, &mut rng).await?;

    // Phones: a fault proxy and a relay under the lifecycle each.
    let stop_faults = Arc::new(tokio::sync::Notify::new());
    let (phones, proxies) = launch_phones(
        scenario,
        &shared,
        server_addr,
        &pendant_addrs,
        &devices,
        tls.as_ref(),
        &work,
        &mut rng,
        &stop_faults,
    )
    .await?;
    let server_faults =
        tokio::spawn(server_killer(server.clone(), scenario.clone(), shared.clone(), rng.r#gen(), stop_faults.clone()));

    let store = SqliteStore::open(&server_dir.join("lanyard.db")).await.context("cannot open the server's store")?;
    let log: Vec<Record> = early.into_iter().map(|(at_ms, source, event)| Record { at_ms, source, event }).collect();
    let (mut log, timed_out) = settle(&mut rx, &phones, &store, &shared, scenario, &stop_faults, started, log).await;
    let wall_secs = started.elapsed().as_secs_f64();
    server_faults.abort();
    let mut relay_launches = Vec::new();
    for ph in &phones {
        relay_launches.push(ph.stop().await);
    }
    // Stragglers the relays printed as they stopped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok((source, event)) = rx.try_recv() {
        log.push(Record { at_ms: now_ms(), source, event });
    }
    for mut pendant in pendants {
        let _ = pendant.kill().await;
    }
    write_events(&log, &work.join("events.jsonl"));

    // What the server holds, from its store and audio files.
    let mut server = server.lock().await;
    let (frames_duplicate, frames_received) = server.counters(&shared).await;
    let facts = server_facts(&store, &log, &devices, &server_dir).await?;
    let _ = server.child.process.kill().await;
    let incarnations = server.incarnations;
    drop(server);
    let pushes = pushes_seen(&peer);
    let faults = shared.faults.lock().expect("fault log").clone();
    let accounting = ledger::account(&ledger::Inputs {
        log: &log,
        references: &references,
        server: &facts,
        pushes: &pushes,
        faults: &faults,
        frames_duplicate,
        frames_received,
        timed_out,
    });
    let fault_counts = accounting.fault_counts.clone();
    drop(proxies);
    Ok(Outcome {
        scenario: scenario.clone(),
        scenario_path: args.scenario.to_string_lossy().into_owned(),
        machine: machine(),
        started_ms,
        wall_secs,
        server_incarnations: incarnations,
        relay_launches,
        fault_counts,
        faults,
        accounting,
    })
}

/// The event loop: records everything, routes pendant and relay events to
/// their phone and shows progress; once every pendant is done, stops the
/// faults and drains the phones, until every utterance is resolved (or the
/// settle time or the run's deadline passes: then `true`, timed out).
#[allow(clippy::too_many_arguments)]
async fn settle(
    rx: &mut mpsc::UnboundedReceiver<(Source, Value)>,
    phones: &[phone::Phone],
    store: &SqliteStore,
    shared: &CampaignEnv,
    scenario: &Scenario,
    stop_faults: &tokio::sync::Notify,
    started: Instant,
    mut log: Vec<Record>,
) -> (Vec<Record>, bool) {
    let n = scenario.run.pendants;
    let total = scenario.utterances();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} spoken  {msg}")
            .expect("progress template")
            .progress_chars("=> "),
    );
    let mut done = HashSet::new();
    let deadline = started + Duration::from_secs(scenario.run.timeout_secs);
    let mut status = tokio::time::interval(Duration::from_secs(2));
    let mut last_line = Instant::now();
    let mut draining_since: Option<Instant> = None;
    let mut resolved_since: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        tokio::select! {
            Some((source, event)) = rx.recv() => {
                match source {
                    Source::Pendant(i) => {
                        match event["event"].as_str() {
                            Some("utterance_end") => bar.inc(1),
                            Some("done") => { done.insert(i); }
                            _ => {}
                        }
                        phones[i].send(phone::Msg::Pendant(event.clone()));
                    }
                    Source::Relay(i) if event["event"] == "upload_task" => phones[i].send(phone::Msg::Relay(event.clone())),
                    _ => {}
                }
                log.push(Record { at_ms: now_ms(), source, event });
            }
            _ = status.tick() => {
                let ids = ledger::relay_ids(&log);
                let mut replied = 0;
                let mut resolved = 0;
                let discarded = ledger::discarded_ids(&log);
                for id in &ids {
                    let r = store.push_request(*id).await.ok().flatten().is_some_and(|p| p.status == lanyard_store::PushStatus::Sent);
                    replied += usize::from(r);
                    // A silent unmarked utterance is finished with no reply to wait for.
                    let silent = !r && store.utterance(*id).await.ok().flatten().is_some_and(|u| u.silent());
                    resolved += usize::from(r || silent || discarded.contains(id));
                }
                let msg = format!("{replied}/{} replied, {} faults applied", ids.len(), shared.fault_count());
                bar.set_message(msg.clone());
                if bar.is_hidden() && last_line.elapsed() > Duration::from_secs(20) {
                    eprintln!("lanyard sim: {:.0}s, {}/{total} spoken, {msg}", started.elapsed().as_secs_f64(), bar.position());
                    last_line = Instant::now();
                }
                if done.len() == n && draining_since.is_none() {
                    // Speech is over: faults stop, every app comes to the
                    // foreground, and what is in flight may settle.
                    draining_since = Some(Instant::now());
                    stop_faults.notify_waiters();
                    for ph in phones {
                        ph.send(phone::Msg::Drain);
                    }
                    eprintln!("lanyard sim: every pendant is done after {:.0}s; delivering the rest", started.elapsed().as_secs_f64());
                }
                let open = ledger::unended_ids(&log);
                if draining_since.is_some() && resolved == ids.len() && open.is_empty() {
                    // Give a late duplicate (a second push, say) time to show.
                    let since = *resolved_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(4) {
                        break;
                    }
                } else {
                    resolved_since = None;
                }
                let settle_over = draining_since.is_some_and(|d| d.elapsed() > Duration::from_secs(scenario.run.settle_secs));
                if settle_over || Instant::now() > deadline {
                    timed_out = true;
                    eprintln!("lanyard sim: stopped waiting: {resolved} of {} utterances resolved", ids.len());
                    break;
                }
            }
        }
    }
    bar.finish_and_clear();
    (log, timed_out)
}

/// One phone per pendant: a fault proxy in front of the server, a relay
/// (its own spool and device) behind it under the simulated iOS lifecycle,
/// and the proxy's network faults until `stop_faults`.
#[allow(clippy::too_many_arguments)]
async fn launch_phones(
    scenario: &Scenario,
    shared: &CampaignEnv,
    server_addr: SocketAddr,
    pendant_addrs: &[(Source, String)],
    devices: &[(Uuid, String)],
    tls: Option<&lanyard_server::dev_tls::DevTls>,
    work: &Path,
    rng: &mut rand::rngs::StdRng,
    stop_faults: &Arc<tokio::sync::Notify>,
) -> Result<(Vec<phone::Phone>, Vec<Arc<proxy::FaultProxy>>)> {
    let s = |x: &str| x.to_string();
    let p = |x: &Path| x.to_string_lossy().into_owned();
    let mut phones = Vec::new();
    let mut proxies = Vec::new();
    for (i, (_, addr)) in pendant_addrs.iter().enumerate() {
        let proxy = Arc::new(proxy::FaultProxy::start(server_addr).await.context("cannot start a fault proxy")?);
        proxies.push(proxy.clone());
        let spool = work.join(format!("spool-{i}"));
        let base = vec![
            s("relay"),
            s("--server"),
            format!("{}://{}", shared.scheme, proxy.addr),
            s("--token"),
            devices[i].1.clone(),
            s("--sim"),
            addr.clone(),
            s("--spool-dir"),
            p(&spool),
            s("--push-token"),
            format!("apns:{}", push_token(i)),
            s("--control-stdin"),
        ];
        let base: Vec<String> = base.into_iter().chain(tls.iter().flat_map(|t| [s("--ca-cert"), p(&t.ca)])).collect();
        let phone = phone::Phone::start(i, shared.clone(), base, scenario.clone(), proxy.clone(), rng.r#gen())
            .context("cannot start a relay")?;
        phones.push(phone);
        tokio::spawn(network_faults(i, proxy, scenario.clone(), shared.clone(), rng.r#gen(), stop_faults.clone()));
    }
    Ok((phones, proxies))
}

/// Every request the APNs peer saw, by the utterance of its collapse id.
fn pushes_seen(peer: &ApnsPeer) -> Vec<PushSeen> {
    peer.received()
        .iter()
        .map(|r| PushSeen {
            at_ms: r.received_system.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            utterance: r.header("apns-collapse-id").and_then(|c| Uuid::parse_str(c).ok()),
            device_token: r.device_token.clone(),
            status: r.answered_status,
        })
        .collect()
}

/// The raw events, for a look at what the books are made of (best effort:
/// the accounting does not depend on it).
fn write_events(log: &[Record], path: &Path) {
    let raw: String = log
        .iter()
        .map(|r| format!("{}\n", serde_json::json!({"read_ms": r.at_ms, "source": r.source, "event": r.event})))
        .collect();
    let _ = std::fs::write(path, raw);
}

/// The campaign's working directory: `keep` (emptied first) if given,
/// else a temporary one that lives as long as the returned guard.
fn work_dir(keep: Option<&Path>) -> Result<(tempfile::TempDir, PathBuf)> {
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let work = keep.map_or_else(|| tmp.path().to_owned(), Path::to_owned);
    if keep.is_some() && work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    Ok((tmp, work))
}

/// Registers one device per phone in the server's store (as `lanyard device
/// add` does); their ids and tokens, in phone order.
async fn register_devices(server_dir: &Path, n: usize) -> Result<Vec<(Uuid, String)>> {
    let cfg = lanyard_server::ServerConfig::new(([127, 0, 0, 1], 0).into(), server_dir.to_owned());
    let store = lanyard_server::open_store(&cfg).await?;
    let mut devices = Vec::new();
    for i in 0..n {
        let created = lanyard_server::devices::register(store.as_ref(), &format!("sim-phone-{i}")).await?;
        devices.push((created.id, created.token));
    }
    Ok(devices)
}

/// `lanyard serve`'s arguments for the campaign's server.
fn server_args(
    args: &CampaignArgs,
    scenario: &Scenario,
    server_dir: &Path,
    config: &Path,
    tls: Option<&lanyard_server::dev_tls::DevTls>,
) -> Vec<String> {
    let s = |x: &str| x.to_string();
    let p = |x: &Path| x.to_string_lossy().into_owned();
    let mut server_args = vec![s("serve"), s("--listen"), s("127.0.0.1:0"), s("--data-dir"), p(server_dir)];
    server_args.extend([
        s("--model-dir"),
        p(&lanyard_stt::model_dir(args.model_dir.clone())),
        s("--config"),
        p(config),
    ]);
    if scenario.run.stt_threads > 0 {
        server_args.extend([s("--stt-threads"), scenario.run.stt_threads.to_string()]);
    }
    if let Some(tls) = tls {
        server_args.extend([s("--tls-cert"), p(&tls.cert), s("--tls-key"), p(&tls.key)]);
    }
    server_args
}

/// Says what the pendants will speak besides the espeak-ng sentences.
fn announce_corpus(scenario: &Scenario) {
    let n = scenario.run.pendants;
    let real = scenario.corpus.real_speech_per_pendant;
    if real > 0 {
        eprintln!("lanyard sim: {} utterances of real speech, from {}", real * n, real_speech::PACKAGE);
    }
    let long = scenario.corpus.long_utterances_per_pendant;
    if long > 0 {
        let [lo, hi] = scenario.corpus.long_secs;
        eprintln!("lanyard sim: {} long utterances, {lo} to {hi} s each", long * n);
    }
}

/// The APNs look-alike. It fails `fail_rate` of requests, for real (500,
/// 503 or 429, drawn with `seed`): the server sees the error status and
/// must retry.
async fn apns_peer(key: &TestApnsKey, fail_rate: f64, seed: u64) -> Result<ApnsPeer> {
    let peer_rng = Mutex::new(rand::rngs::StdRng::seed_from_u64(seed));
    ApnsPeer::start(ApnsPeerConfig::new(key, APNS_TOPIC).with_script(move |_| {
        let mut r = peer_rng.lock().expect("peer rng");
        if fail_rate > 0.0 && r.r#gen::<f64>() < fail_rate {
            match r.gen_range(0..3) {
                0 => PeerReply::error(500, "InternalServerError"),
                1 => PeerReply::error(503, "ServiceUnavailable"),
                _ => PeerReply::error(429, "TooManyRequests"),
            }
        } else {
            PeerReply::ok()
        }
    }))
    .await
    .context("cannot start the local APNs peer")
}

/// The pendant simulators, once each listens.
struct Pendants {
    children: Vec<Child>,
    /// Each pendant's address, in pendant order.
    addrs: Vec<(Source, String)>,
    /// Events they printed before listening, with when they were read.
    early: Vec<(u64, Source, Value)>,
    /// Each pendant's reference sentences, in speaking order.
    references: Vec<Vec<String>>,
}

/// Starts one pendant simulator per phone, each with its voice, its part of
/// the corpus (`speech`, from [`pendants_speech`]) and its BLE faults, and
/// waits until every one listens (synthesis happens before). From then on
/// their events flow into `shared`'s event stream.
async fn launch_pendants(
    scenario: &Scenario,
    shared: &CampaignEnv,
    mut speech: Vec<(Vec<String>, Vec<String>)>,
    rng: &mut rand::rngs::StdRng,
) -> Result<Pendants> {
    let s = |x: &str| x.to_string();
    let n = scenario.run.pendants;
    let mut pendant_addrs = Vec::new();
    let mut pendants = Vec::new();
    let (pendant_ready_tx, mut pendant_ready_rx) = mpsc::unbounded_channel::<(Source, Value)>();
    let mut references: Vec<Vec<String>> = Vec::new();
    for (i, speech) in speech.iter_mut().enumerate().take(n) {
        let voice = voice_of(scenario, i);
        let mut a =
            vec![s("pendant-sim"), s("--listen"), s("127.0.0.1:0"), s("--wait-for-central"), s("--hold-until-central")];
        a.extend([s("--linger-secs"), s("100000"), s("--gap-ms"), scenario.run.gap_ms.to_string()]);
        a.extend([
            s("--mtu"),
            scenario.run.mtu.to_string(),
            s("--voice"),
            voice.name,
            s("--rate"),
            voice.rate.to_string(),
        ]);
        a.extend([s("--drop-rate"), scenario.faults.ble_drop_rate.to_string()]);
        a.extend([s("--reorder-rate"), scenario.faults.ble_reorder_rate.to_string()]);
        a.extend([s("--fault-seed"), rng.r#gen::<u64>().to_string()]);
        let (say, refs) = std::mem::take(speech);
        a.extend(say);
        references.push(refs);
        let own = CampaignEnv { events: pendant_ready_tx.clone(), ..shared.clone() };
        pendants.push(own.spawn(Source::Pendant(i), &format!("pendant-{i}"), &a, false)?);
    }
    // Synthesis of every sentence happens before a pendant listens.
    let mut early = Vec::new();
    while pendant_addrs.len() < n {
        let (src, v) = tokio::time::timeout(Duration::from_secs(300), pendant_ready_rx.recv())
            .await
            .context("the pendant simulators did not start within 300 s (espeak-ng and sox installed?)")?
            .context("pendant simulators ended before listening")?;
        if v["event"] == "listening" {
            pendant_addrs.push((src, v["addr"].as_str().unwrap_or_default().to_string()));
        } else {
            early.push((now_ms(), src, v));
        }
    }
    pendant_addrs.sort_by_key(|(src, _)| match src {
        Source::Pendant(i) => *i,
        _ => usize::MAX,
    });
    // From here on pendant events flow into the one event stream.
    {
        let tx = shared.events.clone();
        tokio::spawn(async move {
            while let Some(ev) = pendant_ready_rx.recv().await {
                if tx.send(ev).is_err() {
                    return;
                }
            }
        });
    }
    drop(pendant_ready_tx);
    Ok(Pendants { children: pendants, addrs: pendant_addrs, early, references })
}

/// What the server holds for each relay utterance in `log`, from its store
/// and its audio files.
async fn server_facts(
    store: &SqliteStore,
    log: &[Record],
    devices: &[(Uuid, String)],
    server_dir: &Path,
) -> Result<HashMap<Uuid, ServerFacts>> {
    let mut facts: HashMap<Uuid, ServerFacts> = HashMap::new();
    let owner = ledger::relay_owner(log);
    for id in ledger::relay_ids(log) {
        let row = store.utterance(id).await.context("cannot read the server's store")?;
        let device = owner.get(&id).map(|&i| devices[i].0);
        let audio = device.map(|d| server_dir.join("audio").join(d.to_string()).join(format!("{id}.frames")));
        facts.insert(
            id,
            ServerFacts {
                state: row.as_ref().map(|u| format!("{:?}", u.state).to_lowercase()),
                frames: row.as_ref().map(|u| u.frames),
                transcript: row.as_ref().and_then(|u| u.transcript.clone()),
                silent: row.as_ref().is_some_and(|u| u.silent()),
                reply_body: row.as_ref().and_then(|u| u.reply_body.clone()),
                error: row.as_ref().and_then(|u| u.error.clone()),
                timings: row.as_ref().map(|u| u.timings.clone()).unwrap_or_default(),
                transcript_writes: store.transcript_writes(id).await.unwrap_or(0),
                audio_records: audio.and_then(|p| count_audio_records(&p)),
                push_status: store
                    .push_request(id)
                    .await
                    .ok()
                    .flatten()
                    .map(|p| format!("{:?}", p.status).to_lowercase()),
            },
        );
    }
    Ok(facts)
}

/// The espeak-ng voice and rate of pendant `i`: voices in turn, and rates
/// in turn after voices.
fn voice_of(scenario: &Scenario, i: usize) -> Voice {
    let c = &scenario.corpus;
    Voice { name: c.voices[i % c.voices.len()].clone(), rate: c.rates[(i / c.voices.len() + i) % c.rates.len()] }
}

/// What every pendant says (see [`pendant_speech`]), synthesized on every
/// core at once into `dir`.
async fn pendants_speech(
    scenario: &Scenario,
    corpus: &[String],
    recordings: &[(PathBuf, &'static str)],
    dir: &Path,
) -> Result<Vec<(Vec<String>, Vec<String>)>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let jobs: Vec<_> = (0..scenario.run.pendants)
        .map(|i| {
            let (scenario, corpus, recordings, dir) =
                (scenario.clone(), corpus.to_vec(), recordings.to_vec(), dir.to_owned());
            tokio::task::spawn_blocking(move || pendant_speech(&scenario, i, &corpus, &recordings, &dir))
        })
        .collect();
    let mut all = Vec::new();
    for job in jobs {
        all.push(job.await.context("speech synthesis panicked")??);
    }
    Ok(all)
}

/// What pendant `i` says, as `pendant-sim` arguments, and the reference text
/// of each utterance in speaking order.
///
/// The corpus sentences, round-robin from an offset so the pendants do not
/// speak in unison; the pendant's long utterances ([`long_speech`]) among
/// them, at its turns; the recordings of real people last. The simulator
/// speaks its `--say` sentences before its `--say-wav` files, so a sentence
/// that follows a long utterance is synthesized here, by the same function
/// in the same voice, into a file of its own in `dir`.
fn pendant_speech(
    scenario: &Scenario,
    i: usize,
    corpus: &[String],
    recordings: &[(PathBuf, &str)],
    dir: &Path,
) -> Result<(Vec<String>, Vec<String>)> {
    let c = &scenario.corpus;
    let (real, long) = (c.real_speech_per_pendant, c.long_utterances_per_pendant);
    let slots = scenario.run.utterances_per_pendant - real;
    let turns = long_speech::positions(i, scenario.run.pendants, long, slots);
    let voice = voice_of(scenario, i);
    // Its own generator: scenarios without long utterances draw their
    // faults exactly as before.
    let mut rng = rand::rngs::StdRng::seed_from_u64(scenario.run.seed ^ (0x1_0000_0000 + i as u64));
    let (mut args, mut refs) = (Vec::new(), Vec::new());
    let mut said = 0;
    for slot in 0..slots {
        let file = dir.join(format!("pendant-{i}-{slot}.raw"));
        if let Some(k) = turns.iter().position(|&t| t == slot) {
            let passage = long_speech::speak(i * long + k, &voice, c.long_secs, &mut rng)?;
            long_speech::write_raw(&file, &passage.pcm)?;
            args.extend(["--say-wav".into(), format!("{}={}", file.display(), passage.text)]);
            refs.push(passage.text);
            continue;
        }
        let sentence = &corpus[(said + i * 5) % corpus.len()];
        said += 1;
        if turns.first().is_some_and(|&first| slot > first) {
            let pcm = lanyard_pendant::speech::synthesize(sentence, &voice)
                .with_context(|| format!("cannot synthesize {sentence:?}"))?;
            long_speech::write_raw(&file, &pcm)?;
            args.extend(["--say-wav".into(), format!("{}={sentence}", file.display())]);
        } else {
            args.extend(["--say".into(), sentence.clone()]);
        }
        refs.push(sentence.clone());
    }
    for k in 0..real {
        let (path, transcript) = &recordings[(i * real + k) % recordings.len()];
        refs.push(transcript.to_string());
        args.extend(["--say-wav".into(), format!("{}={transcript}", path.display())]);
    }
    Ok((args, refs))
}

/// Counts whole, checksummed records in a server audio file, read as the
/// server reads it (`lanyard_server::audio::read_records`, the frame-length
/// guard included): the frames the server really holds on disk.
fn count_audio_records(path: &Path) -> Option<u32> {
    let bytes = std::fs::read(path).ok()?;
    u32::try_from(lanyard_server::audio::read_records(&bytes).0.len()).ok()
}

/// Applies one phone's network faults until told to stop.
async fn network_faults(
    i: usize,
    proxy: Arc<proxy::FaultProxy>,
    scenario: Scenario,
    shared: CampaignEnv,
    seed: u64,
    stop: Arc<tokio::sync::Notify>,
) {
    let f = &scenario.faults;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let target = format!("phone-{i} network");
    // Next due time of each kind, as offsets from now.
    let kinds = [f.network_cuts_per_min, f.delays_per_min, f.black_holes_per_min, f.network_switches_per_min];
    let start = tokio::time::Instant::now();
    let mut due: Vec<Option<tokio::time::Instant>> =
        kinds.iter().map(|&r| poisson_wait(&mut rng, r).map(|w| start + w)).collect();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let Some((k, at)) = due.iter().enumerate().filter_map(|(k, d)| d.map(|d| (k, d))).min_by_key(|(_, d)| *d)
        else {
            return;
        };
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep_until(at) => {}
        }
        let began = now_ms();
        match k {
            0 => {
                if proxy.cut_one(rng.r#gen()) {
                    shared.fault("network_cut", &target, "one live connection reset".into());
                }
            }
            1 => {
                let delay = Duration::from_millis(f.delay_ms);
                let chunks = proxy.delay_for(delay, Duration::from_millis(f.delay_for_ms)).await;
                if chunks > 0 {
                    shared.fault_at(
                        began,
                        "network_delay",
                        &target,
                        format!("{chunks} chunks delayed {} ms", f.delay_ms),
                    );
                }
            }
            2 => {
                let (held, reset) = proxy.black_hole_for(Duration::from_millis(f.black_hole_for_ms)).await;
                if held > 0 || reset > 0 {
                    shared.fault_at(
                        began,
                        "black_hole",
                        &target,
                        format!("{} ms: {held} chunks swallowed, {reset} connections reset", f.black_hole_for_ms),
                    );
                }
            }
            _ => {
                let (reset, refused) = proxy.switch_network(Duration::from_millis(f.switch_outage_ms)).await;
                if reset > 0 || refused > 0 {
                    shared.fault_at(
                        began,
                        "network_switch",
                        &target,
                        format!(
                            "{reset} connections reset, {refused} refused during a {} ms outage",
                            f.switch_outage_ms
                        ),
                    );
                }
            }
        }
        due[k] = poisson_wait(&mut rng, kinds[k]).map(|w| tokio::time::Instant::now() + w);
    }
}

/// SIGKILLs and restarts the server at the scenario's rate until told to stop.
async fn server_killer(
    server: Arc<tokio::sync::Mutex<Server>>,
    scenario: Scenario,
    shared: CampaignEnv,
    seed: u64,
    stop: Arc<tokio::sync::Notify>,
) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let stopped = stop.notified();
    tokio::pin!(stopped);
    while let Some(wait) = poisson_wait(&mut rng, scenario.faults.server_kills_per_min) {
        tokio::select! {
            _ = &mut stopped => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        let mut s = server.lock().await;
        if let Err(e) = s.kill_and_restart(&shared).await {
            eprintln!("lanyard sim: {e:#}");
            return Err(e);
        }
    }
    Ok(())
}
