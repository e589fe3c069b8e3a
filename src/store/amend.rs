//! Orders amended one at a time, outside the batches: an order moved off a closed counter,
//! an alert recorded on an order, an item marked done at its station.

use super::orders::{EventNote, event_from_row, event_row, record_events};
use super::{DieselStore, TxError, json_error};
use crate::db::models::now;
use crate::db::schema::{counters, order_events, orders, schools};
use crate::{on_both_connections, with_conn};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use tiffin_actors::domain::{
    COUNTER_CHANGED, CounterRef, ITEM_DONE, KitchenEvent, OrderState, OrderSummary, assign_counter,
    mark_done,
};
use tiffin_actors::notices::{Kind, kind_of_alert};
use tiffin_actors::ports::{AlertCommit, CommandError, CounterMove, ItemDoneCommit};

/// The steps of amending an order, inside a transaction on either backend.
pub(super) trait AmendOrder {
    /// The order as its last event left it.
    async fn latest_snapshot(&mut self, order_id: &str) -> Result<OrderSummary, TxError>;

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

    async fn record_event(
        &mut self,
        seq: i64,
        order: &OrderSummary,
        note: EventNote<'_>,
    ) -> Result<KitchenEvent, TxError> {
        let row = event_row(seq, order, note)?;
        record_events(self, std::slice::from_ref(&row)).await?;
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

/// A change to one order outside the batches.
#[derive(Clone, Copy)]
pub(super) enum Amendment<'a> {
    /// A ready order moved off its closed counter to the least-loaded open one.
    CounterMove(&'a CounterMove),
    /// An alert recorded on an order (once per alert).
    Alert(&'a AlertCommit),
    /// An item marked done at its station (once per item).
    ItemDone(&'a ItemDoneCommit),
}

impl Amendment<'_> {
    fn target(&self) -> (&str, &str, i64) {
        match self {
            Amendment::CounterMove(m) => (&m.school_id, &m.order_id, m.expected_version),
            Amendment::Alert(a) => (&a.school_id, &a.order_id, a.expected_version),
            Amendment::ItemDone(d) => (&d.school_id, &d.order_id, d.expected_version),
        }
    }
}

/// An amendment's transaction on either backend.
trait Amend {
    async fn amend(&mut self, amendment: Amendment<'_>) -> Result<KitchenEvent, TxError>;
}

on_both_connections!(impl Amend {
    async fn amend(&mut self, amendment: Amendment<'_>) -> Result<KitchenEvent, TxError> {
        let at = now();
        let (school_id, order_id, expected_version) = amendment.target();
        // The school's next kitchen sequence number, its row locked until the transaction
        // ends (so a kitchen's events are numbered without gaps), and the order's next
        // version, guarded by the version the caller saw.
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
        // What the event records: its kind, the state it leaves, who, why, and its notice.
        let (kind, from, actor_id, reason, notice) = match amendment {
            Amendment::CounterMove(m) => {
                let still_there = order.state == OrderState::Ready
                    && order.counter.as_ref().map(|c| c.id.as_str())
                        == Some(m.from_counter_id.as_str());
                if !still_there {
                    return Err(TxError::Refused(CommandError::VersionConflict));
                }
                let closed: String = counters::table
                    .find(&m.from_counter_id)
                    .select(counters::name)
                    .first(self)
                    .await?;
                let counter = self.least_loaded_counter(school_id).await?;
                diesel::update(orders::table.find(order_id))
                    .set(orders::counter_id.eq(counter.as_ref().map(|c| c.id.clone())))
                    .execute(self)
                    .await?;
                order.counter = counter;
                let reason = format!("{closed} closed");
                let notice = Some(Kind::OrderCounterChanged);
                (COUNTER_CHANGED, Some(OrderState::Ready), m.actor_id.clone(), reason, notice)
            }
            Amendment::Alert(a) => {
                if order.alerts.contains(&a.alert) {
                    return Err(TxError::Refused(CommandError::VersionConflict));
                }
                order.alerts.push(a.alert);
                let notice = kind_of_alert(a.alert);
                (a.alert.event_type(), Some(order.state), None, a.reason.clone(), notice)
            }
            Amendment::ItemDone(d) => {
                mark_done(&mut order, d.line).map_err(|e| TxError::Refused(e.into()))?;
                let item = order.items.get(d.line).map_or("an item", |i| i.name.as_str());
                let reason = format!("{item} done");
                (ITEM_DONE, Some(order.state), d.actor_id.clone(), reason, None)
            }
        };
        let note = EventNote {
            kind,
            from,
            actor_id,
            reason: Some(reason),
            at,
            notice,
            skip: None,
        };
        self.record_event(seq, &order, note).await
    }
});

impl DieselStore {
    pub(super) async fn amend(&self, amendment: Amendment<'_>) -> Result<KitchenEvent, TxError> {
        let event = with_conn!(&self.db, |conn| conn
            .transaction(async |conn| conn.amend(amendment).await)
            .await)?;
        self.wake_dispatch(super::Wake::Events);
        Ok(event)
    }
}
