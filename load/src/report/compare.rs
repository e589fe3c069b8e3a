//! `tiffin-load compare A B`: two runs side by side, each figure with its change (absolute
//! and %) marked better or worse (lower latency, errors and losses are better; more answers
//! and throughput are better); as a terminal table or a page.

use super::chart::escape;
use super::html::STYLE;
use super::summary::error_count;
use serde_json::Value;
use std::fmt::Write;

/// Which way is better.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Better {
    Lower,
    Higher,
}

struct Row {
    group: String,
    figure: &'static str,
    a: Option<f64>,
    b: Option<f64>,
    better: Better,
}

/// Changes smaller than this share of A count as the same (a run's own noise).
const SAME_WITHIN: f64 = 0.01;

impl Row {
    fn change(&self) -> Option<(f64, Option<f64>)> {
        let (a, b) = (self.a?, self.b?);
        let pct = (a != 0.0).then(|| (b - a) / a.abs() * 100.0);
        Some((b - a, pct))
    }

    /// "better", "worse" or "same".
    fn mark(&self) -> &'static str {
        let Some((delta, pct)) = self.change() else {
            return "";
        };
        let same = match pct {
            Some(p) => p.abs() < SAME_WITHIN * 100.0,
            None => delta == 0.0,
        };
        if same {
            "same"
        } else if (delta < 0.0) == (self.better == Better::Lower) {
            "better"
        } else {
            "worse"
        }
    }
}

fn rows(a: &Value, b: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut push = |group: &str, figure: &'static str, x: Option<f64>, y: Option<f64>, better| {
        if x.is_some() || y.is_some() {
            rows.push(Row {
                group: group.to_owned(),
                figure,
                a: x,
                b: y,
                better,
            });
        }
    };
    let mut hops: Vec<&String> = Vec::new();
    for report in [a, b] {
        for name in report["hops"]
            .as_object()
            .into_iter()
            .flat_map(|h| h.keys())
        {
            if !hops.contains(&name) {
                hops.push(name);
            }
        }
    }
    for name in hops {
        let (x, y) = (&a["hops"][name], &b["hops"][name]);
        push(
            name,
            "count",
            x["count"].as_f64(),
            y["count"].as_f64(),
            Better::Higher,
        );
        for (key, figure) in [
            ("p50_ms", "p50 ms"),
            ("p95_ms", "p95 ms"),
            ("p99_ms", "p99 ms"),
            ("max_ms", "max ms"),
        ] {
            push(
                name,
                figure,
                x[key].as_f64(),
                y[key].as_f64(),
                Better::Lower,
            );
        }
        let errors = |hop: &Value| (!hop.is_null()).then(|| error_count(&hop["errors"]) as f64);
        push(name, "errors", errors(x), errors(y), Better::Lower);
    }
    for (key, figure) in [("orders_per_sec", "orders/s"), ("scans_per_sec", "scans/s")] {
        push(
            "throughput",
            figure,
            a["throughput"][key].as_f64(),
            b["throughput"][key].as_f64(),
            Better::Higher,
        );
    }
    for (key, figure) in [
        ("cpu_seconds", "cpu s"),
        ("cpu_cores_busy", "cores busy"),
        ("peak_rss_mib", "peak MiB"),
    ] {
        push(
            "hub",
            figure,
            a["hub"][key].as_f64(),
            b["hub"][key].as_f64(),
            Better::Lower,
        );
    }
    let (x, y) = (&a["correctness"], &b["correctness"]);
    push(
        "accounting",
        "accepted",
        x["orders_accepted"].as_f64(),
        y["orders_accepted"].as_f64(),
        Better::Higher,
    );
    for (key, figure) in [
        ("orders_doubled", "doubled"),
        ("handed_over_twice", "handed twice"),
        ("not_handed_over", "not handed"),
        ("dashboard_frames_missing", "frames missing"),
        ("sends_dropped", "dropped"),
        ("arrivals_dropped", "dropped"),
        ("errors", "errors"),
    ] {
        push(
            "accounting",
            figure,
            x[key].as_f64(),
            y[key].as_f64(),
            Better::Lower,
        );
    }
    rows
}

fn number(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(x) if x == x.trunc() && x.abs() < 1e12 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn change_cells(row: &Row) -> (String, String) {
    match row.change() {
        None => ("-".into(), "-".into()),
        Some((delta, pct)) => (
            if delta == delta.trunc() && delta.abs() < 1e12 {
                format!("{delta:+.0}")
            } else {
                format!("{delta:+.2}")
            },
            pct.map_or("-".into(), |p| format!("{p:+.1}%")),
        ),
    }
}

fn verdict(report: &Value) -> &'static str {
    if report["ok"] == true {
        "passed"
    } else {
        "FAILED"
    }
}

