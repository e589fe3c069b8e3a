//! Several nodes on one PostgreSQL and one Redis. Redis pub/sub carries committed kitchen
//! events and frames (in-app messages, alerts) between nodes; rate-limit buckets and the
//! reader-signature replay window live in Redis so that every node sees one truth.
//!
//! Pub/sub may lose a message (a node's connection drops); nothing depends on it alone.
//! Kitchen sequences are gapless in the store: a kitchen that sees a gap, or a node whose
//! subscription was down, reads the missing events back from the store. Redis away: every
//! node goes on serving its own sockets, reads other nodes' events from the store every
//! second, keeps rate limits and replay windows locally, and `/readyz` says `degraded`.

use actix::Addr;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tiffin_actors::bus::{Bus, Frame, LocalBus, Subscriber};
use tiffin_actors::domain::KitchenEvent;
use tiffin_actors::{CatchUpAll, Observe, Registry};
use tokio::sync::mpsc;

/// Longest a Redis command may take before the node treats Redis as away.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// Between reconnection attempts, and between catch-up reads while Redis is away.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Messages waiting to go out to the other nodes; beyond this they are dropped (the other
/// nodes read those events from the store).
const OUTGOING_QUEUE: usize = 10_000;
/// A message Redis could not take for this long is dropped: the others caught up meanwhile.
const OUTGOING_MAX_AGE: Duration = Duration::from_secs(60);

/// What travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Wire {
    Event {
        node: String,
        event: Box<KitchenEvent>,
    },
    Frame {
        node: String,
        frame: Box<Frame>,
        transient: bool,
    },
}

/// This node's link to Redis.
pub struct Cluster {
    node: String,
    prefix: String,
    client: redis::Client,
    commands: ConnectionManager,
    up: AtomicBool,
    /// Redis has been away since start (the recovery is worth a warning).
    was_away: AtomicBool,
    outgoing: mpsc::Sender<(Instant, String)>,
}

impl Cluster {
    /// Connects lazily: a node starts (degraded) even while Redis is away.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<(Arc<Cluster>, ClusterTasks)> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("redis_url is not usable: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(RETRY_EVERY);
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| anyhow::anyhow!("redis: {e}"))?;
        let (outgoing, queued) = mpsc::channel(OUTGOING_QUEUE);
        let cluster = Arc::new(Cluster {
            node: uuid::Uuid::new_v4().simple().to_string(),
            prefix: prefix.to_owned(),
            client,
            commands,
            up: AtomicBool::new(false),
            was_away: AtomicBool::new(false),
            outgoing,
        });
        metrics::gauge!("cluster_redis_up").set(0.0);
        Ok((cluster, ClusterTasks { queued }))
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool, why: &str) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            metrics::gauge!("cluster_redis_up").set(if up { 1.0 } else { 0.0 });
            if !up {
                self.was_away.store(true, Ordering::Relaxed);
            }
            if up && self.was_away.load(Ordering::Relaxed) {
                tracing::warn!("redis reachable again: events travel between nodes");
            } else if up {
                tracing::info!("connected to redis");
            } else {
                tracing::error!(
                    reason = why,
                    "redis unavailable: serving this node's own sockets, reading other nodes' events from the database, rate limits per node until it is back"
                );
            }
        }
    }

    fn channel(&self) -> String {
        format!("{}:bus", self.prefix)
    }

    /// A key of the shared short-lived state.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// Awaits one command with the node's timeout; a failure marks Redis away (the
    /// subscription loop notices when it is back).
    async fn guarded<T>(&self, command: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
        match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.set_up(false, &e.to_string());
                None
            }
            Err(_) => {
                self.set_up(false, "command timed out");
                None
            }
        }
    }

    fn send(&self, wire: &Wire) {
        let Ok(json) = serde_json::to_string(wire) else {
            return;
        };
        if self.outgoing.try_send((Instant::now(), json)).is_err() {
            metrics::counter!("cluster_relay_dropped_total").increment(1);
        }
    }

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

/// The node's background work with Redis, started once the registry exists.
pub struct ClusterTasks {
    queued: mpsc::Receiver<(Instant, String)>,
}

impl ClusterTasks {
    pub fn start(self, cluster: Arc<Cluster>, registry: Addr<Registry>, local: Arc<LocalBus>) {
        actix_web::rt::spawn(publish_loop(cluster.clone(), self.queued));
        actix_web::rt::spawn(subscribe_loop(cluster.clone(), registry.clone(), local));
        actix_web::rt::spawn(catch_up_while_away(cluster, registry));
    }
}

