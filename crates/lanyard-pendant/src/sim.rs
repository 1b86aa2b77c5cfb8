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
//!
//! After its sentences it can also speak recordings of real people
//! ([`Recording`]): read from a file and resampled to 16 kHz mono, then sent
//! exactly like synthesized speech.
//!
//! Two options exist for `lanyard sim`'s fault campaigns:
//!
//! - [`BleFaults`]: lose a fraction of notifications, and deliver a fraction
//!   of frames after the frame that follows them (reordering), from a seeded
//!   generator so a campaign can be replayed. BLE's link layer retransmits,
//!   so on a real link these come from pendant buffers overflowing and from
//!   reconnects; here they are injected on purpose, and counted per utterance.
//! - [`SimConfig::hold_until_central`]: a pendant that finds no central when
//!   an utterance is due says so ([`SimEvent::WaitingForCentral`]) and holds
//!   it until one connects, as a pendant that buffers speech while the phone
//!   app is being relaunched. A relay that disappears mid-utterance is
//!   noticed at once (its side of the socket closes) and the rest of that
//!   utterance is lost over the air.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lanyard_audio::{FRAME_SAMPLES, FrameEncoder};
use lanyard_proto::ble::{Codec, Framing};
use lanyard_proto::link::Record;
use lanyard_proto::omi::OmiCodec;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// Silence between utterances, during which the pendant sends nothing
    /// (or, with `continuous`, silent frames).
    pub gap: Duration,
    /// Stream silent frames through the gaps, with no boundary markers, as
    /// an Omi pendant does: the BLE data never pauses, so only the server's
    /// voice activity detector can tell where an utterance ends.
    pub continuous: bool,
    /// Hold the first utterance until a relay is connected.
    pub wait_for_central: bool,
    /// Hold every utterance until a relay is connected (see the module doc).
    pub hold_until_central: bool,
    /// Injected notification loss and frame reordering; none by default.
    pub faults: BleFaults,
    /// Recordings of real speech, spoken after `sentences`.
    pub recordings: Vec<Recording>,
}

/// A recording of real speech and what is said in it: an utterance the
/// pendant reads from a file ([`speech::load_recording`]) instead of
/// synthesizing, with its transcript as the utterance's text.
#[derive(Debug, Clone)]
pub struct Recording {
    pub path: std::path::PathBuf,
    pub transcript: String,
}

/// Injected BLE faults (see the module doc). Rates are probabilities in 0..=1.
#[derive(Debug, Clone, Copy, Default)]
pub struct BleFaults {
    /// Each notification is lost with this probability.
    pub drop_rate: f64,
    /// Each frame (but an utterance's last) is held back and sent after the
    /// next frame with this probability. The relay's reorder window (4 frames)
    /// puts such a pair back in order.
    pub reorder_rate: f64,
    /// Seed of the generator that picks the victims.
    pub seed: u64,
}

/// What the simulator did, with Unix-ms timestamps, for the demo's latency
/// figures. `lanyard pendant-sim` prints each as a JSON line; the demo, the
/// campaign and the tests read them back with this type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SimEvent {
    Listening {
        addr: SocketAddr,
    },
    CentralConnected {
        at_ms: u64,
    },
    /// An utterance is due but no central is connected; with
    /// `hold_until_central` it waits for one (a phone app relaunched by the
    /// system on the pendant's next BLE event).
    WaitingForCentral {
        index: usize,
        at_ms: u64,
    },
    UtteranceStart {
        index: usize,
        text: String,
        at_ms: u64,
        frames: usize,
    },
    /// The last frame of the utterance was handed to the radio: end of speech.
    /// `dropped_notifications` counts, since start, notifications no central
    /// received; `injected_drops` and `reordered_frames` count this
    /// utterance's injected faults ([`BleFaults`]).
    UtteranceEnd {
        index: usize,
        at_ms: u64,
        frames: usize,
        dropped_notifications: u64,
        injected_drops: u64,
        reordered_frames: u64,
    },
    Done {
        at_ms: u64,
    },
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

/// The connected central's write half, tagged with its connection number so
/// that the watcher of an old connection never clears a newer one.
type Central = Arc<Mutex<Option<(u64, OwnedWriteHalf)>>>;

