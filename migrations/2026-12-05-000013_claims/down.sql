ALTER TABLE outbox DROP COLUMN resend;
ALTER TABLE outbox DROP COLUMN claimed_by;
DROP INDEX scans_pending;
ALTER TABLE scans DROP COLUMN attempt;
ALTER TABLE scans DROP COLUMN claimed_at;
ALTER TABLE scans DROP COLUMN claimed_by;
