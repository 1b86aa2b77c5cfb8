//! Benchmark: what the relay costs while it streams at real-time pace.
//!
//! Runs real processes on loopback — `lanyard serve`, `lanyard pendant-sim`
//! speaking the demo sentences through the BLE framing, and a relay — and
//! measures the relay process alone: CPU time and peak RSS (`ru_maxrss`),
//! over several runs, as median and spread. CPU is reported per second of
//! audio relayed, over the streaming window (from the first utterance
//! starting to the last one acknowledged complete), split the way a phone
//! would see it:
//! - **relay**: the relay loop's thread (uplink, WebSocket, fsync), from its
//!   thread CPU clock, plus the relay's ingest on the link thread (reassembly,
//!   boundaries, the spool's `write()`), from the thread CPU clock read
//!   around each `Link::event` call. This is the figure the bar is about.
//! - **transport**: the rest of the link thread, the simulator socket's reads
//!   and wake-ups. It stands in for CoreBluetooth delivering notifications,
//!   which a phone pays for with or without a relay.
//! - the whole process over the window, and over its life (`wait4`: start-up,
//!   spool recovery and the wait for the last replies too).
//!
//! Side by side: the default fsync window (200 ms) and fsync effectively off,
//! to show what durability costs on this disk.
//!
//! The relay process is this benchmark binary re-executed in relay mode: it
//! runs the relay core on a one-thread runtime, as the phone library does,
//! with the pendant link on a thread of its own (as CoreBluetooth's queue
//! is), and links only the relay core. (`lanyard relay` would also carry the
//! server and CTranslate2 in its address space, which a phone never does.)
//!
//! Run: `cargo bench -p lanyard --bench relay_cost` (`LANYARD_BENCH_RUNS`,
//! default 3). Needs the model (`scripts/setup`) for the server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn lanyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
}

/// Reads JSON lines from a child's stdout on a thread.
fn lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<serde_json::Value> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    rx
}

fn wait_for(rx: &std::sync::mpsc::Receiver<serde_json::Value>, event: &str) -> serde_json::Value {
    loop {
        let v = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| panic!("no {event}"));
        if v["event"] == event {
            return v;
        }
    }
}

/// CPU per second of audio, in ms.
struct Run {
    /// While streaming (from the first utterance starting to the last one
    /// acknowledged complete): the relay's own work, its loop thread plus
    /// its ingest on the link thread.
    relay: f64,
    loop_thread: f64,
    ingest: f64,
    /// The link thread outside the relay: the simulator socket's reads and
    /// wake-ups, standing in for CoreBluetooth's delivery.
    transport: f64,
    /// The whole process over the same window.
    process: f64,
    /// The whole process life: start-up, spool recovery, streaming, and the
    /// wait for the replies.
    life_ms_per_audio_s: f64,
    max_rss_mb: f64,
    audio_s: f64,
}

/// What the bench speaks: the demo sentences, three times over (about 40 s
/// of audio in 12 utterances), so that start-up is a small part of the run.
const ROUNDS: usize = 3;

