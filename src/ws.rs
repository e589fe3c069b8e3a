//! The WebSocket edge: one thin actor per connection. It authenticates once, subscribes to
//! topics the caller may see, catches up (snapshot or replay from the event log), then writes
//! the bus's frames out in sequence order. A gap is never silent: a frame that skips ahead
//! makes the socket read the missing ones back from the store first.

use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store;
use crate::store::event_from_row;
use actix::prelude::*;
use actix_web::{HttpRequest, HttpResponse, get, web};
use actix_ws::{CloseCode, CloseReason, Message, ProtocolError};
use chrono::Utc;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tiffin_actors::bus::{Deliver, Frame, Overflowed, Subscriber};
use tiffin_actors::domain::KitchenEvent;
use tiffin_actors::ports::Store;
use tiffin_actors::{CatchUp, Catchup, KitchenFor, SnapshotReason, Subscribe, TakeSnapshot};

const HEARTBEAT: Duration = Duration::from_secs(10);
/// Frames a socket actor may have waiting in its mailbox before it counts as a slow consumer.
const MAILBOX: usize = 1024;
const MAX_FRAME: usize = 16 * 1024;
/// How long a closing socket waits for room to write its close frame before it gives up.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Subscribe { topic: String, since: Option<i64> },
    Unsubscribe { topic: String },
    Ping,
}

enum Phase {
    /// Catching up: live frames wait here until the snapshot or replay is out.
    CatchingUp(Vec<Deliver>),
    Live {
        last: i64,
    },
}

/// Where a topic's frames come from, and so how to replay them.
#[derive(Clone)]
enum Source {
    /// A school's kitchen: every event, numbered by the kitchen sequence.
    Kitchen(String),
    /// One order: its events, numbered by the order's version.
    Order(String),
    /// A school's pickup board: the kitchen's events reduced to what a public screen may
    /// show (pickup code, first name and initial, counter), numbered by the kitchen sequence.
    Board(String),
    /// A user's in-app messages, numbered per user.
    Inbox(String),
}

impl Source {
    /// The bus topic the frames come from.
    fn bus_topic(&self) -> String {
        match self {
            Source::Kitchen(school_id) | Source::Board(school_id) => {
                tiffin_actors::bus::kitchen_topic(school_id)
            }
            Source::Order(order_id) => tiffin_actors::bus::order_topic(order_id),
            Source::Inbox(user_id) => tiffin_actors::bus::inbox_topic(user_id),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Source::Kitchen(_) => "kitchen",
            Source::Order(_) => "order",
            Source::Board(_) => "board",
            Source::Inbox(_) => "inbox",
        }
    }
}

/// "Ada Lovelace" -> "Ada L.": enough to call a name at a counter, no more.
fn first_name_and_initial(name: &str) -> String {
    let mut parts = name.split_whitespace();
    let first = parts.next().unwrap_or_default();
    match parts.last().and_then(|last| last.chars().next()) {
        Some(initial) => format!("{first} {initial}."),
        None => first.to_owned(),
    }
}

fn board_entry(order: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "pickup_code": order["pickup_code"],
        "name": first_name_and_initial(order["student_name"].as_str().unwrap_or_default()),
        "counter": order["counter"]["number"],
    })
}

