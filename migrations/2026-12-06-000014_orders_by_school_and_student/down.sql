DROP INDEX orders_school_student;
