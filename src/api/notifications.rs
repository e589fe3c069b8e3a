//! Notification settings of the signed-in user (devices, preferences) and the admins' dead
//! letters.

use super::Json;
use super::utc;
use crate::auth::Principal;
use crate::db::models::{OutboxRow, PreferenceRow, now};
use crate::error::{ApiError, ErrorCode};
use crate::store;
use actix_web::{HttpResponse, delete, get, post, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tiffin_actors::domain::Role;
use tiffin_actors::notices::{Channel, Kind, Preference, Priority, Recipient};
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<crate::state::AppState>;

const PLATFORMS: [&str; 3] = ["android", "ios", "web"];
const MAX_TOKEN_LEN: usize = 4096;
const MAX_PREFERENCES: usize = 64;

// `PLATFORMS`, described for the OpenAPI document.
/// The device's platform.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum Platform {
    Android,
    Ios,
    Web,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    #[schema(value_type = Platform)]
    pub platform: String,
    /// The FCM registration token the app got from Firebase.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct Device {
    pub id: String,
    pub platform: String,
    /// The token's last characters, to tell devices apart.
    pub token_suffix: String,
    /// False once FCM said the token is no longer registered.
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<crate::db::models::DeviceTokenRow> for Device {
    fn from(r: crate::db::models::DeviceTokenRow) -> Device {
        let skip = r.token.chars().count().saturating_sub(6);
        Device {
            id: r.id,
            platform: r.platform,
            token_suffix: r.token.chars().skip(skip).collect(),
            active: r.active,
            created_at: utc(r.created_at),
            updated_at: utc(r.updated_at),
        }
    }
}

/// Registers this device for push. The same token again is the same device (200).
#[utoipa::path(tag = "notifications", request_body = NewDevice,
    responses((status = 201, body = Device), (status = 200, body = Device), (status = "4XX", body = crate::error::ErrorBody)))]
#[post("/me/devices")]
pub async fn register_device(
    state: Data,
    who: Principal,
    body: Json<NewDevice>,
) -> Result<HttpResponse, ApiError> {
    if !PLATFORMS.contains(&body.platform.as_str()) {
        return Err(ApiError::validation(format!(
            "platform must be one of {}",
            PLATFORMS.join(", ")
        )));
    }
    let token = body.token.trim();
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::validation(format!(
            "token must be 1 to {MAX_TOKEN_LEN} characters without spaces"
        )));
    }
    let (row, created) =
        store::devices::register_device_token(&state.db, &who.user_id, &body.platform, token)
            .await?;
    let mut reply = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(reply.json(Device::from(row)))
}

#[utoipa::path(tag = "notifications", responses((status = 200, body = [Device])))]
#[get("/me/devices")]
pub async fn list_devices(state: Data, who: Principal) -> Result<HttpResponse, ApiError> {
    let rows = store::devices::device_tokens_of(&state.db, &who.user_id).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(Device::from).collect::<Vec<_>>()))
}

#[utoipa::path(tag = "notifications", responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
#[delete("/me/devices/{device_id}")]
pub async fn remove_device(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    if store::devices::delete_device_token(&state.db, &who.user_id, &path.to_string()).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found("device"))
    }
}

/// One kind of message and the channels it comes on for this user.
#[derive(Serialize, ToSchema)]
pub struct KindPreferences {
    pub kind: String,
    pub priority: String,
    /// Critical messages come on the default channels whatever is chosen here, and fall back
    /// from push to SMS.
    pub critical: bool,
    /// Channel -> on or off, as chosen or by default: in-app and push for everything, email
    /// for high and critical news and the daily digest (`daily_digest`, email only), SMS only
    /// if chosen.
    pub channels: BTreeMap<String, bool>,
}

#[derive(Serialize, ToSchema)]
pub struct Preferences {
    pub kinds: Vec<KindPreferences>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferenceChange {
    /// e.g. `order_ready`.
    pub kind: String,
    /// `in_app`, `push`, `email` or `sms`.
    pub channel: String,
    pub enabled: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferenceChanges {
    pub preferences: Vec<PreferenceChange>,
}

async fn preferences_view(state: &Data, user_id: &str) -> Result<Preferences, ApiError> {
    let rows = store::devices::preferences_of(&state.db, user_id).await?;
    let me = Recipient {
        user_id: user_id.to_owned(),
        name: String::new(),
        email: None,
        phone: None,
        locale: String::new(),
        has_push: false,
        preferences: rows
            .iter()
            .filter_map(|r| {
                Some(Preference {
                    kind: Kind::parse(&r.event_kind)?,
                    channel: Channel::parse(&r.channel)?,
                    enabled: r.enabled,
                })
            })
            .collect(),
    };
    let kinds = Kind::ALL
        .into_iter()
        .filter(|kind| kind.chosen_by_people())
        .map(|kind| {
            let priority = kind.rule().priority;
            KindPreferences {
                kind: kind.as_str().to_owned(),
                priority: priority.as_str().to_owned(),
                critical: priority == Priority::Critical,
                channels: Channel::ALL
                    .into_iter()
                    .filter(|c| kind.offers(*c))
                    .map(|c| (c.as_str().to_owned(), me.wants(kind, c)))
                    .collect(),
            }
        })
        .collect();
    Ok(Preferences { kinds })
}

#[utoipa::path(tag = "notifications", responses((status = 200, body = Preferences)))]
#[get("/me/preferences")]
pub async fn get_preferences(state: Data, who: Principal) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(preferences_view(&state, &who.user_id).await?))
}

