//! The frames a client sends, the topics it may name (and who may), and how a bus frame is
//! written out to a subscription.

use super::board::board_frame;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use serde::Deserialize;
use tiffin_actors::bus::Frame;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum ClientFrame {
    Subscribe { topic: String, since: Option<i64> },
    Unsubscribe { topic: String },
    Ping,
}

/// Where a topic's frames come from, and so how to replay them.
#[derive(Clone)]
pub(super) enum Source {
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
    pub(super) fn bus_topic(&self) -> String {
        match self {
            Source::Kitchen(school_id) | Source::Board(school_id) => {
                tiffin_actors::bus::kitchen_topic(school_id)
            }
            Source::Order(order_id) => tiffin_actors::bus::order_topic(order_id),
            Source::Inbox(user_id) => tiffin_actors::bus::inbox_topic(user_id),
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Source::Kitchen(_) => "kitchen",
            Source::Order(_) => "order",
            Source::Board(_) => "board",
            Source::Inbox(_) => "inbox",
        }
    }
}

/// Who may subscribe to what: a kitchen topic needs kitchen staff of that school; a
/// board, anyone of that school; an order topic is checked against the order once loaded.
pub(super) fn authorise(who: &Principal, topic: &str) -> Result<Source, ApiError> {
    let id = |v: &str| uuid::Uuid::parse_str(v).is_ok();
    match topic.split_once(':') {
        Some(("kitchen", school_id)) if id(school_id) => {
            who.require_kitchen(school_id)?;
            Ok(Source::Kitchen(school_id.to_owned()))
        }
        Some(("order", order_id)) if id(order_id) => Ok(Source::Order(order_id.to_owned())),
        Some(("inbox", user_id)) if id(user_id) => {
            if user_id != who.user_id {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "an inbox is its owner's alone",
                ));
            }
            Ok(Source::Inbox(user_id.to_owned()))
        }
        Some(("board", school_id)) if id(school_id) => {
            who.require_school(school_id)?;
            Ok(Source::Board(school_id.to_owned()))
        }
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("unknown topic {topic:?}"),
        )),
    }
}

/// A frame as a subscription of `source` sees it on `topic`.
pub(super) fn render(topic: &str, source: &Source, frame: &Frame) -> Option<String> {
    match source {
        Source::Kitchen(_) | Source::Order(_) | Source::Inbox(_) => Some(frame.to_json()),
        Source::Board(_) => board_frame(topic, frame).map(|f| f.to_json()),
    }
}
