//! A school's kitchen sequence on SQLite: taken in blocks by batches, under the schools'
//! locks, so a kitchen's events are numbered without gaps. On PostgreSQL the batches lock their
//! schools in school order with `with_schools_locked!` (below) and take their numbers
//! inside their write statements.

use crate::db::SqliteConn;
use crate::db::schema::schools;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use std::collections::{BTreeMap, HashMap};

/// Locking a batch's schools before its writes; yields each school's time zone.
pub(super) trait LockSchools {
    async fn lock_schools(&mut self, ids: &[&str]) -> QueryResult<HashMap<String, String>>;
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

/// Locks a batch's schools in school order (`FOR NO KEY UPDATE`, as the sequence bump
/// itself takes; `FOR UPDATE` would also block rows that merely reference a school). One
/// index probe a school, in the sorted ids' order: `id = ANY` read the table whole under a
/// generic plan.
pub(crate) const LOCK_SCHOOLS_PG: &str = "\
SELECT s.id FROM (SELECT DISTINCT id FROM unnest($1::text[]) AS u(id) ORDER BY id) x \
CROSS JOIN LATERAL (SELECT id FROM schools WHERE id = x.id FOR NO KEY UPDATE) s";

/// For the rest of a transaction, statements use their connection's cached generic plan
/// instead of being planned afresh (`db::plan_afresh_without_autovacuum`), foreign-key
/// checks included: for transactions whose statements `plan_tests` holds to their indexes
/// under such plans. Planning was about a quarter of PostgreSQL's time in the scans
/// benchmark (BENCHMARKS.md). A connection makes its generic plan once, at the statement's
/// first run, often on the day's first few rows, where walking a table is cheapest, and
/// keeps it all day: so no table walks where a key finds the rows (the transitions' write
/// walked every order of the day under a plan made on an empty table).
pub(crate) const GENERIC_PLANS_PG: &str = "SELECT \
    set_config('plan_cache_mode', 'force_generic_plan', true), \
    set_config('enable_seqscan', 'off', true)";

/// Runs `$write` (one statement on `$c`, a `&mut &PgConn`) in a transaction that first locks
/// `$schools` in school order, the statements made in order and sent together: one
/// round trip when `$write` is [`crate::db::kept`] (kept by the connection; a statement
/// prepared afresh waits for its own). The lock is its own statement so that the write's
/// snapshot is taken once the locks are held: a write that locked and updated the same school
/// rows in one statement re-read them through its older snapshot and queued behind other
/// waiters for the row it held, a deadlock PostgreSQL reported under the lunch rush. COMMIT
/// after a failed statement rolls back; every answer is read (joined, not tried), so the
/// transaction is closed either way. The transaction's statements use generic plans
/// (`GENERIC_PLANS_PG`): `plan_tests` holds each write to its indexes under them.
macro_rules! with_schools_locked {
    ($conn:expr, $schools:expr, |$c:ident| $write:expr) => {{
        use diesel::sql_types::{Array, Text};
        let conn: &$crate::db::PgConn = $conn;
        let mut lock_on = conn;
        let lock = $crate::db::kept(
            diesel::sql_query($crate::store::sequence::LOCK_SCHOOLS_PG)
                .bind::<Array<Text>, _>($schools),
        );
        $crate::store::sequence::on_generic_plans!(conn, Some(lock.execute(&mut lock_on)), |$c| {
            $write
        })
    }};
}
pub(crate) use with_schools_locked;

/// Runs `$write` (one statement on `$c`, a `&mut &PgConn`) in a transaction on generic plans
/// (`GENERIC_PLANS_PG`), after `$first` (an `Option` of a statement's future) if any: BEGIN,
/// the settings, `$first`, `$write` and COMMIT made in order and sent together, one round trip
/// when the statements are [`crate::db::kept`]. `$first` and `$write` are expressions that make
/// their futures where the macro writes them: diesel-async sends a statement when its future is
/// made, so one made beforehand would go out ahead of BEGIN. For statements `plan_tests` holds
/// to their indexes under such plans, run so often that planning each afresh was a large part
/// of PostgreSQL's time (BENCHMARKS.md).
macro_rules! on_generic_plans {
    ($conn:expr, |$c:ident| $write:expr) => {
        $crate::store::sequence::on_generic_plans!(
            $conn,
            None::<std::future::Ready<diesel::QueryResult<usize>>>,
            |$c| $write
        )
    };
    ($conn:expr, $first:expr, |$c:ident| $write:expr) => {{
        let conn: &$crate::db::PgConn = $conn;
        let (mut begin_on, mut plans_on, mut $c, mut commit_on) = (conn, conn, conn, conn);
        $crate::db::one_round_trip(async {
            let begin = $crate::db::kept(diesel::sql_query("BEGIN")).execute(&mut begin_on);
            let plans =
                $crate::db::kept(diesel::sql_query($crate::store::sequence::GENERIC_PLANS_PG))
                    .execute(&mut plans_on);
            let first: futures_util::future::OptionFuture<_> = $first.into();
            let written = $write;
            let commit = $crate::db::kept(diesel::sql_query("COMMIT")).execute(&mut commit_on);
            let (begin, plans, first, written, commit) =
                futures_util::future::join5(begin, plans, first, written, commit).await;
            begin?;
            plans?;
            first.transpose()?;
            let written = written?;
            commit?;
            Ok::<_, diesel::result::Error>(written)
        })
        .await
    }};
}
pub(crate) use on_generic_plans;
