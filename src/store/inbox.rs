//! In-app messages' rows: stored once each, numbered per user without gaps (a group in one
//! statement on PostgreSQL), listed, read and deleted.

use crate::db::schema::{inbox_messages, users};
use crate::db::{Db, DbError, models::now};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;
use tiffin_actors::ports::OutboxMessage;

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = inbox_messages)]
pub struct InboxRow {
    pub id: String,
    pub user_id: String,
    pub seq: i64,
    pub kind: String,
    pub title: String,
    pub body: String,
    pub order_id: Option<String>,
    pub created_at: NaiveDateTime,
    pub read_at: Option<NaiveDateTime>,
    pub deleted_at: Option<NaiveDateTime>,
}

/// Why storing stopped: a database error, or the message was stored before.
enum StoreError {
    Db(diesel::result::Error),
    StoredBefore(InboxRow),
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> StoreError {
        StoreError::Db(e)
    }
}

/// Stores a message once: the next number in the user's inbox, unless this outbox row was
/// stored before (a retried delivery). Yields the row and whether it is new.
async fn store(db: &Db, row: InboxRow) -> Result<(InboxRow, bool), DbError> {
    if let Db::Pg(pool) = db {
        // A group of one: one round trip.
        let mut stored = store_group_pg(pool, std::slice::from_ref(&row)).await?;
        let (seq, fresh) = stored.remove(&row.id).ok_or(DbError::NotFound)?;
        return Ok((InboxRow { seq, ..row }, fresh));
    }
    let stored = with_conn!(db, |conn| conn
        .transaction(async |conn| {
            // Write first: takes SQLite's write lock before any read.
            let seq: i64 = diesel::update(users::table.find(&row.user_id))
                .set(users::inbox_seq.eq(users::inbox_seq + 1))
                .returning(users::inbox_seq)
                .get_result(conn)
                .await?;
            let earlier: Option<InboxRow> = inbox_messages::table
                .find(&row.id)
                .select(InboxRow::as_select())
                .first(conn)
                .await
                .optional()?;
            if let Some(earlier) = earlier {
                // Rolls back the number taken, so the sequence stays gapless.
                return Err(StoreError::StoredBefore(earlier));
            }
            let row = InboxRow { seq, ..row };
            diesel::insert_into(inbox_messages::table)
                .values(&row)
                .execute(conn)
                .await?;
            Ok::<_, StoreError>(row)
        })
        .await);
    match stored {
        Ok(row) => Ok((row, true)),
        Err(StoreError::StoredBefore(row)) => Ok((row, false)),
        Err(StoreError::Db(e)) => Err(e.into()),
    }
}

/// The numbers a group's users take (`taken`: each user's base), from `counts` (each user's
/// new messages). The users' rows are locked in key order first (`locked`): two groups
/// sharing users (siblings' guardians) then wait for each other instead of deadlocking.
macro_rules! take_numbers {
    () => {
        "locked AS MATERIALIZED ( \
    SELECT u.id FROM users u WHERE u.id IN (SELECT user_id FROM counts) ORDER BY u.id \
    FOR UPDATE), \
taken AS ( \
    UPDATE users AS u SET inbox_seq = u.inbox_seq + counts.n FROM counts \
    JOIN locked ON locked.id = counts.user_id \
    WHERE u.id = counts.user_id RETURNING u.id, u.inbox_seq - counts.n AS base)"
    };
}

/// PostgreSQL: a group of messages stored, or found stored before, in one statement. Each
/// user's new messages take that user's next numbers in the group's order; a message stored
/// before takes none; a message for an unknown user is not stored and gets no row. Should a
/// resend race it, the loser fails on the message's key, takes nothing and is retried.
pub(crate) const STORE_GROUP_PG: &str = concat!(
    "\
WITH r AS ( \
    SELECT m.*, e.pos FROM json_array_elements($1::json) WITH ORDINALITY AS e(doc, pos), \
        LATERAL json_populate_record(NULL::inbox_messages, e.doc) AS m), \
earlier AS (SELECT m.id, m.seq FROM inbox_messages m WHERE m.id = ANY(ARRAY(SELECT id FROM r))), \
fresh AS (SELECT * FROM r WHERE r.id NOT IN (SELECT id FROM earlier)), \
counts AS (SELECT user_id, count(*) AS n FROM fresh GROUP BY user_id), ",
    take_numbers!(),
    ", \
numbered AS ( \
    SELECT fresh.*, taken.base + row_number() OVER ( \
        PARTITION BY fresh.user_id ORDER BY fresh.pos) AS number \
    FROM fresh JOIN taken ON taken.id = fresh.user_id), \
stored AS ( \
    INSERT INTO inbox_messages (id, user_id, seq, kind, title, body, order_id, created_at, \
        read_at, deleted_at) \
    SELECT id, user_id, number, kind, title, body, order_id, created_at, read_at, deleted_at \
    FROM numbered RETURNING id, seq) \
SELECT id, seq, true AS fresh FROM stored UNION ALL SELECT id, seq, false FROM earlier"
);

