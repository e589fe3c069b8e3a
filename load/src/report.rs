//! Latency per hop in HdrHistograms (timed from the scheduled send, so a stall shows), errors
//! by code, throughput over time; written as JSON and HTML, and compared between runs.

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// One hop's record.
pub struct Hop {
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    /// Sends that left more than 100 ms after they were due (the driver itself fell behind).
    late: u64,
}

impl Hop {
    fn new() -> anyhow::Result<Hop> {
        Ok(Hop {
            // 1 us .. 10 min, 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            errors: BTreeMap::new(),
            late: 0,
        })
    }
}

pub struct Recorder {
    hops: BTreeMap<&'static str, Hop>,
    /// Per second since the start: (orders answered, scans answered).
    timeline: Vec<(u64, u64)>,
}

pub const ORDER_POST: &str = "order_post";
pub const TRANSITION: &str = "transition";
pub const SCAN_VERDICT: &str = "scan_verdict";
pub const SCAN_TO_DASHBOARD: &str = "scan_to_dashboard";
pub const EVENT_TO_SINK: &str = "event_to_sink";

impl Recorder {
    pub fn new() -> anyhow::Result<Recorder> {
        Recorder::with_hops(&[
            ORDER_POST,
            TRANSITION,
            SCAN_VERDICT,
            SCAN_TO_DASHBOARD,
            EVENT_TO_SINK,
        ])
    }

    /// A recorder for these hops (another profile's request types).
    pub fn with_hops(names: &[&'static str]) -> anyhow::Result<Recorder> {
        let mut hops = BTreeMap::new();
        for name in names {
            hops.insert(*name, Hop::new()?);
        }
        Ok(Recorder {
            hops,
            timeline: Vec::new(),
        })
    }

    pub fn ok(&mut self, name: &'static str, latency: Duration, late: bool) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(hop) = self.hops.get_mut(name) {
            let _ = hop.latency_us.record(us.clamp(1, 600_000_000));
            hop.late += u64::from(late);
        }
    }

    pub fn error(&mut self, name: &'static str, code: &str) {
        if let Some(hop) = self.hops.get_mut(name) {
            *hop.errors.entry(code.to_owned()).or_default() += 1;
        }
    }

    pub fn tick(&mut self, second: usize, orders: u64, scans: u64) {
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, (0, 0));
        }
        self.timeline[second].0 += orders;
        self.timeline[second].1 += scans;
    }

    pub fn errors(&self) -> u64 {
        self.hops.values().flat_map(|h| h.errors.values()).sum()
    }

    pub fn hops_json(&self) -> Value {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let hops: BTreeMap<&str, Value> = self
            .hops
            .iter()
            .map(|(name, hop)| {
                let h = &hop.latency_us;
                (
                    *name,
                    json!({
                        "count": h.len(),
                        "p50_ms": ms(h, 0.5),
                        "p90_ms": ms(h, 0.9),
                        "p95_ms": ms(h, 0.95),
                        "p99_ms": ms(h, 0.99),
                        "p999_ms": ms(h, 0.999),
                        "max_ms": h.max() as f64 / 1000.0,
                        "errors": hop.errors,
                        "late": hop.late,
                    }),
                )
            })
            .collect();
        json!(hops)
    }

    pub fn timeline_json(&self) -> Value {
        json!(
            self.timeline
                .iter()
                .enumerate()
                .map(|(s, (o, sc))| json!({"second": s, "orders": o, "scans": sc}))
                .collect::<Vec<_>>()
        )
    }
}

