//! The tokio shell around the relay's state machines, for a Linux host (and
//! the simulator) and the phone library. It owns the I/O and nothing else:
//! every decision is made by [`crate::boundary::Tracker`],
//! [`crate::spool::Spool`], [`crate::uplink::Uplink`] and [`crate::planner`],
//! and the loop's own (its rounds, wake-ups, fsyncs, hand-offs and exit) by
//! `core::RelayCore`, whose `step(now, wake, ingest)` returns the effects
//! this shell carries out. `ingest` is the pendant side, shared with the
//! link's thread.
//!
//! # Threads and wake-ups
//!
//! [`open`] recovers the spool and returns a [`Relay`] and a [`PendantPort`]. The
//! pendant transport calls [`PendantPort::event`] on its own thread (CoreBluetooth's
//! delegate queue, the simulator's socket thread): the notification is
//! reassembled and its frame appended to the spool with one `write()` before
//! the call returns, so the uplink can only ever send what is already on
//! disk, and a frame handed over survives the app being killed.
//!
//! [`Relay::run`] is one loop that owns the uplink. It is woken only by what
//! needs it at once: an utterance beginning or ending, a WebSocket message,
//! the app's lifecycle, a timer the state machines asked for. While an
//! utterance goes on it also wakes every [`HostConfig::send_interval`]
//! (200 ms): it hands the frames that arrived to the uplink, which sends
//! them in one write, and fsyncs them (without holding the spool's lock, so
//! a slow disk never holds up the transport). On this project's 2-core VM a
//! bare thread wake-up costs about 20 µs of CPU and an fsync about 130 µs:
//! a loop woken per 20 ms frame would cost several milliseconds per second
//! of audio, a phone's battery pays for each, and the relay is meant to run
//! all day. `cargo bench -p lanyard --bench relay_cost` measures it.
//!
//! # Endpoints
//!
//! The server's `endpoint` for an utterance no marker opened ends it in
//! the round it arrives in, under the core's lock (see
//! [`crate::boundary`]). It names the frame count the server split at,
//! and the spool may hold more frames of the utterance by then: the next
//! utterance begins at once and starts with copies of those frames, read
//! back from the spool and appended with one `write()` each, in order,
//! before any frame the pendant sends next. The ended utterance keeps its
//! copies too and is sent whole (the server transcribes it whole, so a
//! carried fragment may be heard twice, but never lost).
//!
//! A kill between those writes would leave the next utterance without the
//! frames not yet copied, its first syllable cut again. So the carry is
//! written down first, in the spool directory's `carry` file, and removed
//! once the copies are in the spool; [`open`] finishes a carry it finds
//! there (ending the old utterance, beginning the new one, copying what is
//! missing), and the tracker goes on with the new utterance as one no
//! marker opened. The file is not fsynced: it is read only in the boot it
//! was written in, since after an OS restart the utterance in progress is
//! ended where the spool's copy ends, as any other.

mod core;
mod ingest;
#[cfg(test)]
mod testing;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use lanyard_proto::Secret;
use lanyard_proto::backoff::{Backoff, Retries};
use lanyard_proto::wire::{self, Binary, PushRegistration, STREAM_PATH};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};
use uuid::Uuid;

use self::core::{Effect, RelayCore, Wake};
use self::ingest::Ingest;
use crate::boundary::BoundaryConfig;
use crate::link::LinkEvent;
use crate::planner::PlannerConfig;
use crate::spool::{Spool, SpoolError};
use crate::transport::{Transport, TransportError};
use crate::uplink::{Input, RelayEvent, UplinkConfig};

