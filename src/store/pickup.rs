//! Where an order becoming ready is picked up: the least-loaded open counter and a free
//! pickup code of the school's day, chosen for a whole batch of transitions from set-wise
//! reads.

use super::batch::{one_by_one, pipelined};
use super::schools::local_day;
use crate::db::schema::{counters, orders, schools};
use crate::db::{PgConn, SqliteConn};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use std::collections::{BTreeSet, HashMap, HashSet};
use tiffin_actors::domain::{CounterRef, OrderState, assign_counter, pickup_code};
use tiffin_actors::ports::CommandError;

/// What orders becoming ready need, read set-wise for their schools: time zones, open
/// counters, the orders waiting at each, and fresh codes with those of them already taken on
/// the days around now (a school's day is within one of the UTC day).
#[derive(Default)]
pub(super) struct Pickup {
    zones: HashMap<String, String>,
    open: HashMap<String, Vec<CounterRef>>,
    waiting: HashMap<String, i64>,
    /// School -> codes drawn for this batch, each to be checked against `taken`.
    candidates: HashMap<String, Vec<String>>,
    /// (school, local day) -> codes taken, of the candidates.
    taken: HashMap<(String, String), HashSet<String>>,
}

/// Codes drawn per order becoming ready. Only these are looked up, not the day's codes (read
/// whole, a school's day of codes was read again for every batch: 3 ms a batch and 3,000
/// rows by mid-lunch, BENCHMARKS.md). With a few thousand of the 456,976 codes taken in a
/// school's day, all four taken is a chance of about one in 10^8.
const CANDIDATES_PER_CODE: usize = 4;

/// Fresh codes for each school, `CANDIDATES_PER_CODE` per order of it becoming ready.
pub(super) fn draw_candidates(ready: &[&str]) -> HashMap<String, Vec<String>> {
    let mut drawn: HashMap<String, HashSet<String>> = HashMap::new();
    for school in ready {
        let codes = drawn.entry((*school).to_owned()).or_default();
        let wanted = codes.len() + CANDIDATES_PER_CODE;
        while codes.len() < wanted {
            match pickup_code(codes, |n| rand::random_range(0..n)) {
                Some(code) => codes.insert(code),
                None => break,
            };
        }
    }
    drawn
        .into_iter()
        .map(|(school, codes)| (school, codes.into_iter().collect()))
        .collect()
}

pub(super) trait PickupQueries {
    /// `ready`: the school of each order becoming ready; `candidates`: codes drawn for them.
    async fn pickup(
        &mut self,
        ready: &[&str],
        candidates: HashMap<String, Vec<String>>,
        at: NaiveDateTime,
    ) -> QueryResult<Pickup>;
}

/// PostgreSQL: which of the drawn (school, day, code) triples orders hold, one probe of
/// `orders_pickup_code` a triple. Read by the lists of schools, days and codes, the index was
/// walked for the whole school, its days and codes filtered: every batch with an order
/// becoming ready read every order the school ever coded (7.8 ms at 50,000).
pub(crate) const CODES_TAKEN_PG: &str = "\
SELECT t.school_id, t.pickup_day, t.pickup_code
FROM unnest($1::text[], $2::text[], $3::text[]) AS t(school_id, pickup_day, pickup_code)
WHERE EXISTS (SELECT 1 FROM orders o WHERE o.school_id = t.school_id
    AND o.pickup_day = t.pickup_day AND o.pickup_code = t.pickup_code)";

#[derive(diesel::Queryable, diesel::QueryableByName)]
struct CodeTaken {
    #[diesel(sql_type = diesel::sql_types::Text)]
    school_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pickup_day: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pickup_code: String,
}

/// The drawn codes as (school, day, code) columns, each school's codes on each of `days`.
fn code_triples(
    candidates: &HashMap<String, Vec<String>>,
    days: &[String],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut triples = (Vec::new(), Vec::new(), Vec::new());
    for (school, codes) in candidates {
        for day in days {
            for code in codes {
                triples.0.push(school.clone());
                triples.1.push(day.clone());
                triples.2.push(code.clone());
            }
        }
    }
    triples
}

