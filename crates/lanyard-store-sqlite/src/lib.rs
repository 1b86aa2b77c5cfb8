//! The embedded default [`Store`]: one SQLite file, through sqlx.
//!
//! # Durability
//!
//! The server acknowledges audio only once it is durable, and the utterance
//! state machine is what a restarted server resumes from. So the database runs
//! in WAL mode with `synchronous = FULL`: every commit fsyncs the WAL before it
//! returns. (`NORMAL`, the usual WAL setting, survives a crash of the process
//! but may lose the last commits on power loss, and a lost `complete` would
//! leave acknowledged audio that nobody transcribes.)
//!
//! # State transitions
//!
//! Each transition is one conditional `UPDATE ... WHERE id = ? AND state = ?`,
//! and the number of rows it changed says whether this caller made it. The
//! transitions, and what a call from any other state does:
//!
//! | call                | from                      | to            | other states                 |
//! |---------------------|---------------------------|---------------|------------------------------|
//! | `mark_complete`     | `receiving`               | `complete`    | returns `false`              |
//! | `mark_stt_started`  | `complete`                | (same)        | no-op                        |
//! | `set_transcript`    | `complete`                | `transcribed` | no-op, but still counted     |
//! | `set_reply`         | `transcribed`             | `replied`     | no-op, no push request       |
//! | `set_failed`        | not `replied` or `failed` | `failed`      | no-op: the first error stays |
//!
//! A call for an id that does not exist fails with
//! [`StoreError::NoUtterance`]. A call in a wrong state is a no-op rather than
//! an error because the usual cause is a retry after a restart, which must be
//! harmless; the trait has no "wrong state" error to report the rare real bug.
//!
//! `set_transcript` counts every call, applied or not, in `transcript_writes`:
//! the counter exists to catch a server that runs speech-to-text twice, and a
//! second run that the state check swallowed is still a second run.
//!
//! # Concurrency
//!
//! SQLite has one writer at a time. Connections wait for the write lock for up
//! to [`BUSY_TIMEOUT`]. Transactions start with their write, never with a
//! read: a deferred transaction that reads first and then writes can fail with
//! `SQLITE_BUSY` at once, without waiting, if another writer got in between.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{PushPlatform, Timings, UtteranceState};
use lanyard_store::{Device, PushRequest, PushTarget, Result, Store, StoreError, Utterance};
use sqlx::error::ErrorKind;
use sqlx::migrate::MigrateError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use uuid::Uuid;

/// How long a statement waits for another connection's write lock before it
/// fails. Writes here are single rows, done in well under a millisecond, so
/// reaching this means something holds the database (a stuck process, a
/// sqlite3 shell inside a transaction), not ordinary contention.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in a file-backed pool. SQLite serialises writers anyway; the
/// extra connections let status reads proceed under WAL while a write commits.
const MAX_CONNECTIONS: u32 = 4;

