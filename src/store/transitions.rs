//! Transitions of any kitchens committed in batches. Each transition arrives decided by its
//! order's actor, with the order as the actor saw it. A batch picks counters and pickup codes
//! for the orders becoming ready (open counters, waiting orders and the day's codes, read
//! set-wise), applies every version-guarded update, numbers the ones that held and writes
//! their events; a scan's verdict commits with its pickup, while its claim is still the
//! decider's. A transition whose guard fails is refused alone and takes no number.
//!
//! PostgreSQL: one round trip a batch (two when an order becomes ready: the pickup reads
//! first): the write sent together with its transaction (`with_schools_locked`: BEGIN, the
//! schools locked in school order, one statement that applies the updates, writes the
//! verdicts, takes the numbers and inserts the events, COMMIT). SQLite: one transaction, a
//! statement a row, in process. Two batches that read the same free code race to the unique
//! index on codes; the loser is retried one by one with fresh reads.

use super::batch::together_or_each;
use super::orders::{EventNote, event_from_row, event_row, record_events};
use super::pickup::{Pickup, PickupQueries, draw_candidates};
use super::sequence::{LockSchools, TakeSeqs, with_schools_locked};
use super::{DieselStore, TxError, json_error};
use crate::db::models::{OrderEventRow, now};
use crate::db::schema::{orders, scans};
use crate::db::{PgConn, SqliteConn};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};
use diesel_async::{AsyncConnection, RunQueryDsl};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tiffin_actors::domain::{KitchenEvent, OrderState, OrderSummary, event_type};
use tiffin_actors::notices::kind_of_transition;
use tiffin_actors::ports::{CommandError, TransitionCommit};

/// A scan's verdict while it is being decided.
const PENDING: &str = "pending";

/// What committing one transition came to.
pub(super) type TransitionCommitted = Result<KitchenEvent, TxError>;

/// One guarded update: the order moves from `from_state` at `version - 1` to `to_state`; a
/// newly ready order also gets its counter and code; a pickup by a scan records the scan's
/// verdict, if the scan's claim is still at `attempt`.
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
    #[serde(flatten)]
    scan: Option<Verdict>,
}

/// A scan's decision, written with the pickup it hands over.
#[derive(serde::Serialize)]
struct Verdict {
    scan_id: String,
    attempt: i32,
    verdict: &'static str,
    answer: String,
    student_id: String,
    took_us: Option<i64>,
}

/// SQLite's updates: a statement per order, each microseconds in process; yields the orders
/// moved.
async fn apply_updates(
    conn: &mut SqliteConn,
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
                .execute(conn)
                .await?
        } else {
            diesel::update(guarded)
                .set((
                    orders::state.eq(u.to_state),
                    orders::version.eq(u.version),
                    orders::updated_at.eq(at),
                ))
                .execute(conn)
                .await?
        };
        if changed > 0 {
            moved.insert(u.id.clone());
        }
    }
    Ok(moved)
}

/// A batch planned: each transition's order as it will be, with its update and its event
/// (numbered from 0 until the batch takes numbers), or why it is refused already.
type Planned = Vec<Result<(OrderSummary, GuardedUpdate, OrderEventRow), CommandError>>;

impl DieselStore {
    /// Commits a batch of decided transitions, answering each. Should the batch itself fail,
    /// each is tried alone and answered for itself.
    pub(super) async fn commit_transitions(
        &self,
        batch: Vec<TransitionCommit>,
    ) -> Vec<TransitionCommitted> {
        let answers = together_or_each(self, "transition", &batch, |store, some| {
            Box::pin(store.transitions_together(some))
        })
        .await;
        if answers.iter().any(Result::is_ok) {
            self.wake_dispatch(super::Wake::Events);
        }
        answers
    }

    async fn transitions_together(
        &self,
        batch: &[TransitionCommit],
    ) -> Result<Vec<TransitionCommitted>, TxError> {
        with_conn!(&self.db, |conn| conn.commit_transitions(batch).await)
    }
}

/// What a batch's write came to: the orders moved, with their events' numbers, and the
/// scans whose claims were still their deciders'.
#[derive(Default)]
struct Written {
    numbers: HashMap<String, i64>,
    claimed: HashSet<String>,
}

/// One batch of transitions on each backend.
trait CommitTransitions {
    async fn commit_transitions(
        &mut self,
        batch: &[TransitionCommit],
    ) -> Result<Vec<TransitionCommitted>, TxError>;
}