/// PostgreSQL: new messages stored in one statement, as `STORE_GROUP_PG` without its look-up
/// of earlier copies (a fan-out's messages are new: their outbox rows are written beside them).
pub(crate) const STORE_NEW_PG: &str = concat!(
    "\
WITH r AS ( \
    SELECT m.*, e.pos FROM json_array_elements($1::json) WITH ORDINALITY AS e(doc, pos), \
        LATERAL json_populate_record(NULL::inbox_messages, e.doc) AS m), \
counts AS (SELECT user_id, count(*) AS n FROM r GROUP BY user_id), ",
    take_numbers!(),
    " \
INSERT INTO inbox_messages (id, user_id, seq, kind, title, body, order_id, created_at, \
    read_at, deleted_at) \
SELECT r.id, r.user_id, taken.base + row_number() OVER (PARTITION BY r.user_id ORDER BY r.pos), \
    r.kind, r.title, r.body, r.order_id, r.created_at, r.read_at, r.deleted_at \
FROM r JOIN taken ON taken.id = r.user_id RETURNING id, seq"
);

#[derive(QueryableByName)]
struct NewInGroup {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
}

#[derive(QueryableByName)]
struct StoredInGroup {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    fresh: bool,
}

pub(crate) type StoreAnswer = Result<(InboxRow, bool), DbError>;

/// Stores a group of messages, each as `store` would: on PostgreSQL in one statement (one
/// round trip for the group; in a rush, one statement a message was most of what PostgreSQL ran
/// per order after the order's own write: BENCHMARKS.md), falling back to one at a time when
/// the group fails (a message twice in it, a race with another node); on SQLite one at a time.
/// One answer per message, in order.
pub(crate) async fn store_group(db: &Db, rows: Vec<InboxRow>) -> Vec<StoreAnswer> {
    if let Db::Pg(pool) = db {
        match store_group_pg(pool, &rows).await {
            Ok(mut stored) => {
                return rows
                    .into_iter()
                    .map(|row| match stored.remove(&row.id) {
                        Some((seq, fresh)) => Ok((InboxRow { seq, ..row }, fresh)),
                        None => Err(DbError::NotFound),
                    })
                    .collect();
            }
            Err(e) => {
                tracing::debug!(error = %e, size = rows.len(), "inbox group failed; storing each alone")
            }
        }
    }
    let mut answers = Vec::with_capacity(rows.len());
    for row in rows {
        answers.push(store(db, row).await);
    }
    answers
}

async fn store_group_pg(
    pool: &diesel_async::pooled_connection::deadpool::Pool<crate::db::PgConn>,
    rows: &[InboxRow],
) -> Result<std::collections::HashMap<String, (i64, bool)>, DbError> {
    let json = serde_json::to_string(rows).map_err(|e| DbError::Other(e.to_string()))?;
    let store =
        crate::db::kept(diesel::sql_query(STORE_GROUP_PG).bind::<diesel::sql_types::Text, _>(json));
    let stored = crate::with_pooled!(pool, |conn| super::sequence::on_generic_plans!(
        &*conn,
        |on| store.load::<StoredInGroup>(&mut on)
    ))?;
    Ok(stored
        .into_iter()
        .map(|s| (s.id, (s.seq, s.fresh)))
        .collect())
}

/// How a fan-out makes and announces the in-app messages it sends where it writes them
/// (`notify::in_app::InPlace`).
pub trait InPlaceDelivery: Send + Sync + 'static {
    /// The message's inbox row, not yet numbered; a message it cannot make is left to the
    /// in-app sender.
    fn inbox_row(&self, message: &OutboxMessage) -> Result<InboxRow, String>;
    /// Publishes messages stored and committed.
    fn publish(&self, stored: &[InboxRow]);
}

/// New messages stored in the caller's transaction (a fan-out's, which wrote their outbox
/// rows, so none was stored before): each takes its user's next number, in the order given.
/// Yields them numbered. SQLite's; PostgreSQL's is `store_new_pg`.
pub(crate) trait StoreNew {
    async fn store_new(&mut self, rows: Vec<InboxRow>) -> QueryResult<Vec<InboxRow>>;
}

/// PostgreSQL: `StoreNew` in one statement, on a shared connection so that the fan-out sends
/// it with its other writes.
pub(crate) async fn store_new_pg(
    conn: &crate::db::PgConn,
    rows: Vec<InboxRow>,
) -> QueryResult<Vec<InboxRow>> {
    let json = serde_json::to_string(&rows)
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    let stored: Vec<NewInGroup> =
        crate::db::kept(diesel::sql_query(STORE_NEW_PG).bind::<diesel::sql_types::Text, _>(json))
            .load(&mut &*conn)
            .await?;
    let numbers: std::collections::HashMap<String, i64> =
        stored.into_iter().map(|s| (s.id, s.seq)).collect();
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let seq = *numbers.get(&row.id)?;
            Some(InboxRow { seq, ..row })
        })
        .collect())
}

