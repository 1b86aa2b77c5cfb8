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
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use lanyard_proto::ble::{Codec, Framing};
use lanyard_proto::wire::{PushPlatform, PushRegistration};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "lanyard", version, about = "Lanyard: speech from a BLE pendant, through a phone, to a server that answers by push.")]
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
    PendantSim(SimArgs),
    /// Start a server, a pendant simulator and a relay, speak a few sentences
    /// end to end, and report transcripts, replies, latency and word error rate.
    Demo(demo::DemoArgs),
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on. Use 0.0.0.0:PORT to accept phones on the network.
    #[arg(long, env = "LANYARD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory for the SQLite store, audio files and the push sink.
    #[arg(long, env = "LANYARD_DATA_DIR", default_value_os_t = paths::default_server_dir())]
    data_dir: PathBuf,
    /// A CTranslate2 Whisper model directory (any faster-whisper model works).
    /// `scripts/setup` installs the default, Whisper tiny.en.
    #[arg(long, env = "LANYARD_MODEL_DIR", default_value_os_t = paths::default_model_dir())]
    model_dir: PathBuf,
    /// CPU threads for transcription; 0 means all cores.
    #[arg(long, env = "LANYARD_STT_THREADS", default_value_t = 0)]
    stt_threads: usize,
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Register a device and print its token. The token is shown once and
    /// stored only as a hash: keep it.
    Add {
        /// A name to recognise the device by; unique.
        name: String,
        #[arg(long, env = "LANYARD_DATA_DIR", default_value_os_t = paths::default_server_dir())]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
struct RelayArgs {
    /// The server's base URL.
    #[arg(long, env = "LANYARD_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The device token from `lanyard device add`.
    #[arg(long, env = "LANYARD_TOKEN", hide_env_values = true)]
    token: String,
    /// The pendant simulator's address (`lanyard pendant-sim` prints it).
    #[arg(long, default_value = "127.0.0.1:7010")]
    pendant: SocketAddr,
    /// Where audio is spooled before it is sent. Keep it across restarts:
    /// that is what makes a killed relay lose nothing.
    #[arg(long, env = "LANYARD_SPOOL_DIR", default_value_os_t = paths::default_spool_dir())]
    spool_dir: PathBuf,
    /// Register this push token with the server first, as `apns:TOKEN` or `fcm:TOKEN`.
    #[arg(long)]
    push_token: Option<String>,
    /// The fsync window of the spool, in milliseconds.
    #[arg(long, default_value_t = 200)]
    sync_ms: u64,
    /// BLE silence that ends an utterance, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    silence_ms: u64,
    /// Exit once this many replies have arrived and nothing is left to send.
    #[arg(long)]
    exit_after: Option<usize>,
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
struct SimArgs {
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
    /// Start speaking only once a relay has connected.
    #[arg(long)]
    wait_for_central: bool,
    /// A sentence to speak; repeat for several. Defaults to the demo sentences.
    #[arg(long = "say")]
    sentences: Vec<String>,
    /// Keep the pendant up this many seconds after the last sentence.
    #[arg(long, default_value_t = 0)]
    linger_secs: u64,
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
            Command::Device(DeviceCommand::Add { name, data_dir }) => device_add(&name, data_dir).await,
            Command::Relay(args) => relay(args).await,
            Command::PendantSim(args) => pendant_sim(args).await,
            Command::Demo(args) => demo::run(args).await,
        }
    })
}

/// Prints one JSON line on stdout: the machine-readable channel that the
/// demo and tests read. Logs go to stderr.
fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(value).expect("events serialize"));
}

pub fn load_stt(model_dir: &std::path::Path, threads: usize) -> Result<Arc<dyn lanyard_stt::SpeechToText>> {
    let mut cfg = lanyard_stt::WhisperConfig::default();
    if threads > 0 {
        cfg.threads = threads;
    }
    let engine = lanyard_stt::WhisperCt2::load(model_dir, cfg)
        .with_context(|| format!("cannot load the speech model from {}", model_dir.display()))?;
    Ok(Arc::new(engine))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let stt = load_stt(&args.model_dir, args.stt_threads)?;
    let cfg = lanyard_server::ServerConfig { listen: args.listen, data_dir: args.data_dir };
    let server = lanyard_server::start(cfg.clone(), stt).await?;
    print_json(&serde_json::json!({ "event": "listening", "addr": server.addr, "data_dir": cfg.data_dir }));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("stopping");
            server.stop().await;
        }
    }
    Ok(())
}

async fn device_add(name: &str, data_dir: PathBuf) -> Result<()> {
    let cfg = lanyard_server::ServerConfig { listen: ([127, 0, 0, 1], 0).into(), data_dir };
    let (id, token) = add_device(&cfg, name).await?;
    eprintln!("Device {name:?} added as {id}. Its token is shown once; it is stored only as a hash.");
    println!("{token}");
    Ok(())
}

/// Registers a device in the server's store; returns its id and token.
pub async fn add_device(cfg: &lanyard_server::ServerConfig, name: &str) -> Result<(uuid::Uuid, String)> {
    let store = lanyard_server::open_store(cfg).await?;
    let token = lanyard_server::auth::mint_token();
    let id = uuid::Uuid::now_v7();
    store.add_device(id, name, &lanyard_server::auth::hash_token(&token), lanyard_server::now_ms()).await?;
    Ok((id, token))
}

fn parse_push(s: &str) -> Result<PushRegistration> {
    let (platform, token) = s.split_once(':').context("--push-token must be apns:TOKEN or fcm:TOKEN")?;
    let platform = match platform {
        "apns" => PushPlatform::Apns,
        "fcm" => PushPlatform::Fcm,
        other => bail!("push platform {other:?} is unknown; use apns or fcm"),
    };
    Ok(PushRegistration { platform, token: token.to_string() })
}

async fn relay(args: RelayArgs) -> Result<()> {
    let push = args.push_token.as_deref().map(parse_push).transpose()?;
    let cfg = lanyard_relay::HostConfig {
        spool_dir: args.spool_dir,
        server: args.server,
        token: args.token,
        pendant: args.pendant,
        sync_interval: Duration::from_millis(args.sync_ms.max(1)),
        boundary: lanyard_relay::boundary::BoundaryConfig { silence_timeout_ms: args.silence_ms },
        uplink: Default::default(),
        push,
        exit_after: args.exit_after,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            print_json(&ev);
        }
    });
    let result = tokio::select! {
        r = lanyard_relay::run(cfg, tx) => r.context("relay failed"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let _ = printer.await;
    result
}

async fn pendant_sim(args: SimArgs) -> Result<()> {
    let sentences = if args.sentences.is_empty() {
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
        wait_for_central: args.wait_for_central,
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
