//! Scans claimed with what deciding them needs, many at once: on PostgreSQL one round trip a
//! batch of four set-wise statements (the claims, the debounce look, the cards, the holders'
//! orders of the day), whatever the batch's size. Each scan's facts are then picked out of
//! the batch's rows in memory.

use super::batch::one_by_one;
use super::cards::holder_of;
use super::orders::{DayOrderRow, days_around_today, of_today, orders_of_day};
use super::scans::{SCAN_ABANDONED, SCAN_PENDING};
use crate::db::models::{CardRow, ScanRow};
use crate::db::schema::{order_events, orders, rfid_cards, scans, schools};
use crate::db::{Db, DbError, kept};
use chrono::NaiveDateTime;
use chrono::TimeDelta;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamp};
use diesel_async::RunQueryDsl;
use std::collections::HashSet;

/// A new scan's claim and what deciding it needs.
#[derive(Debug, Clone)]
pub struct ClaimedScan {
    /// Whether this request took the claim (else a retry or replay holds it).
    pub claimed: bool,
    /// The first decided scan of this card at this reader within the debounce window.
    pub first: Option<ScanRow>,
    pub card: Option<CardRow>,
    /// The card holder's orders of the day at the reader's school (see
    /// [`super::student_orders_of_day`]).
    pub orders: Vec<String>,
}

/// A scan to claim: its row (`pending`, claimed by this node) and its debounce window.
#[derive(Debug, Clone)]
pub struct ScanToClaim {
    pub row: ScanRow,
    pub window: TimeDelta,
}

impl ScanToClaim {
    fn read_between(&self) -> (chrono::NaiveDateTime, chrono::NaiveDateTime) {
        (
            self.row.read_at - self.window,
            self.row.read_at + self.window,
        )
    }
}

/// Each scan's first decided scan of its card at its reader within its window, the scans
/// given as arrays (reader, card, from, to, own id). One index probe a scan: the `LIMIT`
/// keeps the lateral subquery a loop over the scans (`= ANY` on both leading columns probed
/// every reader with every card).
pub(crate) const DECIDED_NEAR_PG: &str = "\
SELECT x.pos, s.*
FROM unnest($1::text[], $2::text[], $3::timestamp[], $4::timestamp[], $5::text[])
     WITH ORDINALITY AS x(reader_id, card_uid, from_at, to_at, own_id, pos)
CROSS JOIN LATERAL (
    SELECT * FROM scans s
    WHERE s.reader_id = x.reader_id AND s.card_uid = x.card_uid
      AND s.read_at BETWEEN x.from_at AND x.to_at
      AND s.verdict NOT IN ('pending', 'abandoned') AND s.id <> x.own_id
    ORDER BY s.received_at, s.id
    LIMIT 1) s";

/// Each scan's card holder's orders of the day at its school, the scans given as arrays
/// (school, card) and the days a pickup counts on. The holder is a scalar subquery compared
/// with `=`, and `OFFSET 0` keeps the lateral subquery a loop over the scans, so any plan
/// reads `orders_student_school` by both columns once a scan (`= ANY` on both columns probed
/// every school with every student).
pub(crate) const HOLDERS_ORDERS_PG: &str = "\
SELECT x.pos, d.snapshot, d.time_zone, d.state, d.pickup_day
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(school_id, card_uid, pos)
CROSS JOIN LATERAL (
    SELECT e.snapshot, s.time_zone, o.state, o.pickup_day
    FROM orders o
    JOIN order_events e ON e.order_id = o.id AND e.version = o.version
    JOIN schools s ON s.id = o.school_id
    WHERE o.school_id = x.school_id
      AND o.student_id = (SELECT c.student_id FROM rfid_cards c WHERE c.card_uid = x.card_uid)
      AND (o.state IN ('placed', 'confirmed', 'preparing', 'ready')
           OR (o.state = 'picked_up' AND o.pickup_day = ANY ($3)))
    OFFSET 0) d";

/// A claim's commit does not wait for the disk. Nothing is answered from a claim alone:
/// every answer waits for a later commit that does (the verdict, the pickup), and that flush
/// writes this commit too, being earlier in the log. A claim lost to a crash was never
/// answered, and its retry claims afresh. One flush a claim batch fewer: on this machine's
/// disk 1.3-3.4 ms a flush. The batch's statements also use generic plans, foreign-key
/// checks included, and no table walks, as `sequence::GENERIC_PLANS_PG` says: each keeps
/// to its index under one (`plan_tests`).
pub(crate) const CLAIM_UNFLUSHED_PG: &str = "SELECT set_config('synchronous_commit', 'off', true), \
    set_config('plan_cache_mode', 'force_generic_plan', true), \
    set_config('enable_seqscan', 'off', true)";

