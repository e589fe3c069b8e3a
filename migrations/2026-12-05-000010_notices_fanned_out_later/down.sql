DROP INDEX order_events_to_fan_out;
ALTER TABLE order_events DROP COLUMN fanned_out;
ALTER TABLE order_events DROP COLUMN notice_skip;
ALTER TABLE order_events DROP COLUMN notice;
