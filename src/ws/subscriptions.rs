//! A socket's subscriptions: subscribing, going live after the catch-up, and delivering bus
//! frames in sequence (a gap is filled from the store, never skipped).

use super::Socket;
use super::catch_up::{CaughtUp, catch_up, replay};
use super::outbound::Out;
use super::protocol::{Source, authorise, render};
use crate::error::{ApiError, ErrorCode};
use actix::prelude::*;
use actix_ws::CloseCode;
use tiffin_actors::bus::{Deliver, Subscriber};

pub(super) enum Phase {
    /// Catching up: live frames wait here until the snapshot or replay is out.
    CatchingUp(Vec<Deliver>),
    Live {
        last: i64,
    },
}

pub(super) struct TopicState {
    source: Source,
    /// Where its frames come from on the bus; kept so delivery need not rebuild it per frame.
    bus_topic: String,
    bus_id: Option<u64>,
    phase: Phase,
}

impl Socket {
    pub(super) fn subscribe(&mut self, topic: String, since: Option<i64>, ctx: &mut Context<Self>) {
        let source = match authorise(&self.who, &topic) {
            Ok(source) => source,
            Err(e) => return self.error(ctx, e.code, &e.message),
        };
        if self.topics.contains_key(&topic) {
            return self.error(
                ctx,
                ErrorCode::Duplicate,
                "already subscribed to this topic",
            );
        }
        self.topics.insert(
            topic.clone(),
            TopicState {
                source: source.clone(),
                bus_topic: source.bus_topic(),
                bus_id: None,
                phase: Phase::CatchingUp(Vec::new()),
            },
        );
        let me = ctx.address();
        let subscriber = Subscriber {
            frames: me.clone().recipient(),
            overflow: me.recipient(),
        };
        let state = self.state.clone();
        let bus_topic = source.bus_topic();
        ctx.spawn(
            catch_up(
                state,
                self.who.clone(),
                topic.clone(),
                source,
                since,
                subscriber,
            )
            .into_actor(self)
            .map(move |result, act, ctx| act.caught_up(topic, bus_topic, result, ctx)),
        );
    }

    fn caught_up(
        &mut self,
        topic: String,
        bus_topic: String,
        result: Result<CaughtUp, ApiError>,
        ctx: &mut Context<Self>,
    ) {
        let caught = match result {
            Ok(caught) => caught,
            Err(e) => {
                self.topics.remove(&topic);
                return self.error(ctx, e.code, &e.message);
            }
        };
        let Some(entry) = self.topics.get_mut(&topic) else {
            // Unsubscribed while catching up.
            self.state.bus.unsubscribe(&bus_topic, caught.bus_id);
            return;
        };
        entry.bus_id = Some(caught.bus_id);
        metrics::gauge!("ws_subscriptions", "kind" => entry.source.kind()).increment(1.0);
        self.text(
            serde_json::json!({"type": "subscribed", "topic": topic, "seq": caught.last})
                .to_string(),
            ctx,
        );
        self.go_live(topic, caught, ctx);
    }

    /// Sends the catch-up frames, then whatever arrived live meanwhile, in order.
    fn go_live(&mut self, topic: String, caught: CaughtUp, ctx: &mut Context<Self>) {
        let Some(entry) = self.topics.get(&topic) else {
            return;
        };
        let frames: Vec<String> = caught
            .frames
            .iter()
            .filter_map(|f| render(&topic, &entry.source, f))
            .collect();
        if !frames.is_empty() {
            self.send(Out::Batch(frames), ctx);
        }
        let Some(entry) = self.topics.get_mut(&topic) else {
            return;
        };
        let waiting = match std::mem::replace(&mut entry.phase, Phase::Live { last: caught.last }) {
            Phase::CatchingUp(waiting) => waiting,
            Phase::Live { .. } => Vec::new(),
        };
        for frame in waiting {
            self.deliver_to(topic.clone(), frame, ctx);
        }
    }

    /// Leaves the bus; a subscription still catching up is left when its catch-up returns.
    pub(super) fn end_subscription(&self, entry: TopicState) {
        if let Some(id) = entry.bus_id {
            self.state.bus.unsubscribe(&entry.bus_topic, id);
            metrics::gauge!("ws_subscriptions", "kind" => entry.source.kind()).decrement(1.0);
        }
    }

    /// Hands a bus frame to every subscription it feeds (a kitchen and its board share one).
    pub(super) fn deliver(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        let topics: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, t)| t.bus_topic == msg.frame.topic)
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in topics {
            self.deliver_to(topic, msg.clone(), ctx);
        }
    }

    /// Writes a live frame in sequence: duplicates are dropped, a gap is filled from the store.
    fn deliver_to(&mut self, topic: String, msg: Deliver, ctx: &mut Context<Self>) {
        let Some(entry) = self.topics.get_mut(&topic) else {
            return;
        };
        if msg.frame.transient {
            // Not in the sequence: straight out, to kitchen screens (alerts) and inboxes (a
            // message read or deleted elsewhere), never to boards.
            if matches!(entry.source, Source::Kitchen(_) | Source::Inbox(_)) {
                self.text(msg.json.to_string(), ctx);
                metrics::counter!("ws_frames_sent_total").increment(1);
            }
            return;
        }
        match &mut entry.phase {
            Phase::CatchingUp(waiting) => waiting.push(msg),
            Phase::Live { last } if msg.frame.seq <= *last => {}
            Phase::Live { last } if msg.frame.seq == *last + 1 => {
                *last = msg.frame.seq;
                let text = match entry.source {
                    // Already serialised once for every subscriber.
                    Source::Kitchen(_) | Source::Order(_) | Source::Inbox(_) => {
                        Some(msg.json.to_string())
                    }
                    Source::Board(_) => render(&topic, &entry.source, &msg.frame),
                };
                if let Some(text) = text {
                    self.text(text, ctx);
                    metrics::counter!("ws_frames_sent_total").increment(1);
                }
            }
            Phase::Live { last } => {
                let (after, upto) = (*last, msg.frame.seq - 1);
                let source = entry.source.clone();
                entry.phase = Phase::CatchingUp(vec![msg]);
                let state = self.state.clone();
                ctx.spawn(
                    async move { replay(&state, &source, after, upto).await }
                        .into_actor(self)
                        .map(move |result, act, ctx| match result {
                            Ok(frames) => {
                                let bus_id = act.topics.get(&topic).and_then(|t| t.bus_id).unwrap_or_default();
                                act.go_live(topic, CaughtUp { bus_id, frames, last: upto }, ctx);
                            }
                            Err(e) => {
                                // Cannot fill the gap: tell the client to resume rather than skip.
                                tracing::warn!(error = %e.message, "gap fill failed; closing the socket");
                                act.close(CloseCode::Again, "missed frames: resume with since", ctx);
                            }
                        }),
                );
            }
        }
    }
}
