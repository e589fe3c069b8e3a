//! RFID readers at the pickup counters: signed requests, and scans turned into verdicts. Each
//! scan is claimed by (reader, seq) before it is decided, so a retry or an offline replay gets
//! the first verdict; a hand-over is a version-guarded pickup through the kitchen, so two
//! readers never hand one meal over twice. Every scan is recorded with how long it took.

use crate::db::models::{ReaderRow, ScanRow, now};
use crate::error::{ApiError, ErrorCode};
use crate::repo;
use crate::state::AppState;
use actix_web::HttpRequest;
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tiffin_actors::domain::{Issuer, OrderCommand};
use tiffin_actors::ports::CommandError;
use tiffin_actors::rfid::{Card, CardStatus, Decision, Verdict, accepted, decide};
use tiffin_actors::{KitchenFor, TransitionOrder};
use utoipa::ToSchema;

type HmacSha256 = Hmac<Sha256>;

pub const READER_HEADER: &str = "X-Reader-Id";
pub const TIMESTAMP_HEADER: &str = "X-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Signature";
/// A claimed scan not decided within this long was abandoned (its node died): take it over.
const STALE_CLAIM: TimeDelta = TimeDelta::seconds(10);
/// How fresh a reader's `last_seen_at` is kept (well under the shortest offline threshold).
const SEEN_GRAIN: TimeDelta = TimeDelta::seconds(5);
/// Attempts at a hand-over that keep losing version races before giving up.
const HANDOVER_TRIES: usize = 3;

/// The key reader secrets derive from: the hub's signing key, narrowed to this one purpose.
pub fn reader_master_key(jwt_secret: &[u8]) -> Vec<u8> {
    hmac_bytes(jwt_secret, b"tiffin reader keys v1")
}

fn hmac_bytes(key: &[u8], data: &[u8]) -> Vec<u8> {
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
    state: &AppState,
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
    let reader = match uuid::Uuid::parse_str(reader_id) {
        Ok(id) => repo::reader(&state.db, &id.to_string()).await?,
        Err(_) => None,
    };
    let Some(reader) = reader.filter(|r| r.active) else {
        return Err(unauthenticated());
    };
    let secret = reader_secret(&state.reader_key, &reader.id, reader.key_version);
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .map_err(|_| ApiError::internal("reader key"))?;
    mac.update(&signed_bytes(
        timestamp,
        req.method().as_str(),
        req.path(),
        body,
    ));
    // Constant time: a forger learns nothing from how fast the refusal comes.
    if mac.verify_slice(&signature).is_err() {
        return Err(ApiError::new(
            ErrorCode::SignatureInvalid,
            "the signature does not match",
        ));
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
    // Online status needs no finer grain: spare busy readers a write per scan.
    if reader
        .last_seen_at
        .is_none_or(|seen| now() - seen >= SEEN_GRAIN)
    {
        repo::reader_seen(&state.db, &reader.id).await?;
    }
    Ok(reader)
}

/// One read of a card, as the reader numbers it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanIn {
    /// The reader's own sequence number: the same number always gets the same verdict.
    pub seq: i64,
    pub card_uid: String,
    /// When the reader read it (offline replays); default: when it arrives.
    pub read_at: Option<DateTime<Utc>>,
}

/// A verdict as answered to the reader.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScanAnswer {
    pub seq: i64,
    pub scan_id: String,
    /// `accepted`, `unknown_card`, `card_blocked`, `card_lost`, `wrong_school`,
    /// `no_ready_order`, `wrong_counter`, `already_picked_up` or `allergy_hold`, with details.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub verdict: Verdict,
    /// A repeat read inside the debounce window: the first read's verdict.
    pub debounced: bool,
    /// This (reader, seq) was answered before: the same answer again.
    pub replayed: bool,
}

pub fn validate_scan(scan: &ScanIn) -> Result<(), ApiError> {
    let uid = scan.card_uid.trim();
    if scan.seq < 0 {
        return Err(ApiError::validation("seq must be 0 or more"));
    }
    if uid.is_empty()
        || uid.len() > 64
        || !uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '-')
    {
        return Err(ApiError::validation(
            "card_uid must be 1 to 64 letters, digits, ':' or '-'",
        ));
    }
    Ok(())
}