/// A self-contained page: percentiles per hop and throughput over time, as inline SVG.
pub fn html(report: &Value) -> String {
    let mut bars = String::new();
    let hops = report["hops"].as_object().cloned().unwrap_or_default();
    let widest = hops
        .values()
        .filter_map(|h| h["p999_ms"].as_f64())
        .fold(1.0_f64, f64::max);
    for (row, (name, hop)) in hops.iter().enumerate() {
        let y = 30 + row * 80;
        bars.push_str(&format!(
            r#"<text x="0" y="{y}" font-weight="bold">{name} ({} ok)</text>"#,
            hop["count"]
        ));
        for (i, key) in ["p50_ms", "p90_ms", "p99_ms", "p999_ms"].iter().enumerate() {
            let v = hop[key].as_f64().unwrap_or(0.0);
            let width = (v / widest * 600.0).max(1.0);
            let yy = y + 6 + i * 14;
            bars.push_str(&format!(
                r##"<rect x="160" y="{yy}" width="{width:.1}" height="12" fill="#4a7"/><text x="0" y="{}" font-size="11">{}</text><text x="{:.1}" y="{}" font-size="11">{v:.1} ms</text>"##,
                yy + 10,
                key.trim_end_matches("_ms"),
                165.0 + width,
                yy + 10
            ));
        }
    }
    let timeline = report["timeline"].as_array().cloned().unwrap_or_default();
    let top = timeline
        .iter()
        .map(|t| {
            t["orders"]
                .as_f64()
                .unwrap_or(0.0)
                .max(t["scans"].as_f64().unwrap_or(0.0))
        })
        .fold(1.0_f64, f64::max);
    let step = 760.0 / timeline.len().max(1) as f64;
    let line = |key: &str| {
        timeline
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    "{:.1},{:.1}",
                    20.0 + i as f64 * step,
                    220.0 - t[key].as_f64().unwrap_or(0.0) / top * 200.0
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        r##"<!doctype html><meta charset="utf-8"><title>Tiffin load: {name}</title>
<style>body{{font-family:sans-serif;margin:2em}} pre{{background:#f4f4f4;padding:1em}}</style>
<h1>Tiffin lunch rush: {name}</h1>
<p>{verdict}.</p><pre>{correctness}</pre>
<h2>Latency per hop (from the scheduled send)</h2>
<svg width="900" height="{height}">{bars}</svg>
<h2>Throughput per second (green: orders answered, blue: scans answered; top = {top}/s)</h2>
<svg width="800" height="240"><polyline fill="none" stroke="#4a7" points="{orders}"/><polyline fill="none" stroke="#47a" points="{scans}"/></svg>
<h2>Report</h2><pre>{json}</pre>
"##,
        name = report["profile"]["name"].as_str().unwrap_or("?"),
        verdict = if report["ok"] == true {
            "Passed: nothing lost or doubled"
        } else {
            "FAILED"
        },
        correctness = serde_json::to_string_pretty(&report["correctness"]).unwrap_or_default(),
        height = 40 + hops.len() * 80,
        orders = line("orders"),
        scans = line("scans"),
        json = serde_json::to_string_pretty(report)
            .unwrap_or_default()
            .replace('<', "&lt;"),
    )
}

/// The differences between two reports, hop by hop.
pub fn compare(a: &Value, b: &Value) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:>12} {:>12} {:>8}\n",
        "hop", "metric", "A", "B", "B/A"
    );
    let empty = serde_json::Map::new();
    let hops_a = a["hops"].as_object().unwrap_or(&empty);
    for (name, hop_a) in hops_a {
        let hop_b = &b["hops"][name];
        for key in ["count", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] {
            let (x, y) = (hop_a[key].as_f64(), hop_b[key].as_f64());
            let ratio = match (x, y) {
                (Some(x), Some(y)) if x > 0.0 => format!("{:.2}", y / x),
                _ => "-".into(),
            };
            out.push_str(&format!(
                "{:<20} {:<8} {:>12} {:>12} {:>8}\n",
                name,
                key.trim_end_matches("_ms"),
                x.map_or("-".into(), |v| format!("{v:.2}")),
                y.map_or("-".into(), |v| format!("{v:.2}")),
                ratio
            ));
        }
    }
    for key in ["orders_per_sec", "scans_per_sec"] {
        let (x, y) = (a["throughput"][key].as_f64(), b["throughput"][key].as_f64());
        if let (Some(x), Some(y)) = (x, y) {
            out.push_str(&format!(
                "{:<20} {:<8} {:>12.1} {:>12.1} {:>8.2}\n",
                "throughput",
                key.trim_end_matches("_per_sec"),
                x,
                y,
                if x > 0.0 { y / x } else { 0.0 }
            ));
        }
    }
    out.push_str(&format!("ok: A {} B {}\n", a["ok"], b["ok"]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_errors_and_the_comparison() {
        let mut r = Recorder::new().unwrap();
        for ms in 1..=100u64 {
            r.ok(ORDER_POST, Duration::from_millis(ms), ms > 99);
        }
        r.error(ORDER_POST, "409 conflict");
        r.tick(0, 60, 0);
        r.tick(1, 40, 5);
        let hops = r.hops_json();
        let hop = &hops[ORDER_POST];
        assert_eq!(hop["count"], 100);
        assert!(
            (hop["p50_ms"].as_f64().unwrap() - 50.0).abs() < 0.5,
            "{hop}"
        );
        assert!(
            (hop["p99_ms"].as_f64().unwrap() - 99.0).abs() < 0.5,
            "{hop}"
        );
        assert_eq!(hop["errors"]["409 conflict"], 1);
        assert_eq!(hop["late"], 1);
        assert_eq!(r.errors(), 1);
        let a = json!({"hops": hops, "throughput": {"orders_per_sec": 50.0}, "ok": true});
        let mut b = a.clone();
        b["hops"][ORDER_POST]["p99_ms"] = json!(198.0);
        let table = compare(&a, &b);
        let p99 = table
            .lines()
            .find(|l| l.starts_with(ORDER_POST) && l.contains("p99 "))
            .unwrap();
        assert!(p99.trim_end().ends_with("2.00"), "{table}");
        let page = html(
            &json!({"profile": {"name": "t"}, "hops": hops, "timeline": r.timeline_json(), "ok": true}),
        );
        assert!(page.contains("order_post") && page.contains("<polyline"));
    }
}
