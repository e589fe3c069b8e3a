//! Intake: new orders of any kitchens committed in batches. A batch reads what its orders
//! need set-wise (schools, people, menus, waves, earlier requests with the same keys), decides
//! each order in memory (a refused one is answered alone and takes no sequence number, with no
//! savepoint), then takes the accepted orders' numbers and writes orders, items and events.
//!
//! PostgreSQL: two round trips a batch, whatever its size: the reads (`order_facts`), then the
//! write sent together with its transaction (`with_schools_locked`: BEGIN, the batch's
//! schools locked in school order so batches cannot deadlock, one statement that takes their
//! numbers and inserts every row, COMMIT). The reads need no lock: a row they saw may change before the write
//! under READ COMMITTED inside a transaction just as well, and what must be unique (a
//! request's key, a number) is held by the write. SQLite: one transaction, in process.

use super::amend::AmendOrder;
use super::batch::together_or_each;
use super::facts_cache::FactsCache;
use super::order_checks::{allergy_check, order_lines};
use super::order_facts::{Facts, FactsQueries};
use super::orders::{EventNote, event_from_row, event_row, record_events};
use super::schools::waves_on_day;
use super::sequence::with_schools_locked;
use super::sequence::{LockSchools, TakeSeqs};
use super::{DieselStore, OrderCommitted, TxError, json_error};
use crate::db::DbError;
use crate::db::models::{MealRow, OrderEventRow, OrderItemRow, OrderRow, ServiceWindowRow, now};
use crate::db::schema::orders;
use crate::db::{InsertRows, PgConn, SqliteConn};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tiffin_actors::domain::{OrderState, OrderSummary, Role, choose_wave, event_type};
use tiffin_actors::notices::Kind;
use tiffin_actors::ports::{CommandError, NewOrder, Placed};
use tiffin_actors::ports::{Idempotency, Store};

/// One order of the batch, decided.
enum Decided {
    Accepted {
        order: Box<OrderSummary>,
        reason: Option<String>,
    },
    /// An earlier request with the same key made this order.
    Existing(String),
    Refused(CommandError),
}

/// How a command of the batch will be answered.
enum Answer {
    Refused(CommandError),
    /// With the order an earlier request with the same key made.
    Existing(String),
    /// With the accepted order whose event is `events[n]`.
    New(usize),
}

/// A batch decided: an answer for each command, and the rows of the accepted orders. Their
/// events are numbered from 0 within each school until the batch has taken its numbers.
struct Decisions {
    answers: Vec<Answer>,
    /// Accepted orders per school: the numbers each school's kitchen sequence gives up.
    counts: BTreeMap<String, i64>,
    orders: Vec<OrderRow>,
    items: Vec<OrderItemRow>,
    events: Vec<OrderEventRow>,
}

impl Decisions {
    fn new(batch: &[NewOrder], facts: &Facts, at: NaiveDateTime) -> Result<Decisions, TxError> {
        let mut d = Decisions {
            answers: Vec::with_capacity(batch.len()),
            counts: BTreeMap::new(),
            orders: Vec::new(),
            items: Vec::new(),
            events: Vec::new(),
        };
        for new in batch {
            let (order, reason) = match decide(new, facts, at) {
                Decided::Refused(e) => {
                    d.answers.push(Answer::Refused(e));
                    continue;
                }
                Decided::Existing(order_id) => {
                    d.answers.push(Answer::Existing(order_id));
                    continue;
                }
                Decided::Accepted { order, reason } => (*order, reason),
            };
            let offset = d.counts.entry(order.school_id.clone()).or_default();
            let event = event_row(
                *offset,
                &order,
                EventNote {
                    kind: event_type(order.state),
                    from: None,
                    actor_id: Some(new.placed_by.clone()),
                    reason,
                    at,
                    notice: Some(Kind::OrderPlaced),
                    skip: Some(new.placed_by.clone()),
                },
            )?;
            *offset += 1;
            d.orders.push(order_row(new, &order, at));
            d.items.extend(item_rows(&order));
            d.answers.push(Answer::New(d.events.len()));
            d.events.push(event);
        }
        Ok(d)
    }

    /// Whether every command is a new order to write.
    fn all_new(&self) -> bool {
        self.answers.iter().all(|a| matches!(a, Answer::New(_)))
    }

    /// Numbers the events from each school's first number taken.
    fn number(&mut self, firsts: &HashMap<String, i64>) -> Result<(), TxError> {
        for event in &mut self.events {
            let first = firsts.get(&event.school_id).ok_or_else(|| {
                TxError::Refused(CommandError::Internal("no sequence taken".into()))
            })?;
            event.seq += first;
        }
        Ok(())
    }

