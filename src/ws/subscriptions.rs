//! A socket's subscriptions: subscribing, catching up, then handing the topic's live path to
//! its feed (`feed.rs`); a gap the feed finds is filled here from the store, never skipped.

use super::Socket;
use super::catch_up::{CaughtUp, catch_up, replay};
use super::feed::{Feed, FillGap};
use super::protocol::{Source, authorise, render};
use crate::error::{ApiError, ErrorCode};
use actix::prelude::*;
use actix_ws::CloseCode;
use std::sync::Arc;
use tiffin_actors::bus::Subscriber;

pub(super) struct TopicState {
    source: Source,
    /// Where its frames come from on the bus, to leave it.
    bus_topic: String,
    bus_id: Option<u64>,
    feed: Arc<Feed>,
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
        let feed = Feed::new(
            topic.clone(),
            &source,
            self.out.clone(),
            ctx.address().downgrade(),
        );
        let bus_topic = source.bus_topic();
        self.topics.insert(
            topic.clone(),
            TopicState {
                source: source.clone(),
                bus_topic: bus_topic.clone(),
                bus_id: None,
                feed: feed.clone(),
            },
        );
        let subscriber: Arc<dyn Subscriber> = feed;
        let state = self.state.clone();
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
                if let Some(entry) = self.topics.remove(&topic) {
                    entry.feed.end();
                }
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
        self.go_live(&topic, caught, ctx);
    }

    /// Sends the catch-up frames, then whatever arrived live meanwhile, in order; from then
    /// on the feed writes the topic's frames itself.
    fn go_live(&mut self, topic: &str, caught: CaughtUp, ctx: &mut Context<Self>) {
        let Some(entry) = self.topics.get(topic) else {
            return;
        };
        let frames: Vec<String> = caught
            .frames
            .iter()
            .filter_map(|f| render(topic, &entry.source, f))
            .collect();
        if !entry.feed.go_live(frames, caught.last) {
            // The queue is closed (a slow consumer) or the connection gone.
            ctx.stop();
        }
    }

    /// Leaves the bus; a subscription still catching up is left when its catch-up returns.
    pub(super) fn end_subscription(&self, entry: TopicState) {
        entry.feed.end();
        if let Some(id) = entry.bus_id {
            self.state.bus.unsubscribe(&entry.bus_topic, id);
            metrics::gauge!("ws_subscriptions", "kind" => entry.source.kind()).decrement(1.0);
        }
    }
}

impl Handler<FillGap> for Socket {
    type Result = ();

    /// A frame arrived past a gap: the missed frames from the store, then live again.
    fn handle(&mut self, gap: FillGap, ctx: &mut Context<Self>) {
        let Some(entry) = self.topics.get(&gap.topic) else {
            return;
        };
        let (source, state) = (entry.source.clone(), self.state.clone());
        let FillGap { topic, after, upto } = gap;
        ctx.spawn(
            async move { replay(&state, &source, after, upto).await }
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(frames) => {
                        let bus_id = act
                            .topics
                            .get(&topic)
                            .and_then(|t| t.bus_id)
                            .unwrap_or_default();
                        let caught = CaughtUp {
                            bus_id,
                            frames,
                            last: upto,
                        };
                        act.go_live(&topic, caught, ctx);
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
