//! `lanyard`: one binary for every role.
//!
//! Each subcommand is a thin shell over a library crate: `serve` over
//! `lanyard-server`, `relay` over `lanyard-relay`, `pendant-sim` over
//! `lanyard-pendant`. `demo` runs all three as separate processes, the way
//! they run in production, and reports what happened to each utterance.

mod demo;
mod paths;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use lanyard_proto::ble::{Codec, Framing};
use lanyard_proto::wire::{PushPlatform, PushRegistration};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "lanyard",
    version,
    about = "Lanyard: speech from a BLE pendant, through a phone, to a server that answers by push."
)]
#[command(long_about = "Lanyard: speech from a BLE pendant, through a phone, to a server that answers by push.\n\n\
Roles: the pendant (a microphone on BLE), the relay (the phone-side core that spools audio to disk and \
streams it), and the server (durable ingest, Whisper transcription, replies, push).\n\n\
Try `lanyard demo` to see one utterance go all the way through, or `scripts/demo` to install what it needs first.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: WebSocket ingest, HTTP upload, transcription, replies, push.
    Serve(ServeArgs),
    /// Manage devices (the phones that may stream).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Run a relay on this host: take a pendant's audio, spool it, stream it.
    Relay(RelayArgs),
    /// Run a simulated pendant that speaks synthesized sentences.
    PendantSim(PendantSimArgs),
    /// Start a server, a pendant simulator and a relay, speak a few sentences
    /// end to end, and report transcripts, replies, latency and word error rate.
    Demo(demo::DemoArgs),
    /// Benchmarks: `lanyard bench ingest` measures how many live streams a
    /// server carries, with ack latency, RSS and CPU.
    #[command(subcommand)]
    #[cfg(feature = "bench")]
    Bench(lanyard_bench::BenchCommand),
    /// Run a fault campaign from a scenario file: many pendants and relays under a
    /// simulated iOS lifecycle, real faults, and an account of every utterance.
    #[cfg(feature = "sim")]
    Sim(lanyard_sim::CampaignArgs),
}

