//! Sign-in (a password, or a one-time code sent by email or SMS), token refresh and
//! sign-out.

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
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tiffin_actors::domain::Role;
use tiffin_actors::notices::Channel;
use utoipa::ToSchema;

type Data = web::Data<AppState>;
type HmacSha256 = Hmac<Sha256>;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// Email address or phone number.
    pub login: String,
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// Email address or phone number: the code goes to it, by email or SMS.
    pub login: String,
}

#[derive(Serialize, ToSchema)]
pub struct CodeAccepted {
    /// The same whether or not anyone signs in with that login.
    pub message: &'static str,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeSignIn {
    /// The email address or phone number the code was sent to.
    pub login: String,
    /// The six digits received.
    pub code: String,
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

/// The login as stored, once its sign-in bucket allows another try: per login name, so
/// guessing one account from many addresses is slow too.
async fn limited_login(state: &Data, typed: &str) -> Result<String, ApiError> {
    let stored = stored_login(typed);
    state
        .limits
        .check(crate::limits::Bucket::SignIn, &stored)
        .await?;
    Ok(stored)
}

/// A login as stored: an email address in lower case, a phone number in E.164.
fn stored_login(typed: &str) -> String {
    let typed = typed.trim();
    if typed.contains('@') {
        typed.to_lowercase()
    } else {
        super::users::phone(typed, None).unwrap_or_else(|_| typed.to_owned())
    }
}

#[utoipa::path(tag = "auth", request_body = Login,
    responses((status = 200, body = Tokens), (status = 401, body = crate::error::ErrorBody)))]
#[post("/auth/login")]
pub async fn login(state: Data, body: Json<Login>) -> Result<HttpResponse, ApiError> {
    let login = limited_login(&state, &body.login).await?;
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

/// Attempts a sign-in code takes, right or wrong; after them it is void.
pub const SIGN_IN_CODE_ATTEMPTS: i32 = 5;

/// What a sign-in code's MAC covers: whose code it is, and the code.
fn sign_in_code_mac(key: &[u8], user_id: &str, code: &str) -> Result<HmacSha256, ApiError> {
    let mut mac = HmacSha256::new_from_slice(key).map_err(ApiError::internal)?;
    mac.update(format!("sign-in-code:{user_id}:{code}").as_bytes());
    Ok(mac)
}

/// Sends a one-time sign-in code to an email address or phone number, if an active person
/// signs in with it; the answer is the same either way.
#[utoipa::path(tag = "auth", request_body = CodeRequest,
    responses((status = 202, body = CodeAccepted), (status = 429, body = crate::error::ErrorBody)))]
#[post("/auth/code")]
pub async fn request_code(state: Data, body: Json<CodeRequest>) -> Result<HttpResponse, ApiError> {
    let asked = limited_login(&state, &body.login).await?;
    // Decided after answering: neither the answer nor its time tells whether anyone has
    // that login.
    let state = state.into_inner();
    actix_web::rt::spawn(async move {
        if let Err(e) = send_code(&state, &asked).await {
            tracing::warn!(error = %e, "a sign-in code was not sent");
        }
    });
    Ok(HttpResponse::Accepted().json(CodeAccepted {
        message: "if someone signs in with that login, a code is on its way to it",
    }))
}

async fn send_code(state: &AppState, asked: &str) -> Result<(), ApiError> {
    let Some(user) = store::people::user_by_login(&state.db, asked)
        .await?
        .filter(|u| u.active)
    else {
        return Ok(());
    };
    // The outbox keys a message by school: district admins (no school) sign in with a
    // password.
    let Some(school_id) = user.school_id.as_deref() else {
        return Ok(());
    };
    let channel = if user.email.as_deref() == Some(asked) {
        Channel::Email
    } else {
        Channel::Sms
    };
    // rand's thread generator is a CSPRNG (ChaCha12, seeded from the OS).
    let code = format!("{:06}", rand::random_range(0..1_000_000));
    let code_mac = hex::encode(
        sign_in_code_mac(&state.reader_key, &user.id, &code)?
            .finalize()
            .into_bytes(),
    );
    let expires_at = now() + Duration::seconds(state.config.sign_in_code_ttl_secs);
    let new = store::sign_in::NewCode {
        user_id: &user.id,
        school_id,
        name: &user.display_name,
        locale: &user.locale,
        channel,
        address: asked,
        code: &code,
        code_mac: &code_mac,
        expires_at,
    };
    state.store.commit_sign_in_code(new).await?;
    Ok(())
}

/// Signs in with a one-time code: the same tokens as a password sign-in. A code works once,
/// for its time and five attempts.
#[utoipa::path(tag = "auth", request_body = CodeSignIn,
    responses((status = 200, body = Tokens), (status = 401, body = crate::error::ErrorBody)))]
#[post("/auth/code/verify")]
pub async fn verify_code(state: Data, body: Json<CodeSignIn>) -> Result<HttpResponse, ApiError> {
    let asked = limited_login(&state, &body.login).await?;
    let invalid = || ApiError::new(ErrorCode::SignInCodeInvalid, "wrong login or code");
    let user = store::people::user_by_login(&state.db, &asked)
        .await?
        .filter(|u| u.active)
        .ok_or_else(invalid)?;
    let Some(live) = store::sign_in::count_attempt(&state.db, &user.id).await? else {
        return Err(invalid());
    };
    if live.attempts > SIGN_IN_CODE_ATTEMPTS || now() > live.expires_at {
        return Err(ApiError::new(
            ErrorCode::SignInCodeExpired,
            "this code has expired or was tried too often: ask for a new one",
        ));
    }
    let stored = hex::decode(&live.code_mac).map_err(ApiError::internal)?;
    // `verify_slice` compares in constant time.
    let right = sign_in_code_mac(&state.reader_key, &user.id, body.code.trim())?
        .verify_slice(&stored)
        .is_ok();
    if !right || !store::sign_in::consume(&state.db, &user.id, &live.code_mac).await? {
        return Err(invalid());
    }
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
