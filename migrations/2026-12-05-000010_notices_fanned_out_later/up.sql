-- An event carries the notice it makes (notices::Kind) and who needs no news of it; dispatch
-- turns it into outbox rows later, in batches, instead of the event's own transaction.
ALTER TABLE order_events ADD COLUMN notice TEXT;
ALTER TABLE order_events ADD COLUMN notice_skip TEXT;
-- Events written before this migration had their outbox rows written with them.
ALTER TABLE order_events ADD COLUMN fanned_out BOOLEAN NOT NULL DEFAULT TRUE;
CREATE INDEX order_events_to_fan_out ON order_events (created_at) WHERE NOT fanned_out;
