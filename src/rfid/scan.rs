//! A scan: validated, claimed by (reader, seq), decided once; a retry or an offline
//! replay gets the first verdict.

use super::alerts::{allergy_hold, card_in_use};
use super::hand_over::{Decided, HandOver, decide_and_hand_over};
use super::sweep::settle;
use super::{CLAIM_LEASE, Hub};
use crate::db::models::{ReaderRow, ScanRow, now};
use crate::error::{ApiError, ErrorCode};
use crate::store;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tiffin_actors::rfid::Verdict;
use utoipa::ToSchema;

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
    state: &Hub<'_>,
    reader: &ReaderRow,
    scan: &ScanIn,
) -> Result<ScanAnswer, ApiError> {
    crate::db::operation("scan");
    crate::db::counted("scan", decide_scan(state, reader, scan)).await
}

async fn decide_scan(
    state: &Hub<'_>,
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
    scan_stage("claim", started);
    let (claim, facts) = if facts.claimed {
        (row, Some(facts))
    } else {
        loop {
            let Some(existing) = store::scans::scan_by_seq(state.db, &reader.id, scan.seq).await?
            else {
                if started.elapsed() > Duration::from_secs(5) {
                    return Err(still_deciding());
                }
                if store::scans::claim_scan(state.db, &row).await? {
                    break (row, None);
                }
                continue;
            };
            match existing.verdict.as_str() {
                store::scans::SCAN_ABANDONED => {
                    // Its node died before deciding and nothing was handed over: decide afresh.
                    match store::scans::take_over_scan(state.db, &existing, &node.id, now()).await?
                    {
                        Some(taken) => break (taken, None),
                        None => continue,
                    }
                }
                store::scans::SCAN_PENDING => {
                    let claimed_at = existing.claimed_at.unwrap_or(existing.received_at);
                    if now() - claimed_at >= CLAIM_LEASE {
                        // Its node died mid-decision: settle it as the sweeper would, now.
                        settle(state.db, node, vec![existing]).await?;
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
            store::scans::first_scan_near(state.db, &reader.id, &uid, read_at, window, &claim.id)
                .await?,
            store::cards::card_by_uid(state.db, &uid).await?,
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
        if !store::scans::finish_scan(state.db, &claim.id, claim.attempt, decision).await? {
            return decided_elsewhere(state, reader, scan.seq).await;
        }
        metrics::counter!("rfid_scans_total", "verdict" => answer.verdict.code(), "debounced" => "true")
            .increment(1);
        return Ok(answer);
    }
    let deciding = Instant::now();
    let decided = match decide_and_hand_over(state, reader, card, orders, &claim).await? {
        HandOver::Decided(decided) => decided,
        HandOver::ClaimLost => return decided_elsewhere(state, reader, scan.seq).await,
    };
    scan_stage("hand_over", deciding);
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
        if !store::scans::finish_scan(state.db, &claim.id, claim.attempt, decision).await? {
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

/// How long a part of a scan's path took, in `/metrics` (where a verdict's time goes).
pub fn scan_stage(name: &'static str, since: Instant) {
    metrics::histogram!("rfid_scan_stage_seconds", "stage" => name)
        .record(since.elapsed().as_secs_f64());
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
    state: &Hub<'_>,
    reader: &ReaderRow,
    seq: i64,
) -> Result<ScanAnswer, ApiError> {
    match store::scans::scan_by_seq(state.db, &reader.id, seq).await? {
        Some(row)
            if ![store::scans::SCAN_PENDING, store::scans::SCAN_ABANDONED]
                .contains(&row.verdict.as_str()) =>
        {
            answer_of(&row, seq, true)
        }
        _ => Err(still_deciding()),
    }
}
