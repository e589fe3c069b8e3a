//! The phased run's report: per phase and request type against the plan's p95 target, the
//! orders' accounting, and the table printed at the end.

use super::notifications::CHANNELS;
use super::plan::Plan;
use super::{LUNCH, REQUESTS, Run};
use crate::RunArgs;
use serde_json::{Value, json};

/// What the run did besides its records.
pub(super) struct Outcome {
    pub(super) finished: bool,
    pub(super) seed_secs: f64,
    pub(super) arrivals_secs: f64,
    pub(super) run_secs: f64,
    pub(super) warm_up: usize,
    /// The hub's CPU seconds at the start and at each phase's end.
    pub(super) cpu: Vec<f64>,
    pub(super) scheduled: usize,
    /// The notifications' accounting (`notifications::account_notifications`).
    pub(super) notifications: Value,
    /// The hub's CPU and memory every second (`HubSampler::stop`).
    pub(super) hub_series: Value,
}

pub(super) fn report(plan: &Plan, args: &RunArgs, run: &Run, outcome: Outcome) -> Value {
    let spans = plan.spans(args.time_scale);
    let recorders = run.phases.borrow();
    let counts = run.counts.borrow();
    let mut phases = Vec::new();
    for (p, phase) in plan.phases.iter().enumerate() {
        let (Some(recorder), Some(c)) = (recorders.get(p), counts.get(p)) else {
            continue;
        };
        let hops = recorder.hops_json();
        let length = spans.get(p).map_or(0.0, |s| s.1);
        let cpu = match (outcome.cpu.get(p), outcome.cpu.get(p + 1)) {
            (Some(a), Some(b)) if length > 0.0 => json!((b - a) / length),
            _ => Value::Null,
        };
        phases.push(json!({
            "name": phase.name,
            "seconds": length,
            "arrivals_per_sec": phase.arrivals_per_sec * args.rate_scale,
            "arrivals": {
                "menu": c.menu,
                "order": c.order,
                "guardian": c.guardian,
                "total": c.menu + c.order + c.guardian,
            },
            "late": c.late,
            "dropped": c.dropped,
            "waited_for_student": c.waited_for_student,
            "orders_posted": c.orders_posted,
            "hub_cpu_cores_busy": cpu,
            "requests": REQUESTS.iter().map(|r| (r.to_string(), summary(&hops[*r]))).collect::<serde_json::Map<_, _>>(),
            "lunch": summary(&hops[LUNCH]),
            "verdict": verdict(&hops, plan.target_p95_ms),
        }));
    }
    let setup = recorders
        .get(plan.phases.len())
        .map(|r| r.hops_json())
        .unwrap_or_default();
    let setup_errors: u64 = REQUESTS.iter().map(|r| error_count(&setup[*r])).sum();
    let whole = run.whole.borrow();
    let errors = whole.errors() + setup_errors;
    let accepted = run.accepted.borrow();
    let handed = run.handed_over.borrow();
    let mut unique: Vec<&String> = accepted.iter().collect();
    unique.sort();
    unique.dedup();
    let doubled = accepted.len() - unique.len();
    let twice = handed.values().filter(|n| **n > 1).count();
    let not_handed = accepted
        .iter()
        .filter(|id| !handed.contains_key(*id))
        .count();
    let posted: u64 = counts.iter().map(|c| c.orders_posted).sum();
    let orders_due = posted as usize + outcome.warm_up;
    let dropped: u64 = counts.iter().map(|c| c.dropped).sum();
    let target_met = phases.iter().all(|p| p["verdict"]["met"] == true);
    // Not accounted (a hub given by --url): no verdict, and nothing against the run.
    let notifications_met = outcome.notifications["verdict"]["met"].as_bool();
    let orders_accounted = outcome.finished
        && errors == 0
        && dropped == 0
        && accepted.len() == orders_due
        && doubled == 0
        && twice == 0
        && not_handed == 0;
    let ok = orders_accounted && notifications_met != Some(false);
    json!({
        "profile": plan,
        "kind": "phased",
        "time_scale": args.time_scale,
        "rate_scale": args.rate_scale,
        "backend": match (&args.hub.url, args.backend) {
            (Some(_), _) => "given by --url",
            (None, crate::hub::Backend::Sqlite) => "sqlite",
            (None, crate::hub::Backend::Postgres) => "postgres",
        },
        "ok": ok,
        "orders_accounted": orders_accounted,
        "target_p95_ms": plan.target_p95_ms,
        "target_met_in_every_phase": target_met,
        "notifications_met": notifications_met,
        "finished_within_drain": outcome.finished,
        "seed_seconds": outcome.seed_secs,
        "arrivals_seconds": outcome.arrivals_secs,
        "run_seconds": outcome.run_secs,
        "phases": phases,
        "hops": whole.hops_json(),
        "timeline": whole.timeline_json(),
        "series": whole.series_json(outcome.hub_series),
        "correctness": {
            "arrivals_scheduled": outcome.scheduled,
            "arrivals_dropped": dropped,
            "students": run.students.len(),
            "guardians": run.guardians.len(),
            "warm_up_orders": outcome.warm_up,
            "orders_due": orders_due,
            "orders_accepted": accepted.len(),
            "orders_doubled": doubled,
            "handed_over": handed.len(),
            "handed_over_twice": twice,
            "not_handed_over": not_handed,
            "signed_in_again": run.signed_in_again.get(),
            "setup_errors": setup_errors,
            "errors": errors,
        },
        "notifications": outcome.notifications,
    })
}
/// One request type's figures, from the recorder's hop.
fn summary(hop: &Value) -> Value {
    json!({
        "count": hop["count"],
        "p50_ms": hop["p50_ms"],
        "p95_ms": hop["p95_ms"],
        "p99_ms": hop["p99_ms"],
        "max_ms": hop["max_ms"],
        "errors": error_count(hop),
        "errors_by_code": hop["errors"],
    })
}