/// Everything the host needs. [`HostConfig::new`] (in [`crate::config`])
/// fills in the defaults; its `Debug` redacts the token.
#[derive(Clone)]
pub struct HostConfig {
    /// Where the spool lives. Must survive app restarts.
    pub spool_dir: PathBuf,
    /// The server's base URL, `http://host:port` or `https://...`.
    pub server: String,
    /// The device's bearer token.
    pub token: Secret,
    /// The fsync window (see [`crate::spool`]): every frame is durable this
    /// long after it was written, at the latest.
    pub sync_interval: Duration,
    /// How long frames may wait in the spool before the uplink hears of
    /// them, while an utterance goes on. The relay's loop wakes this often
    /// (or every `sync_interval`, if shorter) and sends what arrived in one
    /// write, instead of waking for every 20 ms frame; the end of an
    /// utterance is sent at once. 200 ms by default.
    pub send_interval: Duration,
    pub boundary: BoundaryConfig,
    pub uplink: UplinkConfig,
    pub planner: PlannerConfig,
    /// Registered with the server at start, so replies reach the phone.
    pub push: Option<PushRegistration>,
    /// Exit once this many replies have arrived and nothing is pending (for
    /// the demo and tests); `None` runs until stopped.
    pub exit_after: Option<usize>,
    /// Extra time each spool fsync takes, to simulate a slow disk (`lanyard
    /// sim`'s slow-disk fault, `lanyard relay --fsync-delay-ms`). Zero in
    /// production. The delay blocks the relay's loop, as a slow `fsync()` does.
    pub fsync_delay: Duration,
    /// Allow `http://` to a server that is not on this machine: the token
    /// and audio then cross the network in clear text (see
    /// [`crate::transport`]). Off by default, and never for production.
    pub insecure: bool,
    /// PEM files of CAs to trust besides the Mozilla roots: a private CA,
    /// or a self-signed server's.
    pub extra_root_certs: Vec<PathBuf>,
}

/// The default [`HostConfig::send_interval`].
pub const DEFAULT_SEND_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Error)]
pub enum HostError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("registering the push token failed: {0}")]
    PushRegistration(String),
    #[error(
        "the spool at {0} is in use by another relay: run one relay per spool directory, and stop the old one \
         before starting a new one"
    )]
    SpoolInUse(PathBuf),
    #[error("cannot lock the spool at {path}: {reason}; pass a writable directory")]
    SpoolLock { path: PathBuf, reason: String },
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamped {
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: RelayEvent,
}

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

/// The pendant side under its lock, shared by the relay's loop and its
/// [`PendantPort`] handles, with the loop's wake-up and the stopped flag.
struct IngestCell {
    ingest: Mutex<Ingest>,
    wake: Notify,
    /// Set when [`Relay::run`] returns.
    stopped: AtomicBool,
}

