-- Deletion is final: the id of every deleted utterance is remembered, so
-- that nothing can bring back what a user erased (a background upload
-- delayed past the delete, a relay resuming a stream, a text post retried).
-- `open_utterance` and `create_text_utterance` insert only ids with no
-- tombstone, in the same statement, and answer `Deleted` for the device's
-- own tombstones (another device's answer as its live ids do).
--
-- One row per deleted utterance, kept for good: ids are random and never
-- reused, and a row is about 100 bytes, so a million deletions cost 100 MB
-- less than the utterances they replace. No foreign key: a removed device's
-- tombstones stay, so its ids stay dead too.
CREATE TABLE tombstones (
    id TEXT PRIMARY KEY NOT NULL,
    device_id TEXT NOT NULL,
    deleted_ms INTEGER NOT NULL
) WITHOUT ROWID;
