//! One actor per live order: decides its transitions one at a time and commits them.

use super::kitchen::Committed;
use crate::domain::KitchenEvent;
use crate::domain::{
    Issuer, OrderCommand, OrderSummary, RECALL_WINDOW_SECS, decide, recall_allowed,
};
use crate::ports::{CommandError, Store, TransitionCommit};
use actix::prelude::*;
use chrono::Utc;
use std::sync::Arc;

pub struct OrderActor {
    order: OrderSummary,
    store: Arc<dyn Store>,
    kitchen: Recipient<Committed>,
}

impl OrderActor {
    pub fn new(order: OrderSummary, store: Arc<dyn Store>, kitchen: Recipient<Committed>) -> Self {
        OrderActor {
            order,
            store,
            kitchen,
        }
    }
}

impl OrderActor {
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
}

impl Handler<Command> for OrderActor {
    type Result = AtomicResponse<Self, Result<KitchenEvent, CommandError>>;

    fn handle(&mut self, msg: Command, _: &mut Context<Self>) -> Self::Result {
        let current = self.order.version;
        let decided = match msg.expected_version {
            Some(v) if v != current => Err(CommandError::VersionConflict),
            _ => decide(self.order.state, current, msg.command, msg.issuer)
                .map_err(CommandError::from)
                .and_then(|t| {
                    if msg.command == OrderCommand::Recall
                        && !recall_allowed(self.order.updated_at, Utc::now())
                    {
                        Err(CommandError::RecallWindowPassed(RECALL_WINDOW_SECS))
                    } else {
                        Ok(t)
                    }
                }),
        };
        // Recalls say so in the history, with the staff's words if any.
        let reason = match (msg.command, msg.reason) {
            (OrderCommand::Recall, Some(why)) => Some(format!("recall: {why}")),
            (OrderCommand::Recall, None) => Some("recall".to_owned()),
            (_, reason) => reason,
        };
        let (school_id, order_id) = (self.order.school_id.clone(), self.order.id.clone());
        let store = self.store.clone();
        // Atomic: the next command waits until this one is committed or refused.
        AtomicResponse::new(Box::pin(
            async move {
                let commit = TransitionCommit {
                    school_id,
                    order_id,
                    transition: decided?,
                    actor_id: msg.actor_id,
                    reason,
                };
                store.commit_transition(commit).await
            }
            .into_actor(self)
            .map(|result, act, ctx| {
                if let Err(CommandError::VersionConflict) = &result {
                    // Changed elsewhere (another node): pick up the committed state.
                    act.refresh(ctx);
                }
                if let Ok(event) = &result {
                    act.order = event.order.clone();
                    act.kitchen.do_send(Committed(event.clone()));
                    if act.order.state.is_terminal() {
                        ctx.stop();
                    }
                }
                result
            }),
        ))
    }
}
