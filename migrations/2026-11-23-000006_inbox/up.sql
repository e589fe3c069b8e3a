-- In-app messages: each user's inbox, numbered per user (the `inbox:<user>` topic's seq).
ALTER TABLE users ADD COLUMN inbox_seq BIGINT NOT NULL DEFAULT 0;
CREATE TABLE inbox_messages (
    -- The outbox row it was delivered from: delivering twice stores it once.
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    order_id TEXT REFERENCES orders (id),
    created_at TIMESTAMP NOT NULL,
    read_at TIMESTAMP,
    -- Deleted by its owner: kept (blanked) so the per-user numbering stays gapless for resumes.
    deleted_at TIMESTAMP,
    UNIQUE (user_id, seq)
);