    /// Each command's answer, once the batch is written.
    async fn answers(self, conn: &mut impl AmendOrder) -> Result<Vec<OrderCommitted>, TxError> {
        let mut results = Vec::with_capacity(self.answers.len());
        for answer in self.answers {
            results.push(match answer {
                Answer::Refused(e) => Err(TxError::Refused(e)),
                Answer::Existing(order_id) => {
                    Ok(Placed::Existing(conn.latest_snapshot(&order_id).await?))
                }
                Answer::New(n) => {
                    let event = self.events.get(n).cloned().ok_or_else(|| {
                        TxError::Refused(CommandError::Internal("an order lost its event".into()))
                    })?;
                    Ok(Placed::New(event_from_row(event)?))
                }
            });
        }
        Ok(results)
    }
}

impl DieselStore {
    /// Commits a batch of new orders, answering each. Should the batch itself fail (a key
    /// another request just took, the database), each order is tried alone and answered for
    /// itself.
    pub(super) async fn insert_orders(&self, batch: Vec<NewOrder>) -> Vec<OrderCommitted> {
        let answers = together_or_each(self, "order", &batch, |store, some| {
            Box::pin(store.commit_orders(some))
        })
        .await;
        // A new order's event makes its receipt.
        if answers.iter().any(|a| matches!(a, Ok(Placed::New(_)))) {
            self.wake_dispatch(super::Wake::Events);
        }
        answers
    }

    async fn commit_orders(&self, batch: &[NewOrder]) -> Result<Vec<OrderCommitted>, TxError> {
        with_conn!(&self.db, |conn| conn
            .commit_orders(batch, &self.facts)
            .await)
    }
}

/// One batch of new orders on each backend.
trait CommitOrders {
    async fn commit_orders(
        &mut self,
        batch: &[NewOrder],
        kept: &FactsCache,
    ) -> Result<Vec<OrderCommitted>, TxError>;
}

impl CommitOrders for PgConn {
    /// From kept facts, in one round trip, if they are all kept and accept every order (a
    /// refusal is only answered from facts read for it); else, or if they have changed since,
    /// from facts read afresh. An earlier request with the same key is then found by the
    /// write's unique key (`place`).
    async fn commit_orders(
        &mut self,
        batch: &[NewOrder],
        kept: &FactsCache,
    ) -> Result<Vec<OrderCommitted>, TxError> {
        let at = now();
        if let Some(facts) = kept.facts_for(batch) {
            let mut decided = Decisions::new(batch, &facts, at)?;
            if decided.all_new() {
                match write_orders_pg(self, &decided, facts.epoch).await? {
                    Some(firsts) => {
                        decided.number(&firsts)?;
                        return decided.answers(self).await;
                    }
                    None => kept.forget(),
                }
            }
        }
        let whole = kept.schools_to_read_whole(batch);
        let facts = self.facts(batch, &whole).await?;
        kept.keep(&facts, &whole);
        let mut decided = Decisions::new(batch, &facts, at)?;
        if !decided.counts.is_empty() {
            let firsts = write_orders_pg(self, &decided, None)
                .await?
                .ok_or_else(|| {
                    TxError::Refused(CommandError::Internal("no sequence taken".into()))
                })?;
            decided.number(&firsts)?;
        }
        decided.answers(self).await
    }
}

impl CommitOrders for SqliteConn {
    /// Facts read with every batch: in process, microseconds.
    async fn commit_orders(
        &mut self,
        batch: &[NewOrder],
        _kept: &FactsCache,
    ) -> Result<Vec<OrderCommitted>, TxError> {
        self.transaction(async |conn| {
            let at = now();
            // A write first: SQLite's lock, taken before the reads.
            let schools: BTreeSet<&str> = batch.iter().map(|n| n.school_id.as_str()).collect();
            conn.lock_schools(&schools.into_iter().collect::<Vec<_>>())
                .await?;
            let facts = conn.facts(batch, &[]).await?;
            let mut decided = Decisions::new(batch, &facts, at)?;
            if !decided.counts.is_empty() {
                let firsts = conn.take_seqs(&decided.counts).await?;
                decided.number(&firsts)?;
            }
            conn.insert_rows(&decided.orders).await?;
            conn.insert_rows(&decided.items).await?;
            record_events(conn, &decided.events).await?;
            decided.answers(conn).await
        })
        .await
    }
}