/// Runs the simulator until every sentence has been spoken.
pub async fn run(cfg: SimConfig, events: mpsc::UnboundedSender<SimEvent>) -> Result<(), SimError> {
    // Synthesize and encode everything first, so pacing is not disturbed.
    let mut utterances = Vec::with_capacity(cfg.sentences.len());
    for text in &cfg.sentences {
        let pcm = speech::synthesize(text, &cfg.voice)?;
        utterances.push((text.clone(), encode_utterance(cfg.codec, &pcm)?));
    }
    for rec in &cfg.recordings {
        let pcm = speech::load_recording(&rec.path)?;
        utterances.push((rec.transcript.clone(), encode_utterance(cfg.codec, &pcm)?));
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
            let mut generation = 0u64;
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (mut read, mut write) = stream.into_split();
                if write.write_all(&advert).await.is_err() {
                    continue;
                }
                generation += 1;
                *central.lock().await = Some((generation, write));
                // The relay never writes on this link: end of stream means it
                // went away (closed, or killed and its socket closed by the OS).
                let watched = central.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
                    let mut guard = watched.lock().await;
                    if guard.as_ref().is_some_and(|(g, _)| *g == generation) {
                        *guard = None;
                    }
                });
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
    let mut rng = StdRng::seed_from_u64(cfg.faults.seed);
    let faults = cfg.faults;
    let mut chance = move |p: f64| p > 0.0 && rng.gen_bool(p.min(1.0));
    for (index, (text, frames)) in utterances.into_iter().enumerate() {
        if cfg.hold_until_central && central.lock().await.is_none() {
            let _ = events.send(SimEvent::WaitingForCentral { index, at_ms: now_ms() });
            while central.lock().await.is_none() {
                // A connection may have come and gone; wait for a live one.
                if connected_rx.recv().await.is_none() {
                    break;
                }
            }
        }
        let _ = events.send(SimEvent::UtteranceStart { index, text, at_ms: now_ms(), frames: frames.len() });
        let mut pace = tokio::time::interval(Duration::from_millis(u64::from(Codec::FRAME_MS)));
        let last = frames.len().saturating_sub(1);
        let (mut injected_drops, mut reordered_frames) = (0u64, 0u64);
        // A frame held back to go out after the next one (reordering).
        let mut held: Vec<Vec<u8>> = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            pace.tick().await;
            let notes = packetizer.frame(cfg.codec, frame, i == 0, i == last)?;
            if held.is_empty() && i != last && chance(faults.reorder_rate) {
                held = notes;
                reordered_frames += 1;
                continue;
            }
            for n in notes.into_iter().chain(std::mem::take(&mut held)) {
                if chance(faults.drop_rate) {
                    injected_drops += 1;
                    continue;
                }
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
            injected_drops,
            reordered_frames,
        });
        if cfg.continuous {
            // The same silent packet, frame after frame, with no markers.
            let quiet = encode_utterance(cfg.codec, &[0; FRAME_SAMPLES])?.remove(0);
            let mut pace = tokio::time::interval(Duration::from_millis(u64::from(Codec::FRAME_MS)));
            for _ in 0..cfg.gap.as_millis() / u128::from(Codec::FRAME_MS) {
                pace.tick().await;
                for n in packetizer.frame(cfg.codec, &quiet, false, false)? {
                    if !send(&central, &Record::Notify(n).encode()).await {
                        dropped += 1;
                    }
                }
            }
        } else {
            tokio::time::sleep(cfg.gap).await;
        }
    }
    let _ = events.send(SimEvent::Done { at_ms: now_ms() });
    accept.abort();
    Ok(())
}

/// Cuts PCM into 20 ms frames, the last padded with silence, and encodes them.
fn encode_utterance(codec: Codec, pcm: &[i16]) -> Result<Vec<Vec<u8>>, SimError> {
    let mut enc = FrameEncoder::new(codec)?;
    let mut frames = Vec::new();
    for chunk in pcm.chunks(FRAME_SAMPLES) {
        let mut block = chunk.to_vec();
        block.resize(FRAME_SAMPLES, 0);
        frames.push(enc.encode(&block)?);
    }
    Ok(frames)
}

/// Sends one record to the connected central; false if none is listening.
async fn send(central: &Central, bytes: &[u8]) -> bool {
    let mut guard = central.lock().await;
    let Some((_, w)) = guard.as_mut() else { return false };
    if w.write_all(bytes).await.is_ok() {
        true
    } else {
        // The central went away: the notification is lost, as over the air.
        *guard = None;
        false
    }
}
