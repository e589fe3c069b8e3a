-- Reader keys derive from the hub's key and the reader's key version (nothing secret is stored);
-- every scan is recorded, and (reader, seq) makes a reader's retries and replays idempotent.
ALTER TABLE readers ADD COLUMN key_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE readers ADD COLUMN active BOOLEAN NOT NULL DEFAULT TRUE;
CREATE INDEX readers_school ON readers (school_id);
CREATE INDEX rfid_cards_student ON rfid_cards (student_id);

CREATE TABLE scans (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    reader_id TEXT NOT NULL REFERENCES readers (id),
    seq BIGINT NOT NULL,
    card_uid TEXT NOT NULL,
    -- pending while it is being decided, then the verdict code
    verdict TEXT NOT NULL,
    -- the verdict as answered (JSON)
    answer TEXT,
    order_id TEXT,
    student_id TEXT,
    -- a repeat read within the debounce window: the scan whose verdict it got
    first_scan_id TEXT,
    -- the reader's clock (offline replays), else when it arrived
    read_at TIMESTAMP NOT NULL,
    received_at TIMESTAMP NOT NULL,
    took_us BIGINT,
    UNIQUE (reader_id, seq)
);
CREATE INDEX scans_debounce ON scans (reader_id, card_uid, read_at);

-- Notices not about a kitchen event (a lost card in use) take outbox keys -1, -2, ...
ALTER TABLE schools ADD COLUMN notice_seq BIGINT NOT NULL DEFAULT 0;