impl CommitTransitions for PgConn {
    async fn commit_transitions(
        &mut self,
        batch: &[TransitionCommit],
    ) -> Result<Vec<TransitionCommitted>, TxError> {
        let at = now();
        let mut pickup = match ready_schools(batch).as_slice() {
            [] => Pickup::default(),
            ready => self.pickup(ready, draw_candidates(ready), at).await?,
        };
        let planned = plan_all(batch, at, &mut pickup)?;
        let written = write_transitions_pg(self, &planned, at).await?;
        answers(batch, planned, written)
    }
}

impl CommitTransitions for SqliteConn {
    async fn commit_transitions(
        &mut self,
        batch: &[TransitionCommit],
    ) -> Result<Vec<TransitionCommitted>, TxError> {
        self.transaction(async |conn| {
            let at = now();
            let schools: BTreeSet<&str> = batch.iter().map(|t| t.school_id.as_str()).collect();
            conn.lock_schools(&schools.into_iter().collect::<Vec<_>>())
                .await?;
            let mut pickup = match ready_schools(batch).as_slice() {
                [] => Pickup::default(),
                ready => conn.pickup(ready, draw_candidates(ready), at).await?,
            };
            let mut planned = plan_all(batch, at, &mut pickup)?;
            let mut written = Written::default();
            // A scan's decision commits with its pickup, and the pickup only while the
            // scan's claim is still its decider's: a claim taken over or abandoned after a
            // crash can no longer be finished by its first decider.
            for p in &mut planned {
                let Ok((order, update, _)) = &*p else {
                    continue;
                };
                let Some(scan) = &update.scan else {
                    continue;
                };
                let held = diesel::update(
                    scans::table
                        .filter(scans::id.eq(&scan.scan_id))
                        .filter(scans::verdict.eq(PENDING))
                        .filter(scans::attempt.eq(scan.attempt)),
                )
                .set((
                    scans::verdict.eq(scan.verdict),
                    scans::answer.eq(Some(&scan.answer)),
                    scans::order_id.eq(Some(&order.id)),
                    scans::student_id.eq(Some(&scan.student_id)),
                    scans::took_us.eq(scan.took_us),
                ))
                .execute(conn)
                .await?;
                if held == 0 {
                    *p = Err(CommandError::ScanClaimLost);
                } else {
                    written.claimed.insert(scan.scan_id.clone());
                }
            }
            let updates: Vec<&GuardedUpdate> = planned
                .iter()
                .filter_map(|p| p.as_ref().ok())
                .map(|(_, u, _)| u)
                .collect();
            let moved = apply_updates(conn, &updates, at).await?;
            // A pickup that lost its race leaves its scan undecided (rare: staff or
            // another reader moved the order first).
            for scan in updates
                .iter()
                .filter(|u| !moved.contains(&u.id))
                .filter_map(|u| u.scan.as_ref())
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
            // Numbers for the transitions that held, in batch order.
            let mut held: BTreeMap<String, i64> = BTreeMap::new();
            for (_, update, _) in planned.iter().filter_map(|p| p.as_ref().ok()) {
                if moved.contains(&update.id) {
                    *held.entry(update.school_id.clone()).or_default() += 1;
                }
            }
            let mut next = if held.is_empty() {
                HashMap::new()
            } else {
                conn.take_seqs(&held).await?
            };
            let mut events = Vec::new();
            for (_, update, event) in planned.iter().filter_map(|p| p.as_ref().ok()) {
                if let Some(seq) = next
                    .get_mut(&update.school_id)
                    .filter(|_| moved.contains(&update.id))
                {
                    written.numbers.insert(update.id.clone(), *seq);
                    events.push(OrderEventRow {
                        seq: *seq,
                        ..event.clone()
                    });
                    *seq += 1;
                }
            }
            record_events(conn, &events).await?;
            answers(batch, planned, written)
        })
        .await
    }
}

