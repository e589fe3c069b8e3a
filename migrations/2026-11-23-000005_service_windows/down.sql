ALTER TABLE orders DROP COLUMN window_id;
DROP TABLE service_windows;