fn run_once(model: &str, sync_ms: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let out = lanyard().args(["device", "add", "bench", "--data-dir", data.to_str().unwrap()]).output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut server = lanyard()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap(), "--model-dir", model])
        .env("LANYARD_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let srx = lines(&mut server);
    let url = format!("http://{}", wait_for(&srx, "listening")["addr"].as_str().unwrap());
    let mut args: Vec<String> = ["pendant-sim", "--listen", "127.0.0.1:0", "--wait-for-central", "--linger-secs", "60", "--gap-ms", "500"]
        .map(String::from)
        .into();
    let sentences = lanyard_pendant::speech::DEMO_SENTENCES;
    for s in sentences.iter().cycle().take(sentences.len() * ROUNDS) {
        args.extend(["--say".to_string(), s.to_string()]);
    }
    let mut sim = lanyard().args(&args).stdout(Stdio::piped()).spawn().unwrap();
    let prx = lines(&mut sim);
    let sim_addr = wait_for(&prx, "listening")["addr"].as_str().unwrap().to_string();
    let mut relay = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("BENCH_SERVER", &url)
        .env("BENCH_TOKEN", &token)
        .env("BENCH_SIM", &sim_addr)
        .env("BENCH_SPOOL", dir.path().join("spool"))
        .env("BENCH_SYNC_MS", sync_ms.to_string())
        .env("BENCH_UTTERANCES", (sentences.len() * ROUNDS).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rrx = lines(&mut relay);
    let pid = relay.id() as libc::pid_t;
    // Reap the relay ourselves to read its own resource usage.
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the relay failed");
    let events: Vec<serde_json::Value> = rrx.try_iter().collect();
    let frames: u64 = events.iter().filter(|v| v["event"] == "utterance_ended").map(|v| v["frames"].as_u64().unwrap()).sum();
    let window = events.iter().find(|v| v["event"] == "cpu_window").expect("the relay reports its streaming CPU");
    let _ = sim.kill();
    let _ = server.kill();
    let _ = (sim.wait(), server.wait());
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    let (user, sys) = (tv(usage.ru_utime), tv(usage.ru_stime));
    let f = |k: &str| window[k].as_f64().unwrap();
    let audio_s = frames as f64 * 0.02;
    Run {
        relay: (f("loop_ms") + f("ingest_ms")) / audio_s,
        loop_thread: f("loop_ms") / audio_s,
        ingest: f("ingest_ms") / audio_s,
        transport: (f("link_thread_ms") - f("ingest_ms")) / audio_s,
        process: f("process_ms") / audio_s,
        life_ms_per_audio_s: (user + sys) / audio_s,
        max_rss_mb: usage.ru_maxrss as f64 / 1024.0,
        audio_s,
    }
}

/// Set in the environment of the relay child.
const CHILD: &str = "LANYARD_BENCH_RELAY_CHILD";

/// CPU clocks (see `snapshot`) at the first utterance's start, and at the
/// latest `complete`.
type Window = (Option<[f64; 4]>, [f64; 4]);

/// A CPU clock in milliseconds.
fn cpu_ms(clock: libc::clockid_t) -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as f64 * 1000.0 + t.tv_nsec as f64 / 1e6
}

/// What the link thread measures of itself, in µs (atomics, read by the
/// relay's thread at the window's edges).
#[derive(Default)]
struct LinkCpu {
    /// CPU spent inside `Link::event`: the relay's ingest (reassembly,
    /// boundaries, the spool's `write()`).
    ingest_us: AtomicU64,
    /// The link thread's whole CPU time, as of its last event.
    thread_us: AtomicU64,
}

