DROP INDEX pickup_codes_student;
DROP TABLE pickup_codes;