/// Settings come from, in rising precedence: built-in defaults, the TOML file
/// given by --config, LANYARD_* environment variables, and these flags.
#[derive(Args, Clone)]
#[command(after_long_help = "Precedence, later wins: built-in defaults < the TOML file (--config) < \
LANYARD_* environment variables < flags.\n\n\
The TOML file also configures what flags do not: [responder] (builtin, webhook or llm), [push] retry policy, \
[push.apns] (.p8 key, key id, team id, topic) and [push.fcm] (service account). Without [push.apns] or \
[push.fcm], push requests are written to push-sink.jsonl in the data directory and reach no phone. \
A mistake in any section stops the start with a message that says what to fix.\n\n\
Speech-to-text ([stt], --stt-*): `local` (the default) loads the Whisper model from --model-dir. `remote` \
loads no model and sends each utterance to an OpenAI-compatible POST .../audio/transcriptions endpoint: \
OpenAI, Groq, a faster-whisper server, or another Lanyard server, which serves the same endpoint with one of \
its device tokens as the key. In the TOML file: url, api_key_env (or api_key), model, language, \
timeout_secs, max_attempts. With backend = remote, --model-dir and --stt-threads are ignored.\n\n\
Audio retention ([audio] retention_days, default 30): the audio files of finished utterances are deleted \
that many days after they were recorded; transcripts and replies stay. 0 keeps audio forever.\n\n\
Examples:\n  lanyard serve --listen 0.0.0.0:8080 --config /etc/lanyard/server.toml\n  \
LANYARD_STT_API_KEY=$GROQ_API_KEY lanyard serve --stt-backend remote --stt-url https://api.groq.com/openai/v1 \
--stt-model whisper-large-v3\n  \
LANYARD_STT_API_KEY=lyd_... lanyard serve --stt-backend remote --stt-url http://gpu-node:8080/v1")]
pub struct ServeArgs {
    /// A TOML config file (see `lanyard-server`'s config module doc for every key)
    /// [env: LANYARD_CONFIG].
    #[arg(long, value_name = "TOML")]
    config: Option<PathBuf>,
    /// Address to listen on [env: LANYARD_LISTEN] [default: 127.0.0.1:8080]. To
    /// accept phones on the network (0.0.0.0:PORT), serve TLS: --tls-cert and
    /// --tls-key, or a TLS proxy in front of a loopback address. Device tokens and
    /// audio must not cross a network in clear text, and relays refuse plain
    /// http:// to another machine.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Terminate TLS with this certificate chain (PEM, the server's first);
    /// with --tls-key. Overrides the config file's [tls] [env: LANYARD_TLS_CERT].
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1) [env: LANYARD_TLS_KEY].
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Directory for the SQLite store, audio files and the push sink
    /// [env: LANYARD_DATA_DIR] [default: ~/.local/share/lanyard/server].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A CTranslate2 Whisper model directory (any faster-whisper model works)
    /// [env: LANYARD_MODEL_DIR] [default: ~/.local/share/lanyard/models/whisper-tiny.en,
    /// which `scripts/setup` installs].
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// CPU threads for transcription [env: LANYARD_STT_THREADS] [default: 0, all cores].
    #[arg(long)]
    stt_threads: Option<usize>,
    /// Where speech is transcribed: `local` (the Whisper model here) or `remote`
    /// (an OpenAI-compatible endpoint, --stt-url) [env: LANYARD_STT_BACKEND] [default: local].
    #[arg(long, value_name = "local|remote")]
    stt_backend: Option<lanyard_server::config::SttBackendKind>,
    /// Remote: the endpoint's base URL (https://api.openai.com/v1, http://other-node:8080/v1)
    /// or its full .../audio/transcriptions URL [env: LANYARD_STT_URL].
    #[arg(long, value_name = "URL")]
    stt_url: Option<String>,
    /// Remote: the bearer key (for a Lanyard node, one of its device tokens). Prefer the
    /// environment variable, LANYARD_STT_API_KEY: a flag is visible to other users in the
    /// process list.
    #[arg(long, value_name = "KEY")]
    stt_api_key: Option<lanyard_proto::Secret>,
    /// Remote: the `model` field [env: LANYARD_STT_MODEL] [default: whisper-1].
    #[arg(long)]
    stt_model: Option<String>,
    /// Remote: seconds to wait for each attempt [env: LANYARD_STT_TIMEOUT_SECS] [default: 60].
    #[arg(long, value_name = "SECS")]
    stt_timeout_secs: Option<u64>,
}

impl ServeArgs {
    /// The flags' layer of the server's configuration.
    fn overrides(self) -> lanyard_server::config::Overrides {
        lanyard_server::config::Overrides {
            config: self.config,
            listen: self.listen,
            data_dir: self.data_dir,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            model_dir: self.model_dir,
            stt_threads: self.stt_threads,
            stt_backend: self.stt_backend,
            stt_url: self.stt_url,
            stt_api_key: self.stt_api_key,
            stt_model: self.stt_model,
            stt_timeout_secs: self.stt_timeout_secs,
        }
    }
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Register a device and print its token. The token is shown once and
    /// stored only as a hash: keep it.
    Add {
        /// A name to recognise the device by; unique.
        name: String,
        /// The server's data directory, found as `lanyard serve` finds it
        /// [env: LANYARD_DATA_DIR] [default: the config file's data_dir, else
        /// ~/.local/share/lanyard/server].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The server's TOML config file, for its data_dir [env: LANYARD_CONFIG].
        #[arg(long, value_name = "TOML")]
        config: Option<PathBuf>,
    },
}

/// The simulator's address when neither `--sim` nor `--ble` is given; the
/// same default as `lanyard pendant-sim --listen`.
const DEFAULT_SIM_ADDR: &str = "127.0.0.1:7010";

