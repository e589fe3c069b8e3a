//! Schools, their menus (meals) and lunch waves (service windows): rows and reads.

use super::changed_any;
use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError};
use crate::with_conn;
use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use tiffin_actors::domain::Wave;

pub async fn school(db: &Db, id: &str) -> Result<Option<SchoolRow>, DbError> {
    crate::db::find(db, id).await
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
    pub ready_when_stations_done: Option<bool>,
}

pub async fn update_school(db: &Db, id: &str, changes: SchoolChanges<'_>) -> Result<(), DbError> {
    let SchoolChanges {
        name,
        time_zone,
        quiet_hours,
        phone_region,
        digest_at,
        ready_when_stations_done,
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
            ready_when_stations_done.map(|r| schools::ready_when_stations_done.eq(r)),
            schools::updated_at.eq(at),
        ))
        .execute(conn)
        .await)?;
    changed_any(n)
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
    /// `Some(None)` takes the meal off its station.
    pub station_id: Option<Option<&'a str>>,
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
        c.station_id.map(|v| meals::station_id.eq(v)),
        meals::updated_at.eq(at),
    ))
    .returning(MealRow::as_returning())
    .get_result(conn)
    .await)?)
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

/// A time of day as stored: `HH:MM:SS` or `HH:MM`.
pub fn parse_time_of_day(s: &str) -> Option<chrono::NaiveTime> {
    chrono::NaiveTime::parse_from_str(s, "%H:%M:%S")
        .or_else(|_| chrono::NaiveTime::parse_from_str(s, "%H:%M"))
        .ok()
}

/// A school's waves on the school-local day of `now`, as instants.
pub fn waves_on_day(
    windows: &[ServiceWindowRow],
    time_zone: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<Wave> {
    let tz: chrono_tz::Tz = time_zone.parse().unwrap_or(chrono_tz::UTC);
    let day = now.with_timezone(&tz).date_naive();
    let instant = |t: chrono::NaiveTime| {
        day.and_time(t)
            .and_local_timezone(tz)
            .earliest()
            .map(|d| d.with_timezone(&chrono::Utc))
    };
    windows
        .iter()
        .filter_map(|w| {
            let starts_at = instant(parse_time_of_day(&w.starts_at)?)?;
            let ends_at = instant(parse_time_of_day(&w.ends_at)?)?;
            Some(Wave {
                id: w.id.clone(),
                name: w.name.clone(),
                starts_at,
                ends_at,
                order_cutoff: starts_at - Duration::minutes(i64::from(w.order_cutoff_minutes)),
                cancel_until: starts_at - Duration::minutes(i64::from(w.cancel_deadline_minutes)),
            })
        })
        .collect()
}

/// The school-local calendar day of an instant, for pickup codes.
pub(super) fn local_day(time_zone: &str, at: NaiveDateTime) -> String {
    let tz: chrono_tz::Tz = time_zone.parse().unwrap_or(chrono_tz::UTC);
    at.and_utc()
        .with_timezone(&tz)
        .format("%Y-%m-%d")
        .to_string()
}
