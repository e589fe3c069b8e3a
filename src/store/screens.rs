//! Kitchen screens: pairing codes waiting to be entered, the screens they became, and each
//! screen's refresh token (only hashes are kept).

use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError};
use crate::with_conn;
use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

/// Why an entered code made no screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairRefusal {
    Unknown,
    Expired,
    Used,
}

/// A transaction's failure: the database's, or a refusal that rolls it back.
enum Refused<R> {
    Db(diesel::result::Error),
    Because(R),
}

impl<R> From<diesel::result::Error> for Refused<R> {
    fn from(e: diesel::result::Error) -> Refused<R> {
        Refused::Db(e)
    }
}

/// A new pairing code; codes expired for longer than `keep` are dropped first.
pub async fn start_pairing(db: &Db, row: &PairingRow, keep: Duration) -> Result<(), DbError> {
    let cutoff = now() - keep;
    with_conn!(db, |conn| diesel::delete(
        screen_pairings::table.filter(screen_pairings::expires_at.lt(cutoff))
    )
    .execute(conn)
    .await)?;
    crate::db::insert(db, row).await
}

/// The code entered: `screen` is stored and the pairing names it, or nothing is written.
pub async fn pair(
    db: &Db,
    code_hash: &str,
    screen: &ScreenRow,
) -> Result<Result<(), PairRefusal>, DbError> {
    let at = now();
    let outcome = with_conn!(db, |conn| conn
        .transaction(async |conn| {
            // Write first: takes SQLite's write lock before any read.
            diesel::insert_into(screens::table)
                .values(screen)
                .execute(conn)
                .await?;
            let taken = diesel::update(
                screen_pairings::table
                    .filter(screen_pairings::code_hash.eq(code_hash))
                    .filter(screen_pairings::screen_id.is_null())
                    .filter(screen_pairings::expires_at.gt(at)),
            )
            .set(screen_pairings::screen_id.eq(Some(&screen.id)))
            .execute(conn)
            .await?;
            if taken == 1 {
                return Ok(());
            }
            let known: Option<(Option<String>, NaiveDateTime)> = screen_pairings::table
                .filter(screen_pairings::code_hash.eq(code_hash))
                .select((screen_pairings::screen_id, screen_pairings::expires_at))
                .first(conn)
                .await
                .optional()?;
            Err(Refused::Because(match known {
                None => PairRefusal::Unknown,
                Some((Some(_), _)) => PairRefusal::Used,
                Some((None, _)) => PairRefusal::Expired,
            }))
        })
        .await);
    match outcome {
        Ok(()) => Ok(Ok(())),
        Err(Refused::Because(refusal)) => Ok(Err(refusal)),
        Err(Refused::Db(e)) => Err(e.into()),
    }
}

/// What a waiting screen learns when it asks with its pairing secret.
pub enum Claim {
    /// Its code was entered: here is the screen, now holding `refresh_hash`.
    Paired(Box<ScreenRow>),
    /// Not entered yet.
    Waiting,
    /// Expired before anyone entered it.
    Expired,
    /// Unknown, collected already, or its screen was revoked before collecting.
    Unknown,
}

/// Hands the entered screen its first refresh token (once).
pub async fn claim(
    db: &Db,
    secret_hash: &str,
    refresh_hash: &str,
    refresh_expires_at: NaiveDateTime,
) -> Result<Claim, DbError> {
    let at = now();
    Ok(with_conn!(db, |conn| conn
        .transaction(async |conn| {
            let entered = screen_pairings::table
                .filter(screen_pairings::secret_hash.eq(secret_hash))
                .select(screen_pairings::screen_id);
            let collected = diesel::update(
                screens::table
                    .filter(screens::id.nullable().eq_any(entered))
                    .filter(screens::refresh_hash.is_null())
                    .filter(screens::revoked_at.is_null()),
            )
            .set((
                screens::refresh_hash.eq(Some(refresh_hash)),
                screens::refresh_expires_at.eq(refresh_expires_at),
                screens::last_seen_at.eq(Some(at)),
            ))
            .returning(ScreenRow::as_returning())
            .get_result(conn)
            .await
            .optional()?;
            if let Some(screen) = collected {
                diesel::delete(
                    screen_pairings::table.filter(screen_pairings::secret_hash.eq(secret_hash)),
                )
                .execute(conn)
                .await?;
                return Ok(Claim::Paired(Box::new(screen)));
            }
            let pairing: Option<(Option<String>, NaiveDateTime)> = screen_pairings::table
                .filter(screen_pairings::secret_hash.eq(secret_hash))
                .select((screen_pairings::screen_id, screen_pairings::expires_at))
                .first(conn)
                .await
                .optional()?;
            Ok::<_, diesel::result::Error>(match pairing {
                Some((None, expires_at)) if expires_at > at => Claim::Waiting,
                Some((None, _)) => Claim::Expired,
                _ => Claim::Unknown,
            })
        })
        .await)?)
}