/// The migrations in `migrations/`, compiled into the binary so that the
/// server needs no files beside it.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// A [`Store`] in one SQLite database. Cloning shares the connection pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file and its parent
    /// directory if missing, and brings its schema up to date.
    ///
    /// Fails with [`StoreError::Corrupt`] if the database has migrations this
    /// version does not know, i.e. a newer Lanyard wrote it.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Blocking, but once at start-up, before anything else runs.
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // See the crate doc: acknowledged audio and its state must survive
            // power loss, not just a crash of the process.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        Self::migrate(pool).await
    }

    /// A private, empty database in memory, for tests. It lives as long as
    /// the store (and its clones) does.
    pub async fn open_in_memory() -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(backend)?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // sqlx names each `:memory:` database uniquely and opens it in shared
        // cache mode, where a second connection meets table locks that fail at
        // once (SQLITE_LOCKED) instead of waiting out the busy timeout. So the
        // pool holds exactly one connection and never lets it go: the database
        // is dropped when its last connection closes.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(backend)?;
        Self::migrate(pool).await
    }

    async fn migrate(pool: SqlitePool) -> Result<Self> {
        MIGRATOR.run(&pool).await.map_err(|e| match e {
            MigrateError::VersionMissing(v) => StoreError::Corrupt(format!(
                "schema migration {v} is applied but unknown to this version"
            )),
            e => StoreError::Backend(format!("schema migration failed: {e}")),
        })?;
        Ok(Self { pool })
    }

    /// Waits for the connections to close, which checkpoints the WAL into the
    /// main file. Optional: dropping the store loses nothing that was committed.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// [`StoreError::NoUtterance`] unless `id` exists. Called after a
    /// conditional update changed nothing, to tell "wrong state" (a no-op)
    /// from "no such utterance" (an error). Rows are never deleted, so the
    /// answer cannot change between the two statements.
    async fn ensure_utterance(&self, id: Uuid) -> Result<()> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM utterances WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        found.map(|_| ()).ok_or(StoreError::NoUtterance(id))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn add_device(&self, id: Uuid, name: &str, token_hash: &[u8; 32], now_ms: i64) -> Result<Device> {
        sqlx::query("INSERT INTO devices (id, name, token_hash, created_ms) VALUES (?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(name)
            .bind(&token_hash[..])
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                // SQLite names the column in the message, not as a constraint
                // name, so the message is the only way to tell the name apart
                // from the (practically impossible) token hash collision.
                match e.as_database_error() {
                    Some(d) if d.kind() == ErrorKind::UniqueViolation && d.message().contains("devices.name") => {
                        StoreError::DuplicateDeviceName(name.to_owned())
                    }
                    _ => backend(e),
                }
            })?;
        Ok(Device { id, name: name.to_owned(), created_ms: now_ms, push: None })
    }

    async fn device_by_token_hash(&self, token_hash: &[u8; 32]) -> Result<Option<Device>> {
        let row: Option<DeviceRow> = sqlx::query_as(
            "SELECT id, name, created_ms, push_platform, push_token FROM devices WHERE token_hash = ?",
        )
        .bind(&token_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(Device::try_from).transpose()
    }

    async fn device(&self, id: Uuid) -> Result<Option<Device>> {
        let row: Option<DeviceRow> =
            sqlx::query_as("SELECT id, name, created_ms, push_platform, push_token FROM devices WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        row.map(Device::try_from).transpose()
    }

    async fn set_push_target(&self, device_id: Uuid, target: &PushTarget) -> Result<()> {
        let done = sqlx::query("UPDATE devices SET push_platform = ?, push_token = ? WHERE id = ?")
            .bind(platform_str(target.platform))
            .bind(&target.token)
            .bind(device_id.to_string())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            // The trait has no "no such device" error. Callers pass the id of
            // the device that just authenticated, so this is a bug, not input.
            return Err(StoreError::Backend(format!("no device {device_id}")));
        }
        Ok(())
    }

    async fn open_utterance(&self, id: Uuid, device_id: Uuid, codec: Codec, now_ms: i64) -> Result<Utterance> {
        // Insert-if-absent, then read whatever is there: a retried open, or a
        // stream and an upload racing, all get the one row. An existing row
        // keeps its codec and creation time.
        sqlx::query(
            "INSERT INTO utterances (id, device_id, codec, state, created_ms) VALUES (?, ?, ?, 'receiving', ?)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(device_id.to_string())
        .bind(codec_str(codec))
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        let utterance = self.utterance(id).await?.ok_or(StoreError::NoUtterance(id))?;
        if utterance.device_id != device_id {
            return Err(StoreError::WrongDevice(id));
        }
        Ok(utterance)
    }

    async fn utterance(&self, id: Uuid) -> Result<Option<Utterance>> {
        let row: Option<UtteranceRow> = sqlx::query_as(
            "SELECT id, device_id, codec, state, frames, transcript, reply_title, reply_body, error,
                    created_ms, received_end_ms, stt_start_ms, stt_done_ms, reply_ms, push_ms
             FROM utterances WHERE id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(Utterance::try_from).transpose()
    }

    async fn mark_complete(&self, id: Uuid, frames: u32, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE utterances SET state = 'complete', frames = ?, received_end_ms = ?
             WHERE id = ? AND state = 'receiving'",
        )
        .bind(i64::from(frames))
        .bind(now_ms)
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        self.ensure_utterance(id).await?;
        Ok(false)
    }

    async fn mark_stt_started(&self, id: Uuid, now_ms: i64) -> Result<()> {
        // Overwritten on a retry after a restart, so that stt_done - stt_start
        // is the run that produced the transcript.
        let done = sqlx::query("UPDATE utterances SET stt_start_ms = ? WHERE id = ? AND state = 'complete'")
            .bind(now_ms)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            self.ensure_utterance(id).await?;
        }
        Ok(())
    }

    async fn set_transcript(&self, id: Uuid, text: &str, now_ms: i64) -> Result<()> {
        // One statement: the counter always moves, the rest only from
        // `complete`. SQLite evaluates every SET expression against the old
        // row, so each CASE sees the state before this update.
        let done = sqlx::query(
            "UPDATE utterances SET
                 transcript_writes = transcript_writes + 1,
                 transcript  = CASE WHEN state = 'complete' THEN ?1 ELSE transcript END,
                 stt_done_ms = CASE WHEN state = 'complete' THEN ?2 ELSE stt_done_ms END,
                 state       = CASE WHEN state = 'complete' THEN 'transcribed' ELSE state END
             WHERE id = ?3",
        )
        .bind(text)
        .bind(now_ms)
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoUtterance(id));
        }
        Ok(())
    }

    async fn set_reply(&self, id: Uuid, title: &str, body: &str, push: Option<&PushTarget>, now_ms: i64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let done = sqlx::query(
            "UPDATE utterances SET state = 'replied', reply_title = ?, reply_body = ?, reply_ms = ?
             WHERE id = ? AND state = 'transcribed'",
        )
        .bind(title)
        .bind(body)
        .bind(now_ms)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            // Already replied (a retry) or not yet transcribed: change nothing.
            tx.rollback().await.map_err(backend)?;
            return self.ensure_utterance(id).await;
        }
        if let Some(target) = push {
            // The state check above already makes this the only insert for
            // the utterance; DO NOTHING is a second guard, and the primary key
            // a third.
            sqlx::query(
                "INSERT INTO push_outbox (utterance_id, device_id, platform, token, title, body, created_ms)
                 SELECT id, device_id, ?, ?, ?, ?, ? FROM utterances WHERE id = ?
                 ON CONFLICT (utterance_id) DO NOTHING",
            )
            .bind(platform_str(target.platform))
            .bind(&target.token)
            .bind(title)
            .bind(body)
            .bind(now_ms)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn set_failed(&self, id: Uuid, error: &str) -> Result<()> {
        // A replied utterance stays replied: its answer exists, and trouble
        // delivering the push is the outbox's business. A failed one keeps
        // its first error, which is the cause; later ones are consequences.
        let done = sqlx::query(
            "UPDATE utterances SET state = 'failed', error = ?
             WHERE id = ? AND state IN ('receiving', 'complete', 'transcribed')",
        )
        .bind(error)
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            self.ensure_utterance(id).await?;
        }
        Ok(())
    }

    async fn unsent_pushes(&self, limit: u32) -> Result<Vec<PushRequest>> {
        let rows: Vec<PushRow> = sqlx::query_as(
            "SELECT utterance_id, device_id, platform, token, title, body, created_ms, sent_ms
             FROM push_outbox WHERE sent_ms IS NULL
             ORDER BY created_ms, utterance_id LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(PushRequest::try_from).collect()
    }

    async fn mark_push_sent(&self, utterance_id: Uuid, now_ms: i64) -> Result<()> {
        let id = utterance_id.to_string();
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // The first send is the one recorded; a repeated mark keeps it.
        let done = sqlx::query("UPDATE push_outbox SET sent_ms = ? WHERE utterance_id = ? AND sent_ms IS NULL")
            .bind(now_ms)
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM push_outbox WHERE utterance_id = ?")
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            tx.rollback().await.map_err(backend)?;
            // The trait has no "no such push request" error; the utterance
            // one is the nearest, and it names the id the caller passed.
            return exists.map(|_| ()).ok_or(StoreError::NoUtterance(utterance_id));
        }
        sqlx::query("UPDATE utterances SET push_ms = ? WHERE id = ?")
            .bind(now_ms)
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn unfinished(&self) -> Result<Vec<Uuid>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM utterances WHERE state IN ('complete', 'transcribed') ORDER BY created_ms, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        ids.iter().map(|s| parse_uuid(s)).collect()
    }

    async fn transcript_writes(&self, id: Uuid) -> Result<u32> {
        let n: Option<i64> = sqlx::query_scalar("SELECT transcript_writes FROM utterances WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        let n = n.ok_or(StoreError::NoUtterance(id))?;
        u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("transcript_writes = {n}")))
    }
}

