-- Listing and deletion: a device's utterances page by id, and a device's
-- data can be deleted whole.
--
-- Only new indexes here (see 0002 for why migrations never rebuild a table).

-- `list_utterances` pages by id (UUIDv7, so creation order) within a device:
-- `WHERE device_id = ? AND id < ? ORDER BY id DESC LIMIT ?` is one range scan
-- of this index. Ids are stored lowercase and hyphenated, so their text order
-- is their byte order, which is their time order.
CREATE INDEX utterances_device_id ON utterances (device_id, id);

-- `delete_device_data` and `delete_device` delete a device's push requests by
-- device; without this index each would scan the whole outbox.
CREATE INDEX push_outbox_device ON push_outbox (device_id);
