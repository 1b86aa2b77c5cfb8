//! The tokio shell around the relay's state machines, for a Linux host (and
//! the simulator). It owns the I/O and nothing else: every decision is made
//! by [`crate::boundary::Tracker`], [`crate::spool::Spool`] and
//! [`crate::uplink::Uplink`].
//!
//! One loop owns all state. Each BLE frame is appended to the spool (one
//! `write()`) before the uplink learns of it, so the uplink can only ever
//! send what is already on disk. The spool is fsynced every
//! [`HostConfig::sync_interval`].

use std::collections::HashMap;
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
use crate::planner::{Decision, PlanInput, PlannerConfig, UttView, plan};
use crate::seal::{seal, sealed_ids};
use crate::link::LinkEvent;
use crate::spool::{Spool, SpoolError};
use crate::uplink::{Action, Input, RelayEvent, RelayStats, Uplink, UplinkConfig};

/// Everything the host needs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where the spool lives. Must survive app restarts.
    pub spool_dir: PathBuf,
    /// The server's base URL, `http://host:port` or `https://...`.
    pub server: String,
    /// The device's bearer token.
    pub token: String,
    /// The fsync window (see [`crate::spool`]).
    pub sync_interval: Duration,
    pub boundary: BoundaryConfig,
    pub uplink: UplinkConfig,
    pub planner: PlannerConfig,
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

/// What the app tells the relay, besides BLE data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The app moved in its lifecycle (see [`crate::planner`]).
    Lifecycle(Lifecycle),
    /// A background upload the relay handed off finished. `ok` means the
    /// server answered 2xx: it holds the whole utterance.
    UploadFinished { id: Uuid, ok: bool },
    /// Finish the current utterance, sync the spool and stop.
    Shutdown,
}

pub use crate::planner::Lifecycle;

/// An event with the time the relay saw it, as printed for the app or tests.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: RelayEvent,
}

/// What the end of an utterance costs to deliver beyond its frames: the
/// `end` message and the server's `complete`. Counting it keeps an utterance
/// whose frames are all acknowledged, but not yet complete, in the plan.
const END_COST_BYTES: u64 = 64;

/// Measured upload throughput: an exponentially weighted average of
/// acknowledged bytes per second over the times the uplink had work.
#[derive(Debug, Default)]
struct Meter {
    last_ms: u64,
    last_frames: u64,
    bps: Option<f64>,
}

impl Meter {
    /// An Opus frame at 32 kb/s is 80 bytes on average.
    const FRAME_BYTES: f64 = 80.0;
    /// Each second-long sample moves the average a quarter of the way.
    const WEIGHT: f64 = 0.25;

    fn update(&mut self, now_ms: u64, acked_frames: u64, busy: bool) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if self.last_ms == 0 || !busy {
            (self.last_ms, self.last_frames) = (now_ms, acked_frames);
            return;
        }
        if elapsed < 1000 {
            return;
        }
        let rate = (acked_frames - self.last_frames) as f64 * Self::FRAME_BYTES * 1000.0 / elapsed as f64;
        self.bps = Some(self.bps.map_or(rate, |b| b + Self::WEIGHT * (rate - b)));
        (self.last_ms, self.last_frames) = (now_ms, acked_frames);
    }
}

/// How often the counters are reported, when they changed. Often enough for
/// a status screen, rare enough to cost nothing.
const STATS_INTERVAL: Duration = Duration::from_secs(5);

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

