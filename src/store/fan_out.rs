//! Fan-out: committed events that make a notice become outbox rows, one per recipient and
//! channel, in batches. The hot path writes only the event (with its notice); who hears
//! what is decided here, by the same rules and preferences, a batch of events at a time.
//!
//! A batch is one transaction: take the events (marking them fanned out), read their
//! schools and audiences set-wise, write every row. Rows are keyed by (event, recipient,
//! channel), and an event is taken in the transaction that writes its rows: once. In-app
//! messages due at once are sent in that transaction too (stored in their inboxes, marked
//! sent): once, and published after the commit.

use super::batch::{one_by_one, pipelined, unless_none};
use super::claim::{CLAIM_LEASE_SECS, outbox_message};
use super::inbox::{InPlaceDelivery, InboxRow, StoreNew, store_new_pg};
use super::notices::{
    NoticeData, PREFERENCE, RECIPIENT, RecipientRow, SchoolNotice, outbox_rows, recipient,
};
use super::outbox::{NOTIFY, RecordSentInPlace, sent_in_place_pg};
use super::sequence::GENERIC_PLANS_PG;
use super::{DieselStore, TxError};
use crate::db::models::{OutboxRow, now};
use crate::db::schema::{device_tokens, guardian_links, notification_preferences, schools, users};
use crate::db::{DbError, InsertRows, insert_outbox_pg};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
use diesel_async::{AsyncConnection, RunQueryDsl};
use std::collections::{HashMap, HashSet};
use tiffin_actors::domain::{OrderState, Role};
use tiffin_actors::notices::{Audience, Channel, Kind, Recipient, intents};
use tiffin_actors::ports::{Claimed, CommandError, FannedOut, Lease, Needed};

/// Takes up to `$1` events waiting for fan-out, oldest first, deleting them from the queue;
/// other nodes skip the rows this one holds. The rows taken are found again by their physical
/// address (a locked row keeps it): matched by key, the planner hashed every row each time
/// (13,000 for 19 taken, BENCHMARKS.md); each event is then probed by its key.
pub(crate) const TAKE_PG: &str = "WITH taken AS ( \
    DELETE FROM fan_out_queue WHERE ctid = ANY(ARRAY(SELECT ctid FROM fan_out_queue \
    ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)) RETURNING school_id, seq) \
SELECT e.* FROM taken CROSS JOIN LATERAL ( \
    SELECT e.school_id, e.seq, e.snapshot, e.notice, e.notice_skip, e.created_at, \
        (SELECT state FROM orders WHERE id = e.order_id) AS order_state \
    FROM order_events e WHERE e.school_id = taken.school_id AND e.seq = taken.seq LIMIT 1) e";
/// SQLite has one writer: nothing to skip. A `DELETE` cannot be a CTE there: its event's
/// columns come by key.
const TAKE_SQLITE: &str = "DELETE FROM fan_out_queue \
     WHERE (created_at, school_id, seq) IN (SELECT created_at, school_id, seq \
     FROM fan_out_queue ORDER BY created_at LIMIT ?) \
     RETURNING school_id, seq, created_at, \
     (SELECT snapshot FROM order_events e WHERE e.school_id = fan_out_queue.school_id \
        AND e.seq = fan_out_queue.seq) AS snapshot, \
     (SELECT notice FROM order_events e WHERE e.school_id = fan_out_queue.school_id \
        AND e.seq = fan_out_queue.seq) AS notice, \
     (SELECT notice_skip FROM order_events e WHERE e.school_id = fan_out_queue.school_id \
        AND e.seq = fan_out_queue.seq) AS notice_skip, \
     (SELECT o.state FROM order_events e JOIN orders o ON o.id = e.order_id \
        WHERE e.school_id = fan_out_queue.school_id AND e.seq = fan_out_queue.seq) \
        AS order_state";

