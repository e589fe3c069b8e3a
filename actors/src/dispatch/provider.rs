//! What stands between dispatch and a provider: its rate limit and circuit breaker, and each
//! channel's lane of deliveries under way.

use super::policy::{DeliveryPolicy, RateLimit};
use crate::breaker::Breaker;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A lane holds this many rounds of its provider's parallel sends and asks for more at half,
/// four rounds ahead: a claim can wait its turn at the database for a round or two in a rush
/// (with two or four rounds held the rush's emails waited longer; BENCHMARKS.md). Few enough
/// that the last goes out within the provider timeout, which counts waiting for a session,
/// while sends take under 2 s.
const ROUNDS_HELD: usize = 8;

/// What stands between dispatch and one external provider.
pub(super) struct Provider {
    breaker: Mutex<Breaker>,
    pub(super) limiter: Option<DefaultDirectRateLimiter>,
}

impl Provider {
    pub(super) fn new(policy: &DeliveryPolicy, limit: RateLimit) -> Provider {
        let limiter = NonZeroU32::new(limit.per_sec).map(|per_sec| {
            let burst = NonZeroU32::new(limit.burst).unwrap_or(per_sec);
            RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst))
        });
        Provider {
            breaker: Mutex::new(Breaker::new(
                policy.breaker_failures,
                Duration::from_secs(policy.breaker_cooldown_secs),
            )),
            limiter,
        }
    }

    pub(super) fn with_breaker<T>(&self, channel: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut breaker = self
            .breaker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = f(&mut breaker);
        metrics::gauge!("notify_circuit_state", "channel" => channel.to_owned())
            .set(breaker.state().gauge());
        out
    }
}

/// One channel's deliveries under way. Claims skip a full lane, so one provider's backlog
/// (1,000 order-ready emails through 32 SMTP sessions) never holds up another's messages.
pub(super) struct Lane {
    pub(super) in_flight: AtomicUsize,
    /// `ROUNDS_HELD` rounds of the provider's parallel sends.
    full_at: usize,
}

impl Lane {
    pub(super) fn new(parallel: usize) -> Lane {
        Lane {
            in_flight: AtomicUsize::new(0),
            full_at: parallel.max(1) * ROUNDS_HELD,
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) >= self.full_at
    }

    /// One delivery done; true when the lane just fell to half full, time to claim more.
    pub(super) fn finished(&self) -> bool {
        self.in_flight.fetch_sub(1, Ordering::Relaxed) == self.full_at / 2 + 1
    }
}
