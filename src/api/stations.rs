//! Kitchen stations (grill, salad bar...): a school's stations, and an order's item marked
//! done at its station. Which station makes a meal is set on the meal (`api::meals`).

use super::Json;
use super::orders::{OrderView, authorised_order};
use super::required_text;
use super::schools::existing_school;
use crate::auth::Principal;
use crate::db::models::*;
use crate::db::{DbError, new_id};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store;
use actix_web::{HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use tiffin_actors::ItemDoneOrder;
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<AppState>;

#[derive(Serialize, ToSchema)]
pub struct Station {
    pub id: String,
    pub school_id: String,
    pub name: String,
}

impl From<StationRow> for Station {
    fn from(r: StationRow) -> Station {
        Station {
            id: r.id,
            school_id: r.school_id,
            name: r.name,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStation {
    /// Unique in the school, e.g. `Grill`.
    pub name: String,
}

#[utoipa::path(tag = "stations", request_body = CreateStation, responses((status = 201, body = Station)))]
#[post("/schools/{school_id}/stations")]
pub async fn create_station(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<CreateStation>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    let name = required_text("name", &body.name, 60).map_err(|e| e.with_field("name"))?;
    existing_school(&state, &school_id).await?;
    let row = StationRow {
        id: new_id(),
        school_id,
        name,
        created_at: now(),
    };
    crate::db::insert(&state.db, &row)
        .await
        .map_err(|e| match e {
            DbError::Duplicate(_) => ApiError::new(
                ErrorCode::Duplicate,
                format!("this school has a station named {:?}", row.name),
            )
            .with_field("name"),
            e => e.into(),
        })?;
    Ok(HttpResponse::Created().json(Station::from(row)))
}

#[utoipa::path(tag = "stations", responses((status = 200, body = Vec<Station>)))]
#[get("/schools/{school_id}/stations")]
pub async fn list_stations(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school(&school_id)?;
    existing_school(&state, &school_id).await?;
    let rows = store::stations::stations(&state.db, &school_id).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(Station::from).collect::<Vec<_>>()))
}

/// The station a meal is to be made at: one of the school's (`422 unknown_station`).
pub async fn station_of_school(
    state: &AppState,
    school_id: &str,
    station_id: Uuid,
) -> Result<String, ApiError> {
    let id = station_id.to_string();
    if store::stations::in_school(&state.db, school_id, &id).await? {
        Ok(id)
    } else {
        Err(ApiError::new(
            ErrorCode::UnknownStation,
            format!("station {id} is not one of this school's"),
        )
        .with_field("station_id"))
    }
}

/// Line `line` (counted from 0, as in the order's `items`) done at its station: published to
/// the kitchen's screens as `order.item_done`. Where the school has
/// `ready_when_stations_done`, the order becomes ready once every station is done.
#[utoipa::path(tag = "stations", responses((status = 200, body = OrderView), (status = 409, body = crate::error::ErrorBody)))]
#[post("/orders/{order_id}/items/{line}/done")]
pub async fn mark_item_done(
    state: Data,
    who: Principal,
    path: web::Path<(Uuid, u32)>,
) -> Result<HttpResponse, ApiError> {
    let (order_id, line) = (path.0.to_string(), path.1);
    let (school_id, _) = authorised_order(&state, &who, &order_id).await?;
    who.require_kitchen(&school_id)?;
    let kitchen = state.kitchens.of(&state.registry, &school_id).await?;
    let event = kitchen
        .send(ItemDoneOrder {
            order_id,
            line: line as usize,
            actor_id: Some(who.user_id.clone()),
            station: who.station_id.clone(),
        })
        .await??;
    Ok(HttpResponse::Ok().json(OrderView::from(event.order)))
}