#[derive(QueryableByName)]
struct NoticeDue {
    #[diesel(sql_type = Text)]
    school_id: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    snapshot: String,
    #[diesel(sql_type = Nullable<Text>)]
    notice: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    notice_skip: Option<String>,
    #[diesel(sql_type = Timestamp)]
    created_at: NaiveDateTime,
    /// Its order's state now, as a claim would judge the news by.
    #[diesel(sql_type = Nullable<Text>)]
    order_state: Option<String>,
}

/// The student and school a notice is about, and its rule's audience.
struct Due {
    event: NoticeDue,
    kind: Kind,
    student_id: String,
    data: NoticeData,
}

/// The one field of an event's order the fan-out reads; the rest goes on as text.
#[derive(serde::Deserialize)]
struct OrderOf<'a> {
    #[serde(borrow)]
    student_id: std::borrow::Cow<'a, str>,
}

impl Due {
    fn of(event: NoticeDue) -> Option<Due> {
        let kind = Kind::parse(event.notice.as_deref()?)?;
        let student_id = serde_json::from_str::<OrderOf>(&event.snapshot)
            .ok()?
            .student_id
            .into_owned();
        let data = NoticeData::order(&event.snapshot);
        Some(Due {
            event,
            kind,
            student_id,
            data,
        })
    }

    fn audience(&self) -> Audience {
        self.kind.rule().audience
    }

    /// Whether its news is still true of its order (a claim's judgement; no order: true).
    fn still_true(&self) -> bool {
        self.event
            .order_state
            .as_deref()
            .and_then(OrderState::parse)
            .is_none_or(|state| self.kind.still_true(state))
    }
}

/// A fan-out's first and last statements, each step sent together on PostgreSQL.
trait FanOutSteps {
    /// Generic plans for the transaction (its statements, planned afresh, were most of
    /// dispatch's PostgreSQL time), then up to `limit` events taken off the queue.
    async fn take_due(&mut self, limit: i64) -> QueryResult<Vec<NoticeDue>>;
    /// The outbox rows written and, of the in-app messages sent in place (`delivered`), their
    /// attempts recorded and the messages stored: yields them numbered.
    async fn write_fanned_out(
        &mut self,
        rows: &[OutboxRow],
        delivered: Vec<InboxRow>,
        at: NaiveDateTime,
    ) -> QueryResult<Vec<InboxRow>>;
}

impl FanOutSteps for crate::db::PgConn {
    async fn take_due(&mut self, limit: i64) -> QueryResult<Vec<NoticeDue>> {
        let conn: &crate::db::PgConn = self;
        let (_, due) = pipelined!(
            crate::db::kept(diesel::sql_query(GENERIC_PLANS_PG)).execute(&mut &*conn),
            crate::db::kept(diesel::sql_query(TAKE_PG).bind::<BigInt, _>(limit))
                .load::<NoticeDue>(&mut &*conn),
        );
        Ok(due)
    }

    async fn write_fanned_out(
        &mut self,
        rows: &[OutboxRow],
        delivered: Vec<InboxRow>,
        at: NaiveDateTime,
    ) -> QueryResult<Vec<InboxRow>> {
        let conn: &crate::db::PgConn = self;
        if delivered.is_empty() {
            insert_outbox_pg(conn, rows).await?;
            return Ok(Vec::new());
        }
        let ids: Vec<String> = delivered.iter().map(|m| m.id.clone()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let (_, _, stored) = pipelined!(
            insert_outbox_pg(conn, rows),
            sent_in_place_pg(conn, &ids, at),
            store_new_pg(conn, delivered),
        );
        Ok(stored)
    }
}

impl FanOutSteps for crate::db::SqliteConn {
    async fn take_due(&mut self, limit: i64) -> QueryResult<Vec<NoticeDue>> {
        crate::db::kept(diesel::sql_query(TAKE_SQLITE).bind::<BigInt, _>(limit))
            .load(self)
            .await
    }

