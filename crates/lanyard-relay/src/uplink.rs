//! The uplink: a sans-I/O state machine that decides what to send to the
//! server and when.
//!
//! It takes [`Input`]s (frames spooled, utterances ended, the connection
//! coming up or going down, server messages, clock ticks) and returns
//! [`Action`]s (connect, send this, the server holds that utterance so the
//! spool may drop it, tell the app this). It owns no socket, file or clock:
//! the tokio shell in [`crate::host`] carries the actions out, and tests
//! drive it with a simulated clock.
//!
//! # Rules
//!
//! - On every (re)connect each pending utterance is `open`ed again; the
//!   server's `opened.next_seq` is the resume point, so frames the server
//!   already holds are never sent as new audio and nothing it lacks is skipped.
//! - At most [`UplinkConfig::window`] frames are in flight per utterance
//!   (sent, not yet acked). That bounds the socket's send queue: a slow link
//!   backs up into the spool on disk, not into memory.
//! - `end` is sent once every frame has been sent; the utterance is done only
//!   when the server answers `complete`, and only then may the spool delete it.
//! - After a failed connection the next attempt waits an exponential backoff
//!   with jitter, so that a fleet of phones does not reconnect in lockstep.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use lanyard_proto::backoff::{Backoff, Jitter, Retries};
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{self, Ack, ClientMsg, ServerMsg, limits};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A paced uplink waits this long for its send budget to refill: 20 frames
/// at the default 1000 frames/s, so catching up costs 50 wake-ups a second,
/// not one per frame.
const PACING_REFILL_MS: u64 = 20;

/// The `Discarded` reason of an utterance the server answered `gone` for:
/// its user deleted it there.
pub const DELETED_ON_SERVER: &str = "deleted";

/// The code of the error event for a server that resumed an utterance below
/// what it had acknowledged (see [`Uplink`]'s resume rule).
pub const SERVER_LOST_ACKED_AUDIO: &str = "server_lost_acked_audio";
/// The [`RelayEvent::Error`] code for the other way round: the server holds
/// frames the spool lost (acknowledged, then gone with an OS crash before
/// the spool's fsync).
pub const SPOOL_LOST_ACKED_AUDIO: &str = "spool_lost_acked_audio";
/// The [`RelayEvent::Error`] code for an ended utterance longer than the
/// server takes ([`limits::MAX_UTTERANCE_FRAMES`]): only that many frames go,
/// and the event counts the rest (once while the uplink holds the utterance;
/// again after a restart or a failed upload). The tracker splits utterances
/// at the limit, so only a spool written before it did can hold one.
pub const UTTERANCE_TOO_LONG: &str = "utterance_too_long";

/// The [`RelayEvent::Error`] code for frames from the pendant that were not
/// 20 ms of their codec: the server refuses such a frame (close 4007), so
/// the host never spools one, and counts it as lost (see `host`).
pub const MALFORMED_FRAMES: &str = "malformed_frames";

/// Tunables of the uplink.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Most frames in flight per utterance. 250 frames is 5 s of audio: enough
    /// to keep a 300 ms round trip busy many times over.
    pub window: u32,
    /// First reconnect delay.
    pub backoff_base_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
    /// How long to keep the connection open after the last utterance
    /// completed, to receive its transcript and reply over the socket.
    pub linger_ms: u64,
    /// Most frames sent per second, averaged over a second. Catching up a
    /// backlog faster than the server's per-device rate limit (1500/s by
    /// default) would get the stream closed; 1000/s is 20x real time, so
    /// an hour of spooled audio drains in three minutes.
    pub max_frames_per_sec: u32,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self { window: 250, backoff_base_ms: 200, backoff_max_ms: 10_000, linger_ms: 30_000, max_frames_per_sec: 1000 }
    }
}

