//! `lanyard bench ingest`: how many live streams one server carries. The
//! `lanyard` binary calls [`run`] (feature `bench`).
//!
//! The load generator is this process; the server is another one, either
//! started here (`lanyard serve` from this same executable, on a temporary
//! data directory, with an admin token) or given with `--server`. Each
//! simulated relay is one device (created through the admin API, so the
//! per-device limits apply to each stream alone, as they would in the field)
//! with one WebSocket connection to `/v1/stream` carrying one utterance.
//!
//! Every stream makes one frame (80 bytes by default: Opus at 32 kb/s, 20 ms,
//! of quiet noise that the server's voice activity detector does not take
//! for speech; see `opus_frames`)
//! every 20 ms and sends the frames it has every `--batch-ms` (200 by
//! default, as the relay does: `HostConfig::send_interval`), each frame its
//! own binary WebSocket message and the batch one socket write; `--batch-ms
//! 20` sends each frame as it is made. Each stream starts at a phase drawn at
//! random so the streams do not fire in lockstep, and never ends its
//! utterance: the server ingests and acks, and speech-to-text is never run
//! ("STT queued, not run").
//!
//! # What is measured
//!
//! Phases: devices are created, streams connect at `--ramp` connections a
//! second, run `--warmup-secs` more, and then a window of `--secs` is
//! measured. The streams keep sending for a drain of 2 s after the window so
//! the acks of its last frames arrive under the same load.
//!
//! - **Ack latency** of a frame: from just before the frame is written to its
//!   socket (with its batch) to the arrival of the first ACK that covers it (`next > seq`;
//!   ACKs are cumulative, so one ACK can end several frames' latency). The
//!   server acks only after `fdatasync`, so this is also the frame's **time
//!   to safe** as the relay sees it: "last frame sent -> its ack" is this
//!   latency for the last frame of an utterance, and every frame of the
//!   window is treated as a possible last one. `--streams 100` gives the
//!   time-to-safe figure.
//!   Percentiles cover every frame sent in the window; a frame still unacked
//!   when the drain ends counts as infinitely late (so more than 1% unacked
//!   makes p99 "unacked").
//! - **Send lag**: how late the generator wrote each frame against its
//!   batch's schedule (every `--batch-ms`). If it grows, the generator (which
//!   shares the CPU with the server) is falling behind, and the latencies
//!   understate the load.
//! - **Server RSS**: `VmRSS` at the end of the window, the largest `VmRSS`
//!   sampled during it, and `VmHWM` (the peak over the server's life, model
//!   load included), from `/proc/<pid>/status`.
//! - **Server CPU**: `utime + stime` from `/proc/<pid>/stat` over the window,
//!   divided by its wall time: cores used. **Streams per core** is streams
//!   connected divided by that.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use lanyard_audio::FrameEncoder;
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{self, Audio, Binary, ClientMsg, DeviceCreated, NewDevice, ServerMsg};
use lanyard_testkit::Lanyard;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Ingest capacity: N live Opus streams (one device each) at 50 frames/s,
    /// with ack latency, server RSS, server CPU and streams per core.
    Ingest(IngestArgs),
}

#[derive(Args)]
#[command(after_long_help = "Without --server, a server is started from this executable (`lanyard serve`) \
on 127.0.0.1 with a temporary data directory and admin token, and stopped at the end. With --server, pass \
--admin-token (the devices are created through the admin API and left there: each run adds --streams \
devices, and their utterances stay unfinished) and \
--server-pid for RSS and CPU figures (the server must run on this machine).\n\n\
Each stream makes a frame every 20 ms and sends what it has every --batch-ms (200, as the relay does) in \
one socket write; --batch-ms 20 sends every frame alone.\n\n\
Ack latency is measured per frame: from just before the frame is written to the socket (with its batch) to \
the first ACK that covers it. The server acks only once the frame is durable (synced), so this is the time \
to safe of that frame; `--streams 100` is the time-to-safe measurement.\n\n\
Examples:\n  lanyard bench ingest --streams 2000 --secs 30 --json ingest-2000.json\n  \
lanyard bench ingest --streams 100\n  \
lanyard bench ingest --streams 500 --batch-ms 20\n  \
lanyard bench ingest --server http://127.0.0.1:8080 --admin-token $LANYARD_ADMIN_TOKEN --server-pid $(pidof lanyard)")]
pub struct IngestArgs {
    /// Simultaneous streams (one device, one connection, one utterance each).
    #[arg(long, default_value_t = 2000)]
    streams: usize,
    /// Length of the measurement window, in seconds.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Seconds of full load after the ramp, before the window opens.
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
    /// New connections a second while ramping up.
    #[arg(long, default_value_t = 200.0)]
    ramp: f64,
    /// Bytes per codec frame: 80 is Opus at 32 kb/s in 20 ms frames (quiet
    /// noise, encoded at constant bit rate and padded to this size).
    #[arg(long, default_value_t = 80)]
    frame_bytes: usize,
    /// Each stream sends the frames made since its last send every this many
    /// milliseconds, in one socket write (a multiple of 20; 200 is the
    /// relay's send interval, 20 sends every frame alone).
    #[arg(long, default_value_t = 200)]
    batch_ms: u64,
    /// A running server's base URL (http://HOST:PORT); by default one is started.
    #[arg(long)]
    server: Option<String>,
    /// The pid of the --server process, for its RSS and CPU.
    #[arg(long, requires = "server")]
    server_pid: Option<u32>,
    /// The admin token of the --server (to create the benchmark's devices).
    #[arg(long, env = "LANYARD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<lanyard_proto::Secret>,
    /// Speech model for the started server [default: the server's own:
    /// $LANYARD_MODEL_DIR, else the installed model].
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Where the started server's temporary data directory goes (its disk is
    /// what fdatasync waits for) [default: the system temporary directory].
    #[arg(long)]
    data_parent: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Ingest(args) => ingest(args).await,
    }
}