/// The canonical form of a card UID: readers differ in case and separators.
pub fn normalise_uid(uid: &str) -> String {
    uid.trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn answer_of(row: &ScanRow, seq: i64, replayed: bool) -> Result<ScanAnswer, ApiError> {
    let verdict: Verdict = row
        .answer
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("scan without an answer"))?;
    Ok(ScanAnswer {
        seq,
        scan_id: row.id.clone(),
        verdict,
        debounced: row.first_scan_id.is_some(),
        replayed,
    })
}

/// Decides one scan of `reader`, exactly once per (reader, seq). Its statements are counted
/// as a scan's round trips; a hand-over's pickup is counted as a transition.
pub async fn scan(
    state: &AppState,
    reader: &ReaderRow,
    scan: &ScanIn,
) -> Result<ScanAnswer, ApiError> {
    crate::db::operation("scan");
    crate::db::counted("scan", decide_scan(state, reader, scan)).await
}

async fn decide_scan(
    state: &AppState,
    reader: &ReaderRow,
    scan: &ScanIn,
) -> Result<ScanAnswer, ApiError> {
    let started = Instant::now();
    let received = now();
    let uid = normalise_uid(&scan.card_uid);
    let read_at = scan
        .read_at
        .map(|t| t.naive_utc())
        .filter(|t| *t <= received + TimeDelta::minutes(1))
        .unwrap_or(received);
    // Claim (reader, seq); whoever holds it decides, everyone else gets its verdict.
    let row = ScanRow {
        id: uuid::Uuid::now_v7().to_string(),
        school_id: reader.school_id.clone(),
        reader_id: reader.id.clone(),
        seq: scan.seq,
        card_uid: uid.clone(),
        verdict: "pending".into(),
        answer: None,
        order_id: None,
        student_id: None,
        first_scan_id: None,
        read_at,
        received_at: received,
        took_us: None,
    };
    // Claim first (most scans are new): one statement; a retry or replay reads the claim.
    let claim = loop {
        if repo::claim_scan(&state.db, &row).await? {
            break row;
        }
        let Some(existing) = repo::scan_by_seq(&state.db, &reader.id, scan.seq).await? else {
            continue;
        };
        if existing.verdict != "pending" {
            return answer_of(&existing, scan.seq, true);
        }
        if received - existing.received_at < STALE_CLAIM {
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
            if started.elapsed() > Duration::from_secs(5) {
                return Err(ApiError::new(
                    ErrorCode::DatabaseUnavailable,
                    "this scan is still being decided; retry",
                ));
            }
            continue;
        }
        // Abandoned by a node that died mid-decision: take it over.
        break existing;
    };
    state
        .config
        .crash_point(crate::config::CrashPoint::ScanClaimed);
    let window = TimeDelta::milliseconds(state.config.rfid.debounce_ms);
    if let Some(first) =
        repo::first_scan_near(&state.db, &reader.id, &uid, read_at, window, &claim.id).await?
    {
        let mut answer = answer_of(&first, scan.seq, false)?;
        answer.scan_id = claim.id.clone();
        answer.debounced = true;
        repo::finish_scan(
            &state.db,
            &claim.id,
            &answer.verdict,
            first.order_id.as_deref(),
            first.student_id.as_deref(),
            Some(&first.id),
            started.elapsed(),
        )
        .await?;
        metrics::counter!("rfid_scans_total", "verdict" => answer.verdict.code(), "debounced" => "true")
            .increment(1);
        return Ok(answer);
    }
    let (verdict, order_id, student_id) =
        decide_and_hand_over(state, reader, &uid, &claim.id).await?;
    if matches!(verdict, Verdict::Accepted { .. }) {
        state
            .config
            .crash_point(crate::config::CrashPoint::ScanHandedOver);
    }
    repo::finish_scan(
        &state.db,
        &claim.id,
        &verdict,
        order_id.as_deref(),
        student_id.as_deref(),
        None,
        started.elapsed(),
    )
    .await?;
    metrics::counter!("rfid_scans_total", "verdict" => verdict.code(), "debounced" => "false")
        .increment(1);
    if let Verdict::CardLost { student_id } | Verdict::CardBlocked { student_id } = &verdict {
        card_in_use(state, reader, &uid, student_id, &verdict).await;
    }
    if let (Verdict::AllergyHold { order_id, note }, Some(student_id)) = (&verdict, &student_id) {
        allergy_hold(state, reader, student_id, order_id, note).await;
    }
    metrics::histogram!("rfid_scan_seconds").record(started.elapsed().as_secs_f64());
    Ok(ScanAnswer {
        seq: scan.seq,
        scan_id: claim.id,
        verdict,
        debounced: false,
        replayed: false,
    })
}

