//! Notification dispatch: drains the outbox and hands each message to its channel's sender,
//! behind that provider's rate limit and circuit breaker. Every outcome is recorded on the
//! message; nothing leaves the outbox unaccounted for.

use crate::breaker::Breaker;
use crate::ports::{Claimed, CommandError, Needed, Outbox, OutboxMessage, SendError, Sender};
use actix::prelude::*;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Messages claimed at once. Claims run one after another, each a turn at the database: with
/// 32 the order wave's receipts waited for claims (event -> sink p99 1.1 s at half load, 0.23 s
/// with 128; BENCHMARKS.md).
const BATCH: i64 = 128;
/// Events fanned out into outbox rows at once, each batch one transaction.
const FAN_OUT_BATCH: i64 = 256;
/// A lane holds this many rounds of its provider's parallel sends and asks for more at half,
/// four rounds ahead: a claim can wait its turn at the database for a round or two in a rush
/// (with two or four rounds held the rush's emails waited longer; BENCHMARKS.md). Few enough
/// that the last goes out within the provider timeout, which counts waiting for a session,
/// while sends take under 2 s.
const ROUNDS_HELD: usize = 8;
/// How often the outbox gauges are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// A provider's token bucket: `per_sec` sustained, bursts of `burst`; 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

/// How hard dispatch tries, and how gently it treats providers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryPolicy {
    /// Attempts before a message is dead-lettered.
    pub max_attempts: i32,
    /// A message still failing this long after it was queued is dead-lettered.
    pub max_age_secs: i64,
    /// Consecutive provider failures that open its circuit.
    pub breaker_failures: u32,
    /// How long an open circuit waits before one probe.
    pub breaker_cooldown_secs: u64,
    /// A critical message not delivered by push within this long goes by SMS.
    pub sms_fallback_after_secs: i64,
    /// The longest one send to a provider may take (connect included) before it counts as a
    /// failure: a provider that accepts a connection and never answers costs a retry.
    pub provider_timeout_secs: u64,
    pub email: RateLimit,
    pub push: RateLimit,
    pub sms: RateLimit,
}

impl Default for DeliveryPolicy {
    fn default() -> DeliveryPolicy {
        DeliveryPolicy {
            max_attempts: 8,
            max_age_secs: 6 * 3600,
            breaker_failures: 5,
            breaker_cooldown_secs: 30,
            sms_fallback_after_secs: 120,
            provider_timeout_secs: 15,
            email: RateLimit {
                per_sec: 50,
                burst: 100,
            },
            push: RateLimit {
                per_sec: 500,
                burst: 1000,
            },
            sms: RateLimit {
                per_sec: 10,
                burst: 20,
            },
        }
    }
}

impl DeliveryPolicy {
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (
                (1..=100).contains(&self.max_attempts),
                "delivery.max_attempts must be between 1 and 100",
            ),
            (
                (60..=7 * 24 * 3600).contains(&self.max_age_secs),
                "delivery.max_age_secs must be between 60 and 604800",
            ),
            (
                (1..=1000).contains(&self.breaker_failures),
                "delivery.breaker_failures must be between 1 and 1000",
            ),
            (
                (1..=3600).contains(&self.breaker_cooldown_secs),
                "delivery.breaker_cooldown_secs must be between 1 and 3600",
            ),
            (
                (1..=3600).contains(&self.sms_fallback_after_secs),
                "delivery.sms_fallback_after_secs must be between 1 and 3600",
            ),
            (
                // Well inside the outbox claim's lease (60 s): a send still under way is never
                // claimed again by another dispatcher.
                (1..=45).contains(&self.provider_timeout_secs),
                "delivery.provider_timeout_secs must be between 1 and 45",
            ),
            (
                [self.email, self.push, self.sms]
                    .iter()
                    .all(|l| l.per_sec == 0 || l.burst > 0),
                "delivery.<channel>.burst must be at least 1 when per_sec is set",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).to_owned()),
            None => Ok(()),
        }
    }

    fn limit_for(&self, channel: &str) -> Option<RateLimit> {
        match channel {
            "email" => Some(self.email),
            "push" => Some(self.push),
            "sms" => Some(self.sms),
            _ => None,
        }
    }
}

/// Exponential backoff with full jitter: `jitter` in [0, 1) picks a point in the window.
pub fn retry_delay_ms(attempts: i32, jitter: f64) -> i64 {
    let base: i64 = 1_000;
    let cap: i64 = 5 * 60 * 1_000;
    let window = base.saturating_mul(1_i64 << attempts.clamp(0, 20)).min(cap);
    let jitter = jitter.clamp(0.0, 1.0);
    (window / 2) + ((window / 2) as f64 * jitter) as i64
}

