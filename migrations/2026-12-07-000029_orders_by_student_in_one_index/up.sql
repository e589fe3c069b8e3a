-- Orders are read by student two ways, a student's orders and a card holder's orders at a
-- school, and each way had its index: every order placed took an entry in both, and so did
-- every move (the state is indexed, so no move is a HOT update). One index by student, then
-- school, answers both.
DROP INDEX orders_school_student;
DROP INDEX orders_student;
CREATE INDEX orders_student_school ON orders (student_id, school_id);
