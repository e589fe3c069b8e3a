//! One actor per live order: decides its transitions one at a time and commits them.

use crate::domain::machine::{
    Issuer, OrderCommand, OrderState, RECALL_WINDOW_SECS, decide, recall_allowed,
};
use crate::domain::orders::{Alert, KitchenEvent, OrderSummary};
use crate::domain::stations::{mark_done, steps_to_ready};
use crate::domain::timers::{TimerAction, TimerPolicy, next_timer};
use crate::domain::waves::cancel_allowed;
use crate::ports::{
    AlertCommit, CommandError, CounterMove, ItemDoneCommit, Store, TransitionCommit,
};
use actix::prelude::*;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

/// Before a timer whose command could not be committed (database away) tries again.
const TIMER_RETRY: Duration = Duration::from_secs(5);

pub struct OrderActor {
    order: OrderSummary,
    store: Arc<dyn Store>,
    kitchen: Recipient<Committed>,
    timers: TimerPolicy,
    timer: Option<SpawnHandle>,
}

impl OrderActor {
    pub fn new(
        order: OrderSummary,
        store: Arc<dyn Store>,
        kitchen: Recipient<Committed>,
        timers: TimerPolicy,
    ) -> Self {
        OrderActor {
            order,
            store,
            kitchen,
            timers,
            timer: None,
        }
    }

    /// Arms the one timer the order needs next. Deadlines are derived from the stored order
    /// (its wave, when it was placed and became ready), so a restarted actor re-arms them and
    /// one that passed while the hub was down fires at once; the version guard makes it fire
    /// once.
    fn arm_timers(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        let Some((deadline, action)) = next_timer(&self.order, &self.timers) else {
            return;
        };
        let wait = (deadline - Utc::now()).to_std().unwrap_or_default();
        self.timer = Some(ctx.run_later(wait, move |act, ctx| {
            act.timer = None;
            act.fire(action, ctx);
        }));
    }

    fn fire(&mut self, action: TimerAction, ctx: &mut Context<Self>) {
        let version = self.order.version;
        let me = ctx.address();
        let send = async move {
            match action {
                TimerAction::Command(command) => me
                    .send(Command {
                        command,
                        issuer: Issuer::System,
                        actor_id: None,
                        reason: Some(timer_reason(action).to_owned()),
                        expected_version: Some(version),
                        scan: None,
                    })
                    .await
                    .map(|r| r.map(drop)),
                TimerAction::Alert(alert) => me
                    .send(RecordAlert {
                        alert,
                        expected_version: version,
                    })
                    .await
                    .map(|r| r.map(drop)),
            }
        };
        ctx.spawn(send.into_actor(self).map(move |result, act, ctx| {
            if let Ok(Err(CommandError::Unavailable(e) | CommandError::Internal(e))) = result {
                tracing::warn!(order = %act.order.id, error = %e, "timer could not commit; retrying");
                act.timer = Some(ctx.run_later(TIMER_RETRY, move |act, ctx| {
                    act.timer = None;
                    act.fire(action, ctx);
                }));
            }
        }));
    }

    /// Takes a committed event as the order's new state; a finished order's actor stops.
    fn apply(&mut self, event: &KitchenEvent, ctx: &mut Context<Self>) {
        self.order = event.order.clone();
        self.kitchen.do_send(Committed(event.clone()));
        if self.order.state.is_terminal() {
            ctx.stop();
        } else {
            self.arm_timers(ctx);
        }
    }
}

/// Why the hub acted on its own, as recorded in the order's history.
fn timer_reason(action: TimerAction) -> &'static str {
    match action {
        TimerAction::Command(OrderCommand::Cancel) => "timer: not confirmed in time",
        TimerAction::Command(_) => "timer: the service window closed",
        TimerAction::Alert(Alert::ConfirmOverdue) => "timer: not confirmed in time",
        TimerAction::Alert(Alert::PickupReminder) => "timer: ready and still waiting",
    }
}

impl OrderActor {
    /// Decides with `decide`. A refusal may come from a view another node has moved past:
    /// before saying no, the committed order is read once and, if newer, decided on again.
    fn decide_afresh_if_refused<T: 'static>(
        &self,
        decide: impl Fn(&OrderActor) -> Result<T, CommandError> + 'static,
    ) -> ResponseActFuture<Self, Result<T, CommandError>> {
        let first = decide(self);
        let refused = first.is_err();
        let (store, id) = (self.store.clone(), self.order.id.clone());
        Box::pin(
            async move {
                if refused {
                    store.load_order(&id).await.ok().flatten()
                } else {
                    None
                }
            }
            .into_actor(self)
            .map(move |fresh, act, ctx| {
                match fresh.filter(|o| o.version > act.order.version) {
                    Some(order) => {
                        act.order = order;
                        act.arm_timers(ctx);
                        decide(act)
                    }
                    None => first,
                }
            }),
        )
    }

    fn refresh(&mut self, ctx: &mut Context<Self>) {
        let (store, id) = (self.store.clone(), self.order.id.clone());
        ctx.wait(
            async move { store.load_order(&id).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(Some(order)) => {
                        act.order = order;
                        if act.order.state.is_terminal() {
                            ctx.stop();
                        } else {
                            act.arm_timers(ctx);
                        }
                    }
                    Ok(None) => ctx.stop(),
                    Err(e) => {
                        tracing::warn!(order = %act.order.id, error = %e, "order refresh failed")
                    }
                }),
        );
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.arm_timers(ctx);
    }
}

