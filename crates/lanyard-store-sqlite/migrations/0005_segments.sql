-- Timed segments: the transcript in pieces with their start and end (and
-- word times where the engine gave them), for the API, the relay's `final`,
-- the webhook and subtitles.
--
-- One column of JSON array text beside `transcript`, not a table of its
-- own, so that `set_transcript` still writes the text, the segments and the
-- state in its one conditional UPDATE: they are stored together, once, or
-- not at all. Nothing queries inside a segment; the API returns them whole.
--
-- Only ADD COLUMN (see 0002 for why migrations never rebuild a table).

-- `[{"start":0.0,"end":1.5,"text":"...","words":[...]}, ...]`, times in
-- seconds from the utterance's first frame (lanyard_proto::wire::Segment).
-- NULL until transcribed, for text-only utterances, and in rows transcribed
-- before this migration; all read as no segments.
ALTER TABLE utterances ADD COLUMN segments TEXT;
