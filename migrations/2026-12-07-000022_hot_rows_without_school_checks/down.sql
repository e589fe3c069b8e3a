-- The school and reader checks back (the tables rebuilt as up.sql does).
CREATE TABLE scans_copy AS SELECT * FROM scans;
DROP TABLE scans;
CREATE TABLE scans (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    reader_id TEXT NOT NULL REFERENCES readers (id),
    seq BIGINT NOT NULL,
    card_uid TEXT NOT NULL,
    verdict TEXT NOT NULL,
    answer TEXT,
    order_id TEXT,
    student_id TEXT,
    first_scan_id TEXT,
    read_at TIMESTAMP NOT NULL,
    received_at TIMESTAMP NOT NULL,
    took_us BIGINT,
    claimed_by TEXT,
    claimed_at TIMESTAMP,
    attempt INTEGER NOT NULL DEFAULT 1,
    UNIQUE (reader_id, seq)
);
INSERT INTO scans (id, school_id, reader_id, seq, card_uid, verdict, answer, order_id,
    student_id, first_scan_id, read_at, received_at, took_us, claimed_by, claimed_at, attempt)
SELECT id, school_id, reader_id, seq, card_uid, verdict, answer, order_id, student_id,
    first_scan_id, read_at, received_at, took_us, claimed_by, claimed_at, attempt
FROM scans_copy;
DROP TABLE scans_copy;
CREATE INDEX scans_debounce ON scans (reader_id, card_uid, read_at);
CREATE INDEX scans_pending ON scans (claimed_at) WHERE verdict = 'pending';

CREATE TABLE order_events_copy AS SELECT * FROM order_events;
DROP TABLE order_events;
CREATE TABLE order_events (
    school_id TEXT NOT NULL REFERENCES schools (id),
    seq BIGINT NOT NULL,
    order_id TEXT NOT NULL REFERENCES orders (id),
    version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    actor_id TEXT,
    reason TEXT,
    snapshot TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    notice TEXT,
    notice_skip TEXT,
    fanned_out BOOLEAN NOT NULL DEFAULT TRUE,
    PRIMARY KEY (school_id, seq),
    UNIQUE (order_id, version)
);
INSERT INTO order_events (school_id, seq, order_id, version, kind, from_state, to_state,
    actor_id, reason, snapshot, created_at, notice, notice_skip, fanned_out)
SELECT school_id, seq, order_id, version, kind, from_state, to_state, actor_id, reason,
    snapshot, created_at, notice, notice_skip, fanned_out
FROM order_events_copy;
DROP TABLE order_events_copy;
CREATE INDEX order_events_to_fan_out ON order_events (created_at) WHERE NOT fanned_out;
