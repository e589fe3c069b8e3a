//! Lunch waves (service windows): when each one is served and ordering closes.

use super::Json;
use super::required_text;
use super::schools::existing_school;
use crate::auth::Principal;
use crate::db::models::*;
use crate::db::new_id;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use actix_web::{HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<AppState>;

/// A lunch wave: school-local times of day, and how long before the start ordering and
/// cancelling close.
#[derive(Serialize, ToSchema)]
pub struct ServiceWindow {
    pub id: String,
    pub school_id: String,
    pub name: String,
    /// `HH:MM:SS`, school-local.
    pub starts_at: String,
    pub ends_at: String,
    pub order_cutoff_minutes: i32,
    pub cancel_deadline_minutes: i32,
}

impl From<ServiceWindowRow> for ServiceWindow {
    fn from(r: ServiceWindowRow) -> ServiceWindow {
        ServiceWindow {
            id: r.id,
            school_id: r.school_id,
            name: r.name,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            order_cutoff_minutes: r.order_cutoff_minutes,
            cancel_deadline_minutes: r.cancel_deadline_minutes,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceWindow {
    pub name: String,
    /// `HH:MM` or `HH:MM:SS` in the school's time zone.
    pub starts_at: String,
    pub ends_at: String,
    #[serde(default)]
    pub order_cutoff_minutes: i32,
    #[serde(default)]
    pub cancel_deadline_minutes: i32,
}

#[utoipa::path(tag = "schools", request_body = CreateServiceWindow, responses((status = 201, body = ServiceWindow)))]
#[post("/schools/{school_id}/service-windows")]
pub async fn create_service_window(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<CreateServiceWindow>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    existing_school(&state, &school_id).await?;
    let time = |field: &str, v: &str| {
        crate::store::parse_time_of_day(v.trim())
            .ok_or_else(|| ApiError::validation(format!("{field} must be HH:MM or HH:MM:SS")))
    };
    let (starts, ends) = (
        time("starts_at", &body.starts_at)?,
        time("ends_at", &body.ends_at)?,
    );
    if ends <= starts {
        return Err(ApiError::validation("ends_at must be after starts_at"));
    }
    for (field, minutes) in [
        ("order_cutoff_minutes", body.order_cutoff_minutes),
        ("cancel_deadline_minutes", body.cancel_deadline_minutes),
    ] {
        if !(0..=24 * 60).contains(&minutes) {
            return Err(ApiError::validation(format!(
                "{field} must be between 0 and 1440"
            )));
        }
    }
    let at = now();
    let row = ServiceWindowRow {
        id: new_id(),
        school_id,
        name: required_text("name", &body.name, 80)?,
        starts_at: starts.format("%H:%M:%S").to_string(),
        ends_at: ends.format("%H:%M:%S").to_string(),
        order_cutoff_minutes: body.order_cutoff_minutes,
        cancel_deadline_minutes: body.cancel_deadline_minutes,
        created_at: at,
        updated_at: at,
    };
    crate::db::insert(&state.db, &row).await?;
    Ok(HttpResponse::Created().json(ServiceWindow::from(row)))
}

#[utoipa::path(tag = "schools", responses((status = 200, body = Vec<ServiceWindow>)))]
#[get("/schools/{school_id}/service-windows")]
pub async fn list_service_windows(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school(&school_id)?;
    existing_school(&state, &school_id).await?;
    let rows = store::schools::service_windows(&state.db, &school_id).await?;
    Ok(HttpResponse::Ok().json(
        rows.into_iter()
            .map(ServiceWindow::from)
            .collect::<Vec<_>>(),
    ))
}
