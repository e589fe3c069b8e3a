//! Orders, their items and events: reads for the API and the counters, and the event rows
//! every write of an order makes.

use super::{TxError, json_error};
use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError, InsertRows};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use tiffin_actors::domain::{KitchenEvent, OrderState, OrderSummary};
use tiffin_actors::notices::Kind;

pub(super) const LIVE_STATES: [&str; 4] = ["placed", "confirmed", "preparing", "ready"];

pub fn event_from_row(row: OrderEventRow) -> Result<KitchenEvent, DbError> {
    let order: OrderSummary = serde_json::from_str(&row.snapshot)
        .map_err(|e| DbError::Other(format!("stored snapshot: {e}")))?;
    let to = OrderState::parse(&row.to_state)
        .ok_or_else(|| DbError::Other(format!("unknown state {}", row.to_state)))?;
    Ok(KitchenEvent {
        school_id: row.school_id,
        seq: row.seq,
        kind: row.kind,
        order_id: row.order_id,
        from: row.from_state.as_deref().and_then(OrderState::parse),
        to,
        version: row.version,
        actor_id: row.actor_id,
        reason: row.reason,
        at: row.created_at.and_utc(),
        order,
    })
}

/// What an event records beside the order it leaves: its type, who, why, and the notice it
/// makes (fanned out to the outbox later by dispatch, see `DieselStore::fan_out`).
pub(super) struct EventNote<'a> {
    pub(super) kind: &'a str,
    pub(super) from: Option<OrderState>,
    pub(super) actor_id: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) at: NaiveDateTime,
    pub(super) notice: Option<Kind>,
    /// Someone who needs no news of their own act.
    pub(super) skip: Option<String>,
}

pub(super) fn event_row(
    seq: i64,
    order: &OrderSummary,
    note: EventNote,
) -> Result<OrderEventRow, TxError> {
    Ok(OrderEventRow {
        school_id: order.school_id.clone(),
        seq,
        order_id: order.id.clone(),
        version: order.version,
        kind: note.kind.to_owned(),
        from_state: note.from.map(|s| s.as_str().to_owned()),
        to_state: order.state.as_str().to_owned(),
        actor_id: note.actor_id,
        reason: note.reason,
        snapshot: serde_json::to_string(order).map_err(json_error)?,
        created_at: note.at,
        notice: note.notice.map(|k| k.as_str().to_owned()),
        notice_skip: note.skip,
    })
}

/// Writes events in the caller's transaction, listing those with news for their fan-out.
pub(super) async fn record_events<C>(conn: &mut C, events: &[OrderEventRow]) -> QueryResult<()>
where
    C: InsertRows<OrderEventRow> + InsertRows<FanOutQueueRow>,
{
    conn.insert_rows(events).await?;
    let queued: Vec<FanOutQueueRow> = events.iter().filter_map(OrderEventRow::queued).collect();
    conn.insert_rows(&queued).await
}

/// The school and student of an order, for authorisation before anything else.
pub async fn order_owner(db: &Db, order_id: &str) -> Result<Option<(String, String)>, DbError> {
    Ok(with_conn!(db, |conn| orders::table
        .find(order_id)
        .select((orders::school_id, orders::student_id))
        .first(conn)
        .await
        .optional())?)
}

pub async fn order_history(db: &Db, order_id: &str) -> Result<Vec<OrderEventRow>, DbError> {
    Ok(with_conn!(db, |conn| order_events::table
        .filter(order_events::order_id.eq(order_id))
        .order(order_events::version.asc())
        .select(OrderEventRow::as_select())
        .load(conn)
        .await)?)
}

/// PostgreSQL: [`live_orders_by_state`] one school at a time through `orders_school_state`,
/// on generic plans: by state alone no index serves, and a scrape read every order ever made.
pub(crate) const LIVE_ORDERS_BY_STATE_PG: &str = "\
SELECT o.state, count(*) AS n
FROM schools s
CROSS JOIN LATERAL (
    SELECT o.state FROM orders o WHERE o.school_id = s.id AND o.state = ANY ($1) OFFSET 0) o
