//! Kitchen screens: a new screen asks for a pairing code and waits; staff enter the code with
//! a name and a kind; the screen collects its own credential and renews it by itself; staff
//! list and revoke screens (revoking closes the screen's socket at once).

use super::schools::existing_school;
use super::stations::station_of_school;
use super::{Json, required_text, utc};
use crate::auth::{Principal, ScreenKind, code_hash, random_token, token_hash};
use crate::db::models::{PairingRow, ScreenRow, now};
use crate::db::new_id;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store::screens::{self as store, Claim, PairRefusal, Renewal};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<AppState>;

/// A code for a new screen to show.
#[derive(Serialize, ToSchema)]
pub struct Pairing {
    /// What staff enter (`ABCD-EFGH`; case, spaces and dashes do not matter).
    pub code: String,
    /// What the screen asks `POST /auth/screens/claim` with; never shown.
    pub pairing_secret: String,
    /// Seconds until the code expires unentered.
    pub expires_in: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub pairing_secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct Waiting {
    /// `waiting`: nobody has entered the code yet.
    pub status: &'static str,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScreenRefresh {
    pub refresh_token: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairScreen {
    /// The code the screen shows.
    pub code: String,
    /// What staff call it ("Hot line", "Counter 2 board").
    pub name: String,
    pub kind: ScreenKind,
    /// The station a `station` screen shows: one of the school's stations. Required for a
    /// station screen, refused for any other kind.
    #[serde(default)]
    pub station_id: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct Screen {
    pub id: String,
    pub school_id: String,
    pub school_name: String,
    pub name: String,
    pub kind: ScreenKind,
    /// A station screen's station; null for every other kind.
    pub station_id: Option<String>,
    pub paired_at: DateTime<Utc>,
    /// Its last renewal or socket connection.
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// A screen's credential: a short-lived access token and the refresh token it renews with.
#[derive(Serialize, ToSchema)]
pub struct ScreenTokens {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires; renew before.
    pub expires_in: i64,
    /// Single use (the one before stays good for one more renewal); kept by the screen.
    pub refresh_token: String,
    pub screen: Screen,
}

fn screen_view(row: ScreenRow, school_name: String) -> Result<Screen, ApiError> {
    Ok(Screen {
        kind: ScreenKind::parse(&row.kind).ok_or_else(|| ApiError::internal("stored kind"))?,
        id: row.id,
        school_id: row.school_id,
        school_name,
        name: row.name,
        station_id: row.station_id,
        paired_at: utc(row.paired_at),
        last_seen_at: row.last_seen_at.map(utc),
    })
}

async fn tokens(
    state: &AppState,
    row: ScreenRow,
    refresh: String,
) -> Result<ScreenTokens, ApiError> {
    let kind = ScreenKind::parse(&row.kind).ok_or_else(|| ApiError::internal("stored kind"))?;
    let ttl = state.config.screens.access_token_ttl_secs;
    let access_token = state.keys.issue_screen(
        &row.id,
        &row.school_id,
        kind,
        row.station_id.as_deref(),
        ttl,
    )?;
    let school = existing_school(state, &row.school_id).await?;
    Ok(ScreenTokens {
        access_token,
        token_type: "Bearer",
        expires_in: ttl,
        refresh_token: refresh,
        screen: screen_view(row, school.name)?,
    })
}

fn refresh_expiry(state: &AppState) -> chrono::NaiveDateTime {
    now() + Duration::seconds(state.config.refresh_token_ttl_secs)
}

#[utoipa::path(tag = "screens",
    responses((status = 201, body = Pairing), (status = 429, body = crate::error::ErrorBody)))]
#[post("/auth/screens/pairings")]
pub async fn start_pairing(state: Data, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let client = state.limits.client_address(&req).unwrap_or_default();
    state
        .limits
        .check(crate::limits::Bucket::Pairing, &format!("screen:{client}"))
        .await?;
    let ttl = state.config.screens.pairing_code_ttl_secs;
    for _ in 0..4 {
        let code = crate::auth::pairing_code();
        let pairing_secret = random_token();
        let at = now();
        let row = PairingRow {
            id: new_id(),
            code_hash: code_hash(&code.replace('-', "")),
            secret_hash: code_hash(&pairing_secret),
            expires_at: at + Duration::seconds(ttl),
            screen_id: None,
            created_at: at,
        };
        match store::start_pairing(&state.db, &row, Duration::seconds(ttl)).await {
            Ok(()) => {
                return Ok(HttpResponse::Created().json(Pairing {
                    code,
                    pairing_secret,
                    expires_in: ttl,
                }));
            }
            // The same code is waiting elsewhere: draw another.
            Err(crate::db::DbError::Duplicate(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal("no free pairing code"))
}

#[utoipa::path(tag = "screens", request_body = ClaimRequest,
    responses((status = 200, body = ScreenTokens), (status = 202, body = Waiting),
        (status = 409, description = "pairing_code_expired: ask for a new code", body = crate::error::ErrorBody)))]
#[post("/auth/screens/claim")]
pub async fn claim_pairing(
    state: Data,
    body: Json<ClaimRequest>,
) -> Result<HttpResponse, ApiError> {
    let refresh = random_token();
    let claim = store::claim(
        &state.db,
        &code_hash(&body.pairing_secret),
        &token_hash(&refresh),
        refresh_expiry(&state),
    )
    .await?;
    match claim {
        Claim::Paired(row) => Ok(HttpResponse::Ok().json(tokens(&state, *row, refresh).await?)),
        Claim::Waiting => Ok(HttpResponse::Accepted().json(Waiting { status: "waiting" })),
        Claim::Expired => Err(ApiError::new(
            ErrorCode::PairingCodeExpired,
            "the pairing code expired before anyone entered it; ask for a new one",
        )),
        Claim::Unknown => Err(ApiError::new(
            ErrorCode::PairingCodeInvalid,
            "unknown pairing secret, or its credential was collected already",
        )),
    }
}

#[utoipa::path(tag = "screens", request_body = ScreenRefresh,
    responses((status = 200, body = ScreenTokens),
        (status = 401, description = "screen_revoked or refresh_token_invalid: pair again", body = crate::error::ErrorBody)))]
#[post("/auth/screens/refresh")]
pub async fn refresh_screen(
    state: Data,
    body: Json<ScreenRefresh>,
) -> Result<HttpResponse, ApiError> {
    let next = random_token();
    let renewal = store::renew(
        &state.db,
        &token_hash(&body.refresh_token),
        &token_hash(&next),
        refresh_expiry(&state),
    )
    .await?;
    match renewal {
        Renewal::Renewed(row) => Ok(HttpResponse::Ok().json(tokens(&state, *row, next).await?)),
        Renewal::Revoked => Err(ApiError::new(
            ErrorCode::ScreenRevoked,
            "this screen was revoked; pair it again",
        )),
        Renewal::Invalid => Err(ApiError::new(
            ErrorCode::RefreshTokenInvalid,
            "screen refresh token invalid or expired; pair the screen again",
        )),
    }
}

/// A station screen shows one of the school's stations; no other kind names a station.
async fn station_of_screen(
    state: &AppState,
    school_id: &str,
    kind: ScreenKind,
    station_id: Option<Uuid>,
) -> Result<Option<String>, ApiError> {
    match (kind, station_id) {
        (ScreenKind::Station, Some(id)) => station_of_school(state, school_id, id).await.map(Some),
        (ScreenKind::Station, None) => Err(ApiError::new(
            ErrorCode::StationRequired,
            "a station screen shows one station: send its station_id",
        )
        .with_field("station_id")),
        (_, Some(_)) => Err(ApiError::new(
            ErrorCode::ValidationFailed,
            format!(
                "only a station screen has a station; a {} screen has none",
                kind.as_str()
            ),
        )
        .with_field("station_id")),
        (_, None) => Ok(None),
    }
}

#[utoipa::path(tag = "screens", request_body = PairScreen,
    responses((status = 201, body = Screen), (status = "4XX", body = crate::error::ErrorBody)))]
