//! How hard dispatch tries and how gently it treats providers: the delivery policy, each
//! provider's rate limit, and the retry backoff.

use serde::{Deserialize, Serialize};

/// A provider's token bucket: `per_sec` sustained, bursts of `burst`; 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

/// How hard dispatch tries, and how gently it treats providers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryPolicy {
    /// Attempts before a message is dead-lettered.
    pub max_attempts: i32,
    /// A message still failing this long after it was queued is dead-lettered.
    pub max_age_secs: i64,
    /// Consecutive provider failures that open its circuit.
    pub breaker_failures: u32,
    /// How long an open circuit waits before one probe.
    pub breaker_cooldown_secs: u64,
    /// A critical message not delivered by push within this long goes by SMS.
    pub sms_fallback_after_secs: i64,
    /// The longest one send to a provider may take (connect included) before it counts as a
    /// failure: a provider that accepts a connection and never answers costs a retry.
    pub provider_timeout_secs: u64,
    pub email: RateLimit,
    pub push: RateLimit,
    pub sms: RateLimit,
}

impl Default for DeliveryPolicy {
    fn default() -> DeliveryPolicy {
        DeliveryPolicy {
            max_attempts: 8,
            max_age_secs: 6 * 3600,
            breaker_failures: 5,
            breaker_cooldown_secs: 30,
            sms_fallback_after_secs: 120,
            provider_timeout_secs: 15,
            email: RateLimit {
                per_sec: 50,
                burst: 100,
            },
            push: RateLimit {
                per_sec: 500,
                burst: 1000,
            },
            sms: RateLimit {
                per_sec: 10,
                burst: 20,
            },
        }
    }
}

impl DeliveryPolicy {
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (
                (1..=100).contains(&self.max_attempts),
                "delivery.max_attempts must be between 1 and 100",
            ),
            (
                (60..=7 * 24 * 3600).contains(&self.max_age_secs),
                "delivery.max_age_secs must be between 60 and 604800",
            ),
            (
                (1..=1000).contains(&self.breaker_failures),
                "delivery.breaker_failures must be between 1 and 1000",
            ),
            (
                (1..=3600).contains(&self.breaker_cooldown_secs),
                "delivery.breaker_cooldown_secs must be between 1 and 3600",
            ),
            (
                (1..=3600).contains(&self.sms_fallback_after_secs),
                "delivery.sms_fallback_after_secs must be between 1 and 3600",
            ),
            (
                // Well inside the outbox claim's lease (60 s): a send still under way is never
                // claimed again by another dispatcher.
                (1..=45).contains(&self.provider_timeout_secs),
                "delivery.provider_timeout_secs must be between 1 and 45",
            ),
            (
                [self.email, self.push, self.sms]
                    .iter()
                    .all(|l| l.per_sec == 0 || l.burst > 0),
                "delivery.<channel>.burst must be at least 1 when per_sec is set",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).to_owned()),
            None => Ok(()),
        }
    }

    pub(super) fn limit_for(&self, channel: &str) -> Option<RateLimit> {
        match channel {
            "email" => Some(self.email),
            "push" => Some(self.push),
            "sms" => Some(self.sms),
            _ => None,
        }
    }
}

/// Exponential backoff with full jitter: `jitter` in [0, 1) picks a point in the window.
pub fn retry_delay_ms(attempts: i32, jitter: f64) -> i64 {
    let base: i64 = 1_000;
    let cap: i64 = 5 * 60 * 1_000;
    let window = base.saturating_mul(1_i64 << attempts.clamp(0, 20)).min(cap);
    let jitter = jitter.clamp(0.0, 1.0);
    (window / 2) + ((window / 2) as f64 * jitter) as i64
}

#[cfg(test)]
mod tests {
    use super::{DeliveryPolicy, retry_delay_ms};

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(retry_delay_ms(0, 0.0), 500);
        assert_eq!(retry_delay_ms(0, 1.0), 1_000);
        assert_eq!(retry_delay_ms(3, 0.0), 4_000);
        assert!(retry_delay_ms(30, 1.0) <= 5 * 60 * 1_000);
        let mut last = 0;
        for attempts in 0..12 {
            let d = retry_delay_ms(attempts, 0.5);
            assert!(d >= last);
            last = d;
        }
    }

    #[test]
    fn the_default_policy_is_valid_and_bad_ones_are_named() {
        assert_eq!(DeliveryPolicy::default().validate(), Ok(()));
        let bad = DeliveryPolicy {
            breaker_failures: 0,
            ..DeliveryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("breaker_failures"));
    }
}