GROUP BY o.state";

#[derive(QueryableByName)]
struct StateCount {
    #[diesel(sql_type = diesel::sql_types::Text)]
    state: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Orders in each live state, for `/metrics`: read through the schools, each one's live
/// orders by index, so a scrape costs the live orders, not the history.
pub async fn live_orders_by_state(db: &Db) -> Result<Vec<(String, i64)>, DbError> {
    if let Db::Pg(pool) = db {
        use diesel::sql_types::{Array, Text};
        let read = crate::db::kept(
            diesel::sql_query(LIVE_ORDERS_BY_STATE_PG).bind::<Array<Text>, _>(&LIVE_STATES[..]),
        );
        let counted: Vec<StateCount> = crate::with_pooled!(pool, |conn| {
            super::sequence::on_generic_plans!(&*conn, |on| read.load::<StateCount>(&mut on))
                .map_err(DbError::from)
        })?;
        return Ok(counted.into_iter().map(|c| (c.state, c.n)).collect());
    }
    Ok(with_conn!(db, |conn| schools::table
        .inner_join(
            orders::table.on(orders::school_id
                .eq(schools::id)
                .and(orders::state.eq_any(LIVE_STATES))),
        )
        .group_by(orders::state)
        .select((orders::state, diesel::dsl::count_star()))
        .load(conn)
        .await)?)
}

/// Meals ordered in a school between two instants (cancelled orders excluded), per lunch
/// wave: (wave id or None, meal id, meal name, quantity), most ordered first within a wave.
pub async fn item_counts(
    db: &Db,
    school_id: &str,
    from: NaiveDateTime,
    until: NaiveDateTime,
) -> Result<Vec<(Option<String>, String, String, i64)>, DbError> {
    use crate::db::schema::order_items;
    type Row = (Option<String>, String, String, Option<i64>);
    let rows: Vec<Row> = with_conn!(db, |conn| order_items::table
        .inner_join(orders::table)
        .filter(orders::school_id.eq(school_id))
        .filter(orders::created_at.ge(from))
        .filter(orders::created_at.lt(until))
        .filter(orders::state.ne("cancelled"))
        .group_by((
            orders::window_id,
            order_items::meal_id,
            order_items::meal_name
        ))
        .select((
            orders::window_id,
            order_items::meal_id,
            order_items::meal_name,
            diesel::dsl::sum(order_items::quantity),
        ))
        .load(conn)
        .await)?;
    let mut counts: Vec<(Option<String>, String, String, i64)> = rows
        .into_iter()
        .map(|(wave, id, name, n)| (wave, id, name, n.unwrap_or(0)))
        .collect();
    counts.sort_by(|a, b| a.0.cmp(&b.0).then(b.3.cmp(&a.3)).then(a.2.cmp(&b.2)));
    Ok(counts)
}

/// Schools with orders still in progress: their kitchens start at boot, so timers re-arm
/// without waiting for a request.
pub async fn schools_with_live_orders(db: &Db) -> Result<Vec<String>, DbError> {
    Ok(with_conn!(db, |conn| orders::table
        .filter(orders::state.eq_any(["placed", "confirmed", "preparing", "ready"]))
        .select(orders::school_id)
        .distinct()
        .load(conn)
        .await)?)
}

/// Whether the order's pickup was recorded with this reason (a scan that handed it over).
pub async fn picked_up_because(db: &Db, order_id: &str, reason: &str) -> Result<bool, DbError> {
    let n: i64 = with_conn!(db, |conn| order_events::table
        .filter(order_events::order_id.eq(order_id))
        .filter(order_events::to_state.eq("picked_up"))
        .filter(order_events::reason.eq(reason))
        .count()
        .get_result(conn)
        .await)?;
    Ok(n > 0)
}

/// Pickups recorded with one of `reasons` among the orders of the students holding these
/// cards: (reason, the order's snapshot after it). What scans of an earlier version handed
/// over before their node died, their decision unrecorded.
pub async fn pickups_by_reason(
    db: &Db,
    card_uids: &[&str],
    reasons: &[String],
) -> Result<Vec<(String, String)>, DbError> {
    let rows: Vec<(Option<String>, String)> = with_conn!(db, |conn| {
        let students: Vec<String> = rfid_cards::table
            .filter(rfid_cards::card_uid.eq_any(card_uids))
            .select(rfid_cards::student_id)
            .load(conn)
            .await?;
        order_events::table
            .inner_join(orders::table.on(orders::id.eq(order_events::order_id)))
            .filter(orders::student_id.eq_any(&students))
            .filter(order_events::to_state.eq("picked_up"))
            .filter(order_events::reason.eq_any(reasons))
            .select((order_events::reason, order_events::snapshot))
            .load(conn)
            .await
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|(reason, snapshot)| Some((reason?, snapshot)))
        .collect())
}

/// An order of the day as read: (snapshot, school time zone, state, pickup day).
pub(super) type DayOrderRow = (String, String, String, Option<String>);

/// The orders of the day of the student `$student` (a nullable text expression: a value, or
/// the scalar subquery of a card's holder) at a school, picked up ones on any of `$days`;
/// [`of_today`] keeps today's. The student is an equality so that a plan made without
/// statistics still reads `orders_student_school` for both columns rather than walking the
/// school's orders (it did, under `= ANY (subquery)`, at 150-300 ms a scan late in a rush).
macro_rules! orders_of_day {
    ($school_id:expr, $student:expr, $days:expr) => {
        order_events::table
            .inner_join(
                orders::table.on(orders::id
                    .eq(order_events::order_id)
                    .and(orders::version.eq(order_events::version))),
            )
            .inner_join(schools::table.on(schools::id.eq(orders::school_id)))
            .filter(orders::school_id.eq($school_id))
            .filter(orders::student_id.nullable().eq($student))
            .filter(
                orders::state
                    .eq_any(["placed", "confirmed", "preparing", "ready"])
                    .or(orders::state
                        .eq("picked_up")
                        .and(orders::pickup_day.eq_any($days))),
            )
            .select((
                order_events::snapshot,
                schools::time_zone,
                orders::state,
                orders::pickup_day,
            ))
    };
}
pub(crate) use orders_of_day;

/// A student's orders a counter cares about today: the live ones and those picked up today
/// (school-local), each as its latest event's snapshot (JSON). One statement: the orders with
/// their current event and their school's time zone.
pub async fn student_orders_of_day(
    db: &Db,
    school_id: &str,
    student_id: &str,
) -> Result<Vec<String>, DbError> {
    let days = days_around_today();
    let rows = with_conn!(db, |conn| orders_of_day!(
        school_id,
        Some(student_id),
        &days
    )
    .load::<DayOrderRow>(conn)
    .await)?;
    Ok(of_today(rows))
}

/// Today somewhere on Earth is one of these UTC dates; the school's zone picks one.
pub(super) fn days_around_today() -> Vec<String> {
    let utc = chrono::Utc::now().date_naive();
    [utc.pred_opt(), Some(utc), utc.succ_opt()]
        .into_iter()
        .flatten()
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect()
}

/// The snapshots of the orders still live, or picked up on their school's today.
pub(super) fn of_today(rows: Vec<DayOrderRow>) -> Vec<String> {
    rows.into_iter()
        .filter(|(_, time_zone, state, day)| {
            let tz: chrono_tz::Tz = time_zone.parse().unwrap_or(chrono_tz::UTC);
            let today = chrono::Utc::now()
                .with_timezone(&tz)
                .format("%Y-%m-%d")
                .to_string();
            state != "picked_up" || day.as_deref() == Some(today.as_str())
        })
        .map(|(snapshot, ..)| snapshot)
        .collect()
}
