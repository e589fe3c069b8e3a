ALTER TABLE schools DROP COLUMN notice_seq;
DROP INDEX scans_debounce;
DROP TABLE scans;
DROP INDEX rfid_cards_student;
DROP INDEX readers_school;
ALTER TABLE readers DROP COLUMN active;
ALTER TABLE readers DROP COLUMN key_version;
