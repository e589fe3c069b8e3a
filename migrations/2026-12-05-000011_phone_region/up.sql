-- A school's default country for phone numbers written without one (ISO 3166-1 alpha-2).
ALTER TABLE schools ADD COLUMN phone_region TEXT NOT NULL DEFAULT 'US';
