//! Statements that update several users take the rows' locks in key order, so that two of
//! them sharing users (a fan-out for each of two siblings, both with the same guardians) wait
//! for each other instead of deadlocking.

use crate::db::test_support::{pg_admin, pg_database, pg_url};
use diesel::sql_types::{Array, Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(diesel::QueryableByName)]
struct Backend {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

#[derive(diesel::QueryableByName)]
struct Blockers {
    #[diesel(sql_type = Array<Integer>)]
    pids: Vec<i32>,
}

async fn connect(database: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(&pg_url(database))
        .await
        .unwrap()
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
            .get_result::<Blockers>(&mut watcher)
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

/// A roster import writes students, then guardians, each in its plan's order; it locks every
/// person it will write in key order first. While another transaction holds u9 (a student, the
/// highest key), the import must already hold the guardians u1-u4, which it writes after.
#[tokio::test]
async fn a_roster_import_locks_its_people_in_key_order() {
    let (name, db) = pg_database().await;
    let mut watcher = connect(&name).await;
    watcher
        .batch_execute(
            "INSERT INTO users (id, role, display_name, allergies, locale, active, created_at, \
                updated_at, inbox_seq, sourced_id) \
             SELECT 'u' || g, CASE WHEN g < 5 THEN 'guardian' ELSE 'student' END, 'Old', '[]', \
                'en', true, now(), now(), 0, 'p' || g \
             FROM generate_series(9, 1, -1) AS g",
        )
        .await
        .unwrap();
    let header = "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,\
        userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,\
        grades,password\n";
    let people: String = (1..=9)
        .map(|n| match n {
            1..5 => format!("p{n},,,true,sch-a,guardian,,,New,G{n},,,g{n}@family.test,,,,,\n"),
            _ => format!(
                "p{n},,,true,sch-a,student,,,New,S{n},,,,,,p{},03,\n",
                n % 4 + 1
            ),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for (file, text) in [
        (
            "manifest.csv",
            "propertyName,value\nmanifest.version,1.0\noneroster.version,1.1\n\
             file.orgs,bulk\nfile.users,bulk\n"
                .to_owned(),
        ),
        (
            "orgs.csv",
            "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\n\
             sch-a,,,Hill School,school,A,\n"
                .to_owned(),
        ),
        ("users.csv", format!("{header}{people}")),
    ] {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let mut holder = connect(&name).await;
    holder
        .batch_execute("BEGIN; SELECT 1 FROM users WHERE id = 'u9' FOR UPDATE")
        .await
        .unwrap();
    let options = crate::roster::Options {
        dry_run: false,
        school: None,
        time_zone: "America/Chicago".into(),
        phone_region: "US".into(),
    };
    let progress = |_: &crate::roster::Staged| {};
    let source = crate::roster::Source::Dir(dir.path().to_owned());
    let import = crate::roster::import(&db, source, &options, &progress);
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiting = diesel::sql_query(
                "SELECT COALESCE(array_agg(pid), '{}') AS pids FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .get_result::<Blockers>(&mut watcher)
            .await
            .unwrap();
            if !waiting.pids.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "the import never waited for u9");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in 1..=8 {
            let taken = watcher
                .batch_execute(&format!(
                    "SELECT 1 FROM users WHERE id = 'u{n}' FOR UPDATE NOWAIT"
                ))
                .await;
            assert!(
                taken.is_err(),
                "the import waited for u9 before it locked u{n}"
            );
        }
        holder.batch_execute("ROLLBACK").await.unwrap();
    };
    tokio::pin!(import);
    let report = tokio::select! {
        ended = &mut import => panic!("the import ended without waiting for u9: {ended:?}"),
        () = watch => import.await.unwrap(),
    };
    assert_eq!(
        (report.students.updated, report.guardians.updated),
        (5, 4),
        "{report:?}"
    );
    drop(watcher);
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}
