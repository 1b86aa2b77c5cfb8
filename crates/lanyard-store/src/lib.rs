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

pub use lanyard_proto::wire::{Segment, Word};
use thiserror::Error;
use uuid::Uuid;

/// A registered device (a phone with its pendant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: Uuid,
    pub name: String,
    pub created_ms: i64,
    pub push: Option<PushTarget>,
    /// Why the last push target was removed, if a provider said it was dead.
    pub push_disabled_reason: Option<String>,
}

/// Where a device's notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub platform: PushPlatform,
    pub token: String,
    /// APNs only: which gateway the token belongs to. A token minted by a
    /// development build is valid only on the sandbox gateway.
    pub environment: PushEnvironment,
}

pub use lanyard_proto::wire::PushEnvironment;

/// What the server answered for an utterance: the notification's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRecord {
    pub title: String,
    pub body: String,
    /// Extra key/value pairs for the app, as a JSON object text.
    pub data_json: String,
}

/// Where a push request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushStatus {
    /// Waiting for (another) attempt.
    Pending,
    /// Accepted by the provider.
    Sent,
    /// Given up, with the reason in `last_error`.
    Undeliverable,
}

/// The result of one delivery attempt, as the sender records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    Sent,
    /// Try again at `next_attempt_ms`.
    Retry {
        next_attempt_ms: i64,
        error: String,
    },
    /// Never try again.
    Undeliverable {
        reason: String,
    },
}

/// An utterance row.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    pub id: Uuid,
    pub device_id: Uuid,
    /// The audio codec; `None` for a text-only utterance (transcribed on the
    /// phone, sent as text).
    pub codec: Option<Codec>,
    pub state: UtteranceState,
    /// Frames the utterance has, known once it is complete.
    pub frames: u32,
    /// The first this many frames are the utterance's speech; the rest were
    /// carried by the relay into its next utterance, which transcribes them
    /// (`speech_frames` of the wire's `end`). `None`: all of them.
    pub speech_frames: Option<u32>,
    /// No start marker opened it (an Omi pendant's utterance, which its
    /// relay ended at the server's endpoint or the frame limit; the wire's
    /// `unmarked`). One with no speech is [`Utterance::silent`]: stored,
    /// and answered by nothing.
    pub unmarked: bool,
    pub transcript: Option<String>,
    /// The transcript in timed pieces (times in seconds from the first
    /// frame, words where the engine timed them), stored with the
    /// transcript by [`Store::set_transcript`]. Empty before that, for a
    /// text-only utterance, and for rows transcribed before segments were kept.
    pub segments: Vec<Segment>,
    pub reply_title: Option<String>,
    pub reply_body: Option<String>,
    /// JSON object text, with the reply.
    pub reply_data: Option<String>,
    pub error: Option<String>,
    pub created_ms: i64,
    pub timings: Timings,
    /// When the retention sweeper deleted the audio file; `None` while the
    /// audio is kept (and always for a text-only utterance, which has none).
    pub audio_purged_ms: Option<i64>,
}

impl Utterance {
    /// The frames to transcribe: the first [`Self::speech_frames`], or all.
    pub fn speech(&self) -> u32 {
        self.speech_frames.map_or(self.frames, |s| s.min(self.frames))
    }

    /// An unmarked utterance transcribed as nothing: a pendant with no
    /// button heard a quiet room. It is finished without a reply (the
    /// pipeline makes none, and [`Store::unfinished`] does not list it),
    /// where a marked one, which the user opened, is answered even so.
    pub fn silent(&self) -> bool {
        self.unmarked && self.state == UtteranceState::Transcribed && self.transcript.as_deref() == Some("")
    }

    /// The device-facing view of the row.
    pub fn view(&self) -> UtteranceView {
        UtteranceView {
            id: self.id,
            state: self.state,
            frames: self.frames,
            transcript: self.transcript.clone(),
            segments: self.segments.clone(),
            reply_title: self.reply_title.clone(),
            reply_body: self.reply_body.clone(),
            error: self.error.clone(),
            timings: self.timings.clone(),
        }
    }
}

/// How an utterance ended, as its relay said: what [`Store::mark_complete`]
/// records with the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Completion {
    /// Frames the utterance has.
    pub frames: u32,
    /// The first this many are its speech (see [`Utterance::speech_frames`]).
    pub speech_frames: Option<u32>,
    /// No start marker opened it (see [`Utterance::unmarked`]).
    pub unmarked: bool,
}

impl Completion {
    /// `frames` frames, all of them speech, of a marked utterance.
    pub fn frames(frames: u32) -> Self {
        Completion { frames, ..Completion::default() }
    }
}

