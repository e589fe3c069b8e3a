//! The diesel adapter of the actors' `Store` and `Outbox` ports. Every write that makes an
//! event bumps the school's event sequence first: that takes the write lock at once on
//! SQLite and serialises a kitchen's commits on PostgreSQL, so sequence numbers are gapless.

use crate::db::models::{MealRow, OrderEventRow, OutboxRow, ServiceWindowRow, now};
use crate::db::schema::{
    counters, delivery_attempts, device_tokens, guardian_links, notification_preferences,
    order_events, orders, outbox, schools, users,
};
use crate::db::{Db, DbError};
use crate::group_commit::GroupCommit;
use crate::with_conn;
use async_trait::async_trait;
use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tiffin_actors::domain::{
    COUNTER_CHANGED, CounterRef, KitchenEvent, OrderLine, OrderState, OrderSummary, Role, Wave,
    allergy_conflicts, assign_counter,
};
use tiffin_actors::notices::{
    Audience, Channel, Kind, NotificationIntent, Preference, Priority, QuietHours, Recipient,
    first_attempt_delay, intents, kind_of_alert,
};
use tiffin_actors::ports::{
    AlertCommit, Claimed, CommandError, CounterMove, Idempotency, KitchenSnapshot, NewOrder,
    Outbox, OutboxStats, Placed, Store, TransitionCommit,
};

/// How long a dispatcher holds a claimed outbox row before another may take it.
const CLAIM_LEASE_SECS: i64 = 60;
const MAX_ITEM_QUANTITY: i32 = 20;
const MAX_ITEMS: usize = 20;

/// Orders that wait for one commit together.
const ORDER_BATCH: usize = 64;
/// Transitions that wait for one commit together.
const TRANSITION_BATCH: usize = 128;
/// Batches of each kind that commit side by side on PostgreSQL.
const PG_WRITERS: usize = 2;

/// What committing one new order came to.
type OrderCommitted = Result<Placed, TxError>;

#[derive(Clone)]
pub struct DieselStore {
    pub db: Db,
    /// How long a critical message waits for push before its SMS fallback goes.
    sms_fallback_after: Duration,
    /// School-local time of the daily digest where the school sets none.
    digest_at: chrono::NaiveTime,
    /// New orders, committed in batches (group commit).
    intake: Arc<GroupCommit<NewOrder, OrderCommitted>>,
    /// Decided transitions, committed in batches.
    transitions: Arc<GroupCommit<TransitionCommit, transitions::TransitionCommitted>>,
    /// Each order's school and student, which never change once it is placed.
    owners: Arc<OrderOwners>,
    /// Whose name its outbox claims carry.
    node: Arc<crate::node::Node>,
    /// New scans' claims, in batches.
    scan_claims: Arc<scanning::ScanClaims>,
    /// Readers' rows, remembered briefly: every scan is signed by one.
    readers: Arc<scanning::ReaderCache>,
}

/// Order owners seen on this node: filled by intake and by reads, emptied when it grows
/// past `MAX_OWNERS` (a day's orders of a large district fit).
#[derive(Default)]
struct OrderOwners(std::sync::Mutex<HashMap<String, (String, String)>>);

const MAX_OWNERS: usize = 500_000;

impl OrderOwners {
    fn get(&self, order_id: &str) -> Option<(String, String)> {
        self.lock().get(order_id).cloned()
    }