impl StoreNew for crate::db::SqliteConn {
    async fn store_new(&mut self, rows: Vec<InboxRow>) -> QueryResult<Vec<InboxRow>> {
        let mut stored = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = diesel::update(users::table.find(&row.user_id))
                .set(users::inbox_seq.eq(users::inbox_seq + 1))
                .returning(users::inbox_seq)
                .get_result(self)
                .await?;
            let row = InboxRow { seq, ..row };
            diesel::insert_into(inbox_messages::table)
                .values(&row)
                .execute(self)
                .await?;
            stored.push(row);
        }
        Ok(stored)
    }
}

/// The user's latest inbox number.
pub async fn latest_seq(db: &Db, user_id: &str) -> Result<Option<i64>, DbError> {
    Ok(with_conn!(db, |conn| users::table
        .find(user_id)
        .select(users::inbox_seq)
        .first(conn)
        .await
        .optional())?)
}

/// Messages with `after < seq <= upto`, oldest first.
pub async fn messages_between(
    db: &Db,
    user_id: &str,
    after: i64,
    upto: i64,
) -> Result<Vec<InboxRow>, DbError> {
    Ok(with_conn!(db, |conn| inbox_messages::table
        .filter(inbox_messages::user_id.eq(user_id))
        .filter(inbox_messages::seq.gt(after))
        .filter(inbox_messages::seq.le(upto))
        .order(inbox_messages::seq.asc())
        .select(InboxRow::as_select())
        .load(conn)
        .await)?)
}

/// Which of a user's messages a list shows.
pub struct Page {
    pub unread_only: bool,
    /// Only those numbered below this (the page after one that ended there).
    pub before: Option<i64>,
    pub limit: i64,
}

/// A page of a user's messages, newest first, without deleted ones.
pub async fn list(db: &Db, user_id: &str, page: Page) -> Result<Vec<InboxRow>, DbError> {
    Ok(with_conn!(db, |conn| {
        let mut q = inbox_messages::table
            .filter(inbox_messages::user_id.eq(user_id))
            .filter(inbox_messages::deleted_at.is_null())
            .into_boxed();
        if page.unread_only {
            q = q.filter(inbox_messages::read_at.is_null());
        }
        if let Some(before) = page.before {
            q = q.filter(inbox_messages::seq.lt(before));
        }
        q.order(inbox_messages::seq.desc())
            .limit(page.limit)
            .select(InboxRow::as_select())
            .load(conn)
            .await
    })?)
}

/// Marks the user's message read (the first time counts); `None` if it is not theirs or gone.
/// Marks the user's message read; yields it, and whether this was the first time.
pub async fn mark_read(
    db: &Db,
    user_id: &str,
    id: &str,
) -> Result<Option<(InboxRow, bool)>, DbError> {
    let at = now();
    Ok(with_conn!(db, |conn| {
        let changed = diesel::update(
            inbox_messages::table
                .filter(inbox_messages::id.eq(id))
                .filter(inbox_messages::user_id.eq(user_id))
                .filter(inbox_messages::deleted_at.is_null())
                .filter(inbox_messages::read_at.is_null()),
        )
        .set(inbox_messages::read_at.eq(Some(at)))
        .execute(conn)
        .await?;
        inbox_messages::table
            .filter(inbox_messages::id.eq(id))
            .filter(inbox_messages::user_id.eq(user_id))
            .filter(inbox_messages::deleted_at.is_null())
            .select(InboxRow::as_select())
            .first(conn)
            .await
            .optional()
            .map(|row| row.map(|row| (row, changed == 1)))
    })?)
}

