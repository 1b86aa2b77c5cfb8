//! The streaming endpoint, `/v1/stream`: audio in, durable acks out.
//!
//! # Group commit
//!
//! The connection loop takes one message, then everything else already
//! waiting on the socket (up to [`BATCH`] messages: a relay sends about ten
//! in one write every 200 ms), and hands the audio of the batch, one append
//! per utterance, to the server-wide group committer
//! (`crate::audio::commit`, through `AudioStore::commit`). It sends one
//! cumulative ACK per utterance when the committer answers, and reads
//! nothing more until then.
//!
//! The committer is one thread for all connections. It takes every append
//! queued, `write()`s each to its utterance's file, makes them all durable
//! with one sync, and only then answers: `syncfs(2)` on the data directory
//! when two or more files were touched (one syscall for the filesystem: the
//! `ingest` bench's group commit of 100 connections' appends takes 5.7 ms,
//! of 1,000 17.2 ms), `fdatasync` for a
//! single file, and `fdatasync` on each file if `syncfs` fails. So an
//! acknowledgement is sent only after its frames are durable: the sync that
//! covers them started after they were written. Because `syncfs` also
//! writes back whatever else is dirty on that filesystem, the data directory
//! should be on a filesystem of its own.
//!
//! **The fsync window**: a sync starts as soon as an append is waiting and
//! no sync is running, but at most one every `audio::commit::COMMIT_WINDOW`
//! (5 ms); appends that arrive while a sync runs, or within the window of
//! the previous one's start, share the next. A frame therefore waits at most
//! about two syncs plus the window (2,000 streams on a 2-core VM: p50 6 ms
//! from the relay's write to the ACK, p99 set by the disk's slowest flushes;
//! see docs/benchmarks.md), and a lone frame on an idle server waits for
//! nothing but its own sync: there is no timer before the first sync.
//! Per-file `fdatasync`s, as every connection did before, cost about
//! 0.2 ms each on an idle disk (`commit_N_frames`) and queue behind one
//! another in the journal; one `syncfs` a window carries thousands of
//! streams (before the committer, 2,000 streams gave an ack p99 of 717 ms).
//!
//! The alternative, a shared write-ahead log with one `fdatasync` per window
//! and the utterance files written later and replayed at start-up, was not
//! needed: with the committer, 2,000 streams take about 0.65 of a core of
//! server CPU, and the ack p99 (median 84 ms over six runs against a bar of
//! 100 ms) is set by the disk's flush latency, which a log would wait for
//! just the same.
//!
//! Backpressure: each connection has at most one batch at the committer and
//! reads no more from its socket until it is durable, so if storage falls
//! behind, the committer's queue is bounded by the connections and TCP
//! slows the senders. After the frames are durable, the live transcriber is
//! fed (`Live::feed`), in order, on the committer's feeder thread (off the
//! ack's path); `end` waits for the connection's feeds, so the utterance
//! completes only once the live state has all its frames, as when the feed
//! ran before the ack.
//!
//! Control messages are handled in order with the audio around them: a
//! pending batch is committed before `end` is looked at, so `end` sees every
//! frame that preceded it.
//!
//! # Limits
//!
//! Each limit closes the socket with its own code (see `lanyard_proto::wire::close`):
//! oversized frames or text, an utterance past its frame limit, too many open
//! utterances, frames faster than the device's rate (4004, a token bucket
//! shared by all the device's streams), and an idle connection (4005, after
//! `[limits] idle_timeout_secs`). A device over its number of simultaneous
//! streams is refused before the upgrade, with HTTP 429 (see `crate::limits`).
//! A resent frame the server already holds is dropped before the rate is
//! counted, so a resume costs only the frames it adds.
//!
//! The WebSocket layer refuses a frame or message larger than the
//! protocol's largest ([`MAX_WS_MESSAGE`]) as soon as its header says so,
//! before buffering it, and the stream is closed with 4001. Every message
//! the server sends must be written within `[connections] send_timeout_secs`:
//! a peer that reads nothing is closed (1001) rather than left holding the
//! connection and its buffers. The connection's share of
//! `[connections] max_connections` is held until the stream ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::FutureExt;
use lanyard_proto::ble::Codec;
use lanyard_proto::opus_toc;
use lanyard_proto::wire::{self, Ack, Binary, ClientMsg, ServerMsg, UtteranceState, close, limits};
use lanyard_store::{Completion, StoreError};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::audio::{Append, Then, UtteranceAudio};
use crate::auth::StreamDevice;
use crate::error::ApiError;
use crate::limits::TokenBucket;
use crate::listen::ConnPermit;
use crate::metrics::{
    self, AckWritten, FrameDuplicate, FramesDurable, FramesReceived, Limit, Limited, StreamClosed, StreamOpened,
};
use crate::{AppState, now_ms};