    async fn write_fanned_out(
        &mut self,
        rows: &[OutboxRow],
        delivered: Vec<InboxRow>,
        at: NaiveDateTime,
    ) -> QueryResult<Vec<InboxRow>> {
        self.insert_rows(rows).await?;
        if delivered.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = delivered.iter().map(|m| m.id.as_str()).collect();
        self.record_sent_in_place(&ids, at).await?;
        self.store_new(delivered).await
    }
}

/// A stored choice: (user, kind, channel, enabled).
type Choice = (String, String, String, bool);

/// A batch's schools, the students told of their own news, guardians by student and kitchen
/// staff by school.
type AudienceRows = (
    Vec<(String, SchoolNotice)>,
    Vec<RecipientRow>,
    Vec<(String, RecipientRow)>,
    Vec<(Option<String>, RecipientRow)>,
);

/// A batch's reads in two steps, each sent together on PostgreSQL (one round trip each, where
/// up to six went one after another) and one by one on SQLite.
trait FanOutReads {
    /// The schools, and the people of each audience the batch's notices name.
    async fn audiences(
        &mut self,
        school_ids: &[&str],
        family: &[&str],
        with_guardians: &[&str],
        kitchens: &[&str],
    ) -> QueryResult<AudienceRows>;
    /// Which of `ids` have an active device, and their choices.
    async fn reachable(&mut self, ids: &[String]) -> QueryResult<(Vec<String>, Vec<Choice>)>;
}

macro_rules! fan_out_reads {
    ($conn:ty, $join:ident, |$this:ident| $c0:expr, $c1:expr, $c2:expr, $c3:expr) => {
        impl FanOutReads for $conn {
            async fn audiences(
                &mut self,
                school_ids: &[&str],
                family: &[&str],
                with_guardians: &[&str],
                kitchens: &[&str],
            ) -> QueryResult<AudienceRows> {
                let $this = self;
                let person = RECIPIENT;
                Ok($join!(
                    schools::table
                        .filter(schools::id.eq_any(school_ids))
                        .select((
                            schools::id,
                            (
                                schools::name,
                                schools::time_zone,
                                schools::quiet_hours_start,
                                schools::quiet_hours_end,
                            ),
                        ))
                        .load::<(String, SchoolNotice)>($c0),
                    unless_none(family, || users::table
                        .filter(users::id.eq_any(family))
                        .filter(users::active.eq(true))
                        .select(person)
                        .load::<RecipientRow>($c1)),
                    unless_none(with_guardians, || guardian_links::table
                        .inner_join(users::table.on(users::id.eq(guardian_links::guardian_id)))
                        .filter(guardian_links::student_id.eq_any(with_guardians))
                        .filter(users::active.eq(true))
                        .order((guardian_links::student_id.asc(), users::id.asc()))
                        .select((guardian_links::student_id, person))
                        .load::<(String, RecipientRow)>($c2)),
                    unless_none(kitchens, || users::table
                        .filter(users::school_id.eq_any(kitchens))
                        .filter(users::role.eq(Role::KitchenStaff.as_str()))
                        .filter(users::active.eq(true))
                        .order(users::id.asc())
                        .select((users::school_id, person))
                        .load::<(Option<String>, RecipientRow)>($c3)),
                ))
            }

            async fn reachable(
                &mut self,
                ids: &[String],
            ) -> QueryResult<(Vec<String>, Vec<Choice>)> {
                let $this = self;
                Ok($join!(
                    device_tokens::table
                        .filter(device_tokens::user_id.eq_any(ids))
                        .filter(device_tokens::active.eq(true))
                        .select(device_tokens::user_id)
                        .load::<String>($c0),
                    notification_preferences::table
                        .filter(notification_preferences::user_id.eq_any(ids))
                        .select(PREFERENCE)
                        .load::<Choice>($c1),
                ))
            }
        }
    };
}
fan_out_reads!(
    crate::db::PgConn,
    pipelined,
    |conn| &mut &*conn,
    &mut &*conn,
    &mut &*conn,
    &mut &*conn
);
fan_out_reads!(
    crate::db::SqliteConn,
    one_by_one,
    |conn| &mut *conn,
    &mut *conn,
    &mut *conn,
    &mut *conn
);

/// Everyone the notices of a batch may go to, read set-wise.
#[derive(Default)]
struct People {
    students: HashMap<String, RecipientRow>,
    /// Each student's active guardians, in id order.
    guardians: HashMap<String, Vec<RecipientRow>>,
    /// Each school's active kitchen staff, in id order.
    staff: HashMap<String, Vec<RecipientRow>>,
    with_push: HashSet<String>,
    choices: Vec<Choice>,
}

impl People {
    /// Who hears of `due`, as `NoticeReads::audience` (`notices.rs`) chooses for a single notice.
    fn of(&self, due: &Due) -> Vec<Recipient> {
        let mut rows: Vec<&RecipientRow> = Vec::new();
        let audience = due.audience();
        if audience == Audience::Family {
            rows.extend(self.students.get(&due.student_id));
        }
        if matches!(audience, Audience::Family | Audience::Guardians) {
            rows.extend(self.guardians.get(&due.student_id).into_iter().flatten());
        }
        if audience == Audience::Kitchen {
            rows.extend(self.staff.get(&due.event.school_id).into_iter().flatten());
        }
        rows.into_iter()
            .filter(|r| Some(r.0.as_str()) != due.event.notice_skip.as_deref())
            .map(|r| recipient(r.clone(), &self.with_push, &self.choices))
            .collect()
    }
}

impl DieselStore {
    /// Fans out up to `limit` committed events into outbox rows, leasing what `lease` allows.
    pub(super) async fn fan_out_events(
        &self,
        limit: i64,
        lease: Lease<'_>,
    ) -> Result<FannedOut, CommandError> {
        let fallback = self.sms_fallback_after;
        let node = self.node.id.as_str();
        let in_app = self.in_app.get().map(|d| d.as_ref());
        let taken = with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let events = conn.take_due(limit).await?;
                let taken = events.len();
                let mut due: Vec<Due> = events.into_iter().filter_map(Due::of).collect();
                if due.is_empty() {
                    let none = FannedOut {
                        events: taken,
                        ..FannedOut::default()
                    };
                    return Ok::<_, TxError>((none, Vec::new()));
                }
                due.sort_by(|a, b| {
                    (a.event.created_at, &a.event.school_id, a.event.seq).cmp(&(
                        b.event.created_at,
                        &b.event.school_id,
                        b.event.seq,
                    ))
                });
                let school_ids: Vec<&str> = unique(due.iter().map(|d| d.event.school_id.as_str()));
                let of_audience = |pick: &dyn Fn(Audience) -> bool| {
                    unique(
                        due.iter()
                            .filter(|d| pick(d.audience()))
                            .map(|d| d.student_id.as_str()),
                    )
                };
                let family = of_audience(&|a| a == Audience::Family);
                let with_guardians =
                    of_audience(&|a| matches!(a, Audience::Family | Audience::Guardians));
                let kitchens: Vec<&str> = unique(
                    due.iter()
                        .filter(|d| d.audience() == Audience::Kitchen)
                        .map(|d| d.event.school_id.as_str()),
                );
                let (schools, students, links, staff) = conn
                    .audiences(&school_ids, &family, &with_guardians, &kitchens)
                    .await?;
                let schools: HashMap<String, SchoolNotice> = schools.into_iter().collect();
                let mut people = People {
                    students: students.into_iter().map(|r| (r.0.clone(), r)).collect(),
                    ..People::default()
                };
                for (student, guardian) in links {
                    people.guardians.entry(student).or_default().push(guardian);
                }
                for (school, member) in staff {
                    if let Some(school) = school {
                        people.staff.entry(school).or_default().push(member);
                    }
                }
                let ids: Vec<String> = unique(
                    people
                        .students
                        .keys()
                        .chain(people.guardians.values().flatten().map(|r| &r.0))
                        .chain(people.staff.values().flatten().map(|r| &r.0))
                        .map(String::as_str),
                )
                .into_iter()
                .map(str::to_owned)
                .collect();
                if !ids.is_empty() {
                    let (with_push, choices) = conn.reachable(&ids).await?;
                    people.with_push = with_push.into_iter().collect();
                    people.choices = choices;
                }
                let mut rows = Vec::new();
                let mut leasing = Leasing::new(lease, node, in_app);
                for d in &due {
                    let Some(school) = schools.get(&d.event.school_id) else {
                        continue;
                    };
                    let recipients = people.of(d);
                    let audience: Vec<&Recipient> = recipients.iter().collect();
                    let mut written = outbox_rows(
                        d.kind,
                        intents(d.kind, &audience),
                        &audience,
                        &d.data,
                        (&d.event.school_id, d.event.seq),
                        school,
                        d.event.created_at,
                        fallback,
                    );
                    if d.still_true() {
                        written.iter_mut().for_each(|row| leasing.offer(row));
                    }
                    rows.extend(written);
                }
                // Taking the events dequeued them in this transaction: no row can exist yet.
                let delivered = std::mem::take(&mut leasing.delivered);
                let asked = delivered.len();
                let stored = conn.write_fanned_out(&rows, delivered, leasing.at).await?;
                // Its recipients were read in this transaction: every one is a user.
                if stored.len() != asked {
                    return Err(TxError::Db(DbError::Other(format!(
                        "{} of {asked} in-app messages found no user",
                        asked - stored.len()
                    ))));
                }
                metrics::counter!("notify_fanned_out_total").increment(rows.len() as u64);
                Ok((
                    FannedOut {
                        events: taken,
                        messages: rows.len(),
                        leased: leasing.leased,
                        delivered: stored.len(),
                    },
                    stored,
                ))
            })
            .await)
        .map_err(CommandError::from)?;
        let (fanned_out, stored) = taken;
        if let Some(in_app) = in_app {
            crate::db::operations(NOTIFY, stored.len());
            in_app.publish(&stored);
        }
        Ok(fanned_out)
    }
}

