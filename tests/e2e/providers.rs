//! Push and SMS over the providers' wire formats: payloads, an outage and its circuit, a provider that never answers.

use crate::common::*;

/// Push over FCM HTTP v1 and SMS over a Twilio-style API, as their servers speak them: one
/// token exchange for many sends; a device FCM forgot is deactivated and never retried; a 429
/// is retried no sooner than its Retry-After; preferences pick channels per kind; a number the
/// carrier refuses is dead at once, listed for admins, and sent once requeued.
#[actix_web::test]
async fn push_and_sms_over_the_providers_wire_formats() {
    let db = TestDb::new(Backend::Sqlite).await;
    let smtp = SmtpSink::start();
    let (fcm, sms) = (FakeFcm::start(), FakeSms::start());
    let mut env = hub_env(&db, Some(&smtp));
    env.extend(provider_env(&fcm, &sms, db.dir()));
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "wire").await;
    let guardian = token_of(&hub, &f.guardian_email, "guardian-pass-1").await;

    // Devices: one live, one FCM has forgotten.
    fcm.with(|s| s.unregistered.insert("device-gone".into()));
    let devices = "/api/v1/me/devices";
    let live = expect(
        post(
            &hub,
            &guardian,
            devices,
            json!({"platform": "android", "token": "device-live"}),
        )
        .await,
        201,
    );
    assert_eq!(live["token_suffix"], "e-live");
    expect(
        post(
            &hub,
            &guardian,
            devices,
            json!({"platform": "ios", "token": "device-gone"}),
        )
        .await,
        201,
    );
    let again = expect(
        post(
            &hub,
            &guardian,
            devices,
            json!({"platform": "android", "token": "device-live"}),
        )
        .await,
        200,
    );
    assert_eq!(again["id"], live["id"], "the same token is the same device");
    let r = post(
        &hub,
        &guardian,
        devices,
        json!({"platform": "fax", "token": "x"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (422, "validation_failed"));

    // Preferences: ready meals by SMS too, receipts by email; everything else as by default
    // (routine news in-app and by push, not by email).
    let prefs = expect(
        put(
            &hub,
            &guardian,
            "/api/v1/me/preferences",
            json!({"preferences": [
                {"kind": "order_ready", "channel": "sms", "enabled": true},
                {"kind": "order_placed", "channel": "email", "enabled": true},
            ]}),
        )
        .await,
        200,
    );
    let kind = |name: &str| {
        prefs["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        kind("order_ready")["channels"],
        json!({"email": false, "in_app": true, "push": true, "sms": true})
    );
    assert_eq!(kind("order_placed")["channels"]["sms"], false);
    assert_eq!(kind("order_placed")["channels"]["email"], true);
    assert_eq!(kind("order_picked_up")["channels"]["email"], false);
    assert_eq!(kind("order_cancelled")["channels"]["email"], true);
    assert_eq!(kind("order_uncollected")["critical"], true);
    assert_eq!(kind("daily_digest")["channels"], json!({"email": true}));
    let r = put(
        &hub,
        &guardian,
        "/api/v1/me/preferences",
        json!({"preferences": [{"kind": "daily_digest", "channel": "push", "enabled": true}]}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (422, "validation_failed"),
        "{}",
        r.body
    );
    let r = put(
        &hub,
        &guardian,
        "/api/v1/me/preferences",
        json!({"preferences": [{"kind": "order_ready", "channel": "sms", "enabled": false}, {"kind": "lost", "channel": "sms", "enabled": true}]}),
    )
    .await;
    assert_eq!((r.status, r.code()), (422, "validation_failed"));
    let unchanged = expect(get(&hub, &guardian, "/api/v1/me/preferences").await, 200);
    assert_eq!(unchanged, prefs, "a refused change changes nothing");

    // FCM throttles the first send; the hub waits as it is told.
    fcm.with(|s| s.script.push_back((429, Some(2))));
    let order = expect(place_order(&hub, &f, "wire-1", 1).await, 201);
    let id = order["id"].as_str().unwrap().to_owned();
    // The receipt's push is tried (and throttled) before anything else is queued.
    statuses_until(
        &hub,
        &f.kitchen_token,
        &id,
        Duration::from_secs(20),
        |rows| {
            rows.iter()
                .any(|r| r["channel"] == "push" && r["attempts"].as_i64() >= Some(1))
        },
    )
    .await;
    let ready = advance(&hub, &f, &id, &["confirm", "start", "ready"]).await;
    let code = ready["pickup_code"].as_str().unwrap().to_owned();
    let push = fcm
        .wait_for("device-live", "order_ready", Duration::from_secs(20))
        .await;
    assert_eq!(push["notification"]["title"], "Ada's lunch is ready");
    assert!(
        push["notification"]["body"]
            .as_str()
            .unwrap()
            .contains(&code),
        "{push}"
    );
    assert_eq!(push["data"]["order_id"], id.as_str());
    let text = sms
        .wait_for(
            &f.guardian_phone,
            "Ada's lunch is ready",
            Duration::from_secs(20),
        )
        .await;
    assert!(text.contains(&code), "{text}");
    fcm.wait_for("device-live", "order_placed", Duration::from_secs(20))
        .await;
    let rows = statuses_until(
        &hub,
        &f.kitchen_token,
        &id,
        Duration::from_secs(20),
        |rows| {
            rows.iter()
                .filter(|r| r["channel"] != "email" && r["channel"] != "in_app")
                .all(|r| r["status"] != "pending")
        },
    )
    .await;
    assert_eq!(
        fcm.with(|s| s.token_requests),
        1,
        "the access token is cached"
    );

    // The forgotten device was tried once, deactivated, and never tried again.
    let tried =
        |device: &str| fcm.with(|s| s.send_attempts.iter().filter(|(_, d)| d == device).count());
    assert_eq!(tried("device-gone"), 1);
    let mine = expect(get(&hub, &guardian, devices).await, 200);
    let active: Vec<(String, bool)> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["platform"].as_str().unwrap().to_owned(),
                d["active"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        active,
        [("android".to_owned(), true), ("ios".to_owned(), false)]
    );

    // The throttled message: retried once, no sooner than Retry-After, then sent.
    let throttled: Vec<&Value> = rows
        .iter()
        .filter(|r| r["channel"] == "push" && r["attempts"] == 2)
        .collect();
    assert_eq!(throttled.len(), 1, "{rows:#?}");
    let log = throttled[0]["attempt_log"].as_array().unwrap();
    assert_eq!(log[0]["outcome"], "retry");
    assert!(
        log[0]["detail"].as_str().unwrap().contains("429"),
        "{log:?}"
    );
    assert_eq!(log[1]["outcome"], "sent");
    let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(
        at(&log[1]["at"]) - at(&log[0]["at"]) >= chrono::Duration::seconds(2),
        "{log:?}"
    );
    // Ready by email is not a default: none was queued; the receipt the guardian chose was.
    assert!(
        !rows
            .iter()
            .any(|r| r["template"] == "order_ready" && r["channel"] == "email"),
        "{rows:#?}"
    );
    assert_eq!(
        row(&rows, &f.guardian, "order_ready", "sms")["status"],
        "sent"
    );
    assert_eq!(
        row(&rows, &f.guardian, "order_ready", "in_app")["status"],
        "sent"
    );
    assert_eq!(
        row(&rows, &f.guardian, "order_placed", "email")["priority"],
        "low"
    );

    // A number the carrier refuses: dead at once, never retried.
    sms.with(|s| s.invalid.insert(f.guardian_phone.clone()));
    let order = expect(place_order(&hub, &f, "wire-2", 1).await, 201);
    let second = order["id"].as_str().unwrap().to_owned();
    let ready = advance(&hub, &f, &second, &["confirm", "start", "ready"]).await;
    let second_code = ready["pickup_code"].as_str().unwrap().to_owned();
    let rows = statuses_until(
        &hub,
        &f.kitchen_token,
        &second,
        Duration::from_secs(20),
        |rows| {
            rows.iter()
                .any(|r| r["channel"] == "sms" && r["status"] == "dead")
        },
    )
    .await;
    let dead = row(&rows, &f.guardian, "order_ready", "sms");
    assert_eq!(dead["attempts"], 1);
    assert!(
        dead["last_error"].as_str().unwrap().contains("21211"),
        "{dead}"
    );
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    let refused = sms.with(|s| {
        s.attempts
            .iter()
            .filter(|to| **to == f.guardian_phone)
            .count()
    });
    assert_eq!(refused, 2, "one sent earlier, one refused, no retry");

    // Admins see it with its reason; staff may not; requeued once the number works, it goes.
    let letters = format!("/api/v1/admin/dead-letters?school_id={}", f.school);
    let r = get(&hub, &f.kitchen_token, &letters).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let listed = expect(get(&hub, &admin, &letters).await, 200);
    let letter = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == dead["id"])
        .unwrap_or_else(|| panic!("{listed}"))
        .clone();
    assert_eq!(
        (letter["channel"].as_str(), letter["kind"].as_str()),
        (Some("sms"), Some("order_ready"))
    );
    sms.with(|s| s.invalid.clear());
    let requeue = format!(
        "/api/v1/admin/dead-letters/{}/requeue",
        dead["id"].as_str().unwrap()
    );
    assert_eq!(post(&hub, &admin, &requeue, json!({})).await.status, 202);
    let text = sms
        .wait_for(&f.guardian_phone, &second_code, Duration::from_secs(20))
        .await;
    assert!(text.contains("ready"), "{text}");
    let r = post(&hub, &admin, &requeue, json!({})).await;
    assert_eq!((r.status, r.code()), (409, "not_dead"));
    assert!(
        metric(
            &hub,
            r#"notify_deliveries_total{channel="sms",outcome="dead"}"#
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &hub,
            r#"notify_deliveries_total{channel="push",outcome="sent"}"#
        )
        .await
            >= 2.0
    );
}

/// FCM goes down mid-lunch: after a few failures the circuit opens and the hub stops knocking
/// (one probe per cooldown) while the backlog waits; when FCM returns, the backlog drains with
/// every message delivered exactly once. On PostgreSQL, where dispatch claims with SKIP LOCKED.
#[actix_web::test]
async fn a_push_outage_opens_the_circuit_and_the_backlog_drains_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let (fcm, sms) = (FakeFcm::start(), FakeSms::start());
    let mut env = hub_env(&db, None);
    env.extend(provider_env(&fcm, &sms, db.dir()));
    env.push(("TIFFIN_DELIVERY__BREAKER_FAILURES".into(), "3".into()));
    env.push(("TIFFIN_DELIVERY__BREAKER_COOLDOWN_SECS".into(), "2".into()));
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "outage").await;
    let guardian = token_of(&hub, &f.guardian_email, "guardian-pass-1").await;
    add_device(&hub, &guardian, "android", "phone-1").await;
    let circuit = r#"notify_circuit_state{channel="push"}"#;
    fcm.with(|s| s.down = true);
    const ORDERS: usize = 8;
    let mut ids = Vec::new();
    for n in 0..ORDERS {
        let order = expect(place_order(&hub, &f, &format!("outage-{n}"), 1).await, 201);
        let id = order["id"].as_str().unwrap().to_owned();
        advance(&hub, &f, &id, &["confirm", "start", "ready"]).await;
        ids.push(id);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(&hub, circuit).await != 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the circuit never opened"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let at_open = fcm.with(|s| s.send_attempts.len());
    actix_web::rt::time::sleep(Duration::from_secs(5)).await;
    let knocked = fcm.with(|s| s.send_attempts.len()) - at_open;
    assert!(
        knocked <= 4,
        "an open circuit lets one probe through per 2 s cooldown, not {knocked} sends in 5 s"
    );
    assert!(at_open + knocked < 2 * ORDERS, "the backlog waited");
    for id in &ids {
        let rows = expect(
            get(
                &hub,
                &f.kitchen_token,
                &format!("/api/v1/orders/{id}/notifications"),
            )
            .await,
            200,
        );
        for r in rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["channel"] == "push")
        {
            assert_eq!(r["status"], "pending", "{r}");
        }
    }
    assert!(
        metric(
            &hub,
            r#"notify_deliveries_total{channel="push",outcome="circuit_open"}"#
        )
        .await
            >= 1.0
    );
    // The gauges show the backlog waiting and ageing.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while metric(&hub, "outbox_oldest_pending_seconds").await < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the backlog's age is not reported"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(&hub, "outbox_pending").await >= ORDERS as f64);

    fcm.with(|s| s.down = false);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fcm.with(|s| s.delivered.len()) < 2 * ORDERS {
        assert!(
            std::time::Instant::now() < deadline,
            "backlog not drained: {} of {}",
            fcm.with(|s| s.delivered.len()),
            2 * ORDERS
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let delivered = fcm.with(|s| s.delivered.clone());
    assert_eq!(delivered.len(), 2 * ORDERS, "nothing sent twice");
    let mut seen = std::collections::HashSet::new();
    for m in &delivered {
        let key = (
            m["data"]["order_id"].to_string(),
            m["data"]["kind"].to_string(),
        );
        assert!(seen.insert(key.clone()), "{key:?} delivered twice");
        assert!(ids.contains(&m["data"]["order_id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(metric(&hub, circuit).await, 0.0, "closed again");
    drop(hub);
    db.drop_database().await;
}

/// A push provider that accepts connections and never answers costs retries (bounded by the
/// provider timeout), not the other channels: in-app messages go out meanwhile. When it answers
/// again, each push is delivered once.
#[actix_web::test]
async fn a_provider_that_never_answers_holds_up_only_its_own_messages() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (fcm, sms) = (FakeFcm::start(), FakeSms::start());
    let mut env = hub_env(&db, None);
    env.extend(provider_env(&fcm, &sms, db.dir()));
    env.push(("TIFFIN_DELIVERY__PROVIDER_TIMEOUT_SECS".into(), "4".into()));
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "hang").await;
    let guardian = token_of(&hub, &f.guardian_email, "guardian-pass-1").await;
    add_device(&hub, &guardian, "web", "hung-phone").await;
    fcm.with(|s| s.hang = true);
    let order = ready_order(&hub, &f, "hang-1").await;
    let ready_at = std::time::Instant::now();
    // In-app goes out while push is stuck on a provider that does not answer.
    statuses_until(
        &hub,
        &f.kitchen_token,
        &order,
        Duration::from_secs(10),
        |rows| {
            rows.iter()
                .filter(|r| r["channel"] == "in_app")
                .all(|r| r["status"] == "sent")
        },
    )
    .await;
    assert!(
        ready_at.elapsed() < Duration::from_secs(3),
        "in-app waited for push: {:?}",
        ready_at.elapsed()
    );
    let rows = statuses_until(
        &hub,
        &f.kitchen_token,
        &order,
        Duration::from_secs(20),
        |rows| {
            rows.iter().filter(|r| r["channel"] == "push").all(|r| {
                r["attempt_log"]
                    .as_array()
                    .is_some_and(|log| !log.is_empty())
            })
        },
    )
    .await;
    for push in rows.iter().filter(|r| r["channel"] == "push") {
        assert_ne!(push["status"], "sent", "{push}");
        let first = &push["attempt_log"][0];
        assert_eq!(first["outcome"], "retry", "{push}");
        assert!(
            first["detail"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("timed out"),
            "{push}"
        );
    }
    fcm.with(|s| s.hang = false);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fcm.delivered_to("hung-phone").len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            fcm.with(|s| s.delivered.clone())
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let kinds: Vec<String> = fcm
        .delivered_to("hung-phone")
        .iter()
        .map(|m| m["data"]["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.len(), 2, "each push once: {kinds:?}");
    assert!(
        kinds.contains(&"order_ready".to_owned()) && kinds.contains(&"order_placed".to_owned())
    );
}
