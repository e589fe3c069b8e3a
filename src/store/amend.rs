//! Orders amended one at a time, outside the batches: an order moved off a closed counter,
//! an alert recorded on an order.

use super::orders::{EventNote, event_from_row, event_row};
use super::{DieselStore, TxError};
use crate::db::models::*;
use crate::db::schema::*;
use crate::with_conn;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use tiffin_actors::domain::{
    COUNTER_CHANGED, CounterRef, KitchenEvent, OrderState, OrderSummary, assign_counter,
};
use tiffin_actors::notices::{Kind, kind_of_alert};
use tiffin_actors::ports::{AlertCommit, CommandError, CounterMove};

/// The least-loaded open counter of a school, inside a transaction on either backend.
macro_rules! least_loaded_counter {
    ($conn:expr, $school_id:expr) => {{
        let open: Vec<(String, i32, String)> = counters::table
            .filter(counters::school_id.eq($school_id))
            .filter(counters::is_open.eq(true))
            .select((counters::id, counters::number, counters::name))
            .load($conn)
            .await?;
        let open: Vec<CounterRef> = open
            .into_iter()
            .map(|(id, number, name)| CounterRef { id, number, name })
            .collect();
        let waiting: Vec<(Option<String>, i64)> = orders::table
            .filter(orders::school_id.eq($school_id))
            .filter(orders::state.eq(OrderState::Ready.as_str()))
            .filter(orders::counter_id.is_not_null())
            .group_by(orders::counter_id)
            .select((orders::counter_id, diesel::dsl::count_star()))
            .load($conn)
            .await?;
        assign_counter(&open, |c| {
            waiting
                .iter()
                .find(|(id, _)| id.as_deref() == Some(c.id.as_str()))
                .map_or(0, |(_, n)| *n)
        })
        .cloned()
    }};
}

/// The order as its last event left it, inside a transaction on either backend.
macro_rules! latest_snapshot {
    ($conn:expr, $order_id:expr) => {{
        let previous: String = order_events::table
            .filter(order_events::order_id.eq($order_id))
            .order(order_events::version.desc())
            .select(order_events::snapshot)
            .first($conn)
            .await?;
        serde_json::from_str::<OrderSummary>(&previous).map_err($crate::store::json_error)?
    }};
}

/// Takes the school's next kitchen sequence number, locking its row until the transaction ends
/// (so a kitchen's events are numbered without gaps); yields `(seq, time_zone)`.
macro_rules! next_seq {
    ($conn:expr, $school_id:expr) => {{
        let bumped: Option<(i64, String)> = diesel::update(schools::table.find($school_id))
            .set(schools::event_seq.eq(schools::event_seq + 1))
            .returning((schools::event_seq, schools::time_zone))
            .get_result($conn)
            .await
            .optional()?;
        bumped.ok_or(CommandError::SchoolNotFound)?
    }};
}

/// Starts an event that changes an order but not its state: takes the next kitchen sequence
/// number and the next version, guarded by the version the caller saw. Yields
/// `(seq, order)` with the order at its new version.
macro_rules! amend_order {
    ($conn:expr, $school_id:expr, $order_id:expr, $expected_version:expr, $at:expr) => {{
        let (seq, _) = next_seq!($conn, $school_id);
        let version = $expected_version + 1;
        let changed = diesel::update(
            orders::table
                .filter(orders::id.eq($order_id))
                .filter(orders::school_id.eq($school_id))
                .filter(orders::version.eq($expected_version)),
        )
        .set((orders::version.eq(version), orders::updated_at.eq($at)))
        .execute($conn)
        .await?;
        if changed == 0 {
            return Err(TxError::Refused(CommandError::VersionConflict));
        }
        let mut order = latest_snapshot!($conn, $order_id);
        order.version = version;
        order.updated_at = $at.and_utc();
        (seq, order)
    }};
}

/// Writes an event (an `EventNote` about `$order` at kitchen sequence `$seq`); yields the
/// committed event. Its notice reaches the outbox later, through `DieselStore::fan_out`.
macro_rules! record_event {
    ($conn:expr, $seq:expr, $order:expr, $note:expr) => {{
        let row = event_row($seq, $order, $note)?;
        diesel::insert_into(order_events::table)
            .values(&row)
            .execute($conn)
            .await?;
        event_from_row(row)?
    }};
}

pub(super) use latest_snapshot;

impl DieselStore {
    pub(super) async fn counter_move(&self, m: &CounterMove) -> Result<KitchenEvent, TxError> {
        with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let at = now();
                let (seq, mut order) =
                    amend_order!(conn, &m.school_id, &m.order_id, m.expected_version, at);
                let still_there = order.state == OrderState::Ready
                    && order.counter.as_ref().map(|c| c.id.as_str())
                        == Some(m.from_counter_id.as_str());
                if !still_there {
                    return Err(TxError::Refused(CommandError::VersionConflict));
                }
                let closed: String = counters::table
                    .find(&m.from_counter_id)
                    .select(counters::name)
                    .first(conn)
                    .await?;
                let counter = least_loaded_counter!(conn, &m.school_id);
                diesel::update(orders::table.find(&m.order_id))
                    .set(orders::counter_id.eq(counter.as_ref().map(|c| c.id.clone())))
                    .execute(conn)
                    .await?;
                order.counter = counter;
                Ok::<_, TxError>(record_event!(
                    conn,
                    seq,
                    &order,
                    EventNote {
                        kind: COUNTER_CHANGED,
                        from: Some(OrderState::Ready),
                        actor_id: m.actor_id.clone(),
                        reason: Some(format!("{closed} closed")),
                        at,
                        notice: Some(Kind::OrderCounterChanged),
                        skip: None,
                    }
                ))
            })
            .await)
    }

    pub(super) async fn alert(&self, a: &AlertCommit) -> Result<KitchenEvent, TxError> {
        with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let at = now();
                let (seq, mut order) =
                    amend_order!(conn, &a.school_id, &a.order_id, a.expected_version, at);
                if order.alerts.contains(&a.alert) {
                    return Err(TxError::Refused(CommandError::VersionConflict));
                }
                order.alerts.push(a.alert);
                let from = Some(order.state);
                Ok::<_, TxError>(record_event!(
                    conn,
                    seq,
                    &order,
                    EventNote {
                        kind: a.alert.event_type(),
                        from,
                        actor_id: None,
                        reason: Some(a.reason.clone()),
                        at,
                        notice: kind_of_alert(a.alert),
                        skip: None,
                    }
                ))
            })
            .await)
    }
}