fn error_count(hop: &Value) -> u64 {
    hop["errors"]
        .as_object()
        .map_or(0, |e| e.values().filter_map(Value::as_u64).sum())
}

/// Whether every request type's p95 is under the target and nothing failed; what missed.
fn verdict(hops: &Value, target_ms: f64) -> Value {
    let mut worst: Option<(&str, f64)> = None;
    let mut over = Vec::new();
    let mut errors = 0;
    for r in REQUESTS {
        let hop = &hops[r];
        errors += error_count(hop);
        if hop["count"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        let p95 = hop["p95_ms"].as_f64().unwrap_or(f64::INFINITY);
        if worst.is_none_or(|(_, w)| p95 > w) {
            worst = Some((r, p95));
        }
        if p95 >= target_ms {
            over.push(json!({"request": r, "p95_ms": p95}));
        }
    }
    json!({
        "met": over.is_empty() && errors == 0,
        "worst_p95": worst.map(|(r, p95)| json!({"request": r, "p95_ms": p95})),
        "over_target": over,
        "errors": errors,
    })
}

/// The table printed at the end: per phase, each request type's percentiles and errors, the
/// lunch, and the verdict.
pub fn table(report: &Value) -> String {
    let target = report["target_p95_ms"].as_f64().unwrap_or(0.0);
    let ms = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1}"));
    let mut out = String::new();
    let phases = report["phases"].as_array().cloned().unwrap_or_default();
    for (p, phase) in phases.iter().enumerate() {
        out.push_str(&format!(
            "phase {} {} ({}/s for {:.0} s): {} arrivals, {} late, {} dropped, hub {} cores\n",
            p + 1,
            phase["name"].as_str().unwrap_or("?"),
            phase["arrivals_per_sec"].as_f64().unwrap_or(0.0),
            phase["seconds"].as_f64().unwrap_or(0.0),
            phase["arrivals"]["total"],
            phase["late"],
            phase["dropped"],
            phase["hub_cpu_cores_busy"]
                .as_f64()
                .map_or("?".to_owned(), |c| format!("{c:.2}")),
        ));
        out.push_str(&format!(
            "  {:<11} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
            "request", "count", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"
        ));
        let rows = REQUESTS
            .iter()
            .map(|r| (*r, &phase["requests"][*r]))
            .chain([(LUNCH, &phase["lunch"])]);
        for (name, row) in rows {
            out.push_str(&format!(
                "  {:<11} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
                name,
                row["count"].to_string(),
                ms(&row["p50_ms"]),
                ms(&row["p95_ms"]),
                ms(&row["p99_ms"]),
                ms(&row["max_ms"]),
                row["errors"].to_string(),
            ));
        }
        let v = &phase["verdict"];
        let worst = match v["worst_p95"]["request"].as_str() {
            Some(r) => format!("worst {r} {} ms", ms(&v["worst_p95"]["p95_ms"])),
            None => "no requests".to_owned(),
        };
        let missed: Vec<String> = v["over_target"]
            .as_array()
            .map(|o| {
                o.iter()
                    .map(|x| {
                        format!(
                            "{} {} ms",
                            x["request"].as_str().unwrap_or("?"),
                            ms(&x["p95_ms"])
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let line = if v["met"] == true {
            format!("MET: p95 < {target} ms for every request type ({worst}), no errors")
        } else if missed.is_empty() {
            format!("MISSED: {} errors ({worst})", v["errors"])
        } else {
            format!(
                "MISSED: p95 >= {target} ms for {}; {} errors",
                missed.join(", "),
                v["errors"]
            )
        };
        out.push_str(&format!("  verdict: {line}\n"));
    }
    let c = &report["correctness"];
    out.push_str(&format!(
        "orders accepted {} of {} due, handed over {} ({} twice, {} not), errors {}, dropped {}: {}\n",
        c["orders_accepted"],
        c["orders_due"],
        c["handed_over"],
        c["handed_over_twice"],
        c["not_handed_over"],
        c["errors"],
        c["arrivals_dropped"],
        if report["orders_accounted"] == true {
            "accounted for"
        } else {
            "FAILED"
        },
    ));
    out.push_str(&notifications_table(&report["notifications"]));
    out.push_str(
        match (report["ok"] == true, report["notifications_met"].as_bool()) {
            (true, Some(_)) => "run: OK (every order and notification accounted for)\n",
            (true, None) => "run: OK (every order accounted for; notifications not)\n",
            (false, _) => "run: FAILED\n",
        },
    );
    out
}

/// The notifications' part of the table: the settings, each channel's accounting, the
/// verdict.
fn notifications_table(n: &Value) -> String {
    if n["accounted"] != true {
        return format!(
            "notifications: not accounted ({})\n",
            n["why"].as_str().unwrap_or("?")
        );
    }
    let bucket = |b: &Value| match b["per_sec"].as_u64() {
        Some(0) | None => "off".to_owned(),
        Some(rate) => format!("{rate}/s (burst {})", b["burst"]),
    };
    let limits = &n["provider_limits"];
    let secs = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2} s"));
    // The last send may come before the end: the lunches of the last seconds were done.
    let signed = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:+.2} s"));
    let relative = |v: &Value| match v.as_f64() {
        Some(x) if x < 0.0 => format!("{:.2} s before the end", -x),
        Some(x) => format!("{x:.2} s after the end"),
        None => "none".to_owned(),
    };
    let mut out = format!(
        "notifications: sinks answer in {} ms; hub buckets email {} over {} SMTP sessions, push {}, sms {}\n",
        n["sink_delay_ms"],
        bucket(&limits["email"]),
        n["smtp_sessions"],
        bucket(&limits["push"]),
        bucket(&limits["sms"]),
    );
    if let Some(e) = n["error"].as_str() {
        out.push_str(&format!("  NOT ACCOUNTED: {e}\n"));
        return out;
    }
    out.push_str(&format!(
        "  {:<8} {:>9} {:>7} {:>7} {:>7} {:>5} {:>7} {:>8} {:>6} {:>5} {:>10}\n",
        "channel",
        "committed",
        "sent",
        "expired",
        "skipped",
        "dead",
        "pending",
        "received",
        "twice",
        "lost",
        "last sent"
    ));
    for channel in CHANNELS {
        let c = &n["channels"][channel];
        out.push_str(&format!(
            "  {:<8} {:>9} {:>7} {:>7} {:>7} {:>5} {:>7} {:>8} {:>6} {:>5} {:>10}\n",
            channel,
            c["committed"].to_string(),
            c["sent"].to_string(),
            c["expired"].to_string(),
            c["skipped"].to_string(),
            c["dead"].to_string(),
            c["pending"].to_string(),
            c["received"].to_string(),
            c["duplicates"].to_string(),
            c["sent_not_received"].to_string(),
            signed(&c["last_sent_after_end_secs"]),
        ));
    }
    let v = &n["verdict"];
    let line = if v["met"] == true {
        format!(
            "MET: everything committed sent or expired by rule {} after the end (within {} s), the last send {}; nothing twice or lost",
            secs(&n["settled_after_end_secs"]),
            n["within_secs"],
            relative(&n["last_sent_after_end_secs"]),
        )
    } else {
        let missed: Vec<&str> = v["missed"]
            .as_array()
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        format!(
            "MISSED at {} s after the end: {}",
            n["within_secs"],
            missed.join("; ")
        )
    };
    out.push_str(&format!("  verdict: {line}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::super::notifications::{ChannelCount, notifications_verdict};
    use super::super::plan::tests::plan;
    use super::super::*;
    use super::*;
    use crate::report::Recorder;
    use std::time::Duration;

    #[test]
    fn a_phase_misses_the_target_on_any_p95_over_it_or_any_error() {
        let mut r = Recorder::with_hops(&[
            REFRESH, MENU, ORDER, CONFIRM, START, READY, SCAN, ORDER_READ, INBOX, LUNCH,
        ])
        .unwrap();
        for ms in 1..=100 {
            r.ok(MENU, Duration::from_millis(ms), false);
            r.ok(SCAN, Duration::from_millis(ms * 3), false);
            // The lunch is shown, not judged.
            r.ok(LUNCH, Duration::from_millis(ms * 10), false);
        }
        let v = verdict(&r.hops_json(), 200.0);
        assert_eq!(v["met"], false);
        assert_eq!(v["over_target"][0]["request"], SCAN);
        assert_eq!(v["worst_p95"]["request"], SCAN);
        let v = verdict(&r.hops_json(), 400.0);
        assert_eq!(v["met"], true);
        r.error(INBOX, "503 database_unavailable");
        let v = verdict(&r.hops_json(), 400.0);
        assert_eq!(
            (v["met"].clone(), v["errors"].clone()),
            (json!(false), json!(1))
        );
    }

    #[test]
    fn the_table_says_the_notifications_verdict_and_settings() {
        let limits = plan().notifications.limits(50, 32);
        let channels: Vec<(&str, ChannelCount)> = CHANNELS
            .iter()
            .map(|ch| (*ch, ChannelCount::default()))
            .collect();
        let mut n = json!({
            "accounted": true,
            "sink_delay_ms": 50,
            "smtp_sessions": 32,
            "provider_limits": limits,
            "within_secs": 60,
            "settled_after_end_secs": 0.8,
            "last_sent_after_end_secs": 0.7,
            "channels": channels.iter().map(|(k, c)| (k.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
            "verdict": notifications_verdict(&channels, 0),
        });
        let t = notifications_table(&n);
        assert!(
            t.contains("email 640/s (burst 32) over 32 SMTP sessions"),
            "{t}"
        );
        assert!(t.contains("sms 100/s (burst 100)"), "{t}");
        assert!(t.contains("verdict: MET"), "{t}");
        assert!(t.contains("0.80 s after the end"), "{t}");
        assert!(t.contains("the last send 0.70 s after the end"), "{t}");
        n["last_sent_after_end_secs"] = json!(-0.05);
        let t = notifications_table(&n);
        assert!(t.contains("the last send 0.05 s before the end"), "{t}");
        n["verdict"] = json!({"met": false, "missed": ["4 sms still pending"]});
        let t = notifications_table(&n);
        assert!(
            t.contains("MISSED at 60 s after the end: 4 sms still pending"),
            "{t}"
        );
        let t = notifications_table(&json!({"accounted": false, "why": "given by --url"}));
        assert_eq!(t, "notifications: not accounted (given by --url)\n");
    }
}
