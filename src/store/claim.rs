//! Claiming due outbox messages for dispatch: each is leased to this node, told whether it
//! still goes out, and those no longer needed leave the queue in the same transaction. A
//! claim left behind by a crash thus holds only messages whose send may have begun; the next
//! claim marks them `resend` and sends them whatever their news.
//!
//! What decides whether a message still goes out, in this order: a resend goes; one past its
//! `expires_at` expires; a fallback whose first message was delivered is skipped; one whose
//! news is no longer true of its order (`notices::Kind::still_true`, the order found through
//! the message's event) expires.

use super::DieselStore;
use crate::db::models::{OutboxRow, now};
use crate::db::schema::{order_events, orders, outbox};
use crate::db::{Db, DbError};
use crate::with_pooled;
use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text, Timestamp};
use diesel_async::{AsyncConnection, RunQueryDsl};
use std::collections::{BTreeMap, HashMap, HashSet};
use tiffin_actors::domain::OrderState;
use tiffin_actors::notices::{Kind, Priority};
use tiffin_actors::ports::{Claimed, CommandError, Dropped, Needed, OutboxMessage};

/// How long a dispatcher holds a claimed outbox row before another may take it.
pub(super) const CLAIM_LEASE_SECS: i64 = 60;

/// PostgreSQL: the whole claim in one statement, one round trip: due rows locked (skipping
/// those another node holds) in the order of the partial index `outbox_pending`, each judged,
/// the needed ones leased, the others dropped as `$7` says (judged once: inlined, the
/// judgement ran once per use). Seven round trips before (BENCHMARKS.md).
pub(crate) const CLAIM_PG: &str = "\
WITH due AS ( \
    SELECT id FROM outbox \
    WHERE status = 'pending' AND next_attempt_at <= $1 AND channel <> ALL($2) \
        AND (claimed_until IS NULL OR claimed_until < $1) \
    ORDER BY priority DESC, next_attempt_at LIMIT $3 \
    FOR UPDATE SKIP LOCKED), \
judged AS MATERIALIZED ( \
    SELECT o.id, CASE \
        WHEN o.resend OR o.claimed_until IS NOT NULL THEN 'resend' \
        WHEN o.expires_at <= $1 THEN 'past_expiry' \
        WHEN EXISTS (SELECT 1 FROM outbox f WHERE f.id = o.fallback_for AND f.status = 'sent') \
            THEN 'delivered_otherwise' \
        WHEN o.template || ' ' || ord.state = ANY($6) THEN 'no_longer_true' \
        ELSE 'yes' END AS needed \
    FROM due JOIN outbox o ON o.id = due.id \
    LEFT JOIN order_events e ON e.school_id = o.school_id AND e.seq = o.event_seq \
    LEFT JOIN orders ord ON ord.id = e.order_id), \
dropping AS ( \
    SELECT * FROM json_to_recordset($7::json) AS d(needed text, status text, why text)) \
UPDATE outbox o SET claimed_by = $5, resend = j.needed = 'resend', \
    claimed_until = CASE WHEN d.needed IS NULL THEN $4::timestamp END, \
    status = coalesce(d.status, o.status), last_error = coalesce(d.why, o.last_error) \
FROM judged j LEFT JOIN dropping d ON d.needed = j.needed \
WHERE o.id = j.id \
RETURNING o.*, j.needed";

/// A message as `CLAIM_PG` returns it.
#[derive(QueryableByName)]
struct JudgedRow {
    #[diesel(embed)]
    message: OutboxRow,
    #[diesel(sql_type = Text)]
    needed: String,
}

/// How `CLAIM_PG` names a judgement (a resend is needed, and marked).
fn needed_named(name: &str) -> (Needed, bool) {
    match name {
        "resend" => (Needed::Yes, true),
        "past_expiry" => (Needed::PastExpiry, false),
        "delivered_otherwise" => (Needed::DeliveredOtherwise, false),
        "no_longer_true" => (Needed::NoLongerTrue, false),
        _ => (Needed::Yes, false),
    }
}

/// `CLAIM_PG`'s rules, derived once from Rust's.
static NO_LONGER_TRUE: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(no_longer_true_pairs);
static DROPS: std::sync::LazyLock<String> = std::sync::LazyLock::new(drops_json);

/// `CLAIM_PG`'s `$6`: each "template state" pair whose news is no longer true.
fn no_longer_true_pairs() -> Vec<String> {
    Kind::ALL
        .iter()
        .flat_map(|kind| {
            OrderState::ALL
                .iter()
                .filter(|state| !kind.still_true(**state))
                .map(|state| format!("{} {}", kind.as_str(), state.as_str()))
        })
        .collect()
}

