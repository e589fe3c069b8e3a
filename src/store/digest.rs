//! The daily digest: at a school's evening time, each guardian of a child who ordered there
//! that day gets one email with the day's orders and pickups of every such child.
//!
//! A school's day is queued once: one transaction marks the day done (only if it is not yet:
//! another node, or an earlier run that committed, wins) and writes one outbox row per
//! guardian, keyed `digest:<school>:<guardian>:<day>` besides. A crash before the commit leaves
//! the day to be queued again; after it, dispatch sends the rows like any message, once.

use super::notices::{
    NoticeData, PREFERENCE, RECIPIENT, RecipientRow, SchoolNotice, outbox_rows, recipient,
};
use super::{DieselStore, TxError};
use crate::db::DbError;
use crate::db::schema::{
    guardian_links, notification_preferences, order_events, orders, outbox, schools, users,
};
use crate::with_conn;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use std::collections::{BTreeMap, HashSet};
use tiffin_actors::domain::OrderSummary;
use tiffin_actors::notices::{Kind, Recipient, digest_due, intents};
use tiffin_actors::ports::CommandError;

/// When digests go out where neither the school nor the configuration says.
pub const DEFAULT_DIGEST_AT: NaiveTime = match NaiveTime::from_hms_opt(18, 0, 0) {
    Some(t) => t,
    None => NaiveTime::MIN,
};

/// The dedup key of a guardian's digest of one school day.
pub fn digest_key(school_id: &str, guardian_id: &str, day: NaiveDate) -> String {
    format!("digest:{school_id}:{guardian_id}:{day}")
}

/// A school's day as UTC instants: its local midnight to the next (where a clock change
/// skips midnight, the day starts when the clock does, an hour later).
fn day_bounds(tz: chrono_tz::Tz, day: NaiveDate) -> Option<(NaiveDateTime, NaiveDateTime)> {
    let midnight = |d: NaiveDate| {
        let local = d.and_time(NaiveTime::MIN);
        local
            .and_local_timezone(tz)
            .earliest()
            .or_else(|| {
                (local + chrono::TimeDelta::hours(1))
                    .and_local_timezone(tz)
                    .earliest()
            })
            .map(|t| t.naive_utc())
    };
    Some((midnight(day)?, midnight(day.succ_opt()?)?))
}

impl DieselStore {
    /// Queues the digests of every school whose digest time has come today and whose day is
    /// not done yet; returns how many messages it queued. A school that fails is logged and
    /// tried again at the next check; the others go on.
    pub(super) async fn queue_due_digests(
        &self,
        now: DateTime<Utc>,
    ) -> Result<usize, CommandError> {
        let schools: Vec<(String, String, Option<String>, Option<String>)> =
            with_conn!(&self.db, |conn| schools::table
                .select((
                    schools::id,
                    schools::time_zone,
                    schools::digest_at,
                    schools::digest_done_on,
                ))
                .load(conn)
                .await
                .map_err(DbError::from))?;
        let mut queued = 0;
        for (school_id, time_zone, at, done) in schools {
            let tz: chrono_tz::Tz = time_zone.parse().unwrap_or(chrono_tz::UTC);
            let at = at
                .as_deref()
                .and_then(super::parse_time_of_day)
                .unwrap_or(self.digest_at);
            let done = done.and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
            let Some(day) = digest_due(now.with_timezone(&tz).naive_local(), at, done) else {
                continue;
            };
            match self.queue_digests_of(&school_id, tz, day, now).await {
                Ok(n) => queued += n,
                Err(e) => {
                    tracing::warn!(school = %school_id, %day, error = %e, "daily digests not queued; will retry");
                }
            }
        }
        Ok(queued)
    }