#[derive(Args)]
#[command(after_long_help = "Where the audio comes from, one of:\n  \
--sim ADDR   a pendant simulator (`lanyard pendant-sim`) over loopback TCP; the default, at 127.0.0.1:7010\n  \
--ble        a real pendant over Bluetooth LE through BlueZ: the first one that advertises the Lanyard or \
Omi service, or only the one --ble-name picks. Needs bluetoothd running and the adapter powered \
(`bluetoothctl power on`); run as root or as a user in the `bluetooth` group.\n\n\
Both feed the same relay: spool, utterance boundaries, uplink. A lost pendant is looked for again, forever.\n\n\
Examples:\n  \
lanyard pendant-sim --wait-for-central &\n  \
lanyard relay --token TOKEN --sim 127.0.0.1:7010\n  \
lanyard relay --server https://lanyard.example.com --token TOKEN --ble --ble-name omi")]
struct RelayArgs {
    /// The server's base URL: https:// (plain http:// only to this machine,
    /// unless --insecure).
    #[arg(long, env = "LANYARD_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Allow http:// to a server that is not on this machine. The device
    /// token and the audio then cross the network in clear text: only on a
    /// network you trust, never in production.
    #[arg(long)]
    insecure: bool,
    /// Trust this CA certificate (PEM) besides the built-in roots: a private
    /// CA, or a self-signed server's. May be given more than once.
    #[arg(long, value_name = "PEM")]
    ca_cert: Vec<PathBuf>,
    /// The device token from `lanyard device add`.
    #[arg(long, env = "LANYARD_TOKEN", hide_env_values = true)]
    token: lanyard_proto::Secret,
    /// Take audio from a pendant simulator at ADDR (`lanyard pendant-sim`
    /// prints it) [default: 127.0.0.1:7010, unless --ble].
    // `--pendant` was this flag's name before `--ble` existed; kept, hidden,
    // so existing scripts (and the demo and tests) keep working.
    #[arg(long, value_name = "ADDR", alias = "pendant", conflicts_with = "ble")]
    sim: Option<SocketAddr>,
    /// Take audio from a real pendant over Bluetooth LE (BlueZ on Linux):
    /// the first that advertises the Lanyard or Omi service.
    #[arg(long)]
    ble: bool,
    /// With --ble: only a pendant whose advertised name contains NAME
    /// (ignoring case), or whose address is NAME (AA:BB:CC:DD:EE:FF).
    #[arg(long, value_name = "NAME", requires = "ble")]
    ble_name: Option<String>,
    /// Where audio is spooled before it is sent. Keep it across restarts:
    /// that is what makes a killed relay lose nothing.
    #[arg(long, env = "LANYARD_SPOOL_DIR", default_value_os_t = paths::default_spool_dir())]
    spool_dir: PathBuf,
    /// Register this push token with the server first, as `apns:TOKEN` or `fcm:TOKEN`.
    #[arg(long)]
    push_token: Option<String>,
    /// The fsync window of the spool, in milliseconds: how much audio an OS
    /// crash may lose.
    #[arg(long, default_value_t = lanyard_relay::config::DEFAULT_SYNC_INTERVAL.as_millis() as u64)]
    sync_ms: u64,
    /// BLE silence that ends an utterance, in milliseconds.
    #[arg(long, default_value_t = lanyard_relay::config::DEFAULT_SILENCE_TIMEOUT_MS)]
    silence_ms: u64,
    /// Exit once this many replies have arrived and nothing is left to send.
    #[arg(long)]
    exit_after: Option<usize>,
    /// Read lifecycle commands from stdin, one per line, as a phone app
    /// reports them: `foreground`, `background MS` (ms of background time
    /// left), `suspend`, `upload-ok ID`, `upload-failed ID`, `shutdown`.
    #[arg(long)]
    control_stdin: bool,
    /// Carry out upload tasks here (PUT the sealed file) instead of leaving
    /// them to a phone's background session: the Linux host's way.
    #[arg(long)]
    self_upload: bool,
    /// Discard utterances older than this many seconds (stale replies).
    #[arg(long, default_value_t = lanyard_relay::config::DEFAULT_TTL_MS / 1000)]
    ttl_secs: u64,
    /// Make every spool fsync take this many milliseconds longer: a slow
    /// disk, for fault campaigns (`lanyard sim`). Leave at 0 otherwise.
    #[arg(long, default_value_t = 0, hide_short_help = true)]
    fsync_delay_ms: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum FramingArg {
    Lanyard,
    Omi,
}

#[derive(Clone, Copy, ValueEnum)]
enum CodecArg {
    Opus,
    Pcm16,
}

#[derive(Args)]
struct PendantSimArgs {
    /// Address the simulated pendant listens on; a relay connects to it.
    #[arg(long, default_value = "127.0.0.1:7010")]
    listen: SocketAddr,
    /// Which framing to speak: Lanyard's own or Omi's.
    #[arg(long, value_enum, default_value_t = FramingArg::Lanyard)]
    framing: FramingArg,
    #[arg(long, value_enum, default_value_t = CodecArg::Opus)]
    codec: CodecArg,
    /// The negotiated ATT MTU: 23 (the BLE minimum) forces fragmentation.
    #[arg(long, default_value_t = 185)]
    mtu: u16,
    /// espeak-ng voice.
    #[arg(long, default_value = "en-us")]
    voice: String,
    /// Speaking rate in words per minute.
    #[arg(long, default_value_t = 150)]
    rate: u32,
    /// Silence between utterances, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    gap_ms: u64,
    /// Send silent frames through the gaps, with no utterance markers, as an
    /// Omi pendant streams: only the server's voice activity detection
    /// (its `endpoint` messages) then splits the utterances.
    #[arg(long)]
    continuous: bool,
    /// Start speaking only once a relay has connected.
    #[arg(long)]
    wait_for_central: bool,
    /// A sentence to speak; repeat for several. Defaults to the demo sentences.
    #[arg(long = "say")]
    sentences: Vec<String>,
    /// A recording of real speech and its transcript, spoken after the
    /// sentences; repeat for several. Any file sox reads, or a `.raw` file of
    /// 16 kHz mono 16-bit PCM; it is resampled to 16 kHz mono.
    #[arg(long = "say-wav", value_name = "PATH=TRANSCRIPT", value_parser = parse_recording)]
    recordings: Vec<lanyard_pendant::sim::Recording>,
    /// Keep the pendant up this many seconds after the last sentence.
    #[arg(long, default_value_t = 0)]
    linger_secs: u64,
    /// Hold each sentence until a relay is connected, reporting
    /// `waiting_for_central` (a phone app being relaunched on the next BLE event).
    #[arg(long)]
    hold_until_central: bool,
    /// Fault injection: lose each notification with this probability (0 to 1).
    #[arg(long, default_value_t = 0.0, hide_short_help = true)]
    drop_rate: f64,
    /// Fault injection: send a frame after the next one with this probability (0 to 1).
    #[arg(long, default_value_t = 0.0, hide_short_help = true)]
    reorder_rate: f64,
    /// Seed for --drop-rate and --reorder-rate, so a run can be replayed.
    #[arg(long, default_value_t = 0, hide_short_help = true)]
    fault_seed: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("LANYARD_LOG").unwrap_or_else(|_| EnvFilter::new("warn,lanyard=info")))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Device(DeviceCommand::Add { name, data_dir, config }) => device_add(&name, data_dir, config).await,
            Command::Relay(args) => relay(args).await,
            Command::PendantSim(args) => pendant_sim(args).await,
            Command::Demo(args) => demo::run(args).await,
            #[cfg(feature = "bench")]
            Command::Bench(cmd) => lanyard_bench::run(cmd).await,
            #[cfg(feature = "sim")]
            Command::Sim(args) => lanyard_sim::run(args).await,
        }
    })
}

