//! The tokio shell around the relay's state machines, for a Linux host (and
//! the simulator). It owns the I/O and nothing else: every decision is made
//! by [`crate::boundary::Tracker`], [`crate::spool::Spool`] and
//! [`crate::uplink::Uplink`].
//!
//! One loop owns all state. Each BLE frame is appended to the spool (one
//! `write()`) before the uplink learns of it, so the uplink can only ever
//! send what is already on disk. The spool is fsynced every
//! [`HostConfig::sync_interval`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use lanyard_proto::ble::Framing;
use lanyard_proto::reassembly::Reassembler;
use lanyard_proto::wire::{self, Audio, Binary, PushRegistration, STREAM_PATH};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};
use uuid::Uuid;

use crate::boundary::{BoundaryConfig, Step, Tracker};
use crate::link::{LinkEvent, run_sim_link};
use crate::spool::{Spool, SpoolError};
use crate::uplink::{Action, Input, RelayEvent, Uplink, UplinkConfig};

/// Everything the host needs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where the spool lives. Must survive app restarts.
    pub spool_dir: PathBuf,
    /// The server's base URL, `http://host:port` or `https://...`.
    pub server: String,
    /// The device's bearer token.
    pub token: String,
    /// The pendant simulator's address.
    pub pendant: SocketAddr,
    /// The fsync window (see [`crate::spool`]).
    pub sync_interval: Duration,
    pub boundary: BoundaryConfig,
    pub uplink: UplinkConfig,
    /// Registered with the server at start, so replies reach the phone.
    pub push: Option<PushRegistration>,
    /// Exit once this many replies have arrived and nothing is pending (for
    /// the demo and tests); `None` runs until stopped.
    pub exit_after: Option<usize>,
}

#[derive(Debug, Error)]
pub enum HostError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("server URL {0:?} is not http(s)://host[:port]")]
    BadServerUrl(String),
    #[error("registering the push token failed: {0}")]
    PushRegistration(String),
}

/// An event with the time the relay saw it, as printed for the app or tests.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: RelayEvent,
}

/// A quiet link for this long completes a held-back Omi frame: two frame
/// periods, so a frame is never cut while its next notification is in flight.
const OMI_FLUSH_MS: u64 = 40;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Messages from the WebSocket tasks, tagged with the connection generation
/// so that a late message from a dead connection is ignored.
enum WsEvent {
    Up(u64, mpsc::UnboundedSender<Message>),
    Msg(u64, Message),
    Down(u64, String),
}

