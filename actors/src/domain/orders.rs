//! An order as its kitchen sees it, what its timers recorded on it, and the committed
//! events that carry it.

use super::counters::CounterRef;
use super::machine::OrderState;
use super::waves::Wave;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The kind of a kitchen event, as it appears on the wire (`type`) and in the event log.
pub fn event_type(to: OrderState) -> &'static str {
    match to {
        OrderState::Placed => "order.placed",
        OrderState::Confirmed => "order.confirmed",
        OrderState::Preparing => "order.preparing",
        OrderState::Ready => "order.ready",
        OrderState::PickedUp => "order.picked_up",
        OrderState::Cancelled => "order.cancelled",
        OrderState::Uncollected => "order.uncollected",
    }
}

/// The event of a ready order moved to another counter (or to none) because its counter closed.
pub const COUNTER_CHANGED: &str = "order.counter_changed";

/// Something a timer records on an order without changing its state. Each fires once per order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alert {
    /// The kitchen has not confirmed the order within the confirm deadline.
    ConfirmOverdue,
    /// A ready meal is still waiting at its counter.
    PickupReminder,
}

impl Alert {
    /// Its name as stored and shown (serde's name).
    pub fn as_str(self) -> &'static str {
        match self {
            Alert::ConfirmOverdue => "confirm_overdue",
            Alert::PickupReminder => "pickup_reminder",
        }
    }

    /// The event kind in the log and on the wire.
    pub fn event_type(self) -> &'static str {
        match self {
            Alert::ConfirmOverdue => "order.confirm_overdue",
            Alert::PickupReminder => "order.pickup_reminder",
        }
    }
}

/// An order as its kitchen sees it while it is live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSummary {
    pub id: String,
    pub school_id: String,
    pub student_id: String,
    pub student_name: String,
    pub state: OrderState,
    pub version: i64,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Where to collect it, once ready and a counter is open.
    #[serde(default)]
    pub counter: Option<CounterRef>,
    /// Short code shown on the board and said at the counter; unique per school and day.
    #[serde(default)]
    pub pickup_code: Option<String>,
    /// The lunch wave it was ordered for, when the school has waves.
    #[serde(default)]
    pub wave: Option<Wave>,
    /// When it last became ready; the pickup reminder counts from here.
    #[serde(default)]
    pub ready_at: Option<DateTime<Utc>>,
    /// Alerts its timers have recorded, so none fires twice.
    #[serde(default)]
    pub alerts: Vec<Alert>,
    /// Why staff served a meal that meets the student's allergies: the hand-over at the
    /// counter then waits for a staff acknowledgement.
    #[serde(default)]
    pub allergy_override: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub meal_id: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
    /// The station that makes it (the meal's when the order was placed).
    #[serde(default)]
    pub station_id: Option<String>,
    /// Marked done at its station.
    #[serde(default)]
    pub done: bool,
}

/// A committed kitchen event: what the store wrote and the bus carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KitchenEvent {
    pub school_id: String,
    /// Per-kitchen sequence number, assigned in the committing transaction.
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub order_id: String,
    pub from: Option<OrderState>,
    pub to: OrderState,
    pub version: i64,
    pub actor_id: Option<String>,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
    pub order: OrderSummary,
}