/// Frame interval: 20 ms of audio.
const FRAME: Duration = Duration::from_millis(20);
/// How long the streams keep going after the window, for its last acks.
const DRAIN: Duration = Duration::from_secs(2);

/// The targets of the ingest capacity issue.
const TARGET_STREAMS: usize = 2000;
const TARGET_ACK_P99_MS: f64 = 100.0;
const TARGET_RSS_BYTES: u64 = 1 << 30;
const TARGET_TTS_STREAMS: usize = 100;
const TARGET_TTS_P99_MS: f64 = 50.0;

/// Counters every stream updates; the progress bar reads them.
#[derive(Default)]
struct Tally {
    connected: AtomicU64,
    failed: AtomicU64,
    /// Streams that ended before the benchmark stopped them.
    dropped: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    /// The window, as nanoseconds since `base`; `u64::MAX` while unset.
    window_start: AtomicU64,
    window_end: AtomicU64,
}

impl Tally {
    fn new() -> Self {
        let s = Self::default();
        s.window_start.store(u64::MAX, Ordering::Relaxed);
        s.window_end.store(u64::MAX, Ordering::Relaxed);
        s
    }

    fn in_window(&self, base: Instant, t: Instant) -> bool {
        let ns = t.saturating_duration_since(base).as_nanos() as u64;
        ns >= self.window_start.load(Ordering::Relaxed) && ns < self.window_end.load(Ordering::Relaxed)
    }
}

/// What one stream measured in the window.
#[derive(Default)]
struct StreamResult {
    /// Ack latency of each acked window frame, in microseconds.
    latency_us: Vec<u32>,
    /// Send lag of each window frame, in microseconds.
    lag_us: Vec<u32>,
    window_sent: u64,
    window_unacked: u64,
    /// Why it failed or ended early, if it did.
    error: Option<String>,
}

async fn ingest(args: IngestArgs) -> Result<()> {
    if args.streams == 0 || args.secs == 0 || args.ramp <= 0.0 {
        bail!("--streams, --secs and --ramp must be positive");
    }
    if args.batch_ms == 0 || !args.batch_ms.is_multiple_of(FRAME.as_millis() as u64) || args.batch_ms > 10_000 {
        bail!("--batch-ms must be a multiple of 20, up to 10000");
    }
    if args.frame_bytes == 0 || args.frame_bytes > wire::limits::MAX_FRAME_BYTES {
        bail!("--frame-bytes must be 1 to {}", wire::limits::MAX_FRAME_BYTES);
    }
    let total_frames = (args.streams as f64 / args.ramp + args.warmup_secs as f64 + args.secs as f64 + 10.0) * 50.0;
    if total_frames > wire::limits::MAX_UTTERANCE_FRAMES as f64 {
        bail!(
            "a stream would pass the server's 30000 frames (10 minutes) per utterance; shorten --secs or --warmup-secs"
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The bench holds one socket per stream; a started server holds one
    // socket and one audio file per stream, and inherits this limit.
    let nofile = raise_nofile((2 * args.streams + 512) as u64);

    let mut server = match &args.server {
        Some(url) => {
            let admin = args.admin_token.clone().context(
                "with --server, pass --admin-token (or LANYARD_ADMIN_TOKEN): devices are made through the admin API",
            )?;
            Server {
                url: url.trim_end_matches('/').to_string(),
                pid: args.server_pid,
                admin,
                child: None,
                log: None,
                fs: None,
                _dir: None,
            }
        }
        None => start_server(&args).await?,
    };
    if server.pid.is_none() {
        eprintln!("note: no --server-pid, so server RSS and CPU are not measured");
    }
    let result = drive(&args, &server, cores, &nofile).await;
    server.stop().await;
    let report = result?;
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).expect("report serializes") + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

/// The limit on open files, as found and as raised.
struct NoFile {
    before: u64,
    after: u64,
    wanted: u64,
}

/// Raises the soft RLIMIT_NOFILE towards `wanted` (to the hard limit, and
/// past it when allowed). Child processes inherit the result.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
fn raise_nofile(wanted: u64) -> NoFile {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        eprintln!("warning: cannot read the open-file limit: {}", std::io::Error::last_os_error());
        return NoFile { before: 0, after: 0, wanted };
    }
    let before = lim.rlim_cur as u64;
    if before < wanted {
        let mut new = lim;
        new.rlim_cur = (wanted as libc::rlim_t).max(lim.rlim_cur);
        new.rlim_max = lim.rlim_max.max(new.rlim_cur);
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            // Raising the hard limit needs privilege; go as far as it allows.
            new.rlim_cur = lim.rlim_max;
            new.rlim_max = lim.rlim_max;
            // SAFETY: as above.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) };
        }
    }
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let after = lim.rlim_cur as u64;
    if after < wanted {
        eprintln!(
            "warning: the open-file limit is {after} (hard limit {}), below the {wanted} this run needs; \
             connections will fail with \"too many open files\". Raise it (`ulimit -n {wanted}` as root, or \
             LimitNOFILE= / /etc/security/limits.conf) or run fewer streams.",
            lim.rlim_max
        );
    } else if after > before {
        eprintln!("open-file limit raised from {before} to {after}");
    }
    NoFile { before, after, wanted }
}

