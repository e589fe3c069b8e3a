//! What a person reads at the end of a run: per hop the count, p50, p95, p99, max and errors,
//! then the accounting's verdict (orders lost or doubled, hand-overs, frames, notifications).
//! The terminal prints it; report.html opens with the same rows.

use serde_json::Value;

/// One hop's row.
pub(super) struct HopRow {
    pub name: String,
    pub count: u64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub errors: u64,
}

/// The hops of a report, in its order.
pub(super) fn hop_rows(report: &Value) -> Vec<HopRow> {
    let Some(hops) = report["hops"].as_object() else {
        return Vec::new();
    };
    hops.iter()
        .map(|(name, hop)| HopRow {
            name: name.clone(),
            count: hop["count"].as_u64().unwrap_or(0),
            p50: hop["p50_ms"].as_f64(),
            p95: hop["p95_ms"].as_f64(),
            p99: hop["p99_ms"].as_f64(),
            max: hop["max_ms"].as_f64(),
            errors: error_count(&hop["errors"]),
        })
        .collect()
}

/// Errors as a number or by code.
pub(super) fn error_count(errors: &Value) -> u64 {
    match errors {
        Value::Object(by_code) => by_code.values().filter_map(Value::as_u64).sum(),
        other => other.as_u64().unwrap_or(0),
    }
}

/// One part of the accounting: what it is, what was counted, whether it holds.
pub(super) struct Check {
    pub topic: &'static str,
    pub text: String,
    pub fine: bool,
}

