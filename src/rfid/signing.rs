//! Readers' keys and signed requests: secrets derived from the hub's key, each request's
//! signature checked once (a replay is refused), the reader's row found and kept fresh.

use super::Hub;
use crate::db::models::{ReaderRow, now};
use crate::error::{ApiError, ErrorCode};
use actix_web::HttpRequest;
use chrono::{TimeDelta, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

pub(super) type HmacSha256 = Hmac<Sha256>;

pub const READER_HEADER: &str = "X-Reader-Id";
pub const TIMESTAMP_HEADER: &str = "X-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Signature";

/// How fresh a reader's `last_seen_at` is kept: this, plus up to `SEEN_SAVED_EVERY` for an
/// online reader's sightings, stays well under the shortest offline threshold (10 s).
const SEEN_GRAIN: TimeDelta = TimeDelta::seconds(5);

/// How often the online readers' noted sightings are stored.
pub const SEEN_SAVED_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The key reader secrets derive from: the hub's signing key, narrowed to this one purpose.
pub fn reader_master_key(jwt_secret: &[u8]) -> Vec<u8> {
    hmac_bytes(jwt_secret, b"tiffin reader keys v1")
}

pub(super) fn hmac_bytes(key: &[u8], data: &[u8]) -> Vec<u8> {
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        // HMAC takes keys of any length.
        Err(_) => Vec::new(),
    }
}

/// A reader's secret: derived from the hub's key, the reader and its key version, so nothing
/// secret is stored; shown once when the reader is registered (or its key rotated).
pub fn reader_secret(master: &[u8], reader_id: &str, key_version: i32) -> String {
    hex::encode(hmac_bytes(
        master,
        format!("reader:{reader_id}:{key_version}").as_bytes(),
    ))
}

pub fn secret_fingerprint(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// What a reader signs: `{timestamp}\n{METHOD}\n{path}\n{body}`, the timestamp in Unix
/// milliseconds.
fn signed_bytes(timestamp: i64, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{timestamp}\n{method}\n{path}\n").into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Signatures seen recently, per reader: a captured request replayed within the window is
/// refused even though its signature is valid.
#[derive(Default)]
pub struct SeenSignatures {
    seen: Mutex<HashMap<String, RecentSignatures>>,
}

/// (when, signature), oldest first.
type RecentSignatures = VecDeque<(i64, Vec<u8>)>;

impl SeenSignatures {
    /// False if this reader already used `signature`; forgets those older than the window.
    fn first_use(&self, reader: &str, signature: &[u8], at: i64, window: i64) -> bool {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let recent = seen.entry(reader.to_owned()).or_default();
        while recent.front().is_some_and(|(t, _)| *t < at - 2 * window) {
            recent.pop_front();
        }
        if recent.iter().any(|(_, s)| s == signature) {
            return false;
        }
        recent.push_back((at, signature.to_vec()));
        true
    }
}

/// Checks a reader's signed request; returns the reader.
pub async fn authenticate_reader(
    state: &Hub<'_>,
    req: &HttpRequest,
    body: &[u8],
) -> Result<ReaderRow, ApiError> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let unauthenticated = || {
        ApiError::new(
            ErrorCode::ReaderUnauthenticated,
            "sign reader requests with X-Reader-Id, X-Timestamp and X-Signature",
        )
    };
    let (Some(reader_id), Some(timestamp), Some(signature)) = (
        header(READER_HEADER),
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
    ) else {
        return Err(unauthenticated());
    };
    let timestamp: i64 = timestamp.parse().map_err(|_| unauthenticated())?;
    let signature = hex::decode(signature).map_err(|_| unauthenticated())?;
    // Milliseconds: a reader re-signing a retry gets a fresh signature.
    let window = state.config.rfid.signature_window_secs * 1000;
    let at = Utc::now().timestamp_millis();
    if (at - timestamp).abs() > window {
        return Err(ApiError::new(
            ErrorCode::SignatureExpired,
            "the request's timestamp is outside the accepted window: check the reader's clock",
        ));
    }
    let Ok(reader_id) = uuid::Uuid::parse_str(reader_id).map(|id| id.to_string()) else {
        return Err(unauthenticated());
    };
    let signed = |reader: &ReaderRow| -> Result<bool, ApiError> {
        let secret = reader_secret(state.reader_key, &reader.id, reader.key_version);
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
            .map_err(|_| ApiError::internal("reader key"))?;
        mac.update(&signed_bytes(
            timestamp,
            req.method().as_str(),
            req.path(),
            body,
        ));
        // Constant time: a forger learns nothing from how fast the refusal comes.
        Ok(mac.verify_slice(&signature).is_ok())
    };
    let Some(mut reader) = state.store.reader(&reader_id).await?.filter(|r| r.active) else {
        return Err(unauthenticated());
    };
    if !signed(&reader)? {
        // The row may be a second old: a key rotated through another node works at once.
        match state.store.reader_afresh(&reader_id).await? {
            Some(fresh) if fresh.key_version != reader.key_version && signed(&fresh)? => {
                reader = fresh
            }
            _ => {
                return Err(ApiError::new(
                    ErrorCode::SignatureInvalid,
                    "the signature does not match",
                ));
            }
        }
        if !reader.active {
            return Err(unauthenticated());
        }
    }
    // Shared by every node when Redis is there; this node's own window otherwise.
    let shared = match &state.cluster {
        Some(cluster) => {
            cluster
                .first_use_of_signature(&reader.id, &signature, window)
                .await
        }
        None => None,
    };
    let first_use = shared.unwrap_or_else(|| {
        state
            .seen_signatures
            .first_use(&reader.id, &signature, at, window)
    });
    if !first_use {
        return Err(ApiError::new(
            ErrorCode::SignatureReplayed,
            "this signed request was already received",
        ));
    }
    state
        .limits
        .check(crate::limits::Bucket::Reader, &reader.id)
        .await?;
    // Online status needs no finer grain: spare busy readers a write per scan, and an
    // online reader's sightings a round trip on the request path.
    let since_seen = reader.last_seen_at.map(|seen| now() - seen);
    let offline_after = TimeDelta::seconds(state.config.rfid.reader_offline_after_secs);
    match since_seen {
        Some(since) if since < SEEN_GRAIN => {}
        Some(since) if since < offline_after => state.store.note_reader_seen(&reader.id),
        _ => state.store.reader_seen(&reader.id).await?,
    }
    Ok(reader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfid::normalise_uid;

    #[test]
    fn secrets_derive_per_reader_and_version_and_signatures_cover_everything() {
        let master = reader_master_key(b"a hub key of more than thirty-two bytes");
        let a1 = reader_secret(&master, "a", 1);
        assert_eq!(a1.len(), 64);
        assert_ne!(a1, reader_secret(&master, "a", 2));
        assert_ne!(a1, reader_secret(&master, "b", 1));
        assert_eq!(a1, reader_secret(&master, "a", 1));
        assert_eq!(
            signed_bytes(7, "POST", "/x", b"{}"),
            b"7\nPOST\n/x\n{}".to_vec()
        );
        assert_eq!(normalise_uid(" 04:a1-b2 "), "04A1B2");
    }

    #[test]
    fn a_signature_is_good_once_per_window() {
        let seen = SeenSignatures::default();
        assert!(seen.first_use("r", b"sig", 100, 30));
        assert!(!seen.first_use("r", b"sig", 101, 30));
        assert!(seen.first_use("other", b"sig", 101, 30));
        assert!(seen.first_use("r", b"sig2", 101, 30));
        // Long after the window it is forgotten (and refused as expired anyway).
        assert!(seen.first_use("r", b"sig", 200, 30));
    }
}
