//! Time at the kitchen: lunch waves and cut-offs, deadlines (also missed while down), reminders.

use crate::common::*;

/// Lunch waves: orders go to the open wave, a passed cutoff closes ordering, a passed cancel
/// deadline stops students (not staff), and a ready meal nobody collected by the end of its
/// wave becomes uncollected by timer, with an alert to the guardian.
#[actix_web::test]
async fn lunch_waves_cutoffs_deadlines_and_the_uncollected_timer() {
    use chrono::Utc;
    let db = TestDb::new(Backend::Sqlite).await;
    let smtp = SmtpSink::start();
    let hub = Hub::start(hub_env(&db, Some(&smtp)));
    let admin = hub.admin_token();
    let zone = noon_zone();
    let f = fixture_in(&hub, &admin, "waves", &zone).await;
    let tz: chrono_tz::Tz = zone.parse().unwrap();
    let t0 = Utc::now();
    let local = |secs: i64| {
        (t0 + chrono::Duration::seconds(secs))
            .with_timezone(&tz)
            .format("%H:%M:%S")
            .to_string()
    };
    let windows = format!("/api/v1/schools/{}/service-windows", f.school);
    let early = expect(
        post(
            &hub,
            &admin,
            &windows,
            json!({"name": "Early lunch", "starts_at": local(-600), "ends_at": local(-300)}),
        )
        .await,
        201,
    );
    expect(
        post(
            &hub,
            &admin,
            &windows,
            json!({"name": "Main lunch", "starts_at": local(3), "ends_at": local(7)}),
        )
        .await,
        201,
    );
    let r = post(
        &hub,
        &admin,
        &windows,
        json!({"name": "Backwards", "starts_at": "13:00", "ends_at": "12:00"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (422, "validation_failed"));
    assert_eq!(
        expect(get(&hub, &f.kitchen_token, &windows).await, 200)
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let orders = format!("/api/v1/schools/{}/orders", f.school);
    let soup = json!({"items": [{"meal_id": f.meals[0], "quantity": 1}]});
    let mut for_early = soup.clone();
    for_early["window_id"] = early["id"].clone();
    let r = post(&hub, &f.student_token, &orders, for_early).await;
    assert_eq!((r.status, r.code()), (409, "ordering_closed"));
    let a = expect(
        post(&hub, &f.student_token, &orders, soup.clone()).await,
        201,
    );
    let b = expect(
        post(&hub, &f.student_token, &orders, soup.clone()).await,
        201,
    );
    assert_eq!(a["wave"]["name"], "Main lunch", "{a}");
    let a_id = a["id"].as_str().unwrap().to_owned();
    advance(&hub, &f, &a_id, &["confirm", "start", "ready"]).await;

    // Past the start: no more orders, and only staff may cancel.
    let started = t0 + chrono::Duration::milliseconds(3500);
    actix_web::rt::time::sleep((started - Utc::now()).to_std().unwrap_or_default()).await;
    let r = post(&hub, &f.student_token, &orders, soup.clone()).await;
    assert_eq!((r.status, r.code()), (409, "ordering_closed"));
    let b_cancel = format!("/api/v1/orders/{}/cancel", b["id"].as_str().unwrap());
    let r = post(&hub, &f.student_token, &b_cancel, json!({})).await;
    assert_eq!((r.status, r.code()), (409, "cancel_deadline_passed"));
    expect(
        post(&hub, &f.kitchen_token, &b_cancel, json!({})).await,
        200,
    );

    // The day's counts are per wave; the cancelled order is not counted.
    let summary = kitchen_summary(&hub, &f).await;
    assert_eq!(
        summary["items"],
        json!([{"wave": "Main lunch", "meal_id": f.meals[0], "name": "Tomato soup", "quantity": 1}])
    );

    // Nobody collects order A: at the end of the wave it becomes uncollected, once.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let history = loop {
        let order = expect(
            get(&hub, &f.kitchen_token, &format!("/api/v1/orders/{a_id}")).await,
            200,
        );
        if order["order"]["state"] == "uncollected" {
            break order["history"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {}",
            order["order"]["state"]
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    };
    let last = history.as_array().unwrap().last().unwrap();
    assert_eq!(
        (last["from"].as_str(), last["reason"].as_str()),
        (Some("ready"), Some("timer: the service window closed"))
    );
    assert_eq!(last["actor_id"], Value::Null, "the hub did it");
    assert_eq!(history.as_array().unwrap().len(), 5);
    let alert = smtp
        .wait_for(&f.guardian_email, Duration::from_secs(20))
        .await;
    let ready_mail = smtp
        .messages()
        .iter()
        .filter(|m| m.to.contains(&f.guardian_email))
        .count();
    assert!(ready_mail >= 1, "{alert:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !smtp
        .messages()
        .iter()
        .any(|m| m.data.contains("was not collected"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no uncollected alert: {:?}",
            smtp.messages()
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A deadline that passes while the hub is down fires once, when it is back.
#[actix_web::test]
async fn a_deadline_missed_while_down_fires_once_after_restart() {
    use chrono::Utc;
    let db = TestDb::new(Backend::Postgres).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let zone = noon_zone();
    let f = fixture_in(&hub, &admin, "downtime", &zone).await;
    let tz: chrono_tz::Tz = zone.parse().unwrap();
    let t0 = Utc::now();
    let local = |secs: i64| {
        (t0 + chrono::Duration::seconds(secs))
            .with_timezone(&tz)
            .format("%H:%M:%S")
            .to_string()
    };
    expect(
        post(
            &hub,
            &admin,
            &format!("/api/v1/schools/{}/service-windows", f.school),
            json!({"name": "Short lunch", "starts_at": local(2), "ends_at": local(4)}),
        )
        .await,
        201,
    );
    let order = expect(place_order(&hub, &f, "down-1", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(&hub, &f, &order, &["confirm", "start", "ready"]).await;
    let env = hub.kill();
    let ended = t0 + chrono::Duration::seconds(5);
    actix_web::rt::time::sleep((ended - Utc::now()).to_std().unwrap_or_default()).await;

    let hub = Hub::start(env);
    // No request wakes it: the kitchen starts at boot because it has live orders, and the
    // order actor re-arms its timer from the stored wave.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = expect(
            get(&hub, &f.kitchen_token, &format!("/api/v1/orders/{order}")).await,
            200,
        );
        if got["order"]["state"] == "uncollected" {
            let uncollected = got["history"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["to"] == "uncollected")
                .count();
            assert_eq!(uncollected, 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {}",
            got["order"]["state"]
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    drop(hub);
    db.drop_database().await;
}

/// Order timers: an order the kitchen has not confirmed in time is flagged on the dashboard
/// once; a ready meal left waiting is reminded to the family once, also across a restart;
/// where the hub is set to cancel, the overdue order is cancelled and the family told.
#[actix_web::test]
async fn confirm_deadline_and_pickup_reminder() {
    let db = TestDb::new(Backend::Postgres).await;
    let smtp = SmtpSink::start();
    let mut env = hub_env(&db, Some(&smtp));
    env.push(("TIFFIN_TIMERS__CONFIRM_WITHIN_SECS".into(), "2".into()));
    env.push((
        "TIFFIN_TIMERS__PICKUP_REMINDER_AFTER_SECS".into(),
        "2".into(),
    ));
    let hub = Hub::start(env.clone());
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "timers").await;
    // A reminder is routine news: by email only for who chose it.
    choose_email(
        &hub,
        &f.guardian_email,
        "guardian-pass-1",
        &["order_pickup_reminder"],
    )
    .await;
    let mut dashboard = open_kitchen_socket(&hub, &f.kitchen_token, &f.school).await;
    let order = expect(place_order(&hub, &f, "late-1", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(next_json(&mut dashboard).await["type"], "order.placed");
    let overdue = next_json(&mut dashboard).await;
    assert_eq!(overdue["type"], "order.confirm_overdue", "{overdue}");
    assert_eq!(overdue["data"]["order"]["state"], "placed");
    assert_eq!(
        overdue["data"]["order"]["alerts"],
        json!(["confirm_overdue"])
    );
    let flagged = history_of(&hub, &f.kitchen_token, &order, "order.confirm_overdue").await;
    assert_eq!(flagged.len(), 1);
    assert_eq!(flagged[0]["reason"], "timer: not confirmed in time");
    assert_eq!(flagged[0]["actor_id"], Value::Null, "the hub, not a person");

    // The alert moved the version on: the kitchen bumps from what its dashboard shows.
    let mut version = overdue["data"]["order"]["version"].as_i64().unwrap();
    for action in ["confirm", "start", "ready"] {
        let moved = expect(
            post(
                &hub,
                &f.kitchen_token,
                &format!("/api/v1/orders/{order}/{action}"),
                json!({"expected_version": version}),
            )
            .await,
            200,
        );
        version = moved["version"].as_i64().unwrap();
    }
    // Kitchen staff were told too (not the family); once confirmed, that news is stale.
    let rows = statuses_until(
        &hub,
        &f.kitchen_token,
        &order,
        Duration::from_secs(20),
        |rows| {
            rows.iter()
                .filter(|r| r["template"] == "order_confirm_overdue")
                .all(|r| r["status"] != "pending")
        },
    )
    .await;
    let overdue_rows: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r["template"] == "order_confirm_overdue")
        .map(|r| {
            assert!(
                r["recipient_id"] != f.guardian.as_str() && r["recipient_id"] != f.student.as_str()
            );
            assert!(r["status"] == "sent" || r["status"] == "expired", "{r}");
            (
                r["channel"].as_str().unwrap(),
                r["priority"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(overdue_rows, [("in_app", "high"), ("email", "high")]);
    let reminder = smtp
        .wait_for_containing(&f.guardian_email, "still waiting", Duration::from_secs(20))
        .await;
    assert!(reminder.data.contains("Counter 1"), "{}", reminder.data);
    // The student chose nothing: reminded in-app, not by email.
    let student_reminders = |rows: &[Value]| -> Vec<(String, String)> {
        rows.iter()
            .filter(|r| {
                r["template"] == "order_pickup_reminder" && r["recipient_id"] == f.student.as_str()
            })
            .map(|r| {
                (
                    r["channel"].as_str().unwrap().to_owned(),
                    r["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let rows = statuses_until(
        &hub,
        &f.kitchen_token,
        &order,
        Duration::from_secs(20),
        |rows| !student_reminders(rows).is_empty() && student_reminders(rows)[0].1 != "pending",
    )
    .await;
    assert_eq!(
        student_reminders(&rows),
        [("in_app".to_owned(), "sent".to_owned())]
    );
    let student_email = "ada.timers@school.test";
    assert_eq!(
        history_of(&hub, &f.kitchen_token, &order, "order.pickup_reminder")
            .await
            .len(),
        1
    );

    // Restarted with auto-cancel: the reminded order is not reminded again, and a new order
    // nobody confirms is cancelled by the hub and the family told.
    drop(dashboard);
    let mut env = hub.kill();
    env.push(("TIFFIN_TIMERS__ON_CONFIRM_OVERDUE".into(), "cancel".into()));
    let hub = Hub::start(env);
    let forgotten = expect(place_order(&hub, &f, "late-2", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancelled = smtp
        .wait_for_containing(&f.guardian_email, "was cancelled", Duration::from_secs(20))
        .await;
    assert!(
        cancelled.unfolded().contains(&forgotten),
        "{}",
        cancelled.data
    );
    smtp.wait_for_containing(student_email, "was cancelled", Duration::from_secs(5))
        .await;
    let got = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{forgotten}"),
        )
        .await,
        200,
    );
    assert_eq!(got["order"]["state"], "cancelled");
    let last = got["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["reason"], "timer: not confirmed in time", "{last}");
    assert_eq!(last["actor_id"], Value::Null);
    // A student's own cancellation tells nobody: it was their choice.
    let own = expect(place_order(&hub, &f, "late-3", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    expect(
        post(
            &hub,
            &f.student_token,
            &format!("/api/v1/orders/{own}/cancel"),
            json!({}),
        )
        .await,
        200,
    );
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    // No receipts either: routine news the guardian did not ask to have by email.
    let about = |id: &str| {
        smtp.messages()
            .into_iter()
            .filter(|m| m.unfolded().contains(id))
            .count()
    };
    assert_eq!(about(&own), 0, "nobody is told of their own cancellation");
    assert_eq!(about(&forgotten), 2, "student and guardian, once each");
    assert_eq!(
        history_of(&hub, &f.kitchen_token, &order, "order.pickup_reminder")
            .await
            .len(),
        1,
        "a reminder is sent once, restart or not"
    );
    drop(hub);
    db.drop_database().await;
}
