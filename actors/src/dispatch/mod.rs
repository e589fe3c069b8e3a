//! Notification dispatch: drains the outbox and hands each message to its channel's sender,
//! behind that provider's rate limit and circuit breaker. Every outcome is recorded on the
//! message; nothing leaves the outbox unaccounted for.

use crate::ports::{Claimed, Lease, Outbox, Sender};
use actix::prelude::*;
use deliver::deliver;
use provider::{Lane, Provider};
use sent_log::SentLog;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod deliver;
mod policy;
mod provider;
mod sent_log;

pub use policy::{DeliveryPolicy, RateLimit, retry_delay_ms};

/// Messages claimed at once. Claims run one after another, each a turn at the database: with
/// 32 the order wave's receipts waited for claims (event -> sink p99 1.1 s at half load, 0.23 s
/// with 128; BENCHMARKS.md).
const BATCH: i64 = 128;
/// Events fanned out into outbox rows at once, each batch one transaction.
const FAN_OUT_BATCH: i64 = 256;
/// How often the outbox gauges are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(5);

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
    /// Whether the next drain claims due messages whatever its fan-out writes: not when only
    /// this node's events were committed, whose fan-out writes what there is to claim.
    claim: bool,
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
            claim: true,
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
        // A wake for events alone claims only if their fan-out wrote messages it did not
        // lease: a pickup that notifies no one woke a claim that found nothing (BENCHMARKS.md,
        // scans), and a claim after every fan-out was most of dispatch's cost (intake).
        let claim = std::mem::take(&mut self.claim);
        let skip = self.shared.full_lanes();
        let all_full = !self.shared.lanes.is_empty() && skip.len() == self.shared.lanes.len();
        self.busy = true;
        let shared = self.shared.clone();
        let dispatcher = ctx.address();
        ctx.spawn(
            async move {
                let started = Instant::now();
                let lease = Lease {
                    most: BATCH as usize,
                    skip: &skip,
                };
                let (more_events, unleased) =
                    match shared.outbox.fan_out(FAN_OUT_BATCH, lease).await {
                        Ok(out) => {
                            let unleased = out.messages > out.leased.len() + out.delivered;
                            deliver::delivered_in_place(out.delivered);
                            start_deliveries(&shared, &dispatcher, out.leased);
                            (out.events as i64 == FAN_OUT_BATCH, unleased)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "outbox fan-out failed");
                            (false, true)
                        }
                    };
                metrics::histogram!("outbox_fan_out_seconds")
                    .record(started.elapsed().as_secs_f64());
                // What the fan-out leased needs no claim: only messages it left, or others'.
                if all_full || !(claim || unleased) {
                    return (more_events, false);
                }
                let started = Instant::now();
                let batch = match shared.outbox.claim_due(BATCH, &skip).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox claim failed");
                        return (false, false);
                    }
                };
                let full = batch.len() as i64 == BATCH;
                metrics::histogram!("outbox_claim_seconds").record(started.elapsed().as_secs_f64());
                start_deliveries(&shared, &dispatcher, batch);
                (full || more_events, full)
            }
            .into_actor(self)
            .map(|(more, claim_more), act, ctx| {
                act.busy = false;
                act.claim |= claim_more;
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

/// Sends each claimed message on its own task, so a slow provider holds up only its own
/// messages; a lane that empties to half asks the dispatcher for more.
fn start_deliveries(shared: &Arc<Shared>, dispatcher: &Addr<Dispatcher>, batch: Vec<Claimed>) {
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
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.poll, |act, ctx| {
            act.claim = true;
            act.drain(ctx);
        });
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
        self.claim = true;
        self.drain(ctx);
    }
}

/// Events were committed on this node, no outbox rows: fan them out, and claim only what that
/// wrote.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EventsCommitted;

impl Handler<EventsCommitted> for Dispatcher {
    type Result = ();
    fn handle(&mut self, _: EventsCommitted, ctx: &mut Context<Self>) {
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
