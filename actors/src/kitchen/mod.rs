//! One actor per school kitchen: owns its live orders and publishes committed events in
//! kitchen-sequence order.

use crate::order::{Command, MoveFromCounter, OrderActor, Seen};
use crate::bus::{Bus, Subscriber, kitchen_topic};
use crate::domain::{Issuer, KitchenEvent, OrderCommand, OrderSummary, TimerPolicy, decide};
use crate::ports::{CommandError, NewOrder, Placed, Store};
use actix::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// How long an out-of-order event waits for the ones before it before the kitchen reads
/// the missing ones back from the store.
const GAP_WAIT: Duration = Duration::from_millis(250);
/// Before a failed load is retried by the supervisor.
const RELOAD_BACKOFF: Duration = Duration::from_secs(1);
/// How far behind a resuming subscriber may be before it gets a fresh snapshot instead.
pub const MAX_REPLAY: i64 = 10_000;

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

/// An order event committed by one of this kitchen's order actors.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed(pub KitchenEvent);

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

#[derive(Message)]
#[rtype(result = "Result<Placed, CommandError>")]
pub struct PlaceOrder(pub NewOrder);

impl Handler<PlaceOrder> for Kitchen {
    type Result = ResponseActFuture<Self, Result<Placed, CommandError>>;

    fn handle(&mut self, msg: PlaceOrder, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let serving = self.serving();
        Box::pin(
            async move {
                serving?;
                store.place_order(msg.0).await
            }
            .into_actor(self)
            .map(|result, act, ctx| {
                if let Ok(Placed::New(event)) = &result {
                    act.bus.announce(event);
                    act.start_order(event.order.clone(), ctx);
                    act.accept(event.clone(), ctx);
                }
                result
            }),
        )
    }
}

#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<KitchenEvent, CommandError>")]
pub struct TransitionOrder {
    pub order_id: String,
    pub command: OrderCommand,
    pub issuer: Issuer,
    pub actor_id: Option<String>,
    pub reason: Option<String>,
    pub expected_version: Option<i64>,
    /// A pickup a scan decided: it commits with the scan's decision, under the scan's claim.
    pub scan: Option<crate::ports::ScanClaim>,
}

impl Handler<TransitionOrder> for Kitchen {
    type Result = ResponseActFuture<Self, Result<KitchenEvent, CommandError>>;

    fn handle(&mut self, msg: TransitionOrder, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.serving() {
            return Box::pin(fut::ready(Err(e)));
        }
        let command = Command {
            command: msg.command,
            issuer: msg.issuer,
            actor_id: msg.actor_id,
            reason: msg.reason,
            expected_version: msg.expected_version,
            scan: msg.scan,
        };
        let order_id = msg.order_id;
        let Some(order) = self
            .orders
            .get(&order_id)
            .filter(|a| a.connected())
            .cloned()
        else {
            return self.recover(order_id, command);
        };
        // If the actor dies with the command in its mailbox, recover once from the store.
        let retry = command.clone();
        Box::pin(
            fut::wrap_future::<_, Self>(order.send(command)).then(move |sent, act, _| match sent {
                Ok(result) => Box::pin(fut::ready(result)),
                Err(_) => act.recover(order_id, retry),
            }),
        )
    }
}

impl Kitchen {
    /// No running actor for the order: placed through another node, finished, unknown, or
    /// its actor failed. The store knows; a live order gets a fresh actor from what was
    /// committed, and the command goes to it.
    fn recover(
        &mut self,
        order_id: String,
        command: Command,
    ) -> ResponseActFuture<Self, Result<KitchenEvent, CommandError>> {
        let store = self.store.clone();
        let (forward_store, forward_id) = (store.clone(), order_id.clone());
        Box::pin(
            async move { store.load_order(&order_id).await }
                .into_actor(self)
                .map(move |loaded, act, ctx| {
                    let order = match loaded? {
                        Some(order) if order.school_id == act.school_id => order,
                        _ => return Err(CommandError::OrderNotFound),
                    };
                    if order.state.is_terminal() {
                        decide(order.state, order.version, command.command, command.issuer)?;
                        return Err(CommandError::VersionConflict);
                    }
                    if !act.orders.get(&order.id).is_some_and(Addr::connected) {
                        act.start_order(order.clone(), ctx);
                    }
                    let addr = act
                        .orders
                        .get(&order.id)
                        .cloned()
                        .ok_or(CommandError::OrderNotFound)?;
                    Ok((addr, command))
                })
                .then(move |ready, _, _| {
                    fut::wrap_future::<_, Self>(async move {
                        let (addr, command) = ready?;
                        forward(addr, command, forward_store, forward_id).await
                    })
                }),
        )
    }
}

