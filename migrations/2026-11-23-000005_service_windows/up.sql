-- Lunch waves: school-local times of day; ordering and cancelling close before the start.
CREATE TABLE service_windows (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    name TEXT NOT NULL,
    -- HH:MM:SS, school-local
    starts_at TEXT NOT NULL,
    ends_at TEXT NOT NULL,
    order_cutoff_minutes INTEGER NOT NULL,
    cancel_deadline_minutes INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX service_windows_school ON service_windows (school_id);
ALTER TABLE orders ADD COLUMN window_id TEXT REFERENCES service_windows (id);
