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
//!   around each `PendantPort::event` call. This is the figure the bar is about.
//! - **transport**: the rest of the link thread, the simulator socket's reads
//!   and wake-ups. It stands in for CoreBluetooth delivering notifications,
//!   which a phone pays for with or without a relay.
//! - the whole process over the window, and over its life (`wait4`: start-up,
//!   spool recovery and the wait for the last replies too).
//!
//! Side by side: the default fsync window (200 ms) and fsync effectively off,
//! to show what durability costs on this disk; and, for each, the **floor**:
//! a process that makes only the system calls the relay's design cannot do
//! without, at the same pace, and nothing else. Per 20 ms frame one
//! `write()` of a spool record on the link thread; per 200 ms round, on a
//! second thread woken by a timer, one `fdatasync` when the window is due,
//! one `send` of the round's frames on a loopback TCP connection and one
//! blocking `recv` of the peer's ack. It runs alongside each relay run, under
//! the same load, and is measured the way the relay is (the writes with the
//! thread CPU clock around each, the round thread whole), so relay minus
//! floor is what our code adds, with the work the floor leaves out: each
//! utterance's begin, end and done records, its `open`, `end` and
//! `complete`, the partials, final and reply it hands the app as events
//! (which this bench prints as JSON from the loop's thread), the fsync
//! after each utterance's DONE record (the floor of the 60 s window never
//! fsyncs in its 40 s), and the wake-ups of the pauses between utterances.
//! The floors' processes add their own load to the machine's two cores
//! while the relay runs, so the relay's figures are a little higher than in
//! a run without them.
//!
//! A second floor, alongside too, prices a contract the issue does not
//! allow, for comparison only: frames copied into an mmap'd segment (which
//! survives the app being killed just as a `write()` does) instead of a
//! `write()` each, and no fsync for frames the server acknowledged within
//! the window (at real-time pace, all of them).
//!
//! The relay process is this benchmark binary re-executed in relay mode: it
//! runs the relay core on a one-thread runtime, as the phone library does,
//! with the pendant link on a thread of its own (as CoreBluetooth's queue
//! is), and links only the relay core. (`lanyard relay` would also carry the
//! server and CTranslate2 in its address space, which a phone never does.)
//!
//! Run: `cargo bench -p lanyard --bench relay_cost` (`LANYARD_BENCH_RUNS`,
//! default 3; `LANYARD_BENCH_WINDOWS=default` leaves out the 60 s window).
//! Needs the model (`scripts/setup`) for the server.

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
    /// The loop thread's wake-ups a second of audio while streaming.
    loop_wakeups: f64,
    audio_s: f64,
    /// The floor run alongside (see `floor_once`): write()s and rounds.
    floor: (f64, f64),
    /// The other contract's floor, alongside too: copies and rounds.
    floor_mmap: (f64, f64),
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
    let mut args: Vec<String> =
        ["pendant-sim", "--listen", "127.0.0.1:0", "--wait-for-central", "--linger-secs", "60", "--gap-ms", "500"]
            .map(String::from)
            .into();
    let sentences = lanyard_pendant::speech::DEMO_SENTENCES;
    for s in sentences.iter().cycle().take(sentences.len() * ROUNDS) {
        args.extend(["--say".to_string(), s.to_string()]);
    }
    let mut sim = lanyard().args(&args).stdout(Stdio::piped()).spawn().unwrap();
    let prx = lines(&mut sim);
    let sim_addr = wait_for(&prx, "listening")["addr"].as_str().unwrap().to_string();
    // The floor runs alongside the relay, under the same load (the server
    // transcribing, the simulator speaking), for about as much audio.
    let floor = std::thread::spawn(move || floor_once(FLOOR_FRAMES, sync_ms, FloorMode::Write));
    let floor_mmap = std::thread::spawn(move || floor_once(FLOOR_FRAMES, sync_ms, FloorMode::MmapAcked));
    // LANYARD_BENCH_STRACE=1: count the relay's fsyncs and waits with
    // `strace -f -c` (its CPU figures are then strace's, not the relay's).
    let strace = std::env::var_os("LANYARD_BENCH_STRACE").is_some();
    let strace_out = dir.path().join("relay.strace");
    let mut relay = if strace {
        let mut c = Command::new("strace");
        c.args(["-f", "-c", "-e", "trace=fdatasync,fsync,epoll_wait,epoll_pwait,futex", "-o"])
            .arg(&strace_out)
            .arg(std::env::current_exe().unwrap());
        c
    } else {
        Command::new(std::env::current_exe().unwrap())
    };
    let mut relay = relay
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
    // Every line, to the end of the relay's output (its reader thread may
    // not have reached the last ones when `wait4` returns).
    let events: Vec<serde_json::Value> = rrx.iter().collect();
    let frames: u64 =
        events.iter().filter(|v| v["event"] == "utterance_ended").map(|v| v["frames"].as_u64().unwrap()).sum();
    let window = events.iter().find(|v| v["event"] == "cpu_window").expect("the relay reports its streaming CPU");
    let floor = floor.join().unwrap();
    let floor_mmap = floor_mmap.join().unwrap();
    if strace {
        eprintln!("strace -f -c of the relay, {} utterances:", sentences.len() * ROUNDS);
        eprintln!("{}", std::fs::read_to_string(&strace_out).unwrap_or_default());
    }
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
        loop_wakeups: f("loop_wakeups") / audio_s,
        audio_s,
        floor,
        floor_mmap,
    }
}

