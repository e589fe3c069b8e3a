//! One-time sign-in codes: a person's one live code (its MAC, the attempts made at it, its
//! expiry), committed in one transaction with the message that carries it; an attempt
//! counted before it is checked, a right code consumed once.

use super::{DieselStore, TxError};
use crate::db::models::{OutboxRow, now};
use crate::db::schema::{outbox, schools, sign_in_codes};
use crate::db::{Db, DbError};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use tiffin_actors::notices::{Channel, Kind};
use tiffin_actors::ports::CommandError;

/// A code to keep (as its MAC) and the message that sends it.
pub struct NewCode<'a> {
    pub user_id: &'a str,
    pub school_id: &'a str,
    pub name: &'a str,
    pub locale: &'a str,
    pub channel: Channel,
    /// The email address or phone number it was asked for.
    pub address: &'a str,
    pub code: &'a str,
    pub code_mac: &'a str,
    pub expires_at: NaiveDateTime,
}

/// A person's live code as an attempt at it left it.
pub struct Attempted {
    pub code_mac: String,
    /// Attempts made, this one included.
    pub attempts: i32,
    pub expires_at: NaiveDateTime,
}

impl DieselStore {
    /// Replaces the person's code with `c` and queues its message, in one transaction: no
    /// code is sent that was not kept, and dispatch sends every one kept.
    pub async fn commit_sign_in_code(&self, c: NewCode<'_>) -> Result<(), CommandError> {
        with_conn!(&self.db, |conn| conn
            .transaction(async |conn| {
                let at = now();
                // The school's next notice number keys the message (outbox keys -1, -2, …).
                let (notice, school_name, time_zone): (i64, String, String) =
                    diesel::update(schools::table.find(c.school_id))
                        .set(schools::notice_seq.eq(schools::notice_seq + 1))
                        .returning((schools::notice_seq, schools::name, schools::time_zone))
                        .get_result(conn)
                        .await?;
                diesel::delete(sign_in_codes::table.find(c.user_id))
                    .execute(conn)
                    .await?;
                diesel::insert_into(sign_in_codes::table)
                    .values((
                        sign_in_codes::user_id.eq(c.user_id),
                        sign_in_codes::code_mac.eq(c.code_mac),
                        sign_in_codes::attempts.eq(0),
                        sign_in_codes::expires_at.eq(c.expires_at),
                        sign_in_codes::created_at.eq(at),
                    ))
                    .execute(conn)
                    .await?;
                let kind = Kind::SignInCode;
                let payload = serde_json::json!({
                    "code": c.code,
                    "expires_at": c.expires_at.and_utc(),
                    "recipient_name": c.name,
                    "school_name": school_name,
                    "time_zone": time_zone,
                });
                let row = OutboxRow {
                    id: uuid::Uuid::now_v7().to_string(),
                    school_id: c.school_id.to_owned(),
                    event_seq: -notice,
                    recipient_id: c.user_id.to_owned(),
                    channel: c.channel.as_str().to_owned(),
                    template: kind.as_str().to_owned(),
                    address: c.address.to_owned(),
                    locale: c.locale.to_owned(),
                    payload: payload.to_string(),
                    status: "pending".into(),
                    attempts: 0,
                    next_attempt_at: at,
                    claimed_until: None,
                    last_error: None,
                    created_at: at,
                    sent_at: None,
                    priority: kind.rule().priority.rank(),
                    // A code not sent while it works is dropped, not sent late.
                    expires_at: Some(c.expires_at),
                    fallback_for: None,
                    dedup_key: None,
                    claimed_by: None,
                };
                diesel::insert_into(outbox::table)
                    .values(&row)
                    .execute(conn)
                    .await?;
                Ok::<_, TxError>(())
            })
            .await)?;
        self.wake_dispatch(super::Wake::Messages);
        Ok(())
    }
}

/// Counts an attempt at the person's code and returns it as the attempt left it; `None`
/// when they have no code. Counted before it is checked: parallel guesses each cost one.
pub async fn count_attempt(db: &Db, user_id: &str) -> Result<Option<Attempted>, DbError> {
    let row: Option<(String, i32, NaiveDateTime)> = with_conn!(db, |conn| diesel::update(
        sign_in_codes::table.find(user_id)
    )
    .set(sign_in_codes::attempts.eq(sign_in_codes::attempts + 1))
    .returning((
        sign_in_codes::code_mac,
        sign_in_codes::attempts,
        sign_in_codes::expires_at,
    ))
    .get_result(conn)
    .await
    .optional())?;
    Ok(row.map(|(code_mac, attempts, expires_at)| Attempted {
        code_mac,
        attempts,
        expires_at,
    }))
}

/// Consumes the person's code if it is still the one with `code_mac`; false when another
/// attempt consumed it first or a new code replaced it.
pub async fn consume(db: &Db, user_id: &str, code_mac: &str) -> Result<bool, DbError> {
    let n = with_conn!(db, |conn| diesel::delete(
        sign_in_codes::table
            .filter(sign_in_codes::user_id.eq(user_id))
            .filter(sign_in_codes::code_mac.eq(code_mac))
    )
    .execute(conn)
    .await)?;
    Ok(n == 1)
}