/// What stands between dispatch and one external provider.
struct Provider {
    breaker: Mutex<Breaker>,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Provider {
    fn new(policy: &DeliveryPolicy, limit: RateLimit) -> Provider {
        let limiter = NonZeroU32::new(limit.per_sec).map(|per_sec| {
            let burst = NonZeroU32::new(limit.burst).unwrap_or(per_sec);
            RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst))
        });
        Provider {
            breaker: Mutex::new(Breaker::new(
                policy.breaker_failures,
                Duration::from_secs(policy.breaker_cooldown_secs),
            )),
            limiter,
        }
    }

    fn with_breaker<T>(&self, channel: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut breaker = self
            .breaker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = f(&mut breaker);
        metrics::gauge!("notify_circuit_state", "channel" => channel.to_owned())
            .set(breaker.state().gauge());
        out
    }
}

type SentReply = tokio::sync::oneshot::Sender<Result<(), CommandError>>;

/// Group commit of "sent": a delivery's record waits for the write under way, then the next
/// write takes every record queued meanwhile. On SQLite every write queues for the one
/// connection behind the kitchens' orders: one per message made them wait (BENCHMARKS.md).
#[derive(Default)]
struct SentLog {
    queued: Mutex<Vec<(String, SentReply)>>,
    writing: tokio::sync::Mutex<()>,
}

impl SentLog {
    async fn record(&self, outbox: &dyn Outbox, id: &str) -> Result<(), CommandError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((id.to_owned(), done));
        {
            let _writer = self.writing.lock().await;
            let batch = std::mem::take(
                &mut *self
                    .queued
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            // Empty when an earlier writer took this record along.
            if !batch.is_empty() {
                let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
                let written = outbox.mark_sent(&ids).await;
                metrics::histogram!("notify_sent_batch_size").record(ids.len() as f64);
                for (_, done) in batch {
                    let _ = done.send(written.clone());
                }
            }
        }
        outcome
            .await
            .map_err(|_| CommandError::Internal("sent record dropped".into()))?
    }
}

/// One channel's deliveries under way. Claims skip a full lane, so one provider's backlog
/// (1,000 order-ready emails through 32 SMTP sessions) never holds up another's messages.
struct Lane {
    in_flight: AtomicUsize,
    /// `ROUNDS_HELD` rounds of the provider's parallel sends.
    full_at: usize,
}

impl Lane {
    fn new(parallel: usize) -> Lane {
        Lane {
            in_flight: AtomicUsize::new(0),
            full_at: parallel.max(1) * ROUNDS_HELD,
        }
    }

    fn is_full(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) >= self.full_at
    }

    /// One delivery done; true when the lane just fell to half full, time to claim more.
    fn finished(&self) -> bool {
        self.in_flight.fetch_sub(1, Ordering::Relaxed) == self.full_at / 2 + 1
    }
}

struct Shared {
    outbox: Arc<dyn Outbox>,
    sent: SentLog,
    senders: HashMap<String, Arc<dyn Sender>>,
    /// External channels only: the in-app channel is our own database.
    providers: HashMap<String, Provider>,
    /// One per sender's channel; a message of a channel without a sender fails at once.
    lanes: HashMap<String, Lane>,
    policy: DeliveryPolicy,
}

impl Shared {
    fn full_lanes(&self) -> Vec<String> {
        self.lanes
            .iter()
            .filter(|(_, lane)| lane.is_full())
            .map(|(channel, _)| channel.clone())
            .collect()
    }

    fn in_flight(&self) -> usize {
        self.lanes
            .values()
            .map(|lane| lane.in_flight.load(Ordering::Relaxed))
            .sum()
    }
}

pub struct Dispatcher {
    shared: Arc<Shared>,
    poll: Duration,
    busy: bool,
    again: bool,
    /// How often to look for daily digests that are due; `None`: never.
    digests_every: Option<Duration>,
    digesting: bool,
}

impl Dispatcher {
    pub fn new(
        outbox: Arc<dyn Outbox>,
        senders: HashMap<String, Arc<dyn Sender>>,
        poll: Duration,
        policy: DeliveryPolicy,
    ) -> Dispatcher {
        let providers = senders
            .keys()
            .filter_map(|channel| {
                let limit = policy.limit_for(channel)?;
                Some((channel.clone(), Provider::new(&policy, limit)))
            })
            .collect();
        let lanes = senders
            .iter()
            .map(|(channel, sender)| (channel.clone(), Lane::new(sender.parallel())))
            .collect();
        Dispatcher {
            shared: Arc::new(Shared {
                outbox,
                sent: SentLog::default(),
                senders,
                providers,
                lanes,
                policy,
            }),
            poll,
            busy: false,
            again: false,
            digests_every: None,
            digesting: false,
        }
    }

    /// Queues the daily digests that are due every `every`, and once at start: the schedule
    /// is each school's stored time and last day done, so a digest due while the hub was down
    /// is queued on start (that same school day), once.
    pub fn with_digests(mut self, every: Duration) -> Dispatcher {
        self.digests_every = Some(every);
        self
    }

