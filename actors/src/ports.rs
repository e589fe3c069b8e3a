//! The small traits through which the actors reach the world. The server crate supplies
//! the adapters (diesel store, SMTP sender, Redis bus).

use crate::domain::machine::{Issuer, Transition, TransitionError};
use crate::domain::orders::{Alert, KitchenEvent, OrderSummary};
use crate::notices::rules::Priority;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Why a command failed. The edge maps each variant to one stable error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rule(#[from] TransitionError),
    #[error("order not found")]
    OrderNotFound,
    #[error("school not found")]
    SchoolNotFound,
    #[error("student not found in this school")]
    StudentNotFound,
    #[error("this token's user does not exist or is inactive")]
    PlacerInactive,
    #[error("the order was changed by someone else; reload and try again")]
    VersionConflict,
    #[error("too late to recall: the last step was more than {0} seconds ago")]
    RecallWindowPassed(i64),
    #[error(transparent)]
    Wave(#[from] crate::domain::waves::WaveError),
    #[error("too late to cancel: the wave's cancel deadline has passed; ask the kitchen")]
    CancelDeadlinePassed,
    #[error("meal {0} is not on this school's menu")]
    UnknownMeal(String),
    #[error("meal {0} is not available")]
    MealUnavailable(String),
    #[error("{meal} contains {allergen}, which the student is allergic to")]
    AllergyConflict { meal: String, allergen: String },
    #[error("an order needs at least one item")]
    EmptyOrder,
    #[error("{0}")]
    InvalidItem(String),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// The scan this hand-over was decided for is no longer this decider's: taken over or
    /// abandoned after its lease, or decided already. Nothing was committed.
    #[error(transparent)]
    Item(#[from] crate::domain::stations::ItemError),
    #[error("the scan's claim was lost: it is decided or taken over elsewhere")]
    ScanClaimLost,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A new order, validated at the edge for shape; the store checks it against the menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub school_id: String,
    pub student_id: String,
    pub placed_by: String,
    pub items: Vec<NewOrderItem>,
    /// With the request fingerprint, makes a retried POST return the same order.
    pub idempotency: Option<Idempotency>,
    /// Kitchen staff's recorded reason to serve a meal despite a student's allergy.
    pub allergy_override: Option<String>,
    /// The lunch wave asked for; otherwise the earliest one still taking orders.
    pub window_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrderItem {
    pub meal_id: String,
    pub quantity: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
}

/// The result of placing an order: a fresh commit, or the order an earlier identical request made.
#[derive(Debug, Clone, PartialEq)]
pub enum Placed {
    New(KitchenEvent),
    Existing(OrderSummary),
}

/// A decided transition to commit, guarded by the version it was decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionCommit {
    pub school_id: String,
    pub order_id: String,
    /// Decided on `version - 1`; committed only if the order is still there.
    pub transition: Transition,
    /// The order as it was decided on: the committed view at `version - 1`, so the store
    /// need not read it back.
    pub order: OrderSummary,
    /// Who asked: the rules for who hears about it depend on it.
    pub issuer: Issuer,
    pub actor_id: Option<String>,
    pub reason: Option<String>,
    /// A pickup decided by this scan: the scan's decision commits with it, and the pickup
    /// only while the scan's claim is still this one.
    pub scan: Option<ScanClaim>,
}

/// A scan being decided: its row and which claim of it (a take-over counts up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanClaim {
    pub scan_id: String,
    pub attempt: i32,
    /// When the scan arrived, for the time it took.
    pub received_at: DateTime<Utc>,
}

/// A timer's alert to record on an order, guarded by the version it was seen at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertCommit {
    pub school_id: String,
    pub order_id: String,
    pub expected_version: i64,
    pub alert: Alert,
    pub reason: String,
}

/// A ready order leaving a counter that closed, guarded by the version it was seen at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterMove {
    pub school_id: String,
    pub order_id: String,
    pub expected_version: i64,
    pub from_counter_id: String,
    pub actor_id: Option<String>,
}

/// An item (line `line`) of an order marked done at its station, guarded by the version
/// it was decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemDoneCommit {
    pub school_id: String,
    pub order_id: String,
    pub expected_version: i64,
    pub line: usize,
    pub actor_id: Option<String>,
}

/// An item's committed event, and whether the school readies an order by itself once every
/// station is done.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemDone {
    pub event: KitchenEvent,
    pub ready_when_stations_done: bool,
}

/// What a kitchen needs to come back after a start or restart.
#[derive(Debug, Clone, PartialEq)]
pub struct KitchenSnapshot {
    pub school_id: String,
    /// The last committed kitchen sequence number.
    pub last_seq: i64,
    pub live_orders: Vec<OrderSummary>,
}

/// Durable state. Every write commits the event, the order row and its outbox rows in one
/// transaction; nothing is published before it returns.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn load_kitchen(&self, school_id: &str) -> Result<KitchenSnapshot, CommandError>;
    async fn place_order(&self, order: NewOrder) -> Result<Placed, CommandError>;
    async fn commit_transition(&self, t: TransitionCommit) -> Result<KitchenEvent, CommandError>;
    /// Moves a ready order off a closed counter to the least-loaded open one (or none).
    async fn move_counter(&self, m: CounterMove) -> Result<KitchenEvent, CommandError>;
    /// Records a timer's alert as an event (the state stays) and queues who hears of it.
    async fn record_alert(&self, a: AlertCommit) -> Result<KitchenEvent, CommandError>;
    /// Records an item done at its station as an event (the state stays).
    async fn mark_item_done(&self, d: ItemDoneCommit) -> Result<ItemDone, CommandError>;
    /// The latest committed view of one order, live or not.
    async fn load_order(&self, order_id: &str) -> Result<Option<OrderSummary>, CommandError>;
    /// Committed events of a kitchen with `seq > after`, oldest first, at most `limit`.
    async fn events_since(
        &self,
        school_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<KitchenEvent>, CommandError>;
}