    fn remember(&self, order_id: &str, school_id: &str, student_id: &str) {
        let mut owners = self.lock();
        if owners.len() >= MAX_OWNERS {
            owners.clear();
        }
        owners.insert(
            order_id.to_owned(),
            (school_id.to_owned(), student_id.to_owned()),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, String)>> {
        // Only inserts and a clear: a panic elsewhere cannot leave the map torn.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Errors inside a transaction: a database error rolls back, and so does a refusal.
#[derive(Debug)]
enum TxError {
    Db(DbError),
    Refused(CommandError),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> TxError {
        TxError::Db(DbError::from(e))
    }
}

impl From<DbError> for TxError {
    fn from(e: DbError) -> TxError {
        TxError::Db(e)
    }
}

impl From<CommandError> for TxError {
    fn from(e: CommandError) -> TxError {
        TxError::Refused(e)
    }
}

impl From<TxError> for CommandError {
    fn from(e: TxError) -> CommandError {
        match e {
            TxError::Refused(c) => c,
            TxError::Db(d) => d.into_command(),
        }
    }
}

impl DbError {
    pub fn into_command(self) -> CommandError {
        match self {
            DbError::Unavailable(m) => CommandError::Unavailable(m),
            other => CommandError::Internal(other.to_string()),
        }
    }
}

fn json_error(e: serde_json::Error) -> TxError {
    TxError::Db(DbError::Other(format!("stored JSON: {e}")))
}

pub fn event_from_row(row: OrderEventRow) -> Result<KitchenEvent, DbError> {
    let order: OrderSummary = serde_json::from_str(&row.snapshot)
        .map_err(|e| DbError::Other(format!("stored snapshot: {e}")))?;
    let to = OrderState::parse(&row.to_state)
        .ok_or_else(|| DbError::Other(format!("unknown state {}", row.to_state)))?;
    Ok(KitchenEvent {
        school_id: row.school_id,
        seq: row.seq,
        kind: row.kind,
        order_id: row.order_id,
        from: row.from_state.as_deref().and_then(OrderState::parse),
        to,
        version: row.version,
        actor_id: row.actor_id,
        reason: row.reason,
        at: row.created_at.and_utc(),
        order,
    })
}

/// What an event records beside the order it leaves: its type, who, why, and the notice it
/// makes (fanned out to the outbox later by dispatch, see `DieselStore::fan_out`).
struct EventNote<'a> {
    kind: &'a str,
    from: Option<OrderState>,
    actor_id: Option<String>,
    reason: Option<String>,
    at: NaiveDateTime,
    notice: Option<Kind>,
    /// Someone who needs no news of their own act.
    skip: Option<String>,
}

fn event_row(seq: i64, order: &OrderSummary, note: EventNote) -> Result<OrderEventRow, TxError> {
    Ok(OrderEventRow {
        school_id: order.school_id.clone(),
        seq,
        order_id: order.id.clone(),
        version: order.version,
        kind: note.kind.to_owned(),
        from_state: note.from.map(|s| s.as_str().to_owned()),
        to_state: order.state.as_str().to_owned(),
        actor_id: note.actor_id,
        reason: note.reason,
        snapshot: serde_json::to_string(order).map_err(json_error)?,
        created_at: note.at,
        fanned_out: note.notice.is_none(),
        notice: note.notice.map(|k| k.as_str().to_owned()),
        notice_skip: note.skip,
    })
}

type RecipientRow = (String, String, Option<String>, Option<String>, String);

/// The columns of a `RecipientRow`.
const RECIPIENT: (
    users::id,
    users::display_name,
    users::email,
    users::phone,
    users::locale,
) = (
    users::id,
    users::display_name,
    users::email,
    users::phone,
    users::locale,
);

/// The columns of a stored preference: (user, kind, channel, enabled).
const PREFERENCE: (
    notification_preferences::user_id,
    notification_preferences::event_kind,
    notification_preferences::channel,
    notification_preferences::enabled,
) = (
    notification_preferences::user_id,
    notification_preferences::event_kind,
    notification_preferences::channel,
    notification_preferences::enabled,
);

/// A user with the channels they can be reached on and their choices.
fn recipient(
    (user_id, name, email, phone, locale): RecipientRow,
    with_push: &HashSet<String>,
    choices: &[(String, String, String, bool)],
) -> Recipient {
    let preferences = choices
        .iter()
        .filter(|(user, ..)| *user == user_id)
        .filter_map(|(_, kind, channel, enabled)| {
            Some(Preference {
                kind: Kind::parse(kind)?,
                channel: Channel::parse(channel)?,
                enabled: *enabled,
            })
        })
        .collect();
    Recipient {
        has_push: with_push.contains(&user_id),
        user_id,
        name,
        email,
        phone,
        locale,
        preferences,
    }
}

/// The least-loaded open counter of a school, inside a transaction on either backend.
macro_rules! least_loaded_counter {
    ($conn:expr, $school_id:expr) => {{
        let open: Vec<(String, i32, String)> = counters::table
            .filter(counters::school_id.eq($school_id))
            .filter(counters::is_open.eq(true))
            .select((counters::id, counters::number, counters::name))
            .load($conn)
            .await?;
        let open: Vec<CounterRef> = open
            .into_iter()
            .map(|(id, number, name)| CounterRef { id, number, name })
            .collect();
        let waiting: Vec<(Option<String>, i64)> = orders::table
            .filter(orders::school_id.eq($school_id))
            .filter(orders::state.eq(OrderState::Ready.as_str()))
            .filter(orders::counter_id.is_not_null())
            .group_by(orders::counter_id)
            .select((orders::counter_id, diesel::dsl::count_star()))
            .load($conn)
            .await?;
        assign_counter(&open, |c| {
            waiting
                .iter()
                .find(|(id, _)| id.as_deref() == Some(c.id.as_str()))
                .map_or(0, |(_, n)| *n)
        })
        .cloned()
    }};
}

/// Who a notice about a student of a school goes to (`notices::Audience`), with their
/// addresses, devices and preferences; only active people.
macro_rules! audience {
    ($conn:expr, $school_id:expr, $student_id:expr, $audience:expr) => {{
        let person = RECIPIENT;
        let mut people: Vec<RecipientRow> = Vec::new();
        if $audience == Audience::Family {
            people.extend(
                users::table
                    .find($student_id)
                    .filter(users::active.eq(true))
                    .select(person)
                    .load::<RecipientRow>($conn)
                    .await?,
            );
        }
        if matches!($audience, Audience::Family | Audience::Guardians) {
            people.extend(
                guardian_links::table
                    .inner_join(users::table.on(users::id.eq(guardian_links::guardian_id)))
                    .filter(guardian_links::student_id.eq($student_id))
                    .filter(users::active.eq(true))
                    .order(users::id.asc())
                    .select(person)
                    .load::<RecipientRow>($conn)
                    .await?,
            );
        }
        if $audience == Audience::Kitchen {
            people.extend(
                users::table
                    .filter(users::school_id.eq($school_id))
                    .filter(users::role.eq(Role::KitchenStaff.as_str()))
                    .filter(users::active.eq(true))
                    .order(users::id.asc())
                    .select(person)
                    .load::<RecipientRow>($conn)
                    .await?,
            );
        }
        let ids: Vec<&str> = people.iter().map(|p| p.0.as_str()).collect();
        let with_push: HashSet<String> = device_tokens::table
            .filter(device_tokens::user_id.eq_any(&ids))
            .filter(device_tokens::active.eq(true))
            .select(device_tokens::user_id)
            .load::<String>($conn)
            .await?
            .into_iter()
            .collect();
        let choices: Vec<(String, String, String, bool)> = notification_preferences::table
            .filter(notification_preferences::user_id.eq_any(&ids))
            .select(PREFERENCE)
            .load($conn)
            .await?;
        people
            .into_iter()
            .map(|p| recipient(p, &with_push, &choices))
            .collect::<Vec<Recipient>>()
    }};
}

/// The order as its last event left it, inside a transaction on either backend.
macro_rules! latest_snapshot {
    ($conn:expr, $order_id:expr) => {{
        let previous: String = order_events::table
            .filter(order_events::order_id.eq($order_id))
            .order(order_events::version.desc())
            .select(order_events::snapshot)
            .first($conn)
            .await?;
        serde_json::from_str::<OrderSummary>(&previous).map_err($crate::store::json_error)?
    }};
}

/// Takes the school's next kitchen sequence number, locking its row until the transaction ends
/// (so a kitchen's events are numbered without gaps); yields `(seq, time_zone)`.
macro_rules! next_seq {
    ($conn:expr, $school_id:expr) => {{
        let bumped: Option<(i64, String)> = diesel::update(schools::table.find($school_id))
            .set(schools::event_seq.eq(schools::event_seq + 1))
            .returning((schools::event_seq, schools::time_zone))
            .get_result($conn)
            .await
            .optional()?;
        bumped.ok_or(CommandError::SchoolNotFound)?
    }};
}

/// Starts an event that changes an order but not its state: takes the next kitchen sequence
/// number and the next version, guarded by the version the caller saw. Yields
/// `(seq, order)` with the order at its new version.
macro_rules! amend_order {
    ($conn:expr, $school_id:expr, $order_id:expr, $expected_version:expr, $at:expr) => {{
        let (seq, _) = next_seq!($conn, $school_id);
        let version = $expected_version + 1;
        let changed = diesel::update(
            orders::table
                .filter(orders::id.eq($order_id))
                .filter(orders::school_id.eq($school_id))
                .filter(orders::version.eq($expected_version)),
        )
        .set((orders::version.eq(version), orders::updated_at.eq($at)))
        .execute($conn)
        .await?;
        if changed == 0 {
            return Err(TxError::Refused(CommandError::VersionConflict));
        }
        let mut order = latest_snapshot!($conn, $order_id);
        order.version = version;
        order.updated_at = $at.and_utc();
        (seq, order)
    }};
}

/// Writes an event (an `EventNote` about `$order` at kitchen sequence `$seq`); yields the
/// committed event. Its notice reaches the outbox later, through `DieselStore::fan_out`.
macro_rules! record_event {
    ($conn:expr, $seq:expr, $order:expr, $note:expr) => {{
        let row = event_row($seq, $order, $note)?;
        diesel::insert_into(order_events::table)
            .values(&row)
            .execute($conn)
            .await?;
        event_from_row(row)?
    }};
}

/// A school's name, time zone and quiet hours: what a notice needs of it.
type SchoolNotice = (String, String, Option<String>, Option<String>);

/// Loads a school's `SchoolNotice` inside a transaction on either backend.
macro_rules! school_notice {
    ($conn:expr, $school_id:expr) => {{
        let school: SchoolNotice = schools::table
            .find($school_id)
            .select((
                schools::name,
                schools::time_zone,
                schools::quiet_hours_start,
                schools::quiet_hours_end,
            ))
            .first($conn)
            .await?;
        school
    }};
}

/// One outbox row per intent, keyed by (event, recipient, channel) in the table; the payload is
/// `data` with the school, its time zone and the recipient's name. Low-priority rows wait out
/// quiet hours; an SMS fallback waits behind its recipient's push row.
#[allow(clippy::too_many_arguments)]
fn outbox_rows(
    kind: Kind,
    intents: Vec<NotificationIntent>,
    audience: &[&Recipient],
    data: serde_json::Value,
    (school_id, seq): (&str, i64),
    (school_name, time_zone, quiet_start, quiet_end): &SchoolNotice,
    at: NaiveDateTime,
    sms_fallback_after: Duration,
) -> Vec<OutboxRow> {
    let tz: chrono_tz::Tz = time_zone.parse().unwrap_or(chrono_tz::UTC);
    let local_now = at.and_utc().with_timezone(&tz).time();
    let quiet = quiet_start
        .as_deref()
        .and_then(parse_time_of_day)
        .zip(quiet_end.as_deref().and_then(parse_time_of_day))
        .map(|(start, end)| QuietHours { start, end });
    let rule = kind.rule();
    let mut rows: Vec<(NotificationIntent, OutboxRow)> = intents
        .into_iter()
        .map(|intent| {
            let name = audience
                .iter()
                .find(|r| r.user_id == intent.recipient_id)
                .map_or(String::new(), |r| r.name.clone());
            let mut payload = data.clone();
            payload["school_name"] = school_name.as_str().into();
            payload["time_zone"] = tz.name().into();
            payload["recipient_name"] = name.into();
            let due =
                at + first_attempt_delay(&intent, quiet.as_ref(), local_now, sms_fallback_after);
            let row = OutboxRow {
                id: uuid::Uuid::now_v7().to_string(),
                school_id: school_id.to_owned(),
                event_seq: seq,
                recipient_id: intent.recipient_id.clone(),
                channel: intent.channel.as_str().to_owned(),
                template: kind.as_str().to_owned(),
                address: intent.address.clone(),
                locale: intent.locale.clone(),
                payload: payload.to_string(),
                status: "pending".into(),
                attempts: 0,
                next_attempt_at: due,
                claimed_until: None,
                last_error: None,
                created_at: at,
                sent_at: None,
                priority: intent.priority.rank(),
                expires_at: Some(due + Duration::seconds(rule.expires_after_secs)),
                fallback_for: None,
                dedup_key: None,
            };
            (intent, row)
        })
        .collect();
    let push_rows: Vec<(String, String)> = rows
        .iter()
        .filter(|(i, _)| i.channel == Channel::Push)
        .map(|(i, r)| (i.recipient_id.clone(), r.id.clone()))
        .collect();
    for (intent, row) in &mut rows {
        if intent.fallback {
            row.fallback_for = push_rows
                .iter()
                .find(|(recipient, _)| *recipient == intent.recipient_id)
                .map(|(_, id)| id.clone());
        }
    }
    rows.into_iter().map(|(_, row)| row).collect()
}

impl DieselStore {
    pub fn new(db: Db, sms_fallback_after_secs: i64) -> DieselStore {
        // SQLite has one writer. On PostgreSQL a batch costs about ten statements whatever
        // its size, so a few writers (one committing while the next gathers) beat many
        // small batches: 1 writer 8 orders a batch and 2.2 statements an order, 16 writers
        // 1.7 and 7.5, at about the same rate (BENCHMARKS.md).
        let writers = match &db {
            Db::Sqlite(_) => 1,
            Db::Pg(_) => PG_WRITERS,
        };
        DieselStore {
            db,
            sms_fallback_after: Duration::seconds(sms_fallback_after_secs),
            digest_at: digest::DEFAULT_DIGEST_AT,
            intake: Arc::new(GroupCommit::new(
                writers,
                ORDER_BATCH,
                "order_commit_batch_size",
            )),
            transitions: Arc::new(GroupCommit::new(
                writers,
                TRANSITION_BATCH,
                "transition_commit_batch_size",
            )),
            owners: Arc::default(),
            node: Arc::new(crate::node::Node::unique()),
            scan_claims: Arc::new(GroupCommit::new(
                writers,
                scanning::CLAIM_BATCH,
                "scan_claim_batch_size",
            )),
            readers: Arc::default(),
        }
    }

    /// Daily digests go out at `at`, school-local, where a school sets no time of its own.
    pub fn with_digest_at(mut self, at: chrono::NaiveTime) -> DieselStore {
        self.digest_at = at;
        self
    }

    /// Claims outbox rows as `node`.
    pub fn with_node(mut self, node: crate::node::Node) -> DieselStore {
        self.node = Arc::new(node);
        self
    }

    pub fn node(&self) -> &crate::node::Node {
        &self.node
    }

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

    /// Queues a notice about a student that is not a kitchen event (a lost card in use, a
    /// one-time pickup code) for the rule's audience, in one transaction; keyed by the school's
    /// next notice number (outbox keys -1, -2, …).
    pub async fn record_notice(
        &self,
        school_id: &str,
        student_id: &str,
        kind: Kind,
        data: serde_json::Value,
    ) -> Result<(), CommandError> {
        let fallback = self.sms_fallback_after;
        with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let at = now();
                let notice: i64 = diesel::update(schools::table.find(school_id))
                    .set(schools::notice_seq.eq(schools::notice_seq + 1))
                    .returning(schools::notice_seq)
                    .get_result(conn)
                    .await?;
                let school = school_notice!(conn, school_id);
                let people = audience!(conn, school_id, student_id, kind.rule().audience);
                let audience: Vec<&Recipient> = people.iter().collect();
                for row in outbox_rows(
                    kind,
                    intents(kind, &audience),
                    &audience,
                    data.clone(),
                    (school_id, -notice),
                    &school,
                    at,
                    fallback,
                ) {
                    diesel::insert_into(outbox::table)
                        .values(&row)
                        .execute(conn)
                        .await?;
                }
                Ok::<_, TxError>(())
            })
            .await)?;
        Ok(())
    }

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

    async fn place(&self, order: NewOrder) -> Result<Placed, CommandError> {
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

    /// An order's school and student, from memory when this node has seen the order.
    pub async fn order_owner(&self, order_id: &str) -> Result<Option<(String, String)>, DbError> {
        if let Some(owner) = self.owners.get(order_id) {
            return Ok(Some(owner));
        }
        let owner = crate::repo::order_owner(&self.db, order_id).await?;
        if let Some((school, student)) = &owner {
            self.owners.remember(order_id, school, student);
        }
        Ok(owner)
    }

    async fn run<T>(
        &self,
        f: impl AsyncFnOnce(&Db) -> Result<T, DbError>,
    ) -> Result<T, CommandError> {
        f(&self.db).await.map_err(DbError::into_command)
    }

    async fn counter_move(&self, m: &CounterMove) -> Result<KitchenEvent, TxError> {
        with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let at = now();
                let (seq, mut order) =
                    amend_order!(conn, &m.school_id, &m.order_id, m.expected_version, at);
                let still_there = order.state == OrderState::Ready
                    && order.counter.as_ref().map(|c| c.id.as_str())
                        == Some(m.from_counter_id.as_str());
                if !still_there {
                    return Err(TxError::Refused(CommandError::VersionConflict));
                }
                let closed: String = counters::table
                    .find(&m.from_counter_id)
                    .select(counters::name)
                    .first(conn)
                    .await?;
                let counter = least_loaded_counter!(conn, &m.school_id);
                diesel::update(orders::table.find(&m.order_id))
                    .set(orders::counter_id.eq(counter.as_ref().map(|c| c.id.clone())))
                    .execute(conn)
                    .await?;
                order.counter = counter;
                Ok::<_, TxError>(record_event!(
                    conn,
                    seq,
                    &order,
                    EventNote {
                        kind: COUNTER_CHANGED,
                        from: Some(OrderState::Ready),
                        actor_id: m.actor_id.clone(),
                        reason: Some(format!("{closed} closed")),
                        at,
                        notice: Some(Kind::OrderCounterChanged),
                        skip: None,
                    }
                ))
            })
            .await)
    }

    async fn alert(&self, a: &AlertCommit) -> Result<KitchenEvent, TxError> {
        with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let at = now();
                let (seq, mut order) =
                    amend_order!(conn, &a.school_id, &a.order_id, a.expected_version, at);
                if order.alerts.contains(&a.alert) {
                    return Err(TxError::Refused(CommandError::VersionConflict));
                }
                order.alerts.push(a.alert);
                let from = Some(order.state);
                Ok::<_, TxError>(record_event!(
                    conn,
                    seq,
                    &order,
                    EventNote {
                        kind: a.alert.event_type(),
                        from,
                        actor_id: None,
                        reason: Some(a.reason.clone()),
                        at,
                        notice: kind_of_alert(a.alert),
                        skip: None,
                    }
                ))
            })
            .await)
    }
}

