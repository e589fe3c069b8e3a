//! Counters and one-time pickup codes.

use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError};
use crate::with_conn;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

pub async fn counters(db: &Db, school_id: &str) -> Result<Vec<CounterRow>, DbError> {
    Ok(with_conn!(db, |conn| counters::table
        .filter(counters::school_id.eq(school_id))
        .order(counters::number.asc())
        .select(CounterRow::as_select())
        .load(conn)
        .await)?)
}

pub async fn update_counter(
    db: &Db,
    school_id: &str,
    id: &str,
    name: Option<&str>,
    is_open: Option<bool>,
) -> Result<CounterRow, DbError> {
    let at = now();
    Ok(with_conn!(db, |conn| diesel::update(
        counters::table
            .filter(counters::id.eq(id))
            .filter(counters::school_id.eq(school_id))
    )
    .set((
        name.map(|n| counters::name.eq(n)),
        is_open.map(|o| counters::is_open.eq(o)),
        counters::updated_at.eq(at),
    ))
    .returning(CounterRow::as_returning())
    .get_result(conn)
    .await)?)
}

pub async fn pickup_code(db: &Db, id: &str) -> Result<Option<PickupCodeRow>, DbError> {
    crate::db::find(db, id).await
}

/// Counts one attempt at an active code; `None` if it is not active (used or locked) or has no
/// attempts left. Yields the attempts made, this one included.
pub async fn count_code_attempt(db: &Db, id: &str, max: i32) -> Result<Option<i32>, DbError> {
    Ok(with_conn!(db, |conn| diesel::update(
        pickup_codes::table
            .filter(pickup_codes::id.eq(id))
            .filter(pickup_codes::status.eq("active"))
            .filter(pickup_codes::attempts.lt(max))
    )
    .set(pickup_codes::attempts.eq(pickup_codes::attempts + 1))
    .returning(pickup_codes::attempts)
    .get_result(conn)
    .await
    .optional())?)
}

/// Moves a code from active to `to` (`used` or `locked`); false if it was not active.
pub async fn close_code(db: &Db, id: &str, to: &str) -> Result<bool, DbError> {
    let at = now();
    let n = with_conn!(db, |conn| diesel::update(
        pickup_codes::table
            .filter(pickup_codes::id.eq(id))
            .filter(pickup_codes::status.eq("active"))
    )
    .set((
        pickup_codes::status.eq(to),
        pickup_codes::used_at.eq((to == "used").then_some(at)),
    ))
    .execute(conn)
    .await)?;
    Ok(n > 0)
}