/// Hands a command to its order actor. If the actor has just stopped (its order reached a
/// terminal state while the command waited), the answer comes from the committed state.
async fn forward(
    order: Addr<OrderActor>,
    command: Command,
    store: Arc<dyn Store>,
    order_id: String,
) -> Result<KitchenEvent, CommandError> {
    match order.send(command.clone()).await {
        Ok(result) => result,
        Err(_) => match store.load_order(&order_id).await? {
            Some(current) => {
                decide(
                    current.state,
                    current.version,
                    command.command,
                    command.issuer,
                )?;
                Err(CommandError::VersionConflict)
            }
            None => Err(CommandError::OrderNotFound),
        },
    }
}

/// A counter closed: its waiting orders move to the least-loaded open counter (or wait for
/// one), each move committed and announced. Answers how many moved.
#[derive(Message)]
#[rtype(result = "Result<usize, CommandError>")]
pub struct CounterClosed {
    pub counter_id: String,
    pub actor_id: Option<String>,
}

impl Handler<CounterClosed> for Kitchen {
    type Result = ResponseFuture<Result<usize, CommandError>>;

    fn handle(&mut self, msg: CounterClosed, _: &mut Context<Self>) -> Self::Result {
        let waiting: Vec<Addr<OrderActor>> = self
            .live
            .values()
            .filter(|o| o.counter.as_ref().is_some_and(|c| c.id == msg.counter_id))
            .filter_map(|o| self.orders.get(&o.id).cloned())
            .collect();
        let moves = waiting.into_iter().map(move |order| {
            order.send(MoveFromCounter {
                counter_id: msg.counter_id.clone(),
                actor_id: msg.actor_id.clone(),
            })
        });
        Box::pin(async move {
            let mut moved = 0;
            for result in futures_util::future::join_all(moves).await {
                match result {
                    Ok(Ok(Some(_))) => moved += 1,
                    Ok(Ok(None)) | Err(_) => {}
                    Ok(Err(e)) => return Err(e),
                }
            }
            Ok(moved)
        })
    }
}

/// The kitchen's live orders, oldest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<OrderSummary>, CommandError>")]
pub struct LiveOrders;

impl Handler<LiveOrders> for Kitchen {
    type Result = Result<Vec<OrderSummary>, CommandError>;

    fn handle(&mut self, _: LiveOrders, _: &mut Context<Self>) -> Self::Result {
        self.serving()?;
        match self.snapshot(SnapshotReason::Fresh) {
            Catchup::Snapshot { orders, .. } => Ok(orders),
            _ => Ok(Vec::new()),
        }
    }
}

