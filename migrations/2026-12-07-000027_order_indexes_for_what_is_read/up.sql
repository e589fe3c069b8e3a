-- An order placed has no pickup code and no counter yet, and each index took an entry for it:
-- the codes' index now holds only the orders that have one (a look-up by code implies it),
-- and no statement reads orders by counter.
DROP INDEX orders_pickup_code;
CREATE UNIQUE INDEX orders_pickup_code ON orders (school_id, pickup_day, pickup_code)
    WHERE pickup_code IS NOT NULL;
DROP INDEX orders_counter_state;
