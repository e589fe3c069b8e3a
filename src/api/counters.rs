//! Pickup counters of a school; closing one moves the meals waiting there.

use super::Json;
use super::required_text;
use super::schools::existing_school;
use crate::auth::Principal;
use crate::db::models::*;
use crate::db::new_id;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use actix_web::{HttpResponse, get, patch, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<AppState>;

#[derive(Serialize, ToSchema)]
pub struct Counter {
    pub id: String,
    pub school_id: String,
    pub number: i32,
    pub name: String,
    pub is_open: bool,
}

impl From<CounterRow> for Counter {
    fn from(r: CounterRow) -> Counter {
        Counter {
            id: r.id,
            school_id: r.school_id,
            number: r.number,
            name: r.name,
            is_open: r.is_open,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCounter {
    pub number: i32,
    pub name: Option<String>,
    #[serde(default)]
    pub is_open: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCounter {
    pub name: Option<String>,
    pub is_open: Option<bool>,
}

#[utoipa::path(tag = "counters", request_body = CreateCounter, responses((status = 201, body = Counter)))]
#[post("/schools/{school_id}/counters")]
pub async fn create_counter(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<CreateCounter>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    existing_school(&state, &school_id).await?;
    if !(1..=99).contains(&body.number) {
        return Err(ApiError::validation(
            "counter number must be between 1 and 99",
        ));
    }
    let at = now();
    let row = CounterRow {
        id: new_id(),
        school_id,
        number: body.number,
        name: match &body.name {
            Some(n) => required_text("name", n, 80)?,
            None => format!("Counter {}", body.number),
        },
        is_open: body.is_open,
        created_at: at,
        updated_at: at,
    };
    crate::db::insert(&state.db, &row).await?;
    Ok(HttpResponse::Created().json(Counter::from(row)))
}

#[utoipa::path(tag = "counters", responses((status = 200, body = Vec<Counter>)))]
#[get("/schools/{school_id}/counters")]
pub async fn list_counters(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school(&school_id)?;
    existing_school(&state, &school_id).await?;
    let rows = store::counters::counters(&state.db, &school_id).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(Counter::from).collect::<Vec<_>>()))
}

#[utoipa::path(tag = "counters", request_body = UpdateCounter, responses((status = 200, body = Counter)))]
#[patch("/schools/{school_id}/counters/{counter_id}")]
pub async fn update_counter(
    state: Data,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
    body: Json<UpdateCounter>,
) -> Result<HttpResponse, ApiError> {
    let (school_id, counter_id) = (path.0.to_string(), path.1.to_string());
    // Staff open and close counters; renaming is set-up.
    if body.name.is_some() {
        who.require_school_admin(&school_id)?;
    } else {
        who.require_kitchen(&school_id)?;
    }
    let name = body
        .name
        .as_deref()
        .map(|n| required_text("name", n, 80))
        .transpose()?;
    let row = store::counters::update_counter(
        &state.db,
        &school_id,
        &counter_id,
        name.as_deref(),
        body.is_open,
    )
    .await
    .map_err(|e| match e {
        crate::db::DbError::NotFound => ApiError::not_found("counter"),
        e => e.into(),
    })?;
    // Closing a counter moves the meals waiting there, and tells their students.
    if body.is_open == Some(false) {
        let kitchen = state.kitchens.of(&state.registry, &school_id).await?;
        // Each move's commit wakes dispatch (`DieselStore::amend`).
        kitchen
            .send(tiffin_actors::CounterClosed {
                counter_id: counter_id.clone(),
                actor_id: Some(who.user_id.clone()),
            })
            .await??;
    }
    Ok(HttpResponse::Ok().json(Counter::from(row)))
}
