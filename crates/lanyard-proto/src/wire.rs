//! The relay-to-server protocol: a WebSocket at `/v1/stream` plus the HTTP
//! shapes of the upload, query, deletion and admin endpoints.
//!
//! Control messages are JSON text frames, tagged by `"type"`. The hot path,
//! audio up and acknowledgements down, is binary, because a server carries
//! thousands of streams at 50 frames a second each:
//!
//! ```text
//! AUDIO (relay -> server), binary
//!  0      1               5               9 ..
//! +------+---------------+---------------+-----------------+
//! | 0x01 | handle u32 LE | seq u32 LE    | codec frame ... |
//! +------+---------------+---------------+-----------------+
//!
//! ACK (server -> relay), binary
//!  0      1               5
//! +------+---------------+---------------+
//! | 0x02 | handle u32 LE | next u32 LE   |
//! +------+---------------+---------------+
//! ```
//!
//! The `handle` is a number the relay picks in [`ClientMsg::Open`] so that
//! frames need not carry the 16-byte utterance id. `seq` numbers the frames
//! of one utterance from 0, with no gaps. An ACK says "every frame with
//! `seq < next` is durable on the server", so acks are cumulative and a lost
//! ack is repaired by the next one.
//!
//! Resume: after any reconnect the relay sends `open` again for the same
//! utterance id; the server answers `opened` with `next_seq`, the number of
//! frames it already holds durably, and the relay resends from there. A frame
//! with `seq < next_seq` is a duplicate and is dropped by the server, which
//! is why no audio is ever stored twice.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::ble::Codec;

/// The streaming endpoint. The version is in the path so that a v2 can run
/// beside v1 while old phones are still in the field.
pub const STREAM_PATH: &str = "/v1/stream";

/// First byte of an AUDIO message (relay to server).
pub const KIND_AUDIO: u8 = 0x01;
/// First byte of an ACK message (server to relay).
pub const KIND_ACK: u8 = 0x02;
/// Bytes before the codec frame in an AUDIO message.
pub const AUDIO_HEADER_LEN: usize = 9;
/// Length of an ACK message.
pub const ACK_LEN: usize = 9;

/// Whether `id` may name an utterance: a UUID of version 4 (random) or 7
/// (time-ordered, with 74 random bits), of the RFC 9562 variant. The nil
/// UUID, the max UUID and every other version are refused, on every route
/// and on `open`: an id someone else can predict is an id they can take
/// first. The relay mints version 7.
pub fn is_random_id(id: &Uuid) -> bool {
    id.get_variant() == uuid::Variant::RFC4122 && matches!(id.get_version_num(), 4 | 7)
}

/// The `error` code for an `open` of an utterance that was deleted on the
/// server (HTTP says the same with 410 `gone`): deletion is final, and the
/// relay drops its copy.
pub const ERROR_GONE: &str = "gone";

