//! Admin and auth queries: schools, counters, people, links, menus, refresh tokens.
//! One diesel body per query serves both backends through `with_conn!`.

use crate::db::models::*;
use crate::db::schema::{
    counters, delivery_attempts, device_tokens, guardian_links, meals, notification_preferences,
    order_events, orders, outbox, pickup_codes, readers, refresh_tokens, rfid_cards, scans,
    schools, users,
};
use crate::db::{Db, DbError};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use std::collections::HashMap;

pub async fn insert_school(db: &Db, row: &SchoolRow) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::insert_into(schools::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

pub async fn school(db: &Db, id: &str) -> Result<Option<SchoolRow>, DbError> {
    Ok(with_conn!(db, |conn| schools::table
        .find(id)
        .select(SchoolRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

pub async fn schools(db: &Db, only: Option<&str>) -> Result<Vec<SchoolRow>, DbError> {
    Ok(with_conn!(db, |conn| {
        let mut q = schools::table.select(SchoolRow::as_select()).into_boxed();
        if let Some(id) = only {
            q = q.filter(schools::id.eq(id));
        }
        q.order(schools::name.asc()).load(conn).await
    })?)
}

pub async fn school_count(db: &Db) -> Result<i64, DbError> {
    Ok(with_conn!(db, |conn| schools::table
        .count()
        .get_result(conn)
        .await)?)
}

/// What `PATCH /schools/{id}` changes; `None` leaves a field as it is.
pub struct SchoolChanges<'a> {
    pub name: Option<&'a str>,
    pub time_zone: Option<&'a str>,
    /// `Some(None)` turns quiet hours off.
    pub quiet_hours: Option<Option<(String, String)>>,
    pub phone_region: Option<&'a str>,
    /// `Some(None)` goes back to the hub's digest time.
    pub digest_at: Option<Option<String>>,
}

pub async fn update_school(db: &Db, id: &str, changes: SchoolChanges<'_>) -> Result<(), DbError> {
    let SchoolChanges {
        name,
        time_zone,
        quiet_hours,
        phone_region,
        digest_at,
    } = changes;
    let at = now();
    let (quiet_start, quiet_end) = match quiet_hours {
        Some(Some((start, end))) => (Some(Some(start)), Some(Some(end))),
        Some(None) => (Some(None), Some(None)),
        None => (None, None),
    };
    let n = with_conn!(db, |conn| diesel::update(schools::table.find(id))
        .set((
            name.map(|n| schools::name.eq(n)),
            time_zone.map(|t| schools::time_zone.eq(t)),
            quiet_start
                .clone()
                .map(|t| schools::quiet_hours_start.eq(t)),
            quiet_end.clone().map(|t| schools::quiet_hours_end.eq(t)),
            phone_region.map(|r| schools::phone_region.eq(r)),
            digest_at.clone().map(|t| schools::digest_at.eq(t)),
            schools::updated_at.eq(at),
        ))
        .execute(conn)
        .await)?;
    if n == 0 {
        Err(DbError::NotFound)
    } else {
        Ok(())
    }
}

pub async fn insert_counter(db: &Db, row: &CounterRow) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::insert_into(counters::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

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

pub async fn insert_user(db: &Db, row: &UserRow) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::insert_into(users::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

pub async fn user(db: &Db, id: &str) -> Result<Option<UserRow>, DbError> {
    Ok(with_conn!(db, |conn| users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

/// A user by sign-in name: an email address or a phone number.
pub async fn user_by_login(db: &Db, login: &str) -> Result<Option<UserRow>, DbError> {
    Ok(with_conn!(db, |conn| users::table
        .filter(users::email.eq(login).or(users::phone.eq(login)))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

pub async fn users_of_school(
    db: &Db,
    school_id: &str,
    role: Option<&str>,
) -> Result<Vec<UserRow>, DbError> {
    Ok(with_conn!(db, |conn| {
        let mut q = users::table
            .filter(users::school_id.eq(school_id))
            .select(UserRow::as_select())
            .into_boxed();
        if let Some(role) = role {
            q = q.filter(users::role.eq(role));
        }
        q.order(users::display_name.asc()).load(conn).await
    })?)
}

pub struct UserChanges<'a> {
    pub display_name: Option<&'a str>,
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub password_hash: Option<&'a str>,
    pub allergies: Option<&'a str>,
    pub locale: Option<&'a str>,
    pub active: Option<bool>,
}

pub async fn update_user(
    db: &Db,
    school_id: &str,
    id: &str,
    c: &UserChanges<'_>,
) -> Result<UserRow, DbError> {
    let at = now();
    Ok(with_conn!(db, |conn| diesel::update(
        users::table
            .filter(users::id.eq(id))
            .filter(users::school_id.eq(school_id))
    )
    .set((
        c.display_name.map(|v| users::display_name.eq(v)),
        c.email.map(|v| users::email.eq(Some(v))),
        c.phone.map(|v| users::phone.eq(Some(v))),
        c.password_hash.map(|v| users::password_hash.eq(Some(v))),
        c.allergies.map(|v| users::allergies.eq(v)),
        c.locale.map(|v| users::locale.eq(v)),
        c.active.map(|v| users::active.eq(v)),
        users::updated_at.eq(at),
    ))
    .returning(UserRow::as_returning())
    .get_result(conn)
    .await)?)
}

/// Replaces a person's password hash (the operator's reset, `tiffin password`).
pub async fn set_password(db: &Db, user_id: &str, hash: &str) -> Result<(), DbError> {
    let n = with_conn!(db, |conn| diesel::update(users::table.find(user_id))
        .set((
            users::password_hash.eq(Some(hash)),
            users::updated_at.eq(now())
        ))
        .execute(conn)
        .await)?;
    if n == 0 {
        Err(DbError::NotFound)
    } else {
        Ok(())
    }
}

pub async fn insert_link(db: &Db, row: &GuardianLinkRow) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::insert_into(guardian_links::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

pub async fn delete_link(db: &Db, guardian_id: &str, student_id: &str) -> Result<(), DbError> {
    let n = with_conn!(db, |conn| diesel::delete(
        guardian_links::table
            .filter(guardian_links::guardian_id.eq(guardian_id))
            .filter(guardian_links::student_id.eq(student_id))
    )
    .execute(conn)
    .await)?;
    if n == 0 {
        Err(DbError::NotFound)
    } else {
        Ok(())
    }
}

pub async fn links_of_student(db: &Db, student_id: &str) -> Result<Vec<GuardianLinkRow>, DbError> {
    Ok(with_conn!(db, |conn| guardian_links::table
        .filter(guardian_links::student_id.eq(student_id))
        .select(GuardianLinkRow::as_select())
        .load(conn)
        .await)?)
}

pub async fn is_guardian_of(db: &Db, guardian_id: &str, student_id: &str) -> Result<bool, DbError> {
    let n: i64 = with_conn!(db, |conn| guardian_links::table
        .filter(guardian_links::guardian_id.eq(guardian_id))
        .filter(guardian_links::student_id.eq(student_id))
        .count()
        .get_result(conn)
        .await)?;
    Ok(n > 0)
}

pub async fn insert_meal(db: &Db, row: &MealRow) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::insert_into(meals::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

pub async fn meals(db: &Db, school_id: &str) -> Result<Vec<MealRow>, DbError> {
    Ok(with_conn!(db, |conn| meals::table
        .filter(meals::school_id.eq(school_id))
        .order(meals::name.asc())
        .select(MealRow::as_select())
        .load(conn)
        .await)?)
}

pub struct MealChanges<'a> {
    pub name: Option<&'a str>,
    pub price_cents: Option<i64>,
    pub allergens: Option<&'a str>,
    pub available: Option<bool>,
}

pub async fn update_meal(
    db: &Db,
    school_id: &str,
    id: &str,
    c: &MealChanges<'_>,
) -> Result<MealRow, DbError> {
    let at = now();
    Ok(with_conn!(db, |conn| diesel::update(
        meals::table
            .filter(meals::id.eq(id))
            .filter(meals::school_id.eq(school_id))
    )
    .set((
        c.name.map(|v| meals::name.eq(v)),
        c.price_cents.map(|v| meals::price_cents.eq(v)),
        c.allergens.map(|v| meals::allergens.eq(v)),
        c.available.map(|v| meals::available.eq(v)),
        meals::updated_at.eq(at),
    ))
    .returning(MealRow::as_returning())
    .get_result(conn)
    .await)?)
}

/// The school and student of an order, for authorisation before anything else.
pub async fn order_owner(db: &Db, order_id: &str) -> Result<Option<(String, String)>, DbError> {
    Ok(with_conn!(db, |conn| orders::table
        .find(order_id)
        .select((orders::school_id, orders::student_id))
        .first(conn)
        .await
        .optional())?)
}

pub async fn order_history(db: &Db, order_id: &str) -> Result<Vec<OrderEventRow>, DbError> {
    Ok(with_conn!(db, |conn| order_events::table
        .filter(order_events::order_id.eq(order_id))
        .order(order_events::version.asc())
        .select(OrderEventRow::as_select())
        .load(conn)
        .await)?)
}

/// Orders counted by state, for `/metrics`.
pub async fn orders_by_state(db: &Db) -> Result<Vec<(String, i64)>, DbError> {
    Ok(with_conn!(db, |conn| orders::table
        .group_by(orders::state)
        .select((orders::state, diesel::dsl::count_star()))
        .load(conn)
        .await)?)
}

pub async fn insert_refresh_token(db: &Db, row: &RefreshTokenRow) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::insert_into(refresh_tokens::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

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

/// Meals ordered in a school between two instants (cancelled orders excluded), per lunch
/// wave: (wave id or None, meal id, meal name, quantity), most ordered first within a wave.
pub async fn item_counts(
    db: &Db,
    school_id: &str,
    from: NaiveDateTime,
    until: NaiveDateTime,
) -> Result<Vec<(Option<String>, String, String, i64)>, DbError> {
    use crate::db::schema::order_items;
    type Row = (Option<String>, String, String, Option<i64>);
    let rows: Vec<Row> = with_conn!(db, |conn| order_items::table
        .inner_join(orders::table)
        .filter(orders::school_id.eq(school_id))
        .filter(orders::created_at.ge(from))
        .filter(orders::created_at.lt(until))
        .filter(orders::state.ne("cancelled"))
        .group_by((
            orders::window_id,
            order_items::meal_id,
            order_items::meal_name
        ))
        .select((
            orders::window_id,
            order_items::meal_id,
            order_items::meal_name,
            diesel::dsl::sum(order_items::quantity),
        ))
        .load(conn)
        .await)?;
    let mut counts: Vec<(Option<String>, String, String, i64)> = rows
        .into_iter()
        .map(|(wave, id, name, n)| (wave, id, name, n.unwrap_or(0)))
        .collect();
    counts.sort_by(|a, b| a.0.cmp(&b.0).then(b.3.cmp(&a.3)).then(a.2.cmp(&b.2)));
    Ok(counts)
}

pub async fn insert_service_window(db: &Db, row: &ServiceWindowRow) -> Result<(), DbError> {
    use crate::db::schema::service_windows;
    with_conn!(db, |conn| diesel::insert_into(service_windows::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

pub async fn service_windows(db: &Db, school_id: &str) -> Result<Vec<ServiceWindowRow>, DbError> {
    use crate::db::schema::service_windows;
    Ok(with_conn!(db, |conn| service_windows::table
        .filter(service_windows::school_id.eq(school_id))
        .order(service_windows::starts_at.asc())
        .select(ServiceWindowRow::as_select())
        .load(conn)
        .await)?)
}

/// Schools with orders still in progress: their kitchens start at boot, so timers re-arm
/// without waiting for a request.
pub async fn schools_with_live_orders(db: &Db) -> Result<Vec<String>, DbError> {
    Ok(with_conn!(db, |conn| orders::table
        .filter(orders::state.eq_any(["placed", "confirmed", "preparing", "ready"]))
        .select(orders::school_id)
        .distinct()
        .load(conn)
        .await)?)
}

/// Every outbox row an order's events made, oldest first.
pub async fn order_notifications(db: &Db, order_id: &str) -> Result<Vec<OutboxRow>, DbError> {
    Ok(with_conn!(db, |conn| outbox::table
        .inner_join(
            order_events::table.on(order_events::school_id
                .eq(outbox::school_id)
                .and(order_events::seq.eq(outbox::event_seq))),
        )
        .filter(order_events::order_id.eq(order_id))
        .order((outbox::created_at.asc(), outbox::id.asc()))
        .select(OutboxRow::as_select())
        .load(conn)
        .await)?)
}

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

/// Dead letters, newest first; of one school, or all.
pub async fn dead_letters(
    db: &Db,
    school_id: Option<&str>,
    limit: i64,
) -> Result<Vec<OutboxRow>, DbError> {
    Ok(with_conn!(db, |conn| {
        let mut query = outbox::table
            .filter(outbox::status.eq("dead"))
            .order((outbox::created_at.desc(), outbox::id.desc()))
            .limit(limit)
            .select(OutboxRow::as_select())
            .into_boxed();
        if let Some(school_id) = school_id {
            query = query.filter(outbox::school_id.eq(school_id));
        }
        query.load(conn).await
    })?)
}

pub async fn outbox_row(db: &Db, id: &str) -> Result<Option<OutboxRow>, DbError> {
    Ok(with_conn!(db, |conn| outbox::table
        .find(id)
        .select(OutboxRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

/// Puts a dead letter back in the queue as new: due now, attempts from zero, a fresh expiry.
/// False if it is not (or no longer) dead.
pub async fn requeue_dead_letter(
    db: &Db,
    id: &str,
    expires_at: Option<NaiveDateTime>,
) -> Result<bool, DbError> {
    let at = now();
    let n = with_conn!(db, |conn| diesel::update(
        outbox::table
            .filter(outbox::id.eq(id))
            .filter(outbox::status.eq("dead"))
    )
    .set((
        outbox::status.eq("pending"),
        outbox::attempts.eq(0),
        outbox::next_attempt_at.eq(at),
        outbox::claimed_until.eq(None::<NaiveDateTime>),
        outbox::expires_at.eq(expires_at),
    ))
    .execute(conn)
    .await)?;
    Ok(n > 0)
}

/// Every recorded delivery attempt of these outbox rows, oldest first.
pub async fn delivery_attempts_of(
    db: &Db,
    outbox_ids: &[String],
) -> Result<Vec<(String, i32, NaiveDateTime, String, Option<String>)>, DbError> {
    Ok(with_conn!(db, |conn| delivery_attempts::table
        .filter(delivery_attempts::outbox_id.eq_any(outbox_ids))
        .order((
            delivery_attempts::at.asc(),
            delivery_attempts::attempt.asc()
        ))
        .select((
            delivery_attempts::outbox_id,
            delivery_attempts::attempt,
            delivery_attempts::at,
            delivery_attempts::outcome,
            delivery_attempts::detail,
        ))
        .load(conn)
        .await)?)
}

pub async fn insert_reader(db: &Db, row: &ReaderRow) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::insert_into(readers::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

pub async fn reader(db: &Db, id: &str) -> Result<Option<ReaderRow>, DbError> {
    Ok(with_conn!(db, |conn| readers::table
        .find(id)
        .select(ReaderRow::as_select())
        .first(conn)
        .await
        .optional())?)
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

pub async fn insert_card(db: &Db, row: &CardRow) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::insert_into(rfid_cards::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

pub async fn card(db: &Db, id: &str) -> Result<Option<CardRow>, DbError> {
    Ok(with_conn!(db, |conn| rfid_cards::table
        .find(id)
        .select(CardRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

pub async fn card_by_uid(db: &Db, uid: &str) -> Result<Option<CardRow>, DbError> {
    Ok(with_conn!(db, |conn| rfid_cards::table
        .filter(rfid_cards::card_uid.eq(uid))
        .select(CardRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

pub async fn cards_of(
    db: &Db,
    school_id: &str,
    student_id: Option<&str>,
) -> Result<Vec<CardRow>, DbError> {
    Ok(with_conn!(db, |conn| {
        let mut query = rfid_cards::table
            .filter(rfid_cards::school_id.eq(school_id))
            .order(rfid_cards::created_at.asc())
            .select(CardRow::as_select())
            .into_boxed();
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

pub async fn scan_by_seq(db: &Db, reader_id: &str, seq: i64) -> Result<Option<ScanRow>, DbError> {
    Ok(with_conn!(db, |conn| scans::table
        .filter(scans::reader_id.eq(reader_id))
        .filter(scans::seq.eq(seq))
        .select(ScanRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

/// A scan being decided.
pub const SCAN_PENDING: &str = "pending";
/// A claim its node left undecided (it died), nothing handed over: a retry decides afresh.
pub const SCAN_ABANDONED: &str = "abandoned";

/// Records a scan as being decided; false if its (reader, seq) is already taken.
pub async fn claim_scan(db: &Db, row: &ScanRow) -> Result<bool, DbError> {
    let inserted = with_conn!(db, |conn| diesel::insert_into(scans::table)
        .values(row)
        .on_conflict_do_nothing()
        .execute(conn)
        .await)?;
    Ok(inserted == 1)
}

/// Takes over an abandoned scan as the next claim of it; `None` if someone else did first.
pub async fn take_over_scan(
    db: &Db,
    seen: &ScanRow,
    node: &str,
    at: NaiveDateTime,
) -> Result<Option<ScanRow>, DbError> {
    Ok(with_conn!(db, |conn| diesel::update(
        scans::table
            .filter(scans::id.eq(&seen.id))
            .filter(scans::verdict.eq(SCAN_ABANDONED))
            .filter(scans::attempt.eq(seen.attempt))
    )
    .set((
        scans::verdict.eq(SCAN_PENDING),
        scans::attempt.eq(seen.attempt + 1),
        scans::claimed_by.eq(node),
        scans::claimed_at.eq(at),
    ))
    .returning(ScanRow::as_returning())
    .get_result(conn)
    .await
    .optional())?)
}

/// The first decided scan of this card on this reader within `window` of `read_at`.
pub async fn first_scan_near(
    db: &Db,
    reader_id: &str,
    card_uid: &str,
    read_at: NaiveDateTime,
    window: chrono::TimeDelta,
    except: &str,
) -> Result<Option<ScanRow>, DbError> {
    let (from, to) = (read_at - window, read_at + window);
    Ok(with_conn!(db, |conn| scans::table
        .filter(scans::reader_id.eq(reader_id))
        .filter(scans::card_uid.eq(card_uid))
        .filter(scans::read_at.between(from, to))
        .filter(scans::verdict.ne_all([SCAN_PENDING, SCAN_ABANDONED]))
        .filter(scans::id.ne(except))
        .order((scans::received_at.asc(), scans::id.asc()))
        .select(ScanRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

/// A scan's decision.
pub struct ScanDecision<'a> {
    pub verdict: &'a tiffin_actors::rfid::Verdict,
    pub order_id: Option<&'a str>,
    pub student_id: Option<&'a str>,
    pub first_scan_id: Option<&'a str>,
    pub took: Option<std::time::Duration>,
}

/// Records a scan's verdict, if `attempt` is still its claim and it is undecided; false if
/// not (decided, abandoned or taken over meanwhile).
pub async fn finish_scan(
    db: &Db,
    id: &str,
    attempt: i32,
    decision: ScanDecision<'_>,
) -> Result<bool, DbError> {
    let answer =
        serde_json::to_string(decision.verdict).map_err(|e| DbError::Other(e.to_string()))?;
    let took = decision.took.map(|t| t.as_micros() as i64);
    let n = with_conn!(db, |conn| diesel::update(
        scans::table
            .filter(scans::id.eq(id))
            .filter(scans::verdict.eq(SCAN_PENDING))
            .filter(scans::attempt.eq(attempt))
    )
    .set((
        scans::verdict.eq(decision.verdict.code()),
        scans::answer.eq(Some(answer)),
        scans::order_id.eq(decision.order_id),
        scans::student_id.eq(decision.student_id),
        scans::first_scan_id.eq(decision.first_scan_id),
        scans::took_us.eq(took),
    ))
    .execute(conn)
    .await)?;
    Ok(n > 0)
}

/// A scan claim past `stale_before`, or `node`'s from before `started` (its previous process).
/// A claim an earlier version took has no `claimed_at`: its arrival counts.
macro_rules! dead_claim {
    ($node:expr, $started:expr, $stale_before:expr) => {
        scans::claimed_at
            .lt($stale_before)
            .or(scans::claimed_at
                .is_null()
                .and(scans::received_at.lt($stale_before)))
            .or(scans::claimed_by
                .eq($node)
                .and(scans::claimed_at.lt($started)))
    };
}

/// Undecided scans whose claim is dead: past `stale_before`, or this node's from before
/// `started` (its previous process). Oldest first, at most `limit`.
pub async fn dead_scan_claims(
    db: &Db,
    node: &str,
    started: NaiveDateTime,
    stale_before: NaiveDateTime,
    limit: i64,
) -> Result<Vec<ScanRow>, DbError> {
    Ok(with_conn!(db, |conn| scans::table
        .filter(scans::verdict.eq(SCAN_PENDING))
        .filter(dead_claim!(node, started, stale_before))
        .order(scans::claimed_at.asc())
        .limit(limit)
        .select(ScanRow::as_select())
        .load(conn)
        .await)?)
}

/// Abandons these undecided scans if their claims are still dead (as `dead_scan_claims`
/// found them): a decider that finished meanwhile keeps its decision.
pub async fn abandon_scans(
    db: &Db,
    ids: &[&str],
    node: &str,
    started: NaiveDateTime,
    stale_before: NaiveDateTime,
) -> Result<usize, DbError> {
    Ok(with_conn!(db, |conn| diesel::update(
        scans::table
            .filter(scans::id.eq_any(ids))
            .filter(scans::verdict.eq(SCAN_PENDING))
            .filter(dead_claim!(node, started, stale_before))
    )
    .set(scans::verdict.eq(SCAN_ABANDONED))
    .execute(conn)
    .await)?)
}

/// Pickups recorded with one of `reasons` among the orders of the students holding these
/// cards: (reason, the order's snapshot after it). What scans of an earlier version handed
/// over before their node died, their decision unrecorded.
pub async fn pickups_by_reason(
    db: &Db,
    card_uids: &[&str],
    reasons: &[String],
) -> Result<Vec<(String, String)>, DbError> {
    let rows: Vec<(Option<String>, String)> = with_conn!(db, |conn| {
        let students: Vec<String> = rfid_cards::table
            .filter(rfid_cards::card_uid.eq_any(card_uids))
            .select(rfid_cards::student_id)
            .load(conn)
            .await?;
        order_events::table
            .inner_join(orders::table.on(orders::id.eq(order_events::order_id)))
            .filter(orders::student_id.eq_any(&students))
            .filter(order_events::to_state.eq("picked_up"))
            .filter(order_events::reason.eq_any(reasons))
            .select((order_events::reason, order_events::snapshot))
            .load(conn)
            .await
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|(reason, snapshot)| Some((reason?, snapshot)))
        .collect())
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

pub async fn recent_scans(db: &Db, school_id: &str, limit: i64) -> Result<Vec<ScanRow>, DbError> {
    Ok(with_conn!(db, |conn| scans::table
        .filter(scans::school_id.eq(school_id))
        .order((scans::received_at.desc(), scans::id.desc()))
        .limit(limit)
        .select(ScanRow::as_select())
        .load(conn)
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

/// An order of the day as read: (snapshot, school time zone, state, pickup day).
type DayOrderRow = (String, String, String, Option<String>);

/// The orders of the day of the student `$student` (a nullable text expression: a value, or
/// the scalar subquery of a card's holder) at a school, picked up ones on any of `$days`;
/// [`of_today`] keeps today's. The student is an equality so that a plan made without
/// statistics still reads `orders_school_student` for both columns rather than walking the
/// school's orders (it did, under `= ANY (subquery)`, at 150-300 ms a scan late in a rush).
macro_rules! orders_of_day {
    ($school_id:expr, $student:expr, $days:expr) => {
        order_events::table
            .inner_join(
                orders::table.on(orders::id
                    .eq(order_events::order_id)
                    .and(orders::version.eq(order_events::version))),
            )
            .inner_join(schools::table.on(schools::id.eq(orders::school_id)))
            .filter(orders::school_id.eq($school_id))
            .filter(orders::student_id.nullable().eq($student))
            .filter(
                orders::state
                    .eq_any(["placed", "confirmed", "preparing", "ready"])
                    .or(orders::state
                        .eq("picked_up")
                        .and(orders::pickup_day.eq_any($days))),
            )
            .select((
                order_events::snapshot,
                schools::time_zone,
                orders::state,
                orders::pickup_day,
            ))
    };
}

/// A student's orders a counter cares about today: the live ones and those picked up today
/// (school-local), each as its latest event's snapshot (JSON). One statement: the orders with
/// their current event and their school's time zone.
pub async fn student_orders_of_day(
    db: &Db,
    school_id: &str,
    student_id: &str,
) -> Result<Vec<String>, DbError> {
    let days = days_around_today();
    let rows = with_conn!(db, |conn| orders_of_day!(
        school_id,
        Some(student_id),
        &days
    )
    .load::<DayOrderRow>(conn)
    .await)?;
    Ok(of_today(rows))
}

/// Today somewhere on Earth is one of these UTC dates; the school's zone picks one.
fn days_around_today() -> Vec<String> {
    let utc = chrono::Utc::now().date_naive();
    [utc.pred_opt(), Some(utc), utc.succ_opt()]
        .into_iter()
        .flatten()
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect()
}

/// The snapshots of the orders still live, or picked up on their school's today.
fn of_today(rows: Vec<DayOrderRow>) -> Vec<String> {
    rows.into_iter()
        .filter(|(_, time_zone, state, day)| {
            let tz: chrono_tz::Tz = time_zone.parse().unwrap_or(chrono_tz::UTC);
            let today = chrono::Utc::now()
                .with_timezone(&tz)
                .format("%Y-%m-%d")
                .to_string();
            state != "picked_up" || day.as_deref() == Some(today.as_str())
        })
        .map(|(snapshot, ..)| snapshot)
        .collect()
}

mod scan_claims;
pub use scan_claims::{ClaimedScan, ScanToClaim, claim_scans_with_facts};

/// Whether the order's pickup was recorded with this reason (a scan that handed it over).
pub async fn picked_up_because(db: &Db, order_id: &str, reason: &str) -> Result<bool, DbError> {
    let n: i64 = with_conn!(db, |conn| order_events::table
        .filter(order_events::order_id.eq(order_id))
        .filter(order_events::to_state.eq("picked_up"))
        .filter(order_events::reason.eq(reason))
        .count()
        .get_result(conn)
        .await)?;
    Ok(n > 0)
}

pub async fn insert_pickup_code(db: &Db, row: &PickupCodeRow) -> Result<(), DbError> {
    with_conn!(db, |conn| diesel::insert_into(pickup_codes::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

pub async fn pickup_code(db: &Db, id: &str) -> Result<Option<PickupCodeRow>, DbError> {
    Ok(with_conn!(db, |conn| pickup_codes::table
        .find(id)
        .select(PickupCodeRow::as_select())
        .first(conn)
        .await
        .optional())?)
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

/// How many scans of an order got this verdict.
pub async fn scans_with_verdict(db: &Db, order_id: &str, verdict: &str) -> Result<i64, DbError> {
    Ok(with_conn!(db, |conn| scans::table
        .filter(scans::order_id.eq(order_id))
        .filter(scans::verdict.eq(verdict))
        .filter(scans::first_scan_id.is_null())
        .count()
        .get_result(conn)
        .await)?)
}

#[cfg(test)]
#[path = "repo_plan_tests.rs"]
mod plan_tests;
