-- One row per (event, recipient, channel), written in the event's transaction.
CREATE TABLE outbox (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    event_seq BIGINT NOT NULL,
    recipient_id TEXT NOT NULL REFERENCES users (id),
    channel TEXT NOT NULL,
    template TEXT NOT NULL,
    address TEXT NOT NULL,
    locale TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- pending, sent, dead
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TIMESTAMP NOT NULL,
    claimed_until TIMESTAMP,
    last_error TEXT,
    created_at TIMESTAMP NOT NULL,
    sent_at TIMESTAMP,
    UNIQUE (school_id, event_seq, recipient_id, channel)
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);

CREATE TABLE device_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    platform TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE,
    active BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE notification_preferences (
    user_id TEXT NOT NULL REFERENCES users (id),
    event_kind TEXT NOT NULL,
    channel TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (user_id, event_kind, channel)
);
