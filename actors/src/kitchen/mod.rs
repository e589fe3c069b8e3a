//! One actor per school kitchen: owns its live orders and publishes committed events in
//! kitchen-sequence order. Its messages sit beside it: `orders` (place, transition, close a
//! counter, list) and `subscribers` (where a subscriber starts).

use crate::bus::Bus;
use crate::domain::orders::{KitchenEvent, OrderSummary};
use crate::domain::timers::TimerPolicy;
use crate::order::{Committed, OrderActor, Seen};
use crate::ports::{CommandError, Store};
use actix::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// How long an out-of-order event waits for the ones before it before the kitchen reads
/// the missing ones back from the store.
const GAP_WAIT: Duration = Duration::from_millis(250);
/// Before a failed load is retried by the supervisor.
const RELOAD_BACKOFF: Duration = Duration::from_secs(1);

#[cfg(test)]
mod gap_tests;
mod orders;
mod subscribers;

pub use orders::{CounterClosed, ItemDoneOrder, LiveOrders, PlaceOrder, TransitionOrder};
pub use subscribers::{Catchup, MAX_REPLAY, SnapshotReason, Subscribe, TakeSnapshot};

pub struct Kitchen {
    school_id: String,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    /// Told when the school does not exist, so the registry stops supervising this kitchen.
    gone: Option<Recipient<KitchenGone>>,
    timers: TimerPolicy,
    loaded: bool,
    /// The school does not exist: every message is answered so until the last address goes.
    missing: bool,
    orders: HashMap<String, Addr<OrderActor>>,
    live: HashMap<String, OrderSummary>,
    /// The next kitchen sequence number to publish.
    next_seq: i64,
    pending: BTreeMap<i64, KitchenEvent>,
    gap_check: Option<SpawnHandle>,
}

impl Kitchen {
    pub fn new(
        school_id: String,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        gone: Option<Recipient<KitchenGone>>,
        timers: TimerPolicy,
    ) -> Kitchen {
        Kitchen {
            school_id,
            store,
            bus,
            gone,
            timers,
            loaded: false,
            missing: false,
            orders: HashMap::new(),
            live: HashMap::new(),
            next_seq: 1,
            pending: BTreeMap::new(),
            gap_check: None,
        }
    }

    /// Whether the kitchen can take a command: its school exists and its state is loaded.
    fn serving(&self) -> Result<(), CommandError> {
        if self.missing {
            Err(CommandError::SchoolNotFound)
        } else if self.loaded {
            Ok(())
        } else {
            Err(CommandError::Unavailable("kitchen is loading".into()))
        }
    }

    fn start_order(&mut self, order: OrderSummary, ctx: &mut Context<Self>) {
        let addr = OrderActor::new(
            order.clone(),
            self.store.clone(),
            ctx.address().recipient(),
            self.timers,
        )
        .start();
        self.orders.insert(order.id.clone(), addr);
        self.live.insert(order.id.clone(), order);
    }

    /// Takes a committed event; publishes it and any that were waiting for it, in order.
    fn accept(&mut self, event: KitchenEvent, ctx: &mut Context<Self>) {
        if event.seq >= self.next_seq {
            self.pending.insert(event.seq, event);
        }
        while let Some(event) = self.pending.remove(&self.next_seq) {
            self.apply(&event, ctx);
            self.bus.publish(&event);
            self.next_seq += 1;
        }
        self.check_gap_later(ctx);
    }

    /// Keeps the live view and the order actors current, whichever node committed the event:
    /// every node runs an actor (and its timers) for every live order of the kitchens it
    /// holds, so a node that dies leaves no order without its timers; the version guard
    /// lets one node win each transition.
    fn apply(&mut self, event: &KitchenEvent, ctx: &mut Context<Self>) {
        if let Some(order) = self.orders.get(&event.order_id) {
            order.do_send(Seen(event.order.clone()));
        }
        if event.order.state.is_terminal() {
            self.live.remove(&event.order_id);
            self.orders.remove(&event.order_id);
        } else if self.orders.contains_key(&event.order_id) {
            self.live
                .insert(event.order_id.clone(), event.order.clone());
        } else {
            self.start_order(event.order.clone(), ctx);
        }
    }