/// A batch's commit: an answer per command, or the batch's own failure.
type BatchCommit<'a, R> =
    futures_util::future::BoxFuture<'a, Result<Vec<Result<R, TxError>>, TxError>>;

/// Commits a batch together, answering each command; should the batch itself fail (a key
/// another request just took, a deadlock, the database), each is tried alone and answered for
/// itself, so one bad command cannot sink the others.
async fn together_or_each<T: Sync, R>(
    store: &DieselStore,
    what: &'static str,
    batch: &[T],
    commit: for<'a> fn(&'a DieselStore, &'a [T]) -> BatchCommit<'a, R>,
) -> Vec<Result<R, TxError>> {
    match commit(store, batch).await {
        Ok(results) => results,
        Err(e) if batch.len() > 1 => {
            tracing::warn!(error = ?e, batch = what, size = batch.len(), "batch failed; trying each alone");
            let mut results = Vec::with_capacity(batch.len());
            for one in batch {
                let alone = commit(store, std::slice::from_ref(one)).await;
                results.push(alone.and_then(|mut answered| {
                    answered.pop().unwrap_or_else(|| {
                        Err(TxError::Refused(CommandError::Internal(format!(
                            "a command went unanswered in its {what} batch"
                        ))))
                    })
                }));
            }
            results
        }
        Err(e) => vec![Err(e)],
    }
}