/// Set in the environment of the relay child.
const CHILD: &str = "LANYARD_BENCH_RELAY_CHILD";
/// Set in the environment of the floor child.
const FLOOR_CHILD: &str = "LANYARD_BENCH_FLOOR_CHILD";

/// A spool FRAME record of a typical 20 ms Opus frame: the 8-byte header,
/// the 29-byte body head (record id, kind, utterance id, seq) and 80 bytes.
const FLOOR_RECORD: usize = 117;
/// How much audio the floor runs for: 40 s, about as much as a relay run.
const FLOOR_FRAMES: u64 = 2000;
/// Frames per round: 200 ms of audio, as the relay's send interval.
const FLOOR_ROUND_FRAMES: usize = 10;
/// The ack a server sends per round (the wire's ack message is 11 bytes).
const FLOOR_ACK: usize = 11;

/// How a floor child spools its frames.
#[derive(Clone, Copy)]
enum FloorMode {
    /// As the issue asks: a `write()` per frame, an fsync per window.
    Write,
    /// The contract the issue does not allow: a copy into an mmap'd segment
    /// per frame, and no fsync (every frame is acknowledged in its window).
    MmapAcked,
}

/// The floor: `frames` frames of audio with only the system calls the design
/// needs (see the module doc). Returns the CPU per second of audio, in ms,
/// as (spooling the frames, round thread).
fn floor_once(frames: u64, sync_ms: u64, mode: FloorMode) -> (f64, f64) {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    // The server's part: a peer on loopback that acks each round's frames.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut batch = [0u8; FLOOR_RECORD * FLOOR_ROUND_FRAMES];
        while s.read_exact(&mut batch).is_ok() {
            if s.write_all(&[0u8; FLOOR_ACK]).is_err() {
                break;
            }
        }
    });
    let out = Command::new(std::env::current_exe().unwrap())
        .env(FLOOR_CHILD, "1")
        .env("BENCH_PEER", addr.to_string())
        .env("BENCH_SPOOL", dir.path())
        .env("BENCH_SYNC_MS", sync_ms.to_string())
        .env("BENCH_FRAMES", frames.to_string())
        .env("BENCH_FLOOR_MMAP", matches!(mode, FloorMode::MmapAcked).to_string())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the floor child failed");
    peer.join().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let audio_s = frames as f64 * 0.02;
    (v["write_ms"].as_f64().unwrap() / audio_s, v["round_ms"].as_f64().unwrap() / audio_s)
}

