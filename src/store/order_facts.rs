//! What a batch of new orders reads before it decides them (`intake`): schools, people,
//! menus, waves and earlier requests with the same keys, set-wise, whatever the batch's size.
//! PostgreSQL sends them together on generic plans, in one round trip.

use super::TxError;
use super::batch::{one_by_one, pipelined_on_generic_plans, unless_none};
use crate::db::models::{MealRow, ServiceWindowRow};
use crate::db::schema::{meals, orders, schools, service_windows, users};
use crate::db::{PgConn, SqliteConn};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use std::collections::HashMap;
use tiffin_actors::ports::NewOrder;

/// What a batch's orders need, read in a handful of statements.
pub(super) struct Facts {
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
    async fn facts(&mut self, batch: &[NewOrder]) -> Result<Facts, TxError>;
}

/// A user as the batch needs them: (school, role, name, allergies, active).
pub(super) type Person = (Option<String>, String, String, String, bool);

macro_rules! facts_queries {
    (
        $conn:ty,
        |$this:ident| $join:ident($($on:expr)?),
        $c0:expr, $c1:expr, $c2:expr, $c3:expr,
        |$placers:ident, $keys:ident| $keyed:expr
    ) => {
        impl FactsQueries for $conn {
            async fn facts(&mut self, batch: &[NewOrder]) -> Result<Facts, TxError> {
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
                    schools::table
                        .filter(schools::id.eq_any(&school_ids))
                        .select((schools::id, schools::time_zone))
                        .load::<(String, String)>($c0),
                    users::table
                        .filter(users::id.eq_any(&people))
                        .select((
                            users::id,
                            users::school_id,
                            users::role,
                            users::display_name,
                            users::allergies,
                            users::active,
                        ))
                        .load::<(String, Option<String>, String, String, String, bool)>($c1),
                    meals::table
                        .filter(meals::id.eq_any(&meal_ids))
                        .select(MealRow::as_select())
                        .load::<MealRow>($c2),
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
                    schools: schools.into_iter().collect(),
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
