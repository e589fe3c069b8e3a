-- The facts new orders are decided from (schools' time zones, people, meals, service windows)
-- change rarely. PostgreSQL's intake keeps them in memory, and each batch written from them
-- checks that this number has not moved since they were read. PostgreSQL's triggers move it
-- (`db::facts_epoch::FACTS_EPOCH_TRIGGERS_PG`, installed after the migrations: one SQL for both backends
-- cannot define them); SQLite reads its facts for every batch and leaves it at 0.
CREATE TABLE facts_epoch (
    id INTEGER PRIMARY KEY,
    epoch BIGINT NOT NULL
);
INSERT INTO facts_epoch (id, epoch) VALUES (1, 0);