/// The floor child: a link thread that writes a record every 20 ms, and a
/// round thread (this one) that fsyncs, sends and waits for the ack every
/// 200 ms.
fn floor_child() {
    use std::io::{Read, Write};
    use std::os::unix::io::AsRawFd;
    let var = |k: &str| std::env::var(k).unwrap();
    let frames: u64 = var("BENCH_FRAMES").parse().unwrap();
    let sync_ms: u64 = var("BENCH_SYNC_MS").parse().unwrap();
    let mmap = var("BENCH_FLOOR_MMAP") == "true";
    let path = std::path::Path::new(&var("BENCH_SPOOL")).join("floor-segment");
    let file =
        Arc::new(std::fs::OpenOptions::new().create(true).read(true).append(!mmap).write(mmap).open(path).unwrap());
    let mut sock = std::net::TcpStream::connect(var("BENCH_PEER")).unwrap();
    sock.set_nodelay(true).unwrap();
    let start = std::time::Instant::now();
    let frame = Duration::from_millis(20);
    let f = file.clone();
    let link = std::thread::spawn(move || {
        let record = [0x5au8; FLOOR_RECORD];
        let len = FLOOR_RECORD * frames as usize;
        let map = mmap.then(|| {
            f.set_len(len as u64).unwrap();
            // SAFETY: a fresh shared mapping of `len` bytes of a file this
            // process alone uses and has just sized; unmapped at exit.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            p.cast::<u8>()
        });
        let mut write_ms = 0.0;
        for i in 0..frames as u32 {
            if let Some(d) = (start + frame * (i + 1)).checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(d);
            }
            let t0 = cpu_ms(libc::CLOCK_THREAD_CPUTIME_ID);
            match map {
                // SAFETY: record `i` lies inside the mapping.
                Some(p) => unsafe {
                    std::ptr::copy_nonoverlapping(record.as_ptr(), p.add(i as usize * FLOOR_RECORD), FLOOR_RECORD)
                },
                None => (&*f).write_all(&record).unwrap(),
            }
            write_ms += cpu_ms(libc::CLOCK_THREAD_CPUTIME_ID) - t0;
        }
        write_ms
    });
    let t0 = cpu_ms(libc::CLOCK_THREAD_CPUTIME_ID);
    let rounds = frames as u32 / FLOOR_ROUND_FRAMES as u32;
    let round = frame * FLOOR_ROUND_FRAMES as u32;
    let (batch, mut ack) = ([0x5au8; FLOOR_RECORD * FLOOR_ROUND_FRAMES], [0u8; FLOOR_ACK]);
    // When the last fsync's round was due; the oldest unsynced record since
    // was written a frame later.
    let mut synced_at = Duration::ZERO;
    for r in 1..=rounds {
        let at = round * r;
        if let Some(d) = (start + at).checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(d);
        }
        // As the relay's loop does: fsync now if the next round would come
        // after that record's window (with 200 ms windows, every round).
        if !mmap && at + round > synced_at + frame + Duration::from_millis(sync_ms) {
            assert_eq!(unsafe { libc::fdatasync(file.as_raw_fd()) }, 0);
            synced_at = at;
        }
        sock.write_all(&batch).unwrap();
        sock.read_exact(&mut ack).unwrap();
    }
    let round_ms = cpu_ms(libc::CLOCK_THREAD_CPUTIME_ID) - t0;
    let write_ms = link.join().unwrap();
    println!("{}", serde_json::json!({"write_ms": write_ms, "round_ms": round_ms}));
}

/// CPU clocks (see `snapshot`) at the first utterance's start, and at the
/// latest `complete`.
type Window = (Option<[f64; 5]>, [f64; 5]);