/// Limits the server enforces, with the close code it uses for each.
pub mod limits {
    /// Largest codec frame in one AUDIO message. Matches the pendant framing's
    /// reassembly limit: anything larger did not come from a pendant.
    pub const MAX_FRAME_BYTES: usize = crate::ble::MAX_FRAME_LEN;
    /// Longest utterance: 10 minutes of 20 ms frames. Whisper sees 30 s
    /// windows, and a pendant that never ends an utterance must not fill the disk.
    pub const MAX_UTTERANCE_FRAMES: u32 = 10 * 60 * 50;
    /// Largest JSON control message.
    pub const MAX_TEXT_BYTES: usize = 4096;
    /// Largest Ogg Opus upload body: 10 minutes at 32 kb/s is 2.4 MB of
    /// Opus; Ogg adds about 1%. 4 MiB leaves room for higher bitrates.
    pub const MAX_UPLOAD_BYTES: usize = 4 * 1024 * 1024;
    /// Largest WAV (PCM16) upload body: [`MAX_UTTERANCE_FRAMES`] frames of
    /// 640 bytes (16 kHz, 16 bits: 32,000 bytes a second, 19.2 MB for 10
    /// minutes), its 44-byte header, and 4 KiB for other chunks. Bytes of
    /// PCM are seconds of audio, so this is the utterance limit itself.
    pub const MAX_WAV_UPLOAD_BYTES: usize = MAX_UTTERANCE_FRAMES as usize * 640 + 44 + 4096;
    /// Uploads one device may have in progress at once: each holds its body
    /// in memory until it is parsed, so a device's share of memory is this
    /// many bodies, not as many as its request rate allows.
    pub const MAX_UPLOADS_PER_DEVICE: usize = 2;
    /// Utterances one connection may have open at once.
    pub const MAX_OPEN_UTTERANCES: usize = 16;
    /// A stream with no message for this long is closed: a phone that went to
    /// sleep must not pin server memory. The server's default; operators may
    /// set another (`[limits] idle_timeout_secs`).
    pub const IDLE_TIMEOUT_SECS: u64 = 60;
    /// Utterances in one `GET /v1/utterances` page when the request names no
    /// `limit`: a screenful, small enough to answer in one index scan.
    pub const LIST_DEFAULT: u32 = 50;
    /// Most utterances in one page: bounds the response and the query.
    pub const LIST_MAX: u32 = 200;
}

/// WebSocket close codes (4000-4999 is the application range).
pub mod close {
    /// The peer sent something that is not this protocol.
    pub const PROTOCOL: u16 = 4000;
    /// An AUDIO frame or text message exceeded its size limit.
    pub const FRAME_TOO_LARGE: u16 = 4001;
    /// An utterance exceeded [`super::limits::MAX_UTTERANCE_FRAMES`].
    pub const UTTERANCE_TOO_LONG: u16 = 4002;
    /// Too many utterances open on one connection.
    pub const TOO_MANY_STREAMS: u16 = 4003;
    /// The device sent faster than its rate limit.
    pub const RATE_LIMITED: u16 = 4004;
    /// No message within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4005;
    /// The device was removed while streaming: its token no longer works.
    /// Do not reconnect with it.
    pub const REVOKED: u16 = 4006;
    /// An AUDIO frame is not 20 ms of its codec (an Opus packet's TOC byte
    /// says another duration, or a PCM frame is longer than 640 bytes).
    /// Judged before decoding: limits on audio are limits in seconds.
    pub const BAD_FRAME: u16 = 4007;
    /// The server is shutting down; reconnect later and resume.
    pub const GOING_AWAY: u16 = 1001;
}

/// JSON control messages from the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// Opens (or resumes) an utterance and binds it to `handle` on this
    /// connection.
    ///
    /// `unmarked`: no start marker opened the utterance (an Omi pendant
    /// marks none): the relay ends it at the server's `endpoint` or at the
    /// frame limit, so in a quiet room it may hold no speech at all. The
    /// server then stores it without a reply, where an utterance the user
    /// opened with the pendant's button is answered even when nothing was
    /// heard. Sent only when true, so an `open` of a marked utterance is
    /// what relays before it sent, and absent means marked.
    Open {
        utterance: Uuid,
        handle: u32,
        codec: Codec,
        #[serde(default, skip_serializing_if = "is_false")]
        unmarked: bool,
    },
    /// The utterance has exactly `frames` frames; the server may process it
    /// once it holds them all.
    ///
    /// `speech_frames`: the relay ended the utterance at the server's
    /// `endpoint`, which named this frame count, and carried the frames
    /// from there on (the onset of the next sentence) into its next
    /// utterance. The server transcribes only the first `speech_frames`
    /// frames, so that no word is heard twice; it still holds all `frames`.
    /// At most `frames`. Absent (the usual case, and what relays before it
    /// send) means all of them.
    End {
        utterance: Uuid,
        frames: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        speech_frames: Option<u32>,
    },
}

