CREATE INDEX orders_counter_state ON orders (counter_id, state);
DROP INDEX orders_pickup_code;
CREATE UNIQUE INDEX orders_pickup_code ON orders (school_id, pickup_day, pickup_code);
