DROP INDEX outbox_dedup_key;
ALTER TABLE outbox DROP COLUMN dedup_key;
ALTER TABLE schools DROP COLUMN digest_done_on;
ALTER TABLE schools DROP COLUMN digest_at;
