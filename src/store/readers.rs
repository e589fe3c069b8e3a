//! RFID readers: their rows, keys and when each was last seen.

use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use std::collections::HashMap;

pub async fn reader(db: &Db, id: &str) -> Result<Option<ReaderRow>, DbError> {
    crate::db::find(db, id).await
}

pub async fn readers_of(db: &Db, school_id: &str) -> Result<Vec<ReaderRow>, DbError> {
    Ok(with_conn!(db, |conn| readers::table
        .filter(readers::school_id.eq(school_id))
        .order((readers::name.asc(), readers::id.asc()))
        .select(ReaderRow::as_select())
        .load(conn)
        .await)?)
}

/// Records that the reader was seen now; returns when.
pub async fn reader_seen(db: &Db, id: &str) -> Result<NaiveDateTime, DbError> {
    let at = now();
    with_conn!(db, |conn| diesel::update(readers::table.find(id))
        .set(readers::last_seen_at.eq(Some(at)))
        .execute(conn)
        .await)?;
    Ok(at)
}

/// Records that the readers were seen at `at` (a later sighting stored meanwhile stays).
pub async fn readers_seen(db: &Db, ids: &[&str], at: NaiveDateTime) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::update(
        readers::table.filter(readers::id.eq_any(ids)).filter(
            readers::last_seen_at
                .is_null()
                .or(readers::last_seen_at.lt(at))
        )
    )
    .set(readers::last_seen_at.eq(Some(at)))
    .execute(conn)
    .await)?;
    Ok(())
}

/// A new key version for a reader (the old secret stops working at once).
pub async fn rotate_reader_key(
    db: &Db,
    id: &str,
    key_version: i32,
    secret_hash: &str,
) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::update(readers::table.find(id))
        .set((
            readers::key_version.eq(key_version),
            readers::secret_hash.eq(secret_hash),
        ))
        .execute(conn)
        .await)?;
    Ok(())
}

/// Reader names by id.
pub async fn reader_names(db: &Db, ids: &[&str]) -> Result<HashMap<String, String>, DbError> {
    Ok(with_conn!(db, |conn| readers::table
        .filter(readers::id.eq_any(ids))
        .select((readers::id, readers::name))
        .load::<(String, String)>(conn)
        .await)?
    .into_iter()
    .collect())
}
