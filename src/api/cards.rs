//! Students' RFID cards: registered, listed, blocked, reported lost and replaced by a
//! school admin (a guardian may report their child's card lost).

use super::Json;
use super::schools::existing_school;
use super::utc;
use crate::auth::Principal;
use crate::db::models::{CardRow, now};
use crate::db::new_id;
use crate::error::{ApiError, ErrorCode};
use crate::rfid;
use crate::store;
use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tiffin_actors::domain::Role;
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<crate::state::AppState>;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCard {
    pub student_id: String,
    /// As the reader reports it; case and `:`/`-` separators do not matter.
    pub card_uid: String,
}

#[derive(Serialize, ToSchema)]
pub struct CardView {
    pub id: String,
    pub student_id: String,
    pub card_uid: String,
    /// `active`, `blocked`, `lost` or `replaced`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<CardRow> for CardView {
    fn from(r: CardRow) -> CardView {
        CardView {
            id: r.id,
            student_id: r.student_id,
            card_uid: r.card_uid,
            status: r.status,
            created_at: utc(r.created_at),
            updated_at: utc(r.updated_at),
        }
    }
}

fn card_uid(raw: &str) -> Result<String, ApiError> {
    let uid = rfid::normalise_uid(raw);
    if uid.is_empty() || uid.len() > 64 {
        return Err(ApiError::validation(
            "card_uid must have 1 to 64 letters or digits",
        ));
    }
    Ok(uid)
}

async fn new_card(
    state: &Data,
    school_id: &str,
    student_id: &str,
    raw_uid: &str,
) -> Result<CardRow, ApiError> {
    let student = store::people::user(&state.db, student_id)
        .await?
        .filter(|u| u.role == "student" && u.school_id.as_deref() == Some(school_id))
        .ok_or_else(|| ApiError::validation("student_id is not a student of this school"))?;
    let at = now();
    Ok(CardRow {
        id: new_id(),
        school_id: school_id.to_owned(),
        student_id: student.id,
        card_uid: card_uid(raw_uid)?,
        status: "active".into(),
        created_at: at,
        updated_at: at,
    })
}

#[utoipa::path(tag = "rfid", request_body = NewCard,
    responses((status = 201, body = CardView), (status = "4XX", body = crate::error::ErrorBody)))]
#[post("/schools/{school_id}/cards")]
pub async fn register_card(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<NewCard>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    let row = new_card(&state, &school_id, &body.student_id, &body.card_uid).await?;
    crate::db::insert(&state.db, &row).await?;
    Ok(HttpResponse::Created().json(CardView::from(row)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CardQuery {
    pub student_id: Option<Uuid>,
}

#[utoipa::path(tag = "rfid", params(CardQuery), responses((status = 200, body = [CardView])))]
#[get("/schools/{school_id}/cards")]
pub async fn list_cards(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    query: web::Query<CardQuery>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_kitchen(&school_id)?;
    existing_school(&state, &school_id).await?;
    let student = query.student_id.map(|s| s.to_string());
    let rows = store::cards::cards_of(&state.db, &school_id, student.as_deref()).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(CardView::from).collect::<Vec<_>>()))
}

/// The card, once the caller may manage it (a school admin of its school).
async fn managed_card(state: &Data, who: &Principal, id: &Uuid) -> Result<CardRow, ApiError> {
    let card = store::cards::card(&state.db, &id.to_string())
        .await?
        .ok_or_else(|| ApiError::not_found("card"))?;
    who.require_school_admin(&card.school_id)?;
    Ok(card)
}

async fn change_status(
    state: &Data,
    card: CardRow,
    from: &[&str],
    to: &str,
) -> Result<HttpResponse, ApiError> {
    if !store::cards::set_card_status(&state.db, &card.id, from, to).await? {
        return Err(ApiError::new(
            ErrorCode::InvalidTransition,
            format!("a {} card cannot become {to}", card.status),
        ));
    }
    let card = store::cards::card(&state.db, &card.id)
        .await?
        .ok_or_else(|| ApiError::not_found("card"))?;
    Ok(HttpResponse::Ok().json(CardView::from(card)))
}

#[utoipa::path(tag = "rfid", responses((status = 200, body = CardView), (status = 409, body = crate::error::ErrorBody)))]
#[post("/cards/{card_id}/block")]
pub async fn block_card(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let card = managed_card(&state, &who, &path).await?;
    change_status(&state, card, &["active", "lost"], "blocked").await
}

#[utoipa::path(tag = "rfid", responses((status = 200, body = CardView), (status = 409, body = crate::error::ErrorBody)))]
#[post("/cards/{card_id}/unblock")]
pub async fn unblock_card(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let card = managed_card(&state, &who, &path).await?;
    change_status(&state, card, &["blocked", "lost"], "active").await
}

/// A school admin or one of the student's guardians reports the card lost: it stops working.
#[utoipa::path(tag = "rfid", responses((status = 200, body = CardView), (status = 403, body = crate::error::ErrorBody)))]
#[post("/cards/{card_id}/report-lost")]
pub async fn report_card_lost(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let card = store::cards::card(&state.db, &path.to_string())
        .await?
        .ok_or_else(|| ApiError::not_found("card"))?;
    who.require_school(&card.school_id)?;
    let allowed = match who.role {
        Role::SchoolAdmin | Role::Admin => true,
        Role::Guardian => {
            store::people::is_guardian_of(&state.db, &who.user_id, &card.student_id).await?
        }
        _ => false,
    };
    if !allowed {
        return Err(ApiError::forbidden(
            "only a school admin or the student's guardian may report a card lost",
        ));
    }
    change_status(&state, card, &["active", "blocked"], "lost").await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replacement {
    pub card_uid: String,
}

/// Issues a new card for the same student; the old one stops working (`replaced`).
#[utoipa::path(tag = "rfid", request_body = Replacement,
    responses((status = 201, body = CardView), (status = 409, body = crate::error::ErrorBody)))]
#[post("/cards/{card_id}/replace")]
pub async fn replace_card(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<Replacement>,
) -> Result<HttpResponse, ApiError> {
    let old = managed_card(&state, &who, &path).await?;
    let new = new_card(&state, &old.school_id, &old.student_id, &body.card_uid).await?;
    if !store::cards::replace_card(&state.db, &old.id, &new).await? {
        return Err(ApiError::new(
            ErrorCode::InvalidTransition,
            "this card was already replaced",
        ));
    }
    Ok(HttpResponse::Created().json(CardView::from(new)))
}
