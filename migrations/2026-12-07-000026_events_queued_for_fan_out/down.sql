ALTER TABLE order_events ADD COLUMN fanned_out BOOLEAN NOT NULL DEFAULT TRUE;
UPDATE order_events SET fanned_out = FALSE WHERE EXISTS (SELECT 1 FROM fan_out_queue q
    WHERE q.school_id = order_events.school_id AND q.seq = order_events.seq);
CREATE INDEX order_events_to_fan_out ON order_events (created_at) WHERE NOT fanned_out;
DROP TABLE fan_out_queue;