/// An utterance whose audio the retention policy may delete: finished
/// (`transcribed`, `replied` or `failed`), with audio, not yet purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeCandidate {
    pub id: Uuid,
    pub device_id: Uuid,
    pub created_ms: i64,
}

/// A push request in the outbox.
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
    /// JSON object text: the reply's data.
    pub data_json: String,
    pub created_ms: i64,
    pub status: PushStatus,
    /// Attempts recorded so far (sent, retried or given up).
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub sent_ms: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Error)]
pub enum StoreError {
    /// The utterance id exists and belongs to another device. Callers report
    /// this as "not found" so that ids of other devices cannot be probed.
    #[error("utterance {0} belongs to another device")]
    WrongDevice(Uuid),
    #[error("no utterance {0}")]
    NoUtterance(Uuid),
    /// The utterance was deleted (by its device or the admin), and its id is
    /// remembered so that nothing can bring it back: a late upload, text
    /// post or `open` of it fails with this. Another device's deleted id is
    /// [`StoreError::WrongDevice`], as its live ids are.
    #[error("utterance {0} was deleted; it is not accepted again, so drop any copy of it")]
    Deleted(Uuid),
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

    /// Replaces the device's push target (re-registration replaces the old
    /// token) and clears any earlier disablement.
    async fn set_push_target(&self, device_id: Uuid, target: &PushTarget) -> Result<()>;

    /// Removes the device's push target if it is still `token` (the provider
    /// said the token is dead), recording `reason`. Returns whether it did: a
    /// device that re-registered a new token meanwhile keeps it.
    async fn disable_push_target(&self, device_id: Uuid, token: &str, reason: &str, now_ms: i64) -> Result<bool>;

    /// Creates the utterance in state `receiving` if it does not exist, and
    /// returns it. Fails with [`StoreError::WrongDevice`] if the id is taken
    /// by another device, and with [`StoreError::Deleted`] if this device's
    /// utterance of that id was deleted: deletion is final.
    async fn open_utterance(&self, id: Uuid, device_id: Uuid, codec: Codec, now_ms: i64) -> Result<Utterance>;

    async fn utterance(&self, id: Uuid) -> Result<Option<Utterance>>;

    /// Moves a `receiving` utterance to `complete` with how it ended: its
    /// frame count, how many of those frames hold its speech (see
    /// [`Utterance::speech_frames`]) and whether a marker opened it
    /// ([`Utterance::unmarked`]). Returns `true` for exactly one caller per
    /// utterance: the one that must queue it for processing. Everyone else
    /// (a stream and an upload racing, a replayed end) gets `false`, and
    /// the first caller's counts stay.
    async fn mark_complete(&self, id: Uuid, end: Completion, now_ms: i64) -> Result<bool>;

    async fn mark_stt_started(&self, id: Uuid, now_ms: i64) -> Result<()>;

    /// Stores the final transcript with its segments and moves the
    /// utterance to `transcribed`, all in one conditional write: the text
    /// and the segments are both written, by the one call that moves the
    /// state, or neither is.
    async fn set_transcript(&self, id: Uuid, text: &str, segments: &[Segment], now_ms: i64) -> Result<()>;

    /// Creates a text-only utterance (transcribed on the phone) directly in
    /// state `transcribed`, with `transcript_writes` = 1. Idempotent: if the
    /// id exists for this device the row is returned unchanged with `false`;
    /// for another device it fails with [`StoreError::WrongDevice`], and for
    /// a deleted one with [`StoreError::Deleted`]. `true` tells the one
    /// caller that must queue it for a reply.
    async fn create_text_utterance(
        &self,
        id: Uuid,
        device_id: Uuid,
        text: &str,
        now_ms: i64,
    ) -> Result<(Utterance, bool)>;

    /// Stores the reply and, in the same transaction, its push request (when
    /// the device has a push target), due at once. Moves the utterance to
    /// `replied`. Idempotent: a second call for the same utterance changes
    /// nothing and adds no second push request.
    async fn set_reply(&self, id: Uuid, reply: &ReplyRecord, push: Option<&PushTarget>, now_ms: i64) -> Result<()>;

    async fn set_failed(&self, id: Uuid, error: &str) -> Result<()>;

    /// Claims up to `limit` pending push requests that are due
    /// (`next_attempt_ms <= now_ms`) and not claimed by another sender, oldest
    /// first, and leases them until `now_ms + lease_ms`. A sender that dies
    /// holding a claim loses it when the lease runs out, and the request is
    /// sent again: delivery is at least once, and the collapse id keeps it
    /// visible once.
    async fn claim_pushes(&self, now_ms: i64, lease_ms: i64, limit: u32) -> Result<Vec<PushRequest>>;