/// The comparison for the terminal.
pub fn compare_text(a: &Value, b: &Value) -> String {
    let mut out = format!(
        "{:<18} {:<14} {:>11} {:>11} {:>10} {:>8}\n",
        "", "figure", "A", "B", "change", "%"
    );
    for row in rows(a, b) {
        let (delta, pct) = change_cells(&row);
        out.push_str(&format!(
            "{:<18} {:<14} {:>11} {:>11} {:>10} {:>8}  {}\n",
            row.group,
            row.figure,
            number(row.a),
            number(row.b),
            delta,
            pct,
            row.mark()
        ));
    }
    out.push_str(&format!("verdict: A {}, B {}\n", verdict(a), verdict(b)));
    out
}

/// The comparison as a page (`compare --html`).
pub fn compare_html(a: &Value, b: &Value, names: (&str, &str)) -> String {
    let mut page = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Tiffin load: A against B</title><style>{STYLE}</style><body>\n<h1>Tiffin load: A against B</h1>\n<p>A: {} ({}), B: {} ({})</p>\n<table id=\"compare\"><tr><th></th><th>figure</th><th>A</th><th>B</th><th>change</th><th>%</th><th></th></tr>",
        escape(names.0),
        verdict(a),
        escape(names.1),
        verdict(b)
    );
    for row in rows(a, b) {
        let (delta, pct) = change_cells(&row);
        let mark = row.mark();
        let class = match mark {
            "better" => " class=\"good\"",
            "worse" => " class=\"bad\"",
            _ => "",
        };
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{delta}</td><td>{pct}</td><td{class}>{mark}</td></tr>",
            escape(&row.group),
            row.figure,
            number(row.a),
            number(row.b),
        );
    }
    page.push_str("</table>\n</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(p99: f64, count: u64, errors: u64, orders_per_sec: f64) -> Value {
        json!({
            "ok": errors == 0,
            "hops": {"order_post": {"count": count, "p50_ms": 2.0, "p95_ms": 5.0, "p99_ms": p99, "max_ms": 40.0,
                                    "errors": {"503 busy": errors}}},
            "throughput": {"orders_per_sec": orders_per_sec},
            "correctness": {"orders_accepted": count, "orders_doubled": 0},
        })
    }

    fn line<'a>(table: &'a str, group: &str, figure: &str) -> Vec<&'a str> {
        table
            .lines()
            .find(|l| l.starts_with(group) && l[19..].starts_with(figure))
            .unwrap_or_else(|| panic!("no {group} {figure} in\n{table}"))
            .split_whitespace()
            .collect()
    }

    #[test]
    fn each_figure_has_its_change_and_which_way_it_went() {
        let a = run(10.0, 100, 0, 50.0);
        let b = run(15.0, 100, 2, 40.0);
        let table = compare_text(&a, &b);
        assert_eq!(
            line(&table, "order_post", "p99 ms"),
            [
                "order_post",
                "p99",
                "ms",
                "10",
                "15",
                "+5",
                "+50.0%",
                "worse"
            ],
            "{table}"
        );
        assert_eq!(
            line(&table, "order_post", "p50 ms")[5..],
            ["+0", "+0.0%", "same"],
            "{table}"
        );
        // From none: no percentage, but still worse.
        assert_eq!(
            line(&table, "order_post", "errors")[2..],
            ["0", "2", "+2", "-", "worse"],
            "{table}"
        );
        assert_eq!(
            line(&table, "throughput", "orders/s")[2..],
            ["50", "40", "-10", "-20.0%", "worse"],
            "{table}"
        );
        assert!(table.ends_with("verdict: A passed, B FAILED\n"), "{table}");
        // The other way round everything that got worse got better.
        let back = compare_text(&b, &a);
        assert_eq!(
            line(&back, "order_post", "p99 ms")[5..],
            ["-5", "-33.3%", "better"]
        );
        assert_eq!(line(&back, "throughput", "orders/s")[6], "better");
        let page = compare_html(&a, &b, ("a/report.json", "b/report.json"));
        assert!(page.contains("<td class=\"bad\">worse</td>"), "{page}");
        assert!(page.contains("a/report.json (passed)"), "{page}");
    }

    #[test]
    fn a_hop_only_one_run_has_shows_dashes() {
        let a = run(10.0, 100, 0, 50.0);
        let mut b = a.clone();
        b["hops"]["scan_verdict"] = json!({"count": 7, "p99_ms": 3.0, "errors": {}});
        let table = compare_text(&a, &b);
        assert_eq!(
            line(&table, "scan_verdict", "count")[2..],
            ["-", "7", "-", "-"],
            "{table}"
        );
    }
}
