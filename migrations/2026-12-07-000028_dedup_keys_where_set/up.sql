-- Only a digest sets a message's dedup key; every other message put an empty entry in its
-- index.
DROP INDEX outbox_dedup_key;
CREATE UNIQUE INDEX outbox_dedup_key ON outbox (dedup_key) WHERE dedup_key IS NOT NULL;
