//! Hot queries keep to their index under the plan PostgreSQL caches for a prepared statement
//! before the tables have statistics (as on a new database, or with autovacuum off): such
//! plans once walked every order of the school on each scan, and every event for a gauge.

use super::*;
use crate::dispatch_tests::{pg_admin, pg_database, pg_url};
use diesel::sql_types::Text;

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

/// The generic plan of `query` (diesel's SQL for PostgreSQL) run with `args`, after `setup`.
async fn generic_plan<Q>(database: &str, setup: &str, query: &Q, args: &str) -> String
where
    Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>,
{
    use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
    let sql = diesel::debug_query::<diesel::pg::Pg, _>(query).to_string();
    let sql = sql.split(" -- binds: ").next().unwrap();
    let mut conn = AsyncPgConnection::establish(&pg_url(database))
        .await
        .unwrap();
    conn.batch_execute(&format!(
        "{setup}; SET plan_cache_mode = force_generic_plan; PREPARE hot AS {sql}"
    ))
    .await
    .unwrap();
    let execute = if args.is_empty() {
        "EXECUTE hot".to_owned()
    } else {
        format!("EXECUTE hot({args})")
    };
    let plan: Vec<PlanLine> = diesel::sql_query(format!("EXPLAIN {execute}"))
        .load(&mut conn)
        .await
        .unwrap();
    plan.into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Both columns of `orders_school_student` bound in one index condition.
fn reads_school_and_student_by_index(plan: &str) -> bool {
    plan.lines()
        .any(|l| l.contains("Index Cond: ((school_id = $1) AND (student_id = $"))
        && plan.contains("orders_school_student")
}

#[tokio::test]
async fn a_card_holders_orders_of_the_day_are_read_by_school_and_student() {
    let (name, _db) = pg_database().await;
    let days = days_around_today();
    let by_card = orders_of_day!("s", holder_of!("CARD"), &days);
    let plan = generic_plan(&name, "", &by_card, "'s', 'CARD', 1, '{a}', 'b', '{c}'").await;
    assert!(
        reads_school_and_student_by_index(&plan),
        "a scan's read:\n{plan}"
    );
    let by_student = orders_of_day!("s", Some("student"), &days);
    let plan = generic_plan(&name, "", &by_student, "'s', 'student', '{a}', 'b', '{c}'").await;
    assert!(
        reads_school_and_student_by_index(&plan),
        "a student's read:\n{plan}"
    );
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A day's events, all fanned out, and no statistics: the size is what the planner sees.
const A_DAY_OF_EVENTS: &str = "SET session_replication_role = replica; \
    INSERT INTO order_events (school_id, seq, order_id, version, kind, to_state, snapshot, \
        created_at, notice, fanned_out) \
    SELECT 's', g, 'o' || g, 1, 'order_placed', 'placed', repeat('x', 300), now(), \
        'order_placed', TRUE FROM generate_series(1, 50000) AS g";

#[tokio::test]
async fn the_fan_out_backlog_is_counted_from_its_partial_index() {
    let (name, _db) = pg_database().await;
    let query = crate::store::awaiting_fan_out!();
    let plan = generic_plan(&name, A_DAY_OF_EVENTS, &query, "").await;
    assert!(plan.contains("order_events_to_fan_out"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// Where autovacuum is off (as on the machines this project is tested on), the hub's
/// connections plan every statement afresh; elsewhere they keep the server's setting.
#[tokio::test]
async fn without_autovacuum_the_hubs_connections_plan_afresh() {
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        value: String,
    }
    let (name, db) = pg_database().await;
    let Db::Pg(pool) = &db else {
        unreachable!("a PostgreSQL database")
    };
    let mut conn = pool.get().await.unwrap();
    let mut show = async |what: &str| -> String {
        let sql = format!("SELECT current_setting('{what}') AS value");
        let setting: Setting = diesel::sql_query(sql).get_result(&mut *conn).await.unwrap();
        setting.value
    };
    let autovacuum = show("autovacuum").await;
    let mode = show("plan_cache_mode").await;
    if autovacuum == "off" {
        assert_eq!(mode, "force_custom_plan");
    } else {
        let mut fresh = diesel_async::AsyncPgConnection::establish(&pg_url(&name))
            .await
            .unwrap();
        let server: Setting =
            diesel::sql_query("SELECT current_setting('plan_cache_mode') AS value")
                .get_result(&mut fresh)
                .await
                .unwrap();
        assert_eq!(mode, server.value, "the server's setting stands");
    }
    drop(conn);
    drop(db);
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}