/// Prints one JSON line on stdout: the machine-readable channel that the
/// demo and tests read. Logs go to stderr.
fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(value).expect("events serialize"));
}

async fn serve(args: ServeArgs) -> Result<()> {
    use lanyard_server::config::{load, process_env};
    let lanyard_server::config::Loaded { server: cfg, stt: stt_backend } = load(args.overrides(), &process_env)?;
    // Check the configuration before the model loads, so a typo fails at once.
    lanyard_server::validate(&cfg)?;
    let stt = lanyard_server::build_stt(&stt_backend).context("cannot start speech-to-text")?;
    let server = lanyard_server::start(cfg.clone(), stt).await?;
    print_json(&lanyard_server::ServeEvent::Listening {
        addr: server.addr,
        url: server.url(),
        data_dir: cfg.data_dir.clone(),
    });
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("stopping");
            server.stop().await;
        }
    }
    Ok(())
}

async fn device_add(name: &str, data_dir: Option<PathBuf>, config: Option<PathBuf>) -> Result<()> {
    let flags = lanyard_server::config::Overrides { data_dir, config, ..Default::default() };
    let data_dir = lanyard_server::config::data_dir(flags, &lanyard_server::config::process_env)?;
    let cfg = lanyard_server::ServerConfig::new(([127, 0, 0, 1], 0).into(), data_dir);
    let (id, token) = add_device(&cfg, name).await?;
    eprintln!("Device {name:?} added as {id}. Its token is shown once; it is stored only as a hash.");
    println!("{token}");
    Ok(())
}

