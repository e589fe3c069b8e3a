//! A school's stations (grill, salad bar...) and the one a meal is made at.

use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError};
use crate::with_conn;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

pub async fn stations(db: &Db, school_id: &str) -> Result<Vec<StationRow>, DbError> {
    Ok(with_conn!(db, |conn| stations::table
        .filter(stations::school_id.eq(school_id))
        .order(stations::name.asc())
        .select(StationRow::as_select())
        .load(conn)
        .await)?)
}

/// Whether `station_id` is one of `school_id`'s stations.
pub async fn in_school(db: &Db, school_id: &str, station_id: &str) -> Result<bool, DbError> {
    let found: i64 = with_conn!(db, |conn| stations::table
        .filter(stations::id.eq(station_id))
        .filter(stations::school_id.eq(school_id))
        .count()
        .get_result(conn)
        .await)?;
    Ok(found > 0)
}