/// What happens to the uplink.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The spool holds `frames` frames of utterance `id` (a running total).
    /// `unmarked`: no start marker opened it (the spool's BEGIN says so);
    /// its `open` tells the server.
    Spooled {
        id: Uuid,
        codec: Codec,
        frames: u32,
        unmarked: bool,
    },
    /// Utterance `id` has ended with `frames` frames, of which the first
    /// `speech_frames` are its speech when it was cut at the server's
    /// endpoint (the rest were carried on; see `boundary`). `unmarked` as
    /// for `Spooled`.
    Ended {
        id: Uuid,
        codec: Codec,
        frames: u32,
        speech_frames: Option<u32>,
        unmarked: bool,
    },
    /// The WebSocket is open and authenticated.
    Connected,
    /// The WebSocket closed or could not be opened.
    Disconnected {
        reason: String,
    },
    Server(ServerMsg),
    Ack(Ack),
    /// The utterance left the stream (handed off to an upload, or
    /// discarded by policy): stop sending it.
    Forget {
        id: Uuid,
    },
    /// Time passed.
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open the WebSocket. The shell answers with `Connected` or `Disconnected`.
    Connect,
    /// Close the WebSocket: nothing left to do.
    Disconnect,
    SendText(ClientMsg),
    /// Read frame `seq` of `id` from the spool and send it as AUDIO.
    SendAudio {
        id: Uuid,
        handle: u32,
        seq: u32,
    },
    /// The server holds all of `id`: the spool may delete it.
    Done(Uuid),
    /// The server will never take `id` (it was deleted there): the spool
    /// drops it, and the app hears `Discarded` with `reason`.
    Drop {
        id: Uuid,
        reason: String,
    },
    /// Tell the app.
    Emit(RelayEvent),
    /// The server heard speech stop in `id` when it held `frames` of its
    /// frames: the shell ends the utterance if its pendant marks no
    /// boundaries, and carries the frames past `frames` into the next one
    /// (see `boundary::Tracker::on_endpoint`).
    Endpoint {
        id: Uuid,
        frames: u32,
    },
}

/// Events for the app. The `lanyard relay` command prints each as a JSON
/// line (inside a `host::Stamped`), and the campaign, the demo and the tests
/// read them back with this same type; the FFI converts them to its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RelayEvent {
    Connected,
    Disconnected {
        reason: String,
        retry_in_ms: u64,
    },
    UtteranceStarted {
        id: Uuid,
    },
    UtteranceEnded {
        id: Uuid,
        frames: u32,
        lost: u32,
    },
    Complete {
        id: Uuid,
        frames: u32,
    },
    Partial {
        id: Uuid,
        text: String,
    },
    Final {
        id: Uuid,
        text: String,
    },
    Reply {
        id: Uuid,
        title: String,
        body: String,
    },
    Error {
        id: Option<Uuid>,
        code: String,
        message: String,
    },
    /// The planner handed the utterance off: the app must upload `path` with
    /// an HTTP `method` request to `url` carrying `headers` (an iOS
    /// URLSession background upload task), then report the result with
    /// `Control::UploadFinished`.
    UploadTask {
        id: Uuid,
        path: String,
        url: String,
        method: String,
        headers: Vec<(String, String)>,
    },
    /// The utterance was dropped by an explicit policy, with the reason
    /// (e.g. `stale`: older than the TTL; `evicted`: the spool was full).
    Discarded {
        id: Uuid,
        reason: String,
    },
    /// Spool and loss counters, every few seconds while something changes.
    Stats(RelayStats),
}

/// The relay's counters, for the app's status screen and for loss reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStats {
    /// Bytes the spool holds on disk.
    pub spool_bytes: u64,
    /// Utterances spooled and not yet delivered, handed off or discarded.
    pub pending_utterances: u32,
    /// Utterances waiting for the app's background upload.
    pub handed_off: u32,
    /// Since start: BLE frames missing from the pendant's sequence.
    pub lost_frames: u64,
    /// Since start: duplicate BLE notifications dropped.
    pub duplicate_notifications: u64,
    /// Since start: utterances discarded by policy (TTL, eviction).
    pub discarded: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not opened on the current connection.
    Closed,
    /// `open` sent, waiting for `opened`.
    Opening,
    /// Sending.
    Open,
}

