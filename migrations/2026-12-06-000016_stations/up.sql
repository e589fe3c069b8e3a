-- Kitchen stations (grill, salad bar...): a meal is made at one, and a station's screen shows
-- only its items. An item's "done" lives in the order's snapshot (order_events), as every
-- other fact of a live order does.
CREATE TABLE stations (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    name TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (school_id, name)
);
ALTER TABLE meals ADD COLUMN station_id TEXT REFERENCES stations (id);
-- The school's choice: an order becomes ready by itself once every station is done
-- (otherwise staff bump it on the expo screen).
ALTER TABLE schools ADD COLUMN ready_when_stations_done BOOLEAN NOT NULL DEFAULT FALSE;
