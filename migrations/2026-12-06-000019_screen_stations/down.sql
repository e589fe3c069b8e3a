ALTER TABLE screens DROP COLUMN station_id;