impl IngestCell {
    fn lock(&self) -> MutexGuard<'_, Ingest> {
        // A panic while holding the lock leaves nothing half-written that the
        // spool's own recovery would not handle; carry on with the state.
        self.ingest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The way into a running relay for a pendant transport (CoreBluetooth's
/// delegate queue through the FFI, btleplug, the simulator's socket).
///
/// [`PendantPort::event`] does the relay's ingest on the caller's thread: the
/// notification is reassembled and its frame written to the spool before
/// the call returns, so a frame the transport handed over survives the app
/// being killed the next instant. The relay's loop is woken only when an
/// utterance begins or ends; it picks up plain frames on its next round (see
/// [`HostConfig::send_interval`]). A phone's CPU and battery pay for one
/// `write()` per frame, not for a thread hand-off per frame.
#[derive(Clone)]
pub struct PendantPort {
    shared: Arc<IngestCell>,
}

impl PendantPort {
    /// Feeds one event from the pendant's link.
    pub fn event(&self, ev: LinkEvent) {
        self.with(|core, now| core.on_link(ev, now));
    }

    /// Whether the relay has stopped running: a transport thread may end.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Relaxed)
    }

    /// The transport is gone for good: the current utterance ends, and a
    /// relay without `exit_after` stops once everything is delivered.
    pub fn close(&self) {
        self.with(|core, now| {
            core.link_open = false;
            core.end_now(now).map(|_| true)
        });
    }

    fn with(&self, f: impl FnOnce(&mut Ingest, u64) -> Result<bool, SpoolError>) {
        let mut core = self.shared.lock();
        if core.failed.is_some() || self.is_stopped() {
            return;
        }
        let urgent = match f(&mut core, now_ms()) {
            Ok(urgent) => urgent,
            Err(e) => {
                core.failed = Some(e);
                true
            }
        };
        drop(core);
        if urgent {
            self.shared.wake.notify_one();
        }
    }
}

/// A relay with its spool open and recovered, ready to [`Relay::run`].
pub struct Relay {
    cfg: HostConfig,
    ws_url: String,
    transport: Transport,
    shared: Arc<IngestCell>,
    events: mpsc::UnboundedSender<Stamped>,
    /// The spool's single-writer lock, held until the relay is dropped or
    /// [`Relay::run`] returns (see [`lock_spool`]).
    _lock: std::fs::File,
}

impl Relay {
    /// The HTTP client the relay uses, trusting what its stream trusts
    /// ([`HostConfig::extra_root_certs`]): for a shell that carries out the
    /// upload tasks itself.
    pub fn http_client(&self) -> reqwest::Client {
        self.transport.http.clone()
    }
}

/// Opens (and recovers) the spool. Returns the relay, to be run on a tokio
/// runtime, and the [`PendantPort`] its pendant transport feeds.
pub fn open(cfg: HostConfig, events: mpsc::UnboundedSender<Stamped>) -> Result<(Relay, PendantPort), HostError> {
    crate::transport::check_server(&cfg.server, cfg.insecure)?;
    let ws_url = stream_url(&cfg.server)?;
    let transport = Transport::new(&cfg.extra_root_certs)?;
    let lock = lock_spool(&cfg.spool_dir)?;
    let ingest = Ingest::open(&cfg, now_ms(), events.clone())?;
    let shared =
        Arc::new(IngestCell { ingest: Mutex::new(ingest), wake: Notify::new(), stopped: AtomicBool::new(false) });
    Ok((Relay { cfg, ws_url, transport, shared: shared.clone(), events, _lock: lock }, PendantPort { shared }))
}

/// Takes the spool's single-writer lock: an advisory lock on
/// `<spool_dir>/.relay.lock` (not a `.seg` file, so the spool ignores it).
/// The spool has no lock of its own, and two relays appending to one spool
/// would interleave records. The OS drops the lock when the process dies,
/// so a killed app's successor opens the spool at once.
fn lock_spool(dir: &std::path::Path) -> Result<std::fs::File, HostError> {
    let fail =
        |path: &std::path::Path, e: std::io::Error| HostError::SpoolLock { path: path.into(), reason: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    let path = dir.join(".relay.lock");
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| fail(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(HostError::SpoolInUse(dir.into())),
        Err(std::fs::TryLockError::Error(e)) => Err(fail(&path, e)),
    }
}

/// Runs the relay on events from a pendant link channel until the link ends
/// (and nothing is left to send) or `exit_after` is reached: [`open`] and
/// [`Relay::run`] for transports that deliver through a channel.
pub async fn run(
    cfg: HostConfig,
    link_rx: mpsc::Receiver<LinkEvent>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Stamped>,
) -> Result<(), HostError> {
    let (relay, _link) = open(cfg, events)?;
    relay.run(Some(link_rx), control_rx).await
}

impl Relay {
    /// Runs until the link is closed and nothing is left to send, or
    /// `exit_after` replies have arrived, or [`Control::Shutdown`].
    ///
    /// `link_rx`, when given, is drained into the relay's [`PendantPort`] on this
    /// loop (and its end closes the link); transports that hold a [`PendantPort`]
    /// pass `None`.
    ///
    /// This is the shell: it waits, reads the clock, and carries out the
    /// effects of [`RelayCore::step`], which decides everything.
    pub async fn run(
        self,
        mut link_rx: Option<mpsc::Receiver<LinkEvent>>,
        mut control_rx: mpsc::UnboundedReceiver<Control>,
    ) -> Result<(), HostError> {
        // The lock is dropped last, once `_stopped` has marked the relay
        // stopped: no `PendantPort` touches the spool after another relay has it.
        let Relay { cfg, ws_url, transport, shared, events, _lock } = self;
        let link = PendantPort { shared: shared.clone() };
        let _stopped = Stopped(shared.clone());
        let _registration = cfg.push.clone().map(|push| {
            // An app that starts offline must still spool: registration
            // retries in the background until it succeeds (or the relay stops).
            AbortOnDrop(tokio::spawn(register_push_until_done(
                transport.http.clone(),
                cfg.server.clone(),
                cfg.token.expose().to_owned(),
                push,
                events.clone(),
            )))
        });
        let (ws_tx, mut ws_rx) = mpsc::unbounded_channel();
        let mut socket = Socket {
            url: ws_url,
            token: cfg.token.expose().to_owned(),
            tls: transport.ws.clone(),
            generation: 0,
            out: None,
            events: ws_tx,
        };
        let fsync_delay = cfg.fsync_delay;
        let (mut core, effects) = RelayCore::new(cfg, &shared.lock(), rand::random(), now_ms());
        for effect in effects {
            if let Effect::Emit(event) = effect {
                let _ = events.send(Stamped { at_ms: now_ms(), event });
            }
        }
        let mut control_open = true;

        loop {
            // No timer at all when the core asks for none.
            let timer =
                core.next_wake().map(|at| tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))));
            let wake = tokio::select! {
                () = async { timer.expect("guarded").await }, if timer.is_some() => Wake::Round,
                () = shared.wake.notified() => Wake::Round,
                ev = async { link_rx.as_mut().expect("guarded").recv().await }, if link_rx.is_some() => {
                    match ev {
                        Some(ev) => link.event(ev),
                        None => {
                            link_rx = None;
                            link.close();
                        }
                    }
                    Wake::Round
                }
                Some(ev) = ws_rx.recv() => match socket.input(ev) {
                    Some(input) => Wake::Socket(input),
                    None => continue,
                },
                c = control_rx.recv(), if control_open => match c {
                    None => {
                        control_open = false;
                        continue;
                    }
                    Some(Control::Lifecycle(l)) => Wake::Lifecycle(l),
                    Some(Control::UploadFinished { id, ok }) => Wake::UploadFinished { id, ok },
                    Some(Control::Shutdown) => {
                        // Notifications the app already handed over are spooled
                        // before the utterance ends: nothing accepted is dropped.
                        if let Some(rx) = link_rx.as_mut() {
                            while let Ok(ev @ LinkEvent::Notification(_)) = rx.try_recv() {
                                link.event(ev);
                            }
                        }
                        Wake::Shutdown
                    }
                },
            };
            let effects = core.step(now_ms(), wake, &mut shared.lock())?;
            let mut sync_job = None;
            for effect in effects {
                match effect {
                    Effect::Connect => socket.connect(),
                    Effect::Disconnect => socket.disconnect(),
                    Effect::SendText(text) => socket.send(Message::text(text)),
                    Effect::SendBinary(bytes) => socket.send(Message::binary(bytes)),
                    Effect::Emit(event) => {
                        let _ = events.send(Stamped { at_ms: now_ms(), event });
                    }
                    Effect::Sync(job) => sync_job = Some(job),
                    Effect::Stop => {
                        let mut ingest = shared.lock();
                        sync(&mut ingest.spool, fsync_delay)?;
                        return Ok(());
                    }
                }
            }
            // The fsync runs without the lock: a slow disk must not hold up
            // the link's thread, which only appends.
            if let Some(job) = sync_job {
                // Let the WebSocket writer send this round's frames first:
                // the server's ack then comes back while the disk flushes,
                // and the loop's next park finds it waiting instead of
                // sleeping until it comes (one sleep and wake-up fewer; the
                // ack is still handled in a round of its own).
                tokio::task::yield_now().await;
                if !fsync_delay.is_zero() {
                    std::thread::sleep(fsync_delay);
                }
                job.run()?;
                shared.lock().spool.synced(job);
            }
        }
    }
}