    /// Records the outcome of one attempt and releases the claim. `Sent` also
    /// sets the utterance's `push_ms` timing (the first send wins).
    async fn record_push(&self, utterance_id: Uuid, outcome: &PushOutcome, now_ms: i64) -> Result<()>;

    /// The push request of an utterance, in any status.
    async fn push_request(&self, utterance_id: Uuid) -> Result<Option<PushRequest>>;

    /// Utterances that are `complete`, or `transcribed` and due a reply
    /// (every one but a [`Utterance::silent`] one, which gets none): queued
    /// or interrupted work that a restarted server must pick up again.
    async fn unfinished(&self) -> Result<Vec<Uuid>>;

    /// One page of a device's utterances, newest first. Ids are UUIDv7, so
    /// their order is their creation order; `before` (exclusive) is the last
    /// id of the previous page, and `None` starts at the newest. Keyset
    /// pagination: a page is one index range scan however deep it is, and
    /// rows added or deleted meanwhile never shift a page.
    async fn list_utterances(&self, device_id: Uuid, before: Option<Uuid>, limit: u32) -> Result<Vec<Utterance>>;

    /// Deletes one utterance of the device, with its push request, in one
    /// transaction, and remembers its id (a tombstone: see
    /// [`StoreError::Deleted`]). Returns `false` if there is no such utterance; fails with
    /// [`StoreError::WrongDevice`] if it belongs to another device. A push
    /// request claimed by a sender at that moment may still go out once; its
    /// outcome then finds no row ([`StoreError::NoUtterance`]) and changes nothing.
    async fn delete_utterance(&self, device_id: Uuid, id: Uuid) -> Result<bool>;

    /// Deletes every utterance of the device and their push requests, in one
    /// transaction, remembering their ids as [`Store::delete_utterance`]
    /// does, and keeps the device (its name, token and push target).
    /// Returns the number of utterances deleted.
    async fn delete_device_data(&self, device_id: Uuid) -> Result<u64>;

    /// Deletes the device with all its utterances and push requests, in one
    /// transaction, remembering the utterances' ids: its token stops working
    /// at once. Returns the number of
    /// utterances deleted, or `None` if there is no such device.
    async fn delete_device(&self, device_id: Uuid) -> Result<Option<u64>>;

    /// How many times [`Store::set_transcript`] was called for `id`, counting
    /// calls that changed nothing. A correct server makes it 0 or 1; the
    /// exactly-once tests read it to catch speech-to-text running twice.
    async fn transcript_writes(&self, id: Uuid) -> Result<u32>;

    /// Up to `limit` utterances created before `created_before_ms` whose
    /// audio may go: finished (`transcribed`, `replied` or `failed`), not
    /// text-only, and not yet purged. Oldest first. Utterances still being
    /// received or waiting for speech-to-text are never listed.
    async fn audio_to_purge(&self, created_before_ms: i64, limit: u32) -> Result<Vec<PurgeCandidate>>;

    /// Records that the utterance's audio file was deleted, at `now_ms`.
    /// Conditional on what [`Store::audio_to_purge`] checks, so the first
    /// call wins and returns `true`; a repeated call, an unfinished
    /// utterance, or one deleted meanwhile give `false` and change nothing.
    async fn mark_audio_purged(&self, id: Uuid, now_ms: i64) -> Result<bool>;

    /// How many of the device's utterances are `receiving`: opened and not
    /// ended. The server caps it per device, so that opens never ended
    /// cannot grow rows and files without limit. One index range of that
    /// device's unfinished rows, however long its history.
    async fn receiving_count(&self, device_id: Uuid) -> Result<u32>;

    /// Up to `limit` utterances still `receiving` that were created before
    /// `created_before_ms`, oldest first: candidates for the sweep of
    /// abandoned utterances, which also checks when their audio was last
    /// written before it gives up on one.
    async fn receiving_before(&self, created_before_ms: i64, limit: u32) -> Result<Vec<PurgeCandidate>>;

    /// Marks the utterance failed with `error` if it is still `receiving`,
    /// in one conditional write; `false` if it is not (it was ended, or
    /// deleted, meanwhile), and then nothing changes. The abandoned sweep's
    /// door: an `end` racing it is never turned into a failure.
    async fn abandon(&self, id: Uuid, error: &str) -> Result<bool>;
}
