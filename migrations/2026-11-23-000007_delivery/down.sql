DROP INDEX device_tokens_by_user;
ALTER TABLE schools DROP COLUMN quiet_hours_end;
ALTER TABLE schools DROP COLUMN quiet_hours_start;
DROP TABLE delivery_attempts;
DROP INDEX outbox_dead;
ALTER TABLE outbox DROP COLUMN fallback_for;
ALTER TABLE outbox DROP COLUMN expires_at;
ALTER TABLE outbox DROP COLUMN priority;
