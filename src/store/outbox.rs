//! The outbox port (`Outbox`): messages marked sent, failed or deferred, with a record of
//! each delivery attempt; dead letters and an order's messages for the API.

use super::DieselStore;
use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError};
use crate::{on_both_connections, with_conn};
use async_trait::async_trait;
use chrono::Duration;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use tiffin_actors::notices::Priority;
use tiffin_actors::ports::{Claimed, CommandError, FannedOut, Lease, Outbox, OutboxStats};

/// One delivery attempt of an outbox row.
struct Attempt<'a> {
    outbox_id: &'a str,
    attempt: i32,
    at: NaiveDateTime,
    outcome: &'a str,
    detail: Option<&'a str>,
}

/// Records a delivery attempt, inside the transaction that updates its row, on either backend.
trait RecordAttempt {
    async fn record_attempt(&mut self, attempt: Attempt<'_>) -> QueryResult<usize>;
}

on_both_connections!(impl RecordAttempt {
    async fn record_attempt(&mut self, a: Attempt<'_>) -> QueryResult<usize> {
        diesel::insert_into(delivery_attempts::table)
            .values((
                delivery_attempts::id.eq(uuid::Uuid::now_v7().to_string()),
                delivery_attempts::outbox_id.eq(a.outbox_id),
                delivery_attempts::attempt.eq(a.attempt),
                delivery_attempts::at.eq(a.at),
                delivery_attempts::outcome.eq(a.outcome),
                delivery_attempts::detail.eq(a.detail),
            ))
            .execute(self)
            .await
    }
});

/// Messages sent in the transaction that wrote them (in-app ones, by a fan-out): their first
/// attempts recorded (SQLite; PostgreSQL's are `sent_in_place_pg`).
pub(super) trait RecordSentInPlace {
    async fn record_sent_in_place(&mut self, ids: &[&str], at: NaiveDateTime) -> QueryResult<()>;
}

/// PostgreSQL: the attempts in one statement.
const SENT_IN_PLACE_PG: &str = "\
INSERT INTO delivery_attempts (id, outbox_id, attempt, at, outcome, detail) \
SELECT a.id, a.outbox_id, 1, $3, 'sent', NULL \
FROM unnest($1::text[], $2::text[]) AS a(id, outbox_id)";

/// PostgreSQL: the attempts, on a shared connection so that the fan-out sends them with its
/// other writes.
pub(crate) async fn sent_in_place_pg(
    conn: &crate::db::PgConn,
    ids: &[&str],
    at: NaiveDateTime,
) -> QueryResult<()> {
    use diesel::sql_types::{Array, Text, Timestamp};
    let attempt_ids: Vec<String> = ids
        .iter()
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    crate::db::kept(
        diesel::sql_query(SENT_IN_PLACE_PG)
            .bind::<Array<Text>, _>(&attempt_ids)
            .bind::<Array<Text>, _>(ids)
            .bind::<Timestamp, _>(at),
    )
    .execute(&mut &*conn)
    .await?;
    Ok(())
}

impl RecordSentInPlace for crate::db::SqliteConn {
    async fn record_sent_in_place(&mut self, ids: &[&str], at: NaiveDateTime) -> QueryResult<()> {
        for id in ids {
            let sent = Attempt {
                outbox_id: id,
                attempt: 1,
                at,
                outcome: "sent",
                detail: None,
            };
            self.record_attempt(sent).await?;
        }
        Ok(())
    }
}

/// PostgreSQL: messages marked sent and their attempts recorded in one statement (one round
/// trip, whatever their number), on generic plans.
pub(crate) const MARK_SENT_PG: &str = "\
WITH sent AS ( \
    UPDATE outbox SET status = 'sent', sent_at = $3, attempts = attempts + 1, \
        claimed_until = NULL \
    WHERE id = ANY($1) RETURNING id, attempts) \
INSERT INTO delivery_attempts (id, outbox_id, attempt, at, outcome, detail) \
SELECT a.attempt_id, sent.id, sent.attempts, $3, 'sent', NULL \
FROM sent JOIN unnest($1::text[], $2::text[]) AS a(outbox_id, attempt_id) \
    ON a.outbox_id = sent.id";

async fn mark_sent_pg(
    pool: &diesel_async::pooled_connection::deadpool::Pool<crate::db::PgConn>,
    ids: &[String],
    at: NaiveDateTime,
) -> Result<(), CommandError> {
    use diesel::sql_types::{Array, Text, Timestamp};
    let attempt_ids: Vec<String> = ids
        .iter()
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let write = crate::db::kept(
        diesel::sql_query(MARK_SENT_PG)
            .bind::<Array<Text>, _>(ids)
            .bind::<Array<Text>, _>(&attempt_ids)
            .bind::<Timestamp, _>(at),
    );
    crate::with_pooled!(pool, |conn| super::sequence::on_generic_plans!(
        &*conn,
        |on| write.execute(&mut on)
    )
    .map_err(DbError::from))?;
    Ok(())
}

/// Dispatch's statements and round trips (fan-out, claims, delivery records) count under
/// this operation; its operations are the messages marked sent.
pub(crate) const NOTIFY: &str = "notify";

/// How many committed events with news are not yet fanned out, and the oldest's time.
macro_rules! awaiting_fan_out {
    () => {
        crate::db::schema::fan_out_queue::table.select((
            diesel::dsl::count_star(),
            diesel::dsl::min(crate::db::schema::fan_out_queue::created_at),
        ))
    };
}

#[cfg(test)]
pub(crate) use awaiting_fan_out;

impl DieselStore {
    /// Outbox claims this node's previous process left when it died are due again at once,
    /// not when their lease runs out; each is sent again (its outcome is unknown). Call it
    /// before this process claims anything. Returns how many.
    pub async fn take_back_own_claims(&self) -> Result<usize, DbError> {
        let (node, started) = (self.node.id.as_str(), self.node.started_at);
        // Still a lease (not NULL), and already over: the next claim takes them as resends.
        let over = started - Duration::seconds(1);
        Ok(with_conn!(&self.db, |conn| diesel::update(
            outbox::table
                .filter(outbox::claimed_by.eq(node))
                .filter(outbox::status.eq("pending"))
                .filter(outbox::claimed_until.gt(over))
        )
        .set(outbox::claimed_until.eq(over))
        .execute(conn)
        .await)?)
    }
}

#[async_trait]
impl Outbox for DieselStore {
    async fn fan_out(&self, limit: i64, lease: Lease<'_>) -> Result<FannedOut, CommandError> {
        crate::db::counted(NOTIFY, async { self.fan_out_events(limit, lease).await }).await
    }

