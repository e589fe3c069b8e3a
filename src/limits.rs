//! Rate limits: token buckets per client IP, per user, per reader, and stricter ones for
//! sign-in and one-time codes. A refusal is `429 rate_limited` with `Retry-After`. With
//! several nodes the buckets live in Redis (one truth for a client hitting two nodes); while
//! Redis is away, and on a single node, each node keeps its own. Buckets of keys not seen for
//! a while are dropped, so memory stays bounded.

use crate::cluster::Cluster;
use crate::error::{ApiError, ErrorCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::sync::Arc;

/// A token bucket: `per_minute` sustained, bursts of `burst`; `per_minute = 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub per_minute: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Every API request, by client address.
    pub per_ip: Limit,
    /// Every request with an access token, by user.
    pub per_user: Limit,
    /// Every signed reader request, by reader.
    pub per_reader: Limit,
    /// Sign-in attempts, by login name.
    pub sign_in: Limit,
    /// One-time codes: issued per student, entered per member of staff.
    pub codes: Limit,
    /// Screen pairing codes: asked for per client address, entered per member of staff.
    pub pairing: Limit,
    /// Take the client address from `X-Forwarded-For` (behind a load balancer you trust).
    pub trust_forwarded_for: bool,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        let limit = |per_minute, burst| Limit { per_minute, burst };
        LimitsConfig {
            per_ip: limit(20_000, 2_000),
            per_user: limit(3_000, 1_000),
            per_reader: limit(1_200, 120),
            sign_in: limit(10, 10),
            codes: limit(10, 5),
            pairing: limit(30, 10),
            trust_forwarded_for: false,
        }
    }
}

/// Which bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Ip,
    User,
    Reader,
    SignIn,
    Codes,
    Pairing,
}

impl Bucket {
    fn as_str(self) -> &'static str {
        match self {
            Bucket::Ip => "ip",
            Bucket::User => "user",
            Bucket::Reader => "reader",
            Bucket::SignIn => "sign_in",
            Bucket::Codes => "codes",
            Bucket::Pairing => "pairing",
        }
    }
}

pub struct Limits {
    shared: Option<Arc<Cluster>>,
    ip: Option<TokenBucket>,
    user: Option<TokenBucket>,
    reader: Option<TokenBucket>,
    sign_in: Option<TokenBucket>,
    codes: Option<TokenBucket>,
    pairing: Option<TokenBucket>,
    pub trust_forwarded_for: bool,
}

/// One configured limit: its rate, and this node's buckets for when Redis is not there.
struct TokenBucket {
    per_minute: NonZeroU32,
    burst: NonZeroU32,
    local: DefaultKeyedRateLimiter<String>,
}

fn token_bucket(limit: Limit) -> Option<TokenBucket> {
    let per_minute = NonZeroU32::new(limit.per_minute)?;
    let burst = NonZeroU32::new(limit.burst).unwrap_or(per_minute);
    Some(TokenBucket {
        per_minute,
        burst,
        local: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
    })
}

impl Limits {
    pub fn new(config: &LimitsConfig, shared: Option<Arc<Cluster>>) -> Limits {
        Limits {
            shared,
            ip: token_bucket(config.per_ip),
            user: token_bucket(config.per_user),
            reader: token_bucket(config.per_reader),
            sign_in: token_bucket(config.sign_in),
            codes: token_bucket(config.codes),
            pairing: token_bucket(config.pairing),
            trust_forwarded_for: config.trust_forwarded_for,
        }
    }

    /// The client's address as the per-address limits read it: the forwarded one behind a
    /// trusted proxy, else the peer's.
    pub fn client_address(&self, req: &actix_web::HttpRequest) -> Option<String> {
        if self.trust_forwarded_for {
            req.connection_info()
                .realip_remote_addr()
                .map(str::to_owned)
        } else {
            req.peer_addr().map(|a| a.ip().to_string())
        }
    }

    /// Whether `bucket` is limited at all (a limit of 0 a minute turns it off).
    pub fn is_on(&self, bucket: Bucket) -> bool {
        self.bucket(bucket).is_some()
    }

    fn bucket(&self, bucket: Bucket) -> Option<&TokenBucket> {
        match bucket {
            Bucket::Ip => self.ip.as_ref(),
            Bucket::User => self.user.as_ref(),
            Bucket::Reader => self.reader.as_ref(),
            Bucket::SignIn => self.sign_in.as_ref(),
            Bucket::Codes => self.codes.as_ref(),
            Bucket::Pairing => self.pairing.as_ref(),
        }
    }

    /// Takes a token for `key`, or says how long to wait.
    pub async fn check(&self, bucket: Bucket, key: &str) -> Result<(), ApiError> {
        let Some(limit) = self.bucket(bucket) else {
            return Ok(());
        };
        let shared = match &self.shared {
            Some(cluster) => {
                cluster
                    .take_token(bucket.as_str(), key, limit.per_minute, limit.burst)
                    .await
            }
            None => None,
        };
        let taken = shared.unwrap_or_else(|| {
            limit
                .local
                .check_key(&key.to_owned())
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
        });
        taken.map_err(|wait| {
            metrics::counter!("rate_limited_total", "limit" => bucket.as_str()).increment(1);
            ApiError::rate_limited(wait)
        })
    }

    /// Forgets buckets that are full again (keys not seen lately).
    pub fn shrink(&self) {
        for limit in [
            &self.ip,
            &self.user,
            &self.reader,
            &self.sign_in,
            &self.codes,
            &self.pairing,
        ]
        .into_iter()
        .flatten()
        {
            limit.local.retain_recent();
            limit.local.shrink_to_fit();
        }
    }
}

impl ApiError {
    pub fn rate_limited(wait: std::time::Duration) -> ApiError {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut e = ApiError::new(
            ErrorCode::RateLimited,
            format!("too many requests: try again in {secs} s"),
        );
        e.retry_after = Some(secs.max(1));
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_bucket_refuses_past_its_burst_and_keys_are_separate() {
        let limits = Limits::new(
            &LimitsConfig {
                sign_in: Limit {
                    per_minute: 1,
                    burst: 2,
                },
                per_ip: Limit {
                    per_minute: 0,
                    burst: 0,
                },
                ..LimitsConfig::default()
            },
            None,
        );
        assert!(limits.check(Bucket::SignIn, "a").await.is_ok());
        assert!(limits.check(Bucket::SignIn, "a").await.is_ok());
        let refused = limits.check(Bucket::SignIn, "a").await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert!(refused.retry_after.is_some_and(|s| (1..=60).contains(&s)));
        assert!(
            limits.check(Bucket::SignIn, "b").await.is_ok(),
            "another key"
        );
        for _ in 0..1000 {
            assert!(
                limits.check(Bucket::Ip, "x").await.is_ok(),
                "0 per minute is off"
            );
        }
        limits.shrink();
    }
}