/// Everything sqlx reports that has no meaning of its own to callers.
fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

// Text forms of the enumerations, as stored. They match the serde names in
// lanyard-proto so that the database and the JSON API read alike; they are
// spelled out here because the column values are a storage format, which must
// not change when someone renames a variant.

fn codec_str(c: Codec) -> &'static str {
    match c {
        Codec::Opus16k20ms => "opus16k20ms",
        Codec::Pcm16k => "pcm16k",
    }
}

fn parse_codec(s: &str) -> Result<Codec> {
    match s {
        "opus16k20ms" => Ok(Codec::Opus16k20ms),
        "pcm16k" => Ok(Codec::Pcm16k),
        _ => Err(StoreError::Corrupt(format!("unknown codec {s:?}"))),
    }
}

fn platform_str(p: PushPlatform) -> &'static str {
    match p {
        PushPlatform::Apns => "apns",
        PushPlatform::Fcm => "fcm",
    }
}

fn parse_platform(s: &str) -> Result<PushPlatform> {
    match s {
        "apns" => Ok(PushPlatform::Apns),
        "fcm" => Ok(PushPlatform::Fcm),
        _ => Err(StoreError::Corrupt(format!("unknown push platform {s:?}"))),
    }
}

fn parse_state(s: &str) -> Result<UtteranceState> {
    UtteranceState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown utterance state {s:?}")))
}

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("bad id {s:?}")))
}

