//! Persistence: every query of the hub, one module per aggregate, and [`DieselStore`], the
//! diesel adapter of the actors' `Store` and `Outbox` ports that commits their writes in
//! batches (group commit). The backend switch (the pool enum over PostgreSQL and SQLite, and
//! `with_conn!`, which expands one diesel body into both arms) is `crate::db`, with the rows.
//!
//! - Queries, free functions over [`Db`], each module owning its tables: `schools` (schools,
//!   meals, lunch waves), `people` (users, guardian links), `sessions` (refresh tokens),
//!   `counters` (counters, pickup codes), `cards`, `readers`, `scans`, `orders` (orders, items,
//!   events), `outbox` (messages, delivery attempts), `devices` (push devices, preferences),
//!   `inbox` (in-app messages), `screens` (paired kitchen screens, their pairing codes),
//!   `sign_in` (one-time sign-in codes, committed with their message).
//! - The adapter: `kitchen` (the `Store` port) and `outbox` (the `Outbox` port) hand writes to
//!   the batches: `intake` (new orders, checked by `order_checks` against what `order_facts`
//!   reads or `facts_cache` keeps), `transitions` (with `pickup`), `scanning` (with
//!   `scan_claims`), `fan_out`, `digest` and `claim` (dispatch); `amend` commits one order at
//!   a time; `notices` makes outbox rows of notices; what the batches share is in `batch` and
//!   `sequence`.
//!
//! Every write that makes an event bumps the school's event sequence first: that takes the
//! write lock at once on SQLite and serialises a kitchen's commits on PostgreSQL, so sequence
//! numbers are gapless.

use crate::db::{Db, DbError};
use crate::group_commit::{GroupCommit, Lanes};
use chrono::Duration;
use std::collections::HashMap;
use std::sync::Arc;
use tiffin_actors::ports::{CommandError, NewOrder, Placed, TransitionCommit};

pub mod cards;
pub mod counters;
pub mod devices;
pub mod inbox;
pub mod orders;
pub mod outbox;
pub mod people;
pub mod readers;
pub mod roster;
mod roster_checks;
mod roster_sql;
pub mod scans;
pub mod schools;
pub mod screens;
pub mod sessions;
pub mod sign_in;
pub mod stations;

mod amend;
mod batch;
#[cfg(test)]
mod batch_tests;
pub(crate) mod claim;
mod digest;
mod facts_cache;
pub(crate) mod fan_out;
mod intake;
mod kitchen;
#[cfg(test)]
mod lock_order_tests;
mod notices;
mod order_checks;
mod order_facts;
mod pickup;
#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod scan_claim_tests;
pub(crate) mod scan_claims;
mod scanning;
pub(crate) mod sequence;
#[cfg(test)]
mod staff_plan_tests;
pub(crate) mod transitions;

pub use digest::DEFAULT_DIGEST_AT;
pub use orders::event_from_row;
pub(crate) use outbox::NOTIFY;
pub use schools::parse_time_of_day;

/// Orders that wait for one commit together.
const ORDER_BATCH: usize = 64;
/// Transitions that wait for one commit together.
const TRANSITION_BATCH: usize = 128;
/// Batches of each kind that commit side by side on PostgreSQL (transitions: as many lanes
/// of schools, a writer each).
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
    /// What new orders were last decided from (PostgreSQL).
    facts: Arc<facts_cache::FactsCache>,
    /// Decided transitions, committed in batches, a lane of schools each.
    transitions: Arc<Lanes<TransitionCommit, transitions::TransitionCommitted>>,
    /// Each order's school and student, which never change once it is placed.
    owners: Arc<OrderOwners>,
    /// Whose name its outbox claims carry.
    node: Arc<crate::node::Node>,
    /// New scans' claims, in batches.
    scan_claims: Arc<scanning::ScanClaims>,
    /// Readers' rows, remembered briefly: every scan is signed by one.
    readers: Arc<scanning::ReaderCache>,
    /// Wakes dispatch after a commit that leaves it work (events, outbox rows); set once
    /// the dispatcher runs, so no handler has to.
    wake: Arc<std::sync::OnceLock<WakeDispatch>>,
    /// In-app messages sent by the fan-out that writes them; set once dispatch's senders are
    /// made. Until then they go through the outbox like the other channels.
    in_app: Arc<std::sync::OnceLock<Arc<dyn inbox::InPlaceDelivery>>>,
}

/// What wakes dispatch (in the hub, a message to the dispatcher).
pub type WakeDispatch = Box<dyn Fn(Wake) + Send + Sync>;

/// What a commit left dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Events to fan out, no outbox rows: a claim is worth it only if the fan-out writes some.
    Events,
    /// Outbox rows to claim.
    Messages,
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

/// `NotFound` unless a write changed a row.
fn changed_any(rows: usize) -> Result<(), DbError> {
    if rows == 0 {
        Err(DbError::NotFound)
    } else {
        Ok(())
    }
}

fn json_error(e: serde_json::Error) -> TxError {
    TxError::Db(DbError::Other(format!("stored JSON: {e}")))
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
            transitions: Arc::new(Lanes::new(
                writers,
                TRANSITION_BATCH,
                "transition_commit_batch_size",
            )),
            facts: Arc::default(),
            owners: Arc::default(),
            node: Arc::new(crate::node::Node::unique()),
            scan_claims: Arc::new(GroupCommit::new(
                writers,
                scanning::CLAIM_BATCH,
                "scan_claim_batch_size",
            )),
            readers: Arc::default(),
            wake: Arc::default(),
            in_app: Arc::default(),
        }
    }

    /// From now on fan-outs send the in-app messages due at once themselves; the first set
    /// stays.
    pub fn deliver_in_app_with(&self, in_place: Arc<dyn inbox::InPlaceDelivery>) {
        if self.in_app.set(in_place).is_err() {
            tracing::warn!("in-app delivery was set already");
        }
    }

    /// From now on every commit that leaves dispatch work calls `wake`; the first hook set
    /// stays.
    pub fn wake_dispatch_with(&self, wake: impl Fn(Wake) + Send + Sync + 'static) {
        if self.wake.set(Box::new(wake)).is_err() {
            tracing::warn!("dispatch's wake hook was set already");
        }
    }

    /// Called only after a commit returned Ok: dispatch finds what it committed.
    fn wake_dispatch(&self, what: Wake) {
        if let Some(wake) = self.wake.get() {
            wake(what);
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

    /// An order's school and student, from memory when this node has seen the order.
    pub async fn order_owner(&self, order_id: &str) -> Result<Option<(String, String)>, DbError> {
        if let Some(owner) = self.owners.get(order_id) {
            return Ok(Some(owner));
        }
        let owner = orders::order_owner(&self.db, order_id).await?;
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
}

impl From<DbError> for CommandError {
    fn from(e: DbError) -> CommandError {
        e.into_command()
    }
}