/// Registers a device in the server's store, with the checks the admin API
/// makes; returns its id and token.
pub async fn add_device(cfg: &lanyard_server::ServerConfig, name: &str) -> Result<(uuid::Uuid, String)> {
    let store = lanyard_server::open_store(cfg).await?;
    let created = lanyard_server::devices::register(store.as_ref(), name).await?;
    Ok((created.id, created.token))
}

fn parse_push(s: &str) -> Result<PushRegistration> {
    let (platform, token) = s.split_once(':').context("--push-token must be apns:TOKEN or fcm:TOKEN")?;
    let platform: PushPlatform = platform.parse()?;
    Ok(PushRegistration { platform, token: token.to_string(), environment: Default::default() })
}

async fn relay(args: RelayArgs) -> Result<()> {
    let push = args.push_token.as_deref().map(parse_push).transpose()?;
    let mut cfg = lanyard_relay::HostConfig::new(args.spool_dir, args.server, args.token.expose());
    cfg.sync_interval = Duration::from_millis(args.sync_ms.max(1));
    cfg.boundary.silence_timeout_ms = args.silence_ms;
    cfg.planner.ttl_ms = args.ttl_secs * 1000;
    cfg.push = push;
    cfg.exit_after = args.exit_after;
    cfg.fsync_delay = Duration::from_millis(args.fsync_delay_ms);
    cfg.insecure = args.insecure;
    cfg.extra_root_certs = args.ca_cert.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<lanyard_relay::host::Stamped>();
    let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel::<lanyard_relay::Control>();
    let (relay, link) = lanyard_relay::open(cfg, tx).context("cannot start the relay")?;
    // The uploads this host carries out trust what the stream trusts.
    let http = relay.http_client();
    let self_upload = args.self_upload;
    let uploads = control_tx.clone();
    let printer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            print_json(&ev);
            if let (true, lanyard_relay::RelayEvent::UploadTask { id, path, url, method, headers }) =
                (self_upload, &ev.event)
            {
                tokio::spawn(upload(
                    http.clone(),
                    *id,
                    path.clone(),
                    url.clone(),
                    method.clone(),
                    headers.clone(),
                    uploads.clone(),
                ));
            }
        }
    });
    if args.control_stdin {
        tokio::spawn(read_control(control_tx.clone()));
    }
    let link_rx = spawn_link(args.sim, args.ble, args.ble_name, link)?;
    let result = tokio::select! {
        r = relay.run(link_rx, control_rx) => r.context("relay failed"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let _ = printer.await;
    result
}

/// Starts the pendant link the flags chose. The simulator's socket is read
/// on a thread of its own that spools each notification through the relay's
/// `PendantPort` as it arrives, as CoreBluetooth's queue does through the FFI.
/// btleplug delivers on the async runtime, through the returned channel.
fn spawn_link(
    sim: Option<SocketAddr>,
    ble: bool,
    ble_name: Option<String>,
    link: lanyard_relay::PendantPort,
) -> Result<Option<tokio::sync::mpsc::Receiver<lanyard_relay::link::LinkEvent>>> {
    if ble {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        spawn_ble_link(ble_name, tx)?;
        return Ok(Some(rx));
    }
    let addr = match sim {
        Some(addr) => addr,
        None => DEFAULT_SIM_ADDR.parse().expect("the default simulator address parses"),
    };
    let deliver = link.clone();
    lanyard_relay::link::spawn_sim_link_thread(addr, move || link.is_stopped(), move |ev| deliver.event(ev))
        .context("cannot start the pendant link thread")?;
    Ok(None)
}

#[cfg(feature = "ble")]
fn spawn_ble_link(name: Option<String>, tx: tokio::sync::mpsc::Sender<lanyard_relay::link::LinkEvent>) -> Result<()> {
    let opts = lanyard_relay::ble::BleOptions { name, ..Default::default() };
    tokio::spawn(lanyard_relay::ble::run_ble_link(opts, tx));
    Ok(())
}

#[cfg(not(feature = "ble"))]
fn spawn_ble_link(_: Option<String>, _: tokio::sync::mpsc::Sender<lanyard_relay::link::LinkEvent>) -> Result<()> {
    anyhow::bail!(
        "this lanyard was built without Bluetooth support; rebuild with the `ble` feature (the default), which needs libdbus-1-dev"
    )
}

/// Performs one upload task, as a background URLSession would.
async fn upload(
    http: reqwest::Client,
    id: uuid::Uuid,
    path: String,
    url: String,
    method: String,
    headers: Vec<(String, String)>,
    control: tokio::sync::mpsc::UnboundedSender<lanyard_relay::Control>,
) {
    let ok = async {
        let body = tokio::fs::read(&path).await.ok()?;
        let method = reqwest::Method::from_bytes(method.as_bytes()).ok()?;
        let mut req = http.request(method, &url).body(body);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.ok()?;
        if !resp.status().is_success() {
            tracing::warn!(%id, status = %resp.status(), "upload refused");
        }
        Some(resp.status().is_success())
    }
    .await
    .unwrap_or(false);
    let _ = control.send(lanyard_relay::Control::UploadFinished { id, ok });
}

/// Reads lifecycle commands from stdin (see `--control-stdin`).
async fn read_control(control: tokio::sync::mpsc::UnboundedSender<lanyard_relay::Control>) {
    use lanyard_relay::{Control, Lifecycle};
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        let cmd = match (words.next(), words.next()) {
            (Some("foreground"), None) => Control::Lifecycle(Lifecycle::Foreground),
            (Some("background"), Some(ms)) if ms.parse::<u64>().is_ok() => {
                Control::Lifecycle(Lifecycle::Background { remaining_ms: ms.parse().unwrap_or(0) })
            }
            (Some("suspend"), None) => Control::Lifecycle(Lifecycle::WillSuspend),
            (Some(kind @ ("upload-ok" | "upload-failed")), Some(id)) if uuid::Uuid::parse_str(id).is_ok() => {
                Control::UploadFinished { id: uuid::Uuid::parse_str(id).unwrap_or_default(), ok: kind == "upload-ok" }
            }
            (Some("shutdown"), None) => Control::Shutdown,
            (None, _) => continue,
            _ => {
                eprintln!("lanyard relay: unknown control command {line:?}; see `lanyard relay --help`");
                continue;
            }
        };
        if control.send(cmd).is_err() {
            return;
        }
    }
}