    fn queue_digests(&mut self, ctx: &mut Context<Self>) {
        if std::mem::replace(&mut self.digesting, true) {
            return;
        }
        let outbox = self.shared.outbox.clone();
        ctx.spawn(
            async move { outbox.queue_digests(chrono::Utc::now()).await }
                .into_actor(self)
                .map(|queued, act, ctx| {
                    act.digesting = false;
                    match queued {
                        Ok(0) => {}
                        Ok(n) => {
                            metrics::counter!("notify_digests_queued_total").increment(n as u64);
                            act.drain(ctx);
                        }
                        Err(e) => tracing::warn!(error = %e, "daily digests failed; will retry"),
                    }
                }),
        );
    }

    /// Fans committed events out into the outbox, then claims due messages of the channels
    /// with room and sends each on its own, so a slow provider holds up only its own
    /// messages. A lane that empties to half asks for more.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            self.again = true;
            return;
        }
        let skip = self.shared.full_lanes();
        let all_full = !self.shared.lanes.is_empty() && skip.len() == self.shared.lanes.len();
        self.busy = true;
        let shared = self.shared.clone();
        let dispatcher = ctx.address();
        ctx.spawn(
            async move {
                let started = Instant::now();
                let more_events = match shared.outbox.fan_out(FAN_OUT_BATCH).await {
                    Ok(taken) => taken as i64 == FAN_OUT_BATCH,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox fan-out failed");
                        false
                    }
                };
                metrics::histogram!("outbox_fan_out_seconds").record(started.elapsed().as_secs_f64());
                if all_full {
                    return more_events;
                }
                let started = Instant::now();
                let batch = match shared.outbox.claim_due(BATCH, &skip).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox claim failed");
                        return false;
                    }
                };
                let full = batch.len() as i64 == BATCH || more_events;
                metrics::histogram!("outbox_claim_seconds").record(started.elapsed().as_secs_f64());
                let claimed_at = chrono::Utc::now();
                for Claimed {
                    message,
                    needed,
                    resend,
                } in batch
                {
                    if message.attempts == 0 {
                        // First tries only: a retry's wait is its backoff.
                        let waited = (claimed_at - message.created_at).num_microseconds();
                        metrics::histogram!("notify_claim_lag_seconds", "channel" => message.channel.clone())
                            .record(waited.unwrap_or(0) as f64 / 1e6);
                    }
                    if let Some(lane) = shared.lanes.get(&message.channel) {
                        lane.in_flight.fetch_add(1, Ordering::Relaxed);
                    }
                    let (shared, dispatcher) = (shared.clone(), dispatcher.clone());
                    actix::spawn(async move {
                        deliver(&shared, &message, needed, resend).await;
                        if shared
                            .lanes
                            .get(&message.channel)
                            .is_some_and(Lane::finished)
                        {
                            dispatcher.do_send(Nudge);
                        }
                    });
                }
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

    fn refresh_gauges(&self, ctx: &mut Context<Self>) {
        let shared = self.shared.clone();
        ctx.spawn(
            async move {
                match shared.outbox.stats().await {
                    Ok(stats) => {
                        metrics::gauge!("outbox_pending").set(stats.pending as f64);
                        metrics::gauge!("outbox_oldest_pending_seconds")
                            .set(stats.oldest_pending_secs as f64);
                        metrics::gauge!("outbox_dead").set(stats.dead as f64);
                        metrics::gauge!("outbox_events_awaiting_fan_out")
                            .set(stats.awaiting_fan_out as f64);
                        metrics::gauge!("notify_in_flight").set(shared.in_flight() as f64);
                    }
                    Err(e) => tracing::warn!(error = %e, "outbox stats failed"),
                }
            }
            .into_actor(self),
        );
    }
}

fn counted(channel: &str, outcome: &'static str) {
    metrics::counter!("notify_deliveries_total", "channel" => channel.to_owned(), "outcome" => outcome)
        .increment(1);
}

async fn deliver(shared: &Shared, message: &OutboxMessage, needed: Needed, resend: bool) {
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

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.poll, |act, ctx| act.drain(ctx));
        ctx.run_interval(STATS_EVERY, |act, ctx| act.refresh_gauges(ctx));
        if let Some(every) = self.digests_every {
            ctx.run_interval(every, |act, ctx| act.queue_digests(ctx));
            self.queue_digests(ctx);
        }
        for (channel, provider) in &self.shared.providers {
            provider.with_breaker(channel, |_| ());
        }
        self.refresh_gauges(ctx);
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

/// The hub is stopping: dispatch stops while the runtime still runs, so that its senders
/// (an SMTP connection pool) close their connections inside it. What is left in the outbox
/// goes out after the next start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDispatch;

impl Handler<StopDispatch> for Dispatcher {
    type Result = ();
    fn handle(&mut self, _: StopDispatch, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::{DeliveryPolicy, retry_delay_ms};

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

    #[test]
    fn the_default_policy_is_valid_and_bad_ones_are_named() {
        assert_eq!(DeliveryPolicy::default().validate(), Ok(()));
        let bad = DeliveryPolicy {
            breaker_failures: 0,
            ..DeliveryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("breaker_failures"));
    }
}
