//! Access tokens (JWT, HS256) signed and checked with the hub's key, and the opaque refresh
//! tokens with what the database keeps of them.

use crate::error::{ApiError, ErrorCode};
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
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
    /// Set on a station screen's token: its station.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Built once: a `Validation` per request was a few allocations on every call.
    validation: Validation,
    /// Tokens this key verified lately, by their text. A client sends the same token with
    /// every request until it expires, and verifying it afresh (base64, HMAC, two JSON
    /// documents) was about a tenth of the HTTP path's CPU (BENCHMARKS.md "HTTP path"). The
    /// same text verifies the same way under the same key; only its expiry is checked again.
    verified: Mutex<HashMap<Box<str>, Claims>>,
}

/// Seconds a token is still taken after its `exp`, for clocks a little apart.
const LEEWAY_SECS: i64 = 5;
/// Tokens remembered at most; past it the memory starts again empty.
const VERIFIED_KEPT: usize = 8192;

impl JwtKeys {
    pub fn new(secret: &[u8]) -> JwtKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS.unsigned_abs();
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            verified: Mutex::new(HashMap::new()),
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
            station: None,
        };
        self.sign(&claims)
    }

    /// A paired screen's access token: kitchen staff of its school, narrowed to its kind.
    pub fn issue_screen(
        &self,
        screen_id: &str,
        school: &str,
        kind: super::ScreenKind,
        station: Option<&str>,
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
            station: station.map(str::to_owned),
        })
    }

    fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let now = Utc::now().timestamp();
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(claims) = verified.get(token) {
            if claims.exp >= now - LEEWAY_SECS {
                return Ok(claims.clone());
            }
            verified.remove(token);
        }
        drop(verified);
        let claims = self.verify_afresh(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_KEPT {
            verified.clear();
        }
        verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    fn verify_afresh(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
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

    #[test]
    fn a_remembered_token_still_expires_and_a_tampered_one_still_fails() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let token = keys.issue("u1", Role::Student, Some("s1"), 60).unwrap();
        assert_eq!(keys.verify(&token).unwrap().sub, "u1");
        assert_eq!(keys.verify(&token).unwrap().sub, "u1", "remembered");

        // What is remembered is what is used, until its expiry: then the text is verified
        // afresh (and this text, no token at all, fails).
        let claims = keys.verify(&token).unwrap();
        let remember = |claims: Claims| {
            keys.verified
                .lock()
                .unwrap()
                .insert("remembered".into(), claims)
        };
        remember(claims.clone());
        assert_eq!(keys.verify("remembered").unwrap().sub, "u1");
        remember(Claims {
            exp: Utc::now().timestamp() - LEEWAY_SECS - 1,
            ..claims
        });
        assert_eq!(
            keys.verify("remembered").map(|_| ()).map_err(|e| e.code),
            Err(ErrorCode::Unauthenticated)
        );

        // A token whose text differs in one character is not the remembered one.
        let mut tampered = token.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(
            keys.verify(&tampered).map(|_| ()).map_err(|e| e.code),
            Err(ErrorCode::Unauthenticated)
        );
    }
}