macro_rules! pickup_queries {
    (
        $conn:ty,
        $join:ident,
        |$this:ident| $c0:expr, $c1:expr, $c2:expr,
        |$schools:ident, $days:ident, $codes:ident, $candidates:ident| $taken:expr
    ) => {
        impl PickupQueries for $conn {
            async fn pickup(
                &mut self,
                ready: &[&str],
                candidates: HashMap<String, Vec<String>>,
                at: NaiveDateTime,
            ) -> QueryResult<Pickup> {
                let schools: Vec<&str> = ready
                    .iter()
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let schools = schools.as_slice();
                let codes: Vec<&String> = candidates.values().flatten().collect();
                let days: Vec<String> = [-1, 0, 1]
                    .into_iter()
                    .map(|d| {
                        (at + chrono::Duration::days(d))
                            .format("%Y-%m-%d")
                            .to_string()
                    })
                    .collect();
                let $this = self;
                let (zones, open, waiting, taken) = $join!(
                    schools::table
                        .filter(schools::id.eq_any(schools))
                        .select((schools::id, schools::time_zone))
                        .load::<(String, String)>($c0),
                    counters::table
                        .filter(counters::school_id.eq_any(schools))
                        .filter(counters::is_open.eq(true))
                        .select((
                            counters::school_id,
                            counters::id,
                            counters::number,
                            counters::name
                        ))
                        .load::<(String, String, i32, String)>($c1),
                    orders::table
                        .filter(orders::school_id.eq_any(schools))
                        .filter(orders::state.eq(OrderState::Ready.as_str()))
                        .filter(orders::counter_id.is_not_null())
                        .group_by(orders::counter_id)
                        .select((orders::counter_id, diesel::dsl::count_star()))
                        .load::<(Option<String>, i64)>($c2),
                    {
                        let ($schools, $days, $codes, $candidates) =
                            (schools, &days, &codes, &candidates);
                        $taken
                    },
                );
                let mut pickup = Pickup {
                    zones: zones.into_iter().collect(),
                    candidates,
                    ..Pickup::default()
                };
                for (school, id, number, name) in open {
                    pickup
                        .open
                        .entry(school)
                        .or_default()
                        .push(CounterRef { id, number, name });
                }
                pickup.waiting = waiting
                    .into_iter()
                    .filter_map(|(id, n)| Some((id?, n)))
                    .collect();
                for taken in taken {
                    let CodeTaken {
                        school_id,
                        pickup_day,
                        pickup_code,
                    } = taken;
                    pickup
                        .taken
                        .entry((school_id, pickup_day))
                        .or_default()
                        .insert(pickup_code);
                }
                Ok(pickup)
            }
        }
    };
}
pickup_queries!(
    PgConn,
    pipelined,
    |conn| &mut &*conn,
    &mut &*conn,
    &mut &*conn,
    |_schools, days, _codes, candidates| {
        use diesel::sql_types::{Array, Text};
        let (schools, days, codes) = code_triples(candidates, days);
        crate::db::kept(
            diesel::sql_query(CODES_TAKEN_PG)
                .bind::<Array<Text>, _>(schools)
                .bind::<Array<Text>, _>(days)
                .bind::<Array<Text>, _>(codes),
        )
        .load::<CodeTaken>(&mut &*conn)
    }
);
pickup_queries!(
    SqliteConn,
    one_by_one,
    |conn| &mut *conn,
    &mut *conn,
    &mut *conn,
    |schools, days, codes, _candidates| orders::table
        .filter(orders::school_id.eq_any(schools))
        .filter(orders::pickup_day.eq_any(days))
        .filter(orders::pickup_code.eq_any(codes))
        // Not null: each equals one of the lists'.
        .select((
            orders::school_id,
            orders::pickup_day.assume_not_null(),
            orders::pickup_code.assume_not_null(),
        ))
        .load::<CodeTaken>(&mut *conn)
);

