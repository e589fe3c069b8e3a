DROP INDEX orders_student_school;
CREATE INDEX orders_student ON orders (student_id);
CREATE INDEX orders_school_student ON orders (school_id, student_id);