/// Audio of one batch by handle: the sequence number of its first frame, and
/// the frames in order.
type Batch = HashMap<u32, (u32, Vec<Vec<u8>>)>;

/// Most messages committed together. Bounds the memory of one batch and the
/// delay of the first ack in it.
const BATCH: usize = 256;

/// The largest WebSocket message (and frame) the protocol has: an AUDIO
/// message with the largest codec frame, or the largest JSON text. Anything
/// larger is refused from its header, with close 4001, so a client cannot
/// make the server buffer more than this per connection.
pub const MAX_WS_MESSAGE: usize = {
    let audio = limits::MAX_FRAME_BYTES + wire::AUDIO_HEADER_LEN;
    if audio > limits::MAX_TEXT_BYTES { audio } else { limits::MAX_TEXT_BYTES }
};

pub async fn stream(
    State(state): State<AppState>,
    StreamDevice(device, token_hash): StreamDevice,
    permit: Option<Extension<ConnPermit>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // In the API's error shape, like every other refusal.
    let ws = ws.map_err(|e| {
        ApiError::BadRequest(format!("{e}: open {} as a WebSocket (wss://), with a device token", wire::STREAM_PATH))
    })?;
    // A device that spent its opens (its last stream was closed 4004 for
    // them) is refused before the upgrade until it may open again: a client
    // that reconnects in a loop gets a cheap 429, not a WebSocket each time
    // (and, by its token, no store lookup either: `StreamDevice`).
    let wait = state.limiter.open_wait(device.id);
    if !wait.is_zero() {
        state.limiter.refuse_token(token_hash, wait);
        return Err(state.limiter.opens_refusal(wait));
    }
    // The slot is taken before the upgrade, so a device over its limit gets
    // an HTTP answer it can read, and held until the connection ends.
    let Some(slot) = state.limiter.stream_slot(device.id) else {
        metrics::emit(Limited { limit: Limit::Streams });
        return Err(ApiError::TooManyRequests {
            code: "too_many_streams",
            message: format!(
                "this device already has {} streams open; close one, or wait for the server to see a dead one end",
                state.limiter.cfg.streams_per_device
            ),
            retry_after_secs: 1,
        });
    };
    let frames = state.limiter.frame_bucket(device.id);
    let idle = Duration::from_secs(state.limiter.cfg.idle_timeout_secs);
    Ok(ws.max_message_size(MAX_WS_MESSAGE).max_frame_size(MAX_WS_MESSAGE).on_upgrade(move |socket| async move {
        let (_slot, _permit) = (slot, permit);
        metrics::emit(StreamOpened);
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = state.hub.join(device.id, tx);
        let mut c = Conn {
            state: state.clone(),
            device: device.id,
            socket,
            results: rx,
            streams: HashMap::new(),
            frames,
            idle,
            batch_start: None,
            feeding: Vec::new(),
        };
        let end = c.run().await;
        state.hub.leave(device.id, conn);
        if let Err((code, reason)) = end {
            tracing::info!(device = %device.id, code, %reason, "closing stream");
            let close = Message::Close(Some(CloseFrame { code, reason: close_reason(&reason).into() }));
            let _ = tokio::time::timeout(state.send_timeout, c.socket.send(close)).await;
        }
        metrics::emit(StreamClosed);
    }))
}