/// A message from the outbox, claimed for one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub id: String,
    pub recipient_id: String,
    pub channel: String,
    /// The kind of message (`notices::Kind`), which names its templates.
    pub template: String,
    pub address: String,
    pub locale: String,
    /// Template data (JSON).
    pub payload: String,
    pub attempts: i32,
    pub priority: Priority,
    pub created_at: DateTime<Utc>,
    /// Not sent after this: dropped as expired.
    pub expires_at: Option<DateTime<Utc>>,
    /// This SMS stands behind that push message: sent only if it has not been delivered.
    pub fallback_for: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth another try later.
    #[error("transient: {0}")]
    Transient(String),
    /// The provider asked us to slow down and when to come back (429 with Retry-After).
    #[error("throttled: {reason}")]
    Throttled {
        reason: String,
        retry_after: std::time::Duration,
    },
    /// Will never succeed (bad address, bad template, unregistered device): do not retry.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A message claimed for delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub message: OutboxMessage,
    /// Asked when it was claimed; its send follows at once, or after the few ahead of it in
    /// its channel's lane. A message not needed any more left the queue with the claim.
    pub needed: Needed,
    /// An earlier attempt's outcome is unknown (its node died before recording it): it may
    /// have reached the provider, so it goes out again, whatever `needed` would say.
    pub resend: bool,
}

/// Whether a claimed message should still go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needed {
    Yes,
    /// Past its `expires_at`: expired.
    PastExpiry,
    /// Its news is no longer true (see `notices::Kind::still_true`): expired.
    NoLongerTrue,
    /// A fallback whose first channel delivered: skipped.
    DeliveredOtherwise,
}

/// How a message left the queue without being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Expired,
    Skipped,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Expired => "expired",
            Dropped::Skipped => "skipped",
        }
    }
}

/// The outbox at a glance, for the delivery gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Messages waiting (due or not yet due).
    pub pending: i64,
    /// Age of the oldest message above low priority still waiting (low ones may be waiting
    /// out quiet hours), in seconds.
    pub oldest_pending_secs: i64,
    pub dead: i64,
    /// Committed events whose news is not yet in the outbox (dispatch fans them out first).
    pub awaiting_fan_out: i64,
}

/// What one fan-out came to.
#[derive(Debug, Clone, Default)]
pub struct FannedOut {
    /// Events taken (fewer than asked: none are left waiting).
    pub events: usize,
    /// Outbox rows written for them.
    pub messages: usize,
    /// Those of them leased to this dispatcher as they were written, as a claim would have:
    /// due now, on a channel with room, their news still true.
    pub leased: Vec<Claimed>,
    /// Those of them sent in the fan-out's own transaction, as a claim would have sent them:
    /// in-app messages due now, stored in their inboxes there.
    pub delivered: usize,
}

/// Which of a fan-out's messages it leases to its dispatcher.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    /// At most this many.
    pub most: usize,
    /// None on these channels (their providers have enough under way).
    pub skip: &'a [String],
}

/// The outbox side of the store, used by notification dispatch. Every attempt is recorded.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Turns up to `limit` committed events into the outbox rows of the notices they make
    /// (one per recipient and channel), leasing those `lease` allows to this dispatcher in
    /// the same transaction: sent at once, with no claim of their own. Messages the store
    /// can deliver itself (in-app) it may deliver in that transaction.
    async fn fan_out(&self, limit: i64, lease: Lease<'_>) -> Result<FannedOut, CommandError>;
    /// Queues the daily digests due at `now` (each school's own evening, once a school day);
    /// returns how many messages it queued.
    async fn queue_digests(&self, now: DateTime<Utc>) -> Result<usize, CommandError>;
    /// Claims up to `limit` due messages for this dispatcher, most urgent first, none on the
    /// channels in `skip` (their providers have enough under way), each with whether it
    /// should still go out. Those that should not are taken out of the queue in the claim
    /// itself, so that every message left claimed is one whose send may have begun. A claim
    /// expires if its dispatcher dies (at once if its node restarts).
    async fn claim_due(&self, limit: i64, skip: &[String]) -> Result<Vec<Claimed>, CommandError>;
    /// Records messages as sent, all in one transaction (dispatch groups them).
    async fn mark_sent(&self, ids: &[String]) -> Result<(), CommandError>;
    /// Records a failed attempt: retried after `retry_in_ms`, or dead when `None`.
    async fn mark_failed(
        &self,
        id: &str,
        error: &str,
        retry_in_ms: Option<i64>,
    ) -> Result<(), CommandError>;
    /// Puts a claimed message back unattempted (its provider's circuit is open or its rate
    /// limit is spent), due again in `delay_ms`.
    async fn defer(&self, id: &str, delay_ms: i64) -> Result<(), CommandError>;
    async fn stats(&self) -> Result<OutboxStats, CommandError>;
}

/// One notification channel's provider.
#[async_trait]
pub trait Sender: Send + Sync + 'static {
    async fn send(&self, message: &OutboxMessage) -> Result<(), SendError>;

    /// Sends this provider carries at once (an SMTP session takes one message at a time).
    /// Dispatch holds a few times this many of the channel's messages, so that a slow
    /// provider's backlog waits in the outbox and not in front of the other channels.
    fn parallel(&self) -> usize {
        DEFAULT_PARALLEL_SENDS
    }
}

/// An HTTP provider's sends at once, unless it says otherwise.
pub const DEFAULT_PARALLEL_SENDS: usize = 128;
