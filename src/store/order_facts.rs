//! What a batch of new orders reads before it decides them (`intake`): schools, people,
//! menus, waves and earlier requests with the same keys, set-wise, whatever the batch's size,
//! with the facts epoch they were read at, and the people and meals of any schools asked for
//! whole (`facts_cache`). PostgreSQL sends them together on generic plans, in one round trip.

use super::TxError;
use super::batch::{one_by_one, pipelined_on_generic_plans, unless_none};
use crate::db::models::{MealRow, ServiceWindowRow};
use crate::db::schema::{facts_epoch, meals, orders, schools, service_windows, users};
use crate::db::{PgConn, SqliteConn};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use std::collections::HashMap;
use tiffin_actors::ports::NewOrder;

/// What a batch's orders need, read in a handful of statements.
#[derive(Default)]
pub(super) struct Facts {
    /// The facts epoch when they were read, read first: a change after it moves it.
    pub(super) epoch: Option<i64>,
    /// Each school's time zone.
    pub(super) schools: HashMap<String, String>,
    /// The batch's students and the people who placed its orders, by id.
    pub(super) people: HashMap<String, Person>,
    pub(super) menu: Vec<MealRow>,
    pub(super) windows: Vec<ServiceWindowRow>,
    /// Orders made earlier with a key: (placed_by, key) -> (order id, request fingerprint).
    pub(super) keyed: HashMap<(String, String), (String, Option<String>)>,
}

/// Orders placed earlier with a batch's keys, one probe of the keys' index a (placer, key)
/// pair: the index leads with the placer, and a read by key alone read every order; a read
/// by the placers' and keys' lists could walk all of a placer's orders.
pub(crate) const KEYED_ORDERS_PG: &str = "\
SELECT o.placed_by, o.idempotency_key, o.id, o.request_fingerprint
FROM unnest($1::text[], $2::text[]) AS k(placed_by, idempotency_key)
CROSS JOIN LATERAL (
    SELECT o.placed_by, o.idempotency_key, o.id, o.request_fingerprint
    FROM orders o
    WHERE o.placed_by = k.placed_by AND o.idempotency_key = k.idempotency_key
    OFFSET 0) o";

/// An order placed earlier with a key, as a batch reads it.
#[derive(Queryable, QueryableByName)]
struct KeyedOrder {
    #[diesel(sql_type = Text)]
    placed_by: String,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    request_fingerprint: Option<String>,
}

/// The batch's reads, expanded for each backend.
pub(super) trait FactsQueries {
    /// The batch's facts, and all the people and meals of the schools `whole`.
    async fn facts(&mut self, batch: &[NewOrder], whole: &[&str]) -> Result<Facts, TxError>;
}

/// A user as the batch needs them: (school, role, name, allergies, active).
pub(super) type Person = (Option<String>, String, String, String, bool);