/// What became of a presented screen refresh token.
pub enum Renewal {
    Renewed(Box<ScreenRow>),
    Revoked,
    Invalid,
}

/// Rotates a screen's refresh token. The previous token is still taken once more (an answer
/// lost in a network cut must not unpair the screen); both stop at revocation.
pub async fn renew(
    db: &Db,
    presented_hash: &str,
    next_hash: &str,
    expires_at: NaiveDateTime,
) -> Result<Renewal, DbError> {
    let at = now();
    Ok(with_conn!(db, |conn| conn
        .transaction(async |conn| {
            let live = screens::revoked_at
                .is_null()
                .and(screens::refresh_expires_at.gt(at));
            let renewed = diesel::update(
                screens::table
                    .filter(screens::refresh_hash.eq(presented_hash))
                    .filter(live),
            )
            .set((
                screens::previous_refresh_hash.eq(screens::refresh_hash),
                screens::refresh_hash.eq(Some(next_hash)),
                screens::refresh_expires_at.eq(expires_at),
                screens::last_seen_at.eq(Some(at)),
            ))
            .returning(ScreenRow::as_returning())
            .get_result(conn)
            .await
            .optional()?;
            if let Some(screen) = renewed {
                return Ok(Renewal::Renewed(Box::new(screen)));
            }
            let again = diesel::update(
                screens::table
                    .filter(screens::previous_refresh_hash.eq(presented_hash))
                    .filter(live),
            )
            .set((
                screens::refresh_hash.eq(Some(next_hash)),
                screens::refresh_expires_at.eq(expires_at),
                screens::last_seen_at.eq(Some(at)),
            ))
            .returning(ScreenRow::as_returning())
            .get_result(conn)
            .await
            .optional()?;
            if let Some(screen) = again {
                return Ok(Renewal::Renewed(Box::new(screen)));
            }
            let revoked: Option<Option<NaiveDateTime>> = screens::table
                .filter(screens::refresh_hash.eq(presented_hash))
                .or_filter(screens::previous_refresh_hash.eq(presented_hash))
                .select(screens::revoked_at)
                .first(conn)
                .await
                .optional()?;
            Ok::<_, diesel::result::Error>(match revoked {
                Some(Some(_)) => Renewal::Revoked,
                _ => Renewal::Invalid,
            })
        })
        .await)?)
}

/// A school's screens, revoked ones left out.
pub async fn screens_of(db: &Db, school_id: &str) -> Result<Vec<ScreenRow>, DbError> {
    Ok(with_conn!(db, |conn| screens::table
        .filter(screens::school_id.eq(school_id))
        .filter(screens::revoked_at.is_null())
        .order((screens::name.asc(), screens::id.asc()))
        .select(ScreenRow::as_select())
        .load(conn)
        .await)?)
}

/// Revokes a screen of the school; false if there was none to revoke. Its token hashes stay,
/// so a renewal with them is told `screen_revoked`, not just "invalid".
pub async fn revoke(db: &Db, school_id: &str, screen_id: &str) -> Result<bool, DbError> {
    let at = now();
    let revoked = with_conn!(db, |conn| diesel::update(
        screens::table
            .filter(screens::id.eq(screen_id))
            .filter(screens::school_id.eq(school_id))
            .filter(screens::revoked_at.is_null())
    )
    .set(screens::revoked_at.eq(Some(at)))
    .execute(conn)
    .await)?;
    Ok(revoked == 1)
}

/// A screen that may still act: known and not revoked.
pub async fn is_active(db: &Db, screen_id: &str) -> Result<bool, DbError> {
    let screen: Option<ScreenRow> = crate::db::find(db, screen_id).await?;
    Ok(screen.is_some_and(|s| s.revoked_at.is_none()))
}

/// Records that the screen was seen now (its socket connected).
pub async fn screen_seen(db: &Db, screen_id: &str) -> Result<(), DbError> {
    let at = now();
    with_conn!(db, |conn| diesel::update(screens::table.find(screen_id))
        .set(screens::last_seen_at.eq(Some(at)))
        .execute(conn)
        .await)?;
    Ok(())
}
