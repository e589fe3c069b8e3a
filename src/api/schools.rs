//! Schools: create, read, update; `existing_school`, the check every school-scoped handler makes.

use super::Json;
use super::{required_text, utc};
use crate::auth::Principal;
use crate::db::models::*;
use crate::db::new_id;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use actix_web::{HttpResponse, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<AppState>;

#[derive(Serialize, ToSchema)]
pub struct School {
    pub id: String,
    pub name: String,
    pub time_zone: String,
    /// Low-priority notifications wait until these end; absent when there are none.
    pub quiet_hours: Option<QuietHoursBody>,
    /// ISO 3166-1 country whose numbering plan reads phone numbers written without `+`.
    pub phone_region: String,
    /// School-local `HH:MM` the guardians' daily digest goes out; absent: the hub's
    /// `digest.at` (18:00 unless configured).
    pub digest_at: Option<String>,
    /// An order becomes ready by itself once every station has done its items (otherwise
    /// staff bump it on the expo screen).
    pub ready_when_stations_done: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// School-local times of day, `HH:MM`; a start after the end spans midnight.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursBody {
    pub start: String,
    pub end: String,
}

impl From<SchoolRow> for School {
    fn from(r: SchoolRow) -> School {
        School {
            id: r.id,
            name: r.name,
            time_zone: r.time_zone,
            quiet_hours: r
                .quiet_hours_start
                .zip(r.quiet_hours_end)
                .map(|(start, end)| QuietHoursBody { start, end }),
            phone_region: r.phone_region,
            digest_at: r.digest_at,
            ready_when_stations_done: r.ready_when_stations_done,
            created_at: utc(r.created_at),
            updated_at: utc(r.updated_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchool {
    pub name: String,
    /// IANA time zone, e.g. `America/Chicago`.
    pub time_zone: String,
    /// ISO 3166-1 country for phone numbers written without `+` (default `US`).
    pub phone_region: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSchool {
    pub name: Option<String>,
    pub time_zone: Option<String>,
    /// Equal start and end turn quiet hours off.
    pub quiet_hours: Option<QuietHoursBody>,
    pub phone_region: Option<String>,
    /// School-local `HH:MM` of the daily digest; `null` goes back to the hub's `digest.at`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub digest_at: Option<Option<String>>,
    /// Ready an order by itself once every station is done.
    pub ready_when_stations_done: Option<bool>,
}

/// A field that is present, even as `null` (`Some(None)`), against one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn time_of_day(field: &str, value: &str) -> Result<String, ApiError> {
    chrono::NaiveTime::parse_from_str(value, "%H:%M")
        .map(|t| t.format("%H:%M").to_string())
        .map_err(|_| ApiError::validation(format!("{field} must be HH:MM, got {value:?}")))
}

/// `Some(None)` turns quiet hours off.
fn quiet_hours(body: &QuietHoursBody) -> Result<Option<(String, String)>, ApiError> {
    let time = |field: &str, value: &str| time_of_day(&format!("quiet_hours.{field}"), value);
    let (start, end) = (time("start", &body.start)?, time("end", &body.end)?);
    Ok((start != end).then_some((start, end)))
}

const DEFAULT_PHONE_REGION: &str = "US";

fn phone_region(region: &str) -> Result<String, ApiError> {
    let region = region.trim().to_uppercase();
    region
        .parse::<phonenumber::country::Id>()
        .map(|_| region.clone())
        .map_err(|_| {
            ApiError::validation(format!(
                "phone_region {region:?} is not an ISO 3166-1 country"
            ))
            .with_field("phone_region")
        })
}

fn time_zone(tz: &str) -> Result<String, ApiError> {
    tz.parse::<chrono_tz::Tz>()
        .map(|_| tz.to_owned())
        .map_err(|_| ApiError::validation(format!("unknown time zone {tz:?}")))
}

/// The school must exist; 404 otherwise (after the caller's scope was checked).
pub async fn existing_school(state: &AppState, id: &str) -> Result<SchoolRow, ApiError> {
    store::schools::school(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("school"))
}

#[utoipa::path(tag = "schools", request_body = CreateSchool,
    responses((status = 201, body = School), (status = "4XX", body = crate::error::ErrorBody)))]
#[post("/schools")]
pub async fn create_school(
    state: Data,
    who: Principal,
    body: Json<CreateSchool>,
) -> Result<HttpResponse, ApiError> {
    who.require_admin()?;
    let at = now();
    let row = SchoolRow {
        id: new_id(),
        name: required_text("name", &body.name, 200)?,
        time_zone: time_zone(&body.time_zone)?,
        event_seq: 0,
        created_at: at,
        updated_at: at,
        quiet_hours_start: None,
        quiet_hours_end: None,
        notice_seq: 0,
        phone_region: body
            .phone_region
            .as_deref()
            .map_or(Ok(DEFAULT_PHONE_REGION.to_owned()), phone_region)?,
        digest_at: None,
        digest_done_on: None,
        ready_when_stations_done: false,
    };
    crate::db::insert(&state.db, &row).await?;
    Ok(HttpResponse::Created().json(School::from(row)))
}

#[utoipa::path(tag = "schools", responses((status = 200, body = Vec<School>)))]
#[get("/schools")]
pub async fn list_schools(state: Data, who: Principal) -> Result<HttpResponse, ApiError> {
    let only = if who.is_admin() {
        None
    } else {
        Some(
            who.school_id
                .clone()
                .ok_or_else(|| ApiError::forbidden("no school on this token"))?,
        )
    };
    let rows = store::schools::schools(&state.db, only.as_deref()).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(School::from).collect::<Vec<_>>()))
}

#[utoipa::path(tag = "schools", responses((status = 200, body = School), (status = 404, body = crate::error::ErrorBody)))]
#[get("/schools/{school_id}")]
pub async fn get_school(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = path.to_string();
    who.require_school(&id)?;
    Ok(HttpResponse::Ok().json(School::from(existing_school(&state, &id).await?)))
}

#[utoipa::path(tag = "schools", request_body = UpdateSchool, responses((status = 200, body = School)))]
#[patch("/schools/{school_id}")]
pub async fn update_school(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<UpdateSchool>,
) -> Result<HttpResponse, ApiError> {
    let id = path.to_string();
    who.require_school_admin(&id)?;
    let name = body
        .name
        .as_deref()
        .map(|n| required_text("name", n, 200))
        .transpose()?;
    let tz = body.time_zone.as_deref().map(time_zone).transpose()?;
    let quiet = body.quiet_hours.as_ref().map(quiet_hours).transpose()?;
    let region = body.phone_region.as_deref().map(phone_region).transpose()?;
    let digest_at = match &body.digest_at {
        Some(Some(at)) => Some(Some(time_of_day("digest_at", at)?)),
        Some(None) => Some(None),
        None => None,
    };
    let changes = store::schools::SchoolChanges {
        name: name.as_deref(),
        time_zone: tz.as_deref(),
        quiet_hours: quiet,
        phone_region: region.as_deref(),
        digest_at,
        ready_when_stations_done: body.ready_when_stations_done,
    };
    store::schools::update_school(&state.db, &id, changes).await?;
    Ok(HttpResponse::Ok().json(School::from(existing_school(&state, &id).await?)))
}
