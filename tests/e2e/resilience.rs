//! Processes and databases failing: kill -9 mid-burst, a PostgreSQL restart, SIGTERM draining.

use crate::common::*;

/// SIGKILL in the middle of a burst of orders: after a restart every acknowledged order is
/// there, and retrying every request with its Idempotency-Key creates no duplicate.
async fn killed_mid_burst(backend: Backend) {
    use std::cell::RefCell;
    use std::rc::Rc;
    let db = TestDb::new(backend).await;
    let mut env = hub_env(&db, None);
    // Due after the restart: proves the timer is re-armed from the store.
    env.push((
        "TIFFIN_TIMERS__PICKUP_REMINDER_AFTER_SECS".into(),
        "8".into(),
    ));
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = Rc::new(fixture(&hub, &admin, "kill").await);
    expect(
        post(
            &hub,
            &admin,
            &format!("/api/v1/schools/{}/counters", f.school),
            json!({"number": 2, "is_open": true}),
        )
        .await,
        201,
    );
    // Orders already in the kitchen when the process dies: two ready (one per counter), one
    // being prepared.
    let mut in_kitchen = Vec::new();
    for (n, steps) in [3, 3, 2].into_iter().enumerate() {
        let id = expect(place_order(&hub, &f, &format!("before-{n}"), 1).await, 201)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        advance(&hub, &f, &id, &["confirm", "start", "ready"][..steps]).await;
        let path = format!("/api/v1/orders/{id}");
        in_kitchen.push(expect(get(&hub, &f.kitchen_token, &path).await, 200)["order"].clone());
    }
    let counters: std::collections::HashSet<_> = in_kitchen[..2]
        .iter()
        .map(|o| o["counter"]["number"].as_i64().unwrap())
        .collect();
    assert_eq!(
        counters.len(),
        2,
        "least loaded: one ready order per counter"
    );
    let base = hub.base.clone();
    let accepted: Rc<RefCell<Vec<(usize, String)>>> = Rc::default();
    const ORDERS: usize = 120;
    let burst = {
        let (f, accepted) = (f.clone(), accepted.clone());
        actix_web::rt::spawn(async move {
            let next = Rc::new(RefCell::new(0));
            let workers = (0..8).map(|_| {
                let (f, accepted, next, base) =
                    (f.clone(), accepted.clone(), next.clone(), base.clone());
                async move {
                    loop {
                        let n = {
                            let mut next = next.borrow_mut();
                            *next += 1;
                            *next - 1
                        };
                        if n >= ORDERS {
                            return;
                        }
                        let sent = client()
                            .post(format!("{base}/api/v1/schools/{}/orders", f.school))
                            .bearer_auth(&f.student_token)
                            .insert_header(("Idempotency-Key", format!("burst-{n}")))
                            .send_json(&json!({"items": [{"meal_id": f.meals[0], "quantity": 1}]}))
                            .await;
                        if let Ok(mut res) = sent
                            && res.status() == 201
                            && let Ok(body) = res.json::<Value>().await
                        {
                            accepted
                                .borrow_mut()
                                .push((n, body["id"].as_str().unwrap().to_owned()));
                        }
                    }
                }
            });
            futures_util::future::join_all(workers).await;
        })
    };
    while accepted.borrow().len() < 20 {
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    let env = hub.kill();
    burst.await.unwrap();
    let acknowledged = accepted.borrow().clone();
    assert!(acknowledged.len() < ORDERS, "the kill landed mid-burst");

    let hub = Hub::start(env);
    let live = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/orders/live", f.school),
        )
        .await,
        200,
    );
    let live: std::collections::HashSet<String> = live
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    for (_, id) in &acknowledged {
        assert!(live.contains(id), "acknowledged order {id} was lost");
    }
    // Clients retry what they never heard back about: the keys make that safe.
    let mut ids = std::collections::HashSet::new();
    for n in 0..ORDERS {
        let r = send(
            client()
                .post(hub.url(&format!("/api/v1/schools/{}/orders", f.school)))
                .bearer_auth(&f.student_token)
                .insert_header(("Idempotency-Key", format!("burst-{n}"))),
            Some(json!({"items": [{"meal_id": f.meals[0], "quantity": 1}]})),
        )
        .await;
        assert!(r.status == 200 || r.status == 201, "{}", r.body);
        let id = r.body["id"].as_str().unwrap().to_owned();
        if let Some((_, first)) = acknowledged.iter().find(|(k, _)| *k == n) {
            assert_eq!(
                &id, first,
                "a retry returns the order it made before the kill"
            );
        }
        ids.insert(id);
    }
    assert_eq!(ids.len(), ORDERS);
    let live = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/orders/live", f.school),
        )
        .await,
        200,
    );
    assert_eq!(
        live.as_array().unwrap().len(),
        ORDERS + in_kitchen.len(),
        "no order twice"
    );

    // The orders in the kitchen came back as they were: state, counter, code and version
    // (moved on only by the reminder, which fires once after the restart).
    for before in &in_kitchen {
        let id = before["id"].as_str().unwrap();
        let ready = before["state"] == "ready";
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let after = loop {
            let got = expect(
                get(&hub, &f.kitchen_token, &format!("/api/v1/orders/{id}")).await,
                200,
            );
            let reminded: Vec<&Value> = got["history"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["type"] == "order.pickup_reminder")
                .collect();
            if !ready || !reminded.is_empty() {
                assert!(reminded.len() <= 1, "one reminder: {reminded:?}");
                break got;
            }
            assert!(std::time::Instant::now() < deadline, "no reminder for {id}");
            actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        };
        let order = &after["order"];
        for field in ["state", "counter", "pickup_code", "ready_at"] {
            assert_eq!(order[field], before[field], "{field} of {id}");
        }
        assert_eq!(
            order["version"].as_i64().unwrap(),
            before["version"].as_i64().unwrap() + i64::from(ready),
            "{id}"
        );
        // Each step once in the history.
        let steps: Vec<&str> = after["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["type"].as_str().unwrap())
            .collect();
        let unique: std::collections::HashSet<_> = steps.iter().collect();
        assert_eq!(unique.len(), steps.len(), "{steps:?}");
    }
    drop(hub);
    db.drop_database().await;
}