impl Pickup {
    /// The least-loaded open counter and a free code for an order becoming ready, counted
    /// at once so the batch's next ready order sees it; with the school's day.
    pub(super) fn assign(
        &mut self,
        school_id: &str,
        at: NaiveDateTime,
    ) -> Result<(Option<CounterRef>, String, String), CommandError> {
        let day = local_day(
            self.zones
                .get(school_id)
                .ok_or(CommandError::SchoolNotFound)?,
            at,
        );
        let open = self
            .open
            .get(school_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let counter =
            assign_counter(open, |c| self.waiting.get(&c.id).copied().unwrap_or(0)).cloned();
        if let Some(c) = &counter {
            *self.waiting.entry(c.id.clone()).or_default() += 1;
        }
        let taken = self
            .taken
            .entry((school_id.to_owned(), day.clone()))
            .or_default();
        let candidates = self.candidates.entry(school_id.to_owned()).or_default();
        let code = std::iter::from_fn(|| candidates.pop())
            .find(|code| !taken.contains(code))
            .ok_or_else(|| CommandError::Internal("no free pickup code today".into()))?;
        taken.insert(code.clone());
        Ok((counter, code, day))
    }
}

#[cfg(test)]
mod pickup_tests {
    use super::*;
    use crate::db::Db;
    use crate::db::models::now;
    use crate::db::test_support::on_both_backends;
    use crate::db::test_support::{counters, step};
    use crate::db::test_support::{new_order, school};
    use crate::store::DieselStore;
    use tiffin_actors::ports::{Placed, Store};

    /// A drawn code already taken today is passed over; with none left, the order is refused
    /// rather than given a taken code.
    async fn a_taken_candidate_is_passed_over(db: Db) {
        let s = school(&db, "Codes").await;
        counters(&db, &s, 1).await;
        let store = DieselStore::new(db.clone(), 120);
        let mut event = match store.place_order(new_order(&s)).await.unwrap() {
            Placed::New(event) => event,
            Placed::Existing(_) => panic!("a new order"),
        };
        for to in [
            OrderState::Confirmed,
            OrderState::Preparing,
            OrderState::Ready,
        ] {
            event = store.commit_transition(step(&event, to)).await.unwrap();
        }
        let taken = event.order.pickup_code.clone().unwrap();
        let fresh = if taken == "WXYZ" { "XYZW" } else { "WXYZ" };
        // The taken one is tried first (the last drawn).
        let candidates = HashMap::from([(s.id.clone(), vec![fresh.to_owned(), taken.clone()])]);
        let at = now();
        let read = async {
            crate::with_conn!(&db, |conn| conn
                .pickup(&[s.id.as_str()], candidates, at)
                .await
                .map_err(crate::db::DbError::from))
        };
        let mut pickup: Pickup = read.await.unwrap();
        let (_, code, _) = pickup.assign(&s.id, at).unwrap();
        assert_eq!(code, fresh);
        assert!(pickup.assign(&s.id, at).is_err(), "no code left");
    }

    on_both_backends!(
        a_taken_candidate_is_passed_over_on_sqlite,
        a_taken_candidate_is_passed_over_on_postgres,
        a_taken_candidate_is_passed_over
    );

    #[test]
    fn each_order_becoming_ready_gets_its_candidates() {
        let drawn = draw_candidates(&["a", "a", "b"]);
        assert_eq!(drawn["a"].len(), 2 * CANDIDATES_PER_CODE);
        assert_eq!(drawn["b"].len(), CANDIDATES_PER_CODE);
        let distinct: HashSet<&String> = drawn["a"].iter().collect();
        assert_eq!(distinct.len(), drawn["a"].len());
    }
}