/// For `skip_serializing_if`: a flag that is off is left out, so the
/// message is what a peer from before the flag sends.
fn is_false(b: &bool) -> bool {
    !*b
}

/// JSON control messages from the server. `PartialEq` only: a `final`
/// carries [`Segment`] times as floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Answer to `open`: send from `next_seq`. `complete` means the server
    /// already has the whole utterance (for example by upload), so the relay
    /// sends nothing more and may drop its copy.
    Opened { utterance: Uuid, handle: u32, next_seq: u32, complete: bool },
    /// The server holds all `frames` frames durably and has queued the
    /// utterance for transcription. The relay may delete it.
    Complete { utterance: Uuid, frames: u32 },
    /// A provisional transcript while audio is still arriving. Partials
    /// only grow: each one extends the last, word for word.
    Partial { utterance: Uuid, text: String },
    /// The server's voice activity detector heard speech stop in
    /// `utterance` (silence for a while after it) when the server held
    /// `frames` frames. A relay whose pendant marks no utterance boundaries
    /// (Omi) ends the utterance here; one whose pendant marks them ignores it.
    Endpoint { utterance: Uuid, frames: u32 },
    /// The final transcript, and the same text in timed [`Segment`]s
    /// (absent when there are none, e.g. for an empty transcript). Added
    /// after v1 with a default, so a relay that does not know `segments`
    /// ignores it and one that does accepts a `final` without it.
    Final {
        utterance: Uuid,
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        segments: Vec<Segment>,
    },
    /// The reply that is also sent as a push notification.
    Reply { utterance: Uuid, title: String, body: String },
    /// A problem with one utterance or with the connection.
    Error { utterance: Option<Uuid>, code: String, message: String },
}

/// One AUDIO message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio<'a> {
    /// The utterance, as bound by `open` on this connection.
    pub handle: u32,
    /// Frame number within the utterance, from 0, without gaps.
    pub seq: u32,
    /// One codec frame, at most [`limits::MAX_FRAME_BYTES`] bytes.
    pub frame: &'a [u8],
}

/// One ACK message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The utterance, as bound by `open` on this connection.
    pub handle: u32,
    /// Every frame with `seq < next` is durable on the server.
    pub next: u32,
}

/// A binary message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binary<'a> {
    Audio(Audio<'a>),
    Ack(Ack),
}

impl Binary<'_> {
    /// Encodes the message, the inverse of [`parse_binary`].
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Binary::Audio(a) => encode_audio(a),
            Binary::Ack(a) => encode_ack(*a).to_vec(),
        }
    }
}

/// Why a WebSocket message is not this protocol. See [`WireError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("empty binary message")]
    Empty,
    #[error("unknown binary message kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("binary message of kind 0x{kind:02x} is {len} bytes; it needs at least {min}")]
    TooShort { kind: u8, len: usize, min: usize },
    #[error("ACK message must be exactly {ACK_LEN} bytes, got {0}")]
    AckLength(usize),
    #[error("audio frame of {0} bytes exceeds the limit of {max}", max = limits::MAX_FRAME_BYTES)]
    FrameTooLarge(usize),
    #[error("control message is not valid JSON for this protocol: {0}")]
    Json(String),
    #[error("control message of {0} bytes exceeds the limit of {max}", max = limits::MAX_TEXT_BYTES)]
    TextTooLarge(usize),
}

