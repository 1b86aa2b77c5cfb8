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
//! Each transition is one conditional `UPDATE ... WHERE id = ? AND state = ?`
//! (or an `INSERT ... ON CONFLICT DO NOTHING` for the ones that create the
//! row), and the number of rows it changed says whether this caller made it.
//! The transitions, and what a call from any other state does:
//!
//! | call                    | from                      | to            | other states                    |
//! |-------------------------|---------------------------|---------------|---------------------------------|
//! | `open_utterance`        | (no row)                  | `receiving`   | returns the row unchanged       |
//! | `mark_complete`         | `receiving`               | `complete`    | returns `false`                 |
//! | `mark_stt_started`      | `complete`                | (same)        | no-op                           |
//! | `set_transcript`        | `complete`                | `transcribed` | no-op, but still counted        |
//! | `create_text_utterance` | (no row)                  | `transcribed` | returns the row with `false`    |
//! | `set_reply`             | `transcribed`             | `replied`     | no-op, no push request          |
//! | `set_failed`            | not `replied` or `failed` | `failed`      | no-op: the first error stays    |
//! | `delete_utterance`      | any                       | (no row)      | `false` when there is no row    |
//! | `mark_audio_purged`     | `transcribed`, `replied`, `failed` | (same), `audio_purged_ms` set | `false`, no-op |
//!
//! A call for an id that does not exist fails with
//! [`StoreError::NoUtterance`]; the two that create the row fail with
//! [`StoreError::WrongDevice`] when the id exists for another device. A call
//! in a wrong state is a no-op rather than an error because the usual cause is
//! a retry after a restart, which must be harmless; the trait has no "wrong
//! state" error to report the rare real bug.
//!
//! `set_transcript` writes the text and its segments (JSON array text in
//! the `segments` column) in the same conditional statement, so a row never
//! holds a transcript without its segments or another run's segments.
//!
//! `set_transcript` counts every call, applied or not, in `transcript_writes`:
//! the counter exists to catch a server that runs speech-to-text twice, and a
//! second run that the state check swallowed is still a second run. A text
//! utterance is created with the counter at 1, as if transcribed once.
//!
//! A text utterance has no codec; the `codec` column, `NOT NULL` since the
//! first schema, holds `text` for it, which reads back as `None`.
//!
//! # The push outbox
//!
//! `set_reply` queues at most one push request per utterance, `pending` and
//! due at once. Its lifecycle:
//!
//! ```text
//! pending ──claim_pushes──────────────▶ claimed (leased until claimed_until_ms)
//! claimed ──record_push(Sent)─────────▶ sent
//! claimed ──record_push(Undeliverable)▶ undeliverable
//! claimed ──record_push(Retry)────────▶ pending, due at next_attempt_ms
//! claimed ──the lease runs out────────▶ pending, claimable again at once
//! ```
//!
//! "Claimed" is not a stored status: it is a `pending` row whose
//! `claimed_until_ms` lies in the future. `claim_pushes` is one
//! `UPDATE ... WHERE utterance_id IN (SELECT ... LIMIT ?) RETURNING ...`, and
//! SQLite takes the write lock before the statement reads anything, so two
//! claimers (in one pool or in two processes) never both see a row as free.
//! No sender has to release a dead sender's claims: the lease does.
//!
//! `record_push` acts only on a `pending` row: it counts the attempt, releases
//! the claim and applies the outcome. On a `sent` or `undeliverable` row it is
//! a no-op, so the first recorded send wins and a repeated record changes
//! nothing. `Sent` also sets the utterance's `push_ms`, in the same
//! transaction, if it is unset. The trait gives a claim no identity, so a
//! sender whose lease ran out can still record on a row that another sender
//! has claimed since; at worst that releases the other's lease early, and the
//! request is sent once more, which the collapse id hides.
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
use lanyard_store::{
    Completion, Device, PurgeCandidate, PushEnvironment, PushOutcome, PushRequest, PushStatus, PushTarget, ReplyRecord,
    Result, Segment, Store, StoreError, Utterance,
};
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
            MigrateError::VersionMissing(v) => {
                StoreError::Corrupt(format!("schema migration {v} is applied but unknown to this version"))
            }
            e => StoreError::Backend(format!("schema migration failed: {e}")),
        })?;
        Ok(Self { pool })
    }

    /// Waits for the connections to close, which checkpoints the WAL into the
    /// main file. Optional: dropping the store loses nothing that was committed.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The utterance `id`, just inserted-if-absent. If there is none, its
    /// tombstone says why: [`StoreError::Deleted`] for `device_id`'s own,
    /// [`StoreError::WrongDevice`] for another device's (as a live id of
    /// theirs answers).
    async fn utterance_or_tombstone(&self, id: Uuid, device_id: Uuid) -> Result<Utterance> {
        if let Some(utterance) = self.utterance(id).await? {
            return Ok(utterance);
        }
        let owner: Option<String> = sqlx::query_scalar("SELECT device_id FROM tombstones WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Err(match owner {
            Some(owner) if owner == device_id.to_string() => StoreError::Deleted(id),
            Some(_) => StoreError::WrongDevice(id),
            None => StoreError::NoUtterance(id),
        })
    }

    /// [`StoreError::NoUtterance`] unless `id` exists. Called after a
    /// conditional update changed nothing, to tell "wrong state" (a no-op)
    /// from "no such utterance" (an error). A row deleted between the two
    /// statements reads as "no such utterance", which it then is.
    async fn ensure_utterance(&self, id: Uuid) -> Result<()> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM utterances WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        found.map(|_| ()).ok_or(StoreError::NoUtterance(id))
    }
}

