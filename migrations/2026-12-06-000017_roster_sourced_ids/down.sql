DROP INDEX users_sourced_id;
DROP INDEX schools_sourced_id;
ALTER TABLE users DROP COLUMN sourced_id;
ALTER TABLE schools DROP COLUMN sourced_id;
