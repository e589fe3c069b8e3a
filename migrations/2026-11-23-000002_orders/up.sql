CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    student_id TEXT NOT NULL REFERENCES users (id),
    placed_by TEXT NOT NULL REFERENCES users (id),
    state TEXT NOT NULL,
    -- Bumped by every transition; writers must name the version they saw.
    version BIGINT NOT NULL,
    total_cents BIGINT NOT NULL,
    counter_id TEXT REFERENCES counters (id),
    pickup_code TEXT,
    idempotency_key TEXT,
    request_fingerprint TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (placed_by, idempotency_key)
);
CREATE INDEX orders_school_state ON orders (school_id, state);
CREATE INDEX orders_student ON orders (student_id);

CREATE TABLE order_items (
    order_id TEXT NOT NULL REFERENCES orders (id),
    line INTEGER NOT NULL,
    meal_id TEXT NOT NULL REFERENCES meals (id),
    meal_name TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    unit_price_cents BIGINT NOT NULL,
    PRIMARY KEY (order_id, line)
);

-- The durable event log: every transition, who, when, from, to, version, why.
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
    -- The order as it was after this event (JSON), for frames and resumes.
    snapshot TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (school_id, seq),
    UNIQUE (order_id, version)
);
