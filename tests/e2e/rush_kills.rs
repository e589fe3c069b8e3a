//! A lunch rush with the hub killed at random points: nothing lost or doubled.

use crate::common::*;

/// One request to a hub that may be down, dying or still loading: `None` until it answers.
async fn try_request(
    method: &str,
    url: &str,
    token: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Option<Reply> {
    let mut req = match method {
        "GET" => client().get(url),
        _ => client().post(url),
    }
    .bearer_auth(token)
    .timeout(Duration::from_secs(15));
    if let Some(key) = key {
        req = req.insert_header(("Idempotency-Key", key));
    }
    try_send(req, body).await.filter(|r| r.status != 503)
}

/// Retries a request until the hub answers (it is being killed and restarted meanwhile).
async fn until_answered(
    method: &str,
    url: &str,
    token: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(reply) = try_request(method, url, token, key, body).await {
            return reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer from {url} within 90 s"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A kitchen dashboard that follows a hub being killed and restarted: it reconnects with
/// `since` after every drop and checks that its frames are gapless, counting its resumes in
/// `resumed`; returns the last seq once `stop` is set and it has reached `stop`'s value.
async fn resilient_dashboard(
    ws_url: String,
    topic: String,
    stop: std::rc::Rc<std::cell::Cell<i64>>,
    resumed: std::rc::Rc<std::cell::Cell<usize>>,
) -> (i64, usize) {
    let mut last: Option<i64> = None;
    let mut reconnects = 0;
    loop {
        let connected = client().ws(ws_url.as_str()).connect().await;
        let Ok((_, mut socket)) = connected else {
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut subscribe = json!({"type": "subscribe", "topic": topic});
        if let Some(since) = last {
            subscribe["since"] = json!(since);
            reconnects += 1;
            resumed.set(reconnects);
        }
        if socket
            .send(ws::Message::Text(subscribe.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        loop {
            let frame =
                actix_web::rt::time::timeout(Duration::from_millis(500), socket.next()).await;
            let text = match frame {
                Ok(Some(Ok(ws::Frame::Text(bytes)))) => bytes,
                Ok(Some(Ok(ws::Frame::Ping(p)))) => {
                    let _ = socket.send(ws::Message::Pong(p)).await;
                    continue;
                }
                Ok(Some(Ok(_))) => continue,
                Ok(_) => break,
                Err(_) => {
                    let target = stop.get();
                    if target > 0 && last == Some(target) {
                        return (target, reconnects);
                    }
                    continue;
                }
            };
            let frame: Value = serde_json::from_slice(&text).unwrap();
            match frame["type"].as_str() {
                Some("subscribed") if last.is_none() => last = frame["seq"].as_i64(),
                Some("subscribed") => {}
                Some("snapshot") => assert!(
                    frame["data"]["reason"] == "fresh" && reconnects == 0,
                    "a resume after a kill must replay, not reset: {frame}"
                ),
                Some("error") => panic!("dashboard: {frame}"),
                _ => {
                    let Some(seq) = frame["seq"].as_i64().filter(|s| *s > 0) else {
                        continue;
                    };
                    let expected = last.unwrap_or(0) + 1;
                    assert_eq!(seq, expected, "a gap or a repeat on the dashboard: {frame}");
                    last = Some(seq);
                }
            }
        }
    }
}

/// The lunch rush with the hub killed (SIGKILL) at random points and restarted on the same
/// database each time (`TIFFIN_TEST_KILLS`, default 5): at the end no accepted order is lost
/// or doubled, every meal is handed over exactly once, every committed email and in-app
/// message was delivered at least once and, keyed by its outbox message, never as two
/// messages, and the dashboard resumed after every kill without a gap.
async fn rush_with_kills(backend: Backend) {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    const STUDENTS: usize = 6;
    const ROUNDS: usize = 4;
    let kills: usize = std::env::var("TIFFIN_TEST_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = hub_env(&db, Some(&smtp));
    for (key, value) in [
        ("TIFFIN_BIND", format!("127.0.0.1:{port}")),
        ("TIFFIN_LIMITS__PER_IP__PER_MINUTE", "0".into()),
        ("TIFFIN_LIMITS__PER_USER__PER_MINUTE", "0".into()),
        ("TIFFIN_LIMITS__PER_READER__PER_MINUTE", "0".into()),
        // Each visit is a new meal: no debounce between one student's visits.
        ("TIFFIN_RFID__DEBOUNCE_MS", "0".into()),
    ] {
        env.push((key.into(), value));
    }
    let hub = Hub::start(env.clone());
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "rush").await;
    // Email across kills is what is counted: this guardian has every routine kind by email.
    choose_email(
        &hub,
        &f.guardian_email,
        "guardian-pass-1",
        &["order_placed", "order_ready", "order_picked_up"],
    )
    .await;
    let counter = counter_ids(&hub, &admin, &f.school).await[0].clone();
    let reader = register_reader(&hub, &admin, &f.school, "Counter 1", &counter).await;
    let users = format!("/api/v1/schools/{}/users", f.school);
    let mut students = Vec::new();
    for n in 0..STUDENTS {
        let login = format!("kid{n}.rush@school.test");
        let id = expect(
            post(&hub, &admin, &users, json!({"role": "student", "display_name": format!("Kid {n}"), "email": login, "password": "student-pass-1"})).await,
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
                json!({"guardian_id": f.guardian, "student_id": id, "relationship": "mother"}),
            )
            .await,
            201,
        );
        let card = format!("04:77:00:{n:02x}");
        expect(
            post(
                &hub,
                &admin,
                &format!("/api/v1/schools/{}/cards", f.school),
                json!({"student_id": id, "card_uid": card}),
            )
            .await,
            201,
        );
        students.push((token_of(&hub, &login, "student-pass-1").await, card));
    }
    let base = hub.base.clone();
    let hub = Rc::new(RefCell::new(Some(hub)));
    let done_seq = Rc::new(Cell::new(0));
    let resumed = Rc::new(Cell::new(0));
    let dashboard = actix_web::rt::spawn(resilient_dashboard(
        format!(
            "{}/api/v1/ws?access_token={}",
            base.replacen("http", "ws", 1),
            f.kitchen_token
        ),
        format!("kitchen:{}", f.school),
        done_seq.clone(),
        resumed.clone(),
    ));

    // The killer: at random moments, SIGKILL and a restart on the same database and port.
    // The students keep coming until it is done, so that every kill lands mid-rush.
    let killing = Rc::new(Cell::new(true));
    let killer = {
        let (hub, killing, resumed) = (hub.clone(), killing.clone(), resumed.clone());
        actix_web::rt::spawn(async move {
            for kill in 0..kills {
                // Each kill after the dashboard has resumed from the one before (on a busy
                // machine a restart can outlast the wait below): every kill is one to resume.
                let deadline = std::time::Instant::now() + Duration::from_secs(15);
                while resumed.get() < kill && std::time::Instant::now() < deadline {
                    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
                }
                let wait = 300 + rand::random::<u64>() % 900;
                actix_web::rt::time::sleep(Duration::from_millis(wait)).await;
                let env = hub.borrow_mut().take().unwrap().kill();
                hub.borrow_mut().replace(Hub::start(env));
            }
            killing.set(false);
        })
    };

    // Students order, staff drive each order, and the student collects it at the reader.
    let reader = Rc::new(reader);
    let workers = students.iter().enumerate().map(|(n, (token, card))| {
        let (base, f, reader, killing) = (base.clone(), &f, reader.clone(), killing.clone());
        async move {
            let mut orders = Vec::new();
            let mut round = 0;
            while round < ROUNDS || killing.get() {
                let key = format!("rush-{n}-{round}");
                let url = format!("{base}/api/v1/schools/{}/orders", f.school);
                let body = json!({"items": [{"meal_id": f.meals[0], "quantity": 1}]});
                let placed = until_answered("POST", &url, token, Some(&key), Some(&body)).await;
                assert!([200, 201].contains(&placed.status), "{}", placed.body);
                let id = placed.body["id"].as_str().unwrap().to_owned();
                for (step, action) in ["confirm", "start", "ready"].into_iter().enumerate() {
                    // A kitchen's pace, so that the kills land among the steps.
                    actix_web::rt::time::sleep(Duration::from_millis(150)).await;
                    let url = format!("{base}/api/v1/orders/{id}/{action}");
                    let expected = json!({"expected_version": step + 1});
                    let r =
                        until_answered("POST", &url, &f.kitchen_token, None, Some(&expected)).await;
                    if r.status == 409 {
                        // Done before a kill took the answer away: the order is past it.
                        let url = format!("{base}/api/v1/orders/{id}");
                        let now = until_answered("GET", &url, &f.kitchen_token, None, None).await;
                        let version = now.body["order"]["version"].as_i64().unwrap();
                        assert!(version > step as i64 + 1, "{action} {id}: {}", r.body);
                    } else {
                        assert_eq!(r.status, 200, "{action} {id}: {}", r.body);
                    }
                }
                // One read per visit, its (reader, seq) kept across retries.
                let seq = (n * 100 + round + 1) as i64;
                let scan = json!({"seq": seq, "card_uid": card});
                let verdict = loop {
                    let path = "/api/v1/reader/scans";
                    let at = chrono::Utc::now().timestamp_millis();
                    let payload = scan.to_string();
                    let signature = reader_signature(&reader.secret, at, path, payload.as_bytes());
                    let req = signed_request(&format!("{base}{path}"), &reader.id, at, &signature)
                        .timeout(Duration::from_secs(15));
                    if let Some(r) = try_send_raw(req, payload).await
                        && r.status == 200
                    {
                        break r.body;
                    }
                    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
                };
                assert_eq!(verdict["verdict"], "accepted", "{id}: {verdict}");
                assert_eq!(verdict["order_id"], id.as_str(), "{verdict}");
                orders.push(id);
                round += 1;
            }
            orders
        }
    });
    let orders: Vec<String> = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect();
    killer.await.unwrap();
    let hub = hub.borrow_mut().take().unwrap();

    // Orders: each once, each handed over once, its history gapless.
    let unique: std::collections::HashSet<&String> = orders.iter().collect();
    assert_eq!(unique.len(), orders.len(), "no order doubled");
    assert!(orders.len() >= STUDENTS * ROUNDS);
    for id in &orders {
        let got = expect(
            get(&hub, &f.kitchen_token, &format!("/api/v1/orders/{id}")).await,
            200,
        );
        assert_eq!(got["order"]["state"], "picked_up", "{got}");
        let versions: Vec<i64> = got["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["version"].as_i64().unwrap())
            .collect();
        assert_eq!(versions, [1, 2, 3, 4, 5], "{id}: one step each, once");
    }
    // Every meal the school counts today is one of these orders (one meal each).
    let summary = kitchen_summary(&hub, &f).await;
    let meals: i64 = summary["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["quantity"].as_i64().unwrap())
        .sum();
    assert_eq!(meals as usize, orders.len(), "no stray order: {summary}");
    for live in ["placed", "confirmed", "preparing", "ready"] {
        let name = format!("tiffin_orders{{state=\"{live}\"}}");
        assert_eq!(metric(&hub, &name).await, 0.0, "{name}");
    }
    let live = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/orders/live", f.school),
        )
        .await,
        200,
    );
    assert_eq!(live, json!([]), "no order left behind (a retry made twice)");

    // Notifications: every committed email and in-app row delivered, none as two messages.
    let mut email_rows = std::collections::HashSet::<String>::new();
    let mut sent_emails = std::collections::HashSet::<String>::new();
    // The guardian's in-app rows: all committed ones, and those marked sent.
    let mut in_app_rows = std::collections::HashSet::<String>::new();
    let mut in_app_sent = std::collections::HashSet::<String>::new();
    for id in &orders {
        let rows = statuses_until(
            &hub,
            &f.kitchen_token,
            id,
            Duration::from_secs(120),
            |rows| rows.iter().all(|r| r["status"] != "pending"),
        )
        .await;
        let mut keys = std::collections::HashSet::new();
        for r in &rows {
            assert!(
                keys.insert((
                    r["template"].clone(),
                    r["recipient_id"].clone(),
                    r["channel"].clone()
                )),
                "one message per (event, recipient, channel): {rows:#?}"
            );
            assert_ne!(r["status"], "dead", "{r}");
            if r["channel"] == "email" {
                email_rows.insert(r["id"].as_str().unwrap().to_owned());
                if r["status"] == "sent" {
                    sent_emails.insert(r["id"].as_str().unwrap().to_owned());
                }
            }
            if r["channel"] == "in_app" && r["recipient_id"] == f.guardian.as_str() {
                in_app_rows.insert(r["id"].as_str().unwrap().to_owned());
                if r["status"] == "sent" {
                    in_app_sent.insert(r["id"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    let mut received = std::collections::HashMap::<String, usize>::new();
    for mail in smtp.messages() {
        let id =
            tiffin_harness::smtp::message_id(&mail.data).expect("every email has a Message-ID");
        *received.entry(id).or_default() += 1;
    }
    let received_ids: std::collections::HashSet<String> = received.keys().cloned().collect();
    assert!(!sent_emails.is_empty());
    // A message sent just before a kill, and found no longer true after the restart (the
    // meal was collected meanwhile), arrived although its row says expired.
    let missing: Vec<_> = sent_emails.difference(&received_ids).collect();
    assert!(missing.is_empty(), "sent but never arrived: {missing:?}");
    let stray: Vec<_> = received_ids.difference(&email_rows).collect();
    assert!(stray.is_empty(), "arrived but never committed: {stray:?}");
    let resent: usize = received.values().map(|n| n - 1).sum();
    eprintln!(
        "{backend:?}: {} emails, {resent} resent after a kill under the same Message-ID",
        sent_emails.len()
    );
    let guardian_token = token_of(&hub, &f.guardian_email, "guardian-pass-1").await;
    // The whole inbox, page by page (more kills send more than a page).
    let mut inbox: Vec<String> = Vec::new();
    let mut path = "/api/v1/me/inbox?limit=200".to_owned();
    loop {
        let page = expect(get(&hub, &guardian_token, &path).await, 200);
        let Some(oldest) = page.as_array().unwrap().last() else {
            break;
        };
        let next = format!("/api/v1/me/inbox?limit=200&before={}", oldest["seq"]);
        assert_ne!(next, path, "the same page again");
        path = next;
        inbox.extend(
            page.as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
    }
    let inbox_ids: std::collections::HashSet<String> = inbox.iter().cloned().collect();
    assert_eq!(inbox_ids.len(), inbox.len(), "each in-app message once");
    // As with email: one stored just before a kill and found no longer true after the
    // restart is in the inbox although its row says expired.
    let missing: Vec<_> = in_app_sent.difference(&inbox_ids).collect();
    assert!(missing.is_empty(), "sent but not in the inbox: {missing:?}");
    let stray: Vec<_> = inbox_ids.difference(&in_app_rows).collect();
    assert!(
        stray.is_empty(),
        "in the inbox but never committed: {stray:?}"
    );

    // The dashboard followed every kill and reached the kitchen's last event without a gap.
    let (_, now) = subscribe(&hub, &f.kitchen_token, &f.school, None).await;
    done_seq.set(now["seq"].as_i64().unwrap());
    let (last, reconnects) = actix_web::rt::time::timeout(Duration::from_secs(30), dashboard)
        .await
        .expect("the dashboard never caught up")
        .unwrap();
    assert_eq!(last, now["seq"].as_i64().unwrap());
    assert!(
        reconnects >= kills,
        "{reconnects} resumes for {kills} kills"
    );
    drop(hub);
    db.drop_database().await;
}

#[actix_web::test]
async fn a_rush_killed_at_random_points_loses_nothing_on_sqlite() {
    rush_with_kills(Backend::Sqlite).await;
}

#[actix_web::test]
async fn a_rush_killed_at_random_points_loses_nothing_on_postgres() {
    rush_with_kills(Backend::Postgres).await;
}