#[actix_web::test]
async fn kill_nine_mid_burst_loses_nothing_on_sqlite() {
    killed_mid_burst(Backend::Sqlite).await;
}

#[actix_web::test]
async fn kill_nine_mid_burst_loses_nothing_on_postgres() {
    killed_mid_burst(Backend::Postgres).await;
}

/// SIGTERM drains: sockets are closed with 1001 "going away", requests already accepted are
/// answered and kept, new connections are refused, and the process exits cleanly in time.
#[actix_web::test]
async fn sigterm_drains_and_closes_sockets_with_going_away() {
    let db = TestDb::new(Backend::Sqlite).await;
    // With an SMTP pool, whose connections must close while the runtime still runs.
    let smtp = SmtpSink::start();
    let mut env = hub_env(&db, Some(&smtp));
    env.push(("TIFFIN_SHUTDOWN_TIMEOUT_SECS".into(), "5".into()));
    let log = tempfile::NamedTempFile::new().unwrap();
    let hub = Hub::start_logging(env.clone(), Some(log.path()));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "drain").await;
    let (mut socket, _) = subscribe(&hub, &f.kitchen_token, &f.school, None).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
    // A burst in flight while the signal lands: whatever was answered 201 must be kept.
    let burst = futures_util::future::join_all((0..20).map(|n| {
        let hub = &hub;
        let f = &f;
        async move {
            actix_web::rt::time::sleep(Duration::from_millis(5 * n)).await;
            // Refused connections are expected once the hub stops listening.
            let request = client()
                .post(hub.url(&format!("/api/v1/schools/{}/orders", f.school)))
                .bearer_auth(&f.student_token)
                .insert_header(("Idempotency-Key", format!("drain-{n}")))
                .send_json(&json!({"items": [{"meal_id": f.meals[0], "quantity": 1}]}));
            let mut res = match actix_web::rt::time::timeout(Duration::from_secs(10), request).await
            {
                Ok(Ok(res)) if res.status() == 201 => res,
                _ => return None,
            };
            let body: Value = serde_json::from_slice(&res.body().await.ok()?).ok()?;
            body["id"].as_str().map(str::to_owned)
        }
    }));
    let signal = async {
        actix_web::rt::time::sleep(Duration::from_millis(40)).await;
        hub.sigterm();
    };
    let (accepted, ()) = futures_util::future::join(burst, signal).await;
    let mut hub = hub;
    let base = hub.base.clone();
    let status = hub.wait_exit(Duration::from_secs(8));
    let status = status.expect("the hub did not exit within its shutdown timeout");
    assert!(status.success(), "{status:?}");
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(!logged.contains("panicked"), "{logged}");
    // The socket was told, with a reason, before the process went.
    let mut closed = None;
    while let Some(Ok(frame)) = socket.next().await {
        if let ws::Frame::Close(reason) = frame {
            closed = reason;
            break;
        }
    }
    let reason = closed.expect("no close frame");
    assert_eq!(reason.code, awc::ws::CloseCode::Away);
    assert!(
        reason
            .description
            .unwrap_or_default()
            .contains("shutting down")
    );
    assert!(
        client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "a stopped hub takes no connections"
    );
    // Restarted on the same database: every accepted order is there.
    let accepted: Vec<String> = accepted.into_iter().flatten().collect();
    assert!(
        !accepted.is_empty(),
        "orders sent before the signal were answered"
    );
    drop(hub);
    let hub = Hub::start(env);
    for id in &accepted {
        expect(
            get(&hub, &f.kitchen_token, &format!("/api/v1/orders/{id}")).await,
            200,
        );
    }
}

