//! A circuit breaker per notification provider: after `threshold` consecutive failures it
//! opens for `cooldown`, then lets one probe through (half-open); the probe's outcome closes
//! or reopens it. While open, messages wait in the outbox instead of hammering a provider
//! that is down.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else waits for its answer (or until it is overdue).
    HalfOpen {
        since: Instant,
    },
}

impl BreakerState {
    /// For the `notify_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed { .. } => 0.0,
            BreakerState::HalfOpen { .. } => 1.0,
            BreakerState::Open { .. } => 2.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            state: BreakerState::Closed { failures: 0 },
            threshold: threshold.max(1),
            cooldown,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// May a message go to the provider now? `Err` says when to look again.
    pub fn admit(&mut self, now: Instant) -> Result<(), Instant> {
        match self.state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } if now < until => Err(until),
            // A probe lost on the way (its dispatcher died) must not hold the circuit forever.
            BreakerState::HalfOpen { since } if now < since + self.cooldown => {
                Err(now + self.cooldown.min(Duration::from_secs(1)))
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::HalfOpen { since: now };
                Ok(())
            }
        }
    }

    pub fn succeeded(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// The provider failed (timeout, 5xx, refused connection); a bad message is not its fault.
    pub fn failed(&mut self, now: Instant) {
        self.state = match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.threshold => {
                BreakerState::Closed {
                    failures: failures + 1,
                }
            }
            _ => BreakerState::Open {
                until: now + self.cooldown,
            },
        };
    }

    /// The provider asked us to wait (429 with Retry-After): hold everything until then
    /// without counting it as a failure.
    pub fn pause_until(&mut self, until: Instant) {
        let later = match self.state {
            BreakerState::Open { until: current } => current.max(until),
            _ => until,
        };
        self.state = BreakerState::Open { until: later };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let start = Instant::now();
        let cooldown = Duration::from_secs(30);
        let mut b = Breaker::new(3, cooldown);
        b.failed(start);
        b.failed(start);
        b.succeeded();
        b.failed(start);
        b.failed(start);
        assert_eq!(b.admit(start), Ok(()), "a success resets the count");
        b.failed(start);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: start + cooldown
            }
        );
        assert_eq!(
            b.admit(start + Duration::from_secs(1)),
            Err(start + cooldown)
        );
        let later = start + cooldown;
        assert_eq!(b.admit(later), Ok(()), "the probe");
        assert_eq!(b.state(), BreakerState::HalfOpen { since: later });
        assert!(b.admit(later).is_err(), "only one probe at a time");
        assert_eq!(
            b.admit(later + cooldown),
            Ok(()),
            "unless the probe is overdue"
        );
        b.failed(later);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: later + cooldown
            }
        );
        assert_eq!(b.admit(later + cooldown), Ok(()));
        b.succeeded();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        assert_eq!(b.state().gauge(), 0.0);
    }

    #[test]
    fn a_pause_holds_without_counting_as_a_failure() {
        let start = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(30));
        b.pause_until(start + Duration::from_secs(5));
        assert_eq!(b.admit(start), Err(start + Duration::from_secs(5)));
        b.pause_until(start + Duration::from_secs(2));
        assert_eq!(
            b.admit(start),
            Err(start + Duration::from_secs(5)),
            "never shortened"
        );
        assert_eq!(b.admit(start + Duration::from_secs(5)), Ok(()));
    }
}