/// `--say-wav PATH=TRANSCRIPT`: the path ends at the first `=`.
fn parse_recording(arg: &str) -> Result<lanyard_pendant::sim::Recording, String> {
    match arg.split_once('=') {
        Some((path, transcript)) if !path.is_empty() && !transcript.trim().is_empty() => {
            Ok(lanyard_pendant::sim::Recording { path: path.into(), transcript: transcript.trim().to_string() })
        }
        _ => Err(format!("expected PATH=TRANSCRIPT, got {arg:?}")),
    }
}

async fn pendant_sim(args: PendantSimArgs) -> Result<()> {
    let sentences = if args.sentences.is_empty() && args.recordings.is_empty() {
        lanyard_pendant::speech::DEMO_SENTENCES.iter().map(|s| s.to_string()).collect()
    } else {
        args.sentences
    };
    let cfg = lanyard_pendant::sim::SimConfig {
        listen: args.listen,
        framing: match args.framing {
            FramingArg::Lanyard => Framing::Lanyard,
            FramingArg::Omi => Framing::Omi,
        },
        codec: match args.codec {
            CodecArg::Opus => Codec::Opus16k20ms,
            CodecArg::Pcm16 => Codec::Pcm16k,
        },
        att_mtu: args.mtu,
        sentences,
        voice: lanyard_pendant::speech::Voice { name: args.voice, rate: args.rate },
        gap: Duration::from_millis(args.gap_ms),
        continuous: args.continuous,
        wait_for_central: args.wait_for_central,
        hold_until_central: args.hold_until_central,
        faults: lanyard_pendant::sim::BleFaults {
            drop_rate: args.drop_rate,
            reorder_rate: args.reorder_rate,
            seed: args.fault_seed,
        },
        recordings: args.recordings,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            print_json(&ev);
        }
    });
    lanyard_pendant::sim::run(cfg, tx).await.context("pendant simulator failed")?;
    let _ = printer.await;
    tokio::time::sleep(Duration::from_secs(args.linger_secs)).await;
    Ok(())
}
