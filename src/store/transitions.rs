//! Transitions of any kitchens committed in batches. Each transition arrives decided by its
//! order's actor, with the order as the actor saw it; a batch locks its schools in school
//! order, picks counters and pickup codes for the orders becoming ready (one read each of open
//! counters, waiting orders and the day's codes), applies every version-guarded update (one
//! statement on PostgreSQL), numbers the ones that held (one statement), and writes their
//! events multi-row. A transition whose guard fails is refused alone and takes no number.

use super::sequence::{LockSchools, TakeSeqs};
use super::{
    DieselStore, EventNote, TxError, event_from_row, event_row, local_day, together_or_each,
};
use crate::db::models::now;
use crate::db::schema::{counters, orders, scans};
use crate::db::{InsertRows, PgConn, SqliteConn};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamp};
use diesel_async::{AsyncConnection, RunQueryDsl};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tiffin_actors::domain::{
    CounterRef, KitchenEvent, OrderState, OrderSummary, assign_counter, event_type, pickup_code,
};
use tiffin_actors::notices::kind_of_transition;
use tiffin_actors::ports::{CommandError, TransitionCommit};

/// A scan's verdict while it is being decided.
const PENDING: &str = "pending";

/// What committing one transition came to.
pub(super) type TransitionCommitted = Result<KitchenEvent, TxError>;

/// One guarded update: the order moves from `from_state` at `version - 1` to `to_state`; a
/// newly ready order also gets its counter and code.
#[derive(serde::Serialize)]
struct GuardedUpdate {
    id: String,
    school_id: String,
    from_state: &'static str,
    to_state: &'static str,
    version: i64,
    assign: bool,
    counter_id: Option<String>,
    pickup_code: Option<String>,
    pickup_day: Option<String>,
}

/// Applying a batch's guarded updates, each backend its own way; yields the orders moved.
trait ApplyUpdates {
    async fn apply_updates(
        &mut self,
        updates: &[&GuardedUpdate],
        at: NaiveDateTime,
    ) -> QueryResult<HashSet<String>>;
}

#[derive(QueryableByName)]
struct Moved {
    #[diesel(sql_type = Text)]
    id: String,
}

/// PostgreSQL: one statement for the whole batch.
const APPLY_PG: &str = "UPDATE orders AS o SET state = v.to_state, version = v.version, \
     updated_at = $2, \
     counter_id = CASE WHEN v.assign THEN v.counter_id ELSE o.counter_id END, \
     pickup_code = CASE WHEN v.assign THEN v.pickup_code ELSE o.pickup_code END, \
     pickup_day = CASE WHEN v.assign THEN v.pickup_day ELSE o.pickup_day END \
     FROM json_to_recordset($1::json) AS v(id text, school_id text, from_state text, \
     to_state text, version bigint, assign boolean, counter_id text, pickup_code text, \
     pickup_day text) \
     WHERE o.id = v.id AND o.school_id = v.school_id AND o.version = v.version - 1 \
     AND o.state = v.from_state RETURNING o.id";

impl ApplyUpdates for PgConn {
    async fn apply_updates(
        &mut self,
        updates: &[&GuardedUpdate],
        at: NaiveDateTime,
    ) -> QueryResult<HashSet<String>> {
        let rows = serde_json::to_string(updates)
            .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
        Ok(diesel::sql_query(APPLY_PG)
            .bind::<Text, _>(rows)
            .bind::<Timestamp, _>(at)
            .load::<Moved>(self)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect())
    }
}

