ALTER TABLE schools DROP COLUMN ready_when_stations_done;
ALTER TABLE meals DROP COLUMN station_id;
DROP TABLE stations;
