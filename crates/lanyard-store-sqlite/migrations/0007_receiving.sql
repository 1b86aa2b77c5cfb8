-- Hostile clients: the server caps the utterances a device leaves
-- `receiving` (opened, never ended), and a sweep gives up on those abandoned
-- for days. Both read only unfinished rows: the cap counts one device's
-- (`receiving_count`, on every open of a new id), so it must not scan that
-- device's whole history, which `utterances_device_id` would.
--
-- Only a new index (see 0002 for why migrations never rebuild a table).
CREATE INDEX utterances_receiving ON utterances (device_id) WHERE state = 'receiving';
