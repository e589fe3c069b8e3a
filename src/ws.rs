//! The WebSocket edge: one thin actor per connection. It authenticates once, subscribes to
//! topics the caller may see, and writes the bus's frames out. Transport details stay here.

use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use actix::prelude::*;
use actix_web::{HttpRequest, HttpResponse, get, web};
use actix_web_actors::ws;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiffin_actors::bus::{Bus, Deliver, LocalBus, Overflowed, Subscriber};

const HEARTBEAT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames a socket may have queued before it counts as a slow consumer.
const MAILBOX: usize = 1024;
const MAX_FRAME: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Subscribe { topic: String },
    Unsubscribe { topic: String },
    Ping,
}

pub struct Socket {
    who: Principal,
    bus: Arc<LocalBus>,
    subscriptions: HashMap<String, u64>,
    last_heard: Instant,
}

impl Socket {
    fn error(&self, ctx: &mut ws::WebsocketContext<Self>, code: ErrorCode, message: &str) {
        ctx.text(
            serde_json::json!({"type": "error", "code": code, "message": message}).to_string(),
        );
    }

    /// Who may subscribe to what: a kitchen topic needs kitchen staff of that school.
    fn authorise(&self, topic: &str) -> Result<(), ApiError> {
        match topic.split_once(':') {
            Some(("kitchen", school_id)) if uuid::Uuid::parse_str(school_id).is_ok() => {
                self.who.require_kitchen(school_id)
            }
            _ => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unknown topic {topic:?}"),
            )),
        }
    }

    fn subscribe(&mut self, topic: String, ctx: &mut ws::WebsocketContext<Self>) {
        if let Err(e) = self.authorise(&topic) {
            return self.error(ctx, e.code, &e.message);
        }
        if !self.subscriptions.contains_key(&topic) {
            let me = ctx.address();
            let id = self.bus.subscribe(
                &topic,
                Subscriber {
                    frames: me.clone().recipient(),
                    overflow: me.recipient(),
                },
            );
            self.subscriptions.insert(topic.clone(), id);
        }
        ctx.text(serde_json::json!({"type": "subscribed", "topic": topic}).to_string());
    }
}

impl Actor for Socket {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        ctx.run_interval(HEARTBEAT, |act, ctx| {
            if act.last_heard.elapsed() > IDLE_TIMEOUT {
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Away,
                    description: Some("idle timeout".into()),
                }));
                ctx.stop();
            } else {
                ctx.ping(b"");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for (topic, id) in self.subscriptions.drain() {
            self.bus.unsubscribe(&topic, id);
        }
    }
}

impl Handler<Deliver> for Socket {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        ctx.text(&*msg.json);
    }
}

impl Handler<Overflowed> for Socket {
    type Result = ();
    fn handle(&mut self, msg: Overflowed, ctx: &mut Self::Context) {
        tracing::info!(topic = %msg.topic, user = %self.who.user_id, "slow consumer disconnected");
        metrics::counter!("ws_slow_consumers_dropped_total").increment(1);
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Again,
            description: Some("slow consumer: resume with since".into()),
        }));
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Socket {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Text(text)) => match serde_json::from_str::<ClientFrame>(&text) {
                Ok(ClientFrame::Subscribe { topic }) => self.subscribe(topic, ctx),
                Ok(ClientFrame::Unsubscribe { topic }) => {
                    if let Some(id) = self.subscriptions.remove(&topic) {
                        self.bus.unsubscribe(&topic, id);
                    }
                    ctx.text(
                        serde_json::json!({"type": "unsubscribed", "topic": topic}).to_string(),
                    );
                }
                Ok(ClientFrame::Ping) => ctx.text(r#"{"type":"pong"}"#),
                Err(e) => self.error(ctx, ErrorCode::InvalidBody, &format!("bad frame: {e}")),
            },
            Ok(ws::Message::Ping(bytes)) => ctx.pong(&bytes),
            Ok(ws::Message::Pong(_)) => {}
            Ok(ws::Message::Binary(_)) => {
                self.error(ctx, ErrorCode::InvalidBody, "frames are JSON text")
            }
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Continuation(_)) | Ok(ws::Message::Nop) => {}
            Err(e) => {
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Protocol,
                    description: Some(e.to_string()),
                }));
                ctx.stop();
            }
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct WsQuery {
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
    let socket = Socket {
        who,
        bus: state.bus.clone(),
        subscriptions: HashMap::new(),
        last_heard: Instant::now(),
    };
    ws::WsResponseBuilder::new(socket, &req, stream)
        .frame_size(MAX_FRAME)
        .start()
}