#[derive(Debug, Clone)]
struct Utt {
    codec: Codec,
    /// No start marker opened it: said in every `open`.
    unmarked: bool,
    spooled: u32,
    /// Total frames, once ended.
    total: Option<u32>,
    /// The frames of speech, when the utterance was cut at an endpoint.
    speech: Option<u32>,
    phase: Phase,
    handle: u32,
    next_send: u32,
    acked: u32,
    end_sent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Conn {
    Down { retry_at: u64 },
    Connecting,
    Up,
}

/// See the module doc.
#[derive(Debug)]
pub struct Uplink {
    cfg: UplinkConfig,
    conn: Conn,
    /// Reconnect backoff: its failure count is the failed attempts in a row.
    retries: Retries,
    /// Oldest first (UUIDv7 ids sort by time).
    utts: BTreeMap<Uuid, Utt>,
    handles: HashMap<u32, Uuid>,
    next_handle: u32,
    /// When the last utterance completed; the connection lingers after it.
    linger_until: u64,
    /// Frames acknowledged since start, for the throughput meter.
    acked_frames: u64,
    /// Send budget (a token bucket holding at most one second of frames),
    /// and when it was last refilled.
    send_tokens: f64,
    tokens_at_ms: u64,
}

impl Uplink {
    /// `seed` feeds the backoff jitter; pass something random in production
    /// and a constant in tests.
    pub fn new(cfg: UplinkConfig, seed: u64) -> Self {
        let send_tokens = f64::from(cfg.max_frames_per_sec);
        let backoff =
            Backoff::new(Duration::from_millis(cfg.backoff_base_ms), Duration::from_millis(cfg.backoff_max_ms));
        let retries = Retries::new(backoff.with_jitter(Jitter::Equal), seed);
        Self {
            cfg,
            conn: Conn::Down { retry_at: 0 },
            retries,
            utts: BTreeMap::new(),
            handles: HashMap::new(),
            next_handle: 1,
            linger_until: 0,
            acked_frames: 0,
            send_tokens,
            tokens_at_ms: 0,
        }
    }

    /// Utterances not yet acknowledged complete.
    pub fn pending(&self) -> usize {
        self.utts.len()
    }

    /// Frames of `id` the server has acknowledged as durable.
    pub fn acked(&self, id: Uuid) -> Option<u32> {
        self.utts.get(&id).map(|u| u.acked)
    }

    /// Whether the last connection attempts failed: the network is likely
    /// down or the server unreachable.
    pub fn failing(&self) -> bool {
        self.retries.failures() > 0 && self.conn != Conn::Up
    }

    /// Frames acknowledged since the uplink started (monotonic).
    pub fn acked_frames(&self) -> u64 {
        self.acked_frames
    }

    pub fn is_connected(&self) -> bool {
        self.conn == Conn::Up
    }

    /// Feeds one input at time `now_ms`; appends the resulting actions to `out`.
    pub fn handle(&mut self, now_ms: u64, input: Input, out: &mut Vec<Action>) {
        match input {
            Input::Spooled { id, codec, frames, unmarked } => {
                self.utt_entry(id, codec, unmarked).spooled = frames.min(limits::MAX_UTTERANCE_FRAMES);
            }
            Input::Ended { id, codec, frames, speech_frames, unmarked } => {
                let sendable = frames.min(limits::MAX_UTTERANCE_FRAMES);
                let u = self.utt_entry(id, codec, unmarked);
                if sendable < frames && u.total != Some(sendable) {
                    out.push(Action::Emit(RelayEvent::Error {
                        id: Some(id),
                        code: UTTERANCE_TOO_LONG.into(),
                        message: format!(
                            "{} frames past the server's limit of {sendable} are not sent; the utterance ends at the limit",
                            frames - sendable
                        ),
                    }));
                }
                u.spooled = sendable;
                u.total = Some(sendable);
                u.speech = speech_frames.filter(|&s| s < sendable);
            }
            Input::Connected => {
                self.conn = Conn::Up;
                self.retries.reset();
                out.push(Action::Emit(RelayEvent::Connected));
            }
            Input::Disconnected { reason } => {
                // "Equal jitter": a retry never comes at once, and a fleet
                // of phones that lost the server together still spreads out.
                let delay = self.retries.next_delay().as_millis() as u64;
                self.conn = Conn::Down { retry_at: now_ms + delay };
                self.handles.clear();
                for u in self.utts.values_mut() {
                    u.phase = Phase::Closed;
                    u.end_sent = false;
                }
                out.push(Action::Emit(RelayEvent::Disconnected { reason, retry_in_ms: delay }));
            }
            Input::Ack(ack) => {
                if let Some(u) = self.handles.get(&ack.handle).and_then(|id| self.utts.get_mut(id)) {
                    // Acks are cumulative; an old one arriving late changes nothing.
                    let acked = u.acked.max(ack.next.min(u.next_send));
                    self.acked_frames += u64::from(acked - u.acked);
                    u.acked = acked;
                }
            }
            Input::Server(msg) => self.on_server(now_ms, msg, out),
            Input::Forget { id } => {
                if let Some(u) = self.utts.remove(&id) {
                    self.handles.remove(&u.handle);
                }
            }
            Input::Tick => {}
        }
        self.pump(now_ms, out);
    }

