-- One-time pickup codes for a student without a card: 6 digits, short-lived, 3 attempts.
CREATE TABLE pickup_codes (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    student_id TEXT NOT NULL REFERENCES users (id),
    counter_id TEXT NOT NULL REFERENCES counters (id),
    -- HMAC of the code under the hub's key: the code itself is never stored here
    code_mac TEXT NOT NULL,
    -- active, used, locked
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    requested_by TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP
);
CREATE INDEX pickup_codes_student ON pickup_codes (student_id, status);