    /// One school's digests of `day`, in one transaction; none if the day was done already.
    async fn queue_digests_of(
        &self,
        school_id: &str,
        tz: chrono_tz::Tz,
        day: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<usize, CommandError> {
        let (start, end) = day_bounds(tz, day)
            .ok_or_else(|| CommandError::Internal(format!("no local midnight on {day}")))?;
        let day_text = day.format("%Y-%m-%d").to_string();
        let fallback = self.sms_fallback_after;
        let at = now.naive_utc();
        let queued = with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                // Claims the day (and a notice number for the rows' keys): the first
                // transaction on any node wins, the others find it done.
                let claimed: Option<(i64, SchoolNotice)> = diesel::update(
                    schools::table.find(school_id).filter(
                        schools::digest_done_on
                            .is_null()
                            .or(schools::digest_done_on.lt(&day_text)),
                    ),
                )
                .set((
                    schools::digest_done_on.eq(&day_text),
                    schools::notice_seq.eq(schools::notice_seq + 1),
                ))
                .returning((
                    schools::notice_seq,
                    (
                        schools::name,
                        schools::time_zone,
                        schools::quiet_hours_start,
                        schools::quiet_hours_end,
                    ),
                ))
                .get_result(conn)
                .await
                .optional()?;
                let Some((notice, school)) = claimed else {
                    return Ok::<_, TxError>(0);
                };
                // The day's orders: placed that day, or collected that day (pre-orders).
                let snapshots: Vec<String> = order_events::table
                    .inner_join(
                        orders::table.on(orders::id
                            .eq(order_events::order_id)
                            .and(orders::version.eq(order_events::version))),
                    )
                    .filter(orders::school_id.eq(school_id))
                    .filter(
                        orders::created_at
                            .ge(start)
                            .and(orders::created_at.lt(end))
                            .or(orders::pickup_day.eq(&day_text)),
                    )
                    .select(order_events::snapshot)
                    .load(conn)
                    .await?;
                let mut by_student: BTreeMap<String, Vec<OrderSummary>> = BTreeMap::new();
                for s in &snapshots {
                    let order: OrderSummary = serde_json::from_str(s).map_err(super::json_error)?;
                    by_student
                        .entry(order.student_id.clone())
                        .or_default()
                        .push(order);
                }
                if by_student.is_empty() {
                    return Ok(0);
                }
                let students: Vec<&str> = by_student.keys().map(String::as_str).collect();
                let person = RECIPIENT;
                let links: Vec<(String, RecipientRow)> = guardian_links::table
                    .inner_join(users::table.on(users::id.eq(guardian_links::guardian_id)))
                    .filter(guardian_links::student_id.eq_any(&students))
                    .filter(users::active.eq(true))
                    .select((guardian_links::student_id, person))
                    .load(conn)
                    .await?;
                // Each guardian with the children of theirs who ordered, in id order.
                let mut guardians: BTreeMap<String, (RecipientRow, Vec<String>)> = BTreeMap::new();
                for (student, guardian) in links {
                    guardians
                        .entry(guardian.0.clone())
                        .or_insert_with(|| (guardian, Vec::new()))
                        .1
                        .push(student);
                }
                let ids: Vec<&str> = guardians.keys().map(String::as_str).collect();
                let choices: Vec<(String, String, String, bool)> = notification_preferences::table
                    .filter(notification_preferences::user_id.eq_any(&ids))
                    .filter(notification_preferences::event_kind.eq(Kind::DailyDigest.as_str()))
                    .select(PREFERENCE)
                    .load(conn)
                    .await?;
                let no_push = HashSet::new();
                let mut queued = 0;
                for (guardian_id, (row, children)) in guardians {
                    let r: Recipient = recipient(row, &no_push, &choices);
                    let audience = [&r];
                    let chosen = intents(Kind::DailyDigest, &audience);
                    if chosen.is_empty() {
                        continue;
                    }
                    let data = serde_json::json!({
                        "day": day_text,
                        "children": children_of(&by_student, &children),
                    });
                    for mut row in outbox_rows(
                        Kind::DailyDigest,
                        chosen,
                        &audience,
                        &NoticeData::of(&data),
                        (school_id, -notice),
                        &school,
                        at,
                        fallback,
                    ) {
                        row.dedup_key = Some(digest_key(school_id, &guardian_id, day));
                        queued += diesel::insert_into(outbox::table)
                            .values(&row)
                            .on_conflict_do_nothing()
                            .execute(conn)
                            .await?;
                    }
                }
                Ok(queued)
            })
            .await)?;
        Ok(queued)
    }
}

/// The digest's children: each one's name and orders, by name, orders as placed.
fn children_of(
    by_student: &BTreeMap<String, Vec<OrderSummary>>,
    children: &[String],
) -> Vec<serde_json::Value> {
    let mut out: Vec<(String, Vec<&OrderSummary>)> = children
        .iter()
        .filter_map(|id| {
            let mut orders: Vec<&OrderSummary> = by_student.get(id)?.iter().collect();
            orders.sort_by_key(|o| o.placed_at);
            let name = <[_]>::first(&orders)?.student_name.clone();
            Some((name, orders))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter()
        .map(|(name, orders)| serde_json::json!({"name": name, "orders": orders}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_school_day_is_its_local_midnight_to_the_next() {
        let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        let (start, end) = day_bounds(tz, day).unwrap();
        assert_eq!(start.to_string(), "2026-12-07 05:00:00");
        assert_eq!(end.to_string(), "2026-12-08 05:00:00");
        // Havana's clocks go from 00:00 to 01:00 on 8 March 2026: that day starts at 01:00.
        let havana: chrono_tz::Tz = "America/Havana".parse().unwrap();
        let skipped = NaiveDate::from_ymd_opt(2026, 3, 8).unwrap();
        let (start, _) = day_bounds(havana, skipped).unwrap();
        assert_eq!(start.to_string(), "2026-03-08 05:00:00");
        assert_eq!(
            digest_key("s", "g", day),
            "digest:s:g:2026-12-07",
            "one key per school, guardian and day"
        );
    }
}