/// New scans' claims, the scans given as arrays of their columns (in the table's order); a
/// (reader, seq) claimed already is skipped. One text whatever the batch's size, so the
/// connection keeps it.
pub(crate) const INSERT_CLAIMS_PG: &str = "\
INSERT INTO scans (id, school_id, reader_id, seq, card_uid, verdict, answer, order_id,
    student_id, first_scan_id, read_at, received_at, took_us, claimed_by, claimed_at, attempt)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamp[], $12::timestamp[],
    $13::bigint[], $14::text[], $15::timestamp[], $16::int[])
ON CONFLICT DO NOTHING
RETURNING id";

#[derive(QueryableByName)]
struct ClaimedId {
    #[diesel(sql_type = Text)]
    id: String,
}

#[derive(QueryableByName)]
struct DecidedNear {
    #[diesel(sql_type = BigInt)]
    pos: i64,
    #[diesel(embed)]
    scan: ScanRow,
}

#[derive(QueryableByName)]
struct HolderOrder {
    #[diesel(sql_type = BigInt)]
    pos: i64,
    #[diesel(sql_type = Text)]
    snapshot: String,
    #[diesel(sql_type = Text)]
    time_zone: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pickup_day: Option<String>,
}

/// Claims every scan of `batch` and reads what deciding each needs: one answer per scan, in
/// order. A scan whose claim another request holds (a retry) gets `claimed: false`.
pub async fn claim_scans_with_facts(
    db: &Db,
    batch: &[ScanToClaim],
) -> Result<Vec<ClaimedScan>, DbError> {
    let asked = std::time::Instant::now();
    match db {
        Db::Pg(pool) => {
            let pooled = pool.get().await?;
            let turn = crate::db::Turn::began(asked);
            let conn: &diesel_async::AsyncPgConnection = &pooled;
            let claimed = claim_set_wise(conn, batch).await;
            turn.ended();
            claimed
        }
        Db::Sqlite(pool) => {
            let mut pooled = pool.get().await?;
            let turn = crate::db::Turn::began(asked);
            let conn = &mut *pooled;
            let mut claimed = Vec::with_capacity(batch.len());
            // In process a statement costs microseconds: each scan as it always was.
            for scan in batch {
                match claim_one(conn, scan).await {
                    Ok(one) => claimed.push(one),
                    Err(e) => {
                        turn.ended();
                        return Err(e);
                    }
                }
            }
            turn.ended();
            Ok(claimed)
        }
    }
}

