-- The first schema: devices, utterances and the push outbox.
--
-- Conventions, and why:
-- - Ids are UUIDs as lowercase hyphenated TEXT, so that the file is readable
--   with the sqlite3 shell while debugging a device's history.
-- - Times are Unix milliseconds chosen by the caller (INTEGER).
-- - Tables are STRICT, so that binding the wrong type is an error instead of
--   a silently converted value.
-- - Enumerations (codec, state, platform) are TEXT without a CHECK: SQLite
--   cannot change a CHECK without rebuilding the table, so a later version
--   that adds a state would need a copy of the whole table. The Rust side
--   parses every value it reads and reports an unknown one as corrupt.

CREATE TABLE devices (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    -- SHA-256 of the bearer token; the token itself is never stored.
    token_hash    BLOB    NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_ms    INTEGER NOT NULL,
    -- Both NULL, or both set: a push target is replaced as a whole.
    push_platform TEXT,
    push_token    TEXT,
    CHECK ((push_platform IS NULL) = (push_token IS NULL))
) STRICT;

CREATE TABLE utterances (
    id                TEXT    NOT NULL PRIMARY KEY,
    device_id         TEXT    NOT NULL REFERENCES devices (id),
    codec             TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    -- Known once the utterance is complete; 0 before.
    frames            INTEGER NOT NULL DEFAULT 0,
    transcript        TEXT,
    -- How many times set_transcript was called. The exactly-once tests read
    -- it: more than 1 means the server ran speech-to-text twice.
    transcript_writes INTEGER NOT NULL DEFAULT 0,
    reply_title       TEXT,
    reply_body        TEXT,
    error             TEXT,
    created_ms        INTEGER NOT NULL,
    received_end_ms   INTEGER,
    stt_start_ms      INTEGER,
    stt_done_ms       INTEGER,
    reply_ms          INTEGER,
    push_ms           INTEGER
) STRICT;

-- For listing a device's utterances, and so that the foreign key check on a
-- device does not scan every utterance.
CREATE INDEX utterances_device ON utterances (device_id, created_ms);

-- `unfinished` runs at every server start; it should not scan the history.
CREATE INDEX utterances_state ON utterances (state, created_ms);

-- At most one push request per utterance: the primary key is the utterance.
-- The target is copied in, not joined from devices, so that a request already
-- queued goes where the device pointed when the reply was made.
CREATE TABLE push_outbox (
    utterance_id TEXT    NOT NULL PRIMARY KEY REFERENCES utterances (id),
    device_id    TEXT    NOT NULL REFERENCES devices (id),
    platform     TEXT    NOT NULL,
    token        TEXT    NOT NULL,
    title        TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    created_ms   INTEGER NOT NULL,
    sent_ms      INTEGER
) STRICT;

-- The pusher polls for unsent requests, oldest first; sent ones are the bulk
-- of the table and stay out of this index.
CREATE INDEX push_outbox_unsent ON push_outbox (created_ms) WHERE sent_ms IS NULL;
