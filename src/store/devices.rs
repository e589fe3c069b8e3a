//! Push devices and notification preferences of each user.

use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError};
use crate::with_conn;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

pub async fn active_device_tokens(db: &Db, user_id: &str) -> Result<Vec<DeviceTokenRow>, DbError> {
    Ok(with_conn!(db, |conn| device_tokens::table
        .filter(device_tokens::user_id.eq(user_id))
        .filter(device_tokens::active.eq(true))
        .order(device_tokens::created_at.asc())
        .select(DeviceTokenRow::as_select())
        .load(conn)
        .await)?)
}

pub async fn device_tokens_of(db: &Db, user_id: &str) -> Result<Vec<DeviceTokenRow>, DbError> {
    Ok(with_conn!(db, |conn| device_tokens::table
        .filter(device_tokens::user_id.eq(user_id))
        .order(device_tokens::created_at.asc())
        .select(DeviceTokenRow::as_select())
        .load(conn)
        .await)?)
}

/// FCM no longer knows the token: stop sending to it.
pub async fn deactivate_device_token(db: &Db, id: &str) -> Result<(), DbError> {
    let at = now();
    with_conn!(db, |conn| diesel::update(device_tokens::table.find(id))
        .set((
            device_tokens::active.eq(false),
            device_tokens::updated_at.eq(at),
        ))
        .execute(conn)
        .await)?;
    Ok(())
}

/// Registers a device for a user. A token is one device: registering it again (after a
/// sign-in as someone else, or a reinstall) moves it to this user and reactivates it.
pub async fn register_device_token(
    db: &Db,
    user_id: &str,
    platform: &str,
    token: &str,
) -> Result<(DeviceTokenRow, bool), DbError> {
    let at = now();
    let row = DeviceTokenRow {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_owned(),
        platform: platform.to_owned(),
        token: token.to_owned(),
        active: true,
        created_at: at,
        updated_at: at,
    };
    let stored: DeviceTokenRow = with_conn!(db, |conn| diesel::insert_into(device_tokens::table)
        .values(&row)
        .on_conflict(device_tokens::token)
        .do_update()
        .set((
            device_tokens::user_id.eq(user_id),
            device_tokens::platform.eq(platform),
            device_tokens::active.eq(true),
            device_tokens::updated_at.eq(at),
        ))
        .returning(DeviceTokenRow::as_returning())
        .get_result(conn)
        .await)?;
    let created = stored.id == row.id;
    Ok((stored, created))
}

/// Removes one of the user's devices; false if they have no such device.
pub async fn delete_device_token(db: &Db, user_id: &str, id: &str) -> Result<bool, DbError> {
    let n = with_conn!(db, |conn| diesel::delete(
        device_tokens::table
            .filter(device_tokens::id.eq(id))
            .filter(device_tokens::user_id.eq(user_id))
    )
    .execute(conn)
    .await)?;
    Ok(n > 0)
}

pub async fn preferences_of(db: &Db, user_id: &str) -> Result<Vec<PreferenceRow>, DbError> {
    Ok(with_conn!(db, |conn| notification_preferences::table
        .filter(notification_preferences::user_id.eq(user_id))
        .select(PreferenceRow::as_select())
        .load(conn)
        .await)?)
}

/// Stores a user's choices, all or none.
pub async fn set_preferences(db: &Db, rows: &[PreferenceRow]) -> Result<(), DbError> {
    with_conn!(db, |conn| conn
        .transaction(async |conn| {
            for row in rows {
                diesel::insert_into(notification_preferences::table)
                    .values(row)
                    .on_conflict((
                        notification_preferences::user_id,
                        notification_preferences::event_kind,
                        notification_preferences::channel,
                    ))
                    .do_update()
                    .set((
                        notification_preferences::enabled.eq(row.enabled),
                        notification_preferences::updated_at.eq(row.updated_at),
                    ))
                    .execute(conn)
                    .await?;
            }
            Ok::<_, diesel::result::Error>(())
        })
        .await)?;
    Ok(())
}