/// The calling thread's voluntary context switches: each is a sleep the
/// thread woke from, so their count is the thread's wake-ups.
fn thread_wakeups() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage to fill.
    let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(r, 0, "getrusage(RUSAGE_THREAD) failed");
    usage.ru_nvcsw as f64
}

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
    /// CPU spent inside `PendantPort::event`: the relay's ingest (reassembly,
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
        sync_interval: Duration::from_millis(var("BENCH_SYNC_MS").parse().unwrap()),
        exit_after: Some(var("BENCH_UTTERANCES").parse().unwrap()),
        ..lanyard_relay::HostConfig::new(var("BENCH_SPOOL"), var("BENCH_SERVER"), var("BENCH_TOKEN"))
    };
    let sim: std::net::SocketAddr = var("BENCH_SIM").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<lanyard_relay::host::Stamped>();
        let (_control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
        let (relay, link) = lanyard_relay::open(cfg, tx).unwrap();
        let link_cpu = Arc::new(LinkCpu::default());
        let (l, m) = (link.clone(), link_cpu.clone());
        lanyard_relay::link::spawn_sim_link_thread(sim, move || link.is_stopped(), move |ev| {
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
                    thread_wakeups(),
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
        let d: Vec<f64> = (0..5).map(|i| end[i] - s[i]).collect();
        println!(
            "{}",
            serde_json::json!({"event": "cpu_window", "process_ms": d[0], "loop_ms": d[1], "ingest_ms": d[2], "link_thread_ms": d[3], "loop_wakeups": d[4]})
        );
    });
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        return relay_child();
    }
    if std::env::var_os(FLOOR_CHILD).is_some() {
        return floor_child();
    }
    let model = lanyard_stt::default_model_dir().to_string_lossy().into_owned();
    let n: usize = std::env::var("LANYARD_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let windows: &[(&str, u64)] = match std::env::var("LANYARD_BENCH_WINDOWS").as_deref() {
        Ok("default") => &[("fsync every 200 ms (default)", 200)],
        _ => &[("fsync every 200 ms (default)", 200), ("fsync every 60 s (comparison)", 60_000)],
    };
    for &(label, sync_ms) in windows {
        let runs: Vec<Run> = (0..n).map(|_| run_once(&model, sync_ms)).collect();
        let floors: Vec<(f64, f64)> = runs.iter().map(|r| r.floor).collect();
        let stat = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let (relay, relay_min, relay_max) = stat(|r| r.relay);
        let (floor, floor_min, floor_max) = median(floors.iter().map(|(w, r)| w + r).collect());
        let ratio = median(runs.iter().zip(&floors).map(|(r, (w, f))| r.relay / (w + f)).collect()).0;
        println!("relay process, {label}, {n} runs of {:.1} s of audio each:", runs[0].audio_s);
        println!(
            "  relay CPU per second of audio while streaming: median {relay:.3} ms (min {relay_min:.3}, max {relay_max:.3})   bar <= 1.0 ms"
        );
        println!("    loop thread (uplink, WebSocket, fsync): median {:.3} ms", stat(|r| r.loop_thread).0);
        println!("    ingest on the link thread (reassembly, spool write()): median {:.3} ms", stat(|r| r.ingest).0);
        println!(
            "  floor, the design's system calls alone, run alongside: median {floor:.3} ms (min {floor_min:.3}, max {floor_max:.3})"
        );
        println!("    50 record write()s a second: median {:.3} ms", median(floors.iter().map(|f| f.0).collect()).0);
        println!(
            "    5 rounds a second (timer wake-up, fdatasync when due, send, recv of the ack): median {:.3} ms",
            median(floors.iter().map(|f| f.1).collect()).0
        );
        println!("  relay / floor, run by run: median {ratio:.2}x   bar <= 1.3x");
        let (wk, wk_min, wk_max) = stat(|r| r.loop_wakeups);
        println!(
            "  loop thread wake-ups a second while streaming (voluntary context switches): median {wk:.1} (min {wk_min:.1}, max {wk_max:.1})   bar <= 6"
        );
        let (mm, mm_min, mm_max) = median(runs.iter().map(|r| r.floor_mmap.0 + r.floor_mmap.1).collect());
        println!(
            "  floor of a contract the issue does not allow (mmap'd segment, no fsync of acknowledged frames), alongside:"
        );
        println!(
            "    median {mm:.3} ms (min {mm_min:.3}, max {mm_max:.3}): copies {:.3} ms, rounds {:.3} ms",
            median(runs.iter().map(|r| r.floor_mmap.0).collect()).0,
            median(runs.iter().map(|r| r.floor_mmap.1).collect()).0
        );
        println!(
            "  pendant transport stand-in (simulator socket reads on the link thread): median {:.3} ms",
            stat(|r| r.transport).0
        );
        println!(
            "  whole process over the streaming window: median {:.3} ms; over its life: median {:.3} ms",
            stat(|r| r.process).0,
            stat(|r| r.life_ms_per_audio_s).0
        );
        let (rss, rss_min, rss_max) = stat(|r| r.max_rss_mb);
        println!("  peak RSS: median {rss:.1} MB (min {rss_min:.1}, max {rss_max:.1})   bar <= 8 MB");
    }
    println!(
        "  (streaming: from the first utterance starting to the last acknowledged complete; the process life adds"
    );
    println!("   start-up, spool recovery and the wait for the last replies)");
}