struct Server {
    url: String,
    pid: Option<u32>,
    admin: lanyard_proto::Secret,
    child: Option<lanyard_testkit::Child<lanyard_server::ServeEvent>>,
    log: Option<PathBuf>,
    /// The filesystem of the data directory, when we chose it.
    fs: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Stops a server we started: SIGINT (its clean shutdown), then SIGKILL.
    async fn stop(&mut self) {
        let Some(child) = self.child.as_mut().map(|c| &mut c.process) else { return };
        if let Some(pid) = child.id() {
            // SAFETY: sends a signal to our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

async fn start_server(args: &IngestArgs) -> Result<Server> {
    let lanyard = Lanyard::current_exe().context("cannot find this executable to start `lanyard serve`")?;
    let dir = match &args.data_parent {
        Some(p) => tempfile::Builder::new().prefix("lanyard-bench-").tempdir_in(p),
        None => tempfile::Builder::new().prefix("lanyard-bench-").tempdir(),
    }
    .context("cannot make a temporary data directory")?;
    let admin = lanyard_proto::Secret::new(lanyard_server::auth::mint_token());
    let log = dir.path().join("server.log");
    let mut cmd = lanyard.serve_command(&dir.path().join("server"));
    if let Some(m) = &args.model_dir {
        cmd.arg("--model-dir").arg(m);
    }
    cmd.env("LANYARD_ADMIN_TOKEN", admin.expose())
        .env_remove("LANYARD_CONFIG")
        .env("LANYARD_LOG", std::env::var("LANYARD_LOG").unwrap_or_else(|_| "warn".into()))
        .stderr(std::fs::File::create(&log).context("cannot create the server log")?);
    // The testkit's reader keeps draining stdout, so the server never blocks
    // on a full pipe.
    let server = match lanyard_testkit::start_server(cmd, Duration::from_secs(120)).await {
        Ok(server) => server,
        Err(e) => {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            bail!("{e}. Its log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    };
    let fs = filesystem(dir.path());
    Ok(Server {
        url: server.url.clone(),
        pid: server.child.process.id(),
        admin,
        child: Some(server.child),
        log: Some(log),
        fs: Some(fs),
        _dir: Some(dir),
    })
}

/// The filesystem type of `path`, by statfs magic.
fn filesystem(path: &Path) -> String {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return "unknown".into() };
    // SAFETY: statfs fills a zeroed struct we own from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as i64 {
        0x0102_1994 => "tmpfs (fdatasync is nearly free: not a disk figure)".into(),
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        other => format!("fs magic {other:#x}"),
    }
}

/// /proc/<pid>/stat: utime + stime in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    cpu_split(pid).map(|(u, s)| u + s)
}

/// /proc/<pid>/stat: (utime, stime) in seconds.
fn cpu_split(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is f[0], so field n is f[n - 3]: utime 14, stime 15.
    let (user, sys): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((user as f64 / hz, sys as f64 / hz))
}

/// /proc/<pid>/status: a `kB` field, in bytes.
fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].trim_start_matches(':').split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    pb
}

/// Creates `n` devices through the server's admin API, 16 at a time, as an
/// operator's provisioning would.
async fn create_devices(http: &reqwest::Client, server: &Server, n: usize) -> Result<Vec<DeviceCreated>> {
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let pb = bar(n as u64, "devices  [{bar:40}] {pos}/{len} {elapsed}");
    if pb.is_hidden() {
        eprintln!("creating {n} devices on {}", server.url);
    }
    let devices: Vec<Result<DeviceCreated>> = futures::stream::iter(0..n)
        .map(|i| {
            let (http, url, admin, pb) = (http.clone(), server.url.clone(), server.admin.clone(), pb.clone());
            let name = format!("bench-{}-{i}", &run_id[run_id.len() - 12..]);
            async move {
                let resp = http
                    .post(format!("{url}/v1/admin/devices"))
                    .bearer_auth(admin.expose())
                    .json(&NewDevice { name })
                    .send()
                    .await
                    .context("cannot reach the server")?;
                let status = resp.status();
                if !status.is_success() {
                    bail!("creating a device: HTTP {status}: {}", resp.text().await.unwrap_or_default());
                }
                pb.inc(1);
                resp.json::<DeviceCreated>().await.context("bad device answer")
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    pb.finish_and_clear();
    devices.into_iter().collect()
}

/// What the warm-up and the measured window gave: the snapshots at the
/// window's two ends, and the server's memory and threads.
struct Window {
    start: Snapshot,
    end: Snapshot,
    rss_max: u64,
    rss_end: Option<u64>,
    hwm: Option<u64>,
    threads: Option<u64>,
}

/// Runs the warm-up and the window (`pb` shows them), sampling the
/// server's RSS through the window.
async fn measure(args: &IngestArgs, pid: Option<u32>, shared: &Tally, base: Instant, pb: &ProgressBar) -> Window {
    let total = args.warmup_secs + args.secs;
    let phase_start = Instant::now();
    let (mut last_sent, mut last_acked, mut last_t) =
        (shared.sent.load(Ordering::Relaxed), shared.acked.load(Ordering::Relaxed), Instant::now());
    let mut window: Option<Snapshot> = None;
    let mut rss_max = 0u64;
    let window_end;
    loop {
        let now = Instant::now();
        let since = now - phase_start;
        if window.is_none() && since >= Duration::from_secs(args.warmup_secs) {
            shared.window_start.store((now - base).as_nanos() as u64, Ordering::Relaxed);
            window =
                Some((now, pid.and_then(cpu_split), cpu_secs(std::process::id()).unwrap_or(0.0), machine_busy_secs()));
            pb.set_prefix("measure");
        }
        if since >= Duration::from_secs(total) {
            shared.window_end.store((now - base).as_nanos() as u64, Ordering::Relaxed);
            window_end =
                (now, pid.and_then(cpu_split), cpu_secs(std::process::id()).unwrap_or(0.0), machine_busy_secs());
            break;
        }
        if window.is_some() {
            rss_max = rss_max.max(pid.and_then(|p| status_bytes(p, "VmRSS")).unwrap_or(0));
        }
        let (sent, acked) = (shared.sent.load(Ordering::Relaxed), shared.acked.load(Ordering::Relaxed));
        let dt = now.duration_since(last_t).as_secs_f64().max(1e-3);
        let msg = format!(
            "streams {} | sent {:.0}/s acked {:.0}/s | dropped {}",
            shared.connected.load(Ordering::Relaxed) - shared.dropped.load(Ordering::Relaxed),
            (sent - last_sent) as f64 / dt,
            (acked - last_acked) as f64 / dt,
            shared.dropped.load(Ordering::Relaxed),
        );
        if pb.is_hidden() && since.as_secs().is_multiple_of(5) && since.subsec_millis() < 500 {
            eprintln!("{:>3}s {msg}", since.as_secs());
        }
        pb.set_message(msg);
        pb.set_position(since.as_secs());
        (last_sent, last_acked, last_t) = (sent, acked, now);
        tokio::time::sleep(Duration::from_millis(500).min(Duration::from_secs(total).saturating_sub(since))).await;
    }
    let rss_end = pid.and_then(|p| status_bytes(p, "VmRSS"));
    let hwm = pid.and_then(|p| status_bytes(p, "VmHWM"));
    let threads = pid.and_then(|p| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("Threads:").and_then(|v| v.trim().parse::<u64>().ok()))
    });
    Window { start: window.expect("the window opened"), end: window_end, rss_max, rss_end, hwm, threads }
}

/// Creates the devices, ramps the streams up, measures, and winds down.
async fn drive(args: &IngestArgs, server: &Server, cores: usize, nofile: &NoFile) -> Result<serde_json::Value> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().context("http client")?;

    // 1. One device per stream, through the admin API.
    let t = Instant::now();
    let devices = create_devices(&http, server, args.streams).await?;
    let devices_secs = t.elapsed().as_secs_f64();

    // 2. The streams, started at the ramp rate.
    let streams = connect_streams(args, server, &devices).await?;

    // 3. Warm-up and the window.
    let total = args.warmup_secs + args.secs;
    let pb = bar(total, "{prefix:8} [{bar:40}] {pos}/{len}s {msg}");
    pb.set_prefix("warm-up");
    if pb.is_hidden() {
        eprintln!(
            "{} streams up; {}s warm-up, then {}s measured",
            streams.connected_at_ramp, args.warmup_secs, args.secs
        );
    }
    let window = measure(args, server.pid, &streams.shared, streams.base, &pb).await;
    pb.set_prefix("drain");
    tokio::time::sleep(DRAIN).await;
    pb.finish_and_clear();
    let _ = streams.stop.send(true);

    // 4. Gather and judge.
    let results = gather(streams.tasks).await;
    let setup = Setup { cores, nofile, devices_secs, ramp_secs: streams.ramp_secs };
    Ok(report(args, server, &setup, &streams.shared, &window, results))
}

/// The streams of a run, connected (or failed) at the ramp rate.
struct Running {
    tasks: Vec<tokio::task::JoinHandle<StreamResult>>,
    shared: Arc<Tally>,
    /// Tells every stream to stop.
    stop: tokio::sync::watch::Sender<bool>,
    /// The time every stream's schedule counts from.
    base: Instant,
    ramp_secs: f64,
    connected_at_ramp: u64,
}

/// Starts one stream per device at `args.ramp` a second and waits (up to
/// 30 s) for each to connect or fail. Fails if none connected.
async fn connect_streams(args: &IngestArgs, server: &Server, devices: &[DeviceCreated]) -> Result<Running> {
    let n = args.streams;
    let ws_url = format!("{}{}", server.url.replacen("http", "ws", 1), wire::STREAM_PATH);
    let shared = Arc::new(Tally::new());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let base = Instant::now();
    let pb = bar(n as u64, "connect  [{bar:40}] {pos}/{len} {msg} {elapsed}");
    if pb.is_hidden() {
        eprintln!("connecting {n} streams at {}/s", args.ramp);
    }
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
    let frames = Arc::new(opus_frames(args.frame_bytes, &mut seed)?);
    let mut tasks = Vec::with_capacity(n);
    let ramp_start = Instant::now();
    for (i, dev) in devices.iter().enumerate() {
        tokio::time::sleep_until((ramp_start + Duration::from_secs_f64(i as f64 / args.ramp)).into()).await;
        let phase = Duration::from_nanos(splitmix(&mut seed) % FRAME.as_nanos() as u64);
        let frame = (frames.clone(), (splitmix(&mut seed) % frames.len() as u64) as usize);
        let batch = Duration::from_millis(args.batch_ms);
        tasks.push(tokio::spawn(stream(
            ws_url.clone(),
            dev.token.clone(),
            frame,
            phase,
            batch,
            base,
            shared.clone(),
            stopped.clone(),
        )));
        if i % 16 == 0 {
            update_connect(&pb, &shared);
        }
    }
    // Wait for every stream to connect or fail.
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < n as u64
        && Instant::now() < deadline
    {
        update_connect(&pb, &shared);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    update_connect(&pb, &shared);
    pb.finish_and_clear();
    let ramp_secs = ramp_start.elapsed().as_secs_f64();
    let connected_at_ramp = shared.connected.load(Ordering::Relaxed);
    if connected_at_ramp == 0 {
        let _ = stop.send(true);
        let mut errors = Vec::new();
        for t in tasks {
            if let Ok(StreamResult { error: Some(e), .. }) = t.await {
                errors.push(e);
            }
        }
        bail!("no stream connected; first error: {}", errors.first().map_or("none", String::as_str));
    }
    Ok(Running { tasks, shared, stop, base, ramp_secs, connected_at_ramp })
}

/// What the streams measured, put together.
struct Results {
    /// Ack latencies and send lags of the window's frames, sorted, in µs.
    lat: Vec<u32>,
    lag: Vec<u32>,
    w_sent: u64,
    w_unacked: u64,
    /// Why streams failed, with how many did.
    errors: std::collections::BTreeMap<String, u64>,
}

async fn gather(tasks: Vec<tokio::task::JoinHandle<StreamResult>>) -> Results {
    let mut r = Results { lat: Vec::new(), lag: Vec::new(), w_sent: 0, w_unacked: 0, errors: Default::default() };
    for t in tasks {
        let s = t
            .await
            .unwrap_or_else(|e| StreamResult { error: Some(format!("task panicked: {e}")), ..Default::default() });
        r.lat.extend_from_slice(&s.latency_us);
        r.lag.extend_from_slice(&s.lag_us);
        r.w_sent += s.window_sent;
        r.w_unacked += s.window_unacked;
        if let Some(e) = s.error {
            *r.errors.entry(e).or_default() += 1;
        }
    }
    r.lat.sort_unstable();
    r.lag.sort_unstable();
    r
}

/// The run's setting, for the report.
struct Setup<'a> {
    cores: usize,
    nofile: &'a NoFile,
    devices_secs: f64,
    ramp_secs: f64,
}

/// The report: figures, settings and the bars' verdicts, as JSON.
fn report(
    args: &IngestArgs,
    server: &Server,
    setup: &Setup<'_>,
    shared: &Tally,
    window: &Window,
    results: Results,
) -> serde_json::Value {
    let n = args.streams;
    let cores = setup.cores;
    let Window { start: window, end: window_end, rss_max, rss_end, hwm, threads } = *window;
    let (w_start, cpu0, self0, busy0) = window;
    let (w_end, cpu1, self1, busy1) = window_end;
    let wall = (w_end - w_start).as_secs_f64();
    let Results { lat, lag, w_sent, w_unacked, errors } = results;
    let w_acked = lat.len() as u64;
    // Unacked frames count as infinitely late.
    let pct = |q: f64| -> Option<f64> {
        let total = w_acked + w_unacked;
        if total == 0 {
            return None;
        }
        let idx = ((q * total as f64).ceil() as u64).clamp(1, total) - 1;
        lat.get(idx as usize).map(|&us| us as f64 / 1000.0)
    };
    let lag_pct = |q: f64| -> Option<f64> {
        if lag.is_empty() {
            return None;
        }
        let idx = ((q * lag.len() as f64).ceil() as usize).clamp(1, lag.len()) - 1;
        Some(lag[idx] as f64 / 1000.0)
    };
    let connected = shared.connected.load(Ordering::Relaxed);
    let dropped = shared.dropped.load(Ordering::Relaxed);
    let server_split = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(((b.0 - a.0) / wall, (b.1 - a.1) / wall)),
        _ => None,
    };
    let server_cores = server_split.map(|(u, s)| u + s);
    let gen_cores = (self1 - self0) / wall;
    let busy_cores = busy0.zip(busy1).map(|(a, b)| (b - a) / wall);
    // What the rest of the machine used meanwhile: a noisy neighbour shows here.
    let other_cores = busy_cores.map(|b| (b - server_cores.unwrap_or(0.0) - gen_cores).max(0.0));
    let streams_live = connected.saturating_sub(dropped);
    let p99 = pct(0.99);
    let max = if w_unacked > 0 { None } else { lat.last().map(|&us| us as f64 / 1000.0) };
    let rss_peak_window = if rss_max > 0 { Some(rss_max.max(rss_end.unwrap_or(0))) } else { rss_end };
    let pass = |ok: bool| if ok { "pass" } else { "FAIL" };
    let capacity_applies = n >= TARGET_STREAMS;
    let capacity_ok = streams_live >= TARGET_STREAMS as u64
        && p99.is_some_and(|p| p <= TARGET_ACK_P99_MS)
        && hwm.is_some_and(|h| h <= TARGET_RSS_BYTES);
    let tts_ok = p99.is_some_and(|p| p <= TARGET_TTS_P99_MS) && streams_live >= TARGET_TTS_STREAMS.min(n) as u64;
    json!({
        "streams": {
            "requested": n,
            "connected": connected,
            "failed": shared.failed.load(Ordering::Relaxed),
            "dropped_during_run": dropped,
            "errors": errors,
        },
        "config": config_json(args, server, setup),
        "window": {
            "wall_secs": wall,
            "frames_sent": w_sent,
            "frames_acked": w_acked,
            "frames_unacked": w_unacked,
            "frames_per_sec": w_acked as f64 / wall,
            "expected_frames_per_sec": streams_live as f64 * 50.0,
        },
        "ack_latency_ms": {
            "definition": "per frame: just before it is written to the socket (with its batch) -> the first ACK covering it (the server acks once the frame is durable); also the time to safe of that frame; unacked frames count as infinitely late (null)",
            "p50": pct(0.50), "p95": pct(0.95), "p99": p99, "p999": pct(0.999), "max": max,
        },
        "time_to_safe_p99_ms": p99,
        "send_lag_ms": {
            "definition": "how late the load generator wrote each frame against its batch's schedule (every batch_ms)",
            "p50": lag_pct(0.50), "p99": lag_pct(0.99), "max": lag_pct(1.0),
        },
        "server": {
            "rss_end_bytes": rss_end,
            "rss_max_in_window_bytes": rss_peak_window,
            "vm_hwm_bytes": hwm,
            "threads": threads,
            "cpu_cores_used": server_cores,
            "cpu_cores_user": server_split.map(|(u, _)| u),
            "cpu_cores_system": server_split.map(|(_, s)| s),
            "cpu_percent_of_machine": server_cores.map(|c| 100.0 * c / cores as f64),
        },
        "machine": {
            "cpu_cores_busy": busy_cores,
            "cpu_cores_other_processes": other_cores,
        },
        "load_generator": {
            "cpu_cores_used": gen_cores,
            "cpu_percent_of_machine": 100.0 * gen_cores / cores as f64,
        },
        "streams_per_core": server_cores.filter(|&c| c > 0.0).map(|c| streams_live as f64 / c),
        "streams_per_core_incl_generator": server_cores.map(|c| c + gen_cores).filter(|&c| c > 0.0).map(|c| streams_live as f64 / c),
        "targets": {
            "capacity": {
                "bar": format!(">= {TARGET_STREAMS} streams, ack p99 <= {TARGET_ACK_P99_MS} ms, server RSS (VmHWM) <= 1 GiB"),
                "applies": capacity_applies,
                "result": if capacity_applies { pass(capacity_ok) } else { "not measured" },
            },
            "time_to_safe": {
                "bar": format!("p99 <= {TARGET_TTS_P99_MS} ms at {TARGET_TTS_STREAMS} streams"),
                "applies": n == TARGET_TTS_STREAMS,
                // Judged only at its own size: at 2,000 streams the same
                // figure is the capacity bar's ack p99, not this one.
                "result": if n == TARGET_TTS_STREAMS { pass(tts_ok) } else { "not measured" },
            },
        },
    })
}