/// Deletes the user's message: blanked and hidden, its number kept. Yields it as deleted, or
/// `None` if it is not theirs (or was deleted before).
pub async fn delete(db: &Db, user_id: &str, id: &str) -> Result<Option<InboxRow>, DbError> {
    let at = now();
    let deleted = with_conn!(db, |conn| diesel::update(
        inbox_messages::table
            .filter(inbox_messages::id.eq(id))
            .filter(inbox_messages::user_id.eq(user_id))
            .filter(inbox_messages::deleted_at.is_null()),
    )
    .set((
        inbox_messages::deleted_at.eq(Some(at)),
        inbox_messages::title.eq(""),
        inbox_messages::body.eq(""),
    ))
    .returning(InboxRow::as_returning())
    .get_result(conn)
    .await
    .optional())?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_support::school;
    use crate::db::test_support::{database, pg_admin, pg_database};

    fn message(id: &str, user_id: &str) -> InboxRow {
        InboxRow {
            id: id.into(),
            user_id: user_id.into(),
            seq: 0,
            kind: "order_ready".into(),
            title: "Ready".into(),
            body: "Your lunch is ready.".into(),
            order_id: None,
            created_at: now(),
            read_at: None,
            deleted_at: None,
        }
    }

    /// New messages take the user's next numbers; a message stored again (a resend after a
    /// crash) is found, takes no number and is not new; an unknown user stores nothing.
    async fn numbers_without_gaps(db: Db) {
        let user = school(&db, "inbox").await.student;
        let (first, fresh) = store(&db, message("m-1", &user)).await.unwrap();
        assert_eq!((first.seq, fresh), (1, true));
        let (again, fresh) = store(&db, message("m-1", &user)).await.unwrap();
        assert_eq!((again.seq, fresh), (1, false), "stored before, not again");
        let (second, fresh) = store(&db, message("m-2", &user)).await.unwrap();
        assert_eq!((second.seq, fresh), (2, true), "the resend took no number");
        assert_eq!(latest_seq(&db, &user).await.unwrap(), Some(2));
        let stored = messages_between(&db, &user, 0, 10).await.unwrap();
        assert_eq!(
            stored
                .iter()
                .map(|m| (m.id.as_str(), m.seq))
                .collect::<Vec<_>>(),
            vec![("m-1", 1), ("m-2", 2)]
        );
        assert!(store(&db, message("m-3", "no-such-user")).await.is_err());
        assert!(
            messages_between(&db, "no-such-user", 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// A group stores as its messages would one by one: each user's new messages numbered in
    /// the group's order, one stored before found and numberless, one for an unknown user not
    /// stored, and everyone else's stored all the same.
    async fn a_group_numbers_each_users_messages_in_order(db: Db) {
        let a = school(&db, "group a").await.student;
        let b = school(&db, "group b").await.student;
        let (before, _) = store(&db, message("g-0", &a)).await.unwrap();
        assert_eq!(before.seq, 1);
        let answers = store_group(
            &db,
            vec![
                message("g-1", &a),
                message("g-2", &b),
                message("g-0", &a),
                message("g-3", "no-such-user"),
                message("g-4", &a),
            ],
        )
        .await;
        let got: Vec<Option<(String, i64, bool)>> = answers
            .into_iter()
            .map(|a| a.ok().map(|(row, fresh)| (row.id, row.seq, fresh)))
            .collect();
        let want = |id: &str, seq, fresh| Some((id.to_owned(), seq, fresh));
        assert_eq!(
            got,
            vec![
                want("g-1", 2, true),
                want("g-2", 1, true),
                want("g-0", 1, false),
                None,
                want("g-4", 3, true),
            ]
        );
        assert_eq!(latest_seq(&db, &a).await.unwrap(), Some(3));
        assert_eq!(latest_seq(&db, &b).await.unwrap(), Some(1));
        let stored: Vec<(String, i64)> = messages_between(&db, &a, 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m.seq))
            .collect();
        assert_eq!(
            stored,
            vec![("g-0".into(), 1), ("g-1".into(), 2), ("g-4".into(), 3)]
        );
        // The same message twice in one group: stored once, the other found stored.
        let twice = store_group(&db, vec![message("g-5", &b), message("g-5", &b)]).await;
        let seqs: Vec<(i64, bool)> = twice
            .into_iter()
            .map(|a| a.map(|(row, fresh)| (row.seq, fresh)).unwrap())
            .collect();
        assert_eq!(seqs, vec![(2, true), (2, false)]);
    }

    #[actix_web::test]
    async fn a_group_numbers_each_users_messages_in_order_on_sqlite() {
        let (_dir, db) = database().await;
        a_group_numbers_each_users_messages_in_order(db).await;
    }

    #[actix_web::test]
    async fn a_group_numbers_each_users_messages_in_order_on_postgres() {
        let (name, db) = pg_database().await;
        a_group_numbers_each_users_messages_in_order(db.clone()).await;
        // The group's own statement, not the one-at-a-time fallback, answers a good group.
        let Db::Pg(pool) = &db else {
            unreachable!("a PostgreSQL database")
        };
        let user = school(&db, "direct").await.student;
        let group = [message("d-1", &user), message("d-2", &user)];
        let stored = store_group_pg(pool, &group).await.unwrap();
        assert_eq!(stored.get("d-1"), Some(&(1, true)));
        assert_eq!(stored.get("d-2"), Some(&(2, true)));
        drop(db);
        pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
    }

    crate::db::test_support::on_both_backends!(
        numbers_without_gaps_on_sqlite,
        numbers_without_gaps_on_postgres,
        numbers_without_gaps
    );
}
