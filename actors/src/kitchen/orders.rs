//! The kitchen's orders: placing them, handing commands to their actors, moving them off
//! a closed counter, and the live list.

use super::{Catchup, Kitchen, SnapshotReason};
use crate::domain::machine::{Issuer, OrderCommand, decide};
use crate::domain::orders::{KitchenEvent, OrderSummary};
use crate::order::{Command, MarkItemDone, MoveFromCounter, OrderActor};
use crate::ports::{CommandError, NewOrder, Placed, Store};
use actix::prelude::*;
use std::sync::Arc;

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

/// An item of a live order marked done at its station, handed to the order's actor.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<KitchenEvent, CommandError>")]
pub struct ItemDoneOrder {
    pub order_id: String,
    pub line: usize,
    pub actor_id: Option<String>,
    /// Set when a station screen marks it: only that station's lines.
    pub station: Option<String>,
}

impl Handler<ItemDoneOrder> for Kitchen {
    type Result = ResponseActFuture<Self, Result<KitchenEvent, CommandError>>;

    fn handle(&mut self, msg: ItemDoneOrder, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.serving() {
            return Box::pin(fut::ready(Err(e)));
        }
        let item = MarkItemDone {
            line: msg.line,
            actor_id: msg.actor_id,
            station: msg.station,
        };
        if let Some(order) = self.orders.get(&msg.order_id).filter(|a| a.connected()) {
            let send = order.send(item);
            return Box::pin(fut::wrap_future::<_, Self>(async move {
                send.await
                    .map_err(|e| CommandError::Internal(e.to_string()))?
            }));
        }
        // No running actor (placed through another node, or finished): the store knows.
        let store = self.store.clone();
        let order_id = msg.order_id;
        Box::pin(
            async move { store.load_order(&order_id).await }
                .into_actor(self)
                .map(move |loaded, act, ctx| {
                    let order = match loaded? {
                        Some(order) if order.school_id == act.school_id => order,
                        _ => return Err(CommandError::OrderNotFound),
                    };
                    if order.state.is_terminal() {
                        let mut done = order;
                        crate::domain::stations::mark_done(&mut done, item.line)?;
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
                    Ok(addr.send(item))
                })
                .then(|send, _, _| {
                    fut::wrap_future::<_, Self>(async move {
                        send?
                            .await
                            .map_err(|e| CommandError::Internal(e.to_string()))?
                    })
                }),
        )
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
