//! The rush's notifications: every email, push and SMS the hub committed for the run's orders
//! against what reached the tool's sinks, and event -> sink latency.

use super::{Run, School};
use crate::hub::kept_alive_client;
use crate::report::EVENT_TO_SINK;
use crate::sink::Sinks;
use crate::stats::median;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Every email, push and SMS the hub committed for the run's orders, against what reached
/// the sinks: each sent one arrived, nothing uncommitted arrived, nothing arrived twice (SMS
/// by count: Twilio's API carries no id of ours). Records event -> sink latency (from the
/// outbox row's creation to its arrival) for email and push.
pub(super) async fn account_notifications(
    run: &Rc<Run>,
    schools: &Rc<Vec<School>>,
    sinks: &Sinks,
) -> Value {
    const CHANNELS: [&str; 3] = ["email", "push", "sms"];
    const READERS: usize = 16;
    let accepted = run.accepted.borrow().clone();
    // Channel -> outbox id -> when it was committed; and the ids sent.
    let mut committed: HashMap<&str, HashMap<String, Option<DateTime<Utc>>>> = HashMap::new();
    let mut sent: HashMap<&str, Vec<String>> = HashMap::new();
    let mut unreadable = 0;
    let settle = Instant::now() + Duration::from_secs(60);
    // Read many orders at once over a few kept connections: one at a time, a run of 35,000
    // orders took minutes to account.
    let reader = kept_alive_client(READERS);
    let each = futures_util::stream::iter(accepted.iter().map(|(school, _, order)| {
        let url = format!("{}/api/v1/orders/{order}/notifications", run.url);
        let (reader, token) = (reader.clone(), schools[*school].staff.clone());
        async move {
            loop {
                let rows = call_get(&reader, &url, &token).await;
                let pending = rows.as_ref().is_some_and(|rows| {
                    rows.iter().any(|r| {
                        CHANNELS.contains(&r["channel"].as_str().unwrap_or_default())
                            && r["status"] == "pending"
                    })
                });
                if !pending || Instant::now() > settle {
                    break rows;
                }
                actix_web::rt::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }))
    .buffer_unordered(READERS)
    .collect::<Vec<_>>()
    .await;
    for rows in each {
        let Some(rows) = rows else {
            unreadable += 1;
            continue;
        };
        for r in &rows {
            let Some(channel) = CHANNELS.iter().find(|c| r["channel"] == **c) else {
                continue;
            };
            let (Some(id), Some(created)) = (r["id"].as_str(), r["created_at"].as_str()) else {
                continue;
            };
            let created = DateTime::parse_from_rfc3339(created)
                .map(|t| t.with_timezone(&Utc))
                .ok();
            committed
                .entry(channel)
                .or_default()
                .insert(id.to_owned(), created);
            if r["status"] == "sent" {
                sent.entry(channel).or_default().push(id.to_owned());
            }
        }
    }
    let mut report = serde_json::Map::new();
    let mut ok = unreadable == 0;
    for channel in CHANNELS {
        let committed = committed.remove(channel).unwrap_or_default();
        let sent = sent.remove(channel).unwrap_or_default();
        let value = match channel {
            "sms" => {
                let received = sinks.providers.sms_count();
                let fine = received == sent.len();
                ok &= fine;
                json!({
                    "ok": fine,
                    "committed": committed.len(),
                    "sent": sent.len(),
                    "not_sent": committed.len() - sent.len(),
                    "received": received,
                })
            }
            _ => {
                let delivered = match channel {
                    "email" => sinks.smtp.deliveries(),
                    _ => sinks.providers.push_deliveries(),
                };
                let (value, fine) = account_channel(run, &committed, &sent, &delivered);
                ok &= fine;
                value
            }
        };
        report.insert(channel.to_owned(), value);
    }
    report.insert("ok".to_owned(), json!(ok));
    report.insert("unreadable_orders".to_owned(), json!(unreadable));
    Value::Object(report)
}

/// One channel counted by outbox id: what was sent against what arrived.
fn account_channel(
    run: &Run,
    committed: &HashMap<String, Option<DateTime<Utc>>>,
    sent: &[String],
    delivered: &HashMap<String, Vec<DateTime<Utc>>>,
) -> (Value, bool) {
    let missing = sent
        .iter()
        .filter(|id| !delivered.contains_key(*id))
        .count();
    let stray = delivered
        .keys()
        .filter(|id| !committed.contains_key(*id))
        .count();
    let twice = delivered.values().filter(|at| at.len() > 1).count();
    let mut recorder = run.recorder.borrow_mut();
    // This channel's own tail beside the shared hop: providers differ in how many messages
    // they take at once (SMTP one per session, HTTP as many as asked).
    let mut own = hdrhistogram::Histogram::<u64>::new(3).ok();
    for (id, arrivals) in delivered {
        if let (Some(Some(created)), Some(first)) = (committed.get(id), arrivals.first()) {
            let latency = (*first - *created).to_std().unwrap_or_default();
            recorder.ok_at_utc(EVENT_TO_SINK, latency, *first);
            if let Some(own) = own.as_mut() {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                let _ = own.record(us.max(1));
            }
        }
    }
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let latency = own.filter(|h| !h.is_empty()).map(|h| {
        json!({"p50_ms": ms(&h, 0.5), "p99_ms": ms(&h, 0.99), "max_ms": h.max() as f64 / 1000.0})
    });
    let created: Vec<_> = committed.values().flatten().copied().collect();
    let arrived: Vec<_> = delivered
        .values()
        .filter_map(|a| a.first().copied())
        .collect();
    let fine = missing == 0 && stray == 0 && twice == 0;
    (
        json!({
            "ok": fine,
            "drain": drain_rates(&created, &arrived),
            "event_to_sink": latency,
            "committed": committed.len(),
            "sent": sent.len(),
            "not_sent": committed.len() - sent.len(),
            "received": delivered.len(),
            "sent_but_missing": missing,
            "received_but_not_committed": stray,
            "received_twice": twice,
        }),
        fine,
    )
}

/// Intake against drain, from when each email was committed and when it arrived: the
/// busiest five seconds of commits (per second), and the sink's deliveries per second in the
/// seconds that began with more waiting than they delivered and ended with a backlog: the
/// drain's capacity, not the intake's pace. (Messages merely on their way to a slow sink are a
/// backlog at every second's edge; counting those seconds measured the intake.)
fn drain_rates(
    created: &[chrono::DateTime<chrono::Utc>],
    arrived: &[chrono::DateTime<chrono::Utc>],
) -> Value {
    let Some(start) = created.iter().chain(arrived).min().copied() else {
        return Value::Null;
    };
    let second = |t: &chrono::DateTime<chrono::Utc>| (*t - start).num_seconds().max(0) as usize;
    let span = created.iter().chain(arrived).map(second).max().unwrap_or(0) + 1;
    let (mut committed, mut delivered) = (vec![0u64; span], vec![0u64; span]);
    created.iter().for_each(|t| committed[second(t)] += 1);
    arrived.iter().for_each(|t| delivered[second(t)] += 1);
    let intake_peak = committed
        .windows(5.min(span))
        .map(|w| w.iter().sum::<u64>() as f64 / w.len() as f64)
        .fold(0.0, f64::max);
    let mut backlog = 0i64;
    let mut busy = Vec::new();
    for s in 0..span {
        let at_start = backlog;
        backlog += committed[s] as i64 - delivered[s] as i64;
        if at_start > delivered[s] as i64 && backlog > 0 {
            busy.push(delivered[s] as f64);
        }
    }
    let capacity = (!busy.is_empty()).then(|| median(&mut busy));
    json!({
        "intake_peak_per_sec": intake_peak,
        "drain_per_sec_with_backlog": capacity,
        "seconds_with_backlog": busy.len(),
        "ratio": capacity.map(|c| c / intake_peak.max(1e-9)),
    })
}

async fn call_get(reader: &awc::Client, url: &str, token: &str) -> Option<Vec<Value>> {
    let sent = reader.get(url).bearer_auth(token).send().await;
    match crate::hub::reply(sent).await {
        Ok((200, Value::Array(rows))) => Some(rows),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_counts_only_seconds_with_a_backlog() {
        let t0 = chrono::Utc::now();
        let at = |ms: i64| t0 + chrono::Duration::milliseconds(ms);
        // 100 emails committed in the first second, drained at 20 a second over 5 s.
        let created: Vec<_> = (0..100).map(|i| at(i * 10)).collect();
        let arrived: Vec<_> = (0..100).map(|i| at(i * 50 + 5)).collect();
        let rates = drain_rates(&created, &arrived);
        assert_eq!(rates["drain_per_sec_with_backlog"], 20.0);
        assert_eq!(rates["intake_peak_per_sec"], 20.0);
        assert_eq!(rates["seconds_with_backlog"], 3);
        // A sink that keeps up never has a backlog to measure.
        assert!(drain_rates(&created, &created)["drain_per_sec_with_backlog"].is_null());
        // Nor one that keeps up 60 ms behind a steady 50 a second: a few on their way at
        // every second's edge are not a backlog.
        let steady: Vec<_> = (0..250).map(|i| at(i * 20)).collect();
        let behind: Vec<_> = steady
            .iter()
            .map(|t| *t + chrono::Duration::milliseconds(60))
            .collect();
        assert!(drain_rates(&steady, &behind)["drain_per_sec_with_backlog"].is_null());
        assert!(drain_rates(&[], &[]).is_null());
    }
}
