ALTER TABLE schools DROP COLUMN phone_region;
