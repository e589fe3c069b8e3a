-- A scan's claim: the node holding it, since when (its lease), and which take-over it is. A
-- hand-over commits with its scan's decision only under the attempt it was decided in, so a
-- claim taken over (or abandoned) after its node died can no longer be finished by it.
ALTER TABLE scans ADD COLUMN claimed_by TEXT;
ALTER TABLE scans ADD COLUMN claimed_at TIMESTAMP;
ALTER TABLE scans ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
UPDATE scans SET claimed_at = received_at;
CREATE INDEX scans_pending ON scans (claimed_at) WHERE verdict = 'pending';
-- An outbox claim's holder (a restarted node takes its own back at once), and whether an
-- earlier attempt's outcome is unknown (its node died before recording it): such a message
-- is sent again under the same Message-ID rather than dropped.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN resend BOOLEAN NOT NULL DEFAULT FALSE;
