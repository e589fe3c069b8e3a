//! Refresh tokens: issued, rotated within their family, revoked.

use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

/// What became of a presented refresh token.
pub enum Rotation {
    /// Valid: it is now revoked and `new` replaces it in the same family.
    Rotated { user_id: String },
    /// Unknown or expired.
    Invalid,
    /// Already used: somebody replayed it, so the whole family is revoked.
    Reused,
}

/// Rotates a refresh token in one transaction: revoke the presented one, store its successor.
pub async fn rotate_refresh_token(
    db: &Db,
    presented_hash: &str,
    new: &RefreshTokenRow,
) -> Result<Rotation, DbError> {
    let at = now();
    Ok(with_conn!(db, |conn| conn
        .transaction(async |conn| {
            // Write first: takes SQLite's write lock before any read.
            let revoked = diesel::update(
                refresh_tokens::table
                    .filter(refresh_tokens::token_hash.eq(presented_hash))
                    .filter(refresh_tokens::revoked_at.is_null())
                    .filter(refresh_tokens::expires_at.gt(at)),
            )
            .set(refresh_tokens::revoked_at.eq(Some(at)))
            .returning((refresh_tokens::user_id, refresh_tokens::family_id))
            .get_result::<(String, String)>(conn)
            .await
            .optional()?;
            if let Some((user_id, family_id)) = revoked {
                let mut row = new.clone();
                row.user_id = user_id.clone();
                row.family_id = family_id;
                diesel::insert_into(refresh_tokens::table)
                    .values(&row)
                    .execute(conn)
                    .await?;
                return Ok(Rotation::Rotated { user_id });
            }
            let known: Option<(String, Option<NaiveDateTime>)> = refresh_tokens::table
                .filter(refresh_tokens::token_hash.eq(presented_hash))
                .select((refresh_tokens::family_id, refresh_tokens::revoked_at))
                .first(conn)
                .await
                .optional()?;
            match known {
                Some((family_id, Some(_))) => {
                    diesel::update(
                        refresh_tokens::table
                            .filter(refresh_tokens::family_id.eq(&family_id))
                            .filter(refresh_tokens::revoked_at.is_null()),
                    )
                    .set(refresh_tokens::revoked_at.eq(Some(at)))
                    .execute(conn)
                    .await?;
                    Ok(Rotation::Reused)
                }
                _ => Ok::<_, diesel::result::Error>(Rotation::Invalid),
            }
        })
        .await)?)
}

/// Sign-out: every token of the presented one's family stops working.
pub async fn revoke_family_of(db: &Db, presented_hash: &str) -> Result<(), DbError> {
    let at = now();
    let family: Option<String> = with_conn!(db, |conn| refresh_tokens::table
        .filter(refresh_tokens::token_hash.eq(presented_hash))
        .select(refresh_tokens::family_id)
        .first(conn)
        .await
        .optional())?;
    if let Some(family_id) = family {
        with_conn!(db, |conn| diesel::update(
            refresh_tokens::table
                .filter(refresh_tokens::family_id.eq(&family_id))
                .filter(refresh_tokens::revoked_at.is_null())
        )
        .set(refresh_tokens::revoked_at.eq(Some(at)))
        .execute(conn)
        .await)?;
    }
    Ok(())
}
