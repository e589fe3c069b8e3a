-- The daily digest. A school's evening time ("HH:MM", school-local; NULL: the hub's
-- digest.at) and the last school day whose digests were queued ("YYYY-MM-DD"), so that a day's
-- digests are queued once, by one node.
ALTER TABLE schools ADD COLUMN digest_at TEXT;
ALTER TABLE schools ADD COLUMN digest_done_on TEXT;
-- A message that must exist once whatever queues it (digest:<school>:<guardian>:<day>); NULL for
-- messages keyed by their event.
ALTER TABLE outbox ADD COLUMN dedup_key TEXT;
CREATE UNIQUE INDEX outbox_dedup_key ON outbox (dedup_key);
