//! A school's kitchen sequence: taken in blocks by batches, under the schools' locks, so a
//! kitchen's events are numbered without gaps. Every batch locks its schools in school order
//! before it takes numbers, so two batches cannot deadlock.

use crate::db::schema::schools;
use crate::db::{PgConn, SqliteConn};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use std::collections::{BTreeMap, HashMap};

/// Locking a batch's schools before its writes; yields each school's time zone.
pub(super) trait LockSchools {
    async fn lock_schools(&mut self, ids: &[&str]) -> QueryResult<HashMap<String, String>>;
}

/// PostgreSQL: the sequence rows in school order. `FOR NO KEY UPDATE`, as the sequence bump
/// itself takes: `FOR UPDATE` would also block rows that merely reference the school (foreign
/// keys), which deadlocked against other batches' inserts under load.
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

/// SQLite: a transaction that reads first and writes later fails at once (busy, no wait)
/// should another process commit in between; a write first takes the database's lock,
/// waiting for it.
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

/// Taking `n` sequence numbers of each school (locked already); yields each school's first.
pub(super) trait TakeSeqs {
    async fn take_seqs(
        &mut self,
        counts: &BTreeMap<String, i64>,
    ) -> QueryResult<HashMap<String, i64>>;
}

#[derive(QueryableByName)]
struct Taken {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    event_seq: i64,
}

/// PostgreSQL: every school of the batch in one statement.
const TAKE_PG: &str = "UPDATE schools AS s SET event_seq = s.event_seq + v.n \
     FROM json_to_recordset($1::json) AS v(id text, n bigint) WHERE s.id = v.id \
     RETURNING s.id, s.event_seq";

impl TakeSeqs for PgConn {
    async fn take_seqs(
        &mut self,
        counts: &BTreeMap<String, i64>,
    ) -> QueryResult<HashMap<String, i64>> {
        let rows: Vec<serde_json::Value> = counts
            .iter()
            .map(|(id, n)| serde_json::json!({ "id": id, "n": n }))
            .collect();
        let taken = diesel::sql_query(TAKE_PG)
            .bind::<Text, _>(serde_json::Value::Array(rows).to_string())
            .load::<Taken>(self)
            .await?;
        Ok(firsts(
            counts,
            taken.into_iter().map(|t| (t.id, t.event_seq)),
        ))
    }
}

/// SQLite: a statement a school, each microseconds in process.
impl TakeSeqs for SqliteConn {
    async fn take_seqs(
        &mut self,
        counts: &BTreeMap<String, i64>,
    ) -> QueryResult<HashMap<String, i64>> {
        let mut taken = Vec::with_capacity(counts.len());
        for (id, n) in counts {
            let last: i64 = diesel::update(schools::table.find(id))
                .set(schools::event_seq.eq(schools::event_seq + n))
                .returning(schools::event_seq)
                .get_result(self)
                .await?;
            taken.push((id.clone(), last));
        }
        Ok(firsts(counts, taken.into_iter()))
    }
}

/// Each school's first new number, from the last one its bump returned.
fn firsts(
    counts: &BTreeMap<String, i64>,
    last: impl Iterator<Item = (String, i64)>,
) -> HashMap<String, i64> {
    last.filter_map(|(id, last)| {
        let n = counts.get(&id)?;
        Some((id, last - n + 1))
    })
    .collect()
}
