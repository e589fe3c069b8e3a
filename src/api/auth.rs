//! Sign-in, token refresh and sign-out.

use super::Json;
use super::users::User;
use crate::auth::passwords::verify_password;
use crate::auth::{Principal, random_token, token_hash};
use crate::db::models::{RefreshTokenRow, UserRow, now};
use crate::db::new_id;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store::{self, sessions::Rotation};
use actix_web::{HttpResponse, get, post, web};
use chrono::Duration;
use serde::{Deserialize, Serialize};
use tiffin_actors::domain::Role;
use utoipa::ToSchema;

type Data = web::Data<AppState>;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// Email address or phone number.
    pub login: String,
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct Tokens {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Single use: each refresh returns a new one.
    pub refresh_token: String,
    pub user: User,
}

async fn issue(
    state: &AppState,
    user: UserRow,
    family: Option<String>,
) -> Result<Tokens, ApiError> {
    let role = Role::parse(&user.role).ok_or_else(|| ApiError::internal("stored role"))?;
    let ttl = state.config.access_token_ttl_secs;
    let access_token = state
        .keys
        .issue(&user.id, role, user.school_id.as_deref(), ttl)?;
    let refresh_token = random_token();
    let at = now();
    if let Some(family_id) = family {
        let row = RefreshTokenRow {
            id: new_id(),
            user_id: user.id.clone(),
            token_hash: token_hash(&refresh_token),
            family_id,
            expires_at: at + Duration::seconds(state.config.refresh_token_ttl_secs),
            revoked_at: None,
            created_at: at,
        };
        crate::db::insert(&state.db, &row).await?;
    }
    Ok(Tokens {
        access_token,
        token_type: "Bearer",
        expires_in: ttl,
        refresh_token,
        user: User::from(user),
    })
}

async fn dummy_hash() -> Result<String, ApiError> {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_try_init(|| {
            crate::auth::passwords::hash_password("not a password of anyone".into())
        })
        .await
        .cloned()
}

fn refused() -> ApiError {
    ApiError::new(ErrorCode::InvalidCredentials, "wrong login or password")
}

#[utoipa::path(tag = "auth", request_body = Login,
    responses((status = 200, body = Tokens), (status = 401, body = crate::error::ErrorBody)))]
#[post("/auth/login")]
pub async fn login(state: Data, body: Json<Login>) -> Result<HttpResponse, ApiError> {
    let login = body.login.trim();
    let login = if login.contains('@') {
        login.to_lowercase()
    } else {
        super::users::phone(login, None).unwrap_or_else(|_| login.to_owned())
    };
    // Per login name: guessing one account's password from many addresses is slow too.
    state
        .limits
        .check(crate::limits::Bucket::SignIn, &login)
        .await?;
    let user = store::people::user_by_login(&state.db, &login)
        .await?
        .filter(|u| u.active && u.password_hash.is_some());
    // Unknown accounts cost the same argon2 work: timing does not tell who exists.
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    let password = body.password.clone();
    let ok = match hash {
        Some(hash) => verify_password(password, hash).await?,
        None => {
            verify_password(password, dummy_hash().await?).await?;
            false
        }
    };
    let user = match user {
        Some(user) if ok => user,
        _ => return Err(refused()),
    };
    let tokens = issue(&state, user, Some(new_id())).await?;
    Ok(HttpResponse::Ok().json(tokens))
}

#[utoipa::path(tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = Tokens), (status = 401, body = crate::error::ErrorBody)))]
#[post("/auth/refresh")]
pub async fn refresh(state: Data, body: Json<RefreshRequest>) -> Result<HttpResponse, ApiError> {
    let next = random_token();
    let at = now();
    let row = RefreshTokenRow {
        id: new_id(),
        user_id: String::new(),
        token_hash: token_hash(&next),
        family_id: String::new(),
        expires_at: at + Duration::seconds(state.config.refresh_token_ttl_secs),
        revoked_at: None,
        created_at: at,
    };
    let invalid = || {
        ApiError::new(
            ErrorCode::RefreshTokenInvalid,
            "refresh token invalid, expired or already used; sign in again",
        )
    };
    match store::sessions::rotate_refresh_token(&state.db, &token_hash(&body.refresh_token), &row)
        .await?
    {
        Rotation::Rotated { user_id } => {
            let user = store::people::user(&state.db, &user_id)
                .await?
                .filter(|u| u.active)
                .ok_or_else(invalid)?;
            let mut tokens = issue(&state, user, None).await?;
            tokens.refresh_token = next;
            Ok(HttpResponse::Ok().json(tokens))
        }
        Rotation::Reused => {
            tracing::warn!("refresh token reused; its family is revoked");
            Err(invalid())
        }
        Rotation::Invalid => Err(invalid()),
    }
}

#[utoipa::path(tag = "auth", request_body = RefreshRequest, responses((status = 204)))]
#[post("/auth/logout")]
pub async fn logout(state: Data, body: Json<RefreshRequest>) -> Result<HttpResponse, ApiError> {
    store::sessions::revoke_family_of(&state.db, &token_hash(&body.refresh_token)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(tag = "auth", responses((status = 200, body = User)))]
#[get("/me")]
pub async fn me(state: Data, who: Principal) -> Result<HttpResponse, ApiError> {
    if who.user_id == crate::auth::OPERATOR && who.is_admin() {
        return Ok(HttpResponse::Ok().json(User::operator(&who)));
    }
    let user = store::people::user(&state.db, &who.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(HttpResponse::Ok().json(User::from(user)))
}