/// The run's verdict: passed or not, and each part of the accounting.
pub(super) struct Verdict {
    pub passed: bool,
    pub headline: String,
    pub checks: Vec<Check>,
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A count under the first of these keys that the value has ("-" under none).
fn first(v: &Value, keys: &[&str]) -> String {
    keys.iter()
        .find_map(|k| v[*k].as_u64())
        .map_or("-".to_owned(), |x| x.to_string())
}

pub(super) fn verdict(report: &Value) -> Verdict {
    let c = &report["correctness"];
    let mut checks = Vec::new();
    let (due, accepted, doubled) = (
        n(&c["orders_due"]),
        n(&c["orders_accepted"]),
        n(&c["orders_doubled"]),
    );
    checks.push(Check {
        topic: "orders",
        text: format!(
            "{due} due, {accepted} accepted, {} lost, {doubled} doubled",
            due.saturating_sub(accepted)
        ),
        fine: accepted == due && doubled == 0,
    });
    let (handed, twice, not) = (
        n(&c["handed_over"]),
        n(&c["handed_over_twice"]),
        n(&c["not_handed_over"]),
    );
    checks.push(Check {
        topic: "hand-overs",
        text: format!("{handed} handed over, {twice} twice, {not} not handed over"),
        fine: twice == 0 && not == 0,
    });
    if !c["dashboard_frames_expected"].is_null() {
        let apps = &c["guardian_apps"];
        let boards = &c["counter_boards"];
        let (missing, gaps, lost) = (
            n(&c["dashboard_frames_missing"]),
            n(&c["dashboard_gaps"]),
            n(&c["dashboards_not_reconnected"]),
        );
        checks.push(Check {
            topic: "frames",
            text: format!(
                "screens: {} expected, {missing} missing, {} replayed after {} storm(s), {gaps} gaps, {lost} not back; \
                 apps: {} missing, {} gaps; boards: {} missing, {} twice",
                n(&c["dashboard_frames_expected"]),
                n(&c["dashboard_frames_replayed"]),
                n(&c["dashboard_storms"]),
                n(&apps["picked_up_missing"]),
                n(&apps["gaps"]),
                n(&boards["meals_gone_missing"]),
                n(&boards["meals_gone_twice"]),
            ),
            fine: missing == 0
                && gaps == 0
                && lost == 0
                && n(&c["dashboard_resets"]) == 0
                && n(&c["dashboard_refusals"]) == 0
                && apps["ok"] != false
                && boards["ok"] != false,
        });
    }
    let dropped = n(&c["sends_dropped"]) + n(&c["arrivals_dropped"]);
    let errors = n(&c["errors"]);
    let finished =
        report["finished_within_deadline"] != false && report["finished_within_drain"] != false;
    checks.push(Check {
        topic: "requests",
        text: format!(
            "{errors} errors, {dropped} sends dropped, {}",
            if finished {
                "finished in time"
            } else {
                "NOT finished in time"
            }
        ),
        fine: errors == 0 && dropped == 0 && finished,
    });
    checks.push(notifications(report));
    let passed = report["ok"] == true;
    let failing: Vec<&str> = checks.iter().filter(|c| !c.fine).map(|c| c.topic).collect();
    let headline = match (passed, failing.is_empty()) {
        (true, _) => "PASSED: nothing lost or doubled".to_owned(),
        (false, true) => "FAILED".to_owned(),
        (false, false) => format!("FAILED: {}", failing.join(", ")),
    };
    Verdict {
        passed,
        headline,
        checks,
    }
}

/// The notifications' accounting: the rush's (under `correctness`) or a phased plan's.
fn notifications(report: &Value) -> Check {
    let rush = &report["correctness"]["notifications"];
    let phased = &report["notifications"];
    let (channels, fine) = if rush.is_object() {
        (rush, rush["ok"] == true)
    } else if phased["accounted"] == true {
        (&phased["channels"], phased["verdict"]["met"] == true)
    } else {
        let why = phased["why"]
            .as_str()
            .unwrap_or("the hub was given by --url: its sinks are not the tool's");
        return Check {
            topic: "notifications",
            text: format!("not accounted ({why})"),
            fine: true,
        };
    };
    let text: Vec<String> = ["email", "push", "sms"]
        .iter()
        .filter(|ch| channels[**ch].is_object())
        .map(|ch| {
            let x = &channels[*ch];
            format!(
                "{ch} {} committed, {} received, {} twice, {} lost",
                first(x, &["committed"]),
                first(x, &["received"]),
                first(x, &["received_twice", "duplicates"]),
                first(x, &["sent_but_missing", "sent_not_received", "not_sent"]),
            )
        })
        .collect();
    Check {
        topic: "notifications",
        text: text.join("; "),
        fine,
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |x| format!("{x:.1}"))
}

/// The table and the verdict, for the terminal.
pub fn summary(report: &Value) -> String {
    let mut out = format!(
        "{:<18} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "hop", "count", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"
    );
    for row in hop_rows(report) {
        out.push_str(&format!(
            "{:<18} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
            row.name,
            row.count,
            ms(row.p50),
            ms(row.p95),
            ms(row.p99),
            ms(row.max),
            row.errors
        ));
    }
    let verdict = verdict(report);
    out.push_str(&format!("\n{}\n", verdict.headline));
    for check in &verdict.checks {
        out.push_str(&format!(
            "  {:<3} {:<14} {}\n",
            if check.fine { "ok" } else { "BAD" },
            check.topic,
            check.text
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rush() -> Value {
        json!({
            "ok": true,
            "finished_within_deadline": true,
            "hops": {
                "order_post": {"count": 120, "p50_ms": 2.0, "p95_ms": 8.0, "p99_ms": 12.5, "max_ms": 30.0, "errors": {}},
                "scan_verdict": {"count": 0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "errors": {"503 busy": 2}},
            },
            "correctness": {
                "orders_due": 120, "orders_accepted": 120, "orders_doubled": 0,
                "handed_over": 120, "handed_over_twice": 0, "not_handed_over": 0,
                "dashboard_frames_expected": 240, "dashboard_frames_missing": 0,
                "dashboard_frames_replayed": 7, "dashboard_storms": 1, "dashboard_gaps": 0,
                "dashboards_not_reconnected": 0,
                "guardian_apps": {"ok": true, "picked_up_missing": 0, "gaps": 0},
                "counter_boards": {"ok": true, "meals_gone_missing": 0, "meals_gone_twice": 0},
                "sends_dropped": 0, "errors": 0,
                "notifications": {"ok": true, "email": {"ok": true, "committed": 40, "received": 40, "received_twice": 0, "sent_but_missing": 0}},
            },
        })
    }

    #[test]
    fn the_table_has_a_row_per_hop_and_the_verdict_each_check() {
        let text = summary(&rush());
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("hop") && lines[0].contains("p95 ms"),
            "{text}"
        );
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            ["order_post", "120", "2.0", "8.0", "12.5", "30.0", "0"],
            "{text}"
        );
        assert!(
            lines[2].starts_with("scan_verdict") && lines[2].ends_with(" 2"),
            "{text}"
        );
        assert!(text.contains("PASSED: nothing lost or doubled"), "{text}");
        assert!(
            text.contains("ok  orders         120 due, 120 accepted, 0 lost, 0 doubled"),
            "{text}"
        );
        assert!(text.contains("7 replayed after 1 storm(s)"), "{text}");
        assert!(
            text.contains("email 40 committed, 40 received, 0 twice, 0 lost"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_run_names_what_failed() {
        let mut r = rush();
        r["ok"] = json!(false);
        r["correctness"]["orders_accepted"] = json!(118);
        r["correctness"]["handed_over_twice"] = json!(1);
        r["correctness"]["notifications"] = Value::Null;
        let text = summary(&r);
        assert!(text.contains("FAILED: orders, hand-overs"), "{text}");
        assert!(
            text.contains("BAD orders         120 due, 118 accepted, 2 lost"),
            "{text}"
        );
        assert!(text.contains("notifications  not accounted"), "{text}");
        // A phased plan's notifications.
        let phased = json!({"ok": false, "notifications": {"accounted": true,
            "channels": {"sms": {"committed": 5, "received": 4, "duplicates": 0, "sent_not_received": 1}},
            "verdict": {"met": false}}});
        let text = summary(&phased);
        assert!(
            text.contains("BAD notifications  sms 5 committed, 4 received, 0 twice, 1 lost"),
            "{text}"
        );
    }
}