// How a batch awaits its independent reads on each backend.
/// Awaits the reads one after another (SQLite: each microseconds, in process).
macro_rules! one_by_one {
    ($($read:expr),+ $(,)?) => {
        ($($read.await?),+)
    };
}

/// Sends the reads together on one PostgreSQL connection: diesel-async pipelines futures
/// polled at once, so they cost one round trip's wait instead of five. (Made inside the
/// async block: diesel-async starts a query when its future is made.)
macro_rules! pipelined {
    ($a:expr, $b:expr, $c:expr, $d:expr, $e:expr $(,)?) => {
        $crate::db::one_round_trip(async {
            futures_util::future::try_join5($a, $b, $c, $d, $e).await
        })
        .await?
    };
    ($a:expr, $b:expr, $c:expr, $d:expr $(,)?) => {
        $crate::db::one_round_trip(async { futures_util::future::try_join4($a, $b, $c, $d).await })
            .await?
    };
    ($a:expr, $b:expr, $c:expr $(,)?) => {
        $crate::db::one_round_trip(async { futures_util::future::try_join3($a, $b, $c).await })
            .await?
    };
}
pub(crate) use {one_by_one, pipelined};

/// How many committed events with news are not yet fanned out, and the oldest's time. `NOT
/// fanned_out` rather than a bound `false`: a prepared plan then still matches the partial
/// index `order_events_to_fan_out` (a bound value cannot, and the table was read whole,
/// 180 ms late in a full-length rush).
macro_rules! awaiting_fan_out {
    () => {
        order_events::table
            .filter(diesel::dsl::not(order_events::fanned_out))
            .filter(order_events::notice.is_not_null())
            .select((
                diesel::dsl::count_star(),
                diesel::dsl::min(order_events::created_at),
            ))
    };
}
#[cfg(test)]
pub(crate) use awaiting_fan_out;