/// Sends queued messages in order; while Redis is away the head waits (not longer than
/// `OUTGOING_MAX_AGE`).
async fn publish_loop(cluster: Arc<Cluster>, mut queued: mpsc::Receiver<(Instant, String)>) {
    let channel = cluster.channel();
    while let Some((queued_at, json)) = queued.recv().await {
        loop {
            if queued_at.elapsed() > OUTGOING_MAX_AGE {
                metrics::counter!("cluster_relay_dropped_total").increment(1);
                break;
            }
            let mut conn = cluster.commands.clone();
            let sent: Result<Result<i64, _>, _> = tokio::time::timeout(
                COMMAND_TIMEOUT,
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&json)
                    .query_async(&mut conn),
            )
            .await;
            match sent {
                Ok(Ok(_)) => {
                    metrics::counter!("cluster_relayed_total", "direction" => "out").increment(1);
                    break;
                }
                Ok(Err(e)) => cluster.set_up(false, &e.to_string()),
                Err(_) => cluster.set_up(false, "publish timed out"),
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}

/// Keeps one subscription open, reconnecting forever. Every (re)connection is followed by a
/// catch-up from the store, for what was published while this node was not listening.
async fn subscribe_loop(cluster: Arc<Cluster>, registry: Addr<Registry>, local: Arc<LocalBus>) {
    let channel = cluster.channel();
    loop {
        let connected = tokio::time::timeout(RETRY_EVERY, async {
            let mut pubsub = cluster.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                cluster.set_up(false, &e.to_string());
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
            Err(_) => {
                cluster.set_up(false, "connect timed out");
                continue;
            }
        };
        cluster.set_up(true, "subscribed");
        registry.do_send(CatchUpAll);
        let mut messages = pubsub.into_on_message();
        let mut health = tokio::time::interval(RETRY_EVERY);
        let mut failed_pings = 0;
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => receive(&cluster, &registry, &local, message.get_payload_bytes()),
                    None => {
                        cluster.set_up(false, "subscription closed");
                        break;
                    }
                },
                // A connection can die without a word (a cable, a frozen server).
                _ = health.tick() => {
                    let mut conn = cluster.commands.clone();
                    let ping: Result<Result<String, _>, _> = tokio::time::timeout(
                        COMMAND_TIMEOUT,
                        redis::cmd("PING").query_async(&mut conn),
                    )
                    .await;
                    // The first command after a Redis restart may fail while the
                    // command connection reconnects: two failures in a row mean away.
                    if matches!(ping, Ok(Ok(_))) {
                        failed_pings = 0;
                        cluster.set_up(true, "ping");
                    } else {
                        failed_pings += 1;
                        if failed_pings >= 2 {
                            cluster.set_up(false, "ping failed");
                            break;
                        }
                    }
                }
            }
        }
    }
}

fn receive(cluster: &Cluster, registry: &Addr<Registry>, local: &LocalBus, payload: &[u8]) {
    match serde_json::from_slice::<Wire>(payload) {
        Ok(Wire::Event { node, event }) if node != cluster.node => {
            metrics::counter!("cluster_relayed_total", "direction" => "in").increment(1);
            registry.do_send(Observe(*event));
        }
        Ok(Wire::Frame {
            node,
            frame,
            transient,
        }) if node != cluster.node => {
            metrics::counter!("cluster_relayed_total", "direction" => "in").increment(1);
            local.publish_frame(Frame {
                transient,
                ..*frame
            });
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "unreadable message on the node bus; ignored"),
    }
}

/// While Redis is away, other nodes' events come from the store.
async fn catch_up_while_away(cluster: Arc<Cluster>, registry: Addr<Registry>) {
    let mut every = tokio::time::interval(RETRY_EVERY);
    loop {
        every.tick().await;
        if !cluster.is_up() {
            registry.do_send(CatchUpAll);
        }
    }
}

/// The bus of a node among several: local fan-out, plus Redis to and from the others.
pub struct ClusterBus {
    local: Arc<LocalBus>,
    cluster: Arc<Cluster>,
}

impl ClusterBus {
    pub fn new(local: Arc<LocalBus>, cluster: Arc<Cluster>) -> ClusterBus {
        ClusterBus { local, cluster }
    }
}

impl Bus for ClusterBus {
    fn publish(&self, event: &KitchenEvent) {
        self.local.publish(event);
    }

    fn publish_frame(&self, frame: Frame) {
        self.cluster.send(&Wire::Frame {
            node: self.cluster.node.clone(),
            transient: frame.transient,
            frame: Box::new(frame.clone()),
        });
        self.local.publish_frame(frame);
    }

    fn announce(&self, event: &KitchenEvent) {
        self.cluster.send(&Wire::Event {
            node: self.cluster.node.clone(),
            event: Box::new(event.clone()),
        });
    }

    fn subscribe(&self, topic: &str, subscriber: Subscriber) -> u64 {
        self.local.subscribe(topic, subscriber)
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        self.local.unsubscribe(topic, id);
    }
}

/// How `/readyz` reports Redis: absent on a single node.
pub fn redis_status(cluster: Option<&Cluster>) -> Option<&'static str> {
    cluster.map(|c| if c.is_up() { "ok" } else { "unreachable" })
}