/// The whole write of a PostgreSQL batch as one statement, run with the batch's schools
/// locked (`with_schools_locked`) before any order row, so batches cannot deadlock; a scan's
/// claim is locked and checked before its pickup moves the order;
/// verdicts are written only for the orders that moved; each school's numbers are taken for
/// its moved orders, in batch order. Yields the moved orders with their numbers, and the
/// scans still claimed. Orders and claims are found by key, one probe a row (the lateral
/// subqueries): joined, plans made without statistics walked the school's orders in a state
/// (`orders_school_state`) or every scan ever pending (`scans_pending`, whose entries stay
/// until a vacuum), growing with the day; the claim's state is tested outside its probe
/// (`OFFSET 0` keeps it there) so that no plan takes `scans_pending` for it.
pub(crate) const WRITE_TRANSITIONS_PG: &str = "\
WITH v AS MATERIALIZED ( \
    SELECT * FROM json_to_recordset($1::json) AS v(pos int, id text, school_id text, \
        from_state text, to_state text, version bigint, assign boolean, counter_id text, \
        pickup_code text, pickup_day text, scan_id text, attempt int, verdict text, \
        answer text, student_id text, took_us bigint)), \
claimed AS MATERIALIZED ( \
    SELECT sc.id FROM v CROSS JOIN LATERAL ( \
        SELECT id, verdict, attempt FROM scans WHERE id = v.scan_id OFFSET 0 FOR UPDATE) sc \
    WHERE sc.verdict = 'pending' AND sc.attempt = v.attempt), \
targets AS MATERIALIZED ( \
    SELECT v.*, o.ctid AS at FROM v CROSS JOIN LATERAL ( \
        SELECT ctid FROM orders WHERE id = v.id OFFSET 0) o \
    WHERE v.scan_id IS NULL OR v.scan_id IN (SELECT id FROM claimed)), \
moved AS ( \
    UPDATE orders AS o SET state = v.to_state, version = v.version, updated_at = $2, \
        counter_id = CASE WHEN v.assign THEN v.counter_id ELSE o.counter_id END, \
        pickup_code = CASE WHEN v.assign THEN v.pickup_code ELSE o.pickup_code END, \
        pickup_day = CASE WHEN v.assign THEN v.pickup_day ELSE o.pickup_day END \
    FROM targets v WHERE o.ctid = ANY (ARRAY(SELECT at FROM targets)) AND o.ctid = v.at \
    AND o.id = v.id AND o.school_id = v.school_id AND o.version = v.version - 1 \
    AND o.state = v.from_state \
    RETURNING o.id, o.school_id, v.pos), \
verdicts AS ( \
    UPDATE scans AS sc SET verdict = v.verdict, answer = v.answer, order_id = v.id, \
        student_id = v.student_id, took_us = v.took_us \
    FROM v JOIN moved ON moved.id = v.id WHERE sc.id = v.scan_id), \
counts AS (SELECT school_id, count(*) AS n FROM moved GROUP BY school_id), \
taken AS ( \
    UPDATE schools AS s SET event_seq = s.event_seq + counts.n FROM counts \
    WHERE s.id = counts.school_id RETURNING s.id, s.event_seq - counts.n + 1 AS first), \
numbered AS ( \
    SELECT moved.id, taken.first + row_number() OVER ( \
        PARTITION BY moved.school_id ORDER BY moved.pos) - 1 AS seq \
    FROM moved JOIN taken ON taken.id = moved.school_id), \
events AS ( \
    INSERT INTO order_events (school_id, seq, order_id, version, kind, from_state, to_state, \
        actor_id, reason, snapshot, created_at, notice, notice_skip) \
    SELECT e.school_id, numbered.seq, e.order_id, e.version, e.kind, e.from_state, \
        e.to_state, e.actor_id, e.reason, e.snapshot, e.created_at, e.notice, e.notice_skip \
    FROM json_populate_recordset(NULL::order_events, $3::json) AS e \
    JOIN numbered ON numbered.id = e.order_id \
    RETURNING school_id, seq, created_at, notice), \
queued AS ( \
    INSERT INTO fan_out_queue (created_at, school_id, seq) \
    SELECT created_at, school_id, seq FROM events WHERE notice IS NOT NULL) \
SELECT id, seq FROM numbered \
UNION ALL SELECT id, -1 FROM claimed";

#[derive(QueryableByName)]
struct WrittenRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
}

