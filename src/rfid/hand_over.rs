//! The hand-over at a counter: the card holder's orders of the day, the verdict, and an
//! accepted one committed as a version-guarded pickup through the kitchen.

use super::Hub;
use crate::db::models::{CardRow, ReaderRow, ScanRow};
use crate::error::{ApiError, ErrorCode};
use crate::store;
use tiffin_actors::TransitionOrder;
use tiffin_actors::domain::{Issuer, OrderCommand};
use tiffin_actors::ports::{CommandError, ScanClaim};
use tiffin_actors::rfid::{Card, CardStatus, Decision, Verdict, accepted, decide};

/// Attempts at a hand-over that keep losing version races before giving up.
const HANDOVER_TRIES: usize = 3;

/// What a scan's pickup is recorded with, naming the scan: how a hand-over a crash left
/// unrecorded on its scan (an earlier version) is found.
pub(super) fn handover_reason(scan_id: &str, reader_name: &str) -> String {
    format!("rfid scan {scan_id} at {reader_name}")
}

/// A decided scan: its verdict, the order and student it concerns, and whether the
/// hand-over recorded it on the scan already (in the pickup's own transaction).
pub(super) struct Decided {
    pub(super) verdict: Verdict,
    pub(super) order_id: Option<String>,
    pub(super) student_id: Option<String>,
    pub(super) recorded: bool,
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

pub(super) enum HandOver {
    Decided(Decided),
    /// The scan's claim is no longer this decider's: nothing was handed over.
    ClaimLost,
}

pub(super) async fn decide_and_hand_over(
    state: &Hub<'_>,
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
pub(super) async fn orders_of_day(
    state: &Hub<'_>,
    school_id: &str,
    student_id: &str,
) -> Result<Vec<tiffin_actors::domain::OrderSummary>, ApiError> {
    snapshots(&store::orders::student_orders_of_day(state.db, school_id, student_id).await?)
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
pub(super) async fn hand_over(
    state: &Hub<'_>,
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
                if store::orders::picked_up_because(state.db, &order_id, &reason).await? =>
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
        let asked = std::time::Instant::now();
        let kitchen = state
            .kitchens
            .of(state.registry, school_id)
            .await
            .map_err(|e| ApiError::internal(format!("registry: {e}")))?;
        super::scan_stage("kitchen_for", asked);
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
