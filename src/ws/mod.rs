//! The WebSocket edge: one thin actor per connection, which authenticates once, subscribes to
//! the topics the caller may see and catches up; then each subscription's feed takes the
//! bus's frames straight into the socket's send queue, in order.

mod board;
mod catch_up;
mod feed;
mod outbound;
mod protocol;
mod screens;
mod subscriptions;

use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use actix::prelude::*;
use actix_web::body::{BodyStream, MessageBody};
use actix_web::{HttpRequest, HttpResponse, get, web};
use actix_ws::{CloseCode, CloseReason, Message, ProtocolError};
use chrono::Utc;
use feed::SlowConsumer;
use outbound::{Out, Outgoing, Refused, SendQueue};
use protocol::ClientFrame;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subscriptions::TopicState;

const HEARTBEAT: Duration = Duration::from_secs(10);
/// Messages a socket actor may have waiting in its mailbox (frames do not pass through it).
const MAILBOX: usize = 1024;
const MAX_FRAME: usize = 16 * 1024;

pub struct Socket {
    who: Principal,
    state: web::Data<AppState>,
    topics: HashMap<String, TopicState>,
    last_heard: Instant,
    /// The send queue, shared with the subscriptions' feeds.
    out: Arc<SendQueue>,
}

/// How a slow consumer is closed: it resumes with `since`.
fn slow_consumer_close() -> CloseReason {
    CloseReason {
        code: CloseCode::Again,
        description: Some("slow consumer: resume with since".to_owned()),
    }
}

impl Socket {
    /// Queues a frame; a full queue is a slow consumer, closed so it resumes with `since`.
    fn send(&mut self, out: Out, ctx: &mut Context<Self>) {
        match self.out.push(out) {
            Ok(()) => {}
            Err(Refused::Full) => {
                if self.out.close(Some(slow_consumer_close())) {
                    self.slow_consumer_dropped();
                }
                ctx.stop();
            }
            // Closing, or the connection is over.
            Err(Refused::Ended) => ctx.stop(),
        }
    }

    fn slow_consumer_dropped(&self) {
        tracing::info!(user = %self.who.user_id, "slow consumer disconnected");
        metrics::counter!("ws_slow_consumers_dropped_total").increment(1);
    }

    fn text(&mut self, text: impl Into<String>, ctx: &mut Context<Self>) {
        self.send(Out::Text(text.into()), ctx);
    }

    /// Closes with a code and reason, ahead of anything still queued, and stops.
    fn close(&mut self, code: CloseCode, description: &str, ctx: &mut Context<Self>) {
        self.out.close(Some(CloseReason {
            code,
            description: Some(description.to_owned()),
        }));
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
        // Whatever stopped it, the client gets a close frame (no-op if one is on its way).
        self.out.close(None);
    }
}

impl Handler<SlowConsumer> for Socket {
    type Result = ();
    /// A feed found the queue full and closed the socket with `1013`.
    fn handle(&mut self, _: SlowConsumer, ctx: &mut Self::Context) {
        self.slow_consumer_dropped();
        ctx.stop();
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
                self.out.close(reason);
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
    let upgrade_required = |e: &dyn std::fmt::Display| {
        ApiError::new(
            ErrorCode::WebsocketUpgradeRequired,
            format!("expected a WebSocket upgrade: {e}"),
        )
    };
    // actix-ws reads the client's frames; what goes out is written by the socket's own
    // response body straight from its send queue (no session channel, no writer task).
    let (_, _, inbound) = actix_ws::handle(&req, stream).map_err(|e| upgrade_required(&e))?;
    let queue = SendQueue::new(state.config.ws_send_queue);
    let response = actix_http::ws::handshake(req.head())
        .map_err(|e| upgrade_required(&e))?
        .message_body(BodyStream::new(Outgoing::new(queue.clone())).boxed())?;
    let sockets = state.clone();
    let socket = Socket::create(|ctx| {
        ctx.add_stream(inbound.max_frame_size(MAX_FRAME));
        Socket {
            who,
            state,
            topics: HashMap::new(),
            last_heard: Instant::now(),
            out: queue,
        }
    });
    if let Some(id) = &screen_id {
        sockets.screen_sockets.add(id, socket.recipient());
    }
    Ok(response.into())
}
