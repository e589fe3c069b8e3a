//! RFID readers at the pickup counters: signed requests, and scans turned into verdicts. Each
//! scan is claimed by (reader, seq) before it is decided, so a retry or an offline replay gets
//! the first verdict; a hand-over is a version-guarded pickup through the kitchen, so two
//! readers never hand one meal over twice. Every scan is recorded with how long it took.

use crate::db::models::{CardRow, ReaderRow, ScanRow, now};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store;
use actix_web::HttpRequest;
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tiffin_actors::domain::{Issuer, OrderCommand};
use tiffin_actors::ports::{CommandError, ScanClaim};
use tiffin_actors::rfid::{Card, CardStatus, Decision, Verdict, accepted, decide};
use tiffin_actors::{KitchenFor, TransitionOrder};
use utoipa::ToSchema;

type HmacSha256 = Hmac<Sha256>;

pub const READER_HEADER: &str = "X-Reader-Id";
pub const TIMESTAMP_HEADER: &str = "X-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Signature";
/// A scan's claim not decided within this long is dead (its node died, or hangs): settled by
/// the sweeper (or a retry), and its decider can no longer commit a hand-over.
pub const CLAIM_LEASE: TimeDelta = TimeDelta::seconds(10);
/// How often every node settles dead scan claims.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Dead claims settled at a time.
const SWEEP_BATCH: i64 = 500;
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
    let Ok(reader_id) = uuid::Uuid::parse_str(reader_id).map(|id| id.to_string()) else {
        return Err(unauthenticated());
    };
    let signed = |reader: &ReaderRow| -> Result<bool, ApiError> {
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
    // Online status needs no finer grain: spare busy readers a write per scan.
    if reader
        .last_seen_at
        .is_none_or(|seen| now() - seen >= SEEN_GRAIN)
    {
        state.store.reader_seen(&reader.id).await?;
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
    let node = state.store.node();
    // Claim (reader, seq); whoever holds it decides, everyone else gets its verdict.
    let row = ScanRow {
        id: uuid::Uuid::now_v7().to_string(),
        school_id: reader.school_id.clone(),
        reader_id: reader.id.clone(),
        seq: scan.seq,
        card_uid: uid.clone(),
        verdict: store::scans::SCAN_PENDING.into(),
        answer: None,
        order_id: None,
        student_id: None,
        first_scan_id: None,
        read_at,
        received_at: received,
        took_us: None,
        claimed_by: Some(node.id.clone()),
        claimed_at: Some(received),
        attempt: 1,
    };
    // Claim first (most scans are new), sent with the reads a new scan's decision needs; a
    // retry or replay reads the claim.
    let window = TimeDelta::milliseconds(state.config.rfid.debounce_ms);
    let facts = state
        .store
        .claim_scan(store::scan_claims::ScanToClaim {
            row: row.clone(),
            window,
        })
        .await?;
    let (claim, facts) = if facts.claimed {
        (row, Some(facts))
    } else {
        loop {
            let Some(existing) = store::scans::scan_by_seq(&state.db, &reader.id, scan.seq).await?
            else {
                if started.elapsed() > Duration::from_secs(5) {
                    return Err(still_deciding());
                }
                if store::scans::claim_scan(&state.db, &row).await? {
                    break (row, None);
                }
                continue;
            };
            match existing.verdict.as_str() {
                store::scans::SCAN_ABANDONED => {
                    // Its node died before deciding and nothing was handed over: decide afresh.
                    match store::scans::take_over_scan(&state.db, &existing, &node.id, now())
                        .await?
                    {
                        Some(taken) => break (taken, None),
                        None => continue,
                    }
                }
                store::scans::SCAN_PENDING => {
                    let claimed_at = existing.claimed_at.unwrap_or(existing.received_at);
                    if now() - claimed_at >= CLAIM_LEASE {
                        // Its node died mid-decision: settle it as the sweeper would, now.
                        settle(&state.db, node, vec![existing]).await?;
                        continue;
                    }
                    if started.elapsed() > Duration::from_secs(5) {
                        return Err(still_deciding());
                    }
                    actix_web::rt::time::sleep(Duration::from_millis(25)).await;
                }
                _ => return answer_of(&existing, scan.seq, true),
            }
        }
    };
    state
        .config
        .crash_point(crate::config::CrashPoint::ScanClaimed);
    // A claim taken over or taken late reads its facts now; its orders, when handing over.
    let (first, card, orders) = match facts {
        Some(facts) => (facts.first, facts.card, Some(facts.orders)),
        None => (
            store::scans::first_scan_near(&state.db, &reader.id, &uid, read_at, window, &claim.id)
                .await?,
            store::cards::card_by_uid(&state.db, &uid).await?,
            None,
        ),
    };
    if let Some(first) = first {
        let mut answer = answer_of(&first, scan.seq, false)?;
        answer.scan_id = claim.id.clone();
        answer.debounced = true;
        let decision = store::scans::ScanDecision {
            verdict: &answer.verdict,
            order_id: first.order_id.as_deref(),
            student_id: first.student_id.as_deref(),
            first_scan_id: Some(&first.id),
            took: Some(started.elapsed()),
        };
        if !store::scans::finish_scan(&state.db, &claim.id, claim.attempt, decision).await? {
            return decided_elsewhere(state, reader, scan.seq).await;
        }
        metrics::counter!("rfid_scans_total", "verdict" => answer.verdict.code(), "debounced" => "true")
            .increment(1);
        return Ok(answer);
    }
    let decided = match decide_and_hand_over(state, reader, card, orders, &claim).await? {
        HandOver::Decided(decided) => decided,
        HandOver::ClaimLost => return decided_elsewhere(state, reader, scan.seq).await,
    };
    let Decided {
        verdict,
        order_id,
        student_id,
        recorded,
    } = decided;
    if recorded {
        state
            .config
            .crash_point(crate::config::CrashPoint::ScanHandedOver);
    } else {
        let decision = store::scans::ScanDecision {
            verdict: &verdict,
            order_id: order_id.as_deref(),
            student_id: student_id.as_deref(),
            first_scan_id: None,
            took: Some(started.elapsed()),
        };
        if !store::scans::finish_scan(&state.db, &claim.id, claim.attempt, decision).await? {
            return decided_elsewhere(state, reader, scan.seq).await;
        }
    }
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

fn still_deciding() -> ApiError {
    ApiError::new(
        ErrorCode::DatabaseUnavailable,
        "this scan is still being decided; retry",
    )
}

/// This decider's claim was taken over (it outlived its lease): the scan's decision, if
/// there is one yet, is the answer.
async fn decided_elsewhere(
    state: &AppState,
    reader: &ReaderRow,
    seq: i64,
) -> Result<ScanAnswer, ApiError> {
    match store::scans::scan_by_seq(&state.db, &reader.id, seq).await? {
        Some(row)
            if ![store::scans::SCAN_PENDING, store::scans::SCAN_ABANDONED]
                .contains(&row.verdict.as_str()) =>
        {
            answer_of(&row, seq, true)
        }
        _ => Err(still_deciding()),
    }
}

/// Settles scan claims whose node died (`store::scans::dead_scan_claims`), the hub's own work: a
/// claim whose hand-over committed (an earlier version recorded it apart) gets that decision,
/// any other is abandoned, so that a retry decides afresh. Yields (decided, abandoned).
pub async fn settle(
    db: &crate::db::Db,
    node: &crate::node::Node,
    dead: Vec<ScanRow>,
) -> Result<(usize, usize), ApiError> {
    if dead.is_empty() {
        return Ok((0, 0));
    }
    let reader_ids: Vec<&str> = dead.iter().map(|r| r.reader_id.as_str()).collect();
    let names = store::readers::reader_names(db, &reader_ids).await?;
    let reasons: HashMap<String, &ScanRow> = dead
        .iter()
        .filter_map(|r| Some((handover_reason(&r.id, names.get(&r.reader_id)?), r)))
        .collect();
    let uids: Vec<&str> = dead.iter().map(|r| r.card_uid.as_str()).collect();
    let wanted: Vec<String> = reasons.keys().cloned().collect();
    let mut decided = std::collections::HashSet::new();
    for (reason, snapshot) in store::orders::pickups_by_reason(db, &uids, &wanted).await? {
        let Some(row) = reasons.get(&reason) else {
            continue;
        };
        let order: tiffin_actors::domain::OrderSummary =
            serde_json::from_str(&snapshot).map_err(ApiError::internal)?;
        let verdict = accepted(&order);
        let decision = store::scans::ScanDecision {
            verdict: &verdict,
            order_id: Some(&order.id),
            student_id: Some(&order.student_id),
            first_scan_id: None,
            took: None,
        };
        if store::scans::finish_scan(db, &row.id, row.attempt, decision).await? {
            decided.insert(row.id.as_str());
        }
    }
    let rest: Vec<&str> = dead
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| !decided.contains(id))
        .collect();
    let stale_before = now() - CLAIM_LEASE;
    let abandoned =
        store::scans::abandon_scans(db, &rest, &node.id, node.started_at, stale_before).await?;
    metrics::counter!("rfid_claims_settled_total", "outcome" => "decided")
        .increment(decided.len() as u64);
    metrics::counter!("rfid_claims_settled_total", "outcome" => "abandoned")
        .increment(abandoned as u64);
    Ok((decided.len(), abandoned))
}

/// Settles every dead scan claim (see `settle`): at start and every `SWEEP_EVERY`.
pub async fn sweep_claims(
    db: &crate::db::Db,
    node: &crate::node::Node,
) -> Result<(usize, usize), ApiError> {
    let mut total = (0, 0);
    loop {
        let stale_before = now() - CLAIM_LEASE;
        let dead = store::scans::dead_scan_claims(
            db,
            &node.id,
            node.started_at,
            stale_before,
            SWEEP_BATCH,
        )
        .await?;
        let full = dead.len() as i64 == SWEEP_BATCH;
        let (decided, abandoned) = settle(db, node, dead).await?;
        total = (total.0 + decided, total.1 + abandoned);
        if !full || decided + abandoned == 0 {
            return Ok(total);
        }
    }
}

/// What a scan's pickup is recorded with, naming the scan: how a hand-over a crash left
/// unrecorded on its scan (an earlier version) is found.
fn handover_reason(scan_id: &str, reader_name: &str) -> String {
    format!("rfid scan {scan_id} at {reader_name}")
}

/// A decided scan: its verdict, the order and student it concerns, and whether the
/// hand-over recorded it on the scan already (in the pickup's own transaction).
struct Decided {
    verdict: Verdict,
    order_id: Option<String>,
    student_id: Option<String>,
    recorded: bool,
}

impl Decided {
    fn of(verdict: Verdict, order_id: Option<String>, student_id: Option<String>) -> Decided {
        Decided {
            verdict,
            order_id,
            student_id,
            recorded: false,
        }
    }
}

enum HandOver {
    Decided(Decided),
    /// The scan's claim is no longer this decider's: nothing was handed over.
    ClaimLost,
}

async fn decide_and_hand_over(
    state: &AppState,
    reader: &ReaderRow,
    card: Option<CardRow>,
    orders: Option<Vec<String>>,
    claim: &ScanRow,
) -> Result<HandOver, ApiError> {
    let card = card.and_then(|c| {
        Some(Card {
            school_id: c.school_id,
            student_id: c.student_id,
            status: CardStatus::parse(&c.status)?,
        })
    });
    let reason = handover_reason(&claim.id, &reader.name);
    let scan = ScanClaim {
        scan_id: claim.id.clone(),
        attempt: claim.attempt,
        received_at: claim.received_at.and_utc(),
    };
    let orders = orders.map(|o| snapshots(&o)).transpose()?;
    hand_over(
        state,
        &reader.school_id,
        &reader.counter_id,
        card,
        orders,
        reason,
        Some(scan),
    )
    .await
}

/// A student's orders a counter cares about today (see `store::orders::student_orders_of_day`), as
/// their latest committed views.
async fn orders_of_day(
    state: &AppState,
    school_id: &str,
    student_id: &str,
) -> Result<Vec<tiffin_actors::domain::OrderSummary>, ApiError> {
    snapshots(&store::orders::student_orders_of_day(&state.db, school_id, student_id).await?)
}

fn snapshots(stored: &[String]) -> Result<Vec<tiffin_actors::domain::OrderSummary>, ApiError> {
    stored
        .iter()
        .map(|snapshot| {
            serde_json::from_str(snapshot)
                .map_err(|e| ApiError::internal(format!("stored snapshot: {e}")))
        })
        .collect()
}

/// Decides a hand-over at a counter for the holder of `card` (a scanned card, or a verified
/// one-time code) and commits it as a version-guarded pickup recorded with `reason`; a
/// scan's decision commits with its pickup.
async fn hand_over(
    state: &AppState,
    school_id: &str,
    counter_id: &str,
    card: Option<Card>,
    mut read: Option<Vec<tiffin_actors::domain::OrderSummary>>,
    reason: String,
    scan: Option<ScanClaim>,
) -> Result<HandOver, ApiError> {
    let student_id = card.as_ref().map(|c| c.student_id.clone());
    for _ in 0..HANDOVER_TRIES {
        let orders = match (&card, read.take()) {
            (Some(card), _) if card.school_id != school_id => Vec::new(),
            // Read with the scan's claim: the first try needs no read of its own.
            (Some(_), Some(orders)) => orders,
            (Some(card), None) => orders_of_day(state, school_id, &card.student_id).await?,
            (None, _) => Vec::new(),
        };
        let order = match decide(card.as_ref(), school_id, counter_id, &orders) {
            Decision::Final(Verdict::AlreadyPickedUp { order_id })
                if store::orders::picked_up_because(&state.db, &order_id, &reason).await? =>
            {
                // This very scan handed it over before its node died: same verdict again.
                let order = orders.iter().find(|o| o.id == order_id);
                let verdict = order.map_or(
                    Verdict::AlreadyPickedUp {
                        order_id: order_id.clone(),
                    },
                    accepted,
                );
                return Ok(HandOver::Decided(Decided::of(
                    verdict,
                    Some(order_id),
                    student_id,
                )));
            }
            Decision::Final(verdict) => {
                let order_id = verdict_order(&verdict);
                return Ok(HandOver::Decided(Decided::of(
                    verdict, order_id, student_id,
                )));
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
                scan: scan.clone(),
            })
            .await
            .map_err(|e| ApiError::internal(format!("kitchen: {e}")))?;
        match handed {
            Ok(event) => {
                return Ok(HandOver::Decided(Decided {
                    verdict: accepted(&event.order),
                    order_id: Some(order.id),
                    student_id,
                    recorded: scan.is_some(),
                }));
            }
            Err(CommandError::ScanClaimLost) => return Ok(HandOver::ClaimLost),
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
    match store::scans::scans_with_verdict(&state.db, order_id, "allergy_hold").await {
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
    let student_name = match store::people::user(&state.db, student_id).await {
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
        Ok(()) => {}
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
    let student = store::people::user(&state.db, student_id)
        .await?
        .filter(|u| u.role == "student" && u.school_id.as_deref() == Some(school_id))
        .ok_or_else(|| ApiError::validation("student_id is not a student of this school"))?;
    let counter = store::counters::counters(&state.db, school_id)
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
    crate::db::insert(&state.db, &row).await?;
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
    let Some(attempts) =
        store::counters::count_code_attempt(&state.db, &row.id, CODE_ATTEMPTS).await?
    else {
        return Err(locked());
    };
    let stored = hex::decode(&row.code_mac).map_err(ApiError::internal)?;
    let mut mac = HmacSha256::new_from_slice(&state.reader_key).map_err(ApiError::internal)?;
    mac.update(&code_message(&row.id, code.trim()));
    if mac.verify_slice(&stored).is_err() {
        if attempts >= CODE_ATTEMPTS {
            store::counters::close_code(&state.db, &row.id, "locked").await?;
            return Err(locked());
        }
        return Err(ApiError::new(
            ErrorCode::CodeInvalid,
            format!("wrong code; {} attempts left", CODE_ATTEMPTS - attempts),
        ));
    }
    if !store::counters::close_code(&state.db, &row.id, "used").await? {
        return Err(used());
    }
    let card = Card {
        school_id: row.school_id.clone(),
        student_id: row.student_id.clone(),
        status: CardStatus::Active,
    };
    let reason = format!("one-time code {}", row.id);
    match hand_over(
        state,
        &row.school_id,
        &row.counter_id,
        Some(card),
        None,
        reason,
        None,
    )
    .await?
    {
        HandOver::Decided(decided) => Ok(decided.verdict),
        // Only a scan has a claim to lose.
        HandOver::ClaimLost => Err(ApiError::internal("a code has no scan claim")),
    }
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