#[post("/schools/{school_id}/screens")]
pub async fn pair_screen(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<PairScreen>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_kitchen(&school_id)?;
    state
        .limits
        .check(
            crate::limits::Bucket::Pairing,
            &format!("staff:{}", who.user_id),
        )
        .await?;
    let name = required_text("name", &body.name, 80)?;
    let code = crate::auth::normalise_code(&body.code).ok_or_else(|| {
        ApiError::new(
            ErrorCode::PairingCodeInvalid,
            "a pairing code is 8 letters and digits, as the screen shows it",
        )
        .with_field("code")
    })?;
    let school = existing_school(&state, &school_id).await?;
    let station_id = station_of_screen(&state, &school_id, body.kind, body.station_id).await?;
    let at = now();
    let row = ScreenRow {
        id: new_id(),
        school_id,
        name,
        kind: body.kind.as_str().to_owned(),
        refresh_hash: None,
        previous_refresh_hash: None,
        refresh_expires_at: refresh_expiry(&state),
        paired_by: who.user_id.clone(),
        paired_at: at,
        last_seen_at: None,
        revoked_at: None,
        station_id,
    };
    match store::pair(&state.db, &code_hash(&code), &row).await? {
        Ok(()) => Ok(HttpResponse::Created().json(screen_view(row, school.name)?)),
        Err(PairRefusal::Unknown) => Err(ApiError::new(
            ErrorCode::PairingCodeInvalid,
            "no screen shows this code; check it on the screen",
        )
        .with_field("code")),
        Err(PairRefusal::Expired) => Err(ApiError::new(
            ErrorCode::PairingCodeExpired,
            "this code expired; the screen shows a new one",
        )
        .with_field("code")),
        Err(PairRefusal::Used) => Err(ApiError::new(
            ErrorCode::PairingCodeUsed,
            "this code was entered already",
        )
        .with_field("code")),
    }
}

#[utoipa::path(tag = "screens", responses((status = 200, body = [Screen])))]
#[get("/schools/{school_id}/screens")]
pub async fn list_screens(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_kitchen(&school_id)?;
    let school = existing_school(&state, &school_id).await?;
    let screens = store::screens_of(&state.db, &school_id)
        .await?
        .into_iter()
        .map(|row| screen_view(row, school.name.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(screens))
}

#[utoipa::path(tag = "screens", responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
#[delete("/schools/{school_id}/screens/{screen_id}")]
pub async fn revoke_screen(
    state: Data,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (school_id, screen_id) = (path.0.to_string(), path.1.to_string());
    who.require_kitchen(&school_id)?;
    if !store::revoke(&state.db, &school_id, &screen_id).await? {
        return Err(ApiError::not_found("screen"));
    }
    let closed = state.screen_sockets.revoke(&screen_id);
    // The screen's sockets on the other nodes close as their nodes hear of it.
    if let Some(cluster) = &state.cluster {
        cluster.tell_screen_revoked(&screen_id);
    }
    tracing::info!(screen = %screen_id, sockets = closed, "screen revoked");
    Ok(HttpResponse::NoContent().finish())
}