impl WireError {
    /// The close code a server uses when a peer sends this.
    pub fn close_code(&self) -> u16 {
        match self {
            WireError::FrameTooLarge(_) | WireError::TextTooLarge(_) => close::FRAME_TOO_LARGE,
            _ => close::PROTOCOL,
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses a binary message.
pub fn parse_binary(b: &[u8]) -> Result<Binary<'_>, WireError> {
    let (&kind, _) = b.split_first().ok_or(WireError::Empty)?;
    match kind {
        KIND_AUDIO => {
            if b.len() < AUDIO_HEADER_LEN {
                return Err(WireError::TooShort { kind, len: b.len(), min: AUDIO_HEADER_LEN });
            }
            let frame = &b[AUDIO_HEADER_LEN..];
            if frame.len() > limits::MAX_FRAME_BYTES {
                return Err(WireError::FrameTooLarge(frame.len()));
            }
            Ok(Binary::Audio(Audio { handle: u32_at(b, 1), seq: u32_at(b, 5), frame }))
        }
        KIND_ACK => {
            if b.len() != ACK_LEN {
                return Err(WireError::AckLength(b.len()));
            }
            Ok(Binary::Ack(Ack { handle: u32_at(b, 1), next: u32_at(b, 5) }))
        }
        other => Err(WireError::UnknownKind(other)),
    }
}

/// Encodes an AUDIO message.
pub fn encode_audio(a: &Audio<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(AUDIO_HEADER_LEN + a.frame.len());
    out.push(KIND_AUDIO);
    out.extend_from_slice(&a.handle.to_le_bytes());
    out.extend_from_slice(&a.seq.to_le_bytes());
    out.extend_from_slice(a.frame);
    out
}

/// Encodes an ACK message.
pub fn encode_ack(a: Ack) -> [u8; ACK_LEN] {
    let mut out = [0u8; ACK_LEN];
    out[0] = KIND_ACK;
    out[1..5].copy_from_slice(&a.handle.to_le_bytes());
    out[5..9].copy_from_slice(&a.next.to_le_bytes());
    out
}

/// Parses a control message from the relay.
pub fn parse_client_text(s: &str) -> Result<ClientMsg, WireError> {
    if s.len() > limits::MAX_TEXT_BYTES {
        return Err(WireError::TextTooLarge(s.len()));
    }
    serde_json::from_str(s).map_err(|e| WireError::Json(e.to_string()))
}

/// Parses a control message from the server.
pub fn parse_server_text(s: &str) -> Result<ServerMsg, WireError> {
    serde_json::from_str(s).map_err(|e| WireError::Json(e.to_string()))
}

impl ClientMsg {
    /// The exact text frame to send.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("control messages always serialize")
    }
}

impl ServerMsg {
    /// The exact text frame to send.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("control messages always serialize")
    }
}

/// Where an utterance is in the server's pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UtteranceState {
    /// Audio is arriving.
    Receiving,
    /// All audio is durable; waiting for or in transcription.
    Complete,
    /// The final transcript is stored.
    Transcribed,
    /// The reply is stored and its push request was made.
    Replied,
    /// Processing failed; `error` says why.
    Failed,
}

impl UtteranceState {
    /// The name used in JSON and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receiving => "receiving",
            Self::Complete => "complete",
            Self::Transcribed => "transcribed",
            Self::Replied => "replied",
            Self::Failed => "failed",
        }
    }

    /// Inverse of [`UtteranceState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "receiving" => Self::Receiving,
            "complete" => Self::Complete,
            "transcribed" => Self::Transcribed,
            "replied" => Self::Replied,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// `GET /v1/utterances/{id}`: an utterance as its device sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UtteranceView {
    /// The id the relay chose for the utterance.
    pub id: Uuid,
    /// Where the utterance is in the pipeline.
    pub state: UtteranceState,
    /// Frames held durably.
    pub frames: u32,
    /// The final transcript, once transcribed.
    pub transcript: Option<String>,
    /// The transcript in timed pieces, in order; empty until transcribed,
    /// and for a text utterance (the phone sent no times). Always written;
    /// read with a default, so a view from an older server still parses.
    #[serde(default)]
    pub segments: Vec<Segment>,
    /// The reply's push title, once replied.
    pub reply_title: Option<String>,
    /// The reply's push body, once replied.
    pub reply_body: Option<String>,
    /// Why processing failed, in state `failed`.
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch at each step, when reached.
    pub timings: Timings,
}

