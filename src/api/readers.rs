//! Pickup counters' hardware: readers (registered by a school admin, signing every request),
//! their scans and heartbeats (the cards they read: `super::cards`).

use super::Json;
use super::body::decode;
use super::schools::existing_school;
use super::{required_text, utc};
use crate::auth::Principal;
use crate::db::models::{ReaderRow, ScanRow, now};
use crate::db::new_id;
use crate::error::{ApiError, ErrorCode};
use crate::rfid::{self, ScanAnswer, ScanIn};
use crate::store;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<crate::state::AppState>;

/// What RFID works with, lent from the app's state.
fn rfid_hub(state: &crate::state::AppState) -> rfid::Hub<'_> {
    rfid::Hub {
        config: &state.config,
        db: &state.db,
        store: &state.store,
        registry: &state.registry,
        kitchens: &state.kitchens,
        bus: state.bus.as_ref(),
        cluster: state.cluster.as_deref(),
        limits: &state.limits,
        reader_key: &state.reader_key,
        seen_signatures: &state.seen_signatures,
    }
}

const MAX_BATCH: usize = 500;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReader {
    pub name: String,
    /// The counter it stands at.
    pub counter_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct Reader {
    pub id: String,
    pub name: String,
    pub counter_id: String,
    /// Heard from (heartbeat or scan) within `rfid.reader_offline_after_secs`.
    pub online: bool,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub key_version: i32,
}

/// A reader with its secret: answered once, at registration or key rotation.
#[derive(Serialize, ToSchema)]
pub struct ReaderCredentials {
    #[serde(flatten)]
    pub reader: Reader,
    /// HMAC-SHA256 key for `X-Signature`; never shown again.
    pub secret: String,
}

pub(crate) fn reader_view(r: ReaderRow, offline_after_secs: i64) -> Reader {
    Reader {
        online: rfid::online(r.last_seen_at, offline_after_secs),
        last_seen_at: r.last_seen_at.map(utc),
        id: r.id,
        name: r.name,
        counter_id: r.counter_id,
        key_version: r.key_version,
    }
}

#[utoipa::path(tag = "rfid", request_body = NewReader,
    responses((status = 201, body = ReaderCredentials), (status = "4XX", body = crate::error::ErrorBody)))]
#[post("/schools/{school_id}/readers")]
pub async fn register_reader(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<NewReader>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    let counters = store::counters::counters(&state.db, &school_id).await?;
    if !counters.iter().any(|c| c.id == body.counter_id) {
        return Err(ApiError::validation(
            "counter_id is not a counter of this school",
        ));
    }
    let id = new_id();
    let secret = rfid::reader_secret(&state.reader_key, &id, 1);
    let row = ReaderRow {
        id,
        school_id,
        counter_id: body.counter_id.clone(),
        name: required_text("name", &body.name, 80)?,
        secret_hash: rfid::secret_fingerprint(&secret),
        last_seen_at: None,
        created_at: now(),
        key_version: 1,
        active: true,
    };
    crate::db::insert(&state.db, &row).await?;
    let offline = state.config.rfid.reader_offline_after_secs;
    Ok(HttpResponse::Created().json(ReaderCredentials {
        reader: reader_view(row, offline),
        secret,
    }))
}

#[utoipa::path(tag = "rfid", responses((status = 200, body = [Reader])))]
#[get("/schools/{school_id}/readers")]
pub async fn list_readers(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_kitchen(&school_id)?;
    existing_school(&state, &school_id).await?;
    let offline = state.config.rfid.reader_offline_after_secs;
    let rows = store::readers::readers_of(&state.db, &school_id).await?;
    Ok(HttpResponse::Ok().json(
        rows.into_iter()
            .map(|r| reader_view(r, offline))
            .collect::<Vec<_>>(),
    ))
}

