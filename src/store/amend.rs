//! Orders amended one at a time, outside the batches: an order moved off a closed counter,
//! an alert recorded on an order.

use super::orders::{EventNote, event_from_row, event_row};
use super::{DieselStore, TxError, json_error};
use crate::db::models::now;
use crate::db::schema::{counters, order_events, orders, schools};
use crate::{on_both_connections, with_conn};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use tiffin_actors::domain::{
    COUNTER_CHANGED, CounterRef, KitchenEvent, OrderState, OrderSummary, assign_counter,
};
use tiffin_actors::notices::{Kind, kind_of_alert};
use tiffin_actors::ports::{AlertCommit, CommandError, CounterMove};

/// The steps of amending an order, inside a transaction on either backend.
pub(super) trait AmendOrder {
    /// The order as its last event left it.
    async fn latest_snapshot(&mut self, order_id: &str) -> Result<OrderSummary, TxError>;

    /// Starts an event that changes an order but not its state: takes the school's next
    /// kitchen sequence number, locking its row until the transaction ends (so a kitchen's
    /// events are numbered without gaps), and the next version, guarded by the version the
    /// caller saw. Yields `(seq, order)` with the order at its new version.
    async fn amend_order(
        &mut self,
        school_id: &str,
        order_id: &str,
        expected_version: i64,
        at: NaiveDateTime,
    ) -> Result<(i64, OrderSummary), TxError>;

    /// Writes an event (an `EventNote` about `order` at kitchen sequence `seq`); yields the
    /// committed event. Its notice reaches the outbox later, through `DieselStore::fan_out`.
    async fn record_event(
        &mut self,
        seq: i64,
        order: &OrderSummary,
        note: EventNote<'_>,
    ) -> Result<KitchenEvent, TxError>;

    /// The least-loaded open counter of a school.
    async fn least_loaded_counter(
        &mut self,
        school_id: &str,
    ) -> Result<Option<CounterRef>, TxError>;
}

on_both_connections!(impl AmendOrder {
    async fn latest_snapshot(&mut self, order_id: &str) -> Result<OrderSummary, TxError> {
        let previous: String = order_events::table
            .filter(order_events::order_id.eq(order_id))
            .order(order_events::version.desc())
            .select(order_events::snapshot)
            .first(self)
            .await?;
        serde_json::from_str::<OrderSummary>(&previous).map_err(json_error)
    }

    async fn amend_order(
        &mut self,
        school_id: &str,
        order_id: &str,
        expected_version: i64,
        at: NaiveDateTime,
    ) -> Result<(i64, OrderSummary), TxError> {
        let bumped: Option<(i64, String)> = diesel::update(schools::table.find(school_id))
            .set(schools::event_seq.eq(schools::event_seq + 1))
            .returning((schools::event_seq, schools::time_zone))
            .get_result(self)
            .await
            .optional()?;
        let (seq, _) = bumped.ok_or(CommandError::SchoolNotFound)?;
        let version = expected_version + 1;
        let changed = diesel::update(
            orders::table
                .filter(orders::id.eq(order_id))
                .filter(orders::school_id.eq(school_id))
                .filter(orders::version.eq(expected_version)),
        )
        .set((orders::version.eq(version), orders::updated_at.eq(at)))
        .execute(self)
        .await?;
        if changed == 0 {
            return Err(TxError::Refused(CommandError::VersionConflict));
        }
        let mut order = self.latest_snapshot(order_id).await?;
        order.version = version;
        order.updated_at = at.and_utc();
        Ok((seq, order))
    }

    async fn record_event(
        &mut self,
        seq: i64,
        order: &OrderSummary,
        note: EventNote<'_>,
    ) -> Result<KitchenEvent, TxError> {
        let row = event_row(seq, order, note)?;
        diesel::insert_into(order_events::table)
            .values(&row)
            .execute(self)
            .await?;
        Ok(event_from_row(row)?)
    }

    async fn least_loaded_counter(
        &mut self,
        school_id: &str,
    ) -> Result<Option<CounterRef>, TxError> {
        let open: Vec<(String, i32, String)> = counters::table
            .filter(counters::school_id.eq(school_id))
            .filter(counters::is_open.eq(true))
            .select((counters::id, counters::number, counters::name))
            .load(self)
            .await?;
        let open: Vec<CounterRef> = open
            .into_iter()
            .map(|(id, number, name)| CounterRef { id, number, name })
            .collect();
        let waiting: Vec<(Option<String>, i64)> = orders::table
            .filter(orders::school_id.eq(school_id))
            .filter(orders::state.eq(OrderState::Ready.as_str()))
            .filter(orders::counter_id.is_not_null())
            .group_by(orders::counter_id)
            .select((orders::counter_id, diesel::dsl::count_star()))
            .load(self)
            .await?;
        Ok(assign_counter(&open, |c| {
            waiting
                .iter()
                .find(|(id, _)| id.as_deref() == Some(c.id.as_str()))
                .map_or(0, |(_, n)| *n)
        })
        .cloned())
    }
});

impl DieselStore {
    pub(super) async fn counter_move(&self, m: &CounterMove) -> Result<KitchenEvent, TxError> {
        with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let at = now();
                let (seq, mut order) = conn
                    .amend_order(&m.school_id, &m.order_id, m.expected_version, at)
                    .await?;
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
                let counter = conn.least_loaded_counter(&m.school_id).await?;
                diesel::update(orders::table.find(&m.order_id))
                    .set(orders::counter_id.eq(counter.as_ref().map(|c| c.id.clone())))
                    .execute(conn)
                    .await?;
                order.counter = counter;
                conn.record_event(
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
                    },
                )
                .await
            })
            .await)
    }

    pub(super) async fn alert(&self, a: &AlertCommit) -> Result<KitchenEvent, TxError> {
        with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let at = now();
                let (seq, mut order) = conn
                    .amend_order(&a.school_id, &a.order_id, a.expected_version, at)
                    .await?;
                if order.alerts.contains(&a.alert) {
                    return Err(TxError::Refused(CommandError::VersionConflict));
                }
                order.alerts.push(a.alert);
                let from = Some(order.state);
                conn.record_event(
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
                    },
                )
                .await
            })
            .await)
    }
}
