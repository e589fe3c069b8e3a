-- The roster import's keys: the sourcedId a district's SIS gives a school (org) and a person,
-- so a nightly re-import finds what it imported before. NULL for what was made by hand.
ALTER TABLE schools ADD COLUMN sourced_id TEXT;
ALTER TABLE users ADD COLUMN sourced_id TEXT;
CREATE UNIQUE INDEX schools_sourced_id ON schools (sourced_id);
CREATE UNIQUE INDEX users_sourced_id ON users (sourced_id);
