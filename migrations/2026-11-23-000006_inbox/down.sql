DROP TABLE inbox_messages;
ALTER TABLE users DROP COLUMN inbox_seq;