    /// Reads back the events missing before the pending ones. A number below the highest
    /// one received before the read, or returned by it, was committed before it (numbers are
    /// taken under the school's lock, in order), so if the read does not hold it, it was never
    /// committed and is skipped. A number above it may belong to a commit whose answer is still on its way
    /// (it may have committed after the read began): it is looked for again, never skipped on
    /// the word of a read that could not have seen it (a read that took long under load once
    /// made the kitchen skip an event committed meanwhile, and drop it when it arrived).
    fn fill_gap(&mut self, ctx: &mut Context<Self>) {
        let (store, school, after) = (
            self.store.clone(),
            self.school_id.clone(),
            self.next_seq - 1,
        );
        let received = self.pending.keys().next_back().copied().unwrap_or(after);
        ctx.spawn(
            async move { store.events_since(&school, after, 1000).await }
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(events) => {
                        // The read holds everything committed before the last it returns.
                        let received = events.iter().map(|e| e.seq).fold(received, i64::max);
                        for event in events {
                            act.accept(event, ctx);
                        }
                        while let Some(&first) = act.pending.keys().next()
                            && first > act.next_seq
                            && act.next_seq < received
                        {
                            tracing::warn!(school = %act.school_id, from = act.next_seq, to = first, "skipping unrecoverable sequence gap");
                            act.next_seq = first;
                            if let Some(event) = act.pending.remove(&first) {
                                act.accept(event, ctx);
                            }
                        }
                        act.check_gap_later(ctx);
                    }
                    Err(e) => {
                        tracing::warn!(school = %act.school_id, error = %e, "gap fill failed; retrying");
                        act.check_gap_later(ctx);
                    }
                }),
        );
    }

    /// Reads the missing events back after `GAP_WAIT`, while events wait for them.
    fn check_gap_later(&mut self, ctx: &mut Context<Self>) {
        if !self.pending.is_empty() && self.gap_check.is_none() {
            self.gap_check = Some(ctx.run_later(GAP_WAIT, |act, ctx| {
                act.gap_check = None;
                act.fill_gap(ctx);
            }));
        }
    }
}

impl Actor for Kitchen {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (store, school) = (self.store.clone(), self.school_id.clone());
        // Messages wait until the kitchen has its state back.
        ctx.wait(
            async move { store.load_kitchen(&school).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(snapshot) => {
                        act.next_seq = snapshot.last_seq + 1;
                        for order in snapshot.live_orders {
                            act.start_order(order, ctx);
                        }
                        act.loaded = true;
                        tracing::debug!(school = %act.school_id, live = act.live.len(), "kitchen loaded");
                    }
                    // Not stopped: its supervisor would restart it for as long as a request
                    // holds its address. Once the registry and every request let go of it,
                    // the kitchen stops for good.
                    Err(CommandError::SchoolNotFound) => {
                        act.missing = true;
                        if let Some(gone) = &act.gone {
                            gone.do_send(KitchenGone(act.school_id.clone()));
                        }
                    }
                    Err(e) => {
                        tracing::error!(school = %act.school_id, error = %e, "kitchen load failed; restarting");
                        ctx.run_later(RELOAD_BACKOFF, |_, ctx| ctx.stop());
                    }
                }),
        );
    }
}

impl Supervised for Kitchen {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.loaded = false;
        self.orders.clear();
        self.live.clear();
        self.pending.clear();
        self.gap_check = None;
    }
}

impl Handler<Committed> for Kitchen {
    type Result = ();
    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        self.bus.announce(&msg.0);
        self.accept(msg.0, ctx);
    }
}

/// An event another node committed for this kitchen, as the bus between nodes carries it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observed(pub KitchenEvent);

impl Handler<Observed> for Kitchen {
    type Result = ();
    fn handle(&mut self, msg: Observed, ctx: &mut Context<Self>) {
        self.accept(msg.0, ctx);
    }
}

/// Reads what the store committed since the kitchen's last event: events from other nodes
/// that the bus between nodes could not carry (it was away).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CatchUp;

impl Handler<CatchUp> for Kitchen {
    type Result = ();
    fn handle(&mut self, _: CatchUp, ctx: &mut Context<Self>) {
        if self.loaded && self.gap_check.is_none() {
            self.fill_gap(ctx);
        }
    }
}

/// Sent to the registry by a kitchen whose school does not exist.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KitchenGone(pub String);

/// Makes the kitchen fail the way a failing actor does here: it stops, losing its memory, and
/// its supervisor restarts it from the store. For the tests that prove exactly that.
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectFault;

#[cfg(feature = "fault-injection")]
impl Handler<InjectFault> for Kitchen {
    type Result = ();
    fn handle(&mut self, _: InjectFault, ctx: &mut Context<Self>) {
        tracing::warn!(school = %self.school_id, "fault injected: kitchen stops");
        ctx.stop();
    }
}

/// Makes one of the kitchen's order actors fail (it stops, losing its memory).
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct InjectOrderFault(pub String);

#[cfg(feature = "fault-injection")]
impl Handler<InjectOrderFault> for Kitchen {
    type Result = bool;
    fn handle(&mut self, msg: InjectOrderFault, _: &mut Context<Self>) -> bool {
        match self.orders.get(&msg.0) {
            Some(order) => {
                order.do_send(crate::order::InjectFault);
                true
            }
            None => false,
        }
    }
}
