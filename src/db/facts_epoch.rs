//! The facts epoch's triggers, PostgreSQL's only objects outside the shared migrations (one
//! SQL for both backends cannot define a trigger). Installed after a migration run that
//! applied something, or that finds them missing or older than these (`install_triggers`).

use super::{DbError, PgConn};
use diesel::QueryableByName;
use diesel::connection::SimpleConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;

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

/// This version's function and its four triggers, counted.
const INSTALLED: &str = "SELECT count(*) AS n FROM pg_trigger t \
    JOIN pg_proc p ON p.oid = t.tgfoid \
    WHERE t.tgname = 'facts_changed' AND p.proname = 'tiffin_facts_changed' \
        AND p.prosrc LIKE '%facts_moved_once%'";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Installs the triggers where `migrated` (a migration just ran) or they are not all there:
/// replacing a trigger locks its table against writes, and waits for every transaction
/// writing it, so a node starting beside busy ones (or a long import) leaves them be.
pub(super) fn install_triggers(
    conn: &mut AsyncConnectionWrapper<PgConn>,
    migrated: bool,
) -> Result<(), DbError> {
    if !migrated {
        let installed: Count = diesel::RunQueryDsl::get_result(diesel::sql_query(INSTALLED), conn)?;
        if installed.n == 4 {
            return Ok(());
        }
    }
    conn.batch_execute(FACTS_EPOCH_TRIGGERS_PG)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::db::test_support::{pg_admin, pg_database, pg_url};
    use crate::db::{DatabaseUrl, migrate};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

    /// A migration run that applies nothing puts back a trigger that went missing, and
    /// leaves them be when all are there.
    #[tokio::test]
    async fn a_run_with_nothing_to_migrate_puts_back_missing_triggers() {
        let (name, _db) = pg_database().await;
        let mut conn = AsyncPgConnection::establish(&pg_url(&name)).await.unwrap();
        let installed = async |conn: &mut AsyncPgConnection| {
            let count: super::Count = diesel::sql_query(super::INSTALLED)
                .get_result(conn)
                .await
                .unwrap();
            count.n
        };
        assert_eq!(installed(&mut conn).await, 4);
        // Replacing a trigger rewrites its row.
        let users_trigger = async |conn: &mut AsyncPgConnection| {
            let row: super::Count = diesel::sql_query(
                "SELECT xmin::text::bigint AS n FROM pg_trigger \
                 WHERE tgname = 'facts_changed' AND tgrelid = 'users'::regclass",
            )
            .get_result(conn)
            .await
            .unwrap();
            row.n
        };
        let before = users_trigger(&mut conn).await;
        let url = DatabaseUrl::Postgres(pg_url(&name));
        assert!(
            migrate(&url).await.unwrap().is_empty(),
            "nothing to migrate"
        );
        assert_eq!(users_trigger(&mut conn).await, before, "left as it was");
        conn.batch_execute("DROP TRIGGER facts_changed ON meals")
            .await
            .unwrap();
        assert_eq!(installed(&mut conn).await, 3);
        assert!(
            migrate(&url).await.unwrap().is_empty(),
            "nothing to migrate"
        );
        assert_eq!(installed(&mut conn).await, 4);
        drop(conn);
        pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
    }
}