/// The batch's people (`ids`: its students and placers) and everyone of the schools `whole`,
/// as two reads by index (one with an `OR` was planned as a scan of every person while the
/// table was empty); someone in both comes twice.
#[diesel::dsl::auto_type(no_type_alias)]
pub(super) fn people_read<'a>(ids: &'a [&'a str], whole: &'a [&'a str]) -> _ {
    let columns = (
        users::id,
        users::school_id,
        users::role,
        users::display_name,
        users::allergies,
        users::active,
    );
    users::table
        .filter(users::id.eq_any(ids))
        .select(columns)
        .union_all(
            users::table
                .filter(users::school_id.eq_any(whole))
                .select(columns),
        )
}

/// The batch's meals (`ids`) and every meal of the schools `whole`, as two reads by index; a
/// meal in both comes twice.
#[diesel::dsl::auto_type(no_type_alias)]
pub(super) fn meals_read<'a>(ids: &'a [&'a str], whole: &'a [&'a str]) -> _ {
    let columns = (
        meals::id,
        meals::school_id,
        meals::name,
        meals::price_cents,
        meals::allergens,
        meals::available,
        meals::created_at,
        meals::updated_at,
        meals::station_id,
    );
    meals::table
        .filter(meals::id.eq_any(ids))
        .select(columns)
        .union_all(
            meals::table
                .filter(meals::school_id.eq_any(whole))
                .select(columns),
        )
}

macro_rules! facts_queries {
    (
        $conn:ty,
        |$this:ident| $join:ident($($on:expr)?),
        $c0:expr, $c1:expr, $c2:expr, $c3:expr,
        |$placers:ident, $keys:ident| $keyed:expr
    ) => {
        impl FactsQueries for $conn {
            async fn facts(
                &mut self,
                batch: &[NewOrder],
                whole: &[&str],
            ) -> Result<Facts, TxError> {
                let school_ids: Vec<&str> = batch.iter().map(|n| n.school_id.as_str()).collect();
                let people: Vec<&str> = batch
                    .iter()
                    .flat_map(|n| [n.student_id.as_str(), n.placed_by.as_str()])
                    .collect();
                let meal_ids: Vec<&str> = batch
                    .iter()
                    .flat_map(|n| n.items.iter().map(|i| i.meal_id.as_str()))
                    .collect();
                let (keyed_by, keys): (Vec<&str>, Vec<&str>) = batch
                    .iter()
                    .filter_map(|n| {
                        let i = n.idempotency.as_ref()?;
                        Some((n.placed_by.as_str(), i.key.as_str()))
                    })
                    .unzip();
                let $this = self;
                let (schools, people, menu, windows, keyed) = $join!(
                    $($on,)?
                    // First: what the others read is at least as new as the epoch.
                    schools::table
                        .filter(schools::id.eq_any(&school_ids))
                        .select((
                            schools::id,
                            schools::time_zone,
                            facts_epoch::table
                                .filter(facts_epoch::id.eq(1))
                                .select(facts_epoch::epoch)
                                .single_value(),
                        ))
                        .load::<(String, String, Option<i64>)>($c0),
                    people_read(&people, whole)
                        .load::<(String, Option<String>, String, String, String, bool)>($c1),
                    meals_read(&meal_ids, whole).load::<MealRow>($c2),
                    service_windows::table
                        .filter(service_windows::school_id.eq_any(&school_ids))
                        .select(ServiceWindowRow::as_select())
                        .load::<ServiceWindowRow>($c3),
                    unless_none(&keys, || {
                        let ($placers, $keys) = (&keyed_by, &keys);
                        $keyed
                    }),
                );
                Ok(Facts {
                    epoch: schools.iter().find_map(|(.., epoch)| *epoch),
                    schools: schools
                        .into_iter()
                        .map(|(id, time_zone, _)| (id, time_zone))
                        .collect(),
                    people: people
                        .into_iter()
                        .map(|(id, school, role, name, allergies, active)| {
                            (id, (school, role, name, allergies, active))
                        })
                        .collect(),
                    menu,
                    windows,
                    keyed: keyed
                        .into_iter()
                        .map(|k: KeyedOrder| {
                            ((k.placed_by, k.idempotency_key), (k.id, k.request_fingerprint))
                        })
                        .collect(),
                })
            }
        }
    };
}
// PostgreSQL plans them once a connection: afresh, their planning cost more than their
// index probes, at every batch.
facts_queries!(
    PgConn,
    |conn| pipelined_on_generic_plans(&*conn),
    &mut &*conn,
    &mut &*conn,
    &mut &*conn,
    &mut &*conn,
    |placers, keys| crate::db::kept(
        diesel::sql_query(KEYED_ORDERS_PG)
            .bind::<diesel::sql_types::Array<Text>, _>(placers)
            .bind::<diesel::sql_types::Array<Text>, _>(keys)
    )
    .load::<KeyedOrder>(&mut &*conn)
);
facts_queries!(
    SqliteConn,
    |conn| one_by_one(),
    &mut *conn,
    &mut *conn,
    &mut *conn,
    &mut *conn,
    |placers, keys| orders::table
        .filter(orders::placed_by.eq_any(placers))
        .filter(orders::idempotency_key.eq_any(keys))
        .select((
            orders::placed_by,
            // Not null: it equals one of the keys.
            orders::idempotency_key.assume_not_null(),
            orders::id,
            orders::request_fingerprint,
        ))
        .load::<KeyedOrder>(&mut *conn)
);
