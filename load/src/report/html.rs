//! report.html: the verdict and the summary table first, then the run over time (latency per
//! hop, throughput and errors, the hub's CPU and memory) with the phases marked. One file,
//! inline SVG and CSS, nothing fetched.

use super::chart::{Line, chart, escape};
use super::summary::{hop_rows, verdict};
use serde_json::Value;
use std::fmt::Write;

/// Colours for lines of several hops.
const PALETTE: [&str; 10] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#b8860b", "#a6761d", "#666666",
    "#1f78b4", "#b15928",
];

pub(super) const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:960px;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #ddd}\
th:first-child,td:first-child{text-align:left}.pass{border-left:6px solid #2a7;padding-left:1em}\
.fail{border-left:6px solid #c33;padding-left:1em}.bad{color:#c33;font-weight:bold}.good{color:#2a7}\
figure{margin:1em 0}figcaption{font-weight:bold;margin-bottom:4px}.note{color:#666}";

fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |x| format!("{x:.1}"))
}

/// The page for a report.
pub fn html(report: &Value) -> String {
    let name = report["profile"]["name"].as_str().unwrap_or("?");
    let mut page = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Tiffin load: {}</title><style>{STYLE}</style><body>\n<h1>Tiffin load: {}</h1>\n<p class=\"note\">{}</p>\n",
        escape(name),
        escape(name),
        escape(&about(report))
    );
    let v = verdict(report);
    let _ = write!(
        page,
        "<section id=\"verdict\" class=\"{}\"><h2>{}</h2><ul>",
        if v.passed { "pass" } else { "fail" },
        escape(&v.headline)
    );
    for check in &v.checks {
        let _ = write!(
            page,
            "<li class=\"{}\"><b>{}</b>: {}</li>",
            if check.fine { "good" } else { "bad" },
            check.topic,
            escape(&check.text)
        );
    }
    page.push_str("</ul></section>\n<h2>Latency per hop (ms, from the scheduled send)</h2>\n<table id=\"summary\"><tr><th>hop</th><th>count</th><th>p50</th><th>p95</th><th>p99</th><th>max</th><th>errors</th></tr>");
    for row in hop_rows(report) {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td></tr>",
            escape(&row.name),
            row.count,
            ms(row.p50),
            ms(row.p95),
            ms(row.p99),
            ms(row.max),
            if row.errors > 0 { " class=\"bad\"" } else { "" },
            row.errors
        );
    }
    page.push_str("</table>\n");
    page.push_str(&phases_table(report));
    page.push_str(&charts(&report["series"]));
    page.push_str(
        "<p class=\"note\">Every figure: report.json beside this page.</p>\n</body></html>\n",
    );
    page
}

/// The run's settings in a line.
fn about(report: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(backend) = report["backend"].as_str() {
        parts.push(format!("backend {backend}"));
    }
    if let Some(scale) = report["rate_scale"].as_f64() {
        parts.push(format!("rate scale {scale}"));
    }
    if let Some(scale) = report["time_scale"].as_f64() {
        parts.push(format!("time scale {scale}"));
    }
    for (key, label) in [
        ("rush_seconds", "rush"),
        ("run_seconds", "run"),
        ("seed_seconds", "seed"),
    ] {
        if let Some(secs) = report[key].as_f64() {
            parts.push(format!("{label} {secs:.1} s"));
        }
    }
    parts.join(", ")
}

/// A phased plan's phases: arrivals, the hub's CPU and the verdict against the target.
fn phases_table(report: &Value) -> String {
    let Some(phases) = report["phases"].as_array() else {
        return String::new();
    };
    let mut out = format!(
        "<h2>Phases (target p95 &lt; {} ms)</h2>\n<table id=\"phases\"><tr><th>phase</th><th>seconds</th><th>arrivals/s</th><th>arrivals</th><th>late</th><th>dropped</th><th>hub cores</th><th>verdict</th></tr>",
        report["target_p95_ms"]
    );
    for phase in phases {
        let met = phase["verdict"]["met"] == true;
        let worst = match phase["verdict"]["worst_p95"]["request"].as_str() {
            Some(r) => format!(
                " (worst p95: {r} {} ms)",
                ms(phase["verdict"]["worst_p95"]["p95_ms"].as_f64())
            ),
            None => String::new(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}{}</td></tr>",
            escape(phase["name"].as_str().unwrap_or("?")),
            phase["seconds"].as_f64().unwrap_or(0.0),
            phase["arrivals_per_sec"],
            phase["arrivals"]["total"],
            phase["late"],
            phase["dropped"],
            phase["hub_cpu_cores_busy"]
                .as_f64()
                .map_or("-".to_owned(), |c| format!("{c:.2}")),
            if met { "good" } else { "bad" },
            if met { "met" } else { "missed" },
            escape(&worst)
        );
    }
    out.push_str("</table>\n");
    out
}

