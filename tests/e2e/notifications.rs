//! Notification dispatch: one sender per message, expiry, critical news, connection resets, SMTP sessions.

use crate::common::*;

/// Two hubs on one PostgreSQL each run outbox dispatch: every message is sent once, never
/// twice (claims lock rows and skip the ones the other holds).
#[actix_web::test]
async fn two_dispatchers_never_send_one_message_twice() {
    const ORDERS: usize = 40;
    let db = TestDb::new(Backend::Postgres).await;
    let smtp = SmtpSink::start();
    let env = hub_env(&db, Some(&smtp));
    let (one, two) = (Hub::start(env.clone()), Hub::start(env));
    let admin = one.admin_token();
    let f = fixture(&one, &admin, "dispatch").await;
    // Chosen on one node, applied by both dispatchers' fan-out.
    choose_email(
        &two,
        &f.guardian_email,
        "guardian-pass-1",
        &["order_placed", "order_ready"],
    )
    .await;
    let mut orders = Vec::new();
    for n in 0..ORDERS {
        // Alternate nodes, so both dispatchers are woken by their own commits.
        let hub = if n % 2 == 0 { &one } else { &two };
        let id = expect(place_order(hub, &f, &format!("twice-{n}"), 1).await, 201)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        advance(hub, &f, &id, &["confirm", "start", "ready"]).await;
        orders.push(id);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Per order, as the guardian chose: a receipt when placed and an email when ready.
    while smtp.messages().len() < 2 * ORDERS {
        assert!(
            std::time::Instant::now() < deadline,
            "{} sent",
            smtp.messages().len()
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a duplicate to show up, if there were one.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 2 * ORDERS, "one email per event");
    for id in &orders {
        let about = mails
            .iter()
            .filter(|m| m.unfolded().contains(id.as_str()))
            .count();
        assert_eq!(about, 2, "order {id} was emailed {about} times");
    }
    let guardian_token = login(&one, &f.guardian_email, "guardian-pass-1").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let inbox = expect(
        get(&two, &guardian_token, "/api/v1/me/inbox?limit=200").await,
        200,
    );
    let seqs: Vec<i64> = inbox
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=2 * ORDERS as i64).rev().collect::<Vec<_>>(),
        "in-app once each too"
    );
    drop((one, two));
    db.drop_database().await;
}