/// Turns channels on or off per kind of message; the rest stay as they were. All or nothing.
#[utoipa::path(tag = "notifications", request_body = PreferenceChanges,
    responses((status = 200, body = Preferences), (status = "4XX", body = crate::error::ErrorBody)))]
#[put("/me/preferences")]
pub async fn set_preferences(
    state: Data,
    who: Principal,
    body: Json<PreferenceChanges>,
) -> Result<HttpResponse, ApiError> {
    if body.preferences.len() > MAX_PREFERENCES {
        return Err(ApiError::validation(format!(
            "at most {MAX_PREFERENCES} changes at once"
        )));
    }
    let at = now();
    let rows = body
        .preferences
        .iter()
        .map(|p| {
            let kind = Kind::parse(&p.kind)
                .filter(|k| k.chosen_by_people())
                .ok_or_else(|| ApiError::validation(format!("unknown kind {:?}", p.kind)))?;
            let channel = Channel::parse(&p.channel)
                .ok_or_else(|| ApiError::validation(format!("unknown channel {:?}", p.channel)))?;
            if !kind.offers(channel) {
                return Err(ApiError::validation(format!(
                    "{} does not come by {}",
                    kind.as_str(),
                    channel.as_str()
                )));
            }
            Ok(PreferenceRow {
                user_id: who.user_id.clone(),
                event_kind: kind.as_str().to_owned(),
                channel: channel.as_str().to_owned(),
                enabled: p.enabled,
                updated_at: at,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    store::devices::set_preferences(&state.db, &rows).await?;
    Ok(HttpResponse::Ok().json(preferences_view(&state, &who.user_id).await?))
}

/// A message dispatch gave up on, with why.
#[derive(Serialize, ToSchema)]
pub struct DeadLetter {
    pub id: String,
    pub school_id: String,
    pub recipient_id: String,
    pub channel: String,
    pub kind: String,
    pub priority: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<OutboxRow> for DeadLetter {
    fn from(r: OutboxRow) -> DeadLetter {
        DeadLetter {
            id: r.id,
            school_id: r.school_id,
            recipient_id: r.recipient_id,
            channel: r.channel,
            kind: r.template,
            priority: Priority::from_rank(r.priority).as_str().to_owned(),
            attempts: r.attempts,
            last_error: r.last_error,
            created_at: utc(r.created_at),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// One school's (required for a school admin).
    pub school_id: Option<Uuid>,
    /// At most this many, newest first (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

#[utoipa::path(tag = "notifications", params(DeadLetterQuery),
    responses((status = 200, body = [DeadLetter]), (status = "4XX", body = crate::error::ErrorBody)))]
#[get("/admin/dead-letters")]
pub async fn list_dead_letters(
    state: Data,
    who: Principal,
    query: web::Query<DeadLetterQuery>,
) -> Result<HttpResponse, ApiError> {
    who.require_role(&[Role::Admin, Role::SchoolAdmin])?;
    let school = query.school_id.map(|s| s.to_string());
    match &school {
        Some(school) => who.require_school(school)?,
        None if !who.is_admin() => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                "school_id is required for a school admin",
            ));
        }
        None => {}
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "limit must be between 1 and 500",
        ));
    }
    let rows = store::outbox::dead_letters(&state.db, school.as_deref(), limit).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(DeadLetter::from).collect::<Vec<_>>()))
}

/// Sends a dead letter again (after the address or the provider was fixed): queued as new,
/// with a fresh expiry.
#[utoipa::path(tag = "notifications",
    responses((status = 202), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
#[post("/admin/dead-letters/{notification_id}/requeue")]
pub async fn requeue_dead_letter(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    who.require_role(&[Role::Admin, Role::SchoolAdmin])?;
    let id = path.to_string();
    let row = store::outbox::outbox_row(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("notification"))?;
    who.require_school(&row.school_id)?;
    let expires_at = Kind::parse(&row.template)
        .map(|k| now() + chrono::Duration::seconds(k.rule().expires_after_secs));
    if !state.store.requeue_dead_letter(&id, expires_at).await? {
        return Err(ApiError::new(
            ErrorCode::NotDead,
            format!("notification {id} is {}, not dead", row.status),
        ));
    }
    Ok(HttpResponse::Accepted().finish())
}
