//! The outbox drain: on a hub of its own whose email sink stalls while 16 clients place orders,
//! then takes 50 ms a message: the emails a second intake commits against the emails a second
//! the hub then delivers from the backlog.

use super::seed::{School, place_orders, seed};
use super::{Options, Series, WRITERS, quiesce};
use crate::hub::Target;
use crate::stats::{cpu_per, server_cpu};
use anyhow::bail;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How long the drain's sink takes to accept each email (the goal's slow provider).
pub(super) const DRAIN_SINK_DELAY: Duration = Duration::from_millis(50);
/// The longest the drain's sink stalls (its intake's length).
const MAX_STALL: Duration = Duration::from_secs(10);
/// The drain waits for its backlog at most this long after intake stops.
const DRAIN_WAIT: Duration = Duration::from_secs(180);

/// Emails over one drain round, as the sink saw them.
#[derive(Debug, PartialEq)]
struct DrainRound {
    /// Emails the round's orders committed, per second of intake.
    intake_per_sec: f64,
    /// Delivered per second from the end of intake until the last: the backlog's drain.
    /// `None` when too few were left to time.
    drain_per_sec: Option<f64>,
    /// Left waiting when intake stopped.
    backlog: usize,
}

/// Fewer emails than this left at the end of intake are too few to time a drain by.
const MIN_BACKLOG: usize = 100;

/// A round's rates from the first arrival of each of its emails (`arrivals`, in seconds since
/// intake began) and intake's length. Every email was committed during intake: an order is
/// answered only once its outbox rows are.
fn drain_round(arrivals: &[f64], intake_secs: f64) -> DrainRound {
    let after: Vec<f64> = arrivals
        .iter()
        .copied()
        .filter(|&t| t > intake_secs)
        .collect();
    let last = after.iter().copied().fold(intake_secs, f64::max);
    DrainRound {
        intake_per_sec: arrivals.len() as f64 / intake_secs,
        drain_per_sec: (after.len() >= MIN_BACKLOG)
            .then(|| after.len() as f64 / (last - intake_secs)),
        backlog: after.len(),
    }
}

/// The drain goal, in rounds: the sink stalls while 16 clients place orders for
/// `options.seconds` (the hub's intake, its outbox filling), then answers in 50 ms a message
/// while the hub drains what its intake left. Measured without the stall, the hub's intake
/// and dispatch share its core and the drain keeps up, leaving nothing to time.
pub(super) async fn drain(
    target: &Target,
    sink: &crate::sink::SmtpSink,
    options: &Options,
) -> anyhow::Result<(Value, Value)> {
    // The hub gives up on a send after 15 s, waiting for a session included: a longer
    // stall would time the retries' backoff, not the drain.
    let length = Duration::from_secs(options.seconds).min(MAX_STALL);
    let schools = seed(target, WRITERS, true).await?;
    let all: Vec<&School> = schools.iter().collect();
    let mut s = Series::default();
    let mut duplicated = 0usize;
    for round in 1..=options.rounds {
        quiesce(target.pid).await;
        let known: std::collections::HashSet<String> = sink.deliveries().into_keys().collect();
        sink.pause(true);
        let began = chrono::Utc::now();
        let (orders_per_sec, refused) = place_orders(&target.url, &all, length).await;
        let intake_secs = (chrono::Utc::now() - began).as_seconds_f64();
        sink.pause(false);
        let (cpu, unpaused) = (server_cpu(target.pid), Instant::now());
        if refused > 0 {
            bail!("the hub refused {refused} orders during the drain run");
        }
        // Until no email has arrived for 3 s (the sink takes 50 ms each).
        let deadline = Instant::now() + DRAIN_WAIT;
        let mut seen = sink.delivered();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_secs(3) {
            actix_web::rt::time::sleep(Duration::from_millis(250)).await;
            let now = sink.delivered();
            if now != seen {
                (seen, quiet_since) = (now, Instant::now());
            }
        }
        // Whether the hub's core ran out while draining (1.0: all of it), or it waited.
        if let Some(busy) = cpu_per(cpu, server_cpu(target.pid), 1) {
            let drained_for = unpaused.elapsed().saturating_sub(Duration::from_secs(3));
            s.push(
                "hub_cores_busy_drain",
                busy / 1e6 / drained_for.as_secs_f64().max(1e-3),
            );
        }
        let deliveries = sink.deliveries();
        let mut arrivals = Vec::new();
        let fresh = deliveries.iter().filter(|(id, _)| !known.contains(*id));
        for (_, times) in fresh {
            duplicated += times.len().saturating_sub(1);
            if let Some(first) = times.iter().min() {
                arrivals.push((*first - began).as_seconds_f64());
            }
        }
        let measured = drain_round(&arrivals, intake_secs);
        let mut line = format!(
            "tiffin-load: drain round {round}: {orders_per_sec:.0} orders/s committed {:.0} emails/s; {} left, ",
            measured.intake_per_sec, measured.backlog
        );
        match measured.drain_per_sec {
            Some(rate) => {
                line += &format!("drained at {rate:.0}/s");
                s.push("drain_emails_per_sec", rate);
            }
            None => line += "too few to time",
        }
        eprintln!("{line}");
        s.push("intake_orders_per_sec", orders_per_sec);
        s.push("intake_emails_per_sec", measured.intake_per_sec);
        s.push("backlog_at_intake_end", measured.backlog as f64);
    }
    let m = s.medians();
    let intake = m.get("intake_emails_per_sec").copied().unwrap_or(0.0);
    let ratio = m
        .get("drain_emails_per_sec")
        .map(|drain| drain / intake.max(1e-9));
    let goal = json!({
        "goal": "outbox drain >= 2x the sustained intake rate against sinks that answer in 50 ms",
        "smtp_sessions": options.smtp_sessions,
        "duplicated": duplicated,
        "ratio": ratio,
        "met": duplicated == 0 && ratio.is_some_and(|r| r >= 2.0),
    });
    Ok((goal, json!(m)))
}

#[cfg(test)]
mod tests {
    use super::{DrainRound, drain_round};

    #[test]
    fn drain_times_only_what_intake_left() {
        // 10 s of intake committing 100 emails a second; 600 delivered meanwhile, the other
        // 400 over the 2 s after.
        let mut arrivals: Vec<f64> = (0..600).map(|i| f64::from(i) / 60.0).collect();
        arrivals.extend((1..=400).map(|i| 10.0 + f64::from(i) / 200.0));
        assert_eq!(
            drain_round(&arrivals, 10.0),
            DrainRound {
                intake_per_sec: 100.0,
                drain_per_sec: Some(200.0),
                backlog: 400,
            }
        );
        // A hub that kept up leaves only the sink's last 50 ms: nothing to time.
        let kept_up: Vec<f64> = (0..1000).map(|i| f64::from(i) / 100.0 + 0.05).collect();
        let round = drain_round(&kept_up, 10.0);
        assert_eq!(round.drain_per_sec, None);
        assert!(round.backlog <= 5, "{round:?}");
    }
}
