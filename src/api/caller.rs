//! The request extractor of `Principal`: the bearer token verified with the hub's key, and
//! the caller's rate limit taken; a screen's credential narrowed to what its kind may call.

use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Principal, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate(&req).await })
    }
}

async fn authenticate(req: &HttpRequest) -> Result<Principal, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal("app state missing"))?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "send an access token: Authorization: Bearer <token>",
            )
        })?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "expected a Bearer token"))?;
    let principal = state
        .keys
        .verify(token.trim())
        .map(Principal::from_claims)?;
    state
        .limits
        .check(crate::limits::Bucket::User, &principal.user_id)
        .await?;
    if let Some(kind) = principal.screen {
        narrow_screen(req, state, kind, &principal.user_id).await?;
    }
    Ok(principal)
}

/// A screen's credential is taken only on the few operations its kind needs, and only while
/// the screen is not revoked (its access token may not have expired yet).
async fn narrow_screen(
    req: &HttpRequest,
    state: &AppState,
    kind: crate::auth::ScreenKind,
    screen_id: &str,
) -> Result<(), ApiError> {
    let pattern = req.match_pattern().unwrap_or_default();
    if !crate::auth::screen_may_call(kind, req.method().as_str(), &pattern) {
        return Err(ApiError::forbidden(format!(
            "a {} screen may not do this",
            kind.as_str()
        )));
    }
    if !crate::store::screens::is_active(&state.db, screen_id).await? {
        return Err(ApiError::new(
            ErrorCode::ScreenRevoked,
            "this screen was revoked; pair it again",
        ));
    }
    Ok(())
}