/// The whole write of a PostgreSQL batch as one statement, run with the batch's schools
/// locked (`with_schools_locked`): their numbers taken, orders, items and events inserted
/// (each event numbered from its school's first). Rows travel as JSON read into the tables'
/// own row types (an event's columns are named, to number it). Decided from kept facts
/// (`$5`, their epoch), it writes nothing, and returns no row, if the epoch has moved.
pub(crate) const WRITE_ORDERS_PG: &str = "\
WITH fresh AS ( \
    SELECT 1 WHERE $5::bigint IS NULL \
        OR EXISTS (SELECT 1 FROM facts_epoch WHERE id = 1 AND epoch = $5::bigint)), \
taken AS ( \
    UPDATE schools AS s SET event_seq = s.event_seq + c.n \
    FROM json_to_recordset($1::json) AS c(id text, n bigint) \
    WHERE s.id = c.id AND EXISTS (SELECT 1 FROM fresh) \
    RETURNING s.id, s.event_seq - c.n + 1 AS first), \
placed AS ( \
    INSERT INTO orders SELECT * FROM json_populate_recordset(NULL::orders, $2::json) \
    WHERE EXISTS (SELECT 1 FROM fresh)), \
lines AS ( \
    INSERT INTO order_items SELECT * FROM json_populate_recordset(NULL::order_items, $3::json) \
    WHERE EXISTS (SELECT 1 FROM fresh)), \
numbered AS ( \
    INSERT INTO order_events (school_id, seq, order_id, version, kind, from_state, to_state, \
        actor_id, reason, snapshot, created_at, notice, notice_skip) \
    SELECT e.school_id, e.seq + taken.first, e.order_id, e.version, e.kind, e.from_state, \
        e.to_state, e.actor_id, e.reason, e.snapshot, e.created_at, e.notice, e.notice_skip \
    FROM json_populate_recordset(NULL::order_events, $4::json) AS e \
    JOIN taken ON taken.id = e.school_id \
    RETURNING school_id, seq, created_at, notice), \
queued AS ( \
    INSERT INTO fan_out_queue (created_at, school_id, seq) \
    SELECT created_at, school_id, seq FROM numbered WHERE notice IS NOT NULL) \
SELECT id, first FROM taken";

#[derive(QueryableByName)]
struct First {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    first: i64,
}

/// Writes a decided batch in one statement; yields each school's first number, or `None`
/// if it was decided from facts of an epoch that has moved (`kept_at`), and wrote nothing.
async fn write_orders_pg(
    conn: &mut PgConn,
    decided: &Decisions,
    kept_at: Option<i64>,
) -> Result<Option<HashMap<String, i64>>, TxError> {
    let counts: Vec<serde_json::Value> = decided
        .counts
        .iter()
        .map(|(id, n)| serde_json::json!({ "id": id, "n": n }))
        .collect();
    let schools: Vec<&str> = decided.counts.keys().map(String::as_str).collect();
    // Kept and planned once a connection (generic plans): planning it afresh each batch was
    // a large part of PostgreSQL's time in the intake benchmark (BENCHMARKS.md).
    let write = crate::db::kept(
        diesel::sql_query(WRITE_ORDERS_PG)
            .bind::<Text, _>(serde_json::Value::Array(counts).to_string())
            .bind::<Text, _>(serde_json::to_string(&decided.orders).map_err(json_error)?)
            .bind::<Text, _>(serde_json::to_string(&decided.items).map_err(json_error)?)
            .bind::<Text, _>(serde_json::to_string(&decided.events).map_err(json_error)?)
            .bind::<Nullable<BigInt>, _>(kept_at),
    );
    let taken = with_schools_locked!(&*conn, &schools, |on| write.load::<First>(&mut on))?;
    Ok((!taken.is_empty()).then(|| taken.into_iter().map(|t| (t.id, t.first)).collect()))
}
/// Decides one new order against what the batch read, checking in the order a caller
/// meets the rules: the school, the student, the lines, allergies, the wave.
fn decide(new: &NewOrder, facts: &Facts, at: NaiveDateTime) -> Decided {
    if let Some(i) = &new.idempotency
        && let Some((id, fingerprint)) = facts.keyed.get(&(new.placed_by.clone(), i.key.clone()))
    {
        return if fingerprint.as_deref() == Some(i.fingerprint.as_str()) {
            Decided::Existing(id.clone())
        } else {
            Decided::Refused(CommandError::IdempotencyKeyReused)
        };
    }
    match accept(new, facts, at) {
        Ok((order, reason)) => Decided::Accepted {
            order: Box::new(order),
            reason,
        },
        Err(e) => Decided::Refused(e),
    }
}

