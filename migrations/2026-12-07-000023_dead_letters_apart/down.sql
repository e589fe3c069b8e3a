DROP INDEX outbox_dead;
CREATE INDEX outbox_dead ON outbox (status, created_at);
