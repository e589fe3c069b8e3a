//! Who is calling: JWT access tokens (HS256), argon2 passwords, rotating refresh tokens,
//! and the role and school checks every handler makes.

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tiffin_actors::domain::Role;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub school: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> JwtKeys {
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    pub fn issue(
        &self,
        user_id: &str,
        role: Role,
        school: Option<&str>,
        ttl_secs: i64,
    ) -> Result<String, ApiError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_owned(),
            role,
            school: school.map(str::to_owned),
            iat: now,
            exp: now + ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::new(ErrorCode::TokenExpired, "access token expired; refresh it")
                }
                _ => ApiError::new(ErrorCode::Unauthenticated, "invalid access token"),
            })
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    pub school_id: Option<String>,
    /// When the token stops being valid (Unix seconds); long-lived sockets check it.
    pub expires_at: i64,
    /// When it was signed (Unix seconds).
    pub issued_at: i64,
}

/// The subject of an admin token `tiffin token` signs without naming a user: the operator who
/// holds the signing key, not a person in the database.
pub const OPERATOR: &str = "operator";

impl Principal {
    pub fn from_claims(claims: Claims) -> Principal {
        Principal {
            user_id: claims.sub,
            role: claims.role,
            school_id: claims.school,
            expires_at: claims.exp,
            issued_at: claims.iat,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// District admins see every school; everyone else only their own.
    pub fn require_school(&self, school_id: &str) -> Result<(), ApiError> {
        if self.is_admin() || self.school_id.as_deref() == Some(school_id) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::WrongSchool,
                "this token is not valid for that school",
            ))
        }
    }

    pub fn require_role(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "role {} may not do this",
                self.role
            )))
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        self.require_role(&[Role::Admin])
    }

    pub fn require_school_admin(&self, school_id: &str) -> Result<(), ApiError> {
        self.require_role(&[Role::SchoolAdmin, Role::Admin])?;
        self.require_school(school_id)
    }

    pub fn require_kitchen(&self, school_id: &str) -> Result<(), ApiError> {
        self.require_role(&[Role::KitchenStaff, Role::SchoolAdmin, Role::Admin])?;
        self.require_school(school_id)
    }
}

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

/// A fresh opaque token: 32 random bytes, URL-safe base64.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the database keeps of a refresh token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_tampering_fails() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let token = keys
            .issue("u1", Role::KitchenStaff, Some("s1"), 60)
            .unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.role),
            ("u1", Role::KitchenStaff)
        );

        let other = JwtKeys::new(b"another-secret-another-secret-xx");
        assert_eq!(
            other.verify(&token).map(|_| ()).map_err(|e| e.code),
            Err(ErrorCode::Unauthenticated)
        );
        let expired = keys.issue("u1", Role::Admin, None, -60).unwrap_or_default();
        assert_eq!(
            keys.verify(&expired).map(|_| ()).map_err(|e| e.code),
            Err(ErrorCode::TokenExpired)
        );
    }

    #[test]
    fn school_scoping() {
        let staff = Principal {
            user_id: "u".into(),
            role: Role::KitchenStaff,
            school_id: Some("a".into()),
            expires_at: i64::MAX,
            issued_at: 0,
        };
        assert!(staff.require_kitchen("a").is_ok());
        assert_eq!(
            staff.require_kitchen("b").map_err(|e| e.code),
            Err(ErrorCode::WrongSchool)
        );
        assert_eq!(
            staff.require_school_admin("a").map_err(|e| e.code),
            Err(ErrorCode::Forbidden)
        );
        let admin = Principal {
            user_id: "x".into(),
            role: Role::Admin,
            school_id: None,
            expires_at: i64::MAX,
            issued_at: 0,
        };
        assert!(admin.require_school_admin("b").is_ok());
    }
}
