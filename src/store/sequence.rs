//! A school's kitchen sequence: taken in blocks by batches, under the database's write lock.

use crate::db::schema::schools;
use crate::db::{PgConn, SqliteConn};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use std::collections::HashMap;

/// Sequence number bumps on either backend.
pub(super) trait TakeSeqs {
    async fn take_seqs(&mut self, school_id: &str, n: i64) -> QueryResult<i64>;
}

macro_rules! take_seqs {
    ($conn:ty) => {
        impl TakeSeqs for $conn {
            /// Takes `n` sequence numbers of a school; returns the first. Locks the school's
            /// row until the transaction ends, so its events are numbered without gaps.
            async fn take_seqs(&mut self, school_id: &str, n: i64) -> QueryResult<i64> {
                let last: i64 = diesel::update(schools::table.find(school_id))
                    .set(schools::event_seq.eq(schools::event_seq + n))
                    .returning(schools::event_seq)
                    .get_result(self)
                    .await?;
                Ok(last - n + 1)
            }
        }
    };
}
take_seqs!(PgConn);
take_seqs!(SqliteConn);

/// Taking the database's write lock before a batch's reads, where that is how it works.
pub(super) trait WriteFirst {
    async fn write_first(&mut self, school_id: &str) -> QueryResult<()>;
}

/// SQLite: a transaction that reads first and writes later fails at once (busy, no wait)
/// should another process commit in between; writing first takes the lock, waiting for it.
impl WriteFirst for SqliteConn {
    async fn write_first(&mut self, school_id: &str) -> QueryResult<()> {
        diesel::update(schools::table.find(school_id))
            .set(schools::event_seq.eq(schools::event_seq))
            .execute(self)
            .await
            .map(drop)
    }
}

/// PostgreSQL locks rows as it writes them (the schools' sequence rows, in school order).
impl WriteFirst for PgConn {
    async fn write_first(&mut self, _: &str) -> QueryResult<()> {
        Ok(())
    }
}

/// Locking a batch's schools before its writes; yields each school's time zone.
pub(super) trait LockSchools {
    async fn lock_schools(&mut self, ids: &[&str]) -> QueryResult<HashMap<String, String>>;
}

/// PostgreSQL: the sequence rows in school order, as every batch takes them, so two batches
/// cannot deadlock. `FOR NO KEY UPDATE`, as the sequence bump itself takes: `FOR UPDATE`
/// would also block rows that merely reference the school (foreign keys), which deadlocked
/// against other batches' inserts under load.
impl LockSchools for PgConn {
    async fn lock_schools(&mut self, ids: &[&str]) -> QueryResult<HashMap<String, String>> {
        Ok(schools::table
            .filter(schools::id.eq_any(ids))
            .order(schools::id.asc())
            .select((schools::id, schools::time_zone))
            .for_no_key_update()
            .load::<(String, String)>(self)
            .await?
            .into_iter()
            .collect())
    }
}

/// SQLite: a write first takes the database's lock (see [`WriteFirst`]).
impl LockSchools for SqliteConn {
    async fn lock_schools(&mut self, ids: &[&str]) -> QueryResult<HashMap<String, String>> {
        Ok(
            diesel::update(schools::table.filter(schools::id.eq_any(ids)))
                .set(schools::event_seq.eq(schools::event_seq))
                .returning((schools::id, schools::time_zone))
                .load::<(String, String)>(self)
                .await?
                .into_iter()
                .collect(),
        )
    }
}
