//! Hot queries keep to their index under the plan PostgreSQL caches for a prepared statement
//! before the tables have statistics (as on a new database, or with autovacuum off): such
//! plans once walked every order of the school on each scan, and every event for a gauge.

use super::cards::holder_of;
use super::orders::{days_around_today, orders_of_day};
use super::scan_claims;
use crate::db::Db;
use crate::db::schema::{order_events, orders, rfid_cards, schools};
use crate::db::test_support::{pg_admin, pg_database, pg_url};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, RunQueryDsl};

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

/// The generic plan of `query` (diesel's SQL for PostgreSQL) run with `args`, after `setup`.
pub(super) async fn generic_plan<Q>(database: &str, setup: &str, query: &Q, args: &str) -> String
where
    Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>,
{
    generic_plan_of_sql(database, setup, &pg_sql(query), args).await
}

/// Diesel's SQL for `query` on PostgreSQL, without its binds.
fn pg_sql<Q>(query: &Q) -> String
where
    Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>,
{
    let sql = diesel::debug_query::<diesel::pg::Pg, _>(query).to_string();
    sql.split(" -- binds: ").next().unwrap().to_owned()
}

/// The generic plan of the SQL `sql` run with `args`, after `setup`.
async fn generic_plan_of_sql(database: &str, setup: &str, sql: &str, args: &str) -> String {
    use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
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

/// Both columns of `orders_student_school` bound in one index condition.
fn reads_school_and_student_by_index(plan: &str) -> bool {
    plan.lines()
        .any(|l| l.contains("Index Cond: ((student_id = $") && l.contains("AND (school_id = $1))"))
        && plan.contains("orders_student_school")
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

/// A batch of scans probes the indexes once a scan: its holder's orders by school and
/// student, its earlier scans by reader and card; nothing is read whole or hashed.
#[tokio::test]
async fn a_batch_of_scans_probes_its_indexes_once_a_scan() {
    let (name, _db) = pg_database().await;
    let plan = generic_plan_of_sql(
        &name,
        "",
        scan_claims::HOLDERS_ORDERS_PG,
        "'{s,t}', '{CARD1,CARD2}', '{a,b,c}'",
    )
    .await;
    assert!(
        plan.lines()
            .any(|l| l.contains("Index Cond: ((student_id = $")
                && l.contains("AND (school_id = x.school_id))")),
        "{plan}"
    );
    assert!(plan.contains("orders_student_school"), "{plan}");
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("Hash"),
        "{plan}"
    );
    let plan = generic_plan_of_sql(
        &name,
        "",
        scan_claims::DECIDED_NEAR_PG,
        "'{r,q}', '{CARD1,CARD2}', '{2026-12-06,2026-12-06}', '{2026-12-07,2026-12-07}', '{a,b}'",
    )
    .await;
    assert!(
        plan.lines()
            .any(|l| l
                .contains("Index Cond: ((reader_id = x.reader_id) AND (card_uid = x.card_uid)")),
        "{plan}"
    );
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("Hash"),
        "{plan}"
    );
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A batch's cards are read through their unique index, and a batch's schools locked one
/// probe a school, under the generic plans the claim and transition batches use.
#[tokio::test]
async fn a_batchs_cards_and_schools_are_found_by_key() {
    let (name, _db) = pg_database().await;
    let setup = "SET session_replication_role = replica; \
        INSERT INTO schools (id, name, time_zone, created_at, updated_at) \
        SELECT 's' || g, 'School', 'UTC', now(), now() FROM generate_series(1, 2000) AS g; \
        INSERT INTO rfid_cards (id, school_id, student_id, card_uid, status, created_at, \
            updated_at) \
        SELECT 'c' || g, 's1', 'u' || g, 'CARD' || g, 'active', now(), now() \
        FROM generate_series(1, 20000) AS g";
    // As `scan_claims::claim_set_wise` reads them.
    let uids = vec!["CARD1".to_owned()];
    let cards = rfid_cards::table
        .filter(rfid_cards::card_uid.eq_any(&uids))
        .select(crate::db::models::CardRow::as_select());
    let plan = generic_plan(&name, setup, &cards, "'{CARD1,CARD2}'").await;
    assert!(plan.contains("rfid_cards_card_uid_key"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    let plan =
        generic_plan_of_sql(&name, "", super::sequence::LOCK_SCHOOLS_PG, "'{s2,s1,s2}'").await;
    assert!(plan.contains("Index Scan using schools_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan on schools"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A batch of orders finds earlier requests with the same keys by one probe of the keys'
/// index a (placer, key) pair: by key alone, every batch with a key read every order.
#[tokio::test]
async fn a_batch_of_orders_finds_earlier_requests_by_placer_and_key() {
    let (name, _db) = pg_database().await;
    let keyed = "SET session_replication_role = replica; \
        INSERT INTO orders (id, school_id, student_id, placed_by, state, version, created_at, \
            updated_at, total_cents, idempotency_key) \
        SELECT 'o' || g, 's', 'u' || g, 'p' || (g % 100), 'placed', 1, now(), now(), 300, \
            'k' || g FROM generate_series(1, 20000) AS g";
    let plan = generic_plan_of_sql(
        &name,
        keyed,
        super::order_facts::KEYED_ORDERS_PG,
        "'{p1,p2}', '{k1,k2}'",
    )
    .await;
    assert!(
        plan.contains("orders_placed_by_idempotency_key_key")
            && plan.contains(
                "Index Cond: ((placed_by = k.placed_by) AND (idempotency_key = k.idempotency_key))"
            ),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan on orders"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A batch of orders reads its people and meals by key, and a school read whole by its
/// index, under the plan its connection keeps (made on the day's first batch, on empty
/// tables) as under one made later: never every person or meal of the district.
#[tokio::test]
async fn a_batch_of_orders_reads_its_people_and_meals_by_index() {
    use super::order_facts::{meals_read, people_read};
    let (name, _db) = pg_database().await;
    let district = "SET session_replication_role = replica; \
        INSERT INTO users (id, school_id, role, display_name, allergies, locale, active, \
            created_at, updated_at, inbox_seq) \
        SELECT 'u' || g, 's' || (g % 200), 'student', 'Student', '', 'en', TRUE, now(), now(), 0 \
        FROM generate_series(1, 40000) AS g; \
        INSERT INTO meals (id, school_id, name, price_cents, allergens, available, created_at, \
            updated_at) \
        SELECT 'm' || g, 's' || (g % 200), 'Soup', 300, '', TRUE, now(), now() \
        FROM generate_series(1, 4000) AS g";
    for day in ["", district] {
        for args in ["'{u1,u2}', '{}'", "'{u1,u2}', '{s1}'"] {
            let people =
                batch_plan(&name, day, &pg_sql(&people_read(&["u1"], &["s1"])), args).await;
            assert!(
                people.contains("users_pkey") && people.contains("users_school"),
                "{people}"
            );
            assert!(!people.contains("Seq Scan"), "{people}");
            let meals = batch_plan(
                &name,
                day,
                &pg_sql(&meals_read(&["m1"], &["s1"])),
                &args.replace('u', "m"),
            )
            .await;
            assert!(
                meals.contains("meals_pkey") && meals.contains("meals_school"),
                "{meals}"
            );
            assert!(!meals.contains("Seq Scan"), "{meals}");
        }
    }
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A scan held for an allergy counts the order's holds through the holds' own index, not by
/// reading every scan: under the plan a connection keeps as under one made afresh.
#[tokio::test]
async fn an_allergy_hold_counts_its_orders_holds_by_index() {
    let (name, _db) = pg_database().await;
    let scans = "SET session_replication_role = replica; \
        INSERT INTO scans (id, school_id, reader_id, seq, card_uid, verdict, read_at, \
            received_at, attempt, order_id) \
        SELECT 'c' || g, 's', 'r', g, 'CARD' || g, \
            CASE WHEN g % 100 = 0 THEN 'allergy_hold' ELSE 'accepted' END, now(), now(), 1, \
            'o' || g FROM generate_series(1, 20000) AS g";
    let count = super::scans::allergy_holds_query!("o100");
    let plan = generic_plan(&name, scans, &count, "'o100'").await;
    assert!(plan.contains("scans_allergy_holds"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A scrape counts the live orders a school at a time through `orders_school_state`, not by
/// reading every order ever made.
#[tokio::test]
async fn a_scrape_counts_only_live_orders() {
    let (name, _db) = pg_database().await;
    let history = "SET session_replication_role = replica; \
        INSERT INTO schools (id, name, time_zone, created_at, updated_at) \
        SELECT 's' || g, 'School', 'UTC', now(), now() FROM generate_series(1, 20) AS g; \
        INSERT INTO orders (id, school_id, student_id, placed_by, state, version, created_at, \
            updated_at, total_cents) \
        SELECT 'o' || g, 's' || (g % 20 + 1), 'u' || g, 'u' || g, \
            CASE WHEN g % 500 = 0 THEN 'ready' ELSE 'picked_up' END, 5, now(), now(), 300 \
        FROM generate_series(1, 20000) AS g; \
        SET enable_seqscan = off";
    let plan = generic_plan_of_sql(
        &name,
        history,
        super::orders::LIVE_ORDERS_BY_STATE_PG,
        "'{placed,confirmed,preparing,ready}'",
    )
    .await;
    assert!(
        plan.contains("Index Cond: ((school_id = s.id) AND (state = ANY ($1)))"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan on orders"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// An order becoming ready checks its drawn codes by one probe of the codes' index a (school,
/// day, code), not by walking every order the school ever coded.
#[tokio::test]
async fn a_pickup_checks_its_drawn_codes_by_key() {
    let (name, _db) = pg_database().await;
    let coded = "SET session_replication_role = replica; \
        INSERT INTO orders (id, school_id, student_id, placed_by, state, version, created_at, \
            updated_at, total_cents, counter_id, pickup_day, pickup_code) \
        SELECT 'o' || g, 's', 'u' || g, 'u' || g, 'picked_up', 5, now(), now(), 300, 'c', \
            '2026-' || lpad((g / 10000 + 1)::text, 2, '0') || '-' \
                || lpad((g % 10000 / 400 + 1)::text, 2, '0'), \
            lpad((g % 400)::text, 4, '0') \
        FROM generate_series(1, 20000) AS g";
    let args = "'{s,s}', '{2026-02-06,2026-02-07}', '{0001,0002}'";
    let plan = generic_plan_of_sql(&name, coded, super::pickup::CODES_TAKEN_PG, args).await;
    let by_key = "Index Cond: ((school_id = t.school_id) AND (pickup_day = t.pickup_day) \
        AND (pickup_code = t.pickup_code))";
    assert!(
        plan.contains("orders_pickup_code") && plan.contains(by_key),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan on orders"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A day of ready orders at one school, and scans that were pending once (each leaves an
/// entry in `scans_pending` until a vacuum), without statistics.
const A_DAY_OF_PICKUPS: &str = "SET session_replication_role = replica; \
    INSERT INTO orders (id, school_id, student_id, placed_by, state, version, created_at, \
        updated_at, total_cents) \
    SELECT 'o' || g, 's', 'u' || g, 'u' || g, 'ready', 4, now(), now(), 300 \
    FROM generate_series(1, 3000) AS g; \
    INSERT INTO scans (id, school_id, reader_id, seq, card_uid, verdict, read_at, \
        received_at, attempt) \
    SELECT 'c' || g, 's', 'r', g, 'CARD' || g, 'accepted', now(), now(), 1 \
    FROM generate_series(1, 3000) AS g";

/// A batch of transitions finds its orders and its scans' claims by key, not by walking the
/// school's orders in a state or every scan once pending: under the plan its connection
/// makes on the day's first batch (empty tables) and kept all day, as under one made later.
#[tokio::test]
async fn a_batch_of_transitions_finds_its_orders_and_claims_by_key() {
    let (name, _db) = pg_database().await;
    for day in ["", A_DAY_OF_PICKUPS] {
        let plan = batch_plan(
            &name,
            day,
            crate::store::transitions::WRITE_TRANSITIONS_PG,
            "'[]', now()::timestamp, '[]'",
        )
        .await;
        assert!(plan.contains("orders_pkey"), "{plan}");
        assert!(plan.contains("Tid Scan on orders"), "{plan}");
        assert!(plan.contains("scans_pkey"), "{plan}");
        assert!(!plan.contains("orders_school_state"), "{plan}");
        assert!(!plan.contains("scans_pending"), "{plan}");
        assert!(
            !plan.contains("Seq Scan on orders") && !plan.contains("Seq Scan on scans"),
            "{plan}"
        );
    }
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A batch of new orders takes its schools' numbers by key, under the plan its connection
/// makes on the day's first batch (empty tables) and keeps all day, as under one made later.
#[tokio::test]
async fn a_batch_of_orders_takes_its_schools_numbers_by_key() {
    let (name, _db) = pg_database().await;
    let many_schools = "SET session_replication_role = replica; \
        INSERT INTO schools (id, name, time_zone, event_seq, created_at, updated_at) \
        SELECT 's' || g, 'School', 'UTC', 0, now(), now() FROM generate_series(1, 3000) AS g";
    for day in ["", many_schools] {
        let plan = batch_plan(
            &name,
            day,
            crate::store::intake::WRITE_ORDERS_PG,
            "'[]', '[]', '[]', '[]', NULL",
        )
        .await;
        assert!(plan.contains("schools_pkey"), "{plan}");
        assert!(!plan.contains("Seq Scan on schools"), "{plan}");
    }
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// The generic plan of `sql` (a statement of the batches on generic plans) with `args` after
/// `setup`, made under the settings those batches run with.
async fn batch_plan(database: &str, setup: &str, sql: &str, args: &str) -> String {
    let setup = format!(
        "{setup}; BEGIN; {}",
        crate::store::sequence::GENERIC_PLANS_PG
    );
    generic_plan_of_sql(database, &setup, sql, args).await
}

/// A day's events, all fanned out, and no statistics: the size is what the planner sees.
const A_DAY_OF_EVENTS: &str = "SET session_replication_role = replica; \
    INSERT INTO order_events (school_id, seq, order_id, version, kind, to_state, snapshot, \
        created_at, notice) \
    SELECT 's', g, 'o' || g, 1, 'order_placed', 'placed', repeat('x', 300), now(), \
        'order_placed' FROM generate_series(1, 50000) AS g";

/// One event in a hundred still waiting for its fan-out.
const SOME_WAITING: &str = "INSERT INTO fan_out_queue (created_at, school_id, seq) \
    SELECT created_at, school_id, seq FROM order_events WHERE seq % 100 = 0";

#[tokio::test]
async fn the_fan_out_backlog_is_counted_from_its_queue() {
    let (name, _db) = pg_database().await;
    let query = super::outbox::awaiting_fan_out!();
    let setup = format!("{A_DAY_OF_EVENTS}; {SOME_WAITING}");
    let plan = generic_plan(&name, &setup, &query, "").await;
    assert!(plan.contains("fan_out_queue"), "{plan}");
    assert!(!plan.contains("order_events"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A day's messages, all sent but a few, and no statistics.
const A_DAY_OF_MESSAGES: &str = "SET session_replication_role = replica; \
    INSERT INTO outbox (id, school_id, event_seq, recipient_id, channel, template, address, \
        locale, payload, status, attempts, next_attempt_at, created_at, priority, resend) \
    SELECT 'm' || g, 's', g, 'u', 'push', 'order_placed', 'a', 'en', '{}', \
        CASE WHEN g % 1000 = 0 THEN 'pending' ELSE 'sent' END, 1, now(), now(), 1, FALSE \
    FROM generate_series(1, 50000) AS g";

/// The claim walks the pending messages in claim order and stops at its batch; the old walk
/// visited every entry ever marked pending (sent since, until a vacuum).
#[tokio::test]
async fn a_claim_reads_only_pending_messages_in_claim_order() {
    let (name, _db) = pg_database().await;
    let plan = generic_plan_of_sql(
        &name,
        A_DAY_OF_MESSAGES,
        crate::store::claim::CLAIM_PG,
        "now()::timestamp, '{}', 32, now()::timestamp, 'n', '{}', '[]'",
    )
    .await;
    assert!(plan.contains("Index Scan using outbox_pending"), "{plan}");
    assert!(!plan.contains("Seq Scan on outbox"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// Messages marked sent are found by key, not by walking the day's messages.
#[tokio::test]
async fn messages_marked_sent_are_found_by_key() {
    let (name, _db) = pg_database().await;
    for day in ["", A_DAY_OF_MESSAGES] {
        let plan = batch_plan(
            &name,
            day,
            super::outbox::MARK_SENT_PG,
            "'{m1000}', '{a}', now()::timestamp",
        )
        .await;
        assert!(plan.contains("outbox_pkey"), "{plan}");
        assert!(!plan.contains("Seq Scan on outbox"), "{plan}");
    }
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// The pages an index of `database` takes, after `setup` (run on one connection, in order).
async fn index_pages(database: &str, setups: &[&str], index: &str) -> Vec<i64> {
    #[derive(QueryableByName)]
    struct Pages {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        pages: i64,
    }
    let mut conn = diesel_async::AsyncPgConnection::establish(&pg_url(database))
        .await
        .unwrap();
    let pages = format!(
        "SELECT pg_relation_size('{index}') / current_setting('block_size')::bigint AS pages"
    );
    let mut sizes = Vec::new();
    for setup in setups {
        diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, setup)
            .await
            .unwrap();
        let size: Pages = diesel::sql_query(&pages)
            .get_result(&mut conn)
            .await
            .unwrap();
        sizes.push(size.pages);
    }
    sizes
}

/// A day of messages written and sent leaves the dead letters' index empty: only a message
/// that died puts an entry in it (every write of every message did, and every marking sent).
#[tokio::test]
async fn only_dead_letters_enter_the_dead_letters_index() {
    let (name, _db) = pg_database().await;
    let dead = "UPDATE outbox SET status = 'dead' WHERE event_seq <= 2000";
    let pages = index_pages(&name, &[A_DAY_OF_MESSAGES, dead], "outbox_dead").await;
    // One page is the index's own header; 2,000 entries take a few more.
    assert_eq!(pages[0], 1, "a day of messages sent");
    assert!(
        pages[1] > 1 && pages[1] <= 16,
        "the dead letters: {pages:?}"
    );
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A day of messages takes no entry in the dedup keys' index: only digests have a key.
#[tokio::test]
async fn only_keyed_messages_enter_the_dedup_index() {
    let (name, _db) = pg_database().await;
    let digests = "UPDATE outbox SET dedup_key = 'digest:' || event_seq WHERE event_seq <= 2000";
    let pages = index_pages(&name, &[A_DAY_OF_MESSAGES, digests], "outbox_dedup_key").await;
    assert_eq!(pages[0], 1, "a day of messages without keys");
    assert!(pages[1] > 1, "the digests are in it: {pages:?}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A day of orders, one in a hundred given a counter and pickup code, and no statistics.
const A_DAY_OF_ORDERS: &str = "SET session_replication_role = replica; \
    INSERT INTO orders (id, school_id, student_id, placed_by, state, version, created_at, \
        updated_at, total_cents, counter_id, pickup_day, pickup_code) \
    SELECT 'o' || g, 's', 'u' || g, 'u' || g, 'placed', 1, now(), now(), 300, \
        CASE WHEN g % 100 = 0 THEN 'k' END, CASE WHEN g % 100 = 0 THEN '2026-12-07' END, \
        CASE WHEN g % 100 = 0 THEN 'C' || g END \
    FROM generate_series(1, 50000) AS g";

/// An order without a pickup code puts no entry in the codes' index (every order placed
/// did), and a batch's look-up of the codes it drew still goes through it.
#[tokio::test]
async fn only_orders_with_a_pickup_code_enter_its_index() {
    let (name, _db) = pg_database().await;
    let pages = index_pages(&name, &[A_DAY_OF_ORDERS], "orders_pickup_code").await;
    // 500 entries; the 50,000 orders took about 250 pages.
    assert!(pages[0] > 1 && pages[0] <= 8, "{pages:?}");
    let (schools, days, codes) = (["s"], ["2026-12-07"], ["C100", "AB12"]);
    // The look-up of `pickup::Pickup`'s reads.
    let query = orders::table
        .filter(orders::school_id.eq_any(&schools[..]))
        .filter(orders::pickup_day.eq_any(&days[..]))
        .filter(orders::pickup_code.eq_any(&codes[..]))
        .select((orders::school_id, orders::pickup_day, orders::pickup_code));
    let args = "'{s}', '{2026-12-07}', '{C100,AB12}'";
    let plan = generic_plan(&name, "", &query, args).await;
    assert!(plan.contains("orders_pickup_code"), "{plan}");
    assert!(!plan.contains("Seq Scan on orders"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// Taking events for fan-out finds the queue's rows it locked by address and each event by
/// its key, not by hashing the day.
#[tokio::test]
async fn taking_events_for_fan_out_reads_only_those_taken() {
    let (name, _db) = pg_database().await;
    let setup = format!("{A_DAY_OF_EVENTS}; {SOME_WAITING}");
    let plan = batch_plan(&name, &setup, crate::store::fan_out::TAKE_PG, "256").await;
    assert!(plan.contains("Tid Scan on fan_out_queue"), "{plan}");
    assert!(plan.contains("order_events_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan on order_events"), "{plan}");
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A group of in-app messages looks for earlier copies of its own messages by key, at any
/// size of the table (joined, a table of a few thousand was read whole); a fan-out's group,
/// new by construction, for none.
#[tokio::test]
async fn an_inbox_group_looks_up_only_its_own_messages() {
    let (name, _db) = pg_database().await;
    let setup = "SET session_replication_role = replica; \
        INSERT INTO inbox_messages (id, user_id, seq, kind, title, body, created_at) \
        SELECT 'm' || g, 'u' || (g % 500), g, 'order_placed', 't', 'b', now() \
        FROM generate_series(1, 3000) AS g";
    let plan = batch_plan(&name, setup, super::inbox::STORE_GROUP_PG, "'[]'").await;
    assert!(!plan.contains("Seq Scan on inbox_messages"), "{plan}");
    assert!(plan.contains("users_pkey"), "{plan}");
    // A fan-out's new messages look for no earlier copy.
    let plan = batch_plan(&name, setup, super::inbox::STORE_NEW_PG, "'[]'").await;
    assert!(!plan.contains("inbox_messages_pkey"), "{plan}");
    assert!(plan.contains("users_pkey"), "{plan}");
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