/// The relay child: the relay core on a one-thread runtime, the pendant link
/// on a thread of its own (as CoreBluetooth's queue is), events on stdout.
fn relay_child() {
    use lanyard_relay::RelayEvent;
    let var = |k: &str| std::env::var(k).unwrap();
    let cfg = lanyard_relay::HostConfig {
        spool_dir: var("BENCH_SPOOL").into(),
        server: var("BENCH_SERVER"),
        token: var("BENCH_TOKEN"),
        sync_interval: Duration::from_millis(var("BENCH_SYNC_MS").parse().unwrap()),
        send_interval: lanyard_relay::DEFAULT_SEND_INTERVAL,
        boundary: Default::default(),
        uplink: Default::default(),
        planner: Default::default(),
        push: None,
        exit_after: Some(var("BENCH_UTTERANCES").parse().unwrap()),
        fsync_delay: Duration::ZERO,
    };
    let sim: std::net::SocketAddr = var("BENCH_SIM").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<lanyard_relay::host::Stamped>();
        let (_control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
        let (relay, link) = lanyard_relay::open(cfg, tx).unwrap();
        let link_cpu = Arc::new(LinkCpu::default());
        let (l, m) = (link.clone(), link_cpu.clone());
        lanyard_relay::link::spawn_sim_link_thread(sim, link, move |ev| {
            let t0 = cpu_ms(libc::CLOCK_THREAD_CPUTIME_ID);
            l.event(ev);
            let t1 = cpu_ms(libc::CLOCK_THREAD_CPUTIME_ID);
            m.ingest_us.fetch_add(((t1 - t0) * 1000.0) as u64, Ordering::Relaxed);
            m.thread_us.store((t1 * 1000.0) as u64, Ordering::Relaxed);
        })
        .unwrap();
        // The streaming window: from the first utterance starting to the last
        // one acknowledged complete. The printer runs on the relay's thread,
        // so its thread clock is the relay loop's.
        let window: Arc<Mutex<Window>> = Arc::default();
        let w = window.clone();
        let printer = tokio::spawn(async move {
            let snapshot = || {
                [
                    cpu_ms(libc::CLOCK_PROCESS_CPUTIME_ID),
                    cpu_ms(libc::CLOCK_THREAD_CPUTIME_ID),
                    link_cpu.ingest_us.load(Ordering::Relaxed) as f64 / 1000.0,
                    link_cpu.thread_us.load(Ordering::Relaxed) as f64 / 1000.0,
                ]
            };
            while let Some(ev) = rx.recv().await {
                let line = serde_json::to_string(&ev).unwrap();
                match &ev.event {
                    RelayEvent::UtteranceStarted { .. } => {
                        w.lock().unwrap().0.get_or_insert_with(snapshot);
                    }
                    RelayEvent::Complete { .. } => w.lock().unwrap().1 = snapshot(),
                    _ => {}
                }
                println!("{line}");
            }
        });
        relay.run(None, control_rx).await.unwrap();
        // The event stream ends with the relay.
        printer.await.unwrap();
        let (start, end) = *window.lock().unwrap();
        let s = start.unwrap_or_default();
        let d: Vec<f64> = (0..4).map(|i| end[i] - s[i]).collect();
        println!(
            "{}",
            serde_json::json!({"event": "cpu_window", "process_ms": d[0], "loop_ms": d[1], "ingest_ms": d[2], "link_thread_ms": d[3]})
        );
    });
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        return relay_child();
    }
    let model = lanyard_stt::default_model_dir().to_string_lossy().into_owned();
    let n: usize = std::env::var("LANYARD_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    for (label, sync_ms) in [("fsync every 200 ms (default)", 200u64), ("fsync every 60 s (comparison)", 60_000)] {
        let runs: Vec<Run> = (0..n).map(|_| run_once(&model, sync_ms)).collect();
        let stat = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let (relay, relay_min, relay_max) = stat(|r| r.relay);
        println!("relay process, {label}, {n} runs of {:.1} s of audio each:", runs[0].audio_s);
        println!("  relay CPU per second of audio while streaming: median {relay:.3} ms (min {relay_min:.3}, max {relay_max:.3})   bar <= 0.5 ms");
        println!("    loop thread (uplink, WebSocket, fsync): median {:.3} ms", stat(|r| r.loop_thread).0);
        println!("    ingest on the link thread (reassembly, spool write()): median {:.3} ms", stat(|r| r.ingest).0);
        println!("  pendant transport stand-in (simulator socket reads on the link thread): median {:.3} ms", stat(|r| r.transport).0);
        println!("  whole process over the streaming window: median {:.3} ms; over its life: median {:.3} ms", stat(|r| r.process).0, stat(|r| r.life_ms_per_audio_s).0);
        let (rss, rss_min, rss_max) = stat(|r| r.max_rss_mb);
        println!("  peak RSS: median {rss:.1} MB (min {rss_min:.1}, max {rss_max:.1})   bar <= 8 MB");
    }
    println!("  (streaming: from the first utterance starting to the last acknowledged complete; the process life adds");
    println!("   start-up, spool recovery and the wait for the last replies)");
}