/// A kitchen frame as the pickup board sees it, or `None` if the board does not change:
/// `board.ready` when a meal is waiting (or moved counters), `board.gone` when it left.
fn board_frame(topic: &str, frame: &Frame) -> Option<Frame> {
    let ready = |o: &serde_json::Value| o["state"] == "ready";
    let (kind, data) = if frame.kind == "snapshot" {
        let waiting: Vec<_> = frame.data["orders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| ready(o))
            .map(board_entry)
            .collect();
        let reason = frame.data["reason"].clone();
        (
            "snapshot",
            serde_json::json!({"reason": reason, "ready": waiting}),
        )
    } else {
        let order = &frame.data["order"];
        let was_ready = frame.data["from"] == "ready";
        match frame.kind.as_str() {
            "order.ready" | "order.counter_changed" => ("board.ready", board_entry(order)),
            _ if was_ready && !ready(order) => ("board.gone", board_entry(order)),
            _ => return None,
        }
    };
    Some(Frame {
        topic: topic.to_owned(),
        seq: frame.seq,
        kind: kind.to_owned(),
        data,
        at: frame.at,
        transient: false,
    })
}

struct TopicState {
    source: Source,
    /// Where its frames come from on the bus; kept so delivery need not rebuild it per frame.
    bus_topic: String,
    bus_id: Option<u64>,
    phase: Phase,
}

pub struct Socket {
    who: Principal,
    state: web::Data<AppState>,
    topics: HashMap<String, TopicState>,
    last_heard: Instant,
    out: Outbound,
}

/// What the socket actor hands its writer.
enum Out {
    Text(String),
    /// A catch-up (snapshot or replay): one slot in the queue however long, so a resume
    /// after a long absence is not mistaken for a slow consumer.
    Batch(Vec<String>),
    Ping,
    Pong(actix_web::web::Bytes),
}

/// The write side: a bounded queue to a writer task, so a client that stops reading fills
/// the queue instead of the hub's memory, and never stalls the actor or the kitchen.
struct Outbound {
    queue: tokio::sync::mpsc::Sender<Out>,
    close: Option<tokio::sync::oneshot::Sender<CloseReason>>,
}

/// Writes queued frames until told to close (the close frame jumps the queue) or the actor
/// goes away.
async fn write_out(
    mut session: actix_ws::Session,
    mut queue: tokio::sync::mpsc::Receiver<Out>,
    mut close: tokio::sync::oneshot::Receiver<CloseReason>,
) {
    enum Step {
        Close(Option<CloseReason>),
        Next(Option<Out>),
    }
    loop {
        let step = tokio::select! {
            biased;
            reason = &mut close => Step::Close(reason.ok()),
            next = queue.recv() => Step::Next(next),
        };
        let out = match step {
            Step::Next(Some(out)) => out,
            Step::Next(None) | Step::Close(None) => break finish(session, None).await,
            Step::Close(reason) => break finish(session, reason).await,
        };
        let step = {
            let sent = async {
                match out {
                    Out::Text(text) => session.text(text).await,
                    Out::Batch(texts) => {
                        for text in texts {
                            session.text(text).await?;
                        }
                        Ok(())
                    }
                    Out::Ping => session.ping(b"").await,
                    Out::Pong(bytes) => session.pong(&bytes).await,
                }
            };
            tokio::select! {
                biased;
                reason = &mut close => Some(reason.ok()),
                sent = sent => sent.is_err().then_some(None),
            }
        };
        if let Some(reason) = step {
            break finish(session, reason).await;
        }
    }
}

async fn finish(session: actix_ws::Session, reason: Option<CloseReason>) {
    // A client that never reads never makes room: drop the connection after the grace.
    let _ = tokio::time::timeout(CLOSE_GRACE, session.close(reason)).await;
}

/// What a subscription sends before its live frames.
struct CaughtUp {
    bus_id: u64,
    frames: Vec<Frame>,
    last: i64,
}

async fn replay(
    state: &AppState,
    source: &Source,
    after: i64,
    upto: i64,
) -> Result<Vec<Frame>, ApiError> {
    let (events, frame): (Vec<KitchenEvent>, fn(&KitchenEvent) -> Frame) = match source {
        Source::Kitchen(school_id) | Source::Board(school_id) => (
            state
                .store
                .events_since(school_id, after, upto - after)
                .await?,
            Frame::from_event,
        ),
        Source::Inbox(user_id) => {
            let rows =
                crate::store::inbox::messages_between(&state.db, user_id, after, upto).await?;
            return complete(
                rows.iter()
                    .map(crate::store::inbox::InboxRow::frame)
                    .collect(),
                after,
                upto,
            );
        }
        Source::Order(order_id) => {
            let mut events = Vec::new();
            for row in store::orders::order_history(&state.db, order_id).await? {
                if row.version > after && row.version <= upto {
                    events.push(event_from_row(row)?);
                }
            }
            (events, Frame::for_order)
        }
    };
    complete(events.iter().map(frame).collect(), after, upto)
}

/// Exactly the frames `after + 1 ..= upto`, or an error: a replay never skips.
fn complete(frames: Vec<Frame>, after: i64, upto: i64) -> Result<Vec<Frame>, ApiError> {
    let complete = frames.len() as i64 == upto - after
        && frames.iter().zip(after + 1..).all(|(f, seq)| f.seq == seq);
    if !complete {
        return Err(ApiError::internal(
            "event log does not hold the requested range",
        ));
    }
    Ok(frames)
}

fn snapshot_frame(
    topic: &str,
    seq: i64,
    orders: &[tiffin_actors::domain::OrderSummary],
    reason: SnapshotReason,
) -> Frame {
    Frame {
        topic: topic.to_owned(),
        seq,
        kind: "snapshot".into(),
        data: serde_json::json!({"reason": reason.as_str(), "orders": orders}),
        at: Utc::now(),
        transient: false,
    }
}

async fn catch_up(
    state: web::Data<AppState>,
    who: Principal,
    topic: String,
    source: Source,
    since: Option<i64>,
    subscriber: Subscriber,
) -> Result<CaughtUp, ApiError> {
    let school_id = match &source {
        Source::Kitchen(school_id) | Source::Board(school_id) => school_id.clone(),
        Source::Order(order_id) => {
            return catch_up_order(&state, &who, &topic, order_id, since, subscriber).await;
        }
        Source::Inbox(user_id) => {
            return catch_up_inbox(&state, &topic, user_id, since, subscriber).await;
        }
    };
    if store::schools::school(&state.db, &school_id)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("school"));
    }
    let kitchen = state.registry.send(KitchenFor(school_id.clone())).await?;
    let (bus_id, catchup) = kitchen.send(Subscribe { subscriber, since }).await??;
    let result = finish_catch_up(&state, &topic, &school_id, &kitchen, bus_id, catchup).await;
    if result.is_err() {
        state.bus.unsubscribe(&source.bus_topic(), bus_id);
    }
    result
}