/// PostgreSQL restarted mid-lunch: while it is away the hub answers `503
/// database_unavailable` with `Retry-After` and `/readyz` says so; it recovers by itself once
/// the database is back, and nothing it accepted is lost.
#[actix_web::test]
async fn a_postgres_restart_is_a_503_then_recovers() {
    let Some(pg) = PrivatePostgres::start() else {
        panic!("this test needs the PostgreSQL server binaries (/usr/lib/postgresql/*/bin)");
    };
    let env = vec![
        ("TIFFIN_DATABASE_URL".to_owned(), pg.url()),
        ("TIFFIN_JWT_SECRET".into(), JWT_SECRET.into()),
        ("TIFFIN_SEED_DEMO".into(), "false".into()),
        ("TIFFIN_DISPATCH_POLL_MS".into(), "200".into()),
        ("RUST_LOG".into(), "error".into()),
    ];
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "pgrestart").await;
    let mut accepted = Vec::new();
    for n in 0..5 {
        let order = expect(place_order(&hub, &f, &format!("before-{n}"), 1).await, 201);
        accepted.push(order["id"].as_str().unwrap().to_owned());
    }

    pg.down();
    let started = std::time::Instant::now();
    let mut res = client()
        .post(hub.url(&format!("/api/v1/schools/{}/orders", f.school)))
        .bearer_auth(&f.student_token)
        .insert_header(("Idempotency-Key", "while-down"))
        .send_json(&json!({"items": [{"meal_id": f.meals[0], "quantity": 1}]}))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a bounded wait, not a hang"
    );
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    let ready = client().get(hub.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        client()
            .get(hub.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "alive, just not ready"
    );

    pg.up();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = place_order(&hub, &f, "after", 1).await;
        if r.status == 201 {
            accepted.push(r.body["id"].as_str().unwrap().to_owned());
            break;
        }
        assert_eq!(r.code(), "database_unavailable", "{:?}", r.body);
        assert!(
            std::time::Instant::now() < deadline,
            "the hub did not recover"
        );
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        client()
            .get(hub.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for id in &accepted {
        let order = expect(
            get(&hub, &f.kitchen_token, &format!("/api/v1/orders/{id}")).await,
            200,
        );
        assert_eq!(order["order"]["id"], id.as_str());
    }
    // The kitchen took orders again through its actors, not only the database.
    let live = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/orders/live", f.school),
        )
        .await,
        200,
    );
    assert_eq!(live.as_array().unwrap().len(), accepted.len(), "{live}");
}
