-- Push delivery that survives failures: retries with a schedule, leases so
-- that several senders (or a restarted one) never send a request twice at the
-- same time, dead tokens, APNs sandbox tokens, reply data, and text-only
-- utterances.
--
-- Only ADD COLUMN here, never a table rebuild: databases in the field hold
-- the 0001 schema, and ADD COLUMN changes the schema without rewriting a row.
-- A NOT NULL column needs a constant DEFAULT for that, which is also the
-- value every existing row takes.
--
-- Text-only utterances need no column: their codec is stored as 'text' in the
-- existing NOT NULL codec column (see the Rust side), as enumerations have no
-- CHECK (see 0001).

-- The APNs gateway the token belongs to ('production' or 'sandbox'). NULL
-- when there is no push target, and in rows written before this migration,
-- which read as 'production': the only gateway the server used then.
ALTER TABLE devices ADD COLUMN push_environment TEXT;
-- Set when a provider said the token is dead and the target was removed;
-- cleared when the device registers a target again.
ALTER TABLE devices ADD COLUMN push_disabled_reason TEXT;
ALTER TABLE devices ADD COLUMN push_disabled_ms INTEGER;

-- The reply's data for the app, as JSON object text. NULL until the reply.
ALTER TABLE utterances ADD COLUMN reply_data TEXT;

-- Copied from the target like platform and token (see 0001). NULL in rows
-- written before this migration, which read as 'production'.
ALTER TABLE push_outbox ADD COLUMN environment TEXT;
-- The reply's data, copied like title and body. Older replies had none.
ALTER TABLE push_outbox ADD COLUMN data TEXT NOT NULL DEFAULT '{}';
-- 'pending', 'sent' or 'undeliverable'. sent_ms alone cannot tell a request
-- that waits for a retry from one that was given up.
ALTER TABLE push_outbox ADD COLUMN status TEXT NOT NULL DEFAULT 'pending';
-- Attempts recorded so far, whatever their outcome.
ALTER TABLE push_outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
-- A pending request is not claimed before this time: 0 (due at once) for the
-- requests already waiting, a back-off time after a failed attempt.
ALTER TABLE push_outbox ADD COLUMN next_attempt_ms INTEGER NOT NULL DEFAULT 0;
-- The lease of the sender that claimed the request: until this time nobody
-- else claims it. 0 when unclaimed. A sender that dies holding a claim holds
-- it only until the lease runs out; nothing needs to clean up after it.
ALTER TABLE push_outbox ADD COLUMN claimed_until_ms INTEGER NOT NULL DEFAULT 0;
-- The error of the last failed attempt; the reason, once undeliverable.
ALTER TABLE push_outbox ADD COLUMN last_error TEXT;

-- Requests already sent took the default 'pending' above; they were sent
-- once, so they are 'sent' with one attempt, and never claimed again.
UPDATE push_outbox SET status = 'sent', attempts = 1 WHERE sent_ms IS NOT NULL;

-- The senders claim pending requests that are due, in order of due time and
-- then age. Sent and undeliverable requests are the bulk of the table and stay
-- out of this index, as sent ones stayed out of the one it replaces.
DROP INDEX push_outbox_unsent;
CREATE INDEX push_outbox_due ON push_outbox (next_attempt_ms, created_ms) WHERE status = 'pending';