/// A new secret for a reader. The old one stops working at once on the node that rotates
/// it and, told over the node bus, on the others (within a second while the bus is away).
#[utoipa::path(tag = "rfid", responses((status = 200, body = ReaderCredentials), (status = 404, body = crate::error::ErrorBody)))]
#[post("/schools/{school_id}/readers/{reader_id}/rotate-key")]
pub async fn rotate_reader_key(
    state: Data,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (school_id, reader_id) = (path.0.to_string(), path.1.to_string());
    who.require_school_admin(&school_id)?;
    let mut row = store::readers::reader(&state.db, &reader_id)
        .await?
        .filter(|r| r.school_id == school_id)
        .ok_or_else(|| ApiError::not_found("reader"))?;
    row.key_version += 1;
    let secret = rfid::reader_secret(&state.reader_key, &row.id, row.key_version);
    row.secret_hash = rfid::secret_fingerprint(&secret);
    state
        .store
        .rotate_reader_key(&row.id, row.key_version, &row.secret_hash)
        .await?;
    if let Some(cluster) = &state.cluster {
        cluster.tell_reader_changed(&row.id);
    }
    let offline = state.config.rfid.reader_offline_after_secs;
    Ok(HttpResponse::Ok().json(ReaderCredentials {
        reader: reader_view(row, offline),
        secret,
    }))
}

/// One recorded scan.
#[derive(Serialize, ToSchema)]
pub struct ScanRecord {
    pub id: String,
    pub reader_id: String,
    pub seq: i64,
    pub card_uid: String,
    pub verdict: String,
    pub order_id: Option<String>,
    pub student_id: Option<String>,
    /// Set on a repeat read: the scan whose verdict it got.
    pub first_scan_id: Option<String>,
    pub read_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// How long deciding took, in microseconds.
    pub took_us: Option<i64>,
}

impl From<ScanRow> for ScanRecord {
    fn from(r: ScanRow) -> ScanRecord {
        ScanRecord {
            id: r.id,
            reader_id: r.reader_id,
            seq: r.seq,
            card_uid: r.card_uid,
            verdict: r.verdict,
            order_id: r.order_id,
            student_id: r.student_id,
            first_scan_id: r.first_scan_id,
            read_at: utc(r.read_at),
            received_at: utc(r.received_at),
            took_us: r.took_us,
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    /// At most this many, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[utoipa::path(tag = "rfid", params(ScanQuery), responses((status = 200, body = [ScanRecord])))]
#[get("/schools/{school_id}/scans")]
pub async fn list_scans(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    query: web::Query<ScanQuery>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_kitchen(&school_id)?;
    existing_school(&state, &school_id).await?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "limit must be between 1 and 1000",
        ));
    }
    let rows = store::scans::recent_scans(&state.db, &school_id, limit).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(ScanRecord::from).collect::<Vec<_>>()))
}

/// One card read, signed by the reader (`X-Reader-Id`, `X-Timestamp`, `X-Signature`:
/// hex HMAC-SHA256 of `{timestamp}\n{METHOD}\n{path}\n{body}` with the reader's secret,
/// the timestamp in Unix milliseconds).
#[utoipa::path(tag = "rfid", request_body = ScanIn,
    responses((status = 200, body = ScanAnswer), (status = 401, body = crate::error::ErrorBody)))]
#[post("/reader/scans")]
pub async fn post_scan(
    state: Data,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let began = std::time::Instant::now();
    // The reader's look-up counts as the scan's; `rfid::scan` counts the rest.
    let reader = crate::db::counted(
        "scan",
        rfid::authenticate_reader(&rfid_hub(&state), &req, &body),
    )
    .await?;
    rfid::scan_stage("reader", began);
    let scan: ScanIn = decode(&body)?;
    rfid::validate_scan(&scan)?;
    let answer = HttpResponse::Ok().json(rfid::scan(&rfid_hub(&state), &reader, &scan).await?);
    rfid::scan_stage("handler", began);
    Ok(answer)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanBatch {
    pub scans: Vec<ScanIn>,
}

#[derive(Serialize, ToSchema)]
pub struct ScanBatchAnswer {
    /// In reader-sequence order, whatever order they were sent in.
    pub results: Vec<ScanAnswer>,
}

/// Scans a reader buffered while offline: applied in its sequence order.
#[utoipa::path(tag = "rfid", request_body = ScanBatch,
    responses((status = 200, body = ScanBatchAnswer), (status = 401, body = crate::error::ErrorBody)))]
