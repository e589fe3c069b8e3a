//! Orders: place, read with history, the kitchen's live list, and transitions.

use super::Json;
use super::OptionalJson;
use super::admin::existing_school;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store;
use crate::store::event_from_row;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tiffin_actors::domain::{Issuer, OrderCommand, OrderState, OrderSummary, Role, bump};
use tiffin_actors::ports::{CommandError, Idempotency, NewOrder, NewOrderItem, Placed};
use tiffin_actors::{KitchenFor, LiveOrders, Nudge, PlaceOrder, TransitionOrder};
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<AppState>;

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// Whom the meal is for; a student ordering for themself may leave it out.
    pub student_id: Option<Uuid>,
    pub items: Vec<CreateOrderItem>,
    /// Kitchen staff only: why a meal may be served despite the student's allergy. Recorded
    /// in the order's history.
    pub allergy_override: Option<String>,
    /// The lunch wave; by default the earliest one still taking orders today.
    pub window_id: Option<Uuid>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderItem {
    pub meal_id: Uuid,
    pub quantity: i32,
}

/// An order as clients see it.
#[derive(Serialize, ToSchema)]
pub struct OrderView {
    pub id: String,
    pub school_id: String,
    pub student_id: String,
    pub student_name: String,
    pub state: String,
    pub version: i64,
    pub total_cents: i64,
    pub items: Vec<OrderItemView>,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The pickup counter, once ready and a counter is open; null while it waits for one.
    pub counter: Option<CounterView>,
    /// Short code for the pickup board, unique per school and day; set when ready.
    pub pickup_code: Option<String>,
    /// The lunch wave, when the school has waves.
    pub wave: Option<WaveView>,
    /// When it last became ready.
    pub ready_at: Option<DateTime<Utc>>,
    /// Alerts its timers recorded: `confirm_overdue`, `pickup_reminder`.
    pub alerts: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WaveView {
    pub id: String,
    pub name: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub order_cutoff: DateTime<Utc>,
    pub cancel_until: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct CounterView {
    pub id: String,
    pub number: i32,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct OrderItemView {
    pub meal_id: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

impl From<OrderSummary> for OrderView {
    fn from(o: OrderSummary) -> OrderView {
        OrderView {
            id: o.id,
            school_id: o.school_id,
            student_id: o.student_id,
            student_name: o.student_name,
            state: o.state.as_str().to_owned(),
            version: o.version,
            total_cents: o.total_cents,
            items: o
                .items
                .into_iter()
                .map(|l| OrderItemView {
                    meal_id: l.meal_id,
                    name: l.name,
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price_cents,
                })
                .collect(),
            placed_at: o.placed_at,
            updated_at: o.updated_at,
            counter: o.counter.map(|c| CounterView {
                id: c.id,
                number: c.number,
                name: c.name,
            }),
            pickup_code: o.pickup_code,
            ready_at: o.ready_at,
            alerts: o.alerts.iter().map(|a| a.as_str().to_owned()).collect(),
            wave: o.wave.map(|w| WaveView {
                id: w.id,
                name: w.name,
                starts_at: w.starts_at,
                ends_at: w.ends_at,
                order_cutoff: w.order_cutoff,
                cancel_until: w.cancel_until,
            }),
        }
    }
}

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

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TransitionBody {
    /// The version the caller saw; if the order has moved on, the answer is `version_conflict`.
    pub expected_version: Option<i64>,
    pub reason: Option<String>,
}

const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

fn idempotency(
    req: &HttpRequest,
    body: &CreateOrder,
    school_id: &str,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 128 && k.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::IdempotencyKeyInvalid,
                "Idempotency-Key must be 1 to 128 visible ASCII characters",
            )
        })?;
    let canonical = serde_json::to_vec(&(school_id, body)).map_err(ApiError::internal)?;
    Ok(Some(Idempotency {
        key: key.to_owned(),
        fingerprint: hex::encode(Sha256::digest(canonical)),
    }))
}

/// Who the caller is to a student's orders, or a refusal.
pub(crate) async fn issuer_for(
    state: &AppState,
    who: &Principal,
    school_id: &str,
    student_id: &str,
) -> Result<Issuer, ApiError> {
    match who.role {
        Role::KitchenStaff | Role::SchoolAdmin | Role::Admin => {
            who.require_kitchen(school_id)?;
            Ok(Issuer::Staff)
        }
        Role::Student => {
            who.require_school(school_id)?;
            if who.user_id == student_id {
                Ok(Issuer::Student)
            } else {
                Err(ApiError::forbidden("students act only on their own orders"))
            }
        }
        Role::Guardian => {
            who.require_school(school_id)?;
            if store::people::is_guardian_of(&state.db, &who.user_id, student_id).await? {
                Ok(Issuer::Guardian)
            } else {
                Err(ApiError::forbidden("not a guardian of this student"))
            }
        }
        Role::Teacher => Err(ApiError::forbidden("teachers do not act on orders")),
    }
}

#[utoipa::path(tag = "orders", request_body = CreateOrder,
    params(("Idempotency-Key" = Option<String>, Header, description = "same key and body: the same order")),
    responses((status = 201, body = OrderView), (status = 200, description = "replayed request", body = OrderView),
        (status = "4XX", body = crate::error::ErrorBody)))]
