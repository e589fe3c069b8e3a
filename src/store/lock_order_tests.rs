//! Statements that update several users take the rows' locks in key order, so that two of
//! them sharing users (a fan-out for each of two siblings, both with the same guardians) wait
//! for each other instead of deadlocking.

use crate::db::test_support::{Pids, pg_admin, pg_connect as connect, pg_database};
use diesel::sql_types::{Integer, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(diesel::QueryableByName)]
struct Backend {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// Runs `statement` for messages to u9 down to u1 while another transaction holds u9: by the
/// time it waits for u9, it must hold every other already.
async fn locks_users_in_key_order(statement: &'static str) {
    let (name, _db) = pg_database().await;
    let mut watcher = connect(&name).await;
    watcher
        .batch_execute(
            "INSERT INTO users (id, role, display_name, allergies, locale, active, created_at, \
                updated_at, inbox_seq) \
             SELECT 'u' || g, 'guardian', 'G', '[]', 'en', true, now(), now(), 0 \
             FROM generate_series(9, 1, -1) AS g",
        )
        .await
        .unwrap();
    // Stored highest key first: an update that follows the table's order meets u9 first.
    let mut holder = connect(&name).await;
    holder
        .batch_execute("BEGIN; SELECT 1 FROM users WHERE id = 'u9' FOR UPDATE")
        .await
        .unwrap();
    let mut group = connect(&name).await;
    let pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Backend>(&mut group)
        .await
        .unwrap()
        .pid;
    let users: Vec<String> = (1..=9).rev().map(|n| format!("u{n}")).collect();
    let messages: Vec<_> = users
        .iter()
        .map(|user| {
            json!({"id": format!("m-{user}"), "user_id": user, "seq": 0, "kind": "order_ready",
                "title": "t", "body": "b", "created_at": "2026-12-07T12:00:00"})
        })
        .collect();
    let json = serde_json::to_string(&messages).unwrap();
    let stored = tokio::spawn(async move {
        diesel::sql_query(statement)
            .bind::<Text, _>(json)
            .execute(&mut group)
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let blockers = diesel::sql_query("SELECT pg_blocking_pids($1) AS pids")
            .bind::<Integer, _>(pid)
            .get_result::<Pids>(&mut watcher)
            .await
            .unwrap();
        if !blockers.pids.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the group never waited for u9");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for user in &users[1..] {
        let taken = watcher
            .batch_execute(&format!(
                "SELECT 1 FROM users WHERE id = '{user}' FOR UPDATE NOWAIT"
            ))
            .await;
        assert!(
            taken.is_err(),
            "the group waited for u9 before it locked {user}"
        );
    }
    holder.batch_execute("ROLLBACK").await.unwrap();
    let stored = stored.await.unwrap().unwrap();
    assert_eq!(stored, 9, "every message stored once the holder let go");
    drop(watcher);
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

#[tokio::test]
async fn an_inbox_group_locks_its_users_in_key_order() {
    locks_users_in_key_order(super::inbox::STORE_GROUP_PG).await;
}

#[tokio::test]
async fn a_fan_outs_new_messages_lock_their_users_in_key_order() {
    locks_users_in_key_order(super::inbox::STORE_NEW_PG).await;
}