    /// When the shell should next send `Tick`, if it has nothing else to say:
    /// a reconnect attempt, the end of the linger, or a send budget refilled
    /// enough to go on catching up a backlog. `None`: only inputs matter.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.conn {
            Conn::Down { retry_at } if self.wants_connection(retry_at) => Some(retry_at),
            Conn::Up if self.utts.is_empty() => Some(self.linger_until),
            Conn::Up if self.paced() => Some(self.tokens_at_ms + PACING_REFILL_MS),
            _ => None,
        }
    }

    /// Whether frames are ready to go and the window allows them, but the send
    /// budget does not.
    fn paced(&self) -> bool {
        self.send_tokens < 1.0
            && self
                .utts
                .values()
                .any(|u| u.phase == Phase::Open && u.next_send < u.spooled && u.next_send - u.acked < self.cfg.window)
    }

    fn utt_entry(&mut self, id: Uuid, codec: Codec, unmarked: bool) -> &mut Utt {
        self.utts.entry(id).or_insert(Utt {
            codec,
            unmarked,
            spooled: 0,
            total: None,
            speech: None,
            phase: Phase::Closed,
            handle: 0,
            next_send: 0,
            acked: 0,
            end_sent: false,
        })
    }

    fn wants_connection(&self, now_ms: u64) -> bool {
        !self.utts.is_empty() || now_ms < self.linger_until
    }

    fn on_server(&mut self, now_ms: u64, msg: ServerMsg, out: &mut Vec<Action>) {
        match msg {
            ServerMsg::Opened { utterance, handle, next_seq, complete } => {
                let Some(u) = self.utts.get_mut(&utterance) else { return };
                if u.handle != handle || u.phase != Phase::Opening {
                    return;
                }
                if complete {
                    self.finish(now_ms, utterance, next_seq, out);
                    return;
                }
                // The server acknowledges only durable audio, so it can never
                // hold less than it acknowledged. If it does, it broke that
                // promise (lost a disk, or acked before fsync): say so loudly.
                // The spool keeps everything until `complete`, and the resume
                // below re-sends what the server lacks. (Acknowledged frames
                // are not fsynced on the phone, `Spool::needs_sync`, so if the
                // phone's OS also crashed before a later fsync, the frames
                // both lost are gone: the error names the broken promise.)
                if next_seq < u.acked {
                    out.push(Action::Emit(RelayEvent::Error {
                        id: Some(utterance),
                        code: SERVER_LOST_ACKED_AUDIO.into(),
                        message: format!(
                            "the server acknowledged {} frames but now holds {next_seq}; re-sending them from the spool. \
                             The server lost audio it had declared durable: check its disk and fsync settings",
                            u.acked
                        ),
                    }));
                }
                // The server holds more than the spool: an OS crash took
                // frames the server had acked before the spool's fsync (the
                // page cache died with it). The host never carries on an
                // utterance across an OS restart (see `host::open`), so an
                // ended one is the case here: the server's copy is the whole
                // utterance, and `end` says so.
                if next_seq > u.spooled {
                    let recovered = u.total.is_some();
                    out.push(Action::Emit(RelayEvent::Error {
                        id: Some(utterance),
                        code: SPOOL_LOST_ACKED_AUDIO.into(),
                        message: if recovered {
                            format!(
                                "the spool kept {} frames but the server had acknowledged {next_seq} (an OS crash took the rest before \
                                 the spool's fsync); ending the utterance with the server's copy",
                                u.spooled
                            )
                        } else {
                            format!(
                                "the spool kept {} frames but the server had acknowledged {next_seq}, and the utterance is still open; \
                                 frames the spool numbers below {next_seq} will not reach the server",
                                u.spooled
                            )
                        },
                    }));
                    if recovered {
                        u.spooled = next_seq;
                        u.total = Some(next_seq);
                    }
                }
                // Resume exactly where the server's durable copy ends.
                u.phase = Phase::Open;
                u.acked = next_seq.min(u.spooled);
                u.next_send = u.acked;
            }
            ServerMsg::Complete { utterance, frames } => self.finish(now_ms, utterance, frames, out),
            ServerMsg::Partial { utterance, text } => {
                out.push(Action::Emit(RelayEvent::Partial { id: utterance, text }));
            }
            ServerMsg::Endpoint { utterance, frames } => out.push(Action::Endpoint { id: utterance, frames }),
            ServerMsg::Final { utterance, text, .. } => {
                out.push(Action::Emit(RelayEvent::Final { id: utterance, text }));
            }
            ServerMsg::Reply { utterance, title, body } => {
                out.push(Action::Emit(RelayEvent::Reply { id: utterance, title, body }));
            }
            // Deleted on the server, and deletion is final: sending it again
            // can only be refused, so the copy goes.
            ServerMsg::Error { utterance: Some(id), code, .. }
                if code == wire::ERROR_GONE && self.utts.contains_key(&id) =>
            {
                if let Some(u) = self.utts.remove(&id) {
                    self.handles.remove(&u.handle);
                }
                out.push(Action::Drop { id, reason: DELETED_ON_SERVER.into() });
            }
            ServerMsg::Error { utterance, code, message } => {
                out.push(Action::Emit(RelayEvent::Error { id: utterance, code, message }));
            }
        }
    }

    fn finish(&mut self, now_ms: u64, id: Uuid, frames: u32, out: &mut Vec<Action>) {
        if let Some(u) = self.utts.remove(&id) {
            self.handles.remove(&u.handle);
            self.linger_until = now_ms + self.cfg.linger_ms;
            out.push(Action::Done(id));
            out.push(Action::Emit(RelayEvent::Complete { id, frames }));
        }
    }

    /// Sends whatever the state allows.
    fn pump(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        match self.conn {
            Conn::Down { retry_at } => {
                if now_ms >= retry_at && self.wants_connection(now_ms) {
                    self.conn = Conn::Connecting;
                    out.push(Action::Connect);
                }
                return;
            }
            Conn::Connecting => return,
            Conn::Up => {}
        }
        if !self.wants_connection(now_ms) {
            self.conn = Conn::Down { retry_at: 0 };
            out.push(Action::Disconnect);
            return;
        }
        // Refill the send budget for the time that passed.
        let rate = f64::from(self.cfg.max_frames_per_sec);
        let elapsed = now_ms.saturating_sub(self.tokens_at_ms) as f64 / 1000.0;
        self.send_tokens = (self.send_tokens + elapsed * rate).min(rate);
        self.tokens_at_ms = now_ms;
        let mut opening = self.utts.values().filter(|u| u.phase != Phase::Closed).count();
        for (&id, u) in &mut self.utts {
            if u.phase == Phase::Closed {
                // The server caps open utterances per connection; stay under it
                // and open the rest as earlier ones complete.
                if opening >= limits::MAX_OPEN_UTTERANCES {
                    continue;
                }
                opening += 1;
                u.handle = self.next_handle;
                self.next_handle = self.next_handle.wrapping_add(1).max(1);
                self.handles.insert(u.handle, id);
                u.phase = Phase::Opening;
                out.push(Action::SendText(ClientMsg::Open {
                    utterance: id,
                    handle: u.handle,
                    codec: u.codec,
                    unmarked: u.unmarked,
                }));
                continue;
            }
            if u.phase != Phase::Open {
                continue;
            }
            while u.next_send < u.spooled && u.next_send - u.acked < self.cfg.window && self.send_tokens >= 1.0 {
                out.push(Action::SendAudio { id, handle: u.handle, seq: u.next_send });
                u.next_send += 1;
                self.send_tokens -= 1.0;
            }
            if let Some(total) = u.total
                && !u.end_sent
                && u.next_send >= total
            {
                u.end_sent = true;
                // A speech cut past the frames the server holds (an OS crash
                // shortened the spool, see `Opened`) cuts nothing.
                let speech_frames = u.speech.filter(|&s| s < total);
                out.push(Action::SendText(ClientMsg::End { utterance: id, frames: total, speech_frames }));
            }
        }
    }
}