/// Sent to the registry by a kitchen whose school does not exist.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KitchenGone(pub String);

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
    pub subscriber: Subscriber,
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
    fn snapshot(&self, reason: SnapshotReason) -> Catchup {
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

#[cfg(test)]
mod gap_tests {
    use super::*;
    use crate::bus::LocalBus;
    use crate::domain::OrderState;
    use crate::ports::{AlertCommit, CounterMove, KitchenSnapshot, TransitionCommit};
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// A store whose reads of events hold what was committed when each began, and answer
    /// when the test says.
    #[derive(Default)]
    struct SlowStore {
        committed: Mutex<Vec<KitchenEvent>>,
        reads: Mutex<Vec<Arc<tokio::sync::Semaphore>>>,
    }

    impl SlowStore {
        fn commit(&self, event: &KitchenEvent) {
            self.committed.lock().unwrap().push(event.clone());
        }
        fn reads_begun(&self) -> usize {
            self.reads.lock().unwrap().len()
        }
        fn answer(&self, read: usize) {
            self.reads.lock().unwrap()[read].add_permits(1);
        }
    }

    fn not_here() -> CommandError {
        CommandError::Internal("not in this test".into())
    }

    #[async_trait]
    impl Store for SlowStore {
        async fn load_kitchen(&self, school_id: &str) -> Result<KitchenSnapshot, CommandError> {
            Ok(KitchenSnapshot {
                school_id: school_id.into(),
                last_seq: 0,
                live_orders: Vec::new(),
            })
        }
        async fn place_order(&self, _: NewOrder) -> Result<Placed, CommandError> {
            Err(not_here())
        }
        async fn commit_transition(
            &self,
            _: TransitionCommit,
        ) -> Result<KitchenEvent, CommandError> {
            Err(not_here())
        }
        async fn move_counter(&self, _: CounterMove) -> Result<KitchenEvent, CommandError> {
            Err(not_here())
        }
        async fn record_alert(&self, _: AlertCommit) -> Result<KitchenEvent, CommandError> {
            Err(not_here())
        }
        async fn load_order(&self, _: &str) -> Result<Option<OrderSummary>, CommandError> {
            Err(not_here())
        }
        async fn events_since(
            &self,
            _: &str,
            after: i64,
            _: i64,
        ) -> Result<Vec<KitchenEvent>, CommandError> {
            let seen: Vec<KitchenEvent> = self
                .committed
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.seq > after)
                .cloned()
                .collect();
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            self.reads.lock().unwrap().push(gate.clone());
            let _answered = gate.acquire().await;
            Ok(seen)
        }
    }

    fn placed(seq: i64) -> KitchenEvent {
        let at = chrono::Utc::now();
        let order = OrderSummary {
            id: format!("o{seq}"),
            school_id: "s".into(),
            student_id: "st".into(),
            student_name: "Student".into(),
            state: OrderState::Placed,
            version: 1,
            items: Vec::new(),
            total_cents: 0,
            placed_at: at,
            updated_at: at,
            counter: None,
            pickup_code: None,
            wave: None,
            ready_at: None,
            alerts: Vec::new(),
            allergy_override: None,
        };
        KitchenEvent {
            school_id: "s".into(),
            seq,
            kind: "order.placed".into(),
            order_id: order.id.clone(),
            from: None,
            to: OrderState::Placed,
            version: 1,
            actor_id: None,
            reason: None,
            at,
            order,
        }
    }

    fn kitchen() -> (Arc<SlowStore>, Addr<Kitchen>) {
        let store = Arc::new(SlowStore::default());
        let kitchen = Kitchen::new(
            "s".into(),
            store.clone(),
            Arc::new(LocalBus::new()),
            None,
            TimerPolicy::default(),
        )
        .start();
        (store, kitchen)
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..200 {
            if what() {
                return;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        panic!("waited 2 s");
    }

    /// Event 3 commits after a read for an earlier gap began, and its answer comes late: the
    /// read's answer must not make the kitchen skip it.
    #[actix::test]
    async fn a_gap_is_skipped_only_on_the_word_of_a_read_that_could_see_it() {
        let (store, kitchen) = kitchen();
        let events: Vec<KitchenEvent> = (1..=4).map(placed).collect();
        // 1 and 2 commit; 2's answer comes first, and a read for the gap at 1 begins.
        store.commit(&events[0]);
        store.commit(&events[1]);
        kitchen.send(Committed(events[1].clone())).await.unwrap();
        until(|| store.reads_begun() == 1).await;
        // 1 arrives; 3 and 4 commit, 4's answer first: a second read begins for the gap at 3.
        kitchen.send(Committed(events[0].clone())).await.unwrap();
        store.commit(&events[2]);
        store.commit(&events[3]);
        kitchen.send(Committed(events[3].clone())).await.unwrap();
        until(|| store.reads_begun() == 2).await;
        // The first read answers (without 3, which committed after it began), then 3 arrives.
        store.answer(0);
        actix::clock::sleep(Duration::from_millis(50)).await;
        kitchen.send(Committed(events[2].clone())).await.unwrap();
        store.answer(1);
        let mut live: Vec<String> = kitchen
            .send(LiveOrders)
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect();
        live.sort();
        assert_eq!(live, ["o1", "o2", "o3", "o4"]);
    }

    /// A number below one the kitchen already holds, and missing from a read that began after
    /// it, was never committed: skipped, so the kitchen does not wait for it forever.
    #[actix::test]
    async fn a_number_never_committed_is_skipped() {
        let (store, kitchen) = kitchen();
        let second = placed(2);
        store.commit(&second);
        kitchen.send(Committed(second)).await.unwrap();
        until(|| store.reads_begun() == 1).await;
        store.answer(0);
        let kitchen = &kitchen;
        let live = async || kitchen.send(LiveOrders).await.unwrap().unwrap().len();
        for _ in 0..200 {
            if live().await == 1 {
                return;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        panic!("the event after the gap was never published");
    }
}