/// A timed piece of a transcript, usually a sentence or a clause: what
/// Whisper calls a segment. Times are seconds from the start of the
/// utterance's audio (the first frame is 0), as in OpenAI's `verbose_json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Where the segment's speech starts, in seconds.
    #[serde(deserialize_with = "finite")]
    pub start: f32,
    /// Where it ends, in seconds (`>= start`).
    #[serde(deserialize_with = "finite")]
    pub end: f32,
    /// The segment's text, trimmed. The transcript is the segments' texts
    /// joined with single spaces.
    pub text: String,
    /// Word times, where the engine gave them; absent otherwise, so a reader
    /// must not count on them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<Word>,
}

/// One word of a [`Segment`] with its time, in OpenAI's `verbose_json` shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Word {
    /// The word as spoken, punctuation attached, without surrounding spaces.
    pub word: String,
    /// Start, in seconds from the start of the audio.
    #[serde(deserialize_with = "finite")]
    pub start: f32,
    /// End, in seconds from the start of the audio.
    #[serde(deserialize_with = "finite")]
    pub end: f32,
    /// The recogniser's confidence in the word, 0 to 1.
    #[serde(deserialize_with = "finite")]
    pub probability: f32,
}

/// A finite `f32`: JSON has no NaN or infinity, and a number too large for
/// an `f32` would become one, which would not survive being sent again.
fn finite<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    let v = f32::deserialize(d)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(serde::de::Error::custom("times and probabilities are finite numbers of seconds (or 0 to 1)"))
    }
}

/// The per-utterance latency breakdown, as Unix milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// The last frame (or the upload) made the utterance complete.
    pub received_end_ms: Option<i64>,
    /// Transcription started.
    pub stt_start_ms: Option<i64>,
    /// Transcription finished.
    pub stt_done_ms: Option<i64>,
    /// The reply was stored.
    pub reply_ms: Option<i64>,
    /// The push request was made.
    pub push_ms: Option<i64>,
}

/// `PUT /v1/utterances/{id}/audio` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadResponse {
    /// The utterance the upload was for.
    pub utterance: Uuid,
    /// Where it is now; at least `complete` after a successful upload.
    pub state: UtteranceState,
    /// Frames the server holds for it.
    pub frames: u32,
    /// Frames this request added; 0 when the server already had them all.
    pub added: u32,
}

/// `PUT /v1/device/push`: where the device's notifications go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRegistration {
    /// Which push service the token belongs to.
    pub platform: PushPlatform,
    /// The device token the platform issued.
    pub token: String,
    /// APNs only: `sandbox` for development builds, `production` (the
    /// default) for TestFlight and App Store builds.
    #[serde(default)]
    pub environment: PushEnvironment,
}

/// The APNs gateway a device token belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushEnvironment {
    #[default]
    Production,
    Sandbox,
}

/// `POST /v1/utterances/{id}/text`: an utterance transcribed on the phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextUtterance {
    pub text: String,
}

/// Push services a device may register with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushPlatform {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
}

/// A push platform or APNs environment not among the known names. Its
/// message names the choices, for a flag's or a config field's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is unknown; use {choices}")]
pub struct UnknownName {
    kind: &'static str,
    value: String,
    choices: &'static str,
}

/// The one parser of a platform's name, as the JSON spells it (`apns`,
/// `fcm`): `lanyard relay --push-token` and the FFI's `push_platform` both
/// read it here.
impl std::str::FromStr for PushPlatform {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "apns" => Ok(Self::Apns),
            "fcm" => Ok(Self::Fcm),
            other => Err(UnknownName { kind: "push platform", value: other.into(), choices: "apns or fcm" }),
        }
    }
}