/// A "ready" email that could not go out before the meal was collected is dropped as
/// expired, never sent late; the order's delivery status says so per channel.
#[actix_web::test]
async fn news_that_is_no_longer_true_expires_instead_of_arriving_late() {
    let db = TestDb::new(Backend::Sqlite).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = hub_env(&db, None);
    // A mail relay that refuses connections: every attempt fails and is retried later.
    for (k, v) in [
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", closed.to_string()),
        ("TLS", "none".to_owned()),
    ] {
        env.push((format!("TIFFIN_SMTP__{k}"), v));
    }
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "expiry").await;
    choose_email(&hub, &f.guardian_email, "guardian-pass-1", &["order_ready"]).await;
    let order = expect(place_order(&hub, &f, "expiry-1", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(&hub, &f, &order, &["confirm", "start", "ready", "pickup"]).await;
    let path = format!("/api/v1/orders/{order}/notifications");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let email = loop {
        let statuses = expect(get(&hub, &f.kitchen_token, &path).await, 200);
        let email = statuses
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["channel"] == "email" && s["template"] == "order_ready")
            .cloned()
            .expect("a ready email was queued for the guardian");
        if email["status"] != "pending" {
            break email;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still pending: {email}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(email["status"], "expired", "{email}");
    assert_eq!(email["recipient_id"], f.guardian.as_str());
    assert_eq!(email["sent_at"], Value::Null);
    // Someone else's order's deliveries are not theirs to see.
    let other = fixture(&hub, &admin, "expiry-other").await;
    let refused = get(&hub, &other.student_token, &path).await;
    assert!(
        refused.status == 403 || refused.status == 404,
        "{}",
        refused.body
    );
    drop(hub);
    db.drop_database().await;
}

/// An uncollected meal is critical: it reaches a guardian who opted out of that kind, and where
/// push does not deliver within the fallback time, it goes by SMS (skipped where push did).
/// Quiet hours hold the low-priority order receipt until they end but not the critical alert.
#[actix_web::test]
async fn critical_news_overrides_opt_outs_and_falls_back_to_sms() {
    use chrono::Utc;
    let db = TestDb::new(Backend::Sqlite).await;
    let smtp = SmtpSink::start();
    let (fcm, sms) = (FakeFcm::start(), FakeSms::start());
    let mut env = hub_env(&db, Some(&smtp));
    env.extend(provider_env(&fcm, &sms, db.dir()));
    env.push((
        "TIFFIN_DELIVERY__SMS_FALLBACK_AFTER_SECS".into(),
        "2".into(),
    ));
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let zone = noon_zone();
    let f = fixture_in(&hub, &admin, "critical", &zone).await;
    let tz: chrono_tz::Tz = zone.parse().unwrap();
    let t0 = Utc::now();
    let local = |secs: i64, format: &str| {
        (t0 + chrono::Duration::seconds(secs))
            .with_timezone(&tz)
            .format(format)
            .to_string()
    };
    // A second guardian, whose phone's push is failing.
    let other_phone = "+12025557001";
    let other = expect(
        post(&hub, &admin, &format!("/api/v1/schools/{}/users", f.school), json!({"role": "guardian", "display_name": "Otto", "email": "otto.critical@family.test", "phone": other_phone, "password": "guardian-pass-2"})).await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    expect(
        post(
            &hub,
            &admin,
            &format!("/api/v1/schools/{}/guardian-links", f.school),
            json!({"guardian_id": other, "student_id": f.student, "relationship": "father"}),
        )
        .await,
        201,
    );
    let grace = token_of(&hub, &f.guardian_email, "guardian-pass-1").await;
    let otto = token_of(&hub, "otto.critical@family.test", "guardian-pass-2").await;
    for (token, device) in [(&grace, "grace-phone"), (&otto, "otto-phone")] {
        add_device(&hub, token, "ios", device).await;
    }
    fcm.with(|s| s.failing.insert("otto-phone".into()));
    // Grace turns off every channel for uncollected meals.
    let off: Vec<Value> = ["in_app", "push", "email", "sms"]
        .iter()
        .map(|c| json!({"kind": "order_uncollected", "channel": c, "enabled": false}))
        .collect();
    expect(
        put(
            &hub,
            &grace,
            "/api/v1/me/preferences",
            json!({"preferences": off}),
        )
        .await,
        200,
    );
    // Quiet hours around now; a wave that ends in seconds.
    let quiet = json!({"start": local(-3600, "%H:%M"), "end": local(3600, "%H:%M")});
    let school = expect(
        patch(
            &hub,
            &admin,
            &format!("/api/v1/schools/{}", f.school),
            json!({"quiet_hours": quiet}),
        )
        .await,
        200,
    );
    assert_eq!(school["quiet_hours"], quiet);
    let r = patch(
        &hub,
        &admin,
        &format!("/api/v1/schools/{}", f.school),
        json!({"quiet_hours": {"start": "25:00", "end": "07:00"}}),
    )
    .await;
    assert_eq!((r.status, r.code()), (422, "validation_failed"));
    expect(
        post(
            &hub,
            &admin,
            &format!("/api/v1/schools/{}/service-windows", f.school),
            json!({"name": "Main lunch", "starts_at": local(3, "%H:%M:%S"), "ends_at": local(7, "%H:%M:%S")}),
        )
        .await,
        201,
    );
    let order = expect(place_order(&hub, &f, "critical-1", 1).await, 201);
    let id = order["id"].as_str().unwrap().to_owned();
    advance(&hub, &f, &id, &["confirm", "start", "ready"]).await;

    // Uncollected at the end of the wave; both guardians hear of it at once, quiet hours or not.
    let grace_push = fcm
        .wait_for("grace-phone", "order_uncollected", Duration::from_secs(30))
        .await;
    assert!(
        grace_push["notification"]["body"]
            .as_str()
            .unwrap()
            .starts_with("URGENT"),
        "{grace_push}"
    );
    smtp.wait_for_containing(
        &f.guardian_email,
        "was not collected",
        Duration::from_secs(20),
    )
    .await;
    let text = sms
        .wait_for(other_phone, "URGENT", Duration::from_secs(30))
        .await;
    assert!(text.contains("Ada"), "{text}");
    let rows = statuses_until(
        &hub,
        &f.kitchen_token,
        &id,
        Duration::from_secs(20),
        |rows| {
            rows.iter()
                .filter(|r| r["template"] == "order_uncollected" && r["channel"] == "sms")
                .all(|r| r["status"] != "pending")
        },
    )
    .await;
    let otto_push = row(&rows, &other, "order_uncollected", "push");
    let otto_sms = row(&rows, &other, "order_uncollected", "sms");
    assert_eq!(otto_sms["fallback_for"], otto_push["id"]);
    assert_eq!(otto_sms["status"], "sent");
    assert_ne!(otto_push["status"], "sent");
    let waited = chrono::DateTime::parse_from_rfc3339(otto_sms["sent_at"].as_str().unwrap())
        .unwrap()
        - chrono::DateTime::parse_from_rfc3339(otto_sms["created_at"].as_str().unwrap()).unwrap();
    assert!(
        waited >= chrono::Duration::seconds(2),
        "the SMS gave push its chance: {waited}"
    );
    let grace_sms = row(&rows, &f.guardian, "order_uncollected", "sms");
    assert_eq!(grace_sms["status"], "skipped", "push delivered: no SMS");
    assert!(sms.to(&f.guardian_phone).is_empty());
    assert_eq!(
        row(&rows, &f.guardian, "order_uncollected", "email")["priority"],
        "critical"
    );

    // The receipt waits for the end of quiet hours on channels that interrupt; the inbox has
    // it. It comes by push, not email (routine news).
    assert!(
        !rows
            .iter()
            .any(|r| r["template"] == "order_placed" && r["channel"] == "email"),
        "{rows:#?}"
    );
    let end = chrono::NaiveTime::parse_from_str(&local(3600, "%H:%M"), "%H:%M").unwrap();
    let held = row(&rows, &f.guardian, "order_placed", "push");
    assert_eq!(held["status"], "pending", "{held}");
    let due = chrono::DateTime::parse_from_rfc3339(held["next_attempt_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&tz);
    assert_eq!(
        due.time().format("%H:%M").to_string(),
        end.format("%H:%M").to_string(),
        "{held}"
    );
    assert!(due > Utc::now(), "{held}");
    assert_eq!(
        row(&rows, &f.guardian, "order_placed", "in_app")["status"],
        "sent"
    );
    assert!(
        fcm.delivered_to("grace-phone")
            .iter()
            .all(|m| m["data"]["kind"] != "order_placed")
    );
}

/// The hub's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// FCM's side resets every connection (new and established) for a while, under steady
/// traffic: each push is retried as a transient failure, the circuit opens instead of a
/// retry storm, nothing is lost or dead, the send tasks and memory stay bounded, and once
/// the connections work again the backlog drains with each push delivered once.
#[actix_web::test]
async fn provider_connection_resets_are_retried_and_the_backlog_drains_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (fcm, sms) = (FakeFcm::start(), FakeSms::start());
    let proxy = ResettingProxy::start(fcm.port);
    let mut env = hub_env(&db, None);
    env.extend(provider_env(&fcm, &sms, db.dir()));
    env.push(("TIFFIN_PUSH__BASE_URL".into(), proxy.base()));
    env.push(("TIFFIN_DELIVERY__BREAKER_COOLDOWN_SECS".into(), "1".into()));
    env.push(("TIFFIN_LIMITS__PER_USER__PER_MINUTE".into(), "0".into()));
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "resets").await;
    let guardian = token_of(&hub, &f.guardian_email, "guardian-pass-1").await;
    add_device(&hub, &guardian, "android", "reset-phone").await;
    // Warm up: one order delivered through the proxy, so a pooled connection exists.
    let first = ready_order(&hub, &f, "resets-warm").await;
    fcm.wait_for("reset-phone", "order_ready", Duration::from_secs(10))
        .await;
    let rss_before = rss_kib(hub.pid());

    proxy.reset_all(true);
    let mut orders = vec![first];
    for n in 0..40 {
        orders.push(ready_order(&hub, &f, &format!("resets-{n}")).await);
    }
    actix_web::rt::time::sleep(Duration::from_secs(4)).await;
    let rows = statuses_until(
        &hub,
        &f.kitchen_token,
        &orders[1],
        Duration::from_secs(10),
        |rows| {
            rows.iter()
                .filter(|r| r["channel"] == "push")
                .any(|r| r["attempt_log"].as_array().is_some_and(|l| !l.is_empty()))
        },
    )
    .await;
    let push = rows.iter().find(|r| r["channel"] == "push").unwrap();
    assert_ne!(push["status"], "dead", "{push}");
    assert_eq!(push["attempt_log"][0]["outcome"], "retry", "{push}");
    // Open, between probes: a probe in flight shows half-open (1), so read until it is back.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric(&hub, "notify_circuit_state{channel=\"push\"}").await != 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the push circuit is not open"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let resets = proxy.resets.load(std::sync::atomic::Ordering::SeqCst);
    let messages = 2 * orders.len();
    assert!(
        resets <= messages + 20,
        "{resets} connection attempts for {messages} messages: a retry storm"
    );
    let grown = rss_kib(hub.pid()).saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "memory grew by {grown} KiB during the outage"
    );

    proxy.reset_all(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fcm.delivered_to("reset-phone").len() < messages {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {messages} delivered",
            fcm.delivered_to("reset-phone").len()
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let delivered = fcm.delivered_to("reset-phone");
    let distinct: std::collections::HashSet<String> = delivered
        .iter()
        .map(|m| m["data"]["notification_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered.len(), messages, "each push once");
    assert_eq!(distinct.len(), messages);
    for order in &orders {
        statuses_until(
            &hub,
            &f.kitchen_token,
            order,
            Duration::from_secs(10),
            |rows| rows.iter().all(|r| r["status"] == "sent"),
        )
        .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while metric(&hub, "notify_in_flight").await != 0.0
        || metric(&hub, "outbox_pending").await != 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "send tasks or backlog left over"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
}

fn smtp_connections(sink: &SmtpSink, sessions: usize) -> tiffin::notify::email::SmtpConnections {
    let config = tiffin::config::SmtpConfig {
        host: "127.0.0.1".into(),
        port: Some(sink.port),
        tls: tiffin::config::SmtpTls::None,
        username: None,
        password: None,
        from: "Tiffin <tiffin@school.test>".into(),
        connections: sessions,
    };
    tiffin::notify::email::SmtpConnections::new(&config, Duration::from_secs(5)).unwrap()
}

fn numbered_mail(n: usize) -> lettre::Message {
    lettre::Message::builder()
        .from("Tiffin <tiffin@school.test>".parse().unwrap())
        .to(format!("guardian{n}@school.test").parse().unwrap())
        .subject(format!("message {n}"))
        .body(format!("body {n}"))
        .unwrap()
}

/// Messages go one after another over one pooled session; a session the server has closed
/// since is noticed when the next message gets no reply, and that message goes over a new one
/// at once instead of failing.
#[actix_web::test]
async fn smtp_sessions_are_reused_and_a_closed_one_is_replaced() {
    let sink = SmtpSink::start();
    let connections = smtp_connections(&sink, 4);
    for n in 0..5 {
        connections.send(&numbered_mail(n)).await.unwrap();
    }
    assert_eq!(sink.messages().len(), 5);
    assert_eq!(sink.sessions(), 1, "one session carried every message");

    let hanging_up = SmtpSink::start_hanging_up_after_each();
    let connections = smtp_connections(&hanging_up, 4);
    for n in 0..3 {
        connections.send(&numbered_mail(n)).await.unwrap();
    }
    let to: Vec<String> = hanging_up
        .messages()
        .iter()
        .flat_map(|m| m.to.clone())
        .collect();
    assert_eq!(
        to,
        [
            "guardian0@school.test",
            "guardian1@school.test",
            "guardian2@school.test"
        ]
    );
    assert_eq!(hanging_up.sessions(), 3);
}