// Rows as SQLite returns them, converted to the trait's types with every
// value checked: a database written by a newer version may hold values this
// one cannot read, and that must be an error, not a panic or a guess.

#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: String,
    name: String,
    created_ms: i64,
    push_platform: Option<String>,
    push_token: Option<String>,
}

impl TryFrom<DeviceRow> for Device {
    type Error = StoreError;

    fn try_from(r: DeviceRow) -> Result<Self> {
        let push = match (r.push_platform, r.push_token) {
            (Some(p), Some(token)) => Some(PushTarget { platform: parse_platform(&p)?, token }),
            _ => None,
        };
        Ok(Device { id: parse_uuid(&r.id)?, name: r.name, created_ms: r.created_ms, push })
    }
}

#[derive(sqlx::FromRow)]
struct UtteranceRow {
    id: String,
    device_id: String,
    codec: String,
    state: String,
    frames: i64,
    transcript: Option<String>,
    reply_title: Option<String>,
    reply_body: Option<String>,
    error: Option<String>,
    created_ms: i64,
    received_end_ms: Option<i64>,
    stt_start_ms: Option<i64>,
    stt_done_ms: Option<i64>,
    reply_ms: Option<i64>,
    push_ms: Option<i64>,
}

impl TryFrom<UtteranceRow> for Utterance {
    type Error = StoreError;

    fn try_from(r: UtteranceRow) -> Result<Self> {
        Ok(Utterance {
            id: parse_uuid(&r.id)?,
            device_id: parse_uuid(&r.device_id)?,
            codec: parse_codec(&r.codec)?,
            state: parse_state(&r.state)?,
            frames: u32::try_from(r.frames).map_err(|_| StoreError::Corrupt(format!("frames = {}", r.frames)))?,
            transcript: r.transcript,
            reply_title: r.reply_title,
            reply_body: r.reply_body,
            error: r.error,
            created_ms: r.created_ms,
            timings: Timings {
                received_end_ms: r.received_end_ms,
                stt_start_ms: r.stt_start_ms,
                stt_done_ms: r.stt_done_ms,
                reply_ms: r.reply_ms,
                push_ms: r.push_ms,
            },
        })
    }
}

#[derive(sqlx::FromRow)]
struct PushRow {
    utterance_id: String,
    device_id: String,
    platform: String,
    token: String,
    title: String,
    body: String,
    created_ms: i64,
    sent_ms: Option<i64>,
}

impl TryFrom<PushRow> for PushRequest {
    type Error = StoreError;

    fn try_from(r: PushRow) -> Result<Self> {
        Ok(PushRequest {
            utterance_id: parse_uuid(&r.utterance_id)?,
            device_id: parse_uuid(&r.device_id)?,
            target: PushTarget { platform: parse_platform(&r.platform)?, token: r.token },
            title: r.title,
            body: r.body,
            created_ms: r.created_ms,
            sent_ms: r.sent_ms,
        })
    }
}
