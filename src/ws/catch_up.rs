//! What a subscription sends before its live frames: a snapshot, or the missed frames
//! replayed from the store, for kitchens, boards, orders and inboxes.

use super::protocol::Source;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use crate::store::event_from_row;
use actix::prelude::*;
use actix_web::web;
use chrono::Utc;
use std::sync::Arc;
use tiffin_actors::bus::{Frame, Subscriber};
use tiffin_actors::domain::KitchenEvent;
use tiffin_actors::ports::Store;
use tiffin_actors::{CatchUp, Catchup, KitchenFor, SnapshotReason, Subscribe, TakeSnapshot};

/// What a subscription sends before its live frames.
pub(super) struct CaughtUp {
    pub(super) bus_id: u64,
    pub(super) frames: Vec<Frame>,
    pub(super) last: i64,
}

pub(super) async fn replay(
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

pub(super) async fn catch_up(
    state: web::Data<AppState>,
    who: Principal,
    topic: String,
    source: Source,
    since: Option<i64>,
    subscriber: Arc<dyn Subscriber>,
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
    subscriber: Arc<dyn Subscriber>,
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
    subscriber: Arc<dyn Subscriber>,
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
