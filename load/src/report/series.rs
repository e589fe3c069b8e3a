//! The run second by second, for the report's charts: per hop the answers, errors and
//! latency percentiles of each second (by when the answer came), the phases' starts, and the
//! hub's CPU and memory sampled every second.

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// One hop's second. The histogram is coarse (about 6%: enough for a line on a chart) and
/// made only for a second with answers: a 20-minute run keeps thousands of them.
#[derive(Default)]
struct Second {
    latency_us: Option<Histogram<u32>>,
    errors: u64,
}

pub(super) struct Series {
    origin: Instant,
    origin_utc: chrono::DateTime<chrono::Utc>,
    hops: BTreeMap<&'static str, Vec<Second>>,
    /// (seconds from the origin, name)
    phases: Vec<(f64, String)>,
}

impl Series {
    pub(super) fn new() -> Series {
        Series {
            origin: Instant::now(),
            origin_utc: chrono::Utc::now(),
            hops: BTreeMap::new(),
            phases: Vec::new(),
        }
    }

    pub(super) fn second_of(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.origin).as_secs() as usize
    }

    pub(super) fn second_of_utc(&self, at: chrono::DateTime<chrono::Utc>) -> usize {
        (at - self.origin_utc).num_seconds().max(0) as usize
    }

    fn slot(&mut self, name: &'static str, second: usize) -> &mut Second {
        let seconds = self.hops.entry(name).or_default();
        if seconds.len() <= second {
            seconds.resize_with(second + 1, Second::default);
        }
        &mut seconds[second]
    }

    pub(super) fn ok(&mut self, name: &'static str, us: u64, second: usize) {
        let slot = self.slot(name, second);
        if slot.latency_us.is_none() {
            slot.latency_us = Histogram::new_with_bounds(1, 600_000_000, 1).ok();
        }
        if let Some(h) = &mut slot.latency_us {
            let _ = h.record(us.clamp(1, 600_000_000));
        }
    }

    pub(super) fn error(&mut self, name: &'static str, second: usize) {
        self.slot(name, second).errors += 1;
    }

    pub(super) fn phase(&mut self, name: &str, at_secs: Option<f64>) {
        let at = at_secs.unwrap_or_else(|| self.origin.elapsed().as_secs_f64());
        self.phases.push((at, name.to_owned()));
    }

    pub(super) fn current_phase(&self) -> Option<&str> {
        self.phases.last().map(|(_, name)| name.as_str())
    }

    /// Dense arrays, one entry a second from 0: `count` and `errors` per hop, its
    /// percentiles in ms (null in a second without answers); the phases; the hub's samples.
    pub(super) fn json(&self, hub: Value) -> Value {
        let hub_seconds = hub["second"]
            .as_array()
            .and_then(|s| s.last())
            .and_then(Value::as_u64)
            .map_or(0, |s| s as usize + 1);
        let seconds = self
            .hops
            .values()
            .map(Vec::len)
            .chain([hub_seconds])
            .max()
            .unwrap_or(0);
        let hops: BTreeMap<&str, Value> = self
            .hops
            .iter()
            .map(|(name, per_second)| {
                let at = |s: usize| per_second.get(s);
                let quantile = |q: f64| -> Vec<Value> {
                    (0..seconds)
                        .map(|s| match at(s).and_then(|x| x.latency_us.as_ref()) {
                            Some(h) if !h.is_empty() => {
                                json!(h.value_at_quantile(q) as f64 / 1000.0)
                            }
                            _ => Value::Null,
                        })
                        .collect()
                };
                let count: Vec<u64> = (0..seconds)
                    .map(|s| {
                        at(s)
                            .and_then(|x| x.latency_us.as_ref())
                            .map_or(0, Histogram::len)
                    })
                    .collect();
                let errors: Vec<u64> = (0..seconds)
                    .map(|s| at(s).map_or(0, |x| x.errors))
                    .collect();
                (
                    *name,
                    json!({
                        "count": count,
                        "errors": errors,
                        "p50_ms": quantile(0.5),
                        "p95_ms": quantile(0.95),
                        "p99_ms": quantile(0.99),
                        "max_ms": quantile(1.0),
                    }),
                )
            })
            .collect();
        let phases: Vec<Value> = self
            .phases
            .iter()
            .map(|(at, name)| json!({"name": name, "at_secs": at}))
            .collect();
        json!({"seconds": seconds, "phases": phases, "hops": hops, "hub": hub})
    }
}