async fn finish_catch_up(
    state: &AppState,
    topic: &str,
    school_id: &str,
    kitchen: &Addr<tiffin_actors::Kitchen>,
    bus_id: u64,
    catchup: Catchup,
) -> Result<CaughtUp, ApiError> {
    let catchup = match catchup {
        Catchup::Replay { after, upto } => {
            match replay(state, &Source::Kitchen(school_id.to_owned()), after, upto).await {
                Ok(frames) => {
                    metrics::counter!("ws_resumes_served_total").increment(1);
                    return Ok(CaughtUp {
                        bus_id,
                        frames,
                        last: upto,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "replay failed; sending a snapshot");
                    kitchen
                        .send(TakeSnapshot(SnapshotReason::ReplayFailed))
                        .await??
                }
            }
        }
        other => other,
    };
    match catchup {
        Catchup::Live { seq } => Ok(CaughtUp {
            bus_id,
            frames: Vec::new(),
            last: seq,
        }),
        Catchup::Snapshot {
            seq,
            orders,
            reason,
        } => {
            if reason != SnapshotReason::Fresh {
                metrics::counter!("ws_resets_total").increment(1);
            }
            Ok(CaughtUp {
                bus_id,
                frames: vec![snapshot_frame(topic, seq, &orders, reason)],
                last: seq,
            })
        }
        Catchup::Replay { .. } => Err(ApiError::internal("unexpected replay")),
    }
}

/// A user's inbox: subscribe first, then read, so nothing falls between them. A fresh
/// subscription's snapshot holds the latest messages, newest first.
async fn catch_up_inbox(
    state: &AppState,
    topic: &str,
    user_id: &str,
    since: Option<i64>,
    subscriber: Subscriber,
) -> Result<CaughtUp, ApiError> {
    const SNAPSHOT_MESSAGES: i64 = 50;
    let bus_id = state.bus.subscribe(topic, subscriber);
    let result = async {
        let last = crate::store::inbox::latest_seq(&state.db, user_id)
            .await?
            .ok_or_else(|| ApiError::not_found("user"))?;
        let source = Source::Inbox(user_id.to_owned());
        resume_or_snapshot(state, topic, &source, since, last, bus_id, async || {
            let recent = crate::store::inbox::messages_between(
                &state.db,
                user_id,
                last - SNAPSHOT_MESSAGES,
                last,
            )
            .await?;
            let messages: Vec<serde_json::Value> = recent
                .iter()
                .rev()
                .filter(|m| m.deleted_at.is_none())
                .map(|m| m.frame().data)
                .collect();
            Ok(serde_json::json!({"messages": messages}))
        })
        .await
    }
    .await;
    if result.is_err() {
        state.bus.unsubscribe(topic, bus_id);
    }
    result
}

/// An order topic: its student, their guardians and the school's staff may follow it. The
/// bus subscription comes first, then the read, so nothing falls between them.
async fn catch_up_order(
    state: &AppState,
    who: &Principal,
    topic: &str,
    order_id: &str,
    since: Option<i64>,
    subscriber: Subscriber,
) -> Result<CaughtUp, ApiError> {
    let (school_id, student_id) = state
        .store
        .order_owner(order_id)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    crate::api::orders::issuer_for(state, who, &school_id, &student_id).await?;
    // The order's frames come from its kitchen's actor on this node, which must therefore
    // run here, loaded, even when the order is driven from other nodes. (On a single node
    // every commit goes through that actor: it runs whenever there is news.)
    if state.cluster.is_some() {
        let kitchen = state.registry.send(KitchenFor(school_id)).await?;
        kitchen.send(CatchUp).await?;
    }
    let bus_id = state.bus.subscribe(topic, subscriber);
    let result = async {
        let order = state
            .store
            .load_order(order_id)
            .await?
            .ok_or_else(|| ApiError::not_found("order"))?;
        let source = Source::Order(order_id.to_owned());
        resume_or_snapshot(
            state,
            topic,
            &source,
            since,
            order.version,
            bus_id,
            async || Ok(serde_json::json!({"order": order})),
        )
        .await
    }
    .await;
    if result.is_err() {
        state.bus.unsubscribe(topic, bus_id);
    }
    result
}

/// Brings a topic numbered without gaps (an order, an inbox) from `since` up to `last`:
/// nothing when current, exactly the missed frames when the log has them, else a snapshot
/// of `snapshot()` with the reason.
async fn resume_or_snapshot(
    state: &AppState,
    topic: &str,
    source: &Source,
    since: Option<i64>,
    last: i64,
    bus_id: u64,
    snapshot: impl AsyncFnOnce() -> Result<serde_json::Value, ApiError>,
) -> Result<CaughtUp, ApiError> {
    let reason = match since {
        Some(since) if since == last => {
            return Ok(CaughtUp {
                bus_id,
                frames: Vec::new(),
                last,
            });
        }
        Some(since) if (0..last).contains(&since) => {
            match replay(state, source, since, last).await {
                Ok(frames) => {
                    metrics::counter!("ws_resumes_served_total").increment(1);
                    return Ok(CaughtUp {
                        bus_id,
                        frames,
                        last,
                    });
                }
                Err(_) => SnapshotReason::ReplayFailed,
            }
        }
        Some(_) => SnapshotReason::Ahead,
        None => SnapshotReason::Fresh,
    };
    if reason != SnapshotReason::Fresh {
        metrics::counter!("ws_resets_total").increment(1);
    }
    let mut data = snapshot().await?;
    data["reason"] = reason.as_str().into();
    Ok(CaughtUp {
        bus_id,
        frames: vec![Frame {
            topic: topic.to_owned(),
            seq: last,
            kind: "snapshot".into(),
            data,
            at: Utc::now(),
            transient: false,
        }],
        last,
    })
}

impl Socket {
    /// Queues a frame; a full queue is a slow consumer, closed so it resumes with `since`.
    fn send(&mut self, out: Out, ctx: &mut Context<Self>) {
        match self.out.queue.try_send(out) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(user = %self.who.user_id, "slow consumer disconnected");
                metrics::counter!("ws_slow_consumers_dropped_total").increment(1);
                self.close(CloseCode::Again, "slow consumer: resume with since", ctx);
            }
            // The writer is gone: the connection is over.
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => ctx.stop(),
        }
    }

    fn text(&mut self, text: impl Into<String>, ctx: &mut Context<Self>) {
        self.send(Out::Text(text.into()), ctx);
    }

    /// Closes with a code and reason, ahead of anything still queued, and stops.
    fn close(&mut self, code: CloseCode, description: &str, ctx: &mut Context<Self>) {
        if let Some(close) = self.out.close.take() {
            let _ = close.send(CloseReason {
                code,
                description: Some(description.to_owned()),
            });
        }
        ctx.stop();
    }

    fn error(&mut self, ctx: &mut Context<Self>, code: ErrorCode, message: &str) {
        self.text(
            serde_json::json!({"type": "error", "code": code, "message": message}).to_string(),
            ctx,
        );
    }

    /// Who may subscribe to what: a kitchen topic needs kitchen staff of that school; a
    /// board, anyone of that school; an order topic is checked against the order once loaded.
    fn authorise(&self, topic: &str) -> Result<Source, ApiError> {
        let id = |v: &str| uuid::Uuid::parse_str(v).is_ok();
        match topic.split_once(':') {
            Some(("kitchen", school_id)) if id(school_id) => {
                self.who.require_kitchen(school_id)?;
                Ok(Source::Kitchen(school_id.to_owned()))
            }
            Some(("order", order_id)) if id(order_id) => Ok(Source::Order(order_id.to_owned())),
            Some(("inbox", user_id)) if id(user_id) => {
                if user_id != self.who.user_id {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        "an inbox is its owner's alone",
                    ));
                }
                Ok(Source::Inbox(user_id.to_owned()))
            }
            Some(("board", school_id)) if id(school_id) => {
                self.who.require_school(school_id)?;
                Ok(Source::Board(school_id.to_owned()))
            }
            _ => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unknown topic {topic:?}"),
            )),
        }
    }

    fn subscribe(&mut self, topic: String, since: Option<i64>, ctx: &mut Context<Self>) {
        let source = match self.authorise(&topic) {
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
    fn end_subscription(&self, entry: TopicState) {
        if let Some(id) = entry.bus_id {
            self.state.bus.unsubscribe(&entry.bus_topic, id);
            metrics::gauge!("ws_subscriptions", "kind" => entry.source.kind()).decrement(1.0);
        }
    }

    /// Hands a bus frame to every subscription it feeds (a kitchen and its board share one).
    fn deliver(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
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

/// A frame as a subscription of `source` sees it on `topic`.
fn render(topic: &str, source: &Source, frame: &Frame) -> Option<String> {
    match source {
        Source::Kitchen(_) | Source::Order(_) | Source::Inbox(_) => Some(frame.to_json()),
        Source::Board(_) => board_frame(topic, frame).map(|f| f.to_json()),
    }
}

impl Actor for Socket {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        metrics::gauge!("ws_sockets").increment(1.0);
        let mut draining = self.state.shutdown.subscribe();
        ctx.spawn(
            async move {
                let _ = draining.wait_for(|yes| *yes).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                act.close(
                    CloseCode::Away,
                    "server shutting down: reconnect with since",
                    ctx,
                )
            }),
        );
        ctx.run_interval(HEARTBEAT, |act, ctx| {
            if Utc::now().timestamp() > act.who.expires_at {
                // Re-authentication is a reconnect with a fresh token and `since`.
                act.close(
                    CloseCode::Policy,
                    "token expired: reconnect with a fresh token",
                    ctx,
                );
            } else if act.last_heard.elapsed()
                > Duration::from_secs(act.state.config.ws_idle_timeout_secs)
            {
                act.close(CloseCode::Away, "idle timeout", ctx);
            } else {
                act.send(Out::Ping, ctx);
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::gauge!("ws_sockets").decrement(1.0);
        for (_, entry) in std::mem::take(&mut self.topics) {
            self.end_subscription(entry);
        }
    }
}

impl Handler<Deliver> for Socket {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        self.deliver(msg, ctx);
    }
}

impl Handler<Overflowed> for Socket {
    type Result = ();
    fn handle(&mut self, msg: Overflowed, ctx: &mut Self::Context) {
        tracing::info!(topic = %msg.topic, user = %self.who.user_id, "slow consumer disconnected");
        metrics::counter!("ws_slow_consumers_dropped_total").increment(1);
        self.close(CloseCode::Again, "slow consumer: resume with since", ctx);
    }
}

impl StreamHandler<Result<Message, ProtocolError>> for Socket {
    fn handle(&mut self, msg: Result<Message, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(Message::Text(text)) => match serde_json::from_str::<ClientFrame>(&text) {
                Ok(ClientFrame::Subscribe { topic, since }) => self.subscribe(topic, since, ctx),
                Ok(ClientFrame::Unsubscribe { topic }) => {
                    if let Some(entry) = self.topics.remove(&topic) {
                        self.end_subscription(entry);
                    }
                    self.text(
                        serde_json::json!({"type": "unsubscribed", "topic": topic}).to_string(),
                        ctx,
                    );
                }
                Ok(ClientFrame::Ping) => self.text(r#"{"type":"pong"}"#, ctx),
                Err(e) => self.error(ctx, ErrorCode::InvalidBody, &format!("bad frame: {e}")),
            },
            Ok(Message::Ping(bytes)) => self.send(Out::Pong(bytes), ctx),
            Ok(Message::Pong(_)) => {}
            Ok(Message::Binary(_)) => {
                self.error(ctx, ErrorCode::InvalidBody, "frames are JSON text")
            }
            Ok(Message::Close(reason)) => {
                // Echo the client's close.
                if let (Some(reason), Some(close)) = (reason, self.out.close.take()) {
                    let _ = close.send(reason);
                }
                ctx.stop();
            }
            Ok(Message::Continuation(_)) | Ok(Message::Nop) => {}
            Err(e) => self.close(CloseCode::Protocol, &e.to_string(), ctx),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct WsQuery {
    /// An access token; browsers cannot set headers on a WebSocket.
    access_token: Option<String>,
}

/// `GET /api/v1/ws?access_token=…`: authenticates before upgrading.
#[utoipa::path(tag = "realtime", params(WsQuery),
    responses((status = 101, description = "WebSocket upgrade; see the README for frames"), (status = 401, body = crate::error::ErrorBody)))]
#[get("/ws")]
pub async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<WsQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    let token = query.access_token.as_deref().ok_or_else(|| {
        ApiError::new(ErrorCode::Unauthenticated, "pass access_token in the query")
    })?;
    let who = Principal::from_claims(state.keys.verify(token)?);
    let (response, session, inbound) = actix_ws::handle(&req, stream).map_err(|e| {
        ApiError::new(
            ErrorCode::WebsocketUpgradeRequired,
            format!("expected a WebSocket upgrade: {e}"),
        )
    })?;
    let (queue, queued) = tokio::sync::mpsc::channel(state.config.ws_send_queue);
    let (close, closing) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(write_out(session, queued, closing));
    Socket::create(|ctx| {
        ctx.add_stream(inbound.max_frame_size(MAX_FRAME));
        Socket {
            who,
            state,
            topics: HashMap::new(),
            last_heard: Instant::now(),
            out: Outbound {
                queue,
                close: Some(close),
            },
        }
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boards_show_a_first_name_and_an_initial() {
        assert_eq!(first_name_and_initial("Ada Lovelace"), "Ada L.");
        assert_eq!(
            first_name_and_initial("  Grace  Brewster Hopper "),
            "Grace H."
        );
        assert_eq!(first_name_and_initial("Ada"), "Ada");
        assert_eq!(first_name_and_initial(""), "");
    }

    fn kitchen_frame(kind: &str, from: &str, state: &str) -> Frame {
        Frame {
            topic: "kitchen:s".into(),
            seq: 7,
            kind: kind.into(),
            data: serde_json::json!({"from": from, "order": {
                "id": "o", "student_id": "st", "student_name": "Ada Lovelace", "state": state,
                "pickup_code": "AC34", "counter": {"id": "c", "number": 2, "name": "Counter 2"},
                "items": [{"name": "Soup"}]}}),
            at: Utc::now(),
            transient: false,
        }
    }

    #[test]
    fn the_board_sees_meals_arrive_and_leave_and_nothing_private() {
        let ready = board_frame(
            "board:s",
            &kitchen_frame("order.ready", "preparing", "ready"),
        )
        .unwrap();
        assert_eq!(ready.kind, "board.ready");
        assert_eq!(ready.seq, 7);
        assert_eq!(
            ready.data,
            serde_json::json!({"pickup_code": "AC34", "name": "Ada L.", "counter": 2})
        );
        let gone = board_frame(
            "board:s",
            &kitchen_frame("order.picked_up", "ready", "picked_up"),
        )
        .unwrap();
        assert_eq!(gone.kind, "board.gone");
        let recalled = board_frame(
            "board:s",
            &kitchen_frame("order.preparing", "ready", "preparing"),
        );
        assert_eq!(recalled.map(|f| f.kind), Some("board.gone".into()));
        for (kind, from, state) in [
            ("order.confirmed", "placed", "confirmed"),
            ("order.pickup_reminder", "ready", "ready"),
        ] {
            assert!(board_frame("board:s", &kitchen_frame(kind, from, state)).is_none());
        }
    }
}