/// SQLite: a statement per order, each microseconds in process.
impl ApplyUpdates for SqliteConn {
    async fn apply_updates(
        &mut self,
        updates: &[&GuardedUpdate],
        at: NaiveDateTime,
    ) -> QueryResult<HashSet<String>> {
        let mut moved = HashSet::new();
        for u in updates {
            let guarded = orders::table
                .filter(orders::id.eq(&u.id))
                .filter(orders::school_id.eq(&u.school_id))
                .filter(orders::version.eq(u.version - 1))
                .filter(orders::state.eq(u.from_state));
            let changed = if u.assign {
                diesel::update(guarded)
                    .set((
                        orders::state.eq(u.to_state),
                        orders::version.eq(u.version),
                        orders::updated_at.eq(at),
                        orders::counter_id.eq(&u.counter_id),
                        orders::pickup_code.eq(&u.pickup_code),
                        orders::pickup_day.eq(&u.pickup_day),
                    ))
                    .execute(self)
                    .await?
            } else {
                diesel::update(guarded)
                    .set((
                        orders::state.eq(u.to_state),
                        orders::version.eq(u.version),
                        orders::updated_at.eq(at),
                    ))
                    .execute(self)
                    .await?
            };
            if changed > 0 {
                moved.insert(u.id.clone());
            }
        }
        Ok(moved)
    }
}

/// Open counters, the orders waiting at each, and the day's taken codes of the schools whose
/// orders become ready, read set-wise.
#[derive(Default)]
struct Pickup {
    open: HashMap<String, Vec<CounterRef>>,
    waiting: HashMap<String, i64>,
    taken: HashMap<String, HashSet<String>>,
}

trait PickupQueries {
    async fn pickup(&mut self, schools: &[&str], days: &[String]) -> QueryResult<Pickup>;
}

macro_rules! pickup_queries {
    ($conn:ty, $join:ident, |$this:ident| $c1:expr, $c2:expr, $c3:expr) => {
        impl PickupQueries for $conn {
            async fn pickup(&mut self, schools: &[&str], days: &[String]) -> QueryResult<Pickup> {
                let $this = self;
                let (open, waiting, taken) = $join!(
                    counters::table
                        .filter(counters::school_id.eq_any(schools))
                        .filter(counters::is_open.eq(true))
                        .select((
                            counters::school_id,
                            counters::id,
                            counters::number,
                            counters::name
                        ))
                        .load::<(String, String, i32, String)>($c1),
                    orders::table
                        .filter(orders::school_id.eq_any(schools))
                        .filter(orders::state.eq(OrderState::Ready.as_str()))
                        .filter(orders::counter_id.is_not_null())
                        .group_by(orders::counter_id)
                        .select((orders::counter_id, diesel::dsl::count_star()))
                        .load::<(Option<String>, i64)>($c2),
                    orders::table
                        .filter(orders::school_id.eq_any(schools))
                        .filter(orders::pickup_day.eq_any(days))
                        .select((orders::school_id, orders::pickup_code))
                        .load::<(String, Option<String>)>($c3),
                );
                let mut pickup = Pickup::default();
                for (school, id, number, name) in open {
                    pickup
                        .open
                        .entry(school)
                        .or_default()
                        .push(CounterRef { id, number, name });
                }
                pickup.waiting = waiting
                    .into_iter()
                    .filter_map(|(id, n)| Some((id?, n)))
                    .collect();
                for (school, code) in taken {
                    if let Some(code) = code {
                        pickup.taken.entry(school).or_default().insert(code);
                    }
                }
                Ok(pickup)
            }
        }
    };
}
pickup_queries!(
    PgConn,
    pipelined,
    |conn| &mut &*conn,
    &mut &*conn,
    &mut &*conn
);
pickup_queries!(
    SqliteConn,
    one_by_one,
    |conn| &mut *conn,
    &mut *conn,
    &mut *conn
);