/// Locks a batch's schools in school order (`FOR NO KEY UPDATE`, as the sequence bump
/// itself takes; `FOR UPDATE` would also block rows that merely reference a school).
pub(crate) const LOCK_SCHOOLS_PG: &str =
    "SELECT id FROM schools WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";

/// Runs `$write` (one statement on `$c`, a `&mut &PgConn`) in a transaction that first locks
/// `$schools` in school order, the four statements made in order and sent together: one
/// round trip. The lock is its own statement so that the write's snapshot is taken once the
/// locks are held: a write that locked and updated the same school rows in one statement
/// re-read them through its older snapshot and queued behind other waiters for the row it
/// held, a deadlock PostgreSQL reported under the lunch rush. COMMIT after a failed statement
/// rolls back; every answer is read (joined, not tried), so the transaction is closed either
/// way.
macro_rules! with_schools_locked {
    ($conn:expr, $schools:expr, |$c:ident| $write:expr) => {{
        use diesel::sql_types::{Array, Text};
        let conn: &$crate::db::PgConn = $conn;
        let (mut begin_on, mut lock_on, mut $c, mut commit_on) = (conn, conn, conn, conn);
        $crate::db::one_round_trip(async {
            let begin = diesel::sql_query("BEGIN").execute(&mut begin_on);
            let locked = diesel::sql_query($crate::store::LOCK_SCHOOLS_PG)
                .bind::<Array<Text>, _>($schools)
                .execute(&mut lock_on);
            let written = $write;
            let commit = diesel::sql_query("COMMIT").execute(&mut commit_on);
            let (begin, locked, written, commit) =
                futures_util::future::join4(begin, locked, written, commit).await;
            begin?;
            locked?;
            let written = written?;
            commit?;
            Ok::<_, diesel::result::Error>(written)
        })
        .await
    }};
}

