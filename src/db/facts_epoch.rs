//! The facts epoch's triggers, PostgreSQL's only objects outside the shared migrations (one
//! SQL for both backends cannot define a trigger). Installed after every migration run, so a
//! database migrated by any node has them; idempotent.

/// Moves `facts_epoch` before any statement that could change what a new order is decided
/// from: a school's time zone, a person's school, role, name, allergies or standing, a meal,
/// a service window. Before the statement, so the epoch's row is locked ahead of the rows it
/// changes. A transaction that sets `tiffin.facts_moved_once` (a roster import) moves it
/// itself, once, as its last statement (`MOVE_FACTS_EPOCH`): moved at each statement, its row
/// would stay locked, and every admin change wait, for the whole import. Where the table has
/// been reverted away, the triggers do nothing.
pub(crate) const FACTS_EPOCH_TRIGGERS_PG: &str = "
CREATE OR REPLACE FUNCTION tiffin_facts_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('tiffin.facts_moved_once', true) = 'on' THEN
        RETURN NULL;
    END IF;
    UPDATE facts_epoch SET epoch = epoch + 1 WHERE id = 1;
    RETURN NULL;
EXCEPTION WHEN undefined_table THEN
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER facts_changed
    BEFORE INSERT OR DELETE OR UPDATE OF time_zone ON schools
    FOR EACH STATEMENT EXECUTE FUNCTION tiffin_facts_changed();
CREATE OR REPLACE TRIGGER facts_changed
    BEFORE INSERT OR DELETE OR UPDATE OF school_id, role, display_name, allergies, active ON users
    FOR EACH STATEMENT EXECUTE FUNCTION tiffin_facts_changed();
CREATE OR REPLACE TRIGGER facts_changed
    BEFORE INSERT OR DELETE OR UPDATE ON meals
    FOR EACH STATEMENT EXECUTE FUNCTION tiffin_facts_changed();
CREATE OR REPLACE TRIGGER facts_changed
    BEFORE INSERT OR DELETE OR UPDATE ON service_windows
    FOR EACH STATEMENT EXECUTE FUNCTION tiffin_facts_changed();
";

/// Moves the facts epoch once, for a transaction that changed facts with
/// `tiffin.facts_moved_once` set.
pub(crate) const MOVE_FACTS_EPOCH: &str = "UPDATE facts_epoch SET epoch = epoch + 1 WHERE id = 1";