/// What a fan-out hands on as it writes its rows: the in-app messages due at once it sends
/// itself, stored in their inboxes in its transaction (`InPlaceDelivery`); of the rest, those
/// a claim made at once would send it leases to its dispatcher, up to the lease's size. A
/// message not yet due (quiet hours, an SMS fallback) or on a full channel is left to the
/// claims.
struct Leasing<'a> {
    lease: Lease<'a>,
    node: &'a str,
    in_app: Option<&'a dyn InPlaceDelivery>,
    at: NaiveDateTime,
    until: NaiveDateTime,
    leased: Vec<Claimed>,
    /// In-app messages sent here, not yet numbered.
    delivered: Vec<InboxRow>,
}

impl<'a> Leasing<'a> {
    fn new(
        lease: Lease<'a>,
        node: &'a str,
        in_app: Option<&'a dyn InPlaceDelivery>,
    ) -> Leasing<'a> {
        let at = now();
        Leasing {
            lease,
            node,
            in_app,
            at,
            until: at + chrono::Duration::seconds(CLAIM_LEASE_SECS),
            leased: Vec::new(),
            delivered: Vec::new(),
        }
    }

    fn offer(&mut self, row: &mut OutboxRow) {
        let due = row.next_attempt_at <= self.at
            && row.expires_at.is_none_or(|t| t > self.at)
            && row.fallback_for.is_none();
        if !due {
            return;
        }
        if row.channel == Channel::InApp.as_str()
            && let Some(in_app) = self.in_app
        {
            // One its template cannot render is left to the sender, which dead-letters it.
            if let Ok(message) = in_app.inbox_row(&outbox_message(row.clone())) {
                row.status = "sent".into();
                row.attempts = 1;
                row.sent_at = Some(self.at);
                self.delivered.push(message);
                return;
            }
        }
        if self.leased.len() >= self.lease.most || self.lease.skip.contains(&row.channel) {
            return;
        }
        row.claimed_until = Some(self.until);
        row.claimed_by = Some(self.node.to_owned());
        self.leased.push(Claimed {
            message: outbox_message(row.clone()),
            needed: Needed::Yes,
            resend: false,
        });
    }
}

/// The distinct values, in first-seen order.
fn unique<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    values.filter(|v| seen.insert(*v)).collect()
}
