-- The school-local day a pickup code belongs to: codes are unique per school and day.
ALTER TABLE orders ADD COLUMN pickup_day TEXT;
CREATE UNIQUE INDEX orders_pickup_code ON orders (school_id, pickup_day, pickup_code);
CREATE INDEX orders_counter_state ON orders (counter_id, state);
