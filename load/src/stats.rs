//! Figures several measurements share: the median of rounds, and CPU time from /proc (a
//! server's, per unit of work, the driver's own while a future runs).

use std::time::Instant;

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let half = values.len() / 2;
    match values.len() {
        0 => 0.0,
        // Of an even number, the middle two's mean: the upper one alone made a two-round
        // run's median its better round, each side's on its own.
        n if n % 2 == 0 => (values[half - 1] + values[half]) / 2.0,
        _ => values[half],
    }
}

/// A process's CPU seconds so far, when its id is known.
pub fn server_cpu(pid: Option<u32>) -> Option<f64> {
    pid.and_then(crate::hub::usage).map(|(cpu, _)| cpu)
}

/// CPU microseconds per unit of work between two readings.
pub fn cpu_per(before: Option<f64>, after: Option<f64>, units: u64) -> Option<f64> {
    match (before, after) {
        (Some(a), Some(b)) if units > 0 => Some((b - a) * 1e6 / units as f64),
        _ => None,
    }
}

/// Our own CPU seconds so far.
fn own_cpu() -> f64 {
    server_cpu(Some(std::process::id())).unwrap_or_default()
}

/// Runs `f` and returns its value with the driver's cores busy meanwhile.
pub async fn timed<T>(f: impl Future<Output = T>) -> (T, f64) {
    let (cpu, at) = (own_cpu(), Instant::now());
    let value = f.await;
    (
        value,
        (own_cpu() - cpu) / at.elapsed().as_secs_f64().max(1e-9),
    )
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_rounds() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [5.0]), 5.0);
        assert_eq!(median(&mut [4.0, 1.0]), 2.5);
        assert_eq!(median(&mut [1.0, 9.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
