//! An order's transitions through the kitchen: confirm, start, ready, cancel, pickup, recall, bump.

use super::OptionalJson;
use super::orders::{OrderView, authorised_order};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use actix_web::{HttpResponse, post, web};
use serde::Deserialize;
use tiffin_actors::TransitionOrder;
use tiffin_actors::domain::{OrderCommand, OrderState, bump};
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<AppState>;

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TransitionBody {
    /// The version the caller saw; if the order has moved on, the answer is `version_conflict`.
    pub expected_version: Option<i64>,
    pub reason: Option<String>,
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
    let kitchen = state.kitchens.of(&state.registry, &school_id).await?;
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
        Ok(event) => Ok(HttpResponse::Ok().json(OrderView::from(event.order))),
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