    async fn queue_digests(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, CommandError> {
        crate::db::counted(NOTIFY, async { self.queue_due_digests(now).await }).await
    }

    async fn claim_due(&self, limit: i64, skip: &[String]) -> Result<Vec<Claimed>, CommandError> {
        crate::db::counted(NOTIFY, self.claim_due_messages(limit, skip)).await
    }

    async fn mark_sent(&self, ids: &[String]) -> Result<(), CommandError> {
        crate::db::operations(NOTIFY, ids.len());
        crate::db::counted(NOTIFY, async {
            let at = now();
            if let Db::Pg(pool) = &self.db {
                return mark_sent_pg(pool, ids, at).await;
            }
            with_conn!(&self.db, |conn| conn
                .transaction(async |conn| {
                    let sent: Vec<(String, i32)> =
                        diesel::update(outbox::table.filter(outbox::id.eq_any(ids)))
                            .set((
                                outbox::status.eq("sent"),
                                outbox::sent_at.eq(Some(at)),
                                outbox::attempts.eq(outbox::attempts + 1),
                                outbox::claimed_until.eq(None::<NaiveDateTime>),
                            ))
                            .returning((outbox::id, outbox::attempts))
                            .get_results(conn)
                            .await?;
                    // Row by row: diesel-async takes no multi-row insert on SQLite. One
                    // transaction either way, so one turn at the write lock.
                    for (id, attempt) in &sent {
                        let sent = Attempt {
                            outbox_id: id,
                            attempt: *attempt,
                            at,
                            outcome: "sent",
                            detail: None,
                        };
                        conn.record_attempt(sent).await?;
                    }
                    Ok::<_, diesel::result::Error>(())
                })
                .await
                .map_err(DbError::from))?;
            Ok(())
        })
        .await
    }

    async fn mark_failed(
        &self,
        id: &str,
        error: &str,
        retry_in_ms: Option<i64>,
    ) -> Result<(), CommandError> {
        crate::db::counted(NOTIFY, async {
            let at = now();
            let (status, next) = match retry_in_ms {
                Some(ms) => ("pending", at + Duration::milliseconds(ms)),
                None => ("dead", at),
            };
            let outcome = if retry_in_ms.is_some() {
                "retry"
            } else {
                "dead"
            };
            with_conn!(&self.db, |conn| conn
                .transaction(async |conn| {
                    let attempt: i32 = diesel::update(outbox::table.find(id))
                        .set((
                            outbox::status.eq(status),
                            outbox::next_attempt_at.eq(next),
                            outbox::attempts.eq(outbox::attempts + 1),
                            outbox::last_error.eq(Some(error)),
                            outbox::claimed_until.eq(None::<NaiveDateTime>),
                        ))
                        .returning(outbox::attempts)
                        .get_result(conn)
                        .await?;
                    let failed = Attempt {
                        outbox_id: id,
                        attempt,
                        at,
                        outcome,
                        detail: Some(error),
                    };
                    conn.record_attempt(failed).await?;
                    Ok::<_, diesel::result::Error>(())
                })
                .await
                .map_err(DbError::from))?;
            Ok(())
        })
        .await
    }

    async fn defer(&self, id: &str, delay_ms: i64) -> Result<(), CommandError> {
        crate::db::counted(NOTIFY, async {
            let next = now() + Duration::milliseconds(delay_ms);
            with_conn!(&self.db, |conn| diesel::update(
                outbox::table
                    .filter(outbox::id.eq(id))
                    .filter(outbox::status.eq("pending"))
            )
            .set((
                outbox::next_attempt_at.eq(next),
                outbox::claimed_until.eq(None::<NaiveDateTime>),
            ))
            .execute(conn)
            .await
            .map_err(DbError::from))?;
            Ok(())
        })
        .await
    }

    async fn stats(&self) -> Result<OutboxStats, CommandError> {
        let at = now();
        let pending: i64 = with_conn!(&self.db, |conn| outbox::table
            .filter(outbox::status.eq("pending"))
            .count()
            .get_result(conn)
            .await
            .map_err(DbError::from))?;
        // Low-priority messages may be waiting out quiet hours on purpose: not a backlog.
        let oldest_due: Option<NaiveDateTime> = with_conn!(&self.db, |conn| outbox::table
            .filter(outbox::status.eq("pending"))
            .filter(outbox::priority.gt(Priority::Low.rank()))
            .select(diesel::dsl::min(outbox::created_at))
            .first(conn)
            .await
            .map_err(DbError::from))?;
        let dead: i64 = with_conn!(&self.db, |conn| outbox::table
            .filter(outbox::status.eq("dead"))
            .count()
            .get_result(conn)
            .await
            .map_err(DbError::from))?;
        // News committed but not yet fanned out is waiting too, and its age counts.
        let (awaiting_fan_out, oldest_event): (i64, Option<NaiveDateTime>) =
            with_conn!(&self.db, |conn| awaiting_fan_out!()
                .first(conn)
                .await
                .map_err(DbError::from))?;
        let oldest = oldest_due.into_iter().chain(oldest_event).min();
        Ok(OutboxStats {
            pending,
            oldest_pending_secs: oldest.map_or(0, |t| (at - t).num_seconds().max(0)),
            dead,
            awaiting_fan_out,
        })
    }
}

/// Dead letters, newest first; of one school, or all.
pub async fn dead_letters(
    db: &Db,
    school_id: Option<&str>,
    limit: i64,
) -> Result<Vec<OutboxRow>, DbError> {
    Ok(with_conn!(db, |conn| {
        let mut query = outbox::table
            .filter(outbox::status.eq("dead"))
            .order((outbox::created_at.desc(), outbox::id.desc()))
            .limit(limit)
            .select(OutboxRow::as_select())
            .into_boxed();
        if let Some(school_id) = school_id {
            query = query.filter(outbox::school_id.eq(school_id));
        }
        query.load(conn).await
    })?)
}

pub async fn outbox_row(db: &Db, id: &str) -> Result<Option<OutboxRow>, DbError> {
    crate::db::find(db, id).await
}

impl DieselStore {
    /// Puts a dead letter back in the queue as new: due now, attempts from zero, a fresh
    /// expiry; dispatch is woken. False if it is not (or no longer) dead.
    pub async fn requeue_dead_letter(
        &self,
        id: &str,
        expires_at: Option<NaiveDateTime>,
    ) -> Result<bool, DbError> {
        let at = now();
        let n = with_conn!(&self.db, |conn| diesel::update(
            outbox::table
                .filter(outbox::id.eq(id))
                .filter(outbox::status.eq("dead"))
        )
        .set((
            outbox::status.eq("pending"),
            outbox::attempts.eq(0),
            outbox::next_attempt_at.eq(at),
            outbox::claimed_until.eq(None::<NaiveDateTime>),
            outbox::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await)?;
        if n > 0 {
            self.wake_dispatch(super::Wake::Messages);
        }
        Ok(n > 0)
    }
}

/// Every recorded delivery attempt of these outbox rows, oldest first.
pub async fn delivery_attempts_of(
    db: &Db,
    outbox_ids: &[String],
) -> Result<Vec<(String, i32, NaiveDateTime, String, Option<String>)>, DbError> {
    Ok(with_conn!(db, |conn| delivery_attempts::table
        .filter(delivery_attempts::outbox_id.eq_any(outbox_ids))
        .order((
            delivery_attempts::at.asc(),
            delivery_attempts::attempt.asc()
        ))
        .select((
            delivery_attempts::outbox_id,
            delivery_attempts::attempt,
            delivery_attempts::at,
            delivery_attempts::outcome,
            delivery_attempts::detail,
        ))
        .load(conn)
        .await)?)
}

/// Every outbox row an order's events made, oldest first.
pub async fn order_notifications(db: &Db, order_id: &str) -> Result<Vec<OutboxRow>, DbError> {
    Ok(with_conn!(db, |conn| outbox::table
        .inner_join(
            order_events::table.on(order_events::school_id
                .eq(outbox::school_id)
                .and(order_events::seq.eq(outbox::event_seq))),
        )
        .filter(order_events::order_id.eq(order_id))
        .order((outbox::created_at.asc(), outbox::id.asc()))
        .select(OutboxRow::as_select())
        .load(conn)
        .await)?)
}
