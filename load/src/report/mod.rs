//! Latency per hop in HdrHistograms (timed from the scheduled send, so a stall shows), errors
//! by code, throughput over time; written as JSON and HTML, and compared between runs.
//!
//! Here the recorder; its parts: `series` (the same per second, and the hub's CPU and memory),
//! `summary` (the table and verdict printed at the end), `chart` (SVG line charts), `html`
//! (report.html) and `compare` (two runs side by side).

mod chart;
mod compare;
mod html;
mod series;
mod summary;

pub use compare::{compare_html, compare_text};
pub use html::html;
pub use series::HubSampler;
use series::Series;
pub use summary::summary;

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
    /// The hops per second, for the charts (the whole run's recorder only).
    series: Option<Series>,
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
            series: Some(Series::new()),
        })
    }

    /// Without the per-second series (a part of a run whose whole has them).
    pub fn without_series(mut self) -> Recorder {
        self.series = None;
        self
    }

    /// The series' seconds count from now (the clock starts after a warm-up).
    pub fn start_clock(&mut self) {
        if let Some(series) = &mut self.series {
            *series = Series::new();
        }
    }

    /// A phase of the run begins now, or at this second (marked on the charts).
    pub fn phase(&mut self, name: &str, at_secs: Option<f64>) {
        if let Some(series) = &mut self.series {
            series.phase(name, at_secs);
        }
    }

    /// The phase marked last.
    pub fn current_phase(&self) -> Option<&str> {
        self.series.as_ref().and_then(Series::current_phase)
    }

    /// Answers timed so far, over all hops.
    pub fn answered(&self) -> u64 {
        self.hops.values().map(|h| h.latency_us.len()).sum()
    }

    /// An answer that came now.
    pub fn ok(&mut self, name: &'static str, latency: Duration, late: bool) {
        self.ok_at(name, latency, late, Instant::now());
    }

    /// An answer that came at `at` (timed after the fact, e.g. a frame a screen saw).
    pub fn ok_at(&mut self, name: &'static str, latency: Duration, late: bool, at: Instant) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(hop) = self.hops.get_mut(name) {
            let _ = hop.latency_us.record(us.clamp(1, 600_000_000));
            hop.late += u64::from(late);
            if let Some(series) = &mut self.series {
                series.ok(name, us, series.second_of(at));
            }
        }
    }

    /// An answer that came at this wall-clock time (a sink's delivery).
    pub fn ok_at_utc(
        &mut self,
        name: &'static str,
        latency: Duration,
        at: chrono::DateTime<chrono::Utc>,
    ) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(hop) = self.hops.get_mut(name) {
            let _ = hop.latency_us.record(us.clamp(1, 600_000_000));
            if let Some(series) = &mut self.series {
                series.ok(name, us, series.second_of_utc(at));
            }
        }
    }

    pub fn error(&mut self, name: &'static str, code: &str) {
        if let Some(hop) = self.hops.get_mut(name) {
            *hop.errors.entry(code.to_owned()).or_default() += 1;
            if let Some(series) = &mut self.series {
                series.error(name, series.second_of(Instant::now()));
            }
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

    /// The per-second series with the hub's samples (`HubSampler::stop`): `series` in the
    /// report.
    pub fn series_json(&self, hub: Value) -> Value {
        match &self.series {
            Some(series) => series.json(hub),
            None => Value::Null,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_errors_and_the_series() {
        let mut r = Recorder::new().unwrap();
        r.phase("orders", Some(0.0));
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
        assert_eq!(r.answered(), 100);
        assert_eq!(r.current_phase(), Some("orders"));
        let series = r.series_json(Value::Null);
        assert_eq!(series["hops"][ORDER_POST]["count"][0], 100, "{series}");
        assert_eq!(series["hops"][ORDER_POST]["errors"][0], 1, "{series}");
        assert_eq!(r.timeline_json()[1]["scans"], 5);
        // A part of a run keeps no series.
        let part = Recorder::new().unwrap().without_series();
        assert_eq!(part.series_json(Value::Null), Value::Null);
    }
}
