//! Alerts raised at a counter (a lost or blocked card, an allergy hold): on the kitchen's
//! screens at once and to the student's guardians.

use super::Hub;
use crate::db::models::ReaderRow;
use crate::store;
use chrono::Utc;
use tiffin_actors::rfid::Verdict;

/// A lost or blocked card was presented: the kitchen's screens show it at once and the
/// student's guardians are told (critical). Repeat reads are debounced before they get here.
pub(super) async fn card_in_use(
    state: &Hub<'_>,
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
pub(super) async fn allergy_hold(
    state: &Hub<'_>,
    reader: &ReaderRow,
    student_id: &str,
    order_id: &str,
    note: &str,
) {
    match store::scans::allergy_holds_of(state.db, order_id).await {
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
    state: &Hub<'_>,
    reader: &ReaderRow,
    student_id: &str,
    kind: tiffin_actors::notices::Kind,
    mut details: serde_json::Value,
) {
    let student_name = match store::people::user(state.db, student_id).await {
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
    if let Err(e) = state
        .store
        .record_notice(&reader.school_id, student_id, kind, details)
        .await
    {
        tracing::warn!(error = %e, reader = %reader.id, "could not queue the alert");
    }
}
