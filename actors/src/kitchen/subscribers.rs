//! Subscribing to a kitchen: where a new subscriber starts (live, a replay or a snapshot).

use super::Kitchen;
use crate::bus::{Subscriber, kitchen_topic};
use crate::domain::orders::OrderSummary;
use crate::ports::CommandError;
use actix::prelude::*;
use std::sync::Arc;

/// How far behind a resuming subscriber may be before it gets a fresh snapshot instead.
pub const MAX_REPLAY: i64 = 10_000;

/// Why a subscriber starts from a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// A fresh subscription.
    Fresh,
    /// `since` is further back than the kitchen replays.
    TooFarBehind,
    /// `since` is ahead of the kitchen (another database, or a bad client).
    Ahead,
    /// The replay could not be served.
    ReplayFailed,
}

impl SnapshotReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotReason::Fresh => "fresh",
            SnapshotReason::TooFarBehind => "too_far_behind",
            SnapshotReason::Ahead => "ahead_of_server",
            SnapshotReason::ReplayFailed => "replay_failed",
        }
    }
}

/// How a new subscriber catches up before live frames.
#[derive(Debug, Clone, PartialEq)]
pub enum Catchup {
    /// Already up to date at `seq`.
    Live { seq: i64 },
    /// Replay the committed events after `after`, up to and including `upto`, from the store.
    Replay { after: i64, upto: i64 },
    /// Start from these live orders as of `seq`.
    Snapshot {
        seq: i64,
        orders: Vec<OrderSummary>,
        reason: SnapshotReason,
    },
}

/// Subscribes to the kitchen's topic. Registering here, in the actor that publishes, makes
/// the hand-over exact: every event after the returned point reaches the subscriber live.
#[derive(Message)]
#[rtype(result = "Result<(u64, Catchup), CommandError>")]
pub struct Subscribe {
    pub subscriber: Arc<dyn Subscriber>,
    /// The last kitchen sequence number the subscriber has.
    pub since: Option<i64>,
}

impl Handler<Subscribe> for Kitchen {
    type Result = ResponseActFuture<Self, Result<(u64, Catchup), CommandError>>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.serving() {
            return Box::pin(fut::ready(Err(e)));
        }
        let last = self.next_seq - 1;
        if msg.since.is_none_or(|since| since <= last) {
            return Box::pin(fut::ready(Ok(self.register(msg))));
        }
        // Ahead of this kitchen: the subscriber saw events on another node that have not
        // reached this one yet. The store has them.
        let (store, school) = (self.store.clone(), self.school_id.clone());
        Box::pin(
            async move { store.events_since(&school, last, MAX_REPLAY).await }
                .into_actor(self)
                .map(move |events, act, ctx| {
                    for event in events? {
                        act.accept(event, ctx);
                    }
                    Ok(act.register(msg))
                }),
        )
    }
}

impl Kitchen {
    fn register(&mut self, msg: Subscribe) -> (u64, Catchup) {
        let id = self
            .bus
            .subscribe(&kitchen_topic(&self.school_id), msg.subscriber);
        let last = self.next_seq - 1;
        let catchup = match msg.since {
            None => self.snapshot(SnapshotReason::Fresh),
            Some(since) if since == last => Catchup::Live { seq: last },
            Some(since) if since > last || since < 0 => self.snapshot(SnapshotReason::Ahead),
            Some(since) if last - since > MAX_REPLAY => self.snapshot(SnapshotReason::TooFarBehind),
            Some(since) => Catchup::Replay {
                after: since,
                upto: last,
            },
        };
        (id, catchup)
    }
}

impl Kitchen {
    pub(super) fn snapshot(&self, reason: SnapshotReason) -> Catchup {
        let mut orders: Vec<OrderSummary> = self.live.values().cloned().collect();
        orders.sort_by(|a, b| a.placed_at.cmp(&b.placed_at).then(a.id.cmp(&b.id)));
        Catchup::Snapshot {
            seq: self.next_seq - 1,
            orders,
            reason,
        }
    }
}

/// The live orders and the sequence number they are current at.
#[derive(Message)]
#[rtype(result = "Result<Catchup, CommandError>")]
pub struct TakeSnapshot(pub SnapshotReason);

impl Handler<TakeSnapshot> for Kitchen {
    type Result = Result<Catchup, CommandError>;

    fn handle(&mut self, msg: TakeSnapshot, _: &mut Context<Self>) -> Self::Result {
        self.serving()?;
        Ok(self.snapshot(msg.0))
    }
}