/// Runs the relay on events from a pendant link until the link ends (and
/// nothing is left to send) or `exit_after` is reached.
///
/// The link is a channel so that any transport can feed it: the simulator's
/// socket ([`crate::link::run_sim_link`]), btleplug on Linux, or CoreBluetooth
/// through the FFI on a phone.
pub async fn run(
    cfg: HostConfig,
    mut link_rx: mpsc::Receiver<LinkEvent>,
    mut control_rx: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Stamped>,
) -> Result<(), HostError> {
    let ws_url = stream_url(&cfg.server)?;
    let (mut spool, recovery) = Spool::open(&cfg.spool_dir)?;
    tracing::info!(?recovery, "spool recovered");
    if let Some(push) = cfg.push.clone() {
        // An app that starts offline must still spool: registration retries
        // in the background until it succeeds.
        let (server, token, events) = (cfg.server.clone(), cfg.token.clone(), events.clone());
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                match register_push(&server, &token, &push).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "push registration failed; retrying");
                        let _ = events.send(Stamped {
                            at_ms: now_ms(),
                            event: RelayEvent::Error { id: None, code: "push_registration".into(), message: e.to_string() },
                        });
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        });
    }
    let resumed = spool.open_utterance().and_then(|id| spool.utterance(id)).map(|u| (u.id, u.codec));
    let mut tracker = Tracker::new(cfg.boundary.clone(), resumed, now_ms());
    let mut uplink = Uplink::new(cfg.uplink.clone(), rand::random());
    let mut actions = Vec::new();
    // Uploads handed off before a restart are still the app's to finish.
    let mut handed_off: HashMap<Uuid, PathBuf> = HashMap::new();
    for (id, path) in sealed_ids(&cfg.spool_dir) {
        if spool.utterance(id).is_some_and(|u| !u.done) {
            handed_off.insert(id, path);
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
    // Re-announce them: the app may have died before it started the upload,
    // and an app that still runs one ignores a task id it already has.
    for (&id, path) in &handed_off {
        let content_type = if path.extension().is_some_and(|e| e == "wav") { "audio/wav" } else { "audio/ogg" };
        let _ = events.send(Stamped { at_ms: now_ms(), event: upload_task(&cfg, id, path, content_type) });
    }
    // Everything else the spool holds from before a restart goes to the uplink.
    for u in spool.pending().filter(|u| !handed_off.contains_key(&u.id)) {
        let input = if u.ended {
            Input::Ended { id: u.id, codec: u.codec, frames: u.frame_count() }
        } else {
            Input::Spooled { id: u.id, codec: u.codec, frames: u.frame_count() }
        };
        uplink.handle(now_ms(), input, &mut actions);
    }

    let mut link_open = true;
    let mut control_open = true;
    let mut deadline: Option<u64> = None;
    let mut suspending = false;
    // Whether the plan at the deadline minus the margin has run.
    let mut final_plan_done = false;
    let mut meter = Meter::default();
    let mut discarded = 0u64;
    let mut last_stats: Option<RelayStats> = None;
    let mut stats_timer = tokio::time::interval(STATS_INTERVAL);
    let mut shutdown = false;
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
        let mut replan = false;
        let final_plan_in = deadline
            .filter(|_| !final_plan_done)
            .map(|d| Duration::from_millis(d.saturating_sub(cfg.planner.safety_margin_ms).saturating_sub(now)));
        tokio::select! {
            _ = tokio::time::sleep(final_plan_in.unwrap_or_default()), if final_plan_in.is_some() => {
                final_plan_done = true;
                replan = true;
            }
            ev = link_rx.recv(), if link_open => match ev {
                None => {
                    // The transport is gone for good: finish what is spooled.
                    link_open = false;
                    if let Some(frame) = reassembler.flush() {
                        tracker.on_frame(frame, now, Uuid::now_v7, &mut steps);
                    }
                    tracker.end_now(&mut steps);
                }
                Some(ev) => match ev {
                LinkEvent::Connected { framing, omi_codec, att_mtu } => {
                    tracing::info!(?framing, att_mtu, "pendant connected");
                    // Whole frames of the previous connection still count.
                    if let Some(frame) = reassembler.flush() {
                        tracker.on_frame(frame, now, Uuid::now_v7, &mut steps);
                    }
                    reassembler.reset_link();
                    while let Some(frame) = reassembler.pop_ready() {
                        tracker.on_frame(frame, now, Uuid::now_v7, &mut steps);
                    }
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
            c = control_rx.recv(), if control_open => match c {
                None => control_open = false,
                Some(Control::Lifecycle(l)) => {
                    tracing::info!(?l, "lifecycle");
                    (deadline, suspending) = match l {
                        Lifecycle::Foreground => (None, false),
                        Lifecycle::Background { remaining_ms } => (Some(now + remaining_ms), false),
                        Lifecycle::WillSuspend => {
                            // BLE data stops with the app: what was said so far is the utterance.
                            tracker.end_now(&mut steps);
                            (deadline, true)
                        }
                    };
                    final_plan_done = false;
                    replan = true;
                }
                Some(Control::UploadFinished { id, ok }) => {
                    match handed_off.remove(&id) {
                        Some(path) => {
                            let _ = std::fs::remove_file(path);
                            let u = spool.utterance(id).map(|u| (u.codec, u.frame_count()));
                            match (ok, u) {
                                (true, Some((_, frames))) => {
                                    spool.mark_done(id)?;
                                    emit(RelayEvent::Complete { id, frames });
                                }
                                (false, Some((codec, frames))) => {
                                    // Back to the planner: stream it, or hand it off again.
                                    tracing::warn!(%id, "background upload failed");
                                    uplink.handle(now, Input::Ended { id, codec, frames }, &mut actions);
                                    replan = true;
                                }
                                (_, None) => {}
                            }
                        }
                        None => tracing::warn!(%id, "upload result for an utterance that was not handed off"),
                    }
                }
                Some(Control::Shutdown) => {
                    // Notifications the app already handed over are spooled
                    // before the utterance ends: nothing accepted is dropped.
                    while let Ok(LinkEvent::Notification(bytes)) = link_rx.try_recv() {
                        if let Ok(Some(frame)) = reassembler.push(&bytes) {
                            tracker.on_frame(frame, now, Uuid::now_v7, &mut steps);
                        }
                    }
                    if let Some(frame) = reassembler.flush() {
                        tracker.on_frame(frame, now, Uuid::now_v7, &mut steps);
                    }
                    tracker.end_now(&mut steps);
                    shutdown = true;
                }
            },
            _ = sync_timer.tick() => spool.sync()?,
            _ = stats_timer.tick() => {
                let link = reassembler.stats();
                let stats = RelayStats {
                    spool_bytes: spool.disk_bytes(),
                    pending_utterances: spool.pending().count() as u32,
                    handed_off: handed_off.len() as u32,
                    lost_frames: link.lost,
                    duplicate_notifications: link.duplicates,
                    discarded,
                };
                if last_stats != Some(stats) {
                    emit(RelayEvent::Stats(stats));
                    last_stats = Some(stats);
                }
            }
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
                meter.update(now, uplink.acked_frames(), uplink.is_connected() && uplink.pending() > 0);
                replan = true;
            }
        }

        // Frames released together (a reorder gap filled or given up on).
        while let Some(frame) = reassembler.pop_ready() {
            tracker.on_frame(frame, now, Uuid::now_v7, &mut steps);
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

        // The spool makes room by evicting the oldest audio when it is full:
        // each eviction is reported, and the uplink stops sending it.
        for (id, reason) in spool.take_evicted() {
            discarded += 1;
            uplink.handle(now, Input::Forget { id }, &mut actions);
            actions.retain(|a| !matches!(a, Action::SendAudio { id: i, .. } if *i == id));
            emit(RelayEvent::Discarded { id, reason });
        }

        if replan {
            let views: Vec<UttView> = spool
                .pending()
                .filter(|u| u.ended && !handed_off.contains_key(&u.id))
                .map(|u| UttView {
                    id: u.id,
                    started_ms: u.started_ms,
                    unacked_bytes: spool.bytes_from(u.id, uplink.acked(u.id).unwrap_or(0)) + END_COST_BYTES,
                })
                .collect();
            let input = PlanInput {
                now_ms: now,
                deadline_ms: deadline,
                suspending,
                network_up: !uplink.failing(),
                connected: uplink.is_connected(),
                throughput_bps: meter.bps,
                utterances: &views,
            };
            for (id, decision) in plan(&cfg.planner, &input) {
                match decision {
                    Decision::Stream => {}
                    Decision::HandOff => {
                        let sealed = seal(&spool, id)?;
                        uplink.handle(now, Input::Forget { id }, &mut actions);
                        emit(upload_task(&cfg, id, &sealed.path, sealed.content_type));
                        handed_off.insert(id, sealed.path);
                    }
                    Decision::Discard(reason) => {
                        let reason = reason.to_string();
                        spool.mark_dropped(id, &reason)?;
                        discarded += 1;
                        uplink.handle(now, Input::Forget { id }, &mut actions);
                        emit(RelayEvent::Discarded { id, reason });
                    }
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

        if shutdown {
            spool.sync()?;
            break;
        }
        let idle = uplink.pending() == 0 && tracker.current().is_none() && handed_off.is_empty();
        if idle && (cfg.exit_after.is_some_and(|n| replies >= n) || (!link_open && cfg.exit_after.is_none())) {
            spool.sync()?;
            break;
        }
    }
    Ok(())
}

/// The upload task the app carries out for a sealed utterance.
fn upload_task(cfg: &HostConfig, id: Uuid, path: &std::path::Path, content_type: &str) -> RelayEvent {
    RelayEvent::UploadTask {
        id,
        path: path.to_string_lossy().into_owned(),
        url: format!("{}/v1/utterances/{id}/audio", cfg.server.trim_end_matches('/')),
        method: "PUT".into(),
        headers: vec![
            ("Authorization".into(), format!("Bearer {}", cfg.token)),
            ("Content-Type".into(), content_type.into()),
        ],
    }
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
    // Frames are small writes: send each at once instead of waiting for
    // Nagle's algorithm, which would add up to 40 ms to every ack round trip.
    let connect = tokio_tungstenite::connect_async_with_config(req, None, true);
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
