DROP INDEX outbox_dedup_key;
CREATE UNIQUE INDEX outbox_dedup_key ON outbox (dedup_key);
