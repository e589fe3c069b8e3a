//! REST handlers, one per action. The URL map is in `app.rs`.

pub mod admin;
pub mod auth;
pub mod inbox;
pub mod notifications;
pub mod ops;
pub mod orders;
pub mod readers;

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use chrono::{DateTime, NaiveDateTime, Utc};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

/// A JSON body that may be absent (then `T::default()`), with the same limits and error
/// codes as every other body.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<AppState>>()
            .map_or(64 * 1024, |s| s.config.max_body_bytes);
        let mut payload = payload.take();
        Box::pin(async move {
            let too_large = || ApiError::new(ErrorCode::BodyTooLarge, "request body too large");
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::new(ErrorCode::MalformedJson, format!("unreadable body: {e}"))
                })?;
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJson(T::default()));
            }
            // `null` is no body too (the document says the body may be null).
            serde_json::from_slice::<Option<T>>(&body)
                .map(|body| OptionalJson(body.unwrap_or_default()))
                .map_err(|e| {
                    if e.is_syntax() || e.is_eof() {
                        ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}"))
                    } else {
                        ApiError::new(ErrorCode::InvalidBody, format!("invalid body: {e}"))
                    }
                })
        })
    }
}

pub fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Trims and requires a non-empty string of at most `max` characters.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::validation(format!("{field} must not be empty")));
    }
    if v.chars().count() > max {
        return Err(ApiError::validation(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(v.to_owned())
}

/// Normalises a comma-separated allergen list: lower case, trimmed, sorted, unique.
pub fn allergen_list(values: &[String]) -> Result<String, ApiError> {
    let mut list: Vec<String> = Vec::new();
    for v in values {
        let v = v.trim().to_lowercase();
        if v.is_empty() || v.len() > 40 || v.contains(',') {
            return Err(ApiError::validation(format!("invalid allergen {v:?}")));
        }
        list.push(v);
    }
    list.sort();
    list.dedup();
    Ok(list.join(","))
}

pub fn split_list(stored: &str) -> Vec<String> {
    stored
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