/// The columns of a [`DeviceRow`], in `devices`.
const DEVICE_COLUMNS: &str = "id, name, created_ms, push_platform, push_token, push_environment, push_disabled_reason";

/// The columns of an [`UtteranceRow`], in `utterances`.
const UTTERANCE_COLUMNS: &str =
    "id, device_id, codec, state, frames, speech_frames, unmarked, transcript, segments, reply_title, reply_body, reply_data,
     error, created_ms, received_end_ms, stt_start_ms, stt_done_ms, reply_ms, push_ms, audio_purged_ms";

/// The columns of a [`PushRow`], in `push_outbox`.
const PUSH_COLUMNS: &str = "utterance_id, device_id, platform, token, environment, title, body, data, created_ms,
     status, attempts, next_attempt_ms, sent_ms, last_error";

/// The `codec` of a text-only utterance. The column is `NOT NULL` since the
/// first schema, and a value no codec uses costs no table rebuild.
const TEXT_CODEC: &str = "text";

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
        Ok(Device { id, name: name.to_owned(), created_ms: now_ms, push: None, push_disabled_reason: None })
    }

    async fn device_by_token_hash(&self, token_hash: &[u8; 32]) -> Result<Option<Device>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = ?");
        let row: Option<DeviceRow> =
            sqlx::query_as(&sql).bind(&token_hash[..]).fetch_optional(&self.pool).await.map_err(backend)?;
        row.map(Device::try_from).transpose()
    }

    async fn device(&self, id: Uuid) -> Result<Option<Device>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?");
        let row: Option<DeviceRow> =
            sqlx::query_as(&sql).bind(id.to_string()).fetch_optional(&self.pool).await.map_err(backend)?;
        row.map(Device::try_from).transpose()
    }

    async fn set_push_target(&self, device_id: Uuid, target: &PushTarget) -> Result<()> {
        // A new registration is a working token until a provider says
        // otherwise: the disablement of the old one goes with it.
        let done = sqlx::query(
            "UPDATE devices SET push_platform = ?, push_token = ?, push_environment = ?,
                                push_disabled_reason = NULL, push_disabled_ms = NULL
             WHERE id = ?",
        )
        .bind(platform_str(target.platform))
        .bind(&target.token)
        .bind(environment_str(target.environment))
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

    async fn disable_push_target(&self, device_id: Uuid, token: &str, reason: &str, now_ms: i64) -> Result<bool> {
        // Conditional on the token, in the one statement: a sender learns that
        // a token is dead some time after it was queued, and the device may
        // have registered a new one meanwhile, which must stay. An unknown
        // device has no such token either, so it gets `false` too.
        let done = sqlx::query(
            "UPDATE devices SET push_platform = NULL, push_token = NULL, push_environment = NULL,
                                push_disabled_reason = ?, push_disabled_ms = ?
             WHERE id = ? AND push_token = ?",
        )
        .bind(reason)
        .bind(now_ms)
        .bind(device_id.to_string())
        .bind(token)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn open_utterance(&self, id: Uuid, device_id: Uuid, codec: Codec, now_ms: i64) -> Result<Utterance> {
        // Insert-if-absent, then read whatever is there: a retried open, or a
        // stream and an upload racing, all get the one row. An existing row
        // keeps its codec and creation time. A deleted id is not inserted
        // again (the tombstone is checked in the same statement).
        sqlx::query(
            "INSERT INTO utterances (id, device_id, codec, state, created_ms)
             SELECT ?1, ?2, ?3, 'receiving', ?4 WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE id = ?1)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(device_id.to_string())
        .bind(codec_str(codec))
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        let utterance = self.utterance_or_tombstone(id, device_id).await?;
        if utterance.device_id != device_id {
            return Err(StoreError::WrongDevice(id));
        }
        Ok(utterance)
    }

    async fn utterance(&self, id: Uuid) -> Result<Option<Utterance>> {
        let sql = format!("SELECT {UTTERANCE_COLUMNS} FROM utterances WHERE id = ?");
        let row: Option<UtteranceRow> =
            sqlx::query_as(&sql).bind(id.to_string()).fetch_optional(&self.pool).await.map_err(backend)?;
        row.map(Utterance::try_from).transpose()
    }

    async fn mark_complete(&self, id: Uuid, end: Completion, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE utterances SET state = 'complete', frames = ?, speech_frames = ?, unmarked = ?, received_end_ms = ?
             WHERE id = ? AND state = 'receiving'",
        )
        .bind(i64::from(end.frames))
        .bind(end.speech_frames.map(i64::from))
        .bind(end.unmarked)
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

    async fn set_transcript(&self, id: Uuid, text: &str, segments: &[Segment], now_ms: i64) -> Result<()> {
        // One statement: the counter always moves, the rest only from
        // `complete`. SQLite evaluates every SET expression against the old
        // row, so each CASE sees the state before this update. The segments
        // ride in the same statement, so they are written with the text or
        // not at all.
        let segments = segments_json(segments)?;
        let done = sqlx::query(
            "UPDATE utterances SET
                 transcript_writes = transcript_writes + 1,
                 transcript  = CASE WHEN state = 'complete' THEN ?1 ELSE transcript END,
                 segments    = CASE WHEN state = 'complete' THEN ?4 ELSE segments END,
                 stt_done_ms = CASE WHEN state = 'complete' THEN ?2 ELSE stt_done_ms END,
                 state       = CASE WHEN state = 'complete' THEN 'transcribed' ELSE state END
             WHERE id = ?3",
        )
        .bind(text)
        .bind(now_ms)
        .bind(id.to_string())
        .bind(segments)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoUtterance(id));
        }
        Ok(())
    }

    async fn create_text_utterance(
        &self,
        id: Uuid,
        device_id: Uuid,
        text: &str,
        now_ms: i64,
    ) -> Result<(Utterance, bool)> {
        // Insert-if-absent, as open_utterance, and the insert's row count
        // names the one caller that created it. The text arrived whole, so it
        // was received at `now_ms`; the server ran no speech-to-text, so the
        // stt timings stay empty.
        let done = sqlx::query(
            "INSERT INTO utterances (id, device_id, codec, state, transcript, transcript_writes,
                                     created_ms, received_end_ms)
             SELECT ?1, ?2, ?3, 'transcribed', ?4, 1, ?5, ?5 WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE id = ?1)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(device_id.to_string())
        .bind(TEXT_CODEC)
        .bind(text)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        let utterance = self.utterance_or_tombstone(id, device_id).await?;
        if utterance.device_id != device_id {
            return Err(StoreError::WrongDevice(id));
        }
        Ok((utterance, done.rows_affected() == 1))
    }

    async fn set_reply(&self, id: Uuid, reply: &ReplyRecord, push: Option<&PushTarget>, now_ms: i64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let done = sqlx::query(
            "UPDATE utterances SET state = 'replied', reply_title = ?, reply_body = ?, reply_data = ?, reply_ms = ?
             WHERE id = ? AND state = 'transcribed'",
        )
        .bind(&reply.title)
        .bind(&reply.body)
        .bind(&reply.data_json)
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
            // a third. Pending, unclaimed and due now: the column defaults,
            // except the due time, which is the caller's clock.
            sqlx::query(
                "INSERT INTO push_outbox (utterance_id, device_id, platform, token, environment, title, body, data,
                                          created_ms, next_attempt_ms)
                 SELECT id, device_id, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7 FROM utterances WHERE id = ?8
                 ON CONFLICT (utterance_id) DO NOTHING",
            )
            .bind(platform_str(target.platform))
            .bind(&target.token)
            .bind(environment_str(target.environment))
            .bind(&reply.title)
            .bind(&reply.body)
            .bind(&reply.data_json)
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

    async fn claim_pushes(&self, now_ms: i64, lease_ms: i64, limit: u32) -> Result<Vec<PushRequest>> {
        // One statement, so that choosing the rows and leasing them are one
        // step: SQLite takes the write lock before the statement reads, so a
        // concurrent claimer (another connection, another process) waits and
        // then sees these rows leased. A SELECT followed by an UPDATE would
        // let two claimers choose the same rows.
        let sql = format!(
            "UPDATE push_outbox SET claimed_until_ms = ?2
             WHERE utterance_id IN (
                 SELECT utterance_id FROM push_outbox
                 WHERE status = 'pending' AND next_attempt_ms <= ?1 AND claimed_until_ms <= ?1
                 ORDER BY next_attempt_ms, created_ms, utterance_id
                 LIMIT ?3)
             RETURNING {PUSH_COLUMNS}"
        );
        let rows: Vec<PushRow> = sqlx::query_as(&sql)
            .bind(now_ms)
            .bind(now_ms.saturating_add(lease_ms))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut claimed = rows.into_iter().map(PushRequest::try_from).collect::<Result<Vec<_>>>()?;
        // RETURNING comes in no promised order; the subquery's is the one
        // the trait documents (ids order alike as text and as UUIDs).
        claimed.sort_by_key(|p| (p.next_attempt_ms, p.created_ms, p.utterance_id));
        Ok(claimed)
    }

    async fn record_push(&self, utterance_id: Uuid, outcome: &PushOutcome, now_ms: i64) -> Result<()> {
        let id = utterance_id.to_string();
        // Every outcome counts the attempt and releases the claim, and only
        // on a pending row: once sent or given up, the row is final, so a
        // repeated or late record changes nothing.
        let (status, next_attempt_ms, error) = match outcome {
            PushOutcome::Sent => (PushStatus::Sent, None, None),
            PushOutcome::Retry { next_attempt_ms, error } => (PushStatus::Pending, Some(*next_attempt_ms), Some(error)),
            PushOutcome::Undeliverable { reason } => (PushStatus::Undeliverable, None, Some(reason)),
        };
        let sent_ms = (status == PushStatus::Sent).then_some(now_ms);
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let done = sqlx::query(
            "UPDATE push_outbox SET
                 status           = ?1,
                 attempts         = attempts + 1,
                 claimed_until_ms = 0,
                 next_attempt_ms  = coalesce(?2, next_attempt_ms),
                 last_error       = coalesce(?3, last_error),
                 sent_ms          = coalesce(sent_ms, ?4)
             WHERE utterance_id = ?5 AND status = 'pending'",
        )
        .bind(status_str(status))
        .bind(next_attempt_ms)
        .bind(error)
        .bind(sent_ms)
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            tx.rollback().await.map_err(backend)?;
            // The trait has no "no such push request" error; the utterance
            // one is the nearest, and it names the id the caller passed.
            // A request deleted since (its utterance was deleted) reads as
            // missing, which it then is.
            return match self.push_request(utterance_id).await? {
                Some(_) => Ok(()),
                None => Err(StoreError::NoUtterance(utterance_id)),
            };
        }
        if sent_ms.is_some() {
            // The first send is the one recorded: the row can reach `sent`
            // only once, and the IS NULL guard keeps a time set otherwise.
            sqlx::query("UPDATE utterances SET push_ms = ? WHERE id = ? AND push_ms IS NULL")
                .bind(now_ms)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn push_request(&self, utterance_id: Uuid) -> Result<Option<PushRequest>> {
        let sql = format!("SELECT {PUSH_COLUMNS} FROM push_outbox WHERE utterance_id = ?");
        let row: Option<PushRow> =
            sqlx::query_as(&sql).bind(utterance_id.to_string()).fetch_optional(&self.pool).await.map_err(backend)?;
        row.map(PushRequest::try_from).transpose()
    }

    async fn unfinished(&self) -> Result<Vec<Uuid>> {
        // A silent utterance (`Utterance::silent`: unmarked, transcribed
        // as nothing) is finished: it gets no reply.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM utterances
             WHERE state = 'complete' OR (state = 'transcribed' AND NOT (unmarked = 1 AND transcript = ''))
             ORDER BY created_ms, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        ids.iter().map(|s| parse_uuid(s)).collect()
    }

    async fn list_utterances(&self, device_id: Uuid, before: Option<Uuid>, limit: u32) -> Result<Vec<Utterance>> {
        // Two statements rather than `(? IS NULL OR id < ?)`, which SQLite
        // cannot turn into an index range: each of these is one range scan of
        // `utterances_device_id` (migration 0003).
        let rows: Vec<UtteranceRow> = match before {
            None => {
                let sql =
                    format!("SELECT {UTTERANCE_COLUMNS} FROM utterances WHERE device_id = ? ORDER BY id DESC LIMIT ?");
                sqlx::query_as(&sql).bind(device_id.to_string()).bind(i64::from(limit)).fetch_all(&self.pool).await
            }
            Some(before) => {
                let sql = format!(
                    "SELECT {UTTERANCE_COLUMNS} FROM utterances WHERE device_id = ? AND id < ? ORDER BY id DESC LIMIT ?"
                );
                sqlx::query_as(&sql)
                    .bind(device_id.to_string())
                    .bind(before.to_string())
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(backend)?;
        rows.into_iter().map(Utterance::try_from).collect()
    }

    async fn delete_utterance(&self, device_id: Uuid, id: Uuid) -> Result<bool> {
        // The outbox row references the utterance, so it goes first. Both
        // statements are conditional on the device: another device's id
        // deletes nothing, and the check after tells why.
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query(
            "DELETE FROM push_outbox WHERE utterance_id IN (SELECT id FROM utterances WHERE id = ?1 AND device_id = ?2)",
        )
        .bind(id.to_string())
        .bind(device_id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        bury(&mut tx, "id = ?1 AND device_id = ?2", &[id.to_string(), device_id.to_string()]).await?;
        let done = sqlx::query("DELETE FROM utterances WHERE id = ? AND device_id = ?")
            .bind(id.to_string())
            .bind(device_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 1 {
            tx.commit().await.map_err(backend)?;
            return Ok(true);
        }
        tx.rollback().await.map_err(backend)?;
        match self.ensure_utterance(id).await {
            Ok(()) => Err(StoreError::WrongDevice(id)),
            Err(StoreError::NoUtterance(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn delete_device_data(&self, device_id: Uuid) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let deleted = delete_utterances_of(&mut tx, device_id).await?;
        tx.commit().await.map_err(backend)?;
        Ok(deleted)
    }

    async fn delete_device(&self, device_id: Uuid) -> Result<Option<u64>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let deleted = delete_utterances_of(&mut tx, device_id).await?;
        let done = sqlx::query("DELETE FROM devices WHERE id = ?")
            .bind(device_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            // No device, so no utterances were deleted either (the foreign key).
            tx.rollback().await.map_err(backend)?;
            return Ok(None);
        }
        tx.commit().await.map_err(backend)?;
        Ok(Some(deleted))
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

    async fn audio_to_purge(&self, created_before_ms: i64, limit: u32) -> Result<Vec<PurgeCandidate>> {
        // Only rows whose audio is still kept, through the partial index of
        // migration 0004, however long the history. Without statistics the
        // planner prefers `utterances_state`, which would read every purged
        // row too, so the index is named; INDEXED BY fails the statement
        // rather than fall back, should the WHERE clause stop implying the
        // index's, and the store story runs it.
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT id, device_id, created_ms FROM utterances INDEXED BY utterances_audio_kept
             WHERE audio_purged_ms IS NULL AND codec <> 'text'
               AND created_ms < ?1 AND state IN ('transcribed', 'replied', 'failed')
             ORDER BY created_ms, id LIMIT ?2",
        )
        .bind(created_before_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        candidates(rows)
    }

    async fn mark_audio_purged(&self, id: Uuid, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE utterances SET audio_purged_ms = ?
             WHERE id = ? AND audio_purged_ms IS NULL AND codec <> 'text'
               AND state IN ('transcribed', 'replied', 'failed')",
        )
        .bind(now_ms)
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn receiving_count(&self, device_id: Uuid) -> Result<u32> {
        // The partial index of migration 0007, named for the reason
        // `audio_to_purge` names its own.
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM utterances INDEXED BY utterances_receiving
             WHERE device_id = ? AND state = 'receiving'",
        )
        .bind(device_id.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn abandon(&self, id: Uuid, error: &str) -> Result<bool> {
        let done =
            sqlx::query("UPDATE utterances SET state = 'failed', error = ? WHERE id = ? AND state = 'receiving'")
                .bind(error)
                .bind(id.to_string())
                .execute(&self.pool)
                .await
                .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn receiving_before(&self, created_before_ms: i64, limit: u32) -> Result<Vec<PurgeCandidate>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT id, device_id, created_ms FROM utterances
             WHERE state = 'receiving' AND created_ms < ?1
             ORDER BY created_ms, id LIMIT ?2",
        )
        .bind(created_before_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        candidates(rows)
    }
}

/// `(id, device_id, created_ms)` rows as purge candidates.
fn candidates(rows: Vec<(String, String, i64)>) -> Result<Vec<PurgeCandidate>> {
    rows.into_iter()
        .map(|(id, device_id, created_ms)| {
            Ok(PurgeCandidate { id: parse_uuid(&id)?, device_id: parse_uuid(&device_id)?, created_ms })
        })
        .collect()
}

/// Deletes a device's push requests and then its utterances (the outbox
/// references them), inside the caller's transaction. Returns the utterances
/// deleted.
async fn delete_utterances_of(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, device_id: Uuid) -> Result<u64> {
    sqlx::query("DELETE FROM push_outbox WHERE device_id = ?")
        .bind(device_id.to_string())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    bury(tx, "device_id = ?1", &[device_id.to_string()]).await?;
    let done = sqlx::query("DELETE FROM utterances WHERE device_id = ?")
        .bind(device_id.to_string())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(done.rows_affected())
}

/// Writes a tombstone for every utterance `filter` (a WHERE clause on
/// `utterances`, with `binds` as ?1, ?2, ...) selects, in the deleting
/// transaction, before the rows go. The time is the database's clock: the
/// deletions take none, and it is only for people reading the table.
async fn bury(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, filter: &str, binds: &[String]) -> Result<()> {
    let sql = format!(
        "INSERT OR IGNORE INTO tombstones (id, device_id, deleted_ms)
         SELECT id, device_id, CAST(strftime('%s', 'now') AS INTEGER) * 1000 FROM utterances WHERE {filter}"
    );
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b.as_str());
    }
    query.execute(&mut **tx).await.map_err(backend)?;
    Ok(())
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

/// `None` is a text-only utterance, stored as [`TEXT_CODEC`].
fn parse_codec(s: &str) -> Result<Option<Codec>> {
    match s {
        "opus16k20ms" => Ok(Some(Codec::Opus16k20ms)),
        "pcm16k" => Ok(Some(Codec::Pcm16k)),
        TEXT_CODEC => Ok(None),
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

fn environment_str(e: PushEnvironment) -> &'static str {
    match e {
        PushEnvironment::Production => "production",
        PushEnvironment::Sandbox => "sandbox",
    }
}

/// NULL is a target stored before the environment was (migration 0002), when
/// production was the only gateway the server used.
fn parse_environment(s: Option<&str>) -> Result<PushEnvironment> {
    match s {
        None | Some("production") => Ok(PushEnvironment::Production),
        Some("sandbox") => Ok(PushEnvironment::Sandbox),
        Some(s) => Err(StoreError::Corrupt(format!("unknown push environment {s:?}"))),
    }
}

fn status_str(s: PushStatus) -> &'static str {
    match s {
        PushStatus::Pending => "pending",
        PushStatus::Sent => "sent",
        PushStatus::Undeliverable => "undeliverable",
    }
}

fn parse_status(s: &str) -> Result<PushStatus> {
    match s {
        "pending" => Ok(PushStatus::Pending),
        "sent" => Ok(PushStatus::Sent),
        "undeliverable" => Ok(PushStatus::Undeliverable),
        _ => Err(StoreError::Corrupt(format!("unknown push status {s:?}"))),
    }
}

fn parse_state(s: &str) -> Result<UtteranceState> {
    UtteranceState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown utterance state {s:?}")))
}

/// The `segments` column's text: NULL for none, so that a row without
/// segments looks the same whether it predates the column or not.
fn segments_json(segments: &[Segment]) -> Result<Option<String>> {
    if segments.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(segments)
        .map(Some)
        .map_err(|e| StoreError::Backend(format!("cannot encode the segments: {e}")))
}

/// Inverse of [`segments_json`].
fn parse_segments(text: Option<&str>) -> Result<Vec<Segment>> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => serde_json::from_str(t).map_err(|e| StoreError::Corrupt(format!("segments: {e}"))),
    }
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
    push_environment: Option<String>,
    push_disabled_reason: Option<String>,
}

impl TryFrom<DeviceRow> for Device {
    type Error = StoreError;

    fn try_from(r: DeviceRow) -> Result<Self> {
        let push = match (r.push_platform, r.push_token) {
            (Some(p), Some(token)) => Some(PushTarget {
                platform: parse_platform(&p)?,
                token,
                environment: parse_environment(r.push_environment.as_deref())?,
            }),
            _ => None,
        };
        Ok(Device {
            id: parse_uuid(&r.id)?,
            name: r.name,
            created_ms: r.created_ms,
            push,
            push_disabled_reason: r.push_disabled_reason,
        })
    }
}

#[derive(sqlx::FromRow)]
struct UtteranceRow {
    id: String,
    device_id: String,
    codec: String,
    state: String,
    frames: i64,
    speech_frames: Option<i64>,
    unmarked: bool,
    transcript: Option<String>,
    segments: Option<String>,
    reply_title: Option<String>,
    reply_body: Option<String>,
    reply_data: Option<String>,
    error: Option<String>,
    created_ms: i64,
    received_end_ms: Option<i64>,
    stt_start_ms: Option<i64>,
    stt_done_ms: Option<i64>,
    reply_ms: Option<i64>,
    push_ms: Option<i64>,
    audio_purged_ms: Option<i64>,
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
            speech_frames: r
                .speech_frames
                .map(|n| u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("speech_frames = {n}"))))
                .transpose()?,
            unmarked: r.unmarked,
            segments: parse_segments(r.segments.as_deref())?,
            transcript: r.transcript,
            reply_title: r.reply_title,
            reply_body: r.reply_body,
            reply_data: r.reply_data,
            error: r.error,
            created_ms: r.created_ms,
            timings: Timings {
                received_end_ms: r.received_end_ms,
                stt_start_ms: r.stt_start_ms,
                stt_done_ms: r.stt_done_ms,
                reply_ms: r.reply_ms,
                push_ms: r.push_ms,
            },
            audio_purged_ms: r.audio_purged_ms,
        })
    }
}

#[derive(sqlx::FromRow)]
struct PushRow {
    utterance_id: String,
    device_id: String,
    platform: String,
    token: String,
    environment: Option<String>,
    title: String,
    body: String,
    data: String,
    created_ms: i64,
    status: String,
    attempts: i64,
    next_attempt_ms: i64,
    sent_ms: Option<i64>,
    last_error: Option<String>,
}

impl TryFrom<PushRow> for PushRequest {
    type Error = StoreError;

    fn try_from(r: PushRow) -> Result<Self> {
        Ok(PushRequest {
            utterance_id: parse_uuid(&r.utterance_id)?,
            device_id: parse_uuid(&r.device_id)?,
            target: PushTarget {
                platform: parse_platform(&r.platform)?,
                token: r.token,
                environment: parse_environment(r.environment.as_deref())?,
            },
            title: r.title,
            body: r.body,
            data_json: r.data,
            created_ms: r.created_ms,
            status: parse_status(&r.status)?,
            attempts: u32::try_from(r.attempts)
                .map_err(|_| StoreError::Corrupt(format!("attempts = {}", r.attempts)))?,
            next_attempt_ms: r.next_attempt_ms,
            sent_ms: r.sent_ms,
            last_error: r.last_error,
        })
    }
}
