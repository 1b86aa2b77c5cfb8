//! The server's metadata store, as a trait.
//!
//! Audio does not live here: it is in per-utterance files that the server
//! fsyncs before it acknowledges (see `lanyard-server`'s `audio` module).
//! The store holds devices, utterance state and results, and the push outbox.
//!
//! The trait is shaped so that SQLite (embedded default, `lanyard-store-sqlite`)
//! and PostgreSQL can both implement it: every method is one statement or one
//! transaction, and every state change that must happen once is a conditional
//! update whose winner is told so ([`Store::mark_complete`]).
//!
//! Times are Unix milliseconds, chosen by the caller, so that tests can pin them.

use async_trait::async_trait;
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{PushPlatform, Timings, UtteranceState, UtteranceView};
use thiserror::Error;
use uuid::Uuid;

/// A registered device (a phone with its pendant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: Uuid,
    pub name: String,
    pub created_ms: i64,
    pub push: Option<PushTarget>,
}

/// Where a device's notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub platform: PushPlatform,
    pub token: String,
}

/// An utterance row.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    pub id: Uuid,
    pub device_id: Uuid,
    pub codec: Codec,
    pub state: UtteranceState,
    /// Frames the utterance has, known once it is complete.
    pub frames: u32,
    pub transcript: Option<String>,
    pub reply_title: Option<String>,
    pub reply_body: Option<String>,
    pub error: Option<String>,
    pub created_ms: i64,
    pub timings: Timings,
}

impl Utterance {
    /// The device-facing view of the row.
    pub fn view(&self) -> UtteranceView {
        UtteranceView {
            id: self.id,
            state: self.state,
            frames: self.frames,
            transcript: self.transcript.clone(),
            reply_title: self.reply_title.clone(),
            reply_body: self.reply_body.clone(),
            error: self.error.clone(),
            timings: self.timings.clone(),
        }
    }
}

/// A push request waiting in the outbox, or already sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    /// The utterance it answers. At most one push request exists per
    /// utterance, and providers derive their collapse id from it, so a
    /// retried send never shows the user a second notification.
    pub utterance_id: Uuid,
    pub device_id: Uuid,
    pub target: PushTarget,
    pub title: String,
    pub body: String,
    pub created_ms: i64,
    pub sent_ms: Option<i64>,
}

#[derive(Debug, Error)]
pub enum StoreError {
    /// The utterance id exists and belongs to another device. Callers report
    /// this as "not found" so that ids of other devices cannot be probed.
    #[error("utterance {0} belongs to another device")]
    WrongDevice(Uuid),
    #[error("no utterance {0}")]
    NoUtterance(Uuid),
    #[error("a device named {0:?} already exists; pick another name")]
    DuplicateDeviceName(String),
    #[error("the store holds a value this version cannot read ({0}); was the database written by a newer Lanyard?")]
    Corrupt(String),
    #[error("database error: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// See the crate doc.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Registers a device. The caller mints the token and passes only its hash.
    async fn add_device(&self, id: Uuid, name: &str, token_hash: &[u8; 32], now_ms: i64) -> Result<Device>;

    /// The device whose token hashes to `token_hash`.
    async fn device_by_token_hash(&self, token_hash: &[u8; 32]) -> Result<Option<Device>>;

    /// The device with this id.
    async fn device(&self, id: Uuid) -> Result<Option<Device>>;

    /// Replaces the device's push target.
    async fn set_push_target(&self, device_id: Uuid, target: &PushTarget) -> Result<()>;

    /// Creates the utterance in state `receiving` if it does not exist, and
    /// returns it. Fails with [`StoreError::WrongDevice`] if the id is taken
    /// by another device.
    async fn open_utterance(&self, id: Uuid, device_id: Uuid, codec: Codec, now_ms: i64) -> Result<Utterance>;

    async fn utterance(&self, id: Uuid) -> Result<Option<Utterance>>;

    /// Moves a `receiving` utterance to `complete` with its frame count.
    /// Returns `true` for exactly one caller per utterance: the one that must
    /// queue it for processing. Everyone else (a stream and an upload racing,
    /// a replayed end) gets `false`.
    async fn mark_complete(&self, id: Uuid, frames: u32, now_ms: i64) -> Result<bool>;

    async fn mark_stt_started(&self, id: Uuid, now_ms: i64) -> Result<()>;

    /// Stores the final transcript and moves the utterance to `transcribed`.
    async fn set_transcript(&self, id: Uuid, text: &str, now_ms: i64) -> Result<()>;

    /// Stores the reply and, in the same transaction, its push request (when
    /// the device has a push target). Moves the utterance to `replied`.
    /// Idempotent: a second call for the same utterance changes nothing and
    /// adds no second push request.
    async fn set_reply(&self, id: Uuid, title: &str, body: &str, push: Option<&PushTarget>, now_ms: i64) -> Result<()>;

    async fn set_failed(&self, id: Uuid, error: &str) -> Result<()>;

    /// Push requests not yet recorded as sent, oldest first.
    async fn unsent_pushes(&self, limit: u32) -> Result<Vec<PushRequest>>;

    /// Records that the push for `utterance_id` was handed to the provider.
    async fn mark_push_sent(&self, utterance_id: Uuid, now_ms: i64) -> Result<()>;

    /// Utterances that are `complete` or `transcribed`: queued or interrupted
    /// work that a restarted server must pick up again.
    async fn unfinished(&self) -> Result<Vec<Uuid>>;

    /// How many times [`Store::set_transcript`] was called for `id`, counting
    /// calls that changed nothing. A correct server makes it 0 or 1; the
    /// exactly-once tests read it to catch speech-to-text running twice.
    async fn transcript_writes(&self, id: Uuid) -> Result<u32>;
}