/// The APNs environment's name, as the JSON spells it (`production`,
/// `sandbox`).
impl std::str::FromStr for PushEnvironment {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "production" => Ok(Self::Production),
            "sandbox" => Ok(Self::Sandbox),
            other => Err(UnknownName {
                kind: "push environment",
                value: other.into(),
                choices: "sandbox for development builds or production for TestFlight and App Store builds",
            }),
        }
    }
}

/// `GET /v1/utterances`: one page of the device's utterances, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UtteranceList {
    /// At most `limit` utterances, newest (highest UUIDv7) first.
    pub utterances: Vec<UtteranceView>,
    /// Pass as `before` to get the next (older) page; `null` on the last page.
    pub next_before: Option<Uuid>,
}

/// `DELETE /v1/device/data` and `DELETE /v1/admin/devices/{id}`: what was
/// removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedData {
    /// Utterance rows removed, with their transcripts, replies and push requests.
    pub utterances: u64,
    /// Audio files removed from disk.
    pub audio_files: u64,
}

/// `POST /v1/admin/devices`: registers a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// Unique among devices, 1 to 64 characters.
    pub name: String,
}

/// `POST /v1/admin/devices` answer. The token is shown only here: the server
/// stores its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCreated {
    pub id: Uuid,
    pub name: String,
    /// The device's bearer token (`lyd_...`).
    pub token: String,
}

/// The JSON body of every HTTP error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable.
    pub code: String,
    /// For people: what went wrong and what to do.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name parses to the variant whose JSON it is, so a flag, the FFI and
    /// the wire spell platforms one way.
    #[test]
    fn push_names_parse_as_the_json_spells_them() {
        for p in [PushPlatform::Apns, PushPlatform::Fcm] {
            let name = serde_json::to_value(p).unwrap();
            assert_eq!(name.as_str().unwrap().parse::<PushPlatform>(), Ok(p));
        }
        for e in [PushEnvironment::Production, PushEnvironment::Sandbox] {
            let name = serde_json::to_value(e).unwrap();
            assert_eq!(name.as_str().unwrap().parse::<PushEnvironment>(), Ok(e));
        }
        assert_eq!(
            "gcm".parse::<PushPlatform>().unwrap_err().to_string(),
            r#"push platform "gcm" is unknown; use apns or fcm"#
        );
        assert!("dev".parse::<PushEnvironment>().unwrap_err().to_string().contains("use sandbox"));
    }

    #[test]
    fn an_open_without_unmarked_is_marked_and_a_marked_open_says_nothing_of_it() {
        let id = "0190d3a4-5b6c-7d8e-9f00-112233445566";
        let old = format!(r#"{{"type":"open","utterance":"{id}","handle":1,"codec":"pcm16k"}}"#);
        let ClientMsg::Open { unmarked, .. } = parse_client_text(&old).unwrap() else { panic!("an open") };
        assert!(!unmarked, "what relays before the flag send is a marked utterance");
        let said = format!(r#"{{"type":"open","utterance":"{id}","handle":1,"codec":"pcm16k","unmarked":false}}"#);
        assert_eq!(parse_client_text(&said).unwrap().to_json(), old, "a marked open is sent as before the flag");
    }

    #[test]
    fn only_random_ids_name_utterances() {
        assert!(is_random_id(&Uuid::now_v7()));
        assert!(is_random_id(&uuid::Builder::from_random_bytes([0x5a; 16]).into_uuid()));
        assert!(!is_random_id(&Uuid::nil()));
        assert!(!is_random_id(&Uuid::max()));
        // Version 1 (time and MAC address) and a v7 layout of the wrong variant.
        assert!(!is_random_id(&Uuid::parse_str("c232ab00-9414-11ec-b3c8-9f6bdeced846").unwrap()));
        assert!(!is_random_id(&Uuid::parse_str("0190d3a4-5b6c-7d8e-cf00-112233445566").unwrap()));
        assert!(is_random_id(&Uuid::parse_str("0190d3a4-5b6c-7d8e-9f00-112233445566").unwrap()));
    }
}
