-- Dead letters indexed alone: every message written or marked sent put an entry in an index
-- of all statuses, which only the dead-letter list and count read.
DROP INDEX outbox_dead;
CREATE INDEX outbox_dead ON outbox (created_at, id) WHERE status = 'dead';
