//! The WebSocket edge: one thin actor per connection, which authenticates once, subscribes to
//! the topics the caller may see, catches up, then writes the bus's frames out in order.

mod board;
mod catch_up;
mod outbound;
mod protocol;
mod screens;
mod subscriptions;

use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use actix::prelude::*;
use actix_web::{HttpRequest, HttpResponse, get, web};
use actix_ws::{CloseCode, CloseReason, Message, ProtocolError};
use chrono::Utc;
use outbound::{Out, Outbound, write_out};
use protocol::ClientFrame;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use subscriptions::TopicState;
use tiffin_actors::bus::{Deliver, Overflowed};

const HEARTBEAT: Duration = Duration::from_secs(10);
/// Frames a socket actor may have waiting in its mailbox before it counts as a slow consumer.
const MAILBOX: usize = 1024;
const MAX_FRAME: usize = 16 * 1024;

pub struct Socket {
    who: Principal,
    state: web::Data<AppState>,
    topics: HashMap<String, TopicState>,
    last_heard: Instant,
    out: Outbound,
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
    let screen_id = who.screen.map(|_| who.user_id.clone());
    if let Some(id) = &screen_id {
        let active = crate::store::screens::is_active(&state.db, id).await;
        if !active.map_err(ApiError::from)? {
            return Err(ApiError::new(ErrorCode::ScreenRevoked, "this screen was revoked").into());
        }
        crate::store::screens::screen_seen(&state.db, id)
            .await
            .map_err(ApiError::from)?;
    }
    let (response, session, inbound) = actix_ws::handle(&req, stream).map_err(|e| {
        ApiError::new(
            ErrorCode::WebsocketUpgradeRequired,
            format!("expected a WebSocket upgrade: {e}"),
        )
    })?;
    let (queue, queued) = tokio::sync::mpsc::channel(state.config.ws_send_queue);
    let (close, closing) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(write_out(session, queued, closing));
    let sockets = state.clone();
    let socket = Socket::create(|ctx| {
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
    if let Some(id) = &screen_id {
        sockets.screen_sockets.add(id, socket.recipient());
    }
    Ok(response)
}