async fn write_transitions_pg(
    conn: &mut PgConn,
    planned: &Planned,
    at: NaiveDateTime,
) -> Result<Written, TxError> {
    #[derive(serde::Serialize)]
    struct At<'a> {
        pos: usize,
        #[serde(flatten)]
        update: &'a GuardedUpdate,
    }
    let ok = || planned.iter().filter_map(|p| p.as_ref().ok());
    let updates: Vec<At> = ok()
        .enumerate()
        .map(|(pos, (_, update, _))| At { pos, update })
        .collect();
    if updates.is_empty() {
        return Ok(Written::default());
    }
    let events: Vec<&OrderEventRow> = ok().map(|(.., event)| event).collect();
    let schools: Vec<&str> = ok()
        .map(|(_, update, _)| update.school_id.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let write = crate::db::kept(
        diesel::sql_query(WRITE_TRANSITIONS_PG)
            .bind::<Text, _>(serde_json::to_string(&updates).map_err(json_error)?)
            .bind::<Timestamp, _>(at)
            .bind::<Text, _>(serde_json::to_string(&events).map_err(json_error)?),
    );
    // Its statements and their foreign-key checks keep to their indexes under generic plans
    // (`plan_tests`): none is planned afresh.
    let rows = with_schools_locked!(&*conn, &schools, |on| write.load::<WrittenRow>(&mut on))?;
    let mut written = Written::default();
    for row in rows {
        if row.seq < 0 {
            written.claimed.insert(row.id);
        } else {
            written.numbers.insert(row.id, row.seq);
        }
    }
    Ok(written)
}

/// The schools of the batch's orders that become ready and need a counter and code.
/// The school of each order becoming ready, once per order.
fn ready_schools(batch: &[TransitionCommit]) -> Vec<&str> {
    batch
        .iter()
        .filter(|t| needs_pickup(t))
        .map(|t| t.school_id.as_str())
        .collect()
}

/// Plans every transition of the batch. A second transition of one order in a batch was
/// decided on the same version as the first: it can only conflict.
fn plan_all(
    batch: &[TransitionCommit],
    at: NaiveDateTime,
    pickup: &mut Pickup,
) -> Result<Planned, TxError> {
    let mut seen = HashSet::new();
    let mut planned = Vec::with_capacity(batch.len());
    for t in batch {
        if !seen.insert(t.order_id.as_str()) {
            planned.push(Err(CommandError::VersionConflict));
            continue;
        }
        planned.push(match plan(t, at, pickup) {
            Ok((order, update)) => {
                let event = event_row(
                    0,
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
                Ok((order, update, event))
            }
            Err(e) => Err(e),
        });
    }
    Ok(planned)
}

/// Each transition's answer: its event if its order moved; else why not.
fn answers(
    batch: &[TransitionCommit],
    planned: Planned,
    written: Written,
) -> Result<Vec<TransitionCommitted>, TxError> {
    let mut results = Vec::with_capacity(batch.len());
    for p in planned {
        results.push(match p {
            Err(e) => Err(TxError::Refused(e)),
            Ok((_, update, event)) => match written.numbers.get(&update.id) {
                Some(&seq) => Ok(event_from_row(OrderEventRow { seq, ..event })?),
                None => Err(TxError::Refused(match &update.scan {
                    Some(scan) if !written.claimed.contains(&scan.scan_id) => {
                        CommandError::ScanClaimLost
                    }
                    _ => CommandError::VersionConflict,
                })),
            },
        });
    }
    Ok(results)
}

/// Whether the transition makes an order ready that has no pickup code yet (a recalled order
/// keeps its counter and code).
fn needs_pickup(t: &TransitionCommit) -> bool {
    t.transition.to == OrderState::Ready && t.order.pickup_code.is_none()
}

/// The order as the transition leaves it, and the guarded update that makes it so.
fn plan(
    t: &TransitionCommit,
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
        scan: None,
    };
    if needs_pickup(t) {
        let (counter, code, day) = pickup.assign(&t.school_id, at)?;
        update.assign = true;
        update.counter_id = counter.as_ref().map(|c| c.id.clone());
        update.pickup_code = Some(code.clone());
        update.pickup_day = Some(day);
        order.counter = counter;
        order.pickup_code = Some(code);
    }
    if let Some(scan) = &t.scan {
        let verdict = tiffin_actors::rfid::accepted(&order);
        update.scan = Some(Verdict {
            scan_id: scan.scan_id.clone(),
            attempt: scan.attempt,
            verdict: verdict.code(),
            answer: serde_json::to_string(&verdict).map_err(|e| {
                CommandError::Internal(format!("a verdict could not be written: {e}"))
            })?,
            student_id: order.student_id.clone(),
            took_us: (at - scan.received_at.naive_utc()).num_microseconds(),
        });
    }
    Ok((order, update))
}