impl Pickup {
    /// The least-loaded open counter and a free code for an order becoming ready, counted
    /// at once so the batch's next ready order sees it.
    fn assign(&mut self, school_id: &str) -> Result<(Option<CounterRef>, String), CommandError> {
        let open = self
            .open
            .get(school_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let counter =
            assign_counter(open, |c| self.waiting.get(&c.id).copied().unwrap_or(0)).cloned();
        if let Some(c) = &counter {
            *self.waiting.entry(c.id.clone()).or_default() += 1;
        }
        let taken = self.taken.entry(school_id.to_owned()).or_default();
        let code = pickup_code(taken, |n| rand::random_range(0..n))
            .ok_or_else(|| CommandError::Internal("no free pickup code today".into()))?;
        taken.insert(code.clone());
        Ok((counter, code))
    }
}

impl DieselStore {
    /// Commits a batch of decided transitions in one transaction, answering each. Should the
    /// batch itself fail, each is tried alone and answered for itself.
    pub(super) async fn commit_transitions(
        &self,
        batch: Vec<TransitionCommit>,
    ) -> Vec<TransitionCommitted> {
        together_or_each(self, "transition", &batch, |store, some| {
            Box::pin(store.transitions_together(some))
        })
        .await
    }

    async fn transitions_together(
        &self,
        batch: &[TransitionCommit],
    ) -> Result<Vec<TransitionCommitted>, TxError> {
        with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let at = now();
                let school_ids: Vec<&str> = batch
                    .iter()
                    .map(|t| t.school_id.as_str())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let zones = conn.lock_schools(&school_ids).await?;
                // The orders as they will be, and the update that makes each so. A second
                // transition of one order in a batch was decided on the same version as the
                // first: it can only conflict.
                let mut seen = HashSet::new();
                let mut planned: Vec<Result<(OrderSummary, GuardedUpdate), CommandError>> =
                    Vec::with_capacity(batch.len());
                let ready: Vec<&str> = batch
                    .iter()
                    .filter(|t| needs_pickup(t))
                    .map(|t| t.school_id.as_str())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let mut pickup = if ready.is_empty() {
                    Pickup::default()
                } else {
                    let days: Vec<String> = ready
                        .iter()
                        .filter_map(|s| zones.get(*s))
                        .map(|tz| local_day(tz, at))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    conn.pickup(&ready, &days).await?
                };
                for t in batch {
                    if !seen.insert(t.order_id.as_str()) {
                        planned.push(Err(CommandError::VersionConflict));
                        continue;
                    }
                    let Some(time_zone) = zones.get(&t.school_id) else {
                        planned.push(Err(CommandError::SchoolNotFound));
                        continue;
                    };
                    planned.push(plan(t, time_zone, at, &mut pickup));
                }
                // A scan's decision commits with its pickup, and the pickup only while the
                // scan's claim is still its decider's: a claim taken over or abandoned after a
                // crash can no longer be finished by its first decider.
                for (t, p) in batch.iter().zip(planned.iter_mut()) {
                    let (Some(scan), Ok((order, _))) = (&t.scan, &*p) else {
                        continue;
                    };
                    let verdict = tiffin_actors::rfid::accepted(order);
                    let answer = serde_json::to_string(&verdict)
                        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
                    let took = (at - scan.received_at.naive_utc()).num_microseconds();
                    let held = diesel::update(
                        scans::table
                            .filter(scans::id.eq(&scan.scan_id))
                            .filter(scans::verdict.eq(PENDING))
                            .filter(scans::attempt.eq(scan.attempt)),
                    )
                    .set((
                        scans::verdict.eq(verdict.code()),
                        scans::answer.eq(Some(answer)),
                        scans::order_id.eq(Some(&order.id)),
                        scans::student_id.eq(Some(&order.student_id)),
                        scans::took_us.eq(took),
                    ))
                    .execute(conn)
                    .await?;
                    if held == 0 {
                        *p = Err(CommandError::ScanClaimLost);
                    }
                }
                let updates: Vec<&GuardedUpdate> = planned
                    .iter()
                    .filter_map(|p| p.as_ref().ok())
                    .map(|(_, u)| u)
                    .collect();
                let moved = if updates.is_empty() {
                    HashSet::new()
                } else {
                    conn.apply_updates(&updates, at).await?
                };
                // A pickup that lost its race leaves its scan undecided (rare: staff or
                // another reader moved the order first).
                for (t, p) in batch.iter().zip(&planned) {
                    if let (Some(scan), Ok((order, _))) = (&t.scan, p)
                        && !moved.contains(&order.id)
                    {
                        diesel::update(scans::table.filter(scans::id.eq(&scan.scan_id)))
                            .set((
                                scans::verdict.eq(PENDING),
                                scans::answer.eq(None::<String>),
                                scans::order_id.eq(None::<String>),
                                scans::student_id.eq(None::<String>),
                                scans::took_us.eq(None::<i64>),
                            ))
                            .execute(conn)
                            .await?;
                    }
                }
                // Numbers for the transitions that held.
                let mut held: BTreeMap<String, i64> = BTreeMap::new();
                for t in batch {
                    if moved.contains(&t.order_id) {
                        *held.entry(t.school_id.clone()).or_default() += 1;
                    }
                }
                let mut next_seq = if held.is_empty() {
                    HashMap::new()
                } else {
                    conn.take_seqs(&held).await?
                };
                let mut events = Vec::new();
                let mut results = Vec::with_capacity(batch.len());
                for (t, p) in batch.iter().zip(planned) {
                    let order = match p {
                        Err(e) => {
                            results.push(Err(TxError::Refused(e)));
                            continue;
                        }
                        Ok((order, _)) if moved.contains(&order.id) => order,
                        Ok(_) => {
                            results.push(Err(TxError::Refused(CommandError::VersionConflict)));
                            continue;
                        }
                    };
                    let Some(seq) = next_seq.get_mut(&t.school_id) else {
                        results.push(Err(TxError::Refused(CommandError::Internal(
                            "no sequence taken".into(),
                        ))));
                        continue;
                    };
                    let event = event_row(
                        *seq,
                        &order,
                        EventNote {
                            kind: event_type(order.state),
                            from: Some(t.transition.from),
                            actor_id: t.actor_id.clone(),
                            reason: t.reason.clone(),
                            at,
                            notice: kind_of_transition(t.transition.to, t.issuer),
                            skip: None,
                        },
                    )?;
                    *seq += 1;
                    results.push(Ok(event_from_row(event.clone())?));
                    events.push(event);
                }
                conn.insert_rows(&events).await?;
                Ok::<_, TxError>(results)
            })
            .await)
    }
}

