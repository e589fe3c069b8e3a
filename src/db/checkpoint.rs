//! SQLite's WAL checkpoints off the request path. By default a commit that leaves more than
//! 1,000 pages in the WAL checkpoints it there and then (copies the pages into the database
//! file and syncs it): several milliseconds on the thread that awaited the commit, which on
//! SQLite runs its statements, so every request on that thread waited too (the scans
//! benchmark at 500 a second on SQLite: verdict p99 11.2 ms with them, 3.9 without, the hub's
//! own handler p99 under 1 ms in both). The hub's connection leaves them to a task of its own,
//! which checkpoints in passive mode (never waiting for the writer or readers) on a blocking
//! thread every [`EVERY`]; a WAL fully copied is reused from its start by the next commit.
//! Often, so each copy is small: the copy still takes the hub's CPU, and every 500 ms it
//! made a p99 of 13.9 ms, every 100 ms 5.6-6.1. A connection the pool makes afresh (after an
//! error) checkpoints on commit again.

use super::{Db, DbError, SQLITE_PRAGMAS};
use diesel::connection::SimpleConnection;
use diesel::sql_types::Integer;
use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};
use std::time::Duration;

/// How often the WAL is copied into the database.
pub const EVERY: Duration = Duration::from_millis(100);

/// What a checkpoint found and did, in WAL frames (pages).
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct Checkpointed {
    /// 1 if it could not finish because a writer or reader held it back.
    #[diesel(sql_type = Integer)]
    pub busy: i32,
    /// Frames in the WAL.
    #[diesel(sql_type = Integer)]
    pub log: i32,
    /// Frames copied into the database, this time or before.
    #[diesel(sql_type = Integer)]
    pub checkpointed: i32,
}

/// Stops the pool's SQLite connection from checkpointing on commit, and checkpoints the
/// database at `path` every [`EVERY`] from a blocking thread for as long as the runtime runs.
/// Nothing on PostgreSQL.
pub async fn checkpoint_in_background(db: &Db, path: &str) -> Result<(), DbError> {
    if !stop_checkpoints_on_commit(db).await? {
        return Ok(());
    }
    let path = path.to_owned();
    actix_web::rt::spawn(async move {
        let mut every = actix_web::rt::time::interval(EVERY);
        // One connection for every checkpoint: opening one reads the whole schema, which ten
        // times a second was 2.4% of an otherwise idle hub's CPU. Opened again after an error.
        let mut kept: Option<SqliteConnection> = None;
        loop {
            every.tick().await;
            let (path, conn) = (path.clone(), kept.take());
            match tokio::task::spawn_blocking(move || checkpoint_on(conn, &path)).await {
                Ok(Ok((_, conn))) => kept = Some(conn),
                Ok(Err(e)) => tracing::warn!(error = %e, "SQLite checkpoint failed"),
                Err(e) => tracing::warn!(error = %e, "SQLite checkpoint's thread failed"),
            }
        }
    });
    Ok(())
}

/// Whether the pool is SQLite's; its connection then no longer checkpoints on commit.
pub async fn stop_checkpoints_on_commit(db: &Db) -> Result<bool, DbError> {
    use diesel_async::SimpleAsyncConnection;
    let Db::Sqlite(pool) = db else {
        return Ok(false);
    };
    let mut conn = pool
        .get()
        .await
        .map_err(|e| DbError::Unavailable(e.to_string()))?;
    conn.batch_execute("PRAGMA wal_autocheckpoint = 0;").await?;
    Ok(true)
}

/// Copies what it can of the WAL of the SQLite database at `path` into the database,
/// waiting for no one, on a connection of its own.
pub fn checkpoint(path: &str) -> Result<Checkpointed, DbError> {
    checkpoint_on(None, path).map(|(done, _)| done)
}

/// [`checkpoint`] on `conn`, or on a connection opened to `path` when there is none; the
/// connection is handed back for the next one.
fn checkpoint_on(
    conn: Option<SqliteConnection>,
    path: &str,
) -> Result<(Checkpointed, SqliteConnection), DbError> {
    let mut conn = match conn {
        Some(conn) => conn,
        None => {
            let mut conn = SqliteConnection::establish(path)
                .map_err(|e| DbError::Unavailable(e.to_string()))?;
            conn.batch_execute(SQLITE_PRAGMAS)?;
            conn
        }
    };
    let done = diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").get_result(&mut conn)?;
    Ok((done, conn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{DatabaseUrl, migrate};
    use diesel_async::SimpleAsyncConnection;

    /// A migrated SQLite database whose pool's connection no longer checkpoints on commit,
    /// with a table to fill: its directory, path and pool.
    async fn database_without_checkpoints_on_commit() -> (tempfile::TempDir, String, Db) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db").display().to_string();
        migrate(&DatabaseUrl::Sqlite(path.clone())).await.unwrap();
        let db = Db::connect(&DatabaseUrl::Sqlite(path.clone()), 1).unwrap();
        assert!(stop_checkpoints_on_commit(&db).await.unwrap());
        pool_of(&db)
            .get()
            .await
            .unwrap()
            .batch_execute("CREATE TABLE filler (page BLOB)")
            .await
            .unwrap();
        (dir, path, db)
    }

    fn pool_of(db: &Db) -> &diesel_async::pooled_connection::deadpool::Pool<crate::db::SqliteConn> {
        let Db::Sqlite(pool) = db else {
            unreachable!("a SQLite database")
        };
        pool
    }

    /// Two commits of 1,500 pages each: a commit that checkpointed would have let the second
    /// reuse the WAL from its start.
    #[actix_web::test]
    async fn commits_leave_the_wal_to_the_background_checkpoint() {
        let (_dir, path, db) = database_without_checkpoints_on_commit().await;
        let mut conn = pool_of(&db).get().await.unwrap();
        for _ in 0..2 {
            conn.batch_execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500) \
                 INSERT INTO filler SELECT randomblob(4000) FROM n",
            )
            .await
            .unwrap();
        }
        let done = checkpoint(&path).unwrap();
        assert!(done.log >= 3000, "the WAL kept both commits: {done:?}");
        assert_eq!(
            (done.busy, done.checkpointed),
            (0, done.log),
            "all of it copied"
        );
    }

    /// The background task keeps its connection: a checkpoint on it copies what was
    /// committed since the one before, through a WAL the hub's commits started over.
    #[actix_web::test]
    async fn a_kept_connection_checkpoints_what_came_since() {
        let (_dir, path, db) = database_without_checkpoints_on_commit().await;
        let mut conn = pool_of(&db).get().await.unwrap();
        let (mut kept, mut copied) = (None, Vec::new());
        for pages in [200, 50] {
            conn.batch_execute(&format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < \
                 {pages}) INSERT INTO filler SELECT randomblob(4000) FROM n"
            ))
            .await
            .unwrap();
            let (done, conn) = checkpoint_on(kept.take(), &path).unwrap();
            assert_eq!((done.busy, done.checkpointed), (0, done.log), "{done:?}");
            copied.push(done.log);
            kept = Some(conn);
        }
        assert!(copied[0] >= 200, "{copied:?}");
        assert!(
            (50..copied[0]).contains(&copied[1]),
            "the second commit reused the WAL from its start and was copied: {copied:?}"
        );
    }
}
