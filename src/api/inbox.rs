//! The signed-in user's inbox of in-app messages.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::notify::in_app::InboxMessage;
use crate::store::inbox;
use actix_web::{HttpResponse, delete, get, post, web};
use serde::Deserialize;
use uuid::Uuid;

type Data = web::Data<crate::state::AppState>;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    /// Only messages not yet read.
    #[serde(default)]
    pub unread: bool,
    /// At most this many, newest first (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// Only messages numbered below this: the next page is asked with the `seq` of the
    /// oldest message of the one before.
    #[param(minimum = 1)]
    pub before: Option<i64>,
}

#[utoipa::path(tag = "inbox", params(InboxQuery), responses((status = 200, body = [InboxMessage])))]
#[get("/me/inbox")]
pub async fn list_inbox(
    state: Data,
    who: Principal,
    query: web::Query<InboxQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::new(
            crate::error::ErrorCode::InvalidQuery,
            "limit must be between 1 and 200",
        ));
    }
    if query.before.is_some_and(|before| before < 1) {
        return Err(ApiError::new(
            crate::error::ErrorCode::InvalidQuery,
            "before must be a message's seq (1 or more)",
        ));
    }
    let page = inbox::Page {
        unread_only: query.unread,
        before: query.before,
        limit,
    };
    let rows = inbox::list(&state.db, &who.user_id, page).await?;
    Ok(HttpResponse::Ok().json(rows.iter().map(InboxMessage::from).collect::<Vec<_>>()))
}

#[utoipa::path(tag = "inbox", responses((status = 200, body = InboxMessage), (status = 404, body = crate::error::ErrorBody)))]
#[post("/me/inbox/{message_id}/read")]
pub async fn mark_inbox_read(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let (row, first_time) = inbox::mark_read(&state.db, &who.user_id, &path.to_string())
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    if first_time {
        // The user's other devices clear it too.
        state.bus.publish_frame(row.change_frame("inbox.read"));
    }
    Ok(HttpResponse::Ok().json(InboxMessage::from(&row)))
}

#[utoipa::path(tag = "inbox", responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
#[delete("/me/inbox/{message_id}")]
pub async fn delete_inbox_message(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let row = inbox::delete(&state.db, &who.user_id, &path.to_string())
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    state.bus.publish_frame(row.change_frame("inbox.deleted"));
    Ok(HttpResponse::NoContent().finish())
}