type Decided = (Verdict, Option<String>, Option<String>);

async fn decide_and_hand_over(
    state: &AppState,
    reader: &ReaderRow,
    uid: &str,
    scan_id: &str,
) -> Result<Decided, ApiError> {
    let card = repo::card_by_uid(&state.db, uid).await?.and_then(|c| {
        Some(Card {
            school_id: c.school_id,
            student_id: c.student_id,
            status: CardStatus::parse(&c.status)?,
        })
    });
    let reason = format!("rfid scan {scan_id} at {}", reader.name);
    hand_over(state, &reader.school_id, &reader.counter_id, card, reason).await
}

/// A student's orders a counter cares about today (see `repo::student_orders_of_day`), as
/// their latest committed views.
async fn orders_of_day(
    state: &AppState,
    school_id: &str,
    student_id: &str,
) -> Result<Vec<tiffin_actors::domain::OrderSummary>, ApiError> {
    repo::student_orders_of_day(&state.db, school_id, student_id)
        .await?
        .iter()
        .map(|snapshot| {
            serde_json::from_str(snapshot)
                .map_err(|e| ApiError::internal(format!("stored snapshot: {e}")))
        })
        .collect()
}

/// Decides a hand-over at a counter for the holder of `card` (a scanned card, or a verified
/// one-time code) and commits it as a version-guarded pickup recorded with `reason`.
async fn hand_over(
    state: &AppState,
    school_id: &str,
    counter_id: &str,
    card: Option<Card>,
    reason: String,
) -> Result<Decided, ApiError> {
    let student_id = card.as_ref().map(|c| c.student_id.clone());
    for _ in 0..HANDOVER_TRIES {
        let orders = match &card {
            Some(card) if card.school_id == school_id => {
                orders_of_day(state, school_id, &card.student_id).await?
            }
            _ => Vec::new(),
        };
        let order = match decide(card.as_ref(), school_id, counter_id, &orders) {
            Decision::Final(Verdict::AlreadyPickedUp { order_id })
                if repo::picked_up_because(&state.db, &order_id, &reason).await? =>
            {
                // This very scan handed it over before its node died: same verdict again.
                let order = orders.iter().find(|o| o.id == order_id);
                let verdict = order.map_or(
                    Verdict::AlreadyPickedUp {
                        order_id: order_id.clone(),
                    },
                    accepted,
                );
                return Ok((verdict, Some(order_id), student_id));
            }
            Decision::Final(verdict) => {
                let order_id = verdict_order(&verdict);
                return Ok((verdict, order_id, student_id));
            }
            Decision::HandOver(order) => *order,
        };
        let kitchen = state
            .registry
            .send(KitchenFor(school_id.to_owned()))
            .await
            .map_err(|e| ApiError::internal(format!("registry: {e}")))?;
        let handed = kitchen
            .send(TransitionOrder {
                order_id: order.id.clone(),
                command: OrderCommand::PickUp,
                issuer: Issuer::System,
                actor_id: None,
                reason: Some(reason.clone()),
                expected_version: Some(order.version),
            })
            .await
            .map_err(|e| ApiError::internal(format!("kitchen: {e}")))?;
        match handed {
            Ok(event) => {
                state.dispatcher.do_send(tiffin_actors::Nudge);
                return Ok((accepted(&event.order), Some(order.id), student_id));
            }
            // Someone else moved it first (another reader, the kitchen): look again.
            Err(CommandError::VersionConflict | CommandError::Rule(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        ErrorCode::VersionConflict,
        "the order kept changing while it was being handed over; scan again",
    ))
}

fn verdict_order(verdict: &Verdict) -> Option<String> {
    match verdict {
        Verdict::Accepted { order_id, .. }
        | Verdict::WrongCounter { order_id, .. }
        | Verdict::AlreadyPickedUp { order_id }
        | Verdict::AllergyHold { order_id, .. } => Some(order_id.clone()),
        Verdict::NoReadyOrder { order_id, .. } => order_id.clone(),
        Verdict::UnknownCard
        | Verdict::CardBlocked { .. }
        | Verdict::CardLost { .. }
        | Verdict::WrongSchool => None,
    }
}

/// A lost or blocked card was presented: the kitchen's screens show it at once and the
/// A lost or blocked card was presented: the kitchen's screens show it at once and the
/// student's guardians are told (critical). Repeat reads are debounced before they get here.
async fn card_in_use(
    state: &AppState,
    reader: &ReaderRow,
    uid: &str,
    student_id: &str,
    verdict: &Verdict,
) {
    let status = if matches!(verdict, Verdict::CardLost { .. }) {
        "lost"
    } else {
        "blocked"
    };
    let suffix = &uid[uid.len().saturating_sub(4)..];
    let data = serde_json::json!({"card": {"status": status, "uid_suffix": suffix}});
    let kind = tiffin_actors::notices::Kind::CardInUse;
    raise_alert(state, reader, student_id, kind, data).await;
}

/// A meal served despite an allergy is held at the counter: the kitchen's screens show it and
/// the guardians are told (critical), once per order.
async fn allergy_hold(
    state: &AppState,
    reader: &ReaderRow,
    student_id: &str,
    order_id: &str,
    note: &str,
) {
    match repo::scans_with_verdict(&state.db, order_id, "allergy_hold").await {
        Ok(1) => {}
        Ok(_) => return,
        Err(e) => return tracing::warn!(error = %e, "could not count allergy holds"),
    }
    let data = serde_json::json!({"order_id": order_id, "note": note});
    let kind = tiffin_actors::notices::Kind::AllergyHold;
    raise_alert(state, reader, student_id, kind, data).await;
}

/// An `alert.<kind>` frame on the kitchen's topic and the kind's notice to its audience:
/// `details` plus who, where and when.
async fn raise_alert(
    state: &AppState,
    reader: &ReaderRow,
    student_id: &str,
    kind: tiffin_actors::notices::Kind,
    mut details: serde_json::Value,
) {
    let student_name = match repo::user(&state.db, student_id).await {
        Ok(Some(user)) => user.display_name,
        _ => String::new(),
    };
    details["student_id"] = student_id.into();
    details["student_name"] = student_name.into();
    details["reader_id"] = reader.id.as_str().into();
    details["reader_name"] = reader.name.as_str().into();
    details["counter_id"] = reader.counter_id.as_str().into();
    details["at"] = serde_json::json!(Utc::now());
    state.bus.publish_frame(tiffin_actors::bus::Frame::alert(
        &reader.school_id,
        &format!("alert.{}", kind.as_str()),
        details.clone(),
    ));
    match state
        .store
        .record_notice(&reader.school_id, student_id, kind, details)
        .await
    {
        Ok(()) => state.dispatcher.do_send(tiffin_actors::Nudge),
        Err(e) => tracing::warn!(error = %e, reader = %reader.id, "could not queue the alert"),
    }
}

/// Wrong guesses a one-time code takes before it locks.
pub const CODE_ATTEMPTS: i32 = 3;

/// What a one-time code's MAC covers: the code's id and the code.
fn code_message(code_id: &str, code: &str) -> Vec<u8> {
    format!("pickup-code:{code_id}:{code}").into_bytes()
}

/// Issues a one-time code for a student without a card and sends it to them and their
/// guardians. Only the code's HMAC is kept.
pub async fn issue_code(
    state: &AppState,
    school_id: &str,
    student_id: &str,
    counter_id: &str,
    requested_by: &str,
) -> Result<crate::db::models::PickupCodeRow, ApiError> {
    state
        .limits
        .check(crate::limits::Bucket::Codes, student_id)
        .await?;
    let student = repo::user(&state.db, student_id)
        .await?
        .filter(|u| u.role == "student" && u.school_id.as_deref() == Some(school_id))
        .ok_or_else(|| ApiError::validation("student_id is not a student of this school"))?;
    let counter = repo::counters(&state.db, school_id)
        .await?
        .into_iter()
        .find(|c| c.id == counter_id)
        .ok_or_else(|| ApiError::validation("counter_id is not a counter of this school"))?;
    let ready = orders_of_day(state, school_id, student_id)
        .await?
        .iter()
        .any(|o| o.state == tiffin_actors::domain::OrderState::Ready);
    if !ready {
        return Err(ApiError::new(
            ErrorCode::NoReadyOrder,
            "the student has no meal ready to collect",
        ));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let code = format!("{:06}", rand::random_range(0..1_000_000));
    let at = now();
    let row = crate::db::models::PickupCodeRow {
        code_mac: hex::encode(hmac_bytes(&state.reader_key, &code_message(&id, &code))),
        id,
        school_id: school_id.to_owned(),
        student_id: student_id.to_owned(),
        counter_id: counter_id.to_owned(),
        status: "active".into(),
        attempts: 0,
        requested_by: requested_by.to_owned(),
        created_at: at,
        expires_at: at + TimeDelta::seconds(state.config.rfid.code_ttl_secs),
        used_at: None,
    };
    repo::insert_pickup_code(&state.db, &row).await?;
    let data = serde_json::json!({
        "student_name": student.display_name,
        "code": code,
        "counter_name": counter.name,
        "expires_at": row.expires_at.and_utc(),
    });
    let kind = tiffin_actors::notices::Kind::PickupCode;
    state
        .store
        .record_notice(school_id, student_id, kind, data)
        .await?;
    state.dispatcher.do_send(tiffin_actors::Nudge);
    Ok(row)
}

/// Checks a one-time code (in constant time, counting the attempt) and, when it is right,
/// hands the meal over exactly as an accepted scan would.
pub async fn verify_code(
    state: &AppState,
    row: &crate::db::models::PickupCodeRow,
    code: &str,
) -> Result<Verdict, ApiError> {
    let used = || ApiError::new(ErrorCode::CodeUsed, "this code was already used");
    let locked = || {
        ApiError::new(
            ErrorCode::CodeLocked,
            "too many wrong attempts: ask for a new code",
        )
    };
    match row.status.as_str() {
        "used" => return Err(used()),
        "locked" => return Err(locked()),
        _ => {}
    }
    if now() > row.expires_at {
        return Err(ApiError::new(
            ErrorCode::CodeExpired,
            "this code has expired: ask for a new one",
        ));
    }
    let Some(attempts) = repo::count_code_attempt(&state.db, &row.id, CODE_ATTEMPTS).await? else {
        return Err(locked());
    };
    let stored = hex::decode(&row.code_mac).map_err(ApiError::internal)?;
    let mut mac = HmacSha256::new_from_slice(&state.reader_key).map_err(ApiError::internal)?;
    mac.update(&code_message(&row.id, code.trim()));
    if mac.verify_slice(&stored).is_err() {
        if attempts >= CODE_ATTEMPTS {
            repo::close_code(&state.db, &row.id, "locked").await?;
            return Err(locked());
        }
        return Err(ApiError::new(
            ErrorCode::CodeInvalid,
            format!("wrong code; {} attempts left", CODE_ATTEMPTS - attempts),
        ));
    }
    if !repo::close_code(&state.db, &row.id, "used").await? {
        return Err(used());
    }
    let card = Card {
        school_id: row.school_id.clone(),
        student_id: row.student_id.clone(),
        status: CardStatus::Active,
    };
    let reason = format!("one-time code {}", row.id);
    let (verdict, ..) =
        hand_over(state, &row.school_id, &row.counter_id, Some(card), reason).await?;
    Ok(verdict)
}

/// Whether a reader has been heard from recently.
pub fn online(last_seen: Option<NaiveDateTime>, offline_after_secs: i64) -> bool {
    last_seen.is_some_and(|t| now() - t <= TimeDelta::seconds(offline_after_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

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