#[post("/schools/{school_id}/orders")]
pub async fn create_order(
    state: Data,
    who: Principal,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: Json<CreateOrder>,
) -> Result<HttpResponse, ApiError> {
    crate::db::counted("order", place(state, who, req, path, body)).await
}

/// An order's lookups, counted as the order's statements.
async fn place(
    state: Data,
    who: Principal,
    req: HttpRequest,
    path: web::Path<Uuid>,
    body: Json<CreateOrder>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    let student_id = match (body.student_id, who.role) {
        (Some(id), _) => id.to_string(),
        (None, Role::Student) => who.user_id.clone(),
        (None, _) => return Err(ApiError::validation("student_id is required")),
    };
    let issuer = issuer_for(&state, &who, &school_id, &student_id).await?;
    let allergy_override = match (&body.allergy_override, issuer) {
        (None, _) => None,
        (Some(why), Issuer::Staff) => Some(super::required_text("allergy_override", why, 500)?),
        (Some(_), _) => {
            return Err(ApiError::forbidden(
                "only kitchen staff may override an allergy",
            ));
        }
    };
    // The student and the person placing it (who must be active) are checked with the
    // order, in its batch.
    if body.items.is_empty() {
        return Err(CommandError::EmptyOrder.into());
    }
    let order = NewOrder {
        school_id: school_id.clone(),
        student_id,
        placed_by: who.user_id.clone(),
        items: body
            .items
            .iter()
            .map(|i| NewOrderItem {
                meal_id: i.meal_id.to_string(),
                quantity: i.quantity,
            })
            .collect(),
        idempotency: idempotency(&req, &body, &school_id)?,
        allergy_override,
        window_id: body.window_id.map(|w| w.to_string()),
    };
    let kitchen = state.registry.send(KitchenFor(school_id)).await?;
    match kitchen.send(PlaceOrder(order)).await?? {
        Placed::New(event) => {
            // Its receipt goes out now, not at the next poll.
            state.dispatcher.do_send(Nudge);
            Ok(HttpResponse::Created().json(OrderView::from(event.order)))
        }
        Placed::Existing(order) => Ok(HttpResponse::Ok().json(OrderView::from(order))),
    }
}

/// The order's school and student, once the caller may see it.
async fn authorised_order(
    state: &AppState,
    who: &Principal,
    order_id: &str,
) -> Result<(String, Issuer), ApiError> {
    let (school_id, student_id) = state
        .store
        .order_owner(order_id)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    let issuer = issuer_for(state, who, &school_id, &student_id).await?;
    Ok((school_id, issuer))
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
    let kitchen = state.registry.send(KitchenFor(school_id)).await?;
    let orders = kitchen.send(LiveOrders).await??;
    Ok(HttpResponse::Ok().json(orders.into_iter().map(OrderView::from).collect::<Vec<_>>()))
}

async fn transition(
    state: &AppState,
    who: &Principal,
    order_id: Uuid,
    body: TransitionBody,
    command: OrderCommand,
) -> Result<HttpResponse, ApiError> {
    crate::db::counted(
        "transition",
        decide_transition(state, who, order_id, body, command),
    )
    .await
}