/// One utterance open on this connection.
struct Open {
    utterance: Uuid,
    codec: Codec,
    /// No start marker opened it (the `open`'s `unmarked`): stored with its
    /// completion, so that one with no speech gets no reply.
    unmarked: bool,
    audio: Arc<Mutex<UtteranceAudio>>,
    /// Frames accepted so far (durable, or in the batch being committed).
    next_seq: u32,
}

struct Conn {
    state: AppState,
    device: Uuid,
    socket: WebSocket,
    results: mpsc::UnboundedReceiver<ServerMsg>,
    streams: HashMap<u32, Open>,
    /// The device's frame rate bucket, shared with its other streams.
    frames: Arc<Mutex<TokenBucket>>,
    idle: Duration,
    /// When the oldest frame of the batch being built was read, for the
    /// time-to-safe and ack latency metrics.
    batch_start: Option<Instant>,
    /// Feeds of durable frames to the live transcriber not known to be done
    /// (each answers when done, or is dropped if the feed was dropped).
    /// `end` waits for them, so the pipeline's `take_final` sees every frame.
    feeding: Vec<tokio::sync::oneshot::Receiver<()>>,
}

/// A close frame's reason: at most 123 bytes of UTF-8 (RFC 6455 5.5: a
/// control frame's payload is at most 125 bytes, two of them the code).
/// Longer reasons are cut at a character boundary; the log has them whole.
fn close_reason(reason: &str) -> &str {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason;
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Why a connection ends: a close code and a reason for the peer.
type Close = (u16, String);

impl Conn {
    async fn run(&mut self) -> Result<(), Close> {
        let idle = self.idle;
        loop {
            let first = tokio::select! {
                m = self.socket.recv() => m,
                msg = self.results.recv() => {
                    let Some(msg) = msg else {
                        // The hub dropped this stream's sender: the device was removed.
                        self.commit(&mut HashMap::new()).await?;
                        return Err((close::REVOKED, "this device was removed; its token no longer works".into()));
                    };
                    self.send_text(&msg).await?;
                    continue;
                }
                _ = tokio::time::sleep(idle) => {
                    metrics::emit(Limited { limit: Limit::Idle });
                    return Err((close::IDLE_TIMEOUT, format!("no message for {}s", idle.as_secs())));
                }
            };
            let mut batch: Batch = HashMap::new();
            let mut next = first;
            let mut taken = 0;
            loop {
                match next {
                    Some(Err(e)) if too_large(&e) => {
                        metrics::emit(Limited { limit: Limit::TooLarge });
                        return Err((
                            close::FRAME_TOO_LARGE,
                            format!("a message over {MAX_WS_MESSAGE} bytes; drop the utterance that made it"),
                        ));
                    }
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                        self.commit(&mut batch).await?;
                        return Ok(());
                    }
                    Some(Ok(Message::Binary(b))) => self.on_binary(&b, &mut batch)?,
                    Some(Ok(Message::Text(t))) => {
                        self.commit(&mut batch).await?;
                        self.on_text(t.as_str()).await?;
                    }
                    Some(Ok(_)) => {}
                }
                taken += 1;
                if taken >= BATCH {
                    break;
                }
                match self.socket.recv().now_or_never() {
                    Some(m) => next = m,
                    None => break,
                }
            }
            self.commit(&mut batch).await?;
        }
    }

    fn on_binary(&mut self, b: &[u8], batch: &mut Batch) -> Result<(), Close> {
        let audio = match wire::parse_binary(b) {
            Ok(Binary::Audio(a)) => a,
            Ok(Binary::Ack(_)) => return Err((close::PROTOCOL, "ACK is a server message".into())),
            Err(e) => return Err((e.close_code(), e.to_string())),
        };
        let Some(open) = self.streams.get_mut(&audio.handle) else {
            return Err((close::PROTOCOL, format!("audio for handle {} before `open`", audio.handle)));
        };
        if audio.seq < open.next_seq {
            // A resend of a frame we hold: drop it, the next ack covers it.
            metrics::emit(FrameDuplicate);
            batch.entry(audio.handle).or_insert((open.next_seq, Vec::new()));
            return Ok(());
        }
        if audio.seq > open.next_seq {
            return Err((
                close::PROTOCOL,
                format!(
                    "frame {} of {} skips ahead of {}; resume from `opened.next_seq`",
                    audio.seq, open.utterance, open.next_seq
                ),
            ));
        }
        if audio.seq >= limits::MAX_UTTERANCE_FRAMES {
            return Err((
                close::UTTERANCE_TOO_LONG,
                format!(
                    "utterance {} passed {} frames; end it and start another",
                    open.utterance,
                    limits::MAX_UTTERANCE_FRAMES
                ),
            ));
        }
        // Seconds, not packets: a frame claiming 120 ms would make the
        // frame limit six times longer in audio, so each is judged by its
        // TOC before anything decodes it.
        if let Err(e) = opus_toc::check_frame(open.codec, audio.frame) {
            metrics::emit(Limited { limit: Limit::FrameDuration });
            return Err((close::BAD_FRAME, format!("frame {}: {e}", audio.seq)));
        }
        if !self.frames.lock().expect("bucket poisoned").take(Instant::now()) {
            metrics::emit(Limited { limit: Limit::Frames });
            let cfg = &self.state.limiter.cfg;
            return Err((
                close::RATE_LIMITED,
                format!(
                    "more than {} frames a second (burst {}) from this device; reconnect and resume more slowly",
                    cfg.frames_per_sec, cfg.frame_burst
                ),
            ));
        }
        let seq = open.next_seq;
        open.next_seq += 1;
        self.batch_start.get_or_insert_with(Instant::now);
        batch.entry(audio.handle).or_insert((seq, Vec::new())).1.push(audio.frame.to_vec());
        Ok(())
    }

    /// Makes the batch durable, then acks it: every utterance's append goes
    /// to the group committer at once, and each ack waits for its ticket.
    async fn commit(&mut self, batch: &mut Batch) -> Result<(), Close> {
        let received = self.batch_start.take();
        let mut tickets = Vec::with_capacity(batch.len());
        for (handle, (first, frames)) in batch.drain() {
            let Some(open) = self.streams.get(&handle) else { continue };
            let count = frames.len() as u64;
            let (live, device, utterance, codec) = (self.state.live.clone(), self.device, open.utterance, open.codec);
            // Positional: frames a racing upload stored meanwhile are skipped.
            // Once durable, the frames go to the live transcriber too (Opus
            // decode and voice activity: tens of microseconds a frame), on the
            // committer's feeder thread, in order.
            let (fed, feeding) = tokio::sync::oneshot::channel();
            let then: Then = Box::new(move |first, frames: &[Vec<u8>]| {
                live.feed(device, utterance, codec, first, frames);
                let _ = fed.send(());
            });
            self.feeding.retain_mut(|f| matches!(f.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty)));
            self.feeding.push(feeding);
            let ticket = self.state.audio.commit(Append { audio: open.audio.clone(), first, frames, then: Some(then) });
            tickets.push((handle, count, ticket));
        }
        for (handle, count, ticket) in tickets {
            let durable = ticket.await.map_err(|e| {
                tracing::error!(error = %e, "cannot store audio");
                (close::GOING_AWAY, "the server cannot store audio right now; retry later".to_string())
            })?;
            if count > 0 {
                metrics::emit(FramesReceived { count });
            }
            if let Some(received) = received.filter(|_| count > 0) {
                metrics::emit(FramesDurable { received });
            }
            let ack = wire::encode_ack(Ack { handle, next: durable });
            self.send(Message::Binary(ack.to_vec().into())).await?;
            if let Some(received) = received.filter(|_| count > 0) {
                metrics::emit(AckWritten { received });
            }
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Close> {
        let msg = wire::parse_client_text(text).map_err(|e| (e.close_code(), e.to_string()))?;
        match msg {
            ClientMsg::Open { utterance, handle, codec, unmarked } => {
                self.open(utterance, handle, codec, unmarked).await
            }
            ClientMsg::End { utterance, frames, speech_frames } => self.end(utterance, frames, speech_frames).await,
        }
    }

    async fn open(&mut self, utterance: Uuid, handle: u32, codec: Codec, unmarked: bool) -> Result<(), Close> {
        if self.streams.contains_key(&handle) {
            return Err((close::PROTOCOL, format!("handle {handle} is already open")));
        }
        if self.streams.len() >= limits::MAX_OPEN_UTTERANCES {
            return Err((
                close::TOO_MANY_STREAMS,
                format!("at most {} utterances may be open on one connection", limits::MAX_OPEN_UTTERANCES),
            ));
        }
        if !wire::is_random_id(&utterance) {
            return self.error(Some(utterance), "invalid_id", crate::error::invalid_id_message(utterance)).await;
        }
        if let Err(wait) = self.state.limiter.open(self.device) {
            metrics::emit(Limited { limit: Limit::Opens });
            return Err((
                close::RATE_LIMITED,
                format!(
                    "over {} utterance opens a second; reconnect in {:.1} s",
                    self.state.limiter.cfg.opens_per_sec,
                    wait.as_secs_f64()
                ),
            ));
        }
        check_unfinished(&self.state, self.device, utterance).await?;
        let row = match self.state.store.open_utterance(utterance, self.device, codec, now_ms()).await {
            Ok(row) => row,
            // Word for word what an id unknown to every route gets (`ApiError`
            // from `StoreError::NoUtterance`): another device's id tells
            // nothing of its owner.
            Err(StoreError::WrongDevice(_)) => {
                return self.error(Some(utterance), "not_found", format!("no utterance {utterance}")).await;
            }
            Err(StoreError::Deleted(_)) => {
                metrics::emit(metrics::DeletedRefused);
                return self.error(Some(utterance), wire::ERROR_GONE, crate::error::gone_message(utterance)).await;
            }
            Err(e) => return self.error(Some(utterance), "internal", e.to_string()).await,
        };
        if row.codec != Some(codec) {
            return self
                .error(
                    Some(utterance),
                    "codec_mismatch",
                    format!("utterance {utterance} was opened as {:?}", row.codec),
                )
                .await;
        }
        if row.state != UtteranceState::Receiving {
            return self
                .send_text(&ServerMsg::Opened { utterance, handle, next_seq: row.frames, complete: true })
                .await;
        }
        let (audio, device) = (self.state.audio.clone(), self.device);
        let writer = tokio::task::spawn_blocking(move || audio.writer(device, utterance))
            .await
            .map_err(|e| (close::GOING_AWAY, format!("storage task failed: {e}")))?;
        let writer = match writer {
            Ok(w) => w,
            Err(e) => return self.error(Some(utterance), "storage", format!("cannot open audio: {e}")).await,
        };
        // Durable: `writer` synced any frames written but not yet synced.
        let next_seq = writer.lock().expect("audio lock poisoned").durable();
        self.streams.insert(handle, Open { utterance, codec, unmarked, audio: writer, next_seq });
        self.send_text(&ServerMsg::Opened { utterance, handle, next_seq, complete: false }).await
    }

    async fn end(&mut self, utterance: Uuid, frames: u32, speech_frames: Option<u32>) -> Result<(), Close> {
        // The live transcriber has every durable frame before the utterance
        // completes (the feeds run on the committer's feeder thread).
        for f in self.feeding.drain(..) {
            let _ = f.await;
        }
        let Some((&handle, open)) = self.streams.iter().find(|(_, o)| o.utterance == utterance) else {
            return Err((close::PROTOCOL, format!("`end` for {utterance}, which is not open on this connection")));
        };
        let held = open.audio.lock().expect("audio lock poisoned").durable();
        if held != frames {
            return self
                .error(
                    Some(utterance),
                    "frame_count",
                    format!("`end` says {frames} frames but the server holds {held}"),
                )
                .await;
        }
        if let Some(speech) = speech_frames.filter(|&s| s > frames) {
            return self
                .error(
                    Some(utterance),
                    "frame_count",
                    format!("`end` says {speech} of its {frames} frames are speech; send `speech_frames` of at most `frames`"),
                )
                .await;
        }
        let unmarked = open.unmarked;
        self.streams.remove(&handle);
        complete(&self.state, self.device, utterance, Completion { frames, speech_frames, unmarked })
            .await
            .map_err(|e| (close::GOING_AWAY, e))?;
        self.send_text(&ServerMsg::Complete { utterance, frames }).await
    }

    async fn error(&mut self, utterance: Option<Uuid>, code: &str, message: String) -> Result<(), Close> {
        self.send_text(&ServerMsg::Error { utterance, code: code.into(), message }).await
    }

    async fn send_text(&mut self, msg: &ServerMsg) -> Result<(), Close> {
        self.send(Message::Text(msg.to_json().into())).await
    }

    /// Sends one message, or gives up on the peer after the send timeout.
    async fn send(&mut self, msg: Message) -> Result<(), Close> {
        match tokio::time::timeout(self.state.send_timeout, self.socket.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err((close::GOING_AWAY, String::new())),
            Err(_) => {
                metrics::emit(Limited { limit: Limit::SendTimeout });
                Err((
                    close::GOING_AWAY,
                    format!("nothing read for {:?}; read what the server sends", self.state.send_timeout),
                ))
            }
        }
    }
}

/// Refuses the `open` of a new id while the device has its maximum of
/// utterances unfinished; an id that exists (a resume, or one the
/// store answers for otherwise) passes.
async fn check_unfinished(state: &AppState, device: Uuid, utterance: Uuid) -> Result<(), Close> {
    let internal = |e: StoreError| (close::GOING_AWAY, format!("the server cannot read its store ({e}); retry later"));
    let cap = state.limiter.cfg.unfinished_per_device;
    if state.store.receiving_count(device).await.map_err(internal)? < cap {
        return Ok(());
    }
    if state.store.utterance(utterance).await.map_err(internal)?.is_some() {
        return Ok(());
    }
    metrics::emit(Limited { limit: Limit::Unfinished });
    Err((
        close::RATE_LIMITED,
        format!("{cap} utterances of this device are open and not ended; end or resume them before opening new ones"),
    ))
}

/// Whether a read failed because a frame or message was over
/// [`MAX_WS_MESSAGE`]. The WebSocket library reports it only as its own
/// error type, which axum wraps; its text ("Space limit exceeded: ...") is
/// the one stable mark, and `hostile.rs` fails if it changes.
fn too_large(e: &axum::Error) -> bool {
    e.to_string().contains("Space limit exceeded")
}

/// Marks an utterance complete and, for the one caller that wins, queues it.
/// Shared by the stream and the upload, which is how an utterance that
/// arrives by both is processed once.
pub(crate) async fn complete(state: &AppState, device: Uuid, utterance: Uuid, end: Completion) -> Result<(), String> {
    let won = state.store.mark_complete(utterance, end, now_ms()).await.map_err(|e| e.to_string())?;
    if won {
        let Completion { frames, speech_frames, unmarked } = end;
        tracing::info!(%utterance, frames, ?speech_frames, unmarked, "utterance complete");
        state.pipeline.enqueue(device, utterance).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::close_reason;

    #[test]
    fn close_reasons_fit_a_control_frame_and_stay_utf8() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123 && cut.len() >= 121, "{}", cut.len());
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