/// Marks the relay stopped however `run` returns, and ends the event stream.
struct Stopped(Arc<IngestCell>);

impl Drop for Stopped {
    fn drop(&mut self) {
        // Under the lock: no `PendantPort::event` is halfway through, and none will
        // touch the spool from now on (the spool may soon belong to another
        // relay).
        let mut ingest = self.0.lock();
        self.0.stopped.store(true, Ordering::Relaxed);
        ingest.events = None;
    }
}

/// Aborts a task when the relay stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Registers the push token, retrying with backoff until it succeeds.
async fn register_push_until_done(
    http: reqwest::Client,
    server: String,
    token: String,
    push: PushRegistration,
    events: mpsc::UnboundedSender<Stamped>,
) {
    let mut retries = Retries::new(Backoff::new(Duration::from_millis(500), Duration::from_secs(60)), 0);
    loop {
        match register_push(&http, &server, &token, &push).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "push registration failed; retrying");
                let event = RelayEvent::Error { id: None, code: "push_registration".into(), message: e.to_string() };
                let _ = events.send(Stamped { at_ms: now_ms(), event });
            }
        }
        tokio::time::sleep(retries.next_delay()).await;
    }
}

/// The relay's WebSocket, as the loop sees it: the writer of the current
/// connection, and the generation that tells its messages from a dead one's.
struct Socket {
    url: String,
    token: String,
    tls: Option<tokio_tungstenite::Connector>,
    generation: u64,
    out: Option<mpsc::UnboundedSender<Message>>,
    events: mpsc::UnboundedSender<WsEvent>,
}

