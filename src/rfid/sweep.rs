//! Scan claims of dead nodes settled: at start for this node's own, then every `SWEEP_EVERY`.

use super::CLAIM_LEASE;
use super::hand_over::handover_reason;
use crate::db::models::{ScanRow, now};
use crate::error::ApiError;
use crate::store;
use std::collections::HashMap;
use std::time::Duration;
use tiffin_actors::rfid::accepted;

/// How often every node settles dead scan claims.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Dead claims settled at a time.
const SWEEP_BATCH: i64 = 500;

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