/// Whether the transition makes an order ready that has no pickup code yet (a recalled order
/// keeps its counter and code).
fn needs_pickup(t: &TransitionCommit) -> bool {
    t.transition.to == OrderState::Ready && t.order.pickup_code.is_none()
}

/// The order as the transition leaves it, and the guarded update that makes it so.
fn plan(
    t: &TransitionCommit,
    time_zone: &str,
    at: NaiveDateTime,
    pickup: &mut Pickup,
) -> Result<(OrderSummary, GuardedUpdate), CommandError> {
    let tr = t.transition;
    if t.order.version != tr.version - 1 || t.order.id != t.order_id {
        // Decided on something other than the order it carries: nothing to build on.
        return Err(CommandError::VersionConflict);
    }
    let mut order = t.order.clone();
    order.state = tr.to;
    order.version = tr.version;
    order.updated_at = at.and_utc();
    order.ready_at = (tr.to == OrderState::Ready).then(|| at.and_utc());
    let mut update = GuardedUpdate {
        id: t.order_id.clone(),
        school_id: t.school_id.clone(),
        from_state: tr.from.as_str(),
        to_state: tr.to.as_str(),
        version: tr.version,
        assign: false,
        counter_id: None,
        pickup_code: None,
        pickup_day: None,
    };
    if needs_pickup(t) {
        let (counter, code) = pickup.assign(&t.school_id)?;
        update.assign = true;
        update.counter_id = counter.as_ref().map(|c| c.id.clone());
        update.pickup_code = Some(code.clone());
        update.pickup_day = Some(local_day(time_zone, at));
        order.counter = counter;
        order.pickup_code = Some(code);
    }
    Ok((order, update))
}