#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<KitchenEvent, CommandError>")]
pub struct Command {
    pub command: OrderCommand,
    pub issuer: Issuer,
    pub actor_id: Option<String>,
    pub reason: Option<String>,
    /// The version the caller saw; a different current version is a conflict.
    pub expected_version: Option<i64>,
    pub scan: Option<crate::ports::ScanClaim>,
}

impl OrderActor {
    /// The transition `msg` asks for, decided on what this actor knows.
    fn decide_command(&self, msg: &Command) -> Result<TransitionCommit, CommandError> {
        let current = self.order.version;
        let transition = match msg.expected_version {
            Some(v) if v != current => Err(CommandError::VersionConflict),
            _ => decide(self.order.state, current, msg.command, msg.issuer)
                .map_err(CommandError::from)
                .and_then(|t| {
                    if msg.command == OrderCommand::Recall
                        && !recall_allowed(self.order.updated_at, Utc::now())
                    {
                        Err(CommandError::RecallWindowPassed(RECALL_WINDOW_SECS))
                    } else if msg.command == OrderCommand::Cancel
                        && !cancel_allowed(msg.issuer, self.order.wave.as_ref(), Utc::now())
                    {
                        Err(CommandError::CancelDeadlinePassed)
                    } else {
                        Ok(t)
                    }
                }),
        }?;
        // Recalls say so in the history, with the staff's words if any.
        let reason = match (msg.command, &msg.reason) {
            (OrderCommand::Recall, Some(why)) => Some(format!("recall: {why}")),
            (OrderCommand::Recall, None) => Some("recall".to_owned()),
            (_, reason) => reason.clone(),
        };
        Ok(TransitionCommit {
            school_id: self.order.school_id.clone(),
            order_id: self.order.id.clone(),
            transition,
            order: self.order.clone(),
            issuer: msg.issuer,
            actor_id: msg.actor_id.clone(),
            reason,
            scan: msg.scan.clone(),
        })
    }
}

impl Handler<Command> for OrderActor {
    type Result = AtomicResponse<Self, Result<KitchenEvent, CommandError>>;

    fn handle(&mut self, msg: Command, _: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(Box::pin(
            self.decide_afresh_if_refused(move |act| act.decide_command(&msg))
                .then(|decided, act, _| {
                    let store = act.store.clone();
                    // Atomic: the next command waits until this one is committed or refused.
                    async move { store.commit_transition(decided?).await }.into_actor(act)
                })
                .map(|result, act, ctx| {
                    if let Err(CommandError::VersionConflict) = &result {
                        // Changed elsewhere (another node): pick up the committed state.
                        act.refresh(ctx);
                    }
                    if let Ok(event) = &result {
                        act.apply(event, ctx);
                    } else if act.order.state.is_terminal() {
                        ctx.stop();
                    }
                    result
                }),
        ))
    }
}

/// An order event an order actor committed, for its kitchen to publish: defined here, so the
/// order actor needs nothing from the kitchen but a recipient.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed(pub KitchenEvent);

/// The order as committed, possibly by another node: a newer version replaces what this
/// actor knows (and its timers); a finished order's actor stops.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Seen(pub OrderSummary);

impl Handler<Seen> for OrderActor {
    type Result = ();

    fn handle(&mut self, msg: Seen, ctx: &mut Context<Self>) {
        if msg.0.version <= self.order.version {
            return;
        }
        self.order = msg.0;
        if self.order.state.is_terminal() {
            ctx.stop();
        } else {
            self.arm_timers(ctx);
        }
    }
}

/// A timer's alert, recorded once: the order must still be at the version the timer saw.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<KitchenEvent, CommandError>")]
pub struct RecordAlert {
    pub alert: Alert,
    pub expected_version: i64,
}

impl Handler<RecordAlert> for OrderActor {
    type Result = AtomicResponse<Self, Result<KitchenEvent, CommandError>>;

    fn handle(&mut self, msg: RecordAlert, _: &mut Context<Self>) -> Self::Result {
        let commit = (msg.expected_version == self.order.version
            && !self.order.alerts.contains(&msg.alert))
        .then(|| AlertCommit {
            school_id: self.order.school_id.clone(),
            order_id: self.order.id.clone(),
            expected_version: msg.expected_version,
            alert: msg.alert,
            reason: timer_reason(TimerAction::Alert(msg.alert)).to_owned(),
        });
        let store = self.store.clone();
        AtomicResponse::new(Box::pin(
            async move {
                store
                    .record_alert(commit.ok_or(CommandError::VersionConflict)?)
                    .await
            }
            .into_actor(self)
            .map(|result, act, ctx| {
                match &result {
                    Ok(event) => act.apply(event, ctx),
                    Err(CommandError::VersionConflict) => act.refresh(ctx),
                    Err(_) => {}
                }
                result
            }),
        ))
    }
}

