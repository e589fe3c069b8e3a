//! Scans, one row a card read: claimed, decided, taken over when their node died.

use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

pub async fn scan_by_seq(db: &Db, reader_id: &str, seq: i64) -> Result<Option<ScanRow>, DbError> {
    Ok(with_conn!(db, |conn| scans::table
        .filter(scans::reader_id.eq(reader_id))
        .filter(scans::seq.eq(seq))
        .select(ScanRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

/// A scan being decided.
pub const SCAN_PENDING: &str = "pending";

/// A claim its node left undecided (it died), nothing handed over: a retry decides afresh.
pub const SCAN_ABANDONED: &str = "abandoned";

/// Records a scan as being decided; false if its (reader, seq) is already taken.
pub async fn claim_scan(db: &Db, row: &ScanRow) -> Result<bool, DbError> {
    let inserted = with_conn!(db, |conn| diesel::insert_into(scans::table)
        .values(row)
        .on_conflict_do_nothing()
        .execute(conn)
        .await)?;
    Ok(inserted == 1)
}

/// Takes over an abandoned scan as the next claim of it; `None` if someone else did first.
pub async fn take_over_scan(
    db: &Db,
    seen: &ScanRow,
    node: &str,
    at: NaiveDateTime,
) -> Result<Option<ScanRow>, DbError> {
    Ok(with_conn!(db, |conn| diesel::update(
        scans::table
            .filter(scans::id.eq(&seen.id))
            .filter(scans::verdict.eq(SCAN_ABANDONED))
            .filter(scans::attempt.eq(seen.attempt))
    )
    .set((
        scans::verdict.eq(SCAN_PENDING),
        scans::attempt.eq(seen.attempt + 1),
        scans::claimed_by.eq(node),
        scans::claimed_at.eq(at),
    ))
    .returning(ScanRow::as_returning())
    .get_result(conn)
    .await
    .optional())?)
}

/// The first decided scan of this card on this reader within `window` of `read_at`.
pub async fn first_scan_near(
    db: &Db,
    reader_id: &str,
    card_uid: &str,
    read_at: NaiveDateTime,
    window: chrono::TimeDelta,
    except: &str,
) -> Result<Option<ScanRow>, DbError> {
    let (from, to) = (read_at - window, read_at + window);
    Ok(with_conn!(db, |conn| scans::table
        .filter(scans::reader_id.eq(reader_id))
        .filter(scans::card_uid.eq(card_uid))
        .filter(scans::read_at.between(from, to))
        .filter(scans::verdict.ne_all([SCAN_PENDING, SCAN_ABANDONED]))
        .filter(scans::id.ne(except))
        .order((scans::received_at.asc(), scans::id.asc()))
        .select(ScanRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

/// A scan's decision.
pub struct ScanDecision<'a> {
    pub verdict: &'a tiffin_actors::rfid::Verdict,
    pub order_id: Option<&'a str>,
    pub student_id: Option<&'a str>,
    pub first_scan_id: Option<&'a str>,
    pub took: Option<std::time::Duration>,
}

/// Records a scan's verdict, if `attempt` is still its claim and it is undecided; false if
/// not (decided, abandoned or taken over meanwhile).
pub async fn finish_scan(
    db: &Db,
    id: &str,
    attempt: i32,
    decision: ScanDecision<'_>,
) -> Result<bool, DbError> {
    let answer =
        serde_json::to_string(decision.verdict).map_err(|e| DbError::Other(e.to_string()))?;
    let took = decision.took.map(|t| t.as_micros() as i64);
    let n = with_conn!(db, |conn| diesel::update(
        scans::table
            .filter(scans::id.eq(id))
            .filter(scans::verdict.eq(SCAN_PENDING))
            .filter(scans::attempt.eq(attempt))
    )
    .set((
        scans::verdict.eq(decision.verdict.code()),
        scans::answer.eq(Some(answer)),
        scans::order_id.eq(decision.order_id),
        scans::student_id.eq(decision.student_id),
        scans::first_scan_id.eq(decision.first_scan_id),
        scans::took_us.eq(took),
    ))
    .execute(conn)
    .await)?;
    Ok(n > 0)
}

/// A scan claim past `stale_before`, or `node`'s from before `started` (its previous process).
/// A claim an earlier version took has no `claimed_at`: its arrival counts.
macro_rules! dead_claim {
    ($node:expr, $started:expr, $stale_before:expr) => {
        scans::claimed_at
            .lt($stale_before)
            .or(scans::claimed_at
                .is_null()
                .and(scans::received_at.lt($stale_before)))
            .or(scans::claimed_by
                .eq($node)
                .and(scans::claimed_at.lt($started)))
    };
}

/// Undecided scans whose claim is dead: past `stale_before`, or this node's from before
/// `started` (its previous process). Oldest first, at most `limit`.
pub async fn dead_scan_claims(
    db: &Db,
    node: &str,
    started: NaiveDateTime,
    stale_before: NaiveDateTime,
    limit: i64,
) -> Result<Vec<ScanRow>, DbError> {
    Ok(with_conn!(db, |conn| scans::table
        .filter(scans::verdict.eq(SCAN_PENDING))
        .filter(dead_claim!(node, started, stale_before))
        .order(scans::claimed_at.asc())
        .limit(limit)
        .select(ScanRow::as_select())
        .load(conn)
        .await)?)
}

/// Abandons these undecided scans if their claims are still dead (as `dead_scan_claims`
/// found them): a decider that finished meanwhile keeps its decision.
pub async fn abandon_scans(
    db: &Db,
    ids: &[&str],
    node: &str,
    started: NaiveDateTime,
    stale_before: NaiveDateTime,
) -> Result<usize, DbError> {
    Ok(with_conn!(db, |conn| diesel::update(
        scans::table
            .filter(scans::id.eq_any(ids))
            .filter(scans::verdict.eq(SCAN_PENDING))
            .filter(dead_claim!(node, started, stale_before))
    )
    .set(scans::verdict.eq(SCAN_ABANDONED))
    .execute(conn)
    .await)?)
}

/// A school's latest scans, newest first, read backwards along `scans_recent_by_school`.
macro_rules! recent_scans_query {
    ($school_id:expr, $limit:expr) => {
        $crate::db::schema::scans::table
            .filter($crate::db::schema::scans::school_id.eq($school_id))
            .order((
                $crate::db::schema::scans::received_at.desc(),
                $crate::db::schema::scans::id.desc(),
            ))
            .limit($limit)
            .select(ScanRow::as_select())
    };
}
#[cfg(test)]
pub(super) use recent_scans_query;

pub async fn recent_scans(db: &Db, school_id: &str, limit: i64) -> Result<Vec<ScanRow>, DbError> {
    Ok(with_conn!(db, |conn| recent_scans_query!(
        school_id, limit
    )
    .load(conn)
    .await)?)
}

/// The count [`allergy_holds_of`] makes.
macro_rules! allergy_holds_query {
    ($order_id:expr) => {
        $crate::db::schema::scans::table
            .filter($crate::db::schema::scans::order_id.eq($order_id))
            .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
                "scans.verdict = 'allergy_hold'",
            ))
            .filter($crate::db::schema::scans::first_scan_id.is_null())
            .count()
    };
}
#[cfg(test)]
pub(super) use allergy_holds_query;

/// How many first scans of an order were held for an allergy. The verdict is written into the
/// statement, not bound, so that every plan can match `scans_allergy_holds`.
pub async fn allergy_holds_of(db: &Db, order_id: &str) -> Result<i64, DbError> {
    Ok(with_conn!(db, |conn| allergy_holds_query!(order_id)
        .get_result(conn)
        .await)?)
}
