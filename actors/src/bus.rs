//! The event bus: committed kitchen events out to subscribers (sockets, other nodes).

use crate::domain::orders::KitchenEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// One frame on a topic, serialised once and shared by every subscriber.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Frame {
    pub topic: String,
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: serde_json::Value,
    pub at: DateTime<Utc>,
    /// Outside the topic's sequence (an alert of the moment): written to whoever is
    /// subscribed now, never replayed.
    #[serde(skip)]
    pub transient: bool,
}

impl Frame {
    /// The event on its kitchen's topic, numbered by the kitchen sequence.
    pub fn from_event(event: &KitchenEvent) -> Frame {
        Frame {
            topic: kitchen_topic(&event.school_id),
            seq: event.seq,
            kind: event.kind.clone(),
            data: serde_json::to_value(event).unwrap_or(serde_json::Value::Null),
            at: event.at,
            transient: false,
        }
    }

    /// An alert on a kitchen's topic (a lost card presented at a counter): `seq` 0, not part
    /// of the sequence, not replayed.
    pub fn alert(school_id: &str, kind: &str, data: serde_json::Value) -> Frame {
        Frame {
            topic: kitchen_topic(school_id),
            seq: 0,
            kind: kind.to_owned(),
            data,
            at: Utc::now(),
            transient: true,
        }
    }

    /// The event on its order's topic, numbered by the order's version (gapless per order).
    pub fn for_order(event: &KitchenEvent) -> Frame {
        Frame {
            topic: order_topic(&event.order_id),
            seq: event.version,
            ..Frame::from_event(event)
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub fn kitchen_topic(school_id: &str) -> String {
    format!("kitchen:{school_id}")
}

pub fn order_topic(order_id: &str) -> String {
    format!("order:{order_id}")
}

pub fn inbox_topic(user_id: &str) -> String {
    format!("inbox:{user_id}")
}

/// A frame on its way to subscribers: serialised once for all of them. `view` holds one
/// derived rendering (the pickup board's), made by the first subscriber that needs it and
/// shared by the rest.
pub struct Published {
    pub frame: Frame,
    pub json: Arc<str>,
    pub view: OnceLock<Option<Arc<str>>>,
}

impl Published {
    pub fn new(frame: Frame) -> Arc<Published> {
        let json = Arc::from(frame.to_json());
        Arc::new(Published {
            frame,
            json,
            view: OnceLock::new(),
        })
    }
}

/// Where the bus hands a topic's frames: a socket's subscription writes them straight into
/// the socket's send queue.
pub trait Subscriber: Send + Sync + 'static {
    /// Takes the next frame of its topic. Called in publish order under the bus's lock, so it
    /// must not block; `false` ends the subscription (the socket is gone, or closed itself as
    /// a slow consumer).
    fn offer(&self, frame: &Arc<Published>) -> bool;
}

pub trait Bus: Send + Sync + 'static {
    /// Publishes a committed event to every subscriber of its kitchen's topic.
    fn publish(&self, event: &KitchenEvent);
    /// Publishes a frame that is not a kitchen event (a user's in-app message, an alert),
    /// here and on every other node.
    fn publish_frame(&self, frame: Frame);
    /// Tells the other nodes of an event committed on this one (their kitchens publish it to
    /// their own subscribers, in order). The in-process bus has no other nodes.
    fn announce(&self, _event: &KitchenEvent) {}
    fn subscribe(&self, topic: &str, subscriber: Arc<dyn Subscriber>) -> u64;
    fn unsubscribe(&self, topic: &str, id: u64);
}

type Topics = HashMap<String, Vec<(u64, Arc<dyn Subscriber>)>>;

/// The in-process bus: the embedded default, and each node's local fan-out.
#[derive(Default)]
pub struct LocalBus {
    topics: Mutex<Topics>,
    next_id: AtomicU64,
}

impl LocalBus {
    pub fn new() -> LocalBus {
        LocalBus::default()
    }

    fn topics(&self) -> MutexGuard<'_, Topics> {
        // A panic elsewhere while holding the lock leaves the map itself consistent.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topics().get(topic).map_or(0, Vec::len)
    }
}

impl Bus for LocalBus {
    fn publish(&self, event: &KitchenEvent) {
        let mut topics = self.topics();
        // A frame is made only for a topic someone follows.
        if topics.contains_key(&kitchen_topic(&event.school_id)) {
            deliver(&mut topics, Frame::from_event(event));
        }
        if topics.contains_key(&order_topic(&event.order_id)) {
            deliver(&mut topics, Frame::for_order(event));
        }
    }

    fn publish_frame(&self, frame: Frame) {
        deliver(&mut self.topics(), frame);
    }

    fn subscribe(&self, topic: &str, subscriber: Arc<dyn Subscriber>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.topics()
            .entry(topic.to_owned())
            .or_default()
            .push((id, subscriber));
        id
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        let mut topics = self.topics();
        if let Some(subs) = topics.get_mut(topic) {
            subs.retain(|(sid, _)| *sid != id);
            if subs.is_empty() {
                topics.remove(topic);
            }
        }
    }
}

/// Hands one frame, serialised once, to every subscriber of its topic.
fn deliver(topics: &mut Topics, frame: Frame) {
    let Some(subs) = topics.get_mut(&frame.topic) else {
        return;
    };
    let published = Published::new(frame);
    subs.retain(|(_, sub)| sub.offer(&published));
    if subs.is_empty() {
        topics.remove(&published.frame.topic);
    }
}