fn accept(
    new: &NewOrder,
    facts: &Facts,
    at: NaiveDateTime,
) -> Result<(OrderSummary, Option<String>), CommandError> {
    let time_zone = facts
        .schools
        .get(&new.school_id)
        .ok_or(CommandError::SchoolNotFound)?;
    // Orders record who placed them: a real, active person.
    if !facts
        .people
        .get(&new.placed_by)
        .is_some_and(|(.., active)| *active)
    {
        return Err(CommandError::PlacerInactive);
    }
    let (student_name, allergies) = match facts.people.get(&new.student_id) {
        Some((Some(school), role, name, allergies, true))
            if *school == new.school_id && role == Role::Student.as_str() =>
        {
            (name, allergies)
        }
        _ => return Err(CommandError::StudentNotFound),
    };
    let menu: Vec<MealRow> = facts
        .menu
        .iter()
        .filter(|m| m.school_id == new.school_id)
        .cloned()
        .collect();
    let lines = order_lines(new, &menu)?;
    let reason = allergy_check(new, &menu, allergies)?;
    let windows: Vec<ServiceWindowRow> = facts
        .windows
        .iter()
        .filter(|w| w.school_id == new.school_id)
        .cloned()
        .collect();
    let waves = waves_on_day(&windows, time_zone, at.and_utc());
    let wave = choose_wave(&waves, new.window_id.as_deref(), at.and_utc())?;
    let order = OrderSummary {
        id: uuid::Uuid::now_v7().to_string(),
        school_id: new.school_id.clone(),
        student_id: new.student_id.clone(),
        student_name: student_name.clone(),
        state: OrderState::Placed,
        version: 1,
        total_cents: lines
            .iter()
            .map(|l| l.unit_price_cents * i64::from(l.quantity))
            .sum(),
        items: lines,
        placed_at: at.and_utc(),
        updated_at: at.and_utc(),
        counter: None,
        pickup_code: None,
        wave,
        ready_at: None,
        alerts: Vec::new(),
        allergy_override: reason.clone(),
    };
    Ok((order, reason))
}

fn order_row(new: &NewOrder, order: &OrderSummary, at: NaiveDateTime) -> OrderRow {
    OrderRow {
        id: order.id.clone(),
        school_id: order.school_id.clone(),
        student_id: order.student_id.clone(),
        placed_by: new.placed_by.clone(),
        state: order.state.as_str().to_owned(),
        version: order.version,
        total_cents: order.total_cents,
        counter_id: None,
        pickup_code: None,
        idempotency_key: new.idempotency.as_ref().map(|i| i.key.clone()),
        request_fingerprint: new.idempotency.as_ref().map(|i| i.fingerprint.clone()),
        created_at: at,
        updated_at: at,
        pickup_day: None,
        window_id: order.wave.as_ref().map(|w| w.id.clone()),
    }
}

fn item_rows(order: &OrderSummary) -> impl Iterator<Item = OrderItemRow> + '_ {
    order.items.iter().enumerate().map(|(n, l)| OrderItemRow {
        order_id: order.id.clone(),
        line: n as i32 + 1,
        meal_id: l.meal_id.clone(),
        meal_name: l.name.clone(),
        quantity: l.quantity,
        unit_price_cents: l.unit_price_cents,
    })
}

impl DieselStore {
    /// The order an earlier request with this key made, if any.
    async fn find_idempotent(
        &self,
        placed_by: &str,
        idempotency: &Idempotency,
    ) -> Result<Option<Placed>, CommandError> {
        let found: Option<(String, Option<String>)> = self
            .run(async |db| {
                with_conn!(db, |conn| orders::table
                    .filter(orders::placed_by.eq(placed_by))
                    .filter(orders::idempotency_key.eq(&idempotency.key))
                    .select((orders::id, orders::request_fingerprint))
                    .first(conn)
                    .await
                    .optional()
                    .map_err(DbError::from))
            })
            .await?;
        let Some((order_id, fingerprint)) = found else {
            return Ok(None);
        };
        if fingerprint.as_deref() != Some(idempotency.fingerprint.as_str()) {
            return Err(CommandError::IdempotencyKeyReused);
        }
        let order = self
            .load_order(&order_id)
            .await?
            .ok_or(CommandError::OrderNotFound)?;
        Ok(Some(Placed::Existing(order)))
    }

    pub(super) async fn place(&self, order: NewOrder) -> Result<Placed, CommandError> {
        let (placed_by, idempotency) = (order.placed_by.clone(), order.idempotency.clone());
        let committed = self
            .intake
            .submit(order, |batch| self.insert_orders(batch))
            .await
            .ok_or_else(|| CommandError::Unavailable("the order's batch was abandoned".into()))?;
        match committed {
            Ok(placed) => {
                if let Placed::New(event) = &placed {
                    self.owners.remember(
                        &event.order_id,
                        &event.school_id,
                        &event.order.student_id,
                    );
                }
                Ok(placed)
            }
            // A concurrent request with the same key won the insert: answer as it did.
            Err(TxError::Db(DbError::Duplicate(_))) if idempotency.is_some() => {
                match &idempotency {
                    Some(i) => self
                        .find_idempotent(&placed_by, i)
                        .await?
                        .ok_or(CommandError::IdempotencyKeyReused),
                    None => Err(CommandError::IdempotencyKeyReused),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}