async fn claim_set_wise(
    conn: &diesel_async::AsyncPgConnection,
    batch: &[ScanToClaim],
) -> Result<Vec<ClaimedScan>, DbError> {
    let rows: Vec<&ScanRow> = batch.iter().map(|s| &s.row).collect();
    let column = |field: fn(&ScanRow) -> &String| -> Vec<&String> {
        rows.iter().map(|&r| field(r)).collect()
    };
    let optional = |field: fn(&ScanRow) -> &Option<String>| -> Vec<Option<&String>> {
        rows.iter().map(|&r| field(r).as_ref()).collect()
    };
    let (readers, uids, schools, ids) = (
        column(|r| &r.reader_id),
        column(|r| &r.card_uid),
        column(|r| &r.school_id),
        column(|r| &r.id),
    );
    let (from, to): (Vec<NaiveDateTime>, Vec<NaiveDateTime>) =
        batch.iter().map(ScanToClaim::read_between).unzip();
    let distinct_uids: Vec<&String> = uids
        .iter()
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let days = days_around_today();
    // Made inside `one_round_trip`: a statement counts where its future is made.
    let ((begun, unflushed, inserted, decided_near), (cards, orders, committed)) =
        crate::db::one_round_trip(async {
            // Every statement is kept by the connection, so all go in one round trip, in
            // the order polled (`join` polls in order). A future borrows its own `&mut`.
            let [mut c1, mut c2, mut c3, mut c4, mut c5, mut c6, mut c7] = [conn; 7];
            let begin = kept(diesel::sql_query("BEGIN")).execute(&mut c1);
            let unflushed = kept(diesel::sql_query(CLAIM_UNFLUSHED_PG)).execute(&mut c2);
            let inserted = kept(
                diesel::sql_query(INSERT_CLAIMS_PG)
                    .bind::<Array<Text>, _>(&ids)
                    .bind::<Array<Text>, _>(&schools)
                    .bind::<Array<Text>, _>(&readers)
                    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
                    .bind::<Array<Text>, _>(&uids)
                    .bind::<Array<Text>, _>(column(|r| &r.verdict))
                    .bind::<Array<Nullable<Text>>, _>(optional(|r| &r.answer))
                    .bind::<Array<Nullable<Text>>, _>(optional(|r| &r.order_id))
                    .bind::<Array<Nullable<Text>>, _>(optional(|r| &r.student_id))
                    .bind::<Array<Nullable<Text>>, _>(optional(|r| &r.first_scan_id))
                    .bind::<Array<Timestamp>, _>(rows.iter().map(|r| r.read_at).collect::<Vec<_>>())
                    .bind::<Array<Timestamp>, _>(
                        rows.iter().map(|r| r.received_at).collect::<Vec<_>>(),
                    )
                    .bind::<Array<Nullable<BigInt>>, _>(
                        rows.iter().map(|r| r.took_us).collect::<Vec<_>>(),
                    )
                    .bind::<Array<Nullable<Text>>, _>(optional(|r| &r.claimed_by))
                    .bind::<Array<Nullable<Timestamp>>, _>(
                        rows.iter().map(|r| r.claimed_at).collect::<Vec<_>>(),
                    )
                    .bind::<Array<Integer>, _>(rows.iter().map(|r| r.attempt).collect::<Vec<_>>()),
            )
            .load::<ClaimedId>(&mut c3);
            let decided_near = kept(
                diesel::sql_query(DECIDED_NEAR_PG)
                    .bind::<Array<Text>, _>(&readers)
                    .bind::<Array<Text>, _>(&uids)
                    .bind::<Array<Timestamp>, _>(&from)
                    .bind::<Array<Timestamp>, _>(&to)
                    .bind::<Array<Text>, _>(&ids),
            )
            .load::<DecidedNear>(&mut c4);
            let cards = rfid_cards::table
                .filter(rfid_cards::card_uid.eq_any(&distinct_uids))
                .select(CardRow::as_select())
                .load::<CardRow>(&mut c5);
            let orders = kept(
                diesel::sql_query(HOLDERS_ORDERS_PG)
                    .bind::<Array<Text>, _>(&schools)
                    .bind::<Array<Text>, _>(&uids)
                    .bind::<Array<Text>, _>(&days),
            )
            .load::<HolderOrder>(&mut c6);
            let commit = kept(diesel::sql_query("COMMIT")).execute(&mut c7);
            // Every answer is read (joined, not tried): COMMIT after a failed statement rolls
            // back, so the transaction is closed either way.
            futures_util::future::join(
                futures_util::future::join4(begin, unflushed, inserted, decided_near),
                futures_util::future::join3(cards, orders, commit),
            )
            .await
        })
        .await;
    begun?;
    unflushed?;
    let (inserted, decided_near, cards, orders) = (inserted?, decided_near?, cards?, orders?);
    committed?;
    let inserted: HashSet<String> = inserted.into_iter().map(|c| c.id).collect();
    // `pos` counts the scans from 1, as `WITH ORDINALITY` does.
    let mut first: Vec<Option<ScanRow>> = vec![None; batch.len()];
    let index = |pos: i64| usize::try_from(pos - 1).ok();
    for near in decided_near {
        if let Some(slot) = index(near.pos).and_then(|i| first.get_mut(i)) {
            *slot = Some(near.scan);
        }
    }
    let mut holders_orders: Vec<Vec<DayOrderRow>> = vec![Vec::new(); batch.len()];
    for o in orders {
        if let Some(slot) = index(o.pos).and_then(|i| holders_orders.get_mut(i)) {
            slot.push((o.snapshot, o.time_zone, o.state, o.pickup_day));
        }
    }
    Ok(rows
        .iter()
        .zip(first)
        .zip(holders_orders)
        .map(|((row, first), orders)| ClaimedScan {
            claimed: inserted.contains(&row.id),
            first,
            card: cards.iter().find(|c| c.card_uid == row.card_uid).cloned(),
            orders: of_today(orders),
        })
        .collect())
}

/// One scan's claim and reads, one statement after another (SQLite).
async fn claim_one(
    conn: &mut crate::db::SqliteConn,
    scan: &ScanToClaim,
) -> Result<ClaimedScan, DbError> {
    let row = &scan.row;
    let (from, to) = scan.read_between();
    let days = days_around_today();
    let read = async {
        Ok::<_, DbError>(one_by_one!(
            diesel::insert_into(scans::table)
                .values(row)
                .on_conflict_do_nothing()
                .execute(&mut *conn),
            scans::table
                .filter(scans::reader_id.eq(&row.reader_id))
                .filter(scans::card_uid.eq(&row.card_uid))
                .filter(scans::read_at.between(from, to))
                .filter(scans::verdict.ne_all([SCAN_PENDING, SCAN_ABANDONED]))
                .filter(scans::id.ne(&row.id))
                .order((scans::received_at.asc(), scans::id.asc()))
                .limit(1)
                .select(ScanRow::as_select())
                .load::<ScanRow>(&mut *conn),
            rfid_cards::table
                .filter(rfid_cards::card_uid.eq(&row.card_uid))
                .limit(1)
                .select(CardRow::as_select())
                .load::<CardRow>(&mut *conn),
            orders_of_day!(&row.school_id, holder_of!(&row.card_uid), &days)
                .load::<DayOrderRow>(&mut *conn),
        ))
    };
    let (inserted, first, card, orders) = read.await?;
    Ok(ClaimedScan {
        claimed: inserted == 1,
        first: first.into_iter().next(),
        card: card.into_iter().next(),
        orders: of_today(orders),
    })
}
