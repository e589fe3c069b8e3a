//! The request extractor of `Principal`: the bearer token verified with the hub's key, and
//! the caller's rate limit taken.

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
    Ok(principal)
}