/// Moves the order off a counter that closed, if it is ready there; `None` if it is not.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Option<KitchenEvent>, CommandError>")]
pub struct MoveFromCounter {
    pub counter_id: String,
    pub actor_id: Option<String>,
}

impl Handler<MoveFromCounter> for OrderActor {
    type Result = AtomicResponse<Self, Result<Option<KitchenEvent>, CommandError>>;

    fn handle(&mut self, msg: MoveFromCounter, _: &mut Context<Self>) -> Self::Result {
        let applies = self.order.state == OrderState::Ready
            && self
                .order
                .counter
                .as_ref()
                .is_some_and(|c| c.id == msg.counter_id);
        let m = CounterMove {
            school_id: self.order.school_id.clone(),
            order_id: self.order.id.clone(),
            expected_version: self.order.version,
            from_counter_id: msg.counter_id,
            actor_id: msg.actor_id,
        };
        let store = self.store.clone();
        AtomicResponse::new(Box::pin(
            async move {
                if !applies {
                    return Ok(None);
                }
                store.move_counter(m).await.map(Some)
            }
            .into_actor(self)
            .map(|result, act, ctx| {
                match &result {
                    Ok(Some(event)) => {
                        act.order = event.order.clone();
                        act.kitchen.do_send(Committed(event.clone()));
                    }
                    Err(CommandError::VersionConflict) => act.refresh(ctx),
                    _ => {}
                }
                result
            }),
        ))
    }
}

/// An item (line `line`) marked done at its station. Where the school says so, an order
/// whose stations are then all done is made ready by the hub, through the usual transitions.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<KitchenEvent, CommandError>")]
pub struct MarkItemDone {
    pub line: usize,
    pub actor_id: Option<String>,
    /// Set when a station screen marks it: only that station's lines.
    pub station: Option<String>,
}

impl OrderActor {
    fn decide_item(&self, msg: &MarkItemDone) -> Result<ItemDoneCommit, CommandError> {
        crate::domain::stations::made_at(&self.order, msg.line, msg.station.as_deref())?;
        mark_done(&mut self.order.clone(), msg.line)?;
        Ok(ItemDoneCommit {
            school_id: self.order.school_id.clone(),
            order_id: self.order.id.clone(),
            expected_version: self.order.version,
            line: msg.line,
            actor_id: msg.actor_id.clone(),
        })
    }

    /// Every station is done and the school readies such orders: start (if need be) and
    /// ready, as the system, each step decided on the order as it then is.
    fn ready_by_itself(&mut self, ctx: &mut Context<Self>) {
        let steps = steps_to_ready(&self.order);
        if steps.is_empty() {
            return;
        }
        let me = ctx.address();
        let id = self.order.id.clone();
        ctx.spawn(
            async move {
                for &command in steps {
                    let step = me.send(Command {
                        command,
                        issuer: Issuer::System,
                        actor_id: None,
                        reason: Some("every station done".to_owned()),
                        expected_version: None,
                        scan: None,
                    });
                    let refused = match step.await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    };
                    // Staff moved it first, or the store is away: the expo's bump remains.
                    tracing::info!(order = %id, error = %refused, "stations done; not readied by the hub");
                    return;
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<MarkItemDone> for OrderActor {
    type Result = AtomicResponse<Self, Result<KitchenEvent, CommandError>>;

    fn handle(&mut self, msg: MarkItemDone, _: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(Box::pin(
            self.decide_afresh_if_refused(move |act| act.decide_item(&msg))
                .then(|decided, act, _| {
                    let store = act.store.clone();
                    async move { store.mark_item_done(decided?).await }.into_actor(act)
                })
                .map(|result, act, ctx| match result {
                    Ok(done) => {
                        act.apply(&done.event, ctx);
                        if done.ready_when_stations_done {
                            act.ready_by_itself(ctx);
                        }
                        Ok(done.event)
                    }
                    Err(e) => {
                        if e == CommandError::VersionConflict {
                            act.refresh(ctx);
                        }
                        Err(e)
                    }
                }),
        ))
    }
}

/// Makes the order actor fail: it stops; its kitchen starts a fresh one from the store.
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectFault;

#[cfg(feature = "fault-injection")]
impl Handler<InjectFault> for OrderActor {
    type Result = ();
    fn handle(&mut self, _: InjectFault, ctx: &mut Context<Self>) {
        tracing::warn!(order = %self.order.id, "fault injected: order actor stops");
        ctx.stop();
    }
}
