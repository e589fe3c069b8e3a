//! The daily digest: one email a day instead of one per lunch event.

use crate::common::*;

/// A child of `f`'s school with a sign-in, linked to `f`'s guardian; its access token and id.
async fn digest_sibling(hub: &Hub, admin: &str, f: &Fixture, name: &str) -> (String, String) {
    let login_name = format!("{}.{}@school.test", name.to_lowercase(), f.school);
    let id = expect(
        post(
            hub,
            admin,
            &format!("/api/v1/schools/{}/users", f.school),
            json!({"role": "student", "display_name": name, "email": login_name, "password": "student-pass-9"}),
        )
        .await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    expect(
        post(
            hub,
            admin,
            &format!("/api/v1/schools/{}/guardian-links", f.school),
            json!({"guardian_id": f.guardian, "student_id": id, "relationship": "mother"}),
        )
        .await,
        201,
    );
    (token_of(hub, &login_name, "student-pass-9").await, id)
}

/// Digests that reached `to`.
fn digests_to(smtp: &SmtpSink, to: &str) -> Vec<Mail> {
    smtp.messages()
        .into_iter()
        .filter(|m| m.to.iter().any(|t| t == to))
        .filter(|m| {
            let data = m.unfolded();
            data.contains("Subject: Lunch at") || data.contains("Subject: Almuerzo en")
        })
        .collect()
}

/// Three emails a lunch no more: a guardian with two children hears nothing by email of
/// orders placed, ready and picked up; one digest of both children's day arrives at the
/// school's evening (here due at once: `digest.at` is 00:00), in each guardian's language.
/// The evening passed while no digest ran (the hub "down"), so the digest goes on start,
/// once; checks every second and restarts (SIGKILL) do not send it again, nor do two nodes.
/// A guardian who turned it off and a school with its own later time get none.
async fn daily_digest(backend: Backend) {
    use chrono::Utc;
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start();
    let mut env = hub_env(&db, Some(&smtp));
    env.push(("TIFFIN_DIGEST__AT".into(), "00:00".into()));
    // Digests off for now (hub_env): the school day goes on with no digest run.
    let hub = Hub::start(env.clone());
    let admin = hub.admin_token();
    let zone = noon_zone();
    let f = fixture_in(&hub, &admin, "digest", &zone).await;
    let (bo_token, bo) = digest_sibling(&hub, &admin, &f, "Bo").await;
    // A second guardian of Bo's, who reads Spanish.
    let users = format!("/api/v1/schools/{}/users", f.school);
    let gloria_email = "gloria.digest@family.test";
    let gloria = expect(
        post(&hub, &admin, &users, json!({"role": "guardian", "display_name": "Gloria", "email": gloria_email, "locale": "es"})).await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // And one of Ada's, who turned the digest off.
    let otto_email = "otto.digest@family.test";
    let otto = expect(
        post(&hub, &admin, &users, json!({"role": "guardian", "display_name": "Otto", "email": otto_email, "password": "guardian-pass-3"})).await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (guardian, student) in [(&gloria, &bo), (&otto, &f.student)] {
        expect(
            post(
                &hub,
                &admin,
                &format!("/api/v1/schools/{}/guardian-links", f.school),
                json!({"guardian_id": guardian, "student_id": student, "relationship": "father"}),
            )
            .await,
            201,
        );
    }
    let otto_token = token_of(&hub, otto_email, "guardian-pass-3").await;
    let prefs = expect(
        put(
            &hub,
            &otto_token,
            "/api/v1/me/preferences",
            json!({"preferences": [{"kind": "daily_digest", "channel": "email", "enabled": false}]}),
        )
        .await,
        200,
    );
    let digest = prefs["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "daily_digest")
        .unwrap()
        .clone();
    assert_eq!(digest["channels"], json!({"email": false}));
    // Another school whose own digest time is late tonight: not due today yet.
    let later = fixture_in(&hub, &admin, "digest-later", &zone).await;
    let school_path = format!("/api/v1/schools/{}", later.school);
    let bad = patch(&hub, &admin, &school_path, json!({"digest_at": "25:00"})).await;
    assert_eq!((bad.status, bad.code()), (422, "validation_failed"));
    let set = expect(
        patch(&hub, &admin, &school_path, json!({"digest_at": "23:59"})).await,
        200,
    );
    assert_eq!(set["digest_at"], "23:59");

    // Lunch: each child orders and collects.
    let ada_order = expect(place_order(&hub, &f, "digest-ada", 2).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bo_order = expect(
        send(
            client()
                .post(hub.url(&format!("/api/v1/schools/{}/orders", f.school)))
                .bearer_auth(&bo_token)
                .insert_header(("Idempotency-Key", "digest-bo")),
            Some(json!({"items": [{"meal_id": f.meals[1], "quantity": 1}]})),
        )
        .await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let later_order = expect(place_order(&hub, &later, "digest-later", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let actions = ["confirm", "start", "ready", "pickup"];
    advance(&hub, &f, &ada_order, &actions).await;
    advance(&hub, &f, &bo_order, &actions).await;
    advance(&hub, &later, &later_order, &actions).await;
    // Every routine message went out (in-app) or was dropped; none by email. Events are fanned
    // out after they commit: wait for each kind's rows to exist, not only for none pending.
    let routine = ["order_placed", "order_ready", "order_picked_up"];
    for (fixture, order) in [(&f, &ada_order), (&f, &bo_order), (&later, &later_order)] {
        let rows = statuses_until(
            &hub,
            &fixture.kitchen_token,
            order,
            Duration::from_secs(20),
            |rows| {
                routine
                    .iter()
                    .all(|kind| rows.iter().any(|r| r["template"] == *kind))
                    && rows.iter().all(|r| r["status"] != "pending")
            },
        )
        .await;
        let kinds: Vec<&str> = rows
            .iter()
            .map(|r| r["template"].as_str().unwrap())
            .collect();
        for kind in routine {
            assert!(kinds.contains(&kind), "{kind} was news: {rows:#?}");
        }
        assert!(
            rows.iter().all(|r| r["channel"] != "email"),
            "routine news by email: {rows:#?}"
        );
    }
    assert!(smtp.messages().is_empty(), "{:?}", smtp.messages());

    // The evening came while no digest ran; back with digests on (two nodes on PostgreSQL).
    let env = with_digests(hub.kill(), 1);
    let hub = Hub::start(env.clone());
    let second = (backend == Backend::Postgres).then(|| Hub::start(env.clone()));
    let grace = smtp
        .wait_for_containing(
            &f.guardian_email,
            "Subject: Lunch at",
            Duration::from_secs(20),
        )
        .await;
    let today = Utc::now()
        .with_timezone(&zone.parse::<chrono_tz::Tz>().unwrap())
        .date_naive();
    let text = grace.unfolded();
    assert!(
        text.contains(&format!(
            "Subject: Lunch at digest School on {today}: Ada, Bo"
        )),
        "{text}"
    );
    let (ada_at, bo_at) = (text.find("\r\nAda\r\n"), text.find("\r\nBo\r\n"));
    assert!(
        ada_at.is_some() && bo_at.is_some() && ada_at < bo_at,
        "each child's day, by name: {text}"
    );
    assert!(
        text.contains(": 2 x Tomato soup, 1 x Rice bowl ($10.50)"),
        "{text}"
    );
    assert!(text.contains(": 1 x Rice bowl ($4.50)"), "{text}");
    assert_eq!(
        text.matches("collected at ").count(),
        4,
        "both children collected, in the text and HTML parts: {text}"
    );
    let gloria_mail = smtp
        .wait_for_containing(
            gloria_email,
            "Subject: Almuerzo en",
            Duration::from_secs(20),
        )
        .await;
    let text = gloria_mail.unfolded();
    assert!(text.contains(&format!("el {today}: Bo")), "{text}");
    assert!(text.contains("recogido a las"), "{text}");
    assert!(
        !text.contains("Tomato soup"),
        "only her child's day: {text}"
    );

    // Checked every second, on every node, and after restarts: still one digest each.
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    drop(second);
    let env = hub.kill();
    let hub = Hub::start(env);
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(digests_to(&smtp, &f.guardian_email).len(), 1);
    assert_eq!(digests_to(&smtp, gloria_email).len(), 1);
    assert!(digests_to(&smtp, otto_email).is_empty(), "turned off");
    assert!(
        digests_to(&smtp, &later.guardian_email).is_empty(),
        "its school's evening has not come"
    );
    let students = ["ada.digest@school.test", "ada.digest-later@school.test"];
    assert!(
        smtp.messages()
            .iter()
            .all(|m| m.to.iter().all(|t| !students.contains(&t.as_str()))),
        "the digest is the guardians'"
    );
    assert_eq!(smtp.messages().len(), 2, "nothing but the two digests");
    drop(hub);
    db.drop_database().await;
}

#[actix_web::test]
async fn one_digest_a_day_instead_of_three_emails_a_lunch_on_sqlite() {
    daily_digest(Backend::Sqlite).await;
}

#[actix_web::test]
async fn one_digest_a_day_instead_of_three_emails_a_lunch_on_postgres() {
    daily_digest(Backend::Postgres).await;
}

// Claims left behind by a crash (issue 23, items 3 and 4). Each hub here listens on a fixed
// port, so a restart is the same node and takes its own claims back.
