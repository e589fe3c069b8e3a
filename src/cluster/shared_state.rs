//! What the nodes share in Redis: rate-limit buckets and the reader-signature replay window,
//! so that every node sees one truth.

use super::Cluster;
use std::num::NonZeroU32;
use std::time::Duration;

impl Cluster {
    /// Whether this node may use a reader signature: `SET NX` with the window as its life.
    /// `None` while Redis is away (the node's own window decides).
    pub async fn first_use_of_signature(
        &self,
        reader: &str,
        signature: &[u8],
        window_ms: i64,
    ) -> Option<bool> {
        let key = self.key(&["sig", reader, &hex::encode(signature)]);
        let ttl = u64::try_from(2 * window_ms).unwrap_or(60_000);
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(ttl));
        if !self.is_up() {
            return None;
        }
        let mut conn = self.commands.clone();
        let set: Option<Option<String>> = self
            .guarded(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg(&options)
                    .query_async(&mut conn),
            )
            .await;
        set.map(|reply| reply.is_some())
    }

    /// Takes a token from a shared bucket (GCRA on the Redis clock): `Ok` or how long to
    /// wait. `None` while Redis is away (the node's own bucket decides).
    pub async fn take_token(
        &self,
        bucket: &str,
        key: &str,
        per_minute: NonZeroU32,
        burst: NonZeroU32,
    ) -> Option<Result<(), Duration>> {
        let key = self.key(&["rl", bucket, key]);
        let interval_us = 60_000_000 / u64::from(per_minute.get());
        let burst = u64::from(burst.get());
        if !self.is_up() {
            return None;
        }
        let mut conn = self.commands.clone();
        let wait_us: Option<u64> = self
            .guarded(
                gcra_script()
                    .key(&key)
                    .arg(interval_us)
                    .arg(burst)
                    .invoke_async(&mut conn),
            )
            .await;
        wait_us.map(|wait| match wait {
            0 => Ok(()),
            us => Err(Duration::from_micros(us)),
        })
    }
}

/// Generic cell rate algorithm: the bucket is one timestamp, the theoretical arrival time.
/// Returns 0 when a token was taken, else microseconds until one is free.
fn gcra_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - burst * interval
if allowed_at > now then return allowed_at - now end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return 0
",
        )
    })
}
