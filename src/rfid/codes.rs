//! One-time pickup codes for a student without a card: issued to the student and guardians,
//! verified in constant time, handed over as a scan would be.

use super::Hub;
use super::hand_over::{HandOver, hand_over, orders_of_day};
use super::signing::{HmacSha256, hmac_bytes};
use crate::db::models::now;
use crate::error::{ApiError, ErrorCode};
use crate::store;
use chrono::TimeDelta;
use hmac::Mac;
use tiffin_actors::rfid::{Card, CardStatus, Verdict};

/// Wrong guesses a one-time code takes before it locks.
pub const CODE_ATTEMPTS: i32 = 3;

/// What a one-time code's MAC covers: the code's id and the code.
fn code_message(code_id: &str, code: &str) -> Vec<u8> {
    format!("pickup-code:{code_id}:{code}").into_bytes()
}

/// Issues a one-time code for a student without a card and sends it to them and their
/// guardians. Only the code's HMAC is kept.
pub async fn issue_code(
    state: &Hub<'_>,
    school_id: &str,
    student_id: &str,
    counter_id: &str,
    requested_by: &str,
) -> Result<crate::db::models::PickupCodeRow, ApiError> {
    state
        .limits
        .check(crate::limits::Bucket::Codes, student_id)
        .await?;
    let student = store::people::user(state.db, student_id)
        .await?
        .filter(|u| u.role == "student" && u.school_id.as_deref() == Some(school_id))
        .ok_or_else(|| ApiError::validation("student_id is not a student of this school"))?;
    let counter = store::counters::counters(state.db, school_id)
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
        code_mac: hex::encode(hmac_bytes(state.reader_key, &code_message(&id, &code))),
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
    crate::db::insert(state.db, &row).await?;
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
    state: &Hub<'_>,
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
        store::counters::count_code_attempt(state.db, &row.id, CODE_ATTEMPTS).await?
    else {
        return Err(locked());
    };
    let stored = hex::decode(&row.code_mac).map_err(ApiError::internal)?;
    let mut mac = HmacSha256::new_from_slice(state.reader_key).map_err(ApiError::internal)?;
    mac.update(&code_message(&row.id, code.trim()));
    if mac.verify_slice(&stored).is_err() {
        if attempts >= CODE_ATTEMPTS {
            store::counters::close_code(state.db, &row.id, "locked").await?;
            return Err(locked());
        }
        return Err(ApiError::new(
            ErrorCode::CodeInvalid,
            format!("wrong code; {} attempts left", CODE_ATTEMPTS - attempts),
        ));
    }
    if !store::counters::close_code(state.db, &row.id, "used").await? {
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
