-- A station screen shows one station's items: which one is chosen when it is paired.
-- NULL for every other kind of screen.
ALTER TABLE screens ADD COLUMN station_id TEXT REFERENCES stations (id);
