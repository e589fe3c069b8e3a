//! Reading orders: one with its history and its messages' delivery, the kitchen's live list and summary.

use super::orders::{OrderView, authorised_order};
use super::schools::existing_school;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use crate::store::event_from_row;
use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tiffin_actors::LiveOrders;
use tiffin_actors::domain::{OrderState, OrderSummary};
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<AppState>;

/// One recorded transition.
#[derive(Serialize, ToSchema)]
pub struct HistoryEntry {
    pub seq: i64,
    pub version: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub from: Option<String>,
    pub to: String,
    pub actor_id: Option<String>,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct OrderWithHistory {
    pub order: OrderView,
    pub history: Vec<HistoryEntry>,
}

/// One message about an order, on one channel, to one person, and how its delivery went.
#[derive(Serialize, ToSchema)]
pub struct DeliveryStatus {
    pub id: String,
    pub recipient_id: String,
    /// `email`, `in_app`, …
    pub channel: String,
    /// The event kind it tells of, e.g. `order_ready`.
    pub template: String,
    /// `pending` (queued, held for quiet hours or retrying), `sent`, `dead` (gave up),
    /// `expired` (no longer true, or too late), `skipped` (an SMS fallback push made needless).
    pub status: String,
    /// `low`, `normal`, `high` or `critical`.
    pub priority: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When a pending message is next tried.
    pub next_attempt_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    /// The push message this SMS stands behind.
    pub fallback_for: Option<String>,
    pub attempt_log: Vec<Attempt>,
}

/// One delivery attempt.
#[derive(Serialize, ToSchema)]
pub struct Attempt {
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// `sent`, `retry` or `dead`.
    pub outcome: String,
    pub detail: Option<String>,
}

/// Delivery status of every notification an order caused, per recipient and channel.
#[utoipa::path(tag = "orders", responses((status = 200, body = [DeliveryStatus]), (status = 404, body = crate::error::ErrorBody)))]
#[get("/orders/{order_id}/notifications")]
pub async fn order_notifications(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let order_id = path.to_string();
    authorised_order(&state, &who, &order_id).await?;
    let rows = store::outbox::order_notifications(&state.db, &order_id).await?;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let attempts = store::outbox::delivery_attempts_of(&state.db, &ids).await?;
    let statuses: Vec<DeliveryStatus> = rows
        .into_iter()
        .map(|r| DeliveryStatus {
            attempt_log: attempts
                .iter()
                .filter(|a| a.0 == r.id)
                .map(|(_, attempt, at, outcome, detail)| Attempt {
                    attempt: *attempt,
                    at: at.and_utc(),
                    outcome: outcome.clone(),
                    detail: detail.clone(),
                })
                .collect(),
            id: r.id,
            recipient_id: r.recipient_id,
            channel: r.channel,
            template: r.template,
            status: r.status,
            priority: tiffin_actors::notices::Priority::from_rank(r.priority)
                .as_str()
                .to_owned(),
            attempts: r.attempts,
            last_error: r.last_error,
            created_at: r.created_at.and_utc(),
            next_attempt_at: r.next_attempt_at.and_utc(),
            expires_at: r.expires_at.map(|t| t.and_utc()),
            sent_at: r.sent_at.map(|t| t.and_utc()),
            fallback_for: r.fallback_for,
        })
        .collect();
    Ok(HttpResponse::Ok().json(statuses))
}

#[utoipa::path(tag = "orders", responses((status = 200, body = OrderWithHistory), (status = 404, body = crate::error::ErrorBody)))]
#[get("/orders/{order_id}")]
pub async fn get_order(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let order_id = path.to_string();
    authorised_order(&state, &who, &order_id).await?;
    let rows = store::orders::order_history(&state.db, &order_id).await?;
    let mut history = Vec::with_capacity(rows.len());
    let mut latest = None;
    for row in rows {
        let event = event_from_row(row)?;
        history.push(HistoryEntry {
            seq: event.seq,
            version: event.version,
            kind: event.kind.clone(),
            from: event.from.map(|s| s.as_str().to_owned()),
            to: event.to.as_str().to_owned(),
            actor_id: event.actor_id.clone(),
            reason: event.reason.clone(),
            at: event.at,
        });
        latest = Some(event.order);
    }
    let order = latest.ok_or_else(|| ApiError::not_found("order"))?;
    Ok(HttpResponse::Ok().json(OrderWithHistory {
        order: order.into(),
        history,
    }))
}

#[utoipa::path(tag = "kitchen", responses((status = 200, body = Vec<OrderView>)))]
#[get("/schools/{school_id}/orders/live")]
pub async fn live_orders(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_kitchen(&school_id)?;
    existing_school(&state, &school_id).await?;
    let kitchen = state.kitchens.of(&state.registry, &school_id).await?;
    let orders = kitchen.send(LiveOrders).await??;
    Ok(HttpResponse::Ok().json(orders.into_iter().map(OrderView::from).collect::<Vec<_>>()))
}

#[derive(Serialize, ToSchema)]
pub struct KitchenSummary {
    pub at: DateTime<Utc>,
    /// Orders waiting longer than this in their state are late (the dashboard colours them).
    pub age_warning_secs: i64,
    /// Live orders per state: how many, and how long the oldest has waited in it (seconds).
    pub states: Vec<StateSummary>,
    /// Ready orders waiting because no counter is open.
    pub ready_without_counter: usize,
    pub counters: Vec<CounterQueue>,
    /// The school-local day the item counts cover.
    pub day: String,
    /// All-day counts per wave and meal (cancelled orders excluded), most ordered first.
    pub items: Vec<ItemCount>,
    /// The card readers at the counters, online or not.
    pub readers: Vec<super::readers::Reader>,
}

#[derive(Serialize, ToSchema)]
pub struct StateSummary {
    pub state: String,
    pub count: usize,
    pub oldest_age_secs: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct CounterQueue {
    pub id: String,
    pub number: i32,
    pub name: String,
    pub is_open: bool,
    pub waiting: usize,
}

#[derive(Serialize, ToSchema)]
pub struct ItemCount {
    /// The lunch wave, when the school has waves.
    pub wave: Option<String>,
    pub meal_id: String,
    pub name: String,
    pub quantity: i64,
}

/// The kitchen at a glance: queues by state with ages, counters and their queues, and the
/// day's counts per item.
#[utoipa::path(tag = "kitchen", responses((status = 200, body = KitchenSummary)))]
#[get("/schools/{school_id}/kitchen/summary")]
pub async fn kitchen_summary(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_kitchen(&school_id)?;
    let school = existing_school(&state, &school_id).await?;
    let kitchen = state.kitchens.of(&state.registry, &school_id).await?;
    let live = kitchen.send(LiveOrders).await??;
    let now = Utc::now();
    let live_states = [
        OrderState::Placed,
        OrderState::Confirmed,
        OrderState::Preparing,
        OrderState::Ready,
    ];
    let states = live_states
        .into_iter()
        .map(|s| {
            let here: Vec<&OrderSummary> = live.iter().filter(|o| o.state == s).collect();
            StateSummary {
                state: s.as_str().to_owned(),
                count: here.len(),
                oldest_age_secs: here
                    .iter()
                    .map(|o| now.signed_duration_since(o.updated_at).num_seconds())
                    .max(),
            }
        })
        .collect();
    let ready: Vec<&OrderSummary> = live
        .iter()
        .filter(|o| o.state == OrderState::Ready)
        .collect();
    let counters = store::counters::counters(&state.db, &school_id)
        .await?
        .into_iter()
        .map(|c| CounterQueue {
            waiting: ready
                .iter()
                .filter(|o| o.counter.as_ref().is_some_and(|oc| oc.id == c.id))
                .count(),
            id: c.id,
            number: c.number,
            name: c.name,
            is_open: c.is_open,
        })
        .collect();
    let tz: chrono_tz::Tz = school.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let local_today = now.with_timezone(&tz).date_naive();
    let start_of = |day: chrono::NaiveDate| {
        day.and_hms_opt(0, 0, 0)
            .and_then(|t| t.and_local_timezone(tz).earliest())
            .map(|t| t.naive_utc())
            .ok_or_else(|| ApiError::internal("local midnight"))
    };
    let from = start_of(local_today)?;
    let until = start_of(local_today + chrono::Days::new(1))?;
    let waves = store::schools::service_windows(&state.db, &school_id).await?;
    let items = store::orders::item_counts(&state.db, &school_id, from, until)
        .await?
        .into_iter()
        .map(|(wave, meal_id, name, quantity)| ItemCount {
            wave: wave.and_then(|id| waves.iter().find(|w| w.id == id).map(|w| w.name.clone())),
            meal_id,
            name,
            quantity,
        })
        .collect();
    Ok(HttpResponse::Ok().json(KitchenSummary {
        at: now,
        age_warning_secs: state.config.dashboard_age_warning_secs,
        states,
        ready_without_counter: ready.iter().filter(|o| o.counter.is_none()).count(),
        counters,
        day: local_today.to_string(),
        items,
        readers: store::readers::readers_of(&state.db, &school_id)
            .await?
            .into_iter()
            .map(|r| super::readers::reader_view(r, state.config.rfid.reader_offline_after_secs))
            .collect(),
    }))
}