/// The run's settings, as the report gives them.
fn config_json(args: &IngestArgs, server: &Server, setup: &Setup<'_>) -> serde_json::Value {
    let Setup { cores, nofile, devices_secs, ramp_secs } = *setup;
    json!({
        "secs": args.secs,
        "warmup_secs": args.warmup_secs,
        "drain_secs": DRAIN.as_secs(),
        "ramp_per_sec": args.ramp,
        "frame_bytes": args.frame_bytes,
        "frame_interval_ms": FRAME.as_millis() as u64,
        "batch_ms": args.batch_ms,
        "server": server.url,
        "server_started_by_bench": server.child.is_some(),
        "server_pid": server.pid,
        "server_data_fs": server.fs,
        "server_log": server.log,
        "machine_cores": cores,
        "nofile": { "before": nofile.before, "after": nofile.after, "wanted": nofile.wanted },
        "devices_created_secs": devices_secs,
        "ramp_secs": ramp_secs,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// A moment of the window: when, the server's (user, system) CPU seconds,
/// this process's CPU seconds, the machine's busy CPU seconds.
type Snapshot = (Instant, Option<(f64, f64)>, f64, Option<f64>);

/// /proc/stat: CPU seconds all cores spent busy (not idle or waiting for I/O).
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> =
        stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = f.iter().take(8).enumerate().filter(|&(i, _)| i != 3 && i != 4).map(|(_, v)| v).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(busy as f64 / hz)
}

fn update_connect(pb: &ProgressBar, shared: &Tally) {
    let (c, f) = (shared.connected.load(Ordering::Relaxed), shared.failed.load(Ordering::Relaxed));
    pb.set_position(c + f);
    pb.set_message(format!("up {c} failed {f}"));
}

fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What the streams send: one second (50 frames) of quiet noise, about
/// -60 dBFS, encoded as Opus (16 kHz, 20 ms, constant bit rate) and padded
/// to `bytes` a frame. The server stores and acks it like any audio, and its
/// live transcriber decodes it, but its voice activity detector hears no
/// speech in it, so no speech-to-text runs (random bytes would decode to
/// loud noise, which it takes for speech: then the live transcriber would
/// run drafts all the time).
fn opus_frames(bytes: usize, seed: &mut u64) -> Result<Vec<Vec<u8>>> {
    let mut enc = FrameEncoder::opus_sized(bytes).context("opus encoder")?;
    (0..50)
        .map(|_| {
            let pcm: Vec<i16> = (0..320).map(|_| (splitmix(seed) % 61) as i16 - 30).collect();
            enc.encode(&pcm).with_context(|| format!("cannot make a {bytes}-byte Opus frame"))
        })
        .collect()
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// One simulated relay: connect, open an utterance, every `batch` send the
/// frames made since the last send (one every 20 ms) in one write, until told
/// to stop, and time every frame to its ack.
#[allow(clippy::too_many_arguments)]
async fn stream(
    url: String,
    token: String,
    (frames, offset): (Arc<Vec<Vec<u8>>>, usize),
    phase: Duration,
    batch: Duration,
    base: Instant,
    sh: Arc<Tally>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> StreamResult {
    let mut out = StreamResult::default();
    let mut ws = match connect(&url, &token).await {
        Ok(ws) => ws,
        Err(e) => {
            sh.failed.fetch_add(1, Ordering::Relaxed);
            out.error = Some(e);
            return out;
        }
    };
    sh.connected.fetch_add(1, Ordering::Relaxed);
    let handle = 1u32;
    let start = Instant::now() + phase;
    let mut ticks = tokio::time::interval_at(start.into(), batch);
    // A real relay sends a backlog at once, so a late generator catches up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending: VecDeque<(u32, Instant)> = VecDeque::with_capacity(64);
    let mut seq = 0u32;
    let mut acked_next = 0u32;
    let end: Option<String> = loop {
        tokio::select! {
            scheduled = ticks.tick() => {
                // The frames made by the scheduled time: one at the start,
                // then one every 20 ms.
                let scheduled = scheduled.into_std();
                let made = (scheduled.saturating_duration_since(start).as_nanos() / FRAME.as_nanos()) as u32 + 1;
                let sent = Instant::now();
                let first = seq;
                let mut failed = None;
                // Each frame is its own message; the batch is one write.
                while seq < made {
                    let frame = &frames[(offset + seq as usize) % frames.len()];
                    let msg = wire::encode_audio(&Audio { handle, seq, frame });
                    if let Err(e) = ws.feed(Message::binary(msg)).await {
                        failed = Some(e);
                        break;
                    }
                    pending.push_back((seq, sent));
                    seq += 1;
                }
                if let Some(e) = failed {
                    break Some(format!("send failed: {e}"));
                }
                if let Err(e) = ws.flush().await {
                    break Some(format!("send failed: {e}"));
                }
                let n = seq - first;
                sh.sent.fetch_add(u64::from(n), Ordering::Relaxed);
                if sh.in_window(base, sent) {
                    out.window_sent += u64::from(n);
                    let lag = micros(sent.saturating_duration_since(scheduled));
                    out.lag_us.extend(std::iter::repeat_n(lag, n as usize));
                }
            }
            m = ws.next() => {
                let now = Instant::now();
                match m {
                    Some(Ok(Message::Binary(b))) => match wire::parse_binary(&b) {
                        Ok(Binary::Ack(a)) if a.handle == handle => {
                            if a.next > seq {
                                break Some(format!("ack {} runs ahead of the {seq} frames sent", a.next));
                            }
                            let mut n = 0;
                            while let Some(&(s, sent)) = pending.front() {
                                if s >= a.next {
                                    break;
                                }
                                pending.pop_front();
                                n += 1;
                                if sh.in_window(base, sent) {
                                    out.latency_us.push(micros(now - sent));
                                }
                            }
                            acked_next = acked_next.max(a.next);
                            sh.acked.fetch_add(n, Ordering::Relaxed);
                        }
                        _ => break Some("unexpected binary message".into()),
                    },
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(ServerMsg::Error { code, message, .. }) = wire::parse_server_text(&t) {
                            break Some(format!("server error {code}: {message}"));
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        break Some(f.map_or("closed".into(), |f| format!("closed {}: {}", u16::from(f.code), f.reason)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(format!("socket error: {e}")),
                    None => break Some("connection ended".into()),
                }
            }
            _ = stop.changed() => break None,
        }
    };
    out.window_unacked = pending.iter().filter(|(_, t)| sh.in_window(base, *t)).count() as u64;
    if let Some(e) = end {
        sh.dropped.fetch_add(1, Ordering::Relaxed);
        out.error = Some(e);
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    out
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects with TCP_NODELAY, opens one utterance, and waits for `opened`.
async fn connect(url: &str, token: &str) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| format!("bad url: {e}"))?;
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().map_err(|_| "bad token".to_string())?);
    // Small buffers: thousands of connections share this process's memory.
    // Messages are buffered until the batch's flush (the buffer grows to one
    // batch: about 1 KB at 200 ms).
    let cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(64 * 1024);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async_with_config(req, Some(cfg), true),
    )
    .await
    .map_err(|_| "connect timed out (20 s)".to_string())?
    .map_err(|e| format!("connect failed: {e}"))?;
    let open =
        ClientMsg::Open { utterance: uuid::Uuid::now_v7(), handle: 1, codec: Codec::Opus16k20ms, unmarked: false };
    ws.send(Message::text(open.to_json())).await.map_err(|e| format!("open failed: {e}"))?;
    let opened = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Text(t)) => {
                    return match wire::parse_server_text(&t) {
                        Ok(ServerMsg::Opened { complete: false, .. }) => Ok(()),
                        Ok(other) => Err(format!("expected `opened`, got {other:?}")),
                        Err(e) => Err(format!("bad server message: {e}")),
                    };
                }
                Ok(Message::Close(f)) => return Err(format!("closed before `opened`: {f:?}")),
                Ok(_) => {}
                Err(e) => return Err(format!("socket error before `opened`: {e}")),
            }
        }
        Err("connection ended before `opened`".into())
    })
    .await
    .map_err(|_| "no `opened` within 20 s".to_string())?;
    opened.map(|()| ws)
}

