//! Benchmark: what the relay costs while it streams at real-time pace.
//!
//! Runs real processes on loopback — `lanyard serve`, `lanyard pendant-sim`
//! speaking the demo sentences through the BLE framing, and a relay — and
//! measures the relay process alone with `wait4`: user + system CPU time and
//! peak RSS (`ru_maxrss`). CPU is reported per second of audio relayed
//! (reassembly, spool writes and fsyncs, uplink, WebSocket), over several
//! runs, as median and spread.
//!
//! The relay process is this benchmark binary re-executed in relay mode: it
//! runs `lanyard_relay::run` on a one-thread runtime, as the phone library
//! does, and links only the relay core. (`lanyard relay` would also carry
//! the server and CTranslate2 in its address space, which a phone never does.)
//!
//! Run: `cargo bench -p lanyard --bench relay_cost` (`LANYARD_BENCH_RUNS`,
//! default 3). Needs the model (`scripts/setup`) for the server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
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

struct Run {
    cpu_ms_per_audio_s: f64,
    user_ms_per_audio_s: f64,
    sys_ms_per_audio_s: f64,
    max_rss_mb: f64,
    audio_s: f64,
}

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
    let mut sim = lanyard()
        .args(["pendant-sim", "--listen", "127.0.0.1:0", "--wait-for-central", "--linger-secs", "60", "--gap-ms", "500"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let prx = lines(&mut sim);
    let sim_addr = wait_for(&prx, "listening")["addr"].as_str().unwrap().to_string();
    let mut relay = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("BENCH_SERVER", &url)
        .env("BENCH_TOKEN", &token)
        .env("BENCH_SIM", &sim_addr)
        .env("BENCH_SPOOL", dir.path().join("spool"))
        .env("BENCH_SYNC_MS", sync_ms.to_string())
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
    let frames: u64 = rrx.try_iter().filter(|v| v["event"] == "utterance_ended").map(|v| v["frames"].as_u64().unwrap()).sum();
    let _ = sim.kill();
    let _ = server.kill();
    let _ = (sim.wait(), server.wait());
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    let (user, sys) = (tv(usage.ru_utime), tv(usage.ru_stime));
    let audio_s = frames as f64 * 0.02;
    Run {
        cpu_ms_per_audio_s: (user + sys) / audio_s,
        user_ms_per_audio_s: user / audio_s,
        sys_ms_per_audio_s: sys / audio_s,
        max_rss_mb: usage.ru_maxrss as f64 / 1024.0,
        audio_s,
    }
}

/// Set in the environment of the relay child.
const CHILD: &str = "LANYARD_BENCH_RELAY_CHILD";

/// The relay child: the relay core on a one-thread runtime, events on stdout.
fn relay_child() {
    let var = |k: &str| std::env::var(k).unwrap();
    let cfg = lanyard_relay::HostConfig {
        spool_dir: var("BENCH_SPOOL").into(),
        server: var("BENCH_SERVER"),
        token: var("BENCH_TOKEN"),
        sync_interval: std::time::Duration::from_millis(var("BENCH_SYNC_MS").parse().unwrap()),
        boundary: Default::default(),
        uplink: Default::default(),
        planner: Default::default(),
        push: None,
        exit_after: Some(4),
    };
    let sim: std::net::SocketAddr = var("BENCH_SIM").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (link_tx, link_rx) = tokio::sync::mpsc::channel(256);
        let (_control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(lanyard_relay::link::run_sim_link(sim, link_tx));
        let printer = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                println!("{}", serde_json::to_string(&ev).unwrap());
            }
        });
        lanyard_relay::run(cfg, link_rx, control_rx, tx).await.unwrap();
        let _ = printer.await;
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
    // Side by side: the default fsync window, and fsync effectively off, to
    // show what the durability costs on this disk.
    for (label, sync_ms) in [("fsync every 200 ms (default)", 200u64), ("fsync every 60 s (comparison)", 60_000)] {
        let runs: Vec<Run> = (0..n).map(|_| run_once(&model, sync_ms)).collect();
        let (cpu, cpu_min, cpu_max) = median(runs.iter().map(|r| r.cpu_ms_per_audio_s).collect());
        let (user, _, _) = median(runs.iter().map(|r| r.user_ms_per_audio_s).collect());
        let (sys, _, _) = median(runs.iter().map(|r| r.sys_ms_per_audio_s).collect());
        let (rss, rss_min, rss_max) = median(runs.iter().map(|r| r.max_rss_mb).collect());
        println!("relay process, {label}, {n} runs of {:.1} s of audio each:", runs[0].audio_s);
        println!("  CPU per second of audio: median {cpu:.2} ms (min {cpu_min:.2}, max {cpu_max:.2}): user {user:.2} ms, system {sys:.2} ms   bar <= 0.5 ms");
        println!("  peak RSS: median {rss:.1} MB (min {rss_min:.1}, max {rss_max:.1})   bar <= 8 MB");
    }
    println!("  (CPU covers the whole process life: start-up, spool recovery, streaming, and the wait for the replies)");
}