/// Runs the relay until it is told to stop (or `exit_after` is reached).
pub async fn run(cfg: HostConfig, events: mpsc::UnboundedSender<Stamped>) -> Result<(), HostError> {
    let ws_url = stream_url(&cfg.server)?;
    let (mut spool, recovery) = Spool::open(&cfg.spool_dir)?;
    tracing::info!(?recovery, "spool recovered");
    if let Some(push) = &cfg.push {
        register_push(&cfg.server, &cfg.token, push).await?;
    }
    let resumed = spool.open_utterance().and_then(|id| spool.utterance(id)).map(|u| (u.id, u.codec));
    let mut tracker = Tracker::new(cfg.boundary.clone(), resumed, now_ms());
    let mut uplink = Uplink::new(cfg.uplink.clone(), rand::random());
    let mut actions = Vec::new();
    // Everything the spool holds from before a restart goes to the uplink.
    for u in spool.pending() {
        let input = if u.ended {
            Input::Ended { id: u.id, codec: u.codec, frames: u.frame_count() }
        } else {
            Input::Spooled { id: u.id, codec: u.codec, frames: u.frame_count() }
        };
        uplink.handle(now_ms(), input, &mut actions);
    }

    let (link_tx, mut link_rx) = mpsc::channel(256);
    let link_task = tokio::spawn(run_sim_link(cfg.pendant, link_tx));
    let (ws_tx, mut ws_rx) = mpsc::unbounded_channel();
    let mut ws_gen = 0u64;
    let mut ws_out: Option<mpsc::UnboundedSender<Message>> = None;
    let mut reassembler = Reassembler::lanyard();
    let mut lost_at_begin = 0u64;
    let mut last_notify_ms = now_ms();
    let mut replies = 0usize;
    let mut sync_timer = tokio::time::interval(cfg.sync_interval);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let emit = |event: RelayEvent| {
        let _ = events.send(Stamped { at_ms: now_ms(), event });
    };

    loop {
        let now = now_ms();
        let mut steps = Vec::new();
        tokio::select! {
            Some(ev) = link_rx.recv() => match ev {
                LinkEvent::Connected { framing, omi_codec, att_mtu } => {
                    tracing::info!(?framing, att_mtu, "pendant connected");
                    reassembler = match (framing, omi_codec) {
                        (Framing::Omi, Some(c)) => match Reassembler::omi(c) {
                            Some(r) => r,
                            None => {
                                emit(RelayEvent::Error { id: None, code: "unsupported_codec".into(),
                                    message: format!("Omi codec {c:?} needs transcoding, which the relay does not do; set the pendant to Opus 16 kHz (21) or PCM16 (0)") });
                                continue;
                            }
                        },
                        _ => Reassembler::lanyard(),
                    };
                    lost_at_begin = 0;
                }
                LinkEvent::Notification(bytes) => {
                    last_notify_ms = now;
                    match reassembler.push(&bytes) {
                        Ok(Some(frame)) => tracker.on_frame(frame, now, Uuid::now_v7, &mut steps),
                        Ok(None) => {}
                        Err(e) => tracing::debug!(error = %e, "notification dropped"),
                    }
                }
                LinkEvent::Battery(level) => tracing::debug!(level, "pendant battery"),
                LinkEvent::Disconnected { reason } => {
                    tracing::debug!(%reason, "pendant link down");
                    if let Some(frame) = reassembler.flush() {
                        tracker.on_frame(frame, now, Uuid::now_v7, &mut steps);
                    }
                }
            },
            Some(ev) = ws_rx.recv() => match ev {
                WsEvent::Up(g, tx) if g == ws_gen => {
                    ws_out = Some(tx);
                    uplink.handle(now, Input::Connected, &mut actions);
                }
                WsEvent::Msg(g, msg) if g == ws_gen => {
                    if let Some(input) = ws_input(msg) {
                        uplink.handle(now, input, &mut actions);
                    }
                }
                WsEvent::Down(g, reason) if g == ws_gen => {
                    ws_out = None;
                    uplink.handle(now, Input::Disconnected { reason }, &mut actions);
                }
                _ => {}
            },
            _ = sync_timer.tick() => spool.sync()?,
            _ = tick.tick() => {
                // Omi frames are only known whole when the next one starts;
                // a quiet link completes the last one.
                if now.saturating_sub(last_notify_ms) >= OMI_FLUSH_MS
                    && let Some(frame) = reassembler.flush()
                {
                    tracker.on_frame(frame, now, Uuid::now_v7, &mut steps);
                }
                tracker.on_tick(now, &mut steps);
                uplink.handle(now, Input::Tick, &mut actions);
            }
        }

        for step in steps {
            match step {
                Step::Begin { id, codec } => {
                    spool.begin(id, codec, now)?;
                    lost_at_begin = reassembler.stats().lost;
                    emit(RelayEvent::UtteranceStarted { id });
                    uplink.handle(now, Input::Spooled { id, codec, frames: 0 }, &mut actions);
                }
                Step::Frame { id, data } => {
                    let seq = spool.append_frame(id, &data)?;
                    let codec = spool.utterance(id).map(|u| u.codec).expect("just appended");
                    uplink.handle(now, Input::Spooled { id, codec, frames: seq + 1 }, &mut actions);
                }
                Step::End { id } => {
                    let lost = (reassembler.stats().lost - lost_at_begin) as u32;
                    let frames = spool.end(id, lost)?;
                    let codec = spool.utterance(id).map(|u| u.codec).expect("just ended");
                    emit(RelayEvent::UtteranceEnded { id, frames, lost });
                    uplink.handle(now, Input::Ended { id, codec, frames }, &mut actions);
                }
            }
        }

        for action in actions.drain(..) {
            match action {
                Action::Connect => {
                    ws_gen += 1;
                    tokio::spawn(connect(ws_url.clone(), cfg.token.clone(), ws_gen, ws_tx.clone()));
                }
                Action::Disconnect => {
                    ws_gen += 1;
                    if let Some(tx) = ws_out.take() {
                        let _ = tx.send(Message::Close(None));
                    }
                }
                Action::SendText(msg) => {
                    if let Some(tx) = &ws_out {
                        let _ = tx.send(Message::text(msg.to_json()));
                    }
                }
                Action::SendAudio { id, handle, seq } => {
                    let frame = spool.read_frame(id, seq)?;
                    if let Some(tx) = &ws_out {
                        let _ = tx.send(Message::binary(wire::encode_audio(&Audio { handle, seq, frame: &frame })));
                    }
                }
                Action::Done(id) => spool.mark_done(id)?,
                Action::Emit(event) => {
                    replies += usize::from(matches!(event, RelayEvent::Reply { .. }));
                    emit(event);
                }
            }
        }

        if cfg.exit_after.is_some_and(|n| replies >= n) && uplink.pending() == 0 && tracker.current().is_none() {
            spool.sync()?;
            break;
        }
    }
    link_task.abort();
    Ok(())
}

