-- The claim's walk: pending messages in the order they are claimed, so a claim reads its
-- batch and stops. `(status, next_attempt_at)` made every claim visit every entry still
-- marked pending, and the entries of messages sent since stay until a vacuum (16 claimed
-- rows took 1,066 heap pages in an intake round, BENCHMARKS.md).
DROP INDEX outbox_due;
CREATE INDEX outbox_pending ON outbox (priority DESC, next_attempt_at) WHERE status = 'pending';