fn fmt_ms(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(ms) if ms < 10.0 => format!("{ms:.2} ms"),
        Some(ms) => format!("{ms:.1} ms"),
        None => "unacked".into(),
    }
}

fn fmt_mib(v: &serde_json::Value) -> String {
    v.as_u64().map_or("n/a".into(), |b| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0)))
}

fn print_report(r: &serde_json::Value) {
    let (s, c, w, l, g, sv, lg) = (
        &r["streams"],
        &r["config"],
        &r["window"],
        &r["ack_latency_ms"],
        &r["send_lag_ms"],
        &r["server"],
        &r["load_generator"],
    );
    let cores = c["machine_cores"].as_u64().unwrap_or(1);
    println!();
    println!(
        "lanyard bench ingest: {} streams, {} s measured after {} s warm-up ({} build; server {} at {})",
        s["requested"],
        c["secs"],
        c["warmup_secs"],
        c["build"].as_str().unwrap_or("?"),
        if c["server_started_by_bench"].as_bool() == Some(true) { "started by the bench" } else { "given" },
        c["server"].as_str().unwrap_or("?"),
    );
    println!("  machine            {cores} cores, shared by the server and this load generator (loopback)");
    println!("  sending            one frame every 20 ms, sent every {} ms in one write", c["batch_ms"]);
    if let Some(fs) = c["server_data_fs"].as_str() {
        println!("  server data on     {fs}");
    }
    println!(
        "  streams            {} connected, {} failed, {} dropped during the run",
        s["connected"], s["failed"], s["dropped_during_run"]
    );
    if let Some(errors) = s["errors"].as_object() {
        for (e, count) in errors.iter().take(5) {
            println!("    {count} x {e}");
        }
    }
    println!(
        "  frames (window)    {} sent, {} acked, {} unacked",
        w["frames_sent"], w["frames_acked"], w["frames_unacked"]
    );
    println!(
        "  throughput         {:.0} frames/s acked (real time for the live streams: {:.0})",
        w["frames_per_sec"].as_f64().unwrap_or(0.0),
        w["expected_frames_per_sec"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  ack latency        p50 {}  p95 {}  p99 {}  p99.9 {}  max {}",
        fmt_ms(&l["p50"]),
        fmt_ms(&l["p95"]),
        fmt_ms(&l["p99"]),
        fmt_ms(&l["p999"]),
        fmt_ms(&l["max"])
    );
    println!(
        "  time to safe p99   {}   (frame sent -> the ACK that covers it; see --help)",
        fmt_ms(&r["time_to_safe_p99_ms"])
    );
    println!(
        "  generator send lag p50 {}  p99 {}  max {}   (lateness against the {} ms batch schedule)",
        fmt_ms(&g["p50"]),
        fmt_ms(&g["p99"]),
        fmt_ms(&g["max"]),
        c["batch_ms"]
    );
    println!(
        "  server RSS         {} at the end, {} max in the window, {} peak (VmHWM)",
        fmt_mib(&sv["rss_end_bytes"]),
        fmt_mib(&sv["rss_max_in_window_bytes"]),
        fmt_mib(&sv["vm_hwm_bytes"])
    );
    match sv["cpu_cores_used"].as_f64() {
        Some(cc) => println!(
            "  server CPU         {cc:.2} cores ({:.0}% of the machine; user {:.2}, kernel {:.2}), {} threads",
            100.0 * cc / cores as f64,
            sv["cpu_cores_user"].as_f64().unwrap_or(0.0),
            sv["cpu_cores_system"].as_f64().unwrap_or(0.0),
            sv["threads"]
        ),
        None => println!("  server CPU         n/a (no server pid)"),
    }
    let gc = lg["cpu_cores_used"].as_f64().unwrap_or(0.0);
    println!("  generator CPU      {gc:.2} cores ({:.0}% of the machine)", 100.0 * gc / cores as f64);
    if let Some(o) = r["machine"]["cpu_cores_other_processes"].as_f64() {
        println!(
            "  other processes    {o:.2} cores (the rest of the machine's busy time in the window: a noisy neighbour)"
        );
    }
    match (r["streams_per_core"].as_f64(), r["streams_per_core_incl_generator"].as_f64()) {
        (Some(a), Some(b)) => println!(
            "  streams per core   {a:.0} (live streams / server cores used); {b:.0} counting the generator too"
        ),
        _ => println!("  streams per core   n/a"),
    }
    for key in ["capacity", "time_to_safe"] {
        let t = &r["targets"][key];
        println!(
            "  target {:<12} {} -> {}{}",
            key,
            t["bar"].as_str().unwrap_or(""),
            t["result"].as_str().unwrap_or(""),
            if t["applies"].as_bool() == Some(true) { "" } else { " (the bar is about another number of streams)" }
        );
    }
}
