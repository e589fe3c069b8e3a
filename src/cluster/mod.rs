//! Several nodes on one PostgreSQL and one Redis: this node's link to Redis, which relays
//! events and frames between nodes and holds the state they share (rate limits, signatures).

mod relay;
mod shared_state;

pub use relay::{ClusterBus, ClusterTasks, NodeParts};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
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

/// This node's link to Redis.
///
/// Pub/sub may lose a message (a node's connection drops); nothing depends on it alone.
/// Kitchen sequences are gapless in the store: a kitchen that sees a gap, or a node whose
/// subscription was down, reads the missing events back from the store. Redis away: every
/// node goes on serving its own sockets, reads other nodes' events from the store every
/// second, keeps rate limits and replay windows locally, and `/readyz` says `degraded`.
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
}

/// How `/readyz` reports Redis: absent on a single node.
pub fn redis_status(cluster: Option<&Cluster>) -> Option<&'static str> {
    cluster.map(|c| if c.is_up() { "ok" } else { "unreachable" })
}
