//! Intake: new orders of any kitchens committed in batches. A batch locks its schools in
//! school order (so batches cannot deadlock; the lock yields their time zones), reads what
//! its orders need set-wise (people, menus, waves, earlier requests with the same keys),
//! decides each order in memory (a refused one is answered alone and takes no sequence
//! number, with no savepoint), takes the accepted orders' numbers and writes orders, items
//! and events in multi-row statements: about seven statements a batch on PostgreSQL,
//! whatever its size.

use super::sequence::{LockSchools, TakeSeqs};
use super::{
    DieselStore, EventNote, OrderCommitted, TxError, allergy_check, event_from_row, event_row,
    order_lines, together_or_each, waves_on_day,
};
use crate::db::models::{MealRow, OrderItemRow, OrderRow, ServiceWindowRow, now};
use crate::db::schema::{meals, order_events, orders, service_windows, users};
use crate::db::{InsertRows, PgConn, SqliteConn};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use std::collections::{BTreeMap, HashMap};
use tiffin_actors::domain::{OrderState, OrderSummary, Role, choose_wave, event_type};
use tiffin_actors::notices::Kind;
use tiffin_actors::ports::{CommandError, NewOrder, Placed};

/// What a batch's orders need, read in a handful of statements.
struct Facts {
    /// Each school's time zone.
    schools: HashMap<String, String>,
    /// The batch's students and the people who placed its orders, by id.
    people: HashMap<String, Person>,
    menu: Vec<MealRow>,
    windows: Vec<ServiceWindowRow>,
    /// Orders made earlier with a key: (placed_by, key) -> (order id, request fingerprint).
    keyed: HashMap<(String, String), (String, Option<String>)>,
}

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

impl DieselStore {
    /// Commits a batch of new orders in one transaction, answering each. Should the batch
    /// itself fail (a key another request just took, the database), each order is tried
    /// alone and answered for itself.
    pub(super) async fn insert_orders(&self, batch: Vec<NewOrder>) -> Vec<OrderCommitted> {
        together_or_each(self, "order", &batch, |store, some| {
            Box::pin(store.commit_orders(some))
        })
        .await
    }

    async fn commit_orders(&self, batch: &[NewOrder]) -> Result<Vec<OrderCommitted>, TxError> {
        with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let at = now();
                // The batch's schools, locked in school order before anything else.
                let schools: Vec<&str> = batch
                    .iter()
                    .map(|n| n.school_id.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let zones = conn.lock_schools(&schools).await?;
                let facts = conn.facts(batch, zones).await?;
                let decided: Vec<Decided> =
                    batch.iter().map(|new| decide(new, &facts, at)).collect();
                // Sequence numbers for the accepted orders.
                let mut accepted: BTreeMap<String, i64> = BTreeMap::new();
                for d in &decided {
                    if let Decided::Accepted { order, .. } = d {
                        *accepted.entry(order.school_id.clone()).or_default() += 1;
                    }
                }
                let mut next_seq = if accepted.is_empty() {
                    HashMap::new()
                } else {
                    conn.take_seqs(&accepted).await?
                };
                let mut rows = Vec::new();
                let mut items = Vec::new();
                let mut events = Vec::new();
                let mut results = Vec::with_capacity(batch.len());
                for (new, d) in batch.iter().zip(decided) {
                    let (order, reason) = match d {
                        Decided::Refused(e) => {
                            results.push(Err(TxError::Refused(e)));
                            continue;
                        }
                        Decided::Existing(order_id) => {
                            results.push(Ok(Placed::Existing(latest_snapshot!(conn, &order_id))));
                            continue;
                        }
                        Decided::Accepted { order, reason } => (order, reason),
                    };
                    let seq = next_seq.get_mut(order.school_id.as_str()).ok_or_else(|| {
                        TxError::Refused(CommandError::Internal("no sequence taken".into()))
                    })?;
                    let event = event_row(
                        *seq,
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
                    *seq += 1;
                    let order = *order;
                    rows.push(order_row(new, &order, at));
                    items.extend(item_rows(&order));
                    results.push(Ok(Placed::New(event_from_row(event.clone())?)));
                    events.push(event);
                }
                conn.insert_rows(&rows).await?;
                conn.insert_rows(&items).await?;
                conn.insert_rows(&events).await?;
                Ok::<_, TxError>(results)
            })
            .await)
    }
}

/// The batch's reads, expanded for each backend.
trait FactsQueries {
    /// `schools`: the batch's schools (locked) and their time zones.
    async fn facts(
        &mut self,
        batch: &[NewOrder],
        schools: HashMap<String, String>,
    ) -> Result<Facts, TxError>;
}

/// A user as the batch needs them: (school, role, name, allergies, active).
type Person = (Option<String>, String, String, String, bool);

macro_rules! facts_queries {
    ($conn:ty, $join:ident, |$this:ident| $c1:expr, $c2:expr, $c3:expr, $c4:expr) => {
        impl FactsQueries for $conn {
            async fn facts(
                &mut self,
                batch: &[NewOrder],
                schools: HashMap<String, String>,
            ) -> Result<Facts, TxError> {
                let school_ids: Vec<&str> = batch.iter().map(|n| n.school_id.as_str()).collect();
                let people: Vec<&str> = batch
                    .iter()
                    .flat_map(|n| [n.student_id.as_str(), n.placed_by.as_str()])
                    .collect();
                let meal_ids: Vec<&str> = batch
                    .iter()
                    .flat_map(|n| n.items.iter().map(|i| i.meal_id.as_str()))
                    .collect();
                let keys: Vec<&str> = batch
                    .iter()
                    .filter_map(|n| n.idempotency.as_ref().map(|i| i.key.as_str()))
                    .collect();
                let $this = self;
                let (people, menu, windows, keyed) = $join!(
                    users::table
                        .filter(users::id.eq_any(&people))
                        .select((
                            users::id,
                            users::school_id,
                            users::role,
                            users::display_name,
                            users::allergies,
                            users::active,
                        ))
                        .load::<(String, Option<String>, String, String, String, bool)>($c1),
                    meals::table
                        .filter(meals::id.eq_any(&meal_ids))
                        .select(MealRow::as_select())
                        .load::<MealRow>($c2),
                    service_windows::table
                        .filter(service_windows::school_id.eq_any(&school_ids))
                        .select(ServiceWindowRow::as_select())
                        .load::<ServiceWindowRow>($c3),
                    orders::table
                        .filter(orders::idempotency_key.eq_any(&keys))
                        .select((
                            orders::placed_by,
                            orders::idempotency_key,
                            orders::id,
                            orders::request_fingerprint,
                        ))
                        .load::<(String, Option<String>, String, Option<String>)>($c4),
                );
                Ok(Facts {
                    schools,
                    people: people
                        .into_iter()
                        .map(|(id, school, role, name, allergies, active)| {
                            (id, (school, role, name, allergies, active))
                        })
                        .collect(),
                    menu,
                    windows,
                    keyed: keyed
                        .into_iter()
                        .filter_map(|(by, key, id, fingerprint)| {
                            Some(((by, key?), (id, fingerprint)))
                        })
                        .collect(),
                })
            }
        }
    };
}
facts_queries!(
    PgConn,
    pipelined,
    |conn| &mut &*conn,
    &mut &*conn,
    &mut &*conn,
    &mut &*conn
);
facts_queries!(
    SqliteConn,
    one_by_one,
    |conn| &mut *conn,
    &mut *conn,
    &mut *conn,
    &mut *conn
);

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