/// A transition's lookups, counted as the transition's statements.
async fn decide_transition(
    state: &AppState,
    who: &Principal,
    order_id: Uuid,
    body: TransitionBody,
    command: OrderCommand,
) -> Result<HttpResponse, ApiError> {
    let order_id = order_id.to_string();
    let (school_id, issuer) = authorised_order(state, who, &order_id).await?;
    let reason = body
        .reason
        .as_deref()
        .map(|r| super::required_text("reason", r, 500))
        .transpose()?;
    let kitchen = state.registry.send(KitchenFor(school_id)).await?;
    let result = kitchen
        .send(TransitionOrder {
            order_id: order_id.clone(),
            command,
            issuer,
            actor_id: Some(who.user_id.clone()),
            reason,
            expected_version: body.expected_version,
            scan: None,
        })
        .await?;
    match result {
        Ok(event) => {
            state.dispatcher.do_send(Nudge);
            Ok(HttpResponse::Ok().json(OrderView::from(event.order)))
        }
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(tag = "kitchen", request_body(content = Option<TransitionBody>), responses((status = 200, body = OrderView), (status = 409, body = crate::error::ErrorBody)))]
#[post("/orders/{order_id}/confirm")]
pub async fn confirm_order(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: OptionalJson<TransitionBody>,
) -> Result<HttpResponse, ApiError> {
    transition(&state, &who, *path, body.0, OrderCommand::Confirm).await
}

#[utoipa::path(tag = "kitchen", request_body(content = Option<TransitionBody>), responses((status = 200, body = OrderView), (status = 409, body = crate::error::ErrorBody)))]
#[post("/orders/{order_id}/start")]
pub async fn start_order(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: OptionalJson<TransitionBody>,
) -> Result<HttpResponse, ApiError> {
    transition(&state, &who, *path, body.0, OrderCommand::Start).await
}

#[utoipa::path(tag = "kitchen", request_body(content = Option<TransitionBody>), responses((status = 200, body = OrderView), (status = 409, body = crate::error::ErrorBody)))]
#[post("/orders/{order_id}/ready")]
pub async fn ready_order(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: OptionalJson<TransitionBody>,
) -> Result<HttpResponse, ApiError> {
    transition(&state, &who, *path, body.0, OrderCommand::Ready).await
}

#[utoipa::path(tag = "orders", request_body(content = Option<TransitionBody>), responses((status = 200, body = OrderView), (status = 409, body = crate::error::ErrorBody)))]
#[post("/orders/{order_id}/cancel")]
pub async fn cancel_order(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: OptionalJson<TransitionBody>,
) -> Result<HttpResponse, ApiError> {
    transition(&state, &who, *path, body.0, OrderCommand::Cancel).await
}

/// A hand-over at the counter recorded by staff (RFID scans come through the reader API).
#[utoipa::path(tag = "kitchen", request_body(content = Option<TransitionBody>), responses((status = 200, body = OrderView), (status = 409, body = crate::error::ErrorBody)))]
#[post("/orders/{order_id}/pickup")]
pub async fn pickup_order(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: OptionalJson<TransitionBody>,
) -> Result<HttpResponse, ApiError> {
    use tiffin_actors::ports::Store;
    // A meal served despite an allergy (a scan answered `allergy_hold`) is handed over only
    // with staff saying what they checked; the reason is recorded with the pickup.
    let held = state
        .store
        .load_order(&path.to_string())
        .await?
        .is_some_and(|o| o.allergy_override.is_some() && o.state == OrderState::Ready);
    if held && body.0.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(ApiError::new(
            ErrorCode::AllergyAckRequired,
            "this meal was served despite an allergy: acknowledge the hold with a reason",
        ));
    }
    transition(&state, &who, *path, body.0, OrderCommand::PickUp).await
}

/// Undoes the last step within a short window (a mis-click); recorded as a recall.
#[utoipa::path(tag = "kitchen", request_body(content = Option<TransitionBody>), responses((status = 200, body = OrderView), (status = 409, body = crate::error::ErrorBody)))]
#[post("/orders/{order_id}/recall")]
pub async fn recall_order(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: OptionalJson<TransitionBody>,
) -> Result<HttpResponse, ApiError> {
    transition(&state, &who, *path, body.0, OrderCommand::Recall).await
}

/// The dashboard's bump: the next step forward from the state the caller saw.
#[utoipa::path(tag = "kitchen", request_body(content = Option<TransitionBody>), responses((status = 200, body = OrderView), (status = 409, body = crate::error::ErrorBody)))]
#[post("/orders/{order_id}/bump")]
pub async fn bump_order(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: OptionalJson<TransitionBody>,
) -> Result<HttpResponse, ApiError> {
    use tiffin_actors::ports::Store;
    let order_id = path.to_string();
    authorised_order(&state, &who, &order_id).await?;
    let current = state
        .store
        .load_order(&order_id)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    let command = bump(current.state).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidTransition,
            format!("an order that is {} has no next step", current.state),
        )
    })?;
    // Advance what the caller saw: if it moved meanwhile, that is a conflict, not a double step.
    let mut body = body.0;
    body.expected_version = Some(body.expected_version.unwrap_or(current.version));
    transition(&state, &who, *path, body, command).await
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
    let kitchen = state.registry.send(KitchenFor(school_id.clone())).await?;
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