/// `CLAIM_PG`'s `$7`: how each judgement that is not sent leaves the queue.
fn drops_json() -> String {
    let drops: Vec<serde_json::Value> = [
        ("past_expiry", Needed::PastExpiry),
        ("delivered_otherwise", Needed::DeliveredOtherwise),
        ("no_longer_true", Needed::NoLongerTrue),
    ]
    .into_iter()
    .filter_map(|(name, needed)| {
        let (how, why) = dropped_as(needed)?;
        Some(serde_json::json!({ "needed": name, "status": how.as_str(), "why": why }))
    })
    .collect();
    serde_json::Value::Array(drops).to_string()
}

/// What a claim asks for.
#[derive(Clone, Copy)]
struct DueRows<'a> {
    at: NaiveDateTime,
    lease: NaiveDateTime,
    limit: i64,
    skip: &'a [String],
}

impl DieselStore {
    /// Claims up to `limit` due messages on channels not in `skip`, most urgent first.
    pub(super) async fn claim_due_messages(
        &self,
        limit: i64,
        skip: &[String],
    ) -> Result<Vec<Claimed>, CommandError> {
        let at = now();
        let due = DueRows {
            at,
            lease: at + Duration::seconds(CLAIM_LEASE_SECS),
            limit,
            skip,
        };
        let node = self.node.id.as_str();
        let mut claimed: Vec<(OutboxRow, Needed, bool)> = match &self.db {
            Db::Pg(pool) => with_pooled!(pool, |conn| diesel::sql_query(CLAIM_PG)
                .bind::<Timestamp, _>(due.at)
                .bind::<Array<Text>, _>(due.skip)
                .bind::<BigInt, _>(due.limit)
                .bind::<Timestamp, _>(due.lease)
                .bind::<Text, _>(node)
                .bind::<Array<Text>, _>(&*NO_LONGER_TRUE)
                .bind::<Text, _>(&*DROPS)
                .load::<JudgedRow>(conn)
                .await)
            .map_err(DbError::from)?
            .into_iter()
            .map(|j| {
                let (needed, resend) = needed_named(&j.needed);
                (j.message, needed, resend)
            })
            .collect(),
            Db::Sqlite(pool) => with_pooled!(pool, |conn| claim_due_sqlite(conn, due, node).await)?,
        };
        claimed.sort_by_key(|(r, _, _)| (std::cmp::Reverse(r.priority), r.next_attempt_at));
        Ok(claimed
            .into_iter()
            .map(|(row, needed, resend)| Claimed {
                message: outbox_message(row),
                needed,
                resend,
            })
            .collect())
    }
}

/// SQLite: one transaction (one writer at a time) leases, reads what decides, and drops.
async fn claim_due_sqlite(
    conn: &mut crate::db::SqliteConn,
    due: DueRows<'_>,
    node: &str,
) -> Result<Vec<(OutboxRow, Needed, bool)>, DbError> {
    Ok(conn
        .transaction(async |conn| {
            let leased = lease_due_sqlite(conn, due, node).await?;
            if leased.is_empty() {
                return Ok::<_, diesel::result::Error>(Vec::new());
            }
            let ids: Vec<&String> = leased.iter().map(|(id, _)| id).collect();
            let resend: HashSet<&String> = leased
                .iter()
                .filter(|(_, resend)| *resend)
                .map(|(id, _)| id)
                .collect();
            let rows: Vec<OutboxRow> = outbox::table
                .filter(outbox::id.eq_any(&ids))
                .select(OutboxRow::as_select())
                .load(conn)
                .await?;
            let firsts: Vec<&String> = rows
                .iter()
                .filter_map(|r| r.fallback_for.as_ref())
                .collect();
            let delivered: HashSet<String> = if firsts.is_empty() {
                HashSet::new()
            } else {
                outbox::table
                    .filter(outbox::id.eq_any(&firsts))
                    .filter(outbox::status.eq("sent"))
                    .select(outbox::id)
                    .load::<String>(conn)
                    .await?
                    .into_iter()
                    .collect()
            };
            // Each message's order, through its event (notices that are not an order's
            // event have none).
            let states: HashMap<String, String> = outbox::table
                .inner_join(
                    order_events::table.on(order_events::school_id
                        .eq(outbox::school_id)
                        .and(order_events::seq.eq(outbox::event_seq))),
                )
                .inner_join(orders::table.on(orders::id.eq(order_events::order_id)))
                .filter(outbox::id.eq_any(&ids))
                .select((outbox::id, orders::state))
                .load::<(String, String)>(conn)
                .await?
                .into_iter()
                .collect();
            let facts = ClaimFacts { delivered, states };
            let claimed: Vec<(OutboxRow, Needed, bool)> = rows
                .into_iter()
                .map(|r| {
                    let resend = resend.contains(&r.id);
                    let needed = if resend {
                        Needed::Yes
                    } else {
                        facts.needed(&r, due.at)
                    };
                    (r, needed, resend)
                })
                .collect();
            // Grouped by why: rarely more than a statement or two.
            let mut dropped: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
            for (row, needed, _) in &claimed {
                if let Some((how, why)) = dropped_as(*needed) {
                    dropped
                        .entry((how.as_str(), why))
                        .or_default()
                        .push(row.id.as_str());
                }
            }
            for ((status, why), ids) in dropped {
                diesel::update(outbox::table.filter(outbox::id.eq_any(ids)))
                    .set((
                        outbox::status.eq(status),
                        outbox::last_error.eq(Some(why)),
                        outbox::claimed_until.eq(None::<NaiveDateTime>),
                    ))
                    .execute(conn)
                    .await?;
            }
            Ok(claimed)
        })
        .await?)
}

