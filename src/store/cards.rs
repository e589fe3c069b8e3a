//! RFID cards: issued, blocked, replaced, and who holds one.

use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError};
use crate::with_conn;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

pub async fn card(db: &Db, id: &str) -> Result<Option<CardRow>, DbError> {
    crate::db::find(db, id).await
}

pub async fn card_by_uid(db: &Db, uid: &str) -> Result<Option<CardRow>, DbError> {
    Ok(with_conn!(db, |conn| rfid_cards::table
        .filter(rfid_cards::card_uid.eq(uid))
        .select(CardRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

/// A school's cards in the order they were issued, along `rfid_cards_by_school`.
macro_rules! school_cards_query {
    ($school_id:expr) => {
        $crate::db::schema::rfid_cards::table
            .filter($crate::db::schema::rfid_cards::school_id.eq($school_id))
            .order($crate::db::schema::rfid_cards::created_at.asc())
            .select(CardRow::as_select())
    };
}
#[cfg(test)]
pub(super) use school_cards_query;

pub async fn cards_of(
    db: &Db,
    school_id: &str,
    student_id: Option<&str>,
) -> Result<Vec<CardRow>, DbError> {
    Ok(with_conn!(db, |conn| {
        let mut query = school_cards_query!(school_id).into_boxed();
        if let Some(student_id) = student_id {
            query = query.filter(rfid_cards::student_id.eq(student_id));
        }
        query.load(conn).await
    })?)
}

/// Changes a card's status if it is in one of `from`; false otherwise.
pub async fn set_card_status(db: &Db, id: &str, from: &[&str], to: &str) -> Result<bool, DbError> {
    let at = now();
    let n = with_conn!(db, |conn| diesel::update(
        rfid_cards::table
            .filter(rfid_cards::id.eq(id))
            .filter(rfid_cards::status.eq_any(from))
    )
    .set((rfid_cards::status.eq(to), rfid_cards::updated_at.eq(at)))
    .execute(conn)
    .await)?;
    Ok(n > 0)
}

/// Issues a new card in place of an old one, which stops working; both or neither.
pub async fn replace_card(db: &Db, old_id: &str, new: &CardRow) -> Result<bool, DbError> {
    Ok(with_conn!(db, |conn| conn
        .transaction(async |conn| {
            let n = diesel::update(
                rfid_cards::table
                    .filter(rfid_cards::id.eq(old_id))
                    .filter(rfid_cards::status.ne("replaced")),
            )
            .set((
                rfid_cards::status.eq("replaced"),
                rfid_cards::updated_at.eq(new.created_at),
            ))
            .execute(conn)
            .await?;
            if n == 0 {
                return Ok::<_, diesel::result::Error>(false);
            }
            diesel::insert_into(rfid_cards::table)
                .values(new)
                .execute(conn)
                .await?;
            Ok(true)
        })
        .await)?)
}

/// The student holding the card `$uid`, as a scalar subquery (NULL for an unknown card).
macro_rules! holder_of {
    ($uid:expr) => {
        rfid_cards::table
            .filter(rfid_cards::card_uid.eq($uid))
            .select(rfid_cards::student_id)
            .single_value()
    };
}
pub(crate) use holder_of;
