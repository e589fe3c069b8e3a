//! What the crate's tests share: scratch databases on both backends, one test body run on
//! each, and a school with a student and a meal.

use crate::db::models::*;
use crate::db::{self, DatabaseUrl, Db};
use tiffin_actors::domain::{Issuer, KitchenEvent, OrderState, Transition};
use tiffin_actors::ports::{NewOrder, NewOrderItem, TransitionCommit};

pub(crate) async fn database() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(dir.path().join("t.db").display().to_string());
    db::migrate(&url).await.unwrap();
    let db = Db::connect(&url, 4).unwrap();
    (dir, db)
}

/// The server the test command makes sure of.
fn pg_admin_url() -> String {
    std::env::var("TIFFIN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub(crate) async fn pg_admin(sql: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let mut conn = AsyncPgConnection::establish(&pg_admin_url()).await.unwrap();
    conn.batch_execute(sql).await.unwrap();
}

/// The address of the database `name` on the test's server.
pub(crate) fn pg_url(name: &str) -> String {
    let base = pg_admin_url();
    format!("{}/{name}", &base[..base.rfind('/').unwrap()])
}

/// A connection of its own to the test's PostgreSQL database `name`.
pub(crate) async fn pg_connect(name: &str) -> diesel_async::AsyncPgConnection {
    use diesel_async::AsyncConnection;
    diesel_async::AsyncPgConnection::establish(&pg_url(name))
        .await
        .unwrap()
}

/// Backend process ids, as `pg_blocking_pids` or `array_agg(pid)` answer them.
#[derive(diesel::QueryableByName)]
pub(crate) struct Pids {
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Integer>)]
    pub pids: Vec<i32>,
}

/// A PostgreSQL database of the test's own, migrated; its name, to drop it after.
pub(crate) async fn pg_database() -> (String, Db) {
    let name = format!("tiffin_dispatch_{}", uuid::Uuid::new_v4().simple());
    pg_admin(&format!("CREATE DATABASE {name}")).await;
    let url = DatabaseUrl::Postgres(pg_url(&name));
    db::migrate(&url).await.unwrap();
    (name, Db::connect(&url, 4).unwrap())
}

/// Two tests of one body: `$sqlite` on a SQLite file, `$postgres` on a PostgreSQL scratch
/// database dropped after. The body takes the `Db`.
macro_rules! on_both_backends {
    ($sqlite:ident, $postgres:ident, $body:path) => {
        #[actix_web::test]
        async fn $sqlite() {
            let (_dir, db) = $crate::db::test_support::database().await;
            $body(db).await;
        }

        #[actix_web::test]
        async fn $postgres() {
            let (name, db) = $crate::db::test_support::pg_database().await;
            $body(db.clone()).await;
            drop(db);
            $crate::db::test_support::pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
        }
    };
}
pub(crate) use on_both_backends;

pub(crate) struct School {
    pub(crate) id: String,
    pub(crate) student: String,
    pub(crate) meal: String,
}

pub(crate) async fn school(db: &Db, name: &str) -> School {
    let at = now();
    let id = crate::db::new_id();
    crate::db::insert(
        db,
        &SchoolRow {
            id: id.clone(),
            name: name.into(),
            time_zone: "UTC".into(),
            event_seq: 0,
            created_at: at,
            updated_at: at,
            quiet_hours_start: None,
            quiet_hours_end: None,
            notice_seq: 0,
            phone_region: "US".into(),
            digest_at: None,
            digest_done_on: None,
            ready_when_stations_done: false,
        },
    )
    .await
    .unwrap();
    let student = crate::db::new_id();
    crate::db::insert(
        db,
        &UserRow {
            id: student.clone(),
            school_id: Some(id.clone()),
            role: "student".into(),
            display_name: format!("{name} student"),
            email: None,
            phone: None,
            password_hash: None,
            allergies: String::new(),
            locale: "en".into(),
            active: true,
            created_at: at,
            updated_at: at,
        },
    )
    .await
    .unwrap();
    let meal = crate::db::new_id();
    crate::db::insert(
        db,
        &MealRow {
            id: meal.clone(),
            school_id: id.clone(),
            name: "Soup".into(),
            price_cents: 300,
            allergens: String::new(),
            available: true,
            station_id: None,
            created_at: at,
            updated_at: at,
        },
    )
    .await
    .unwrap();
    School { id, student, meal }
}

/// One meal for the school's student, placed by the student.
pub(crate) fn new_order(s: &School) -> NewOrder {
    NewOrder {
        school_id: s.id.clone(),
        student_id: s.student.clone(),
        placed_by: s.student.clone(),
        items: vec![NewOrderItem {
            meal_id: s.meal.clone(),
            quantity: 1,
        }],
        idempotency: None,
        allergy_override: None,
        window_id: None,
    }
}

/// The next step of an order as its actor would decide it on `event`'s view.
pub(crate) fn step(event: &KitchenEvent, to: OrderState) -> TransitionCommit {
    TransitionCommit {
        school_id: event.school_id.clone(),
        order_id: event.order_id.clone(),
        transition: Transition {
            from: event.order.state,
            to,
            version: event.order.version + 1,
        },
        order: event.order.clone(),
        issuer: Issuer::Staff,
        actor_id: None,
        reason: None,
        scan: None,
    }
}

pub(crate) async fn counters(db: &Db, s: &School, n: i32) {
    for number in 1..=n {
        crate::db::insert(
            db,
            &CounterRow {
                id: crate::db::new_id(),
                school_id: s.id.clone(),
                number,
                name: format!("Counter {number}"),
                is_open: true,
                created_at: now(),
                updated_at: now(),
            },
        )
        .await
        .unwrap();
    }
}

/// A guardian of `s`'s student, with an email address; their id.
pub(crate) async fn guardian_of(db: &Db, s: &School) -> String {
    let guardian = crate::db::new_id();
    crate::db::insert(
        db,
        &UserRow {
            id: guardian.clone(),
            school_id: Some(s.id.clone()),
            role: "guardian".into(),
            display_name: "Guardian".into(),
            email: Some("guardian@example.test".into()),
            phone: None,
            password_hash: None,
            allergies: String::new(),
            locale: "en".into(),
            active: true,
            created_at: now(),
            updated_at: now(),
        },
    )
    .await
    .unwrap();
    crate::db::insert(
        db,
        &GuardianLinkRow {
            guardian_id: guardian.clone(),
            student_id: s.student.clone(),
            relationship: "parent".into(),
            created_at: now(),
        },
    )
    .await
    .unwrap();
    guardian
}
