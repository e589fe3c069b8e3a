-- Priorities, expiry, the SMS fallback behind push, every attempt, and quiet hours.
ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
ALTER TABLE outbox ADD COLUMN expires_at TIMESTAMP;
-- An SMS standing behind this push row: sent only if the push was not delivered in time.
ALTER TABLE outbox ADD COLUMN fallback_for TEXT;
-- pending, sent, dead, expired, skipped
CREATE INDEX outbox_dead ON outbox (status, created_at);

CREATE TABLE delivery_attempts (
    id TEXT PRIMARY KEY,
    outbox_id TEXT NOT NULL REFERENCES outbox (id),
    attempt INTEGER NOT NULL,
    at TIMESTAMP NOT NULL,
    -- sent, retry, dead
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX delivery_attempts_by_message ON delivery_attempts (outbox_id);

-- School-local "HH:MM"; both set or neither. Low-priority messages wait until the end.
ALTER TABLE schools ADD COLUMN quiet_hours_start TEXT;
ALTER TABLE schools ADD COLUMN quiet_hours_end TEXT;

CREATE INDEX device_tokens_by_user ON device_tokens (user_id, active);
