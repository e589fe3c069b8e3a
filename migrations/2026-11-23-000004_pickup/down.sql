DROP INDEX orders_counter_state;
DROP INDEX orders_pickup_code;
ALTER TABLE orders DROP COLUMN pickup_day;
