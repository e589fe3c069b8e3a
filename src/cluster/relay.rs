//! Kitchen events and frames relayed between nodes over Redis pub/sub, and the bus of a node
//! among several.

use super::{COMMAND_TIMEOUT, Cluster, OUTGOING_MAX_AGE, RETRY_EVERY};
use crate::screen_sockets::ScreenSockets;
use crate::store::DieselStore;
use actix::Addr;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use tiffin_actors::bus::{Bus, Frame, LocalBus, Subscriber};
use tiffin_actors::domain::KitchenEvent;
use tiffin_actors::{CatchUpAll, Observe, Registry};
use tokio::sync::mpsc;

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
    /// A reader's key or state changed: the others read its row afresh.
    ReaderChanged { node: String, reader_id: String },
    /// A screen was revoked: the others close its sockets.
    ScreenRevoked { node: String, screen_id: String },
}

impl Cluster {
    fn send(&self, wire: &Wire) {
        let Ok(json) = serde_json::to_string(wire) else {
            return;
        };
        if self.outgoing.try_send((Instant::now(), json)).is_err() {
            metrics::counter!("cluster_relay_dropped_total").increment(1);
        }
    }
}

impl Cluster {
    /// Tells the other nodes that a reader changed (after the change is committed).
    pub fn tell_reader_changed(&self, reader_id: &str) {
        self.send(&Wire::ReaderChanged {
            node: self.node.clone(),
            reader_id: reader_id.to_owned(),
        });
    }

    /// Tells the other nodes that a screen was revoked (after the revocation is committed).
    pub fn tell_screen_revoked(&self, screen_id: &str) {
        self.send(&Wire::ScreenRevoked {
            node: self.node.clone(),
            screen_id: screen_id.to_owned(),
        });
    }
}

/// The node's background work with Redis, started once the registry exists.
pub struct ClusterTasks {
    pub(super) queued: mpsc::Receiver<(Instant, String)>,
}

/// What the messages of other nodes reach on this one.
pub struct NodeParts {
    pub registry: Addr<Registry>,
    pub local: Arc<LocalBus>,
    pub store: Arc<DieselStore>,
    pub screen_sockets: Arc<ScreenSockets>,
}

impl ClusterTasks {
    pub fn start(self, cluster: Arc<Cluster>, parts: NodeParts) {
        actix_web::rt::spawn(publish_loop(cluster.clone(), self.queued));
        let registry = parts.registry.clone();
        let node = Node {
            cluster: cluster.clone(),
            parts,
        };
        actix_web::rt::spawn(subscribe_loop(node));
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

/// This node's link and what a message from another node reaches.
struct Node {
    cluster: Arc<Cluster>,
    parts: NodeParts,
}

/// Keeps one subscription open, reconnecting forever. Every (re)connection is followed by a
/// catch-up from the store, for what was published while this node was not listening.
async fn subscribe_loop(node: Node) {
    let Node { cluster, parts } = &node;
    let registry = &parts.registry;
    let channel = cluster.channel();
    loop {
        // Not listening: other nodes' reader changes would go unheard.
        parts.store.hear_reader_changes(false);
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
        parts.store.hear_reader_changes(true);
        registry.do_send(CatchUpAll);
        let mut messages = pubsub.into_on_message();
        let mut health = tokio::time::interval(RETRY_EVERY);
        let mut failed_pings = 0;
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => receive(&node, message.get_payload_bytes()),
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

fn receive(node: &Node, payload: &[u8]) {
    let Node { cluster, parts } = node;
    let NodeParts {
        registry,
        local,
        store,
        screen_sockets,
    } = parts;
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
        Ok(Wire::ReaderChanged { node, reader_id }) if node != cluster.node => {
            metrics::counter!("cluster_relayed_total", "direction" => "in").increment(1);
            store.reader_changed(&reader_id);
        }
        Ok(Wire::ScreenRevoked { node, screen_id }) if node != cluster.node => {
            metrics::counter!("cluster_relayed_total", "direction" => "in").increment(1);
            let closed = screen_sockets.revoke(&screen_id);
            tracing::info!(screen = %screen_id, sockets = closed, "screen revoked on another node");
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

    fn subscribe(&self, topic: &str, subscriber: Arc<dyn Subscriber>) -> u64 {
        self.local.subscribe(topic, subscriber)
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        self.local.unsubscribe(topic, id);
    }
}
