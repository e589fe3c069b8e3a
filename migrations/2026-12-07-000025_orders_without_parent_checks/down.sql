-- The parent checks back (the tables rebuilt as up.sql does).
CREATE TABLE order_items_copy AS SELECT * FROM order_items;
DROP TABLE order_items;
CREATE TABLE order_events_copy AS SELECT * FROM order_events;
DROP TABLE order_events;
CREATE TABLE orders_copy AS SELECT * FROM orders;
DROP TABLE orders;

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
    pickup_day TEXT,
    window_id TEXT REFERENCES service_windows (id),
    UNIQUE (placed_by, idempotency_key)
);
INSERT INTO orders (id, school_id, student_id, placed_by, state, version, total_cents,
    counter_id, pickup_code, idempotency_key, request_fingerprint, created_at, updated_at,
    pickup_day, window_id)
SELECT id, school_id, student_id, placed_by, state, version, total_cents, counter_id,
    pickup_code, idempotency_key, request_fingerprint, created_at, updated_at, pickup_day,
    window_id
FROM orders_copy;
DROP TABLE orders_copy;
CREATE INDEX orders_school_state ON orders (school_id, state);
CREATE INDEX orders_student ON orders (student_id);
CREATE UNIQUE INDEX orders_pickup_code ON orders (school_id, pickup_day, pickup_code);
CREATE INDEX orders_counter_state ON orders (counter_id, state);
CREATE INDEX orders_school_student ON orders (school_id, student_id);

CREATE TABLE order_items (
    order_id TEXT NOT NULL REFERENCES orders (id),
    line INTEGER NOT NULL,
    meal_id TEXT NOT NULL REFERENCES meals (id),
    meal_name TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    unit_price_cents BIGINT NOT NULL,
    PRIMARY KEY (order_id, line)
);
INSERT INTO order_items (order_id, line, meal_id, meal_name, quantity, unit_price_cents)
SELECT order_id, line, meal_id, meal_name, quantity, unit_price_cents
FROM order_items_copy;
DROP TABLE order_items_copy;

CREATE TABLE order_events (
    school_id TEXT NOT NULL,
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
