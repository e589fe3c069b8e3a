//! One delivery: the checks before a send, the send, and the outcome recorded on the message.

use super::Shared;
use super::policy::retry_delay_ms;
use crate::ports::{CommandError, Needed, OutboxMessage, SendError};
use std::time::{Duration, Instant};

fn counted(channel: &str, outcome: &'static str) {
    metrics::counter!("notify_deliveries_total", "channel" => channel.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Counts the in-app messages a fan-out sent where it wrote them.
pub(super) fn delivered_in_place(messages: usize) {
    if messages > 0 {
        let channel = crate::notices::Channel::InApp.as_str();
        metrics::counter!("notify_deliveries_total", "channel" => channel, "outcome" => "sent")
            .increment(messages as u64);
    }
}

pub(super) async fn deliver(
    shared: &Shared,
    message: &OutboxMessage,
    needed: Needed,
    resend: bool,
) {
    let outcome = attempt(shared, message, needed, resend).await;
    match outcome {
        Ok(outcome) => counted(&message.channel, outcome),
        // The claim expires and the message is tried again: at least once, never lost.
        Err(e) => tracing::warn!(id = %message.id, error = %e, "could not record delivery outcome"),
    }
}

/// How long a delivery keeps trying to record that its message was sent (the database
/// restarting), well inside the claim's 60 s lease: given up, the message goes out again.
const RECORD_SENT_FOR: Duration = Duration::from_secs(30);

/// The provider has it: say so, through a database outage if need be, rather than leave the
/// claim to expire and the message to go out twice.
async fn record_sent(shared: &Shared, id: &str) -> Result<(), CommandError> {
    let deadline = Instant::now() + RECORD_SENT_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match shared.sent.record(shared.outbox.as_ref(), id).await {
            Err(e) if Instant::now() + pause < deadline => {
                tracing::debug!(id, error = %e, "could not record a send yet; retrying");
                actix::clock::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            recorded => return recorded,
        }
    }
}

/// One go at one message; returns the outcome it recorded.
async fn attempt(
    shared: &Shared,
    message: &OutboxMessage,
    needed: Needed,
    resend: bool,
) -> Result<&'static str, crate::ports::CommandError> {
    let outbox = &shared.outbox;
    let now = chrono::Utc::now();
    // Those not needed left the queue with their claim: only counted here.
    match needed {
        Needed::Yes => {}
        Needed::PastExpiry => return Ok("expired"),
        Needed::NoLongerTrue => {
            tracing::info!(id = %message.id, template = %message.template, "no longer true; expired");
            return Ok("expired");
        }
        Needed::DeliveredOtherwise => return Ok("skipped"),
    }
    let Some(sender) = shared.senders.get(&message.channel) else {
        let reason = format!("no provider for channel {}", message.channel);
        outbox.mark_failed(&message.id, &reason, None).await?;
        return Ok("dead");
    };
    let provider = shared.providers.get(&message.channel);
    if let Some(provider) = provider {
        // The bucket first: a probe admitted by the breaker must then really go out.
        if let Some(limiter) = &provider.limiter
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            outbox
                .defer(&message.id, wait.as_millis().max(10) as i64)
                .await?;
            return Ok("rate_limited");
        }
        let admitted = provider.with_breaker(&message.channel, |b| b.admit(Instant::now()));
        if let Err(until) = admitted {
            let wait = until.saturating_duration_since(Instant::now());
            outbox
                .defer(&message.id, wait.as_millis().max(10) as i64)
                .await?;
            return Ok("circuit_open");
        }
    }
    if resend {
        // Perhaps a duplicate: an earlier attempt may have reached the provider.
        metrics::counter!("notify_resent_after_crash_total", "channel" => message.channel.clone())
            .increment(1);
    }
    let started = Instant::now();
    let result = sender.send(message).await;
    metrics::histogram!("notify_send_seconds", "channel" => message.channel.clone())
        .record(started.elapsed().as_secs_f64());
    if let Some(provider) = provider {
        provider.with_breaker(&message.channel, |b| match &result {
            // A permanent refusal is an answer: the provider is up.
            Ok(()) | Err(SendError::Permanent(_)) => b.succeeded(),
            Err(SendError::Transient(_)) => b.failed(Instant::now()),
            Err(SendError::Throttled { retry_after, .. }) => {
                b.pause_until(Instant::now() + *retry_after)
            }
        });
    }
    let policy = &shared.policy;
    let attempts = message.attempts + 1;
    let too_old = (now - message.created_at).num_seconds() > policy.max_age_secs;
    let give_up = attempts >= policy.max_attempts || too_old;
    match result {
        Ok(()) => {
            record_sent(shared, &message.id).await?;
            Ok("sent")
        }
        Err(SendError::Permanent(reason)) => {
            tracing::warn!(id = %message.id, channel = %message.channel, reason = %reason, "send failed for good");
            outbox
                .mark_failed(&message.id, &format!("permanent: {reason}"), None)
                .await?;
            Ok("dead")
        }
        Err(e) if give_up => {
            let reason = format!("gave up after {attempts} attempts: {e}");
            tracing::warn!(id = %message.id, channel = %message.channel, reason = %reason, "dead-lettered");
            outbox.mark_failed(&message.id, &reason, None).await?;
            Ok("dead")
        }
        Err(e) => {
            let backoff = retry_delay_ms(message.attempts, rand::random::<f64>());
            let delay = match &e {
                SendError::Throttled { retry_after, .. } => {
                    backoff.min(1_000) + retry_after.as_millis() as i64
                }
                _ => backoff,
            };
            tracing::info!(id = %message.id, channel = %message.channel, attempts, reason = %e, retry_in_ms = delay, "send failed; will retry");
            outbox
                .mark_failed(&message.id, &e.to_string(), Some(delay))
                .await?;
            Ok("retry")
        }
    }
}
