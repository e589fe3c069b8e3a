//! Notification dispatch: drains the outbox and hands each message to its channel's sender.

use crate::ports::{Outbox, OutboxMessage, SendError, Sender};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Attempts before a message is dead-lettered.
pub const MAX_ATTEMPTS: i32 = 8;
const BATCH: i64 = 32;

/// Exponential backoff with full jitter: `jitter` in [0, 1) picks a point in the window.
pub fn retry_delay_ms(attempts: i32, jitter: f64) -> i64 {
    let base: i64 = 1_000;
    let cap: i64 = 5 * 60 * 1_000;
    let window = base.saturating_mul(1_i64 << attempts.clamp(0, 20)).min(cap);
    let jitter = jitter.clamp(0.0, 1.0);
    (window / 2) + ((window / 2) as f64 * jitter) as i64
}

pub struct Dispatcher {
    outbox: Arc<dyn Outbox>,
    senders: Arc<HashMap<String, Arc<dyn Sender>>>,
    poll: Duration,
    busy: bool,
    again: bool,
}

impl Dispatcher {
    pub fn new(
        outbox: Arc<dyn Outbox>,
        senders: HashMap<String, Arc<dyn Sender>>,
        poll: Duration,
    ) -> Dispatcher {
        Dispatcher {
            outbox,
            senders: Arc::new(senders),
            poll,
            busy: false,
            again: false,
        }
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            self.again = true;
            return;
        }
        self.busy = true;
        let (outbox, senders) = (self.outbox.clone(), self.senders.clone());
        ctx.spawn(
            async move {
                let batch = match outbox.claim_due(BATCH).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox claim failed");
                        return false;
                    }
                };
                let full = batch.len() as i64 == BATCH;
                let sends = batch
                    .into_iter()
                    .map(|message| deliver(outbox.clone(), senders.clone(), message));
                futures_util::future::join_all(sends).await;
                full
            }
            .into_actor(self)
            .map(|more, act, ctx| {
                act.busy = false;
                if more || std::mem::take(&mut act.again) {
                    act.drain(ctx);
                }
            }),
        );
    }
}

async fn deliver(
    outbox: Arc<dyn Outbox>,
    senders: Arc<HashMap<String, Arc<dyn Sender>>>,
    message: OutboxMessage,
) {
    match outbox.still_true(&message).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(id = %message.id, template = %message.template, "no longer true; expired");
            if let Err(e) = outbox.mark_expired(&message.id).await {
                tracing::warn!(id = %message.id, error = %e, "could not record expiry");
            }
            return;
        }
        // Cannot tell now: the claim expires and it is looked at again.
        Err(e) => return tracing::warn!(id = %message.id, error = %e, "could not check message"),
    }
    let result = match senders.get(&message.channel) {
        Some(sender) => sender.send(&message).await,
        None => Err(SendError::Permanent(format!(
            "no provider for channel {}",
            message.channel
        ))),
    };
    let recorded = match result {
        Ok(()) => outbox.mark_sent(&message.id).await,
        Err(SendError::Transient(reason)) if message.attempts + 1 < MAX_ATTEMPTS => {
            let delay = retry_delay_ms(message.attempts, rand::random::<f64>());
            tracing::info!(id = %message.id, channel = %message.channel, attempts = message.attempts + 1, reason = %reason, "send failed; will retry");
            outbox.mark_failed(&message.id, &reason, Some(delay)).await
        }
        Err(e) => {
            tracing::warn!(id = %message.id, channel = %message.channel, reason = %e, "send failed for good");
            outbox.mark_failed(&message.id, &e.to_string(), None).await
        }
    };
    if let Err(e) = recorded {
        // The claim expires and the message is tried again: at least once, never lost.
        tracing::warn!(id = %message.id, error = %e, "could not record delivery attempt");
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.poll, |act, ctx| act.drain(ctx));
        self.drain(ctx);
    }
}

/// Something was committed to the outbox: drain now rather than at the next poll.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Nudge;

impl Handler<Nudge> for Dispatcher {
    type Result = ();
    fn handle(&mut self, _: Nudge, ctx: &mut Context<Self>) {
        self.drain(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::retry_delay_ms;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(retry_delay_ms(0, 0.0), 500);
        assert_eq!(retry_delay_ms(0, 1.0), 1_000);
        assert_eq!(retry_delay_ms(3, 0.0), 4_000);
        assert!(retry_delay_ms(30, 1.0) <= 5 * 60 * 1_000);
        let mut last = 0;
        for attempts in 0..12 {
            let d = retry_delay_ms(attempts, 0.5);
            assert!(d >= last);
            last = d;
        }
    }
}
