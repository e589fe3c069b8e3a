//! Placing orders, and who may act on a student's orders; the order as clients see it.

use super::Json;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store;
use actix_web::{HttpRequest, HttpResponse, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tiffin_actors::PlaceOrder;
use tiffin_actors::domain::{Issuer, OrderSummary, Role};
use tiffin_actors::ports::{CommandError, Idempotency, NewOrder, NewOrderItem, Placed};
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
    /// The station that makes it, if its meal has one.
    pub station_id: Option<String>,
    /// Marked done at its station.
    pub done: bool,
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
                    station_id: l.station_id,
                    done: l.done,
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
    let kitchen = state.kitchens.of(&state.registry, &school_id).await?;
    match kitchen.send(PlaceOrder(order)).await?? {
        Placed::New(event) => Ok(HttpResponse::Created().json(OrderView::from(event.order))),
        Placed::Existing(order) => Ok(HttpResponse::Ok().json(OrderView::from(order))),
    }
}

/// The order's school and student, once the caller may see it.
pub(super) async fn authorised_order(
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