/// One second's sample: cores busy over the second before, resident memory in MiB.
struct HubSample {
    second: usize,
    cores: Option<f64>,
    rss_mib: Option<f64>,
}

/// The hub's CPU (cores busy over the second before) and resident memory, every second while
/// it runs: when the tool knows the process.
pub struct HubSampler {
    samples: Rc<RefCell<Vec<HubSample>>>,
    task: Option<actix_web::rt::task::JoinHandle<()>>,
}

impl HubSampler {
    /// Starts sampling now (second 0: the recorder's origin, made at the same moment).
    pub fn start(pid: Option<u32>) -> HubSampler {
        let samples: Rc<RefCell<Vec<HubSample>>> = Rc::default();
        let task = pid.map(|pid| {
            let samples = samples.clone();
            actix_web::rt::spawn(async move {
                let origin = Instant::now();
                let mut before: Option<(Instant, f64)> = None;
                for second in 0usize.. {
                    let at = origin + Duration::from_secs(second as u64);
                    actix_web::rt::time::sleep_until(at.into()).await;
                    let now = Instant::now();
                    let cpu = crate::hub::usage(pid).map(|(cpu, _)| cpu);
                    let cores = match (before, cpu) {
                        (Some((then, was)), Some(cpu)) => {
                            Some((cpu - was) / (now - then).as_secs_f64().max(1e-3))
                        }
                        _ => None,
                    };
                    let rss = crate::hub::memory_kib(pid, "VmRSS").map(|kib| kib / 1024.0);
                    before = cpu.map(|cpu| (now, cpu));
                    if cpu.is_none() && rss.is_none() {
                        // The process is gone.
                        return;
                    }
                    samples.borrow_mut().push(HubSample {
                        second,
                        cores,
                        rss_mib: rss,
                    });
                }
            })
        });
        HubSampler { samples, task }
    }

    /// Stops sampling: `{"second": [..], "cpu_cores": [..], "rss_mib": [..]}`, or null when
    /// the process was not known.
    pub fn stop(self) -> Value {
        let Some(task) = self.task else {
            return Value::Null;
        };
        task.abort();
        let samples = self.samples.borrow();
        json!({
            "second": samples.iter().map(|s| s.second).collect::<Vec<_>>(),
            "cpu_cores": samples.iter().map(|s| s.cores).collect::<Vec<_>>(),
            "rss_mib": samples.iter().map(|s| s.rss_mib).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_hold_their_own_answers_errors_and_percentiles() {
        let mut s = Series::new();
        for ms in 1..=100u64 {
            s.ok("a", ms * 1000, 0);
        }
        s.ok("a", 500_000, 2);
        s.error("a", 1);
        s.phase("second half", Some(1.0));
        let j = s.json(json!({"second": [0, 1, 2, 3], "cpu_cores": [null, 0.5, 0.4, 0.3], "rss_mib": [10.0, 11.0, 12.0, 12.0]}));
        assert_eq!(
            j["seconds"], 4,
            "the hub's samples run a second longer: {j}"
        );
        let a = &j["hops"]["a"];
        assert_eq!(a["count"], json!([100, 0, 1, 0]));
        assert_eq!(a["errors"], json!([0, 1, 0, 0]));
        let p95 = a["p95_ms"][0].as_f64().unwrap();
        assert!((p95 - 95.0).abs() < 95.0 * 0.07, "{p95}");
        assert_eq!(a["p99_ms"][1], Value::Null);
        let lone = a["p50_ms"][2].as_f64().unwrap();
        assert!((lone - 500.0).abs() < 500.0 * 0.07, "{lone}");
        assert_eq!(j["phases"][0]["name"], "second half");
        assert_eq!(s.current_phase(), Some("second half"));
    }
}
