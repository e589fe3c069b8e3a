//! The menu: a school's meals, their prices, allergens and stations.

use super::Json;
use super::schools::existing_school;
use super::stations::station_of_school;
use super::{allergen_list, required_text, split_list};
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
pub struct Meal {
    pub id: String,
    pub school_id: String,
    pub name: String,
    pub price_cents: i64,
    pub allergens: Vec<String>,
    pub available: bool,
    /// The station that makes it (`/schools/{id}/stations`); null: none.
    pub station_id: Option<String>,
}

impl From<MealRow> for Meal {
    fn from(r: MealRow) -> Meal {
        Meal {
            allergens: split_list(&r.allergens),
            id: r.id,
            school_id: r.school_id,
            name: r.name,
            price_cents: r.price_cents,
            available: r.available,
            station_id: r.station_id,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMeal {
    pub name: String,
    pub price_cents: i64,
    #[serde(default)]
    pub allergens: Vec<String>,
    #[serde(default = "yes")]
    pub available: bool,
    /// One of the school's stations.
    pub station_id: Option<Uuid>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeal {
    pub name: Option<String>,
    pub price_cents: Option<i64>,
    pub allergens: Option<Vec<String>>,
    pub available: Option<bool>,
    /// One of the school's stations; `null` takes the meal off its station.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    pub station_id: Option<Option<Uuid>>,
}

/// A field that is present, even as `null` (`Some(None)`), against one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn price(cents: i64) -> Result<i64, ApiError> {
    if (0..=100_000).contains(&cents) {
        Ok(cents)
    } else {
        Err(ApiError::validation(
            "price_cents must be between 0 and 100000",
        ))
    }
}

#[utoipa::path(tag = "meals", request_body = CreateMeal, responses((status = 201, body = Meal)))]
#[post("/schools/{school_id}/meals")]
pub async fn create_meal(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<CreateMeal>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    existing_school(&state, &school_id).await?;
    let station_id = match body.station_id {
        Some(id) => Some(station_of_school(&state, &school_id, id).await?),
        None => None,
    };
    let at = now();
    let row = MealRow {
        id: new_id(),
        school_id,
        name: required_text("name", &body.name, 120)?,
        price_cents: price(body.price_cents)?,
        allergens: allergen_list(&body.allergens)?,
        available: body.available,
        station_id,
        created_at: at,
        updated_at: at,
    };
    crate::db::insert(&state.db, &row).await?;
    Ok(HttpResponse::Created().json(Meal::from(row)))
}

#[utoipa::path(tag = "meals", responses((status = 200, body = Vec<Meal>)))]
#[get("/schools/{school_id}/meals")]
pub async fn list_meals(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school(&school_id)?;
    existing_school(&state, &school_id).await?;
    let rows = store::schools::meals(&state.db, &school_id).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(Meal::from).collect::<Vec<_>>()))
}

#[utoipa::path(tag = "meals", request_body = UpdateMeal, responses((status = 200, body = Meal)))]
#[patch("/schools/{school_id}/meals/{meal_id}")]
pub async fn update_meal(
    state: Data,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
    body: Json<UpdateMeal>,
) -> Result<HttpResponse, ApiError> {
    let (school_id, meal_id) = (path.0.to_string(), path.1.to_string());
    // Kitchen staff mark meals sold out; the rest is set-up.
    if body.name.is_some()
        || body.price_cents.is_some()
        || body.allergens.is_some()
        || body.station_id.is_some()
    {
        who.require_school_admin(&school_id)?;
    } else {
        who.require_kitchen(&school_id)?;
    }
    let name = body
        .name
        .as_deref()
        .map(|n| required_text("name", n, 120))
        .transpose()?;
    let allergens = body.allergens.as_deref().map(allergen_list).transpose()?;
    let station_id = match body.station_id {
        Some(Some(id)) => Some(Some(station_of_school(&state, &school_id, id).await?)),
        Some(None) => Some(None),
        None => None,
    };
    let changes = store::schools::MealChanges {
        name: name.as_deref(),
        price_cents: body.price_cents.map(price).transpose()?,
        allergens: allergens.as_deref(),
        available: body.available,
        station_id: station_id.as_ref().map(Option::as_deref),
    };
    let row = store::schools::update_meal(&state.db, &school_id, &meal_id, &changes)
        .await
        .map_err(|e| match e {
            crate::db::DbError::NotFound => ApiError::not_found("meal"),
            e => e.into(),
        })?;
    Ok(HttpResponse::Ok().json(Meal::from(row)))
}
