//! The `Store` port: what a kitchen reads when it starts or catches up, and its writes handed
//! to their batches (`intake`, `transitions`) or made alone (`amend`).

use super::DieselStore;
use super::amend::Amendment;
use super::orders::{LIVE_STATES, event_from_row};
use crate::db::DbError;
use crate::db::models::OrderEventRow;
use crate::db::schema::{order_events, orders, schools};
use crate::with_conn;
use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use tiffin_actors::domain::{KitchenEvent, OrderSummary};
use tiffin_actors::ports::{
    AlertCommit, CommandError, CounterMove, ItemDone, ItemDoneCommit, KitchenSnapshot, NewOrder,
    Placed, Store, TransitionCommit,
};

#[async_trait]
impl Store for DieselStore {
    async fn load_kitchen(&self, school_id: &str) -> Result<KitchenSnapshot, CommandError> {
        let db = &self.db;
        let last_seq: Option<i64> = with_conn!(db, |conn| schools::table
            .find(school_id)
            .select(schools::event_seq)
            .first(conn)
            .await
            .optional()
            .map_err(DbError::from))?;
        let last_seq = last_seq.ok_or(CommandError::SchoolNotFound)?;
        let snapshots: Vec<String> = with_conn!(db, |conn| order_events::table
            .inner_join(
                orders::table.on(orders::id
                    .eq(order_events::order_id)
                    .and(orders::version.eq(order_events::version))),
            )
            .filter(orders::school_id.eq(school_id))
            .filter(orders::state.eq_any(LIVE_STATES))
            .select(order_events::snapshot)
            .load(conn)
            .await
            .map_err(DbError::from))?;
        let live_orders = snapshots
            .iter()
            .map(|s| serde_json::from_str(s))
            .collect::<Result<Vec<OrderSummary>, _>>()
            .map_err(|e| CommandError::Internal(format!("stored snapshot: {e}")))?;
        Ok(KitchenSnapshot {
            school_id: school_id.to_owned(),
            last_seq,
            live_orders,
        })
    }

    async fn place_order(&self, order: NewOrder) -> Result<Placed, CommandError> {
        crate::db::operation("order");
        crate::db::counted("order", self.place(order)).await
    }

    async fn commit_transition(&self, t: TransitionCommit) -> Result<KitchenEvent, CommandError> {
        crate::db::operation("transition");
        let committed = crate::db::counted(
            "transition",
            self.transitions
                .of(&t.school_id)
                .submit(t, |batch| self.commit_transitions(batch)),
        )
        .await
        .ok_or_else(|| CommandError::Unavailable("the transition's batch was abandoned".into()))?;
        committed.map_err(CommandError::from)
    }

    async fn move_counter(&self, m: CounterMove) -> Result<KitchenEvent, CommandError> {
        self.amend(Amendment::CounterMove(&m))
            .await
            .map_err(CommandError::from)
    }

    async fn record_alert(&self, a: AlertCommit) -> Result<KitchenEvent, CommandError> {
        self.amend(Amendment::Alert(&a))
            .await
            .map_err(CommandError::from)
    }

    async fn mark_item_done(&self, d: ItemDoneCommit) -> Result<ItemDone, CommandError> {
        let event = self
            .amend(Amendment::ItemDone(&d))
            .await
            .map_err(CommandError::from)?;
        // Read after the commit, which stands whatever this read says: a setting changed
        // meanwhile counts from the next item, and a read that fails leaves the ready to staff.
        let setting: Result<bool, DbError> = with_conn!(&self.db, |conn| schools::table
            .find(&d.school_id)
            .select(schools::ready_when_stations_done)
            .first(conn)
            .await
            .map_err(DbError::from));
        let ready_when_stations_done = setting.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the school's stations setting could not be read");
            false
        });
        Ok(ItemDone {
            event,
            ready_when_stations_done,
        })
    }

    async fn load_order(&self, order_id: &str) -> Result<Option<OrderSummary>, CommandError> {
        let snapshot: Option<String> = with_conn!(&self.db, |conn| order_events::table
            .filter(order_events::order_id.eq(order_id))
            .order(order_events::version.desc())
            .select(order_events::snapshot)
            .first(conn)
            .await
            .optional()
            .map_err(DbError::from))?;
        snapshot
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| CommandError::Internal(format!("stored snapshot: {e}")))
    }

    async fn events_since(
        &self,
        school_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<KitchenEvent>, CommandError> {
        let rows: Vec<OrderEventRow> = with_conn!(&self.db, |conn| order_events::table
            .filter(order_events::school_id.eq(school_id))
            .filter(order_events::seq.gt(after))
            .order(order_events::seq.asc())
            .limit(limit)
            .select(OrderEventRow::as_select())
            .load(conn)
            .await
            .map_err(DbError::from))?;
        rows.into_iter()
            .map(|r| event_from_row(r).map_err(CommandError::from))
            .collect()
    }
}
