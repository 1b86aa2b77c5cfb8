-- Audio retention: the server deletes the audio files of finished utterances
-- after `[audio] retention_days`, and records here that it did, so that the
-- API can say the audio is gone and the sweep never looks at the row again.
--
-- Only ADD COLUMN and a new index (see 0002 for why migrations never rebuild
-- a table).

-- When the audio file was deleted by the retention sweep. NULL while it is
-- kept, for text-only utterances (which have none), and in every row written
-- before this migration.
ALTER TABLE utterances ADD COLUMN audio_purged_ms INTEGER;

-- `audio_to_purge` runs every sweep: it must read the rows whose audio is
-- still kept, oldest first, and not the whole history of purged ones. The
-- query names this index (INDEXED BY), because without statistics the
-- planner prefers utterances_state, and repeats its WHERE clause, which is
-- what lets SQLite use a partial index.
CREATE INDEX utterances_audio_kept ON utterances (created_ms) WHERE audio_purged_ms IS NULL AND codec <> 'text';
