-- A counter's question, "this card holder's orders here today", answered from one index
-- whatever the planner knows: with only (student_id) and (school_id, state) to choose from,
-- a plan made before the tables had statistics walked every order of the school per scan.
CREATE INDEX orders_school_student ON orders (school_id, student_id);
