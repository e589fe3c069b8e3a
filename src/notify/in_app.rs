//! In-app messages: the outbox's `in_app` channel stores each message in its user's inbox,
//! numbered per user, and publishes it on the `inbox:<user>` topic once stored.

use super::templates::Templates;
use crate::db::{Db, DbError, models::now};
use crate::group_commit::GroupCommit;
use crate::store::inbox::{InPlaceDelivery, InboxRow, StoreAnswer, store_group};
use async_trait::async_trait;
use serde::Serialize;
use std::sync::Arc;
use tiffin_actors::bus::{Bus, Frame, inbox_topic};
use tiffin_actors::ports::{OutboxMessage, SendError, Sender};

/// A message as the API and the inbox topic show it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InboxMessage {
    pub id: String,
    pub seq: i64,
    /// The event kind it tells of, e.g. `order_ready`.
    pub kind: String,
    pub title: String,
    pub body: String,
    pub order_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub read_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Set when its owner deleted it (title and body are then empty).
    pub deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<&InboxRow> for InboxMessage {
    fn from(row: &InboxRow) -> InboxMessage {
        InboxMessage {
            id: row.id.clone(),
            seq: row.seq,
            kind: row.kind.clone(),
            title: row.title.clone(),
            body: row.body.clone(),
            order_id: row.order_id.clone(),
            created_at: row.created_at.and_utc(),
            read_at: row.read_at.map(|t| t.and_utc()),
            deleted_at: row.deleted_at.map(|t| t.and_utc()),
        }
    }
}

impl InboxRow {
    pub fn frame(&self) -> Frame {
        let message = InboxMessage::from(self);
        Frame {
            topic: inbox_topic(&self.user_id),
            seq: self.seq,
            kind: "inbox.message".into(),
            data: serde_json::to_value(message).unwrap_or_default(),
            at: self.created_at.and_utc(),
            transient: false,
        }
    }

    /// A change to a stored message (`inbox.read`, `inbox.deleted`) for the user's other
    /// devices: outside the sequence (`seq` 0) and never replayed, as the message keeps its
    /// number and the snapshot or the REST list shows its state.
    pub fn change_frame(&self, kind: &str) -> Frame {
        Frame {
            topic: inbox_topic(&self.user_id),
            seq: 0,
            kind: kind.into(),
            data: serde_json::to_value(InboxMessage::from(self)).unwrap_or_default(),
            at: chrono::Utc::now(),
            transient: true,
        }
    }
}

/// The in-app channel's provider. Messages sent at once are stored together
/// (`store_group`): whatever is queued when the previous group returns, one group at a time.
pub struct InAppSender {
    db: Db,
    templates: Arc<Templates>,
    bus: Arc<dyn Bus>,
    group: GroupCommit<InboxRow, StoreAnswer>,
}

/// The most messages stored in one statement.
const GROUP_MAX: usize = 64;

impl InAppSender {
    pub fn new(db: Db, templates: Arc<Templates>, bus: Arc<dyn Bus>) -> InAppSender {
        InAppSender {
            db,
            templates,
            bus,
            group: GroupCommit::new(1, GROUP_MAX, "inbox_store_batch_size"),
        }
    }
}

/// The inbox row of an in-app message: the email's subject and text serve as its title and
/// body. Its number is the store's to give.
fn inbox_row(templates: &Templates, message: &OutboxMessage) -> Result<InboxRow, String> {
    let payload = super::templates::payload(message)?;
    let (title, body) = templates.render_in_app(message, &payload)?;
    Ok(InboxRow {
        id: message.id.clone(),
        user_id: message.address.clone(),
        seq: 0,
        kind: message.template.clone(),
        title,
        body,
        order_id: payload["order"]["id"].as_str().map(str::to_owned),
        created_at: now(),
        read_at: None,
        deleted_at: None,
    })
}

#[async_trait]
impl Sender for InAppSender {
    async fn send(&self, message: &OutboxMessage) -> Result<(), SendError> {
        let row = inbox_row(&self.templates, message).map_err(SendError::Permanent)?;
        let db = &self.db;
        let stored = crate::db::counted(
            crate::store::NOTIFY,
            self.group.submit(row, |rows| store_group(db, rows)),
        )
        .await
        .unwrap_or_else(|| Err(DbError::Unavailable("the group's store was dropped".into())));
        let (row, fresh) = stored.map_err(|e| match e {
            DbError::Unavailable(m) => SendError::Transient(m),
            DbError::NotFound => SendError::Permanent("no such user".into()),
            other => SendError::Transient(other.to_string()),
        })?;
        if fresh {
            self.bus.publish_frame(row.frame());
        }
        Ok(())
    }
}

/// In-app messages delivered where they are written: a fan-out stores each message due at
/// once in its user's inbox in its own transaction, marked sent with its attempt, and
/// publishes it after the commit (`store/fan_out.rs`). Its own outbox row, a group of its
/// own and a marking sent were most of an order's work beyond its rows (BENCHMARKS.md). The
/// sender above takes the rest: messages waiting out quiet hours, retries, dead letters put
/// back, digests.
pub struct InPlace {
    templates: Arc<Templates>,
    bus: Arc<dyn Bus>,
}

impl InPlace {
    pub fn new(templates: Arc<Templates>, bus: Arc<dyn Bus>) -> InPlace {
        InPlace { templates, bus }
    }
}

impl InPlaceDelivery for InPlace {
    fn inbox_row(&self, message: &OutboxMessage) -> Result<InboxRow, String> {
        inbox_row(&self.templates, message)
    }

    fn publish(&self, stored: &[InboxRow]) {
        for row in stored {
            self.bus.publish_frame(row.frame());
        }
    }
}