#[cfg(test)]
mod batch_tests;
pub(crate) mod claim;
mod digest;
pub use digest::DEFAULT_DIGEST_AT;
pub(crate) mod fan_out;
mod intake;
#[cfg(test)]
mod scan_claim_tests;
mod scanning;
mod sequence;
pub(crate) mod transitions;

/// A time of day as stored: `HH:MM:SS` or `HH:MM`.
pub fn parse_time_of_day(s: &str) -> Option<chrono::NaiveTime> {
    chrono::NaiveTime::parse_from_str(s, "%H:%M:%S")
        .or_else(|_| chrono::NaiveTime::parse_from_str(s, "%H:%M"))
        .ok()
}

/// A school's waves on the school-local day of `now`, as instants.
pub fn waves_on_day(
    windows: &[ServiceWindowRow],
    time_zone: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<Wave> {
    let tz: chrono_tz::Tz = time_zone.parse().unwrap_or(chrono_tz::UTC);
    let day = now.with_timezone(&tz).date_naive();
    let instant = |t: chrono::NaiveTime| {
        day.and_time(t)
            .and_local_timezone(tz)
            .earliest()
            .map(|d| d.with_timezone(&chrono::Utc))
    };
    windows
        .iter()
        .filter_map(|w| {
            let starts_at = instant(parse_time_of_day(&w.starts_at)?)?;
            let ends_at = instant(parse_time_of_day(&w.ends_at)?)?;
            Some(Wave {
                id: w.id.clone(),
                name: w.name.clone(),
                starts_at,
                ends_at,
                order_cutoff: starts_at - Duration::minutes(i64::from(w.order_cutoff_minutes)),
                cancel_until: starts_at - Duration::minutes(i64::from(w.cancel_deadline_minutes)),
            })
        })
        .collect()
}

/// The school-local calendar day of an instant, for pickup codes.
fn local_day(time_zone: &str, at: NaiveDateTime) -> String {
    let tz: chrono_tz::Tz = time_zone.parse().unwrap_or(chrono_tz::UTC);
    at.and_utc()
        .with_timezone(&tz)
        .format("%Y-%m-%d")
        .to_string()
}

/// Refuses a meal with an allergen the student is allergic to, unless staff recorded an
/// override; returns the reason to record with the order.
fn allergy_check(
    new: &NewOrder,
    menu: &[MealRow],
    allergies: &str,
) -> Result<Option<String>, CommandError> {
    let allergies: Vec<&str> = allergies.split(',').collect();
    let mut overridden = Vec::new();
    for item in &new.items {
        let Some(meal) = menu.iter().find(|m| m.id == item.meal_id) else {
            continue;
        };
        let allergens: Vec<&str> = meal.allergens.split(',').collect();
        for allergen in allergy_conflicts(&allergies, &allergens) {
            if new.allergy_override.is_none() {
                return Err(CommandError::AllergyConflict {
                    meal: meal.name.clone(),
                    allergen,
                });
            }
            overridden.push(format!("{} ({allergen})", meal.name));
        }
    }
    Ok(match (&new.allergy_override, overridden.is_empty()) {
        (Some(why), false) => Some(format!(
            "allergy override for {}: {why}",
            overridden.join(", ")
        )),
        _ => None,
    })
}

/// Prices and names come from the menu, never from the request.
fn order_lines(new: &NewOrder, menu: &[MealRow]) -> Result<Vec<OrderLine>, CommandError> {
    if new.items.is_empty() {
        return Err(CommandError::EmptyOrder);
    }
    if new.items.len() > MAX_ITEMS {
        return Err(CommandError::InvalidItem(format!(
            "at most {MAX_ITEMS} lines per order"
        )));
    }
    new.items
        .iter()
        .map(|item| {
            let meal = menu
                .iter()
                .find(|m| m.id == item.meal_id)
                .ok_or_else(|| CommandError::UnknownMeal(item.meal_id.clone()))?;
            if !meal.available {
                return Err(CommandError::MealUnavailable(meal.id.clone()));
            }
            if !(1..=MAX_ITEM_QUANTITY).contains(&item.quantity) {
                return Err(CommandError::InvalidItem(format!(
                    "quantity must be between 1 and {MAX_ITEM_QUANTITY}"
                )));
            }
            Ok(OrderLine {
                meal_id: meal.id.clone(),
                name: meal.name.clone(),
                quantity: item.quantity,
                unit_price_cents: meal.price_cents,
            })
        })
        .collect()
}

/// Records one delivery attempt of an outbox row, inside the transaction that updates it.
macro_rules! record_attempt {
    ($conn:expr, $id:expr, $attempt:expr, $at:expr, $outcome:expr, $detail:expr) => {
        diesel::insert_into(delivery_attempts::table)
            .values((
                delivery_attempts::id.eq(uuid::Uuid::now_v7().to_string()),
                delivery_attempts::outbox_id.eq($id),
                delivery_attempts::attempt.eq($attempt),
                delivery_attempts::at.eq($at),
                delivery_attempts::outcome.eq($outcome),
                delivery_attempts::detail.eq($detail),
            ))
            .execute($conn)
            .await?
    };
}

impl From<DbError> for CommandError {
    fn from(e: DbError) -> CommandError {
        e.into_command()
    }
}

const LIVE_STATES: [&str; 4] = ["placed", "confirmed", "preparing", "ready"];

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
                .submit(t, |batch| self.commit_transitions(batch)),
        )
        .await
        .ok_or_else(|| CommandError::Unavailable("the transition's batch was abandoned".into()))?;
        committed.map_err(CommandError::from)
    }

    async fn move_counter(&self, m: CounterMove) -> Result<KitchenEvent, CommandError> {
        self.counter_move(&m).await.map_err(CommandError::from)
    }

    async fn record_alert(&self, a: AlertCommit) -> Result<KitchenEvent, CommandError> {
        self.alert(&a).await.map_err(CommandError::from)
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

/// PostgreSQL: messages marked sent and their attempts recorded in one statement (one round
/// trip, whatever their number).
const MARK_SENT_PG: &str = "\
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
    crate::with_pooled!(pool, |conn| diesel::sql_query(MARK_SENT_PG)
        .bind::<Array<Text>, _>(ids)
        .bind::<Array<Text>, _>(&attempt_ids)
        .bind::<Timestamp, _>(at)
        .execute(conn)
        .await
        .map_err(DbError::from))?;
    Ok(())
}

/// Dispatch's statements and round trips (fan-out, claims, delivery records) count under
/// this operation; its operations are the messages marked sent.
pub(crate) const NOTIFY: &str = "notify";

#[async_trait]
impl Outbox for DieselStore {
    async fn fan_out(&self, limit: i64) -> Result<usize, CommandError> {
        crate::db::counted(NOTIFY, async { self.fan_out_events(limit).await }).await
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
                        record_attempt!(conn, id, *attempt, at, "sent", None::<&str>);
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
                    record_attempt!(conn, id, attempt, at, outcome, Some(error));
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
