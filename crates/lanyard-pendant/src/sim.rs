//! A simulated pendant.
//!
//! It speaks a list of sentences: each is synthesized, cut into 20 ms frames,
//! encoded with libopus (or sent as PCM16), packetized with the real framing
//! for the configured ATT MTU, and sent at real-time pace, one frame every
//! 20 ms, as a pendant's microphone would produce them.
//!
//! The radio is a loopback TCP socket carrying `lanyard_proto::link` records.
//! Like a BLE peripheral, the simulator keeps talking whether or not a central
//! is connected: notifications sent while no relay listens are lost, exactly
//! as over the air. When a relay (re)connects it gets an advertisement first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lanyard_audio::{FRAME_SAMPLES, FrameEncoder};
use lanyard_proto::ble::{Codec, Framing};
use lanyard_proto::link::Record;
use lanyard_proto::omi::OmiCodec;
use serde::Serialize;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc};

use crate::packetizer::Packetizer;
use crate::speech::{self, SpeechError, Voice};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub framing: Framing,
    pub codec: Codec,
    /// The negotiated ATT MTU. 23 is the BLE minimum (heavy fragmentation);
    /// iOS usually negotiates 185.
    pub att_mtu: u16,
    pub sentences: Vec<String>,
    pub voice: Voice,
    /// Silence between utterances, during which the pendant sends nothing.
    pub gap: Duration,
    /// Hold the first utterance until a relay is connected.
    pub wait_for_central: bool,
}

/// What the simulator did, with Unix-ms timestamps, for the demo's latency figures.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SimEvent {
    Listening { addr: SocketAddr },
    CentralConnected { at_ms: u64 },
    UtteranceStart { index: usize, text: String, at_ms: u64, frames: usize },
    /// The last frame of the utterance was handed to the radio: end of speech.
    UtteranceEnd { index: usize, at_ms: u64, frames: usize, dropped_notifications: u64 },
    Done { at_ms: u64 },
}

#[derive(Debug, Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Speech(#[from] SpeechError),
    #[error("audio: {0}")]
    Audio(#[from] lanyard_audio::AudioError),
    #[error("framing: {0}")]
    Packetize(#[from] lanyard_proto::ble::PacketizeError),
    #[error("Omi framing carries Opus (codec 21) or PCM16 (codec 0) only")]
    OmiCodec,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The advertisement a relay receives on connect.
fn advertisement(cfg: &SimConfig) -> Result<Record, SimError> {
    let codec = match cfg.framing {
        Framing::Lanyard => cfg.codec.id(),
        Framing::Omi => match cfg.codec {
            Codec::Opus16k20ms => OmiCodec::OpusFs320.id(),
            Codec::Pcm16k => OmiCodec::Pcm16.id(),
        },
    };
    Ok(Record::Advertise { service: cfg.framing.service(), att_mtu: cfg.att_mtu, codec })
}

type Central = Arc<Mutex<Option<OwnedWriteHalf>>>;

/// Runs the simulator until every sentence has been spoken.
pub async fn run(cfg: SimConfig, events: mpsc::UnboundedSender<SimEvent>) -> Result<(), SimError> {
    // Synthesize and encode everything first, so pacing is not disturbed.
    let mut utterances = Vec::with_capacity(cfg.sentences.len());
    for text in &cfg.sentences {
        let pcm = speech::synthesize(text, &cfg.voice)?;
        let mut enc = FrameEncoder::new(cfg.codec)?;
        let mut frames = Vec::new();
        for chunk in pcm.chunks(FRAME_SAMPLES) {
            let mut block = chunk.to_vec();
            block.resize(FRAME_SAMPLES, 0);
            frames.push(enc.encode(&block)?);
        }
        utterances.push((text.clone(), frames));
    }
    let advert = advertisement(&cfg)?.encode();

    let listener = TcpListener::bind(cfg.listen).await.map_err(|source| SimError::Bind { addr: cfg.listen, source })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind { addr: cfg.listen, source })?;
    let _ = events.send(SimEvent::Listening { addr });

    let central: Central = Arc::new(Mutex::new(None));
    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
    let accept = tokio::spawn({
        let central = central.clone();
        let events = events.clone();
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (_read, mut write) = stream.into_split();
                if write.write_all(&advert).await.is_err() {
                    continue;
                }
                *central.lock().await = Some(write);
                let _ = events.send(SimEvent::CentralConnected { at_ms: now_ms() });
                let _ = connected_tx.send(());
            }
        }
    });

    if cfg.wait_for_central {
        connected_rx.recv().await;
    }

    let mut packetizer = Packetizer::new(cfg.framing, usize::from(cfg.att_mtu))?;
    let mut dropped = 0u64;
    for (index, (text, frames)) in utterances.into_iter().enumerate() {
        let _ = events.send(SimEvent::UtteranceStart { index, text, at_ms: now_ms(), frames: frames.len() });
        let mut pace = tokio::time::interval(Duration::from_millis(u64::from(Codec::FRAME_MS)));
        let last = frames.len().saturating_sub(1);
        for (i, frame) in frames.iter().enumerate() {
            pace.tick().await;
            for n in packetizer.frame(cfg.codec, frame, i == 0, i == last)? {
                if !send(&central, &Record::Notify(n).encode()).await {
                    dropped += 1;
                }
            }
        }
        let _ = events.send(SimEvent::UtteranceEnd {
            index,
            at_ms: now_ms(),
            frames: frames.len(),
            dropped_notifications: dropped,
        });
        tokio::time::sleep(cfg.gap).await;
    }
    let _ = events.send(SimEvent::Done { at_ms: now_ms() });
    accept.abort();
    Ok(())
}

/// Sends one record to the connected central; false if none is listening.
async fn send(central: &Central, bytes: &[u8]) -> bool {
    let mut guard = central.lock().await;
    let Some(w) = guard.as_mut() else { return false };
    if w.write_all(bytes).await.is_ok() {
        true
    } else {
        // The central went away: the notification is lost, as over the air.
        *guard = None;
        false
    }
}
