-- Events waiting for fan-out are listed apart from the events: taking one deletes its narrow
-- row here, where marking the event `fanned_out` rewrote the event whole (its snapshot and
-- two index entries: the partial index's column kept the update from being HOT).
CREATE TABLE fan_out_queue (
    created_at TIMESTAMP NOT NULL,
    school_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (created_at, school_id, seq)
);
INSERT INTO fan_out_queue (created_at, school_id, seq)
    SELECT created_at, school_id, seq FROM order_events WHERE NOT fanned_out;
DROP INDEX order_events_to_fan_out;
ALTER TABLE order_events DROP COLUMN fanned_out;