fn values(v: &Value) -> Vec<Option<f64>> {
    v.as_array()
        .map(|a| a.iter().map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// The charts from the report's `series`.
fn charts(series: &Value) -> String {
    let Some(hops) = series["hops"].as_object() else {
        return "<p class=\"note\">This report has no per-second series to chart.</p>\n".into();
    };
    let seconds = series["seconds"].as_u64().unwrap_or(0) as usize;
    let phases: Vec<(f64, String)> = series["phases"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|x| {
                    (
                        x["at_secs"].as_f64().unwrap_or(0.0),
                        x["name"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = String::from("<h2>Latency over time (ms, per second)</h2>\n");
    let answered = |hop: &Value| values(&hop["count"]).iter().flatten().sum::<f64>() > 0.0;
    for (name, hop) in hops.iter().filter(|(_, hop)| answered(hop)) {
        let lines = [
            ("p50", "#2a7", "p50_ms"),
            ("p95", "#e08a00", "p95_ms"),
            ("p99", "#c33", "p99_ms"),
        ]
        .map(|(label, color, key)| Line {
            label,
            color,
            values: values(&hop[key]),
        });
        out.push_str(&chart(
            &format!("latency-{name}"),
            &format!("{name}: p50, p95, p99"),
            "ms",
            &lines,
            &phases,
            seconds,
        ));
    }
    let mut flow: Vec<Line<'_>> = hops
        .iter()
        .filter(|(_, hop)| answered(hop))
        .zip(PALETTE.iter().cycle())
        .map(|((name, hop), color)| Line {
            label: name,
            color,
            values: values(&hop["count"]),
        })
        .collect();
    let errors: Vec<Option<f64>> = (0..seconds)
        .map(|s| {
            Some(
                hops.values()
                    .map(|h| h["errors"][s].as_f64().unwrap_or(0.0))
                    .sum(),
            )
        })
        .collect();
    flow.push(Line {
        label: "errors",
        color: "#c33",
        values: errors,
    });
    out.push_str("<h2>Throughput and errors (per second)</h2>\n");
    out.push_str(&chart(
        "throughput",
        "answers per hop and errors (all hops)",
        "per s",
        &flow,
        &phases,
        seconds,
    ));
    out.push_str("<h2>The hub</h2>\n");
    let hub = &series["hub"];
    if hub.is_null() {
        out.push_str("<p class=\"note\">The hub's process was not known (a hub given by --url without --hub-pid): no CPU or memory.</p>\n");
        return out;
    }
    let at_seconds = |key: &str| {
        let mut dense = vec![None; seconds];
        let at = hub["second"].as_array().cloned().unwrap_or_default();
        for (second, value) in at.iter().zip(values(&hub[key])) {
            if let Some(slot) = second.as_u64().and_then(|s| dense.get_mut(s as usize)) {
                *slot = value;
            }
        }
        dense
    };
    out.push_str(&chart(
        "hub-cpu",
        "the hub's CPU (cores busy)",
        "cores",
        &[Line {
            label: "cores busy",
            color: "#7570b3",
            values: at_seconds("cpu_cores"),
        }],
        &phases,
        seconds,
    ));
    out.push_str(&chart(
        "hub-memory",
        "the hub's resident memory (MiB)",
        "MiB",
        &[Line {
            label: "RSS",
            color: "#1f78b4",
            values: at_seconds("rss_mib"),
        }],
        &phases,
        seconds,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_page_opens_with_the_verdict_and_the_table_then_charts() {
        let report = json!({
            "profile": {"name": "smoke"}, "ok": false,
            "hops": {"order_post": {"count": 3, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "max_ms": 3.0, "errors": {"500": 1}}},
            "correctness": {"orders_due": 4, "orders_accepted": 3},
            "series": {"seconds": 3, "phases": [{"name": "pickup", "at_secs": 1.0}],
                "hops": {"order_post": {"count": [2, 1, 0], "errors": [0, 1, 0],
                    "p50_ms": [1.0, 2.0, null], "p95_ms": [1.0, 2.0, null], "p99_ms": [1.0, 3.0, null]}},
                "hub": {"second": [0, 1, 2], "cpu_cores": [null, 0.5, 0.2], "rss_mib": [20.0, 21.0, 21.5]}},
        });
        let page = html(&report);
        let verdict = page.find("id=\"verdict\"").unwrap();
        let table = page.find("id=\"summary\"").unwrap();
        let chart = page.find("data-chart=\"latency-order_post\"").unwrap();
        assert!(verdict < table && table < chart, "{page}");
        assert!(page.contains("FAILED: orders"), "{page}");
        assert!(page.contains("<td class=\"bad\">1</td>"), "{page}");
        for id in ["throughput", "hub-cpu", "hub-memory"] {
            assert!(
                page.contains(&format!("data-chart=\"{id}\"")),
                "{id}: {page}"
            );
        }
        assert!(page.contains(">pickup<"), "the phase is marked: {page}");
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "nothing fetched"
        );
        assert!(!page.contains("\"correctness\""), "no raw JSON: {page}");
    }
}