impl Socket {
    fn connect(&mut self) {
        self.generation += 1;
        tokio::spawn(connect(
            self.url.clone(),
            self.token.clone(),
            self.tls.clone(),
            self.generation,
            self.events.clone(),
        ));
    }

    fn disconnect(&mut self) {
        self.generation += 1;
        if let Some(tx) = self.out.take() {
            let _ = tx.send(Message::Close(None));
        }
    }

    /// Sends on the current connection; with none, the message is dropped
    /// (the uplink resends from the server's `next_seq` after it reconnects).
    fn send(&self, msg: Message) {
        if let Some(tx) = &self.out {
            let _ = tx.send(msg);
        }
    }

    /// What a connection task reported, for the core: `None` for what a
    /// dead connection said, or a message that is not the protocol's.
    fn input(&mut self, ev: WsEvent) -> Option<Input> {
        match ev {
            WsEvent::Up(g, tx) if g == self.generation => {
                self.out = Some(tx);
                Some(Input::Connected)
            }
            WsEvent::Msg(g, msg) if g == self.generation => ws_input(msg),
            WsEvent::Down(g, reason) if g == self.generation => {
                self.out = None;
                Some(Input::Disconnected { reason })
            }
            _ => None,
        }
    }
}

/// Fsyncs the spool, taking `delay` longer (see [`HostConfig::fsync_delay`]).
fn sync(spool: &mut Spool, delay: Duration) -> Result<(), SpoolError> {
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    spool.sync()
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
async fn connect(
    url: String,
    token: String,
    tls: Option<tokio_tungstenite::Connector>,
    generation: u64,
    events: mpsc::UnboundedSender<WsEvent>,
) {
    let reason = match open_ws(&url, &token, tls).await {
        Ok(ws) => {
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
            let _ = events.send(WsEvent::Up(generation, tx));
            let writer = async {
                while let Some(m) = rx.recv().await {
                    // A round's messages go out in one write: queue all that
                    // are waiting, then flush once.
                    let mut closing = matches!(m, Message::Close(_));
                    let mut queued = sink.feed(m).await;
                    while queued.is_ok() && !closing {
                        let Ok(m) = rx.try_recv() else { break };
                        closing = matches!(m, Message::Close(_));
                        queued = sink.feed(m).await;
                    }
                    if let Err(e) = queued {
                        return format!("send failed: {e}");
                    }
                    if let Err(e) = sink.flush().await {
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
    tls: Option<tokio_tungstenite::Connector>,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, String> {
    let mut req = url.into_client_request().map_err(|e| format!("bad stream URL {url}: {e}"))?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "token has invalid characters")?;
    req.headers_mut().insert("authorization", auth);
    // Frames are small writes: send each at once instead of waiting for
    // Nagle's algorithm, which would add up to 40 ms to every ack round trip.
    // The server sends acks and short JSON: a small read buffer is plenty,
    // and tungstenite zero-fills all of it before every read (the 128 KiB
    // default was the largest user-space cost of the relay's loop).
    let config = tungstenite::protocol::WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let connect = tokio_tungstenite::connect_async_tls_with_config(req, Some(config), true, tls);
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

/// The WebSocket's read buffer; a longer message is read in several reads.
const READ_BUFFER_BYTES: usize = 4 << 10;

/// `http://h:p` -> `ws://h:p/v1/stream`.
pub fn stream_url(server: &str) -> Result<String, HostError> {
    let base = server.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        return Err(TransportError::BadServerUrl(server.to_string()).into());
    };
    Ok(format!("{ws}{STREAM_PATH}"))
}

/// An error with its causes, `: `-separated: reqwest's own message
/// ("error sending request") leaves out why (a certificate not trusted, a
/// refused connection), which is what the user must fix.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn register_push(
    http: &reqwest::Client,
    server: &str,
    token: &str,
    push: &PushRegistration,
) -> Result<(), HostError> {
    let url = format!("{}/v1/device/push", server.trim_end_matches('/'));
    let resp = http
        .put(&url)
        .bearer_auth(token)
        .json(push)
        .send()
        .await
        .map_err(|e| HostError::PushRegistration(format!("{url}: {}", error_chain(&e))))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(HostError::PushRegistration(format!("{url}: HTTP {status}: {body}")));
    }
    Ok(())
}
