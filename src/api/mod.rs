//! REST handlers, one per action. The URL map is in `app.rs`.

pub mod auth;
pub mod body;
mod caller;
pub mod cards;
pub mod counters;
pub mod guardians;
pub mod inbox;
pub mod meals;
pub mod notifications;
pub mod ops;
pub mod order_reads;
pub mod orders;
pub mod readers;
pub mod rosters;
pub mod schools;
pub mod screens;
pub mod stations;
pub mod transitions;
pub mod users;
pub mod waves;

pub use body::{Json, OptionalJson};

use crate::error::ApiError;
use chrono::{DateTime, NaiveDateTime, Utc};

pub fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
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