#[post("/reader/scans/batch")]
pub async fn post_scan_batch(
    state: Data,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let reader = crate::db::counted(
        "scan",
        rfid::authenticate_reader(&rfid_hub(&state), &req, &body),
    )
    .await?;
    let mut batch: ScanBatch = decode(&body)?;
    if batch.scans.is_empty() || batch.scans.len() > MAX_BATCH {
        return Err(ApiError::validation(format!(
            "a batch has 1 to {MAX_BATCH} scans"
        )));
    }
    for scan in &batch.scans {
        rfid::validate_scan(scan)?;
    }
    batch.scans.sort_by_key(|s| s.seq);
    let mut results = Vec::with_capacity(batch.scans.len());
    for scan in &batch.scans {
        results.push(rfid::scan(&rfid_hub(&state), &reader, scan).await?);
    }
    Ok(HttpResponse::Ok().json(ScanBatchAnswer { results }))
}

#[derive(Serialize, ToSchema)]
pub struct Heartbeat {
    pub reader_id: String,
    pub counter_id: String,
    pub server_time: DateTime<Utc>,
}

/// A reader says it is alive (signed like a scan; the body may be empty).
#[utoipa::path(tag = "rfid", request_body(content = String, description = "empty, or a JSON object", content_type = "application/json"),
    responses((status = 200, body = Heartbeat), (status = 401, body = crate::error::ErrorBody)))]
#[post("/reader/heartbeat")]
pub async fn heartbeat(
    state: Data,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let reader = rfid::authenticate_reader(&rfid_hub(&state), &req, &body).await?;
    Ok(HttpResponse::Ok().json(Heartbeat {
        reader_id: reader.id,
        counter_id: reader.counter_id,
        server_time: Utc::now(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    pub student_id: String,
    /// The counter where it will be used.
    pub counter_id: String,
}

/// A one-time code as staff see it: never the code itself.
#[derive(Serialize, ToSchema)]
pub struct IssuedCode {
    pub id: String,
    pub student_id: String,
    pub counter_id: String,
    pub expires_at: DateTime<Utc>,
    pub attempts_left: i32,
}

/// Staff at a counter ask for a one-time code for a student without a card; it goes to the
/// student and their guardians (6 digits, valid `rfid.code_ttl_secs`, 3 attempts).
#[utoipa::path(tag = "rfid", request_body = CodeRequest,
    responses((status = 201, body = IssuedCode), (status = 409, body = crate::error::ErrorBody)))]
#[post("/schools/{school_id}/pickup-codes")]
pub async fn request_code(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<CodeRequest>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_kitchen(&school_id)?;
    let row = rfid::issue_code(
        &rfid_hub(&state),
        &school_id,
        &body.student_id,
        &body.counter_id,
        &who.user_id,
    )
    .await?;
    Ok(HttpResponse::Created().json(IssuedCode {
        id: row.id,
        student_id: row.student_id,
        counter_id: row.counter_id,
        expires_at: utc(row.expires_at),
        attempts_left: rfid::CODE_ATTEMPTS - row.attempts,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeEntry {
    pub code: String,
}

/// Staff enter the code the student gives them: a right one hands the meal over like an
/// accepted scan (the answer is a scan verdict); a wrong one costs an attempt.
#[utoipa::path(tag = "rfid", request_body = CodeEntry,
    responses((status = 200, body = Object), (status = 422, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
#[post("/pickup-codes/{code_id}/verify")]
pub async fn verify_code(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<CodeEntry>,
) -> Result<HttpResponse, ApiError> {
    let row = store::counters::pickup_code(&state.db, &path.to_string())
        .await?
        .ok_or_else(|| ApiError::not_found("pickup code"))?;
    who.require_kitchen(&row.school_id)?;
    state
        .limits
        .check(crate::limits::Bucket::Codes, &who.user_id)
        .await?;
    let verdict = rfid::verify_code(&rfid_hub(&state), &row, &body.code).await?;
    Ok(HttpResponse::Ok().json(verdict))
}