fn ws_input(msg: Message) -> Option<Input> {
    match msg {
        Message::Binary(b) => match wire::parse_binary(&b) {
            Ok(Binary::Ack(ack)) => Some(Input::Ack(ack)),
            Ok(Binary::Audio(_)) | Err(_) => {
                tracing::warn!("server sent an unexpected binary message");
                None
            }
        },
        Message::Text(t) => match wire::parse_server_text(&t) {
            Ok(m) => Some(Input::Server(m)),
            Err(e) => {
                tracing::warn!(error = %e, "server sent an unreadable message");
                None
            }
        },
        _ => None,
    }
}

/// Opens the WebSocket and runs its reader and writer until it closes.
async fn connect(url: String, token: String, generation: u64, events: mpsc::UnboundedSender<WsEvent>) {
    let reason = match open_ws(&url, &token).await {
        Ok(ws) => {
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
            let _ = events.send(WsEvent::Up(generation, tx));
            let writer = async {
                while let Some(m) = rx.recv().await {
                    let closing = matches!(m, Message::Close(_));
                    if let Err(e) = sink.send(m).await {
                        return format!("send failed: {e}");
                    }
                    if closing {
                        return "closed by relay".to_string();
                    }
                }
                "relay dropped the connection".to_string()
            };
            let reader = async {
                while let Some(m) = stream.next().await {
                    match m {
                        Ok(Message::Close(frame)) => {
                            return match frame {
                                Some(f) => format!("server closed: {} {}", u16::from(f.code), f.reason),
                                None => "server closed".to_string(),
                            };
                        }
                        Ok(m) => {
                            let _ = events.send(WsEvent::Msg(generation, m));
                        }
                        Err(e) => return format!("receive failed: {e}"),
                    }
                }
                "connection ended".to_string()
            };
            tokio::select! { r = writer => r, r = reader => r }
        }
        Err(e) => e,
    };
    let _ = events.send(WsEvent::Down(generation, reason));
}

async fn open_ws(
    url: &str,
    token: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, String> {
    let mut req = url.into_client_request().map_err(|e| format!("bad stream URL {url}: {e}"))?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "token has invalid characters")?;
    req.headers_mut().insert("authorization", auth);
    let connect = tokio_tungstenite::connect_async(req);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err(format!("server refused the stream: HTTP {} {body}", resp.status()))
        }
        Ok(Err(e)) => Err(format!("cannot connect to {url}: {e}")),
        Err(_) => Err(format!("connecting to {url} timed out")),
    }
}

/// `http://h:p` -> `ws://h:p/v1/stream`.
pub fn stream_url(server: &str) -> Result<String, HostError> {
    let base = server.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        return Err(HostError::BadServerUrl(server.to_string()));
    };
    Ok(format!("{ws}{STREAM_PATH}"))
}

async fn register_push(server: &str, token: &str, push: &PushRegistration) -> Result<(), HostError> {
    let url = format!("{}/v1/device/push", server.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .put(&url)
        .bearer_auth(token)
        .json(push)
        .send()
        .await
        .map_err(|e| HostError::PushRegistration(format!("{url}: {e}")))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(HostError::PushRegistration(format!("{url}: HTTP {status}: {body}")));
    }
    Ok(())
}
