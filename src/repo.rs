//! Admin and auth queries: schools, counters, people, links, menus, refresh tokens.
//! One diesel body per query serves both backends through `with_conn!`.

use crate::db::models::*;
use crate::db::schema::{
    counters, guardian_links, meals, order_events, orders, outbox, refresh_tokens, schools, users,
};
use crate::db::{Db, DbError};
use crate::with_conn;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

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

pub async fn update_school(
    db: &Db,
    id: &str,
    name: Option<&str>,
    time_zone: Option<&str>,
) -> Result<(), DbError> {
    let at = now();
    let n = with_conn!(db, |conn| diesel::update(schools::table.find(id))
        .set((
            name.map(|n| schools::name.eq(n)),
            time_zone.map(|t| schools::time_zone.eq(t)),
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