/// What decides whether a claimed message still goes out (SQLite; `CLAIM_PG` judges the
/// same in SQL): the fallbacks' first messages that were delivered, and the state of the
/// order each message tells of.
struct ClaimFacts {
    delivered: HashSet<String>,
    /// By message id.
    states: HashMap<String, String>,
}

impl ClaimFacts {
    fn needed(&self, row: &OutboxRow, at: NaiveDateTime) -> Needed {
        if row.expires_at.is_some_and(|t| t <= at) {
            return Needed::PastExpiry;
        }
        if row
            .fallback_for
            .as_ref()
            .is_some_and(|first| self.delivered.contains(first))
        {
            return Needed::DeliveredOtherwise;
        }
        let no_longer_true = Kind::parse(&row.template)
            .zip(
                self.states
                    .get(&row.id)
                    .and_then(|state| OrderState::parse(state)),
            )
            .is_some_and(|(kind, state)| !kind.still_true(state));
        if no_longer_true {
            Needed::NoLongerTrue
        } else {
            Needed::Yes
        }
    }
}

/// SQLite (one writer at a time): one UPDATE leases the due rows its subquery picks; the ids
/// leased, each with whether an earlier claim of it was left unfinished. A statement is
/// atomic, so two dispatchers never both win a row, and a batch is one write: a
/// compare-and-set per row made 33 writes per batch, each queued behind the rush's
/// transactions (958 messages pending with none in flight; BENCHMARKS.md).
async fn lease_due_sqlite(
    conn: &mut crate::db::SqliteConn,
    due: DueRows<'_>,
    node: &str,
) -> QueryResult<Vec<(String, bool)>> {
    use diesel::sql_types::Bool;
    #[derive(QueryableByName)]
    struct Leased {
        #[diesel(sql_type = Text)]
        id: String,
        #[diesel(sql_type = Bool)]
        resend: bool,
    }
    // SET reads the row as it was: a lease still there was never finished.
    let leased: Vec<Leased> = diesel::sql_query(
        "UPDATE outbox SET claimed_until = ?, claimed_by = ?, \
           resend = (resend OR claimed_until IS NOT NULL) WHERE id IN (\
           SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= ? \
           AND channel NOT IN (SELECT value FROM json_each(?)) \
           AND (claimed_until IS NULL OR claimed_until < ?) \
           ORDER BY priority DESC, next_attempt_at ASC LIMIT ?) \
         RETURNING id, resend",
    )
    .bind::<Timestamp, _>(due.lease)
    .bind::<Text, _>(node)
    .bind::<Timestamp, _>(due.at)
    // One parameter for any number of channels: the list as a JSON array.
    .bind::<Text, _>(serde_json::Value::from(due.skip).to_string())
    .bind::<Timestamp, _>(due.at)
    .bind::<BigInt, _>(due.limit)
    .load(conn)
    .await?;
    Ok(leased.into_iter().map(|l| (l.id, l.resend)).collect())
}

pub(super) fn outbox_message(r: OutboxRow) -> OutboxMessage {
    OutboxMessage {
        id: r.id,
        recipient_id: r.recipient_id,
        channel: r.channel,
        template: r.template,
        address: r.address,
        locale: r.locale,
        payload: r.payload,
        attempts: r.attempts,
        priority: Priority::from_rank(r.priority),
        created_at: r.created_at.and_utc(),
        expires_at: r.expires_at.map(|t| t.and_utc()),
        fallback_for: r.fallback_for,
    }
}

/// Why a claimed message leaves the queue unsent, as recorded.
fn dropped_as(needed: Needed) -> Option<(Dropped, &'static str)> {
    match needed {
        Needed::Yes => None,
        Needed::PastExpiry => Some((Dropped::Expired, "past its expiry")),
        Needed::NoLongerTrue => Some((Dropped::Expired, "no longer true")),
        Needed::DeliveredOtherwise => Some((Dropped::Skipped, "delivered by push")),
    }
}
