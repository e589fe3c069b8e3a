DROP TABLE readers;
DROP TABLE rfid_cards;
DROP TABLE meals;
DROP TABLE refresh_tokens;
DROP TABLE guardian_links;
DROP TABLE users;
DROP TABLE counters;
DROP TABLE schools;
