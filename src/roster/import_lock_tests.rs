//! A roster import beside in-app groups: it takes its people's locks in key order, as the
//! groups do (`store::lock_order_tests`), so the two wait for each other instead of
//! deadlocking.

use crate::db::test_support::{Pids, pg_admin, pg_connect as connect, pg_database};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use std::time::{Duration, Instant};

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
    let options = super::Options {
        dry_run: false,
        school: None,
        time_zone: "America/Chicago".into(),
        phone_region: "US".into(),
    };
    let progress = |_: &super::Staged| {};
    let source = super::Source::Dir(dir.path().to_owned());
    let import = super::import(&db, source, &options, &progress);
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiting = diesel::sql_query(
                "SELECT COALESCE(array_agg(pid), '{}') AS pids FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .get_result::<Pids>(&mut watcher)
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
