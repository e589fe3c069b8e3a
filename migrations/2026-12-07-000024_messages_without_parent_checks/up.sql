-- A message's rows are no longer checked against their parents on every insert: an outbox
-- row's school and recipient, an attempt's message, an in-app message's user and order. The
-- fan-out writes them from the rows it read in the same transaction, and nothing deletes a
-- school, a user, an order or a message. Each check locked its parent row (the school's row
-- is updated by every batch of orders, a user's by every in-app message), and they were
-- most of what PostgreSQL did per order beyond the order's own rows (BENCHMARKS.md).
-- Neither backend drops a constraint the same way, so the tables are rebuilt: the attempts
-- first, which pointed at the outbox.
CREATE TABLE delivery_attempts_copy AS SELECT * FROM delivery_attempts;
DROP TABLE delivery_attempts;
CREATE TABLE delivery_attempts (
    id TEXT PRIMARY KEY,
    outbox_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at TIMESTAMP NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT
);
INSERT INTO delivery_attempts (id, outbox_id, attempt, at, outcome, detail)
SELECT id, outbox_id, attempt, at, outcome, detail
FROM delivery_attempts_copy;
DROP TABLE delivery_attempts_copy;
CREATE INDEX delivery_attempts_by_message ON delivery_attempts (outbox_id);

CREATE TABLE outbox_copy AS SELECT * FROM outbox;
DROP TABLE outbox;
CREATE TABLE outbox (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL,
    event_seq BIGINT NOT NULL,
    recipient_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    template TEXT NOT NULL,
    address TEXT NOT NULL,
    locale TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TIMESTAMP NOT NULL,
    claimed_until TIMESTAMP,
    last_error TEXT,
    created_at TIMESTAMP NOT NULL,
    sent_at TIMESTAMP,
    priority INTEGER NOT NULL DEFAULT 1,
    expires_at TIMESTAMP,
    fallback_for TEXT,
    dedup_key TEXT,
    claimed_by TEXT,
    resend BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (school_id, event_seq, recipient_id, channel)
);
INSERT INTO outbox (id, school_id, event_seq, recipient_id, channel, template, address, locale, payload,
    status, attempts, next_attempt_at, claimed_until, last_error, created_at, sent_at, priority,
    expires_at, fallback_for, dedup_key, claimed_by, resend)
SELECT id, school_id, event_seq, recipient_id, channel, template, address, locale, payload,
    status, attempts, next_attempt_at, claimed_until, last_error, created_at, sent_at, priority,
    expires_at, fallback_for, dedup_key, claimed_by, resend
FROM outbox_copy;
DROP TABLE outbox_copy;
CREATE INDEX outbox_dead ON outbox (created_at, id) WHERE status = 'dead';
CREATE UNIQUE INDEX outbox_dedup_key ON outbox (dedup_key);
CREATE INDEX outbox_pending ON outbox (priority DESC, next_attempt_at) WHERE status = 'pending';

CREATE TABLE inbox_messages_copy AS SELECT * FROM inbox_messages;
DROP TABLE inbox_messages;
CREATE TABLE inbox_messages (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    order_id TEXT,
    created_at TIMESTAMP NOT NULL,
    read_at TIMESTAMP,
    deleted_at TIMESTAMP,
    UNIQUE (user_id, seq)
);
INSERT INTO inbox_messages (id, user_id, seq, kind, title, body, order_id, created_at, read_at, deleted_at)
SELECT id, user_id, seq, kind, title, body, order_id, created_at, read_at, deleted_at
FROM inbox_messages_copy;
DROP TABLE inbox_messages_copy;
