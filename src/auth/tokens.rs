//! Access tokens (JWT, HS256) signed and checked with the hub's key, and the opaque refresh
//! tokens with what the database keeps of them.

use crate::error::{ApiError, ErrorCode};
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
    /// Set on a paired screen's token: its kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<super::ScreenKind>,
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
            screen: None,
        };
        self.sign(&claims)
    }

    /// A paired screen's access token: kitchen staff of its school, narrowed to its kind.
    pub fn issue_screen(
        &self,
        screen_id: &str,
        school: &str,
        kind: super::ScreenKind,
        ttl_secs: i64,
    ) -> Result<String, ApiError> {
        let now = Utc::now().timestamp();
        self.sign(&Claims {
            sub: screen_id.to_owned(),
            role: Role::KitchenStaff,
            school: Some(school.to_owned()),
            iat: now,
            exp: now + ttl_secs,
            screen: Some(kind),
        })
    }

    fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
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
}
