//! Black-box tests: the real `tiffin` binary on a loopback port, real SQLite and PostgreSQL
//! databases, a real SMTP server and a real WebSocket client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "e2e/nodes.rs"]
mod nodes;
mod support;

use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// A school with a counter, two meals, a student, a guardian and a kitchen account.
struct Fixture {
    school: String,
    meals: Vec<String>,
    student: String,
    student_token: String,
    guardian: String,
    guardian_email: String,
    /// Stored in E.164 (`+1201555…`); sign-in accepts it written with spaces and dashes.
    guardian_phone: String,
    kitchen_token: String,
}

async fn login(hub: &Hub, login: &str, password: &str) -> Value {
    let reply = send(
        client().post(hub.url("/api/v1/auth/login")),
        Some(json!({"login": login, "password": password})),
    )
    .await;
    expect(reply, 200)
}

async fn fixture(hub: &Hub, admin: &str, tag: &str) -> Fixture {
    fixture_in(hub, admin, tag, "America/New_York").await
}

async fn fixture_in(hub: &Hub, admin: &str, tag: &str, time_zone: &str) -> Fixture {
    let school = expect(
        post(
            hub,
            admin,
            "/api/v1/schools",
            json!({"name": format!("{tag} School"), "time_zone": time_zone}),
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
            &format!("/api/v1/schools/{school}/counters"),
            json!({"number": 1, "is_open": true}),
        )
        .await,
        201,
    );
    let mut meals = Vec::new();
    for (name, cents) in [("Tomato soup", 300), ("Rice bowl", 450)] {
        let meal = expect(
            post(
                hub,
                admin,
                &format!("/api/v1/schools/{school}/meals"),
                json!({"name": name, "price_cents": cents, "allergens": ["Celery"]}),
            )
            .await,
            201,
        );
        assert_eq!(meal["allergens"], json!(["celery"]));
        meals.push(meal["id"].as_str().unwrap().to_owned());
    }
    let users = format!("/api/v1/schools/{school}/users");
    let student_login = format!("ada.{tag}@school.test");
    let student = expect(
        post(hub, admin, &users, json!({"role": "student", "display_name": "Ada", "email": student_login, "password": "student-pass-1"})).await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let guardian_email = format!("grace.{tag}@family.test");
    // 555 numbers of a real area code: dialable by the numbering plan, fictional.
    let guardian_phone = format!(
        "+1201555{:04}",
        (tag.len() * 7919 + tag.as_bytes()[0] as usize) % 10_000
    );
    let guardian = expect(
        post(hub, admin, &users, json!({"role": "guardian", "display_name": "Grace", "email": guardian_email, "phone": guardian_phone, "password": "guardian-pass-1"})).await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let kitchen_login = format!("kim.{tag}@school.test");
    expect(
        post(hub, admin, &users, json!({"role": "kitchen_staff", "display_name": "Kim", "email": kitchen_login, "password": "kitchen-pass-1"})).await,
        201,
    );
    expect(
        post(
            hub,
            admin,
            &format!("/api/v1/schools/{school}/guardian-links"),
            json!({"guardian_id": guardian, "student_id": student, "relationship": "mother"}),
        )
        .await,
        201,
    );
    let student_token = login(hub, &student_login, "student-pass-1").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let kitchen_token = login(hub, &kitchen_login, "kitchen-pass-1").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    Fixture {
        school,
        meals,
        student,
        student_token,
        guardian,
        guardian_email,
        guardian_phone,
        kitchen_token,
    }
}

type Socket = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

/// Subscribes to a topic; returns the socket after its `subscribed` frame.
async fn subscribe_topic(
    hub: &Hub,
    token: &str,
    topic: &str,
    since: Option<i64>,
) -> (Socket, Value) {
    let (_, mut socket) = client()
        .ws(hub.ws_url(token))
        .connect()
        .await
        .expect("ws connect");
    let mut frame = json!({"type": "subscribe", "topic": topic});
    if let Some(since) = since {
        frame["since"] = json!(since);
    }
    socket
        .send(ws::Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    let first = next_json(&mut socket).await;
    assert_eq!(first["type"], "subscribed", "{first}");
    (socket, first)
}

/// Subscribes to a kitchen; returns the socket after its `subscribed` frame.
async fn subscribe(hub: &Hub, token: &str, school: &str, since: Option<i64>) -> (Socket, Value) {
    subscribe_topic(hub, token, &format!("kitchen:{school}"), since).await
}

/// A fresh kitchen subscription: `subscribed`, then a snapshot of the live orders.
async fn open_kitchen_socket(hub: &Hub, token: &str, school: &str) -> Socket {
    let (mut socket, subscribed) = subscribe(hub, token, school, None).await;
    let snapshot = next_json(&mut socket).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["seq"], subscribed["seq"]);
    assert_eq!(snapshot["data"]["reason"], "fresh");
    socket
}

async fn next_json<T>(socket: &mut actix_codec::Framed<T, ws::Codec>) -> Value
where
    T: actix_codec::AsyncRead + actix_codec::AsyncWrite + Unpin,
{
    loop {
        let frame = actix_web::rt::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no frame within 10 s")
            .expect("socket closed")
            .expect("protocol error");
        match frame {
            ws::Frame::Text(bytes) => return serde_json::from_slice(&bytes).unwrap(),
            ws::Frame::Ping(p) => socket.send(ws::Message::Pong(p)).await.unwrap(),
            _ => {}
        }
    }
}

async fn place_order(hub: &Hub, f: &Fixture, key: &str, quantity: i32) -> Reply {
    send(
        client()
            .post(hub.url(&format!("/api/v1/schools/{}/orders", f.school)))
            .bearer_auth(&f.student_token)
            .insert_header(("Idempotency-Key", key)),
        Some(json!({"items": [{"meal_id": f.meals[0], "quantity": quantity}, {"meal_id": f.meals[1], "quantity": 1}]})),
    )
    .await
}

/// Kitchen staff take an order through `actions` (`confirm`, `start`, `ready`, `pickup`, …);
/// returns the order after the last one.
async fn advance(hub: &Hub, f: &Fixture, order: &str, actions: &[&str]) -> Value {
    let mut last = Value::Null;
    for action in actions {
        let path = format!("/api/v1/orders/{order}/{action}");
        last = expect(post(hub, &f.kitchen_token, &path, json!({})).await, 200);
    }
    last
}

/// The spine: REST -> kitchen actor -> committed -> dashboard frame -> email, then a restart.
async fn spine(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start();
    let hub = Hub::start(hub_env(&db, Some(&smtp)));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "spine").await;
    // Routine news is not emailed by default: this guardian asked for "ready" by email.
    choose_email(&hub, &f.guardian_email, "guardian-pass-1", &["order_ready"]).await;
    let mut dashboard = open_kitchen_socket(&hub, &f.kitchen_token, &f.school).await;

    let placed = expect(place_order(&hub, &f, "order-1", 2).await, 201);
    let order_id = placed["id"].as_str().unwrap().to_owned();
    assert_eq!(placed["state"], "placed");
    assert_eq!(placed["student_id"], f.student.as_str());
    assert_eq!(
        placed["total_cents"],
        2 * 300 + 450,
        "prices come from the menu"
    );
    // The same key and body is the same order; the same key with another body is refused.
    let again = expect(place_order(&hub, &f, "order-1", 2).await, 200);
    assert_eq!(again["id"], order_id.as_str());
    let reused = place_order(&hub, &f, "order-1", 3).await;
    assert_eq!(
        (reused.status, reused.code()),
        (422, "idempotency_key_reused")
    );

    let mut version = 1;
    for action in ["confirm", "start", "ready"] {
        let moved = expect(
            post(
                &hub,
                &f.kitchen_token,
                &format!("/api/v1/orders/{order_id}/{action}"),
                json!({"expected_version": version}),
            )
            .await,
            200,
        );
        version += 1;
        assert_eq!(moved["version"], version);
        if action == "ready" {
            assert_eq!(moved["counter"]["number"], 1, "{moved}");
            assert_eq!(
                moved["pickup_code"].as_str().map(str::len),
                Some(4),
                "{moved}"
            );
        }
    }

    let mut last_seq = 0;
    for expected in [
        "order.placed",
        "order.confirmed",
        "order.preparing",
        "order.ready",
    ] {
        let frame = next_json(&mut dashboard).await;
        assert_eq!(frame["topic"], format!("kitchen:{}", f.school));
        assert_eq!(frame["type"], expected, "{frame}");
        assert_eq!(frame["data"]["order_id"], order_id.as_str());
        let seq = frame["seq"].as_i64().unwrap();
        assert!(
            seq > last_seq,
            "sequence numbers increase: {seq} after {last_seq}"
        );
        last_seq = seq;
    }

    let mail = smtp
        .wait_for_containing(&f.guardian_email, "lunch is ready", Duration::from_secs(20))
        .await;
    assert!(mail.data.contains("Ada's lunch is ready"), "{}", mail.data);
    assert!(mail.data.contains("Tomato soup"), "{}", mail.data);
    assert!(mail.data.contains("at Counter 1"), "{}", mail.data);
    assert!(
        mail.data.contains("text/html"),
        "multipart with HTML: {}",
        mail.data
    );
    let subjects: Vec<String> = smtp
        .messages()
        .iter()
        .filter_map(|m| {
            m.data
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect();
    assert_eq!(
        subjects,
        ["Ada's lunch is ready"],
        "the email the guardian chose, once; no receipt by email (routine, not chosen)"
    );

    let before = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{order_id}"),
        )
        .await,
        200,
    );
    let states: Vec<&str> = before["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["placed", "confirmed", "preparing", "ready"]);

    let metrics = send(client().get(hub.url("/metrics")), None).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(
        client()
            .get(hub.url("/metrics"))
            .send()
            .await
            .unwrap()
            .body()
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("tiffin_orders{state=\"ready\"} 1"), "{text}");
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );

    // Restart on the same database: the order, its history and the live kitchen come back.
    let env = hub.kill();
    let hub = Hub::start(env);
    let after = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{order_id}"),
        )
        .await,
        200,
    );
    assert_eq!(after, before);
    let live = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/orders/live", f.school),
        )
        .await,
        200,
    );
    assert_eq!(live.as_array().unwrap().len(), 1);
    assert_eq!(live[0]["state"], "ready");
    // And the kitchen goes on where it stopped: the next frame continues the sequence.
    let mut dashboard = open_kitchen_socket(&hub, &f.kitchen_token, &f.school).await;
    let second = expect(place_order(&hub, &f, "order-2", 1).await, 201);
    let frame = next_json(&mut dashboard).await;
    assert_eq!(frame["data"]["order_id"], second["id"]);
    assert_eq!(frame["seq"].as_i64().unwrap(), last_seq + 1);

    drop(hub);
    db.drop_database().await;
}

#[actix_web::test]
async fn spine_on_sqlite() {
    spine(Backend::Sqlite).await;
}

#[actix_web::test]
async fn spine_on_postgres() {
    spine(Backend::Postgres).await;
}

/// With no configuration at all the hub runs on SQLite in the working directory (WAL), seeds
/// the demo school once, prints working demo tokens, and keeps its signing key across restarts.
#[actix_web::test]
async fn runs_with_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let env = vec![("RUST_LOG".to_owned(), "warn".to_owned())];
    let hub = Hub::start_in(dir.path(), env.clone(), printed.clone());
    // The banner is printed right after the address line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !printed
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.trim_start().starts_with("guardian:"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no demo tokens printed: {:?}",
            printed.lock().unwrap()
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = printed.lock().unwrap().clone();
    let dashboard = lines
        .iter()
        .find_map(|l| l.strip_prefix("Kitchen dashboard: "))
        .expect("dashboard address");
    assert!(dashboard.starts_with(&hub.base), "{dashboard}");
    let (page, token) = dashboard.split_once("#token=").unwrap();
    let school = page.rsplit('/').next().unwrap();
    let kitchen_token = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("kitchen_staff: "))
        .unwrap();
    assert_eq!(token, kitchen_token);
    let menu = expect(
        get(
            &hub,
            kitchen_token,
            &format!("/api/v1/schools/{school}/meals"),
        )
        .await,
        200,
    );
    assert!(menu.as_array().unwrap().len() >= 3, "{menu}");
    let html = client()
        .get(page)
        .send()
        .await
        .unwrap()
        .body()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&html).contains("WebSocket"));

    for file in ["tiffin.db", "tiffin.db-wal", "tiffin.db.jwt-secret"] {
        assert!(dir.path().join(file).exists(), "{file} missing");
    }
    let mode: String = {
        use diesel::{Connection, RunQueryDsl, sql_query, sqlite::SqliteConnection};
        #[derive(diesel::QueryableByName)]
        struct Mode {
            #[diesel(sql_type = diesel::sql_types::Text)]
            journal_mode: String,
        }
        let mut conn =
            SqliteConnection::establish(dir.path().join("tiffin.db").to_str().unwrap()).unwrap();
        sql_query("PRAGMA journal_mode")
            .get_result::<Mode>(&mut conn)
            .unwrap()
            .journal_mode
    };
    assert_eq!(mode, "wal");

    // A restart keeps the key (old tokens work) and does not seed twice.
    drop(hub);
    let again = Hub::start_in(dir.path(), env, Default::default());
    let schools = expect(
        get(
            &again,
            lines
                .iter()
                .find_map(|l| l.trim().strip_prefix("admin: "))
                .unwrap(),
            "/api/v1/schools",
        )
        .await,
        200,
    );
    assert_eq!(schools.as_array().unwrap().len(), 1);
    let password = lines
        .iter()
        .find_map(|l| l.split_once("ada@demo.tiffin.test / "))
        .map(|(_, password)| password.trim().to_owned())
        .expect("the student's demo password, printed once");
    for (password, status) in [(password.as_str(), 200), ("demo-student-pass", 401)] {
        let login = send(
            client().post(again.url("/api/v1/auth/login")),
            Some(json!({"login": "ada@demo.tiffin.test", "password": password})),
        )
        .await;
        assert_eq!(login.status, status, "{}", login.body);
    }
}

/// Ready orders go to the least-loaded open counter with a code unique for the day; with no
/// counter open they wait unassigned, and say so.
#[actix_web::test]
async fn ready_orders_get_a_counter_and_a_code() {
    let db = TestDb::new(Backend::Sqlite).await;
    let smtp = SmtpSink::start();
    let hub = Hub::start(hub_env(&db, Some(&smtp)));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "counters").await;
    let counters = format!("/api/v1/schools/{}/counters", f.school);
    let second = expect(
        post(
            &hub,
            &admin,
            &counters,
            json!({"number": 2, "is_open": true}),
        )
        .await,
        201,
    );
    expect(
        post(
            &hub,
            &admin,
            &counters,
            json!({"number": 3, "is_open": false}),
        )
        .await,
        201,
    );

    let mut ready = Vec::new();
    for n in 0..4 {
        let order = expect(place_order(&hub, &f, &format!("c-{n}"), 1).await, 201)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let last = advance(&hub, &f, &order, &["confirm", "start", "ready"]).await;
        ready.push(last);
    }
    let numbers: Vec<i64> = ready
        .iter()
        .map(|o| o["counter"]["number"].as_i64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        [1, 2, 1, 2],
        "least loaded, ties to the lowest number; closed counter 3 unused"
    );
    let codes: std::collections::HashSet<&str> = ready
        .iter()
        .map(|o| o["pickup_code"].as_str().unwrap())
        .collect();
    assert_eq!(codes.len(), 4, "codes are unique: {codes:?}");

    // Closing counter 1 moves its two waiting meals to counter 2, tells their students, and
    // says so in each order's history.
    let first_counter = ready[0]["counter"]["id"].as_str().unwrap().to_owned();
    expect(
        patch(
            &hub,
            &f.kitchen_token,
            &format!("{counters}/{first_counter}"),
            json!({"is_open": false}),
        )
        .await,
        200,
    );
    for moved in [&ready[0], &ready[2]] {
        let got = expect(
            get(
                &hub,
                &f.kitchen_token,
                &format!("/api/v1/orders/{}", moved["id"].as_str().unwrap()),
            )
            .await,
            200,
        );
        assert_eq!(got["order"]["counter"]["id"], second["id"], "{got}");
        assert_eq!(
            got["order"]["pickup_code"], moved["pickup_code"],
            "the code stays"
        );
        let last = got["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (last["type"].as_str(), last["reason"].as_str()),
            (Some("order.counter_changed"), Some("Counter 1 closed"))
        );
    }
    let moved_mail = smtp
        .wait_for("ada.counters@school.test", Duration::from_secs(20))
        .await;
    assert!(
        moved_mail.data.contains("Please collect it at Counter 2"),
        "{}",
        moved_mail.data
    );
    let unmoved = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{}", ready[1]["id"].as_str().unwrap()),
        )
        .await,
        200,
    );
    assert_eq!(
        unmoved["order"]["version"], 4,
        "orders at other counters are untouched"
    );

    // Staff close every counter: the next ready order has a code but waits for a counter.
    let counter_list = expect(get(&hub, &f.kitchen_token, &counters).await, 200);
    for c in counter_list.as_array().unwrap() {
        expect(
            patch(
                &hub,
                &f.kitchen_token,
                &format!("{counters}/{}", c["id"].as_str().unwrap()),
                json!({"is_open": false}),
            )
            .await,
            200,
        );
    }
    let order = expect(place_order(&hub, &f, "c-x", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let last = advance(&hub, &f, &order, &["confirm", "start", "ready"]).await;
    assert_eq!(last["counter"], Value::Null);
    assert_eq!(last["pickup_code"].as_str().map(str::len), Some(4));
    // Staff record a hand-over; the order leaves the live list, and cannot be handed out twice.
    let first = ready[0]["id"].as_str().unwrap();
    let handed = expect(
        post(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{first}/pickup"),
            json!({}),
        )
        .await,
        200,
    );
    assert_eq!(handed["state"], "picked_up");
    let again = post(
        &hub,
        &f.kitchen_token,
        &format!("/api/v1/orders/{first}/pickup"),
        json!({}),
    )
    .await;
    assert_eq!((again.status, again.code()), (409, "invalid_transition"));
    let live = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/orders/live", f.school),
        )
        .await,
        200,
    );
    assert!(
        live.as_array().unwrap().iter().all(|o| o["id"] != first),
        "{live}"
    );
    let r = post(
        &hub,
        &f.student_token,
        &format!("/api/v1/orders/{}/pickup", ready[1]["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "transition_not_permitted"));

    // A mis-click is recalled (recorded as such) and bumped again: same counter, same code.
    let second_id = ready[1]["id"].as_str().unwrap();
    let before = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{second_id}"),
        )
        .await,
        200,
    )["order"]
        .clone();
    let recalled = expect(
        post(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{second_id}/recall"),
            json!({"reason": "wrong tray"}),
        )
        .await,
        200,
    );
    assert_eq!(recalled["state"], "preparing");
    let history = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{second_id}"),
        )
        .await,
        200,
    );
    let last = history["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (
            last["from"].as_str(),
            last["to"].as_str(),
            last["reason"].as_str()
        ),
        (Some("ready"), Some("preparing"), Some("recall: wrong tray"))
    );
    let stale = post(
        &hub,
        &f.kitchen_token,
        &format!("/api/v1/orders/{second_id}/bump"),
        json!({"expected_version": 4}),
    )
    .await;
    assert_eq!((stale.status, stale.code()), (409, "version_conflict"));
    let bumped = expect(
        post(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{second_id}/bump"),
            json!({}),
        )
        .await,
        200,
    );
    assert_eq!(bumped["state"], "ready");
    assert_eq!(
        (&bumped["counter"], &bumped["pickup_code"]),
        (&before["counter"], &before["pickup_code"])
    );
    let r = post(
        &hub,
        &f.student_token,
        &format!("/api/v1/orders/{second_id}/recall"),
        json!({}),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "transition_not_permitted"));

    // The assignment is part of the order's record: the history endpoint shows it too.
    let stored = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{}", ready[1]["id"].as_str().unwrap()),
        )
        .await,
        200,
    );
    assert_eq!(
        stored["order"]["counter"],
        Value::Null,
        "counter 2 closed too"
    );
    assert!(
        stored["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["reason"] == "Counter 2 closed")
    );

    // The kitchen at a glance: queues with ages, counters with their queues, the day's items.
    let summary = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/kitchen/summary", f.school),
        )
        .await,
        200,
    );
    let count = |state: &str| {
        summary["states"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["state"] == state)
            .unwrap()["count"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        (count("placed"), count("preparing"), count("ready")),
        (0, 0, 4),
        "{summary}"
    );
    assert_eq!(summary["ready_without_counter"], 4);
    let waiting: Vec<u64> = summary["counters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["waiting"].as_u64().unwrap())
        .collect();
    assert_eq!(waiting, [0, 0, 0], "{summary}");
    let items: Vec<(&str, i64)> = summary["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["quantity"].as_i64().unwrap()))
        .collect();
    assert_eq!(items, [("Rice bowl", 5), ("Tomato soup", 5)]);
    let r = get(
        &hub,
        &f.student_token,
        &format!("/api/v1/schools/{}/kitchen/summary", f.school),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
}

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
    let summary = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/kitchen/summary", f.school),
        )
        .await,
        200,
    );
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

/// A time zone where it is about noon now, so a test's times of day never cross midnight.
fn noon_zone() -> String {
    use chrono::{Timelike, Utc};
    match (12 - Utc::now().hour() as i32 + 24 + 12) % 24 - 12 {
        0 => "Etc/GMT".to_owned(),
        n if n > 0 => format!("Etc/GMT-{n}"),
        n => format!("Etc/GMT+{}", -n),
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

/// A counter of the hub's `/metrics`, 0 if it has not been recorded yet.
async fn metric(hub: &Hub, name: &str) -> f64 {
    let text = String::from_utf8(
        client()
            .get(hub.url("/metrics"))
            .send()
            .await
            .unwrap()
            .body()
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A dashboard that stops reading is closed with 1013 once its send queue is full and
/// resumes with `since` without a gap; meanwhile another dashboard gets every frame promptly
/// and the kitchen keeps taking orders.
#[actix_web::test]
async fn a_slow_consumer_is_closed_and_slows_nobody() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let db = TestDb::new(Backend::Postgres).await;
    let mut env = hub_env(&db, None);
    env.push(("TIFFIN_WS_SEND_QUEUE".into(), "16".into()));
    // The stalled client answers no pings; on a loaded machine filling its buffers can take
    // longer than the default idle timeout, which would close it for the wrong reason.
    env.push(("TIFFIN_WS_IDLE_TIMEOUT_SECS".into(), "600".into()));
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "slow").await;
    // Large frames: every order carries twenty meals with long names.
    let mut items = Vec::new();
    for n in 0..20 {
        let meal = expect(
            post(
                &hub,
                &admin,
                &format!("/api/v1/schools/{}/meals", f.school),
                json!({"name": format!("{n:02} {}", "Roasted seasonal vegetables with herbs ".repeat(2)), "price_cents": 100}),
            )
            .await,
            201,
        );
        items.push(json!({"meal_id": meal["id"], "quantity": 1}));
    }
    let topic = format!("kitchen:{}", f.school);
    let mut slow = tight_socket(&hub, &f.kitchen_token).await;
    slow.send(ws::Message::Text(
        json!({"type": "subscribe", "topic": topic})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut slow).await["type"], "subscribed");
    assert_eq!(next_json(&mut slow).await["type"], "snapshot");
    // From here on `slow` is not read until the hub has given up on it.

    let mut healthy = open_kitchen_socket(&hub, &f.kitchen_token, &f.school).await;
    let seen: Rc<RefCell<Vec<(i64, f64)>>> = Rc::default();
    let reader = {
        let seen = seen.clone();
        actix_web::rt::spawn(async move {
            loop {
                let frame = next_json(&mut healthy).await;
                let at: chrono::DateTime<chrono::Utc> =
                    frame["at"].as_str().unwrap().parse().unwrap();
                let delay = (chrono::Utc::now() - at).num_microseconds().unwrap() as f64 / 1000.0;
                seen.borrow_mut()
                    .push((frame["seq"].as_i64().unwrap(), delay));
            }
        })
    };
    let mut placed = 0;
    while metric(&hub, "ws_slow_consumers_dropped_total").await < 1.0 {
        assert!(placed < 3000, "the stalled socket was never dropped");
        let batch = (0..8).map(|_| {
            send(
                client()
                    .post(hub.url(&format!("/api/v1/schools/{}/orders", f.school)))
                    .bearer_auth(&f.student_token),
                Some(json!({"items": items})),
            )
        });
        for reply in futures_util::future::join_all(batch).await {
            assert_eq!(
                reply.status, 201,
                "the kitchen keeps taking orders: {}",
                reply.body
            );
            placed += 1;
        }
    }
    // And after: the kitchen still takes orders.
    for _ in 0..5 {
        expect(
            send(
                client()
                    .post(hub.url(&format!("/api/v1/schools/{}/orders", f.school)))
                    .bearer_auth(&f.student_token),
                Some(json!({"items": items})),
            )
            .await,
            201,
        );
        placed += 1;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.borrow().len() < placed {
        assert!(
            std::time::Instant::now() < deadline,
            "healthy socket fell behind"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();
    let seen = seen.borrow().clone();
    let first = seen[0].0;
    assert!(
        seen.iter().zip(first..).all(|((seq, _), n)| *seq == n),
        "the healthy dashboard got every frame in order"
    );
    let mut delays: Vec<f64> = seen.iter().map(|(_, d)| *d).collect();
    delays.sort_by(f64::total_cmp);
    let (p50, max) = (delays[delays.len() / 2], delays[delays.len() - 1]);
    eprintln!(
        "slow consumer: {placed} orders; healthy socket delay p50 {p50:.1} ms, max {max:.1} ms"
    );
    // Blocking would show above as a stalled burst or a starved reader; this bound only
    // catches a socket waiting on the stalled one, and leaves room for a loaded CI machine.
    // Speed itself is the load tool's business.
    assert!(
        max < 10_000.0,
        "a stalled socket held others up: max delay {max} ms"
    );

    // Now the stalled client reads: what was written, then the close with its reason.
    let mut last = 0;
    let close = loop {
        let frame = actix_web::rt::time::timeout(Duration::from_secs(10), slow.next())
            .await
            .expect("no close")
            .expect("socket ended without a close frame")
            .unwrap();
        match frame {
            ws::Frame::Text(bytes) => {
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                let seq = v["seq"].as_i64().unwrap();
                assert!(last == 0 || seq == last + 1, "in order: {seq} after {last}");
                last = seq;
            }
            ws::Frame::Close(reason) => break reason.expect("a close reason"),
            _ => {}
        }
    };
    assert_eq!(close.code, ws::CloseCode::Again);
    assert_eq!(
        close.description.as_deref(),
        Some("slow consumer: resume with since")
    );
    assert!(
        last > 0 && last < first + placed as i64 - 1,
        "dropped mid-stream at {last}"
    );

    // It resumes where it stopped, with exactly what it missed.
    let (mut resumed, subscribed) = subscribe(&hub, &f.kitchen_token, &f.school, Some(last)).await;
    let upto = subscribed["seq"].as_i64().unwrap();
    assert_eq!(upto, first + placed as i64 - 1);
    for seq in last + 1..=upto {
        assert_eq!(next_json(&mut resumed).await["seq"], seq);
    }
    drop(hub);
    db.drop_database().await;
}

/// Hundreds of dashboards drop at once and reconnect within a second with `since`: every
/// one gets exactly the frames it missed, in order, then live frames again.
#[actix_web::test]
async fn a_reconnect_storm_recovers_every_socket_without_a_gap() {
    const SOCKETS: usize = 300;
    let db = TestDb::new(Backend::Postgres).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "storm").await;
    expect(place_order(&hub, &f, "storm-0", 1).await, 201);
    let opened = futures_util::future::join_all(
        (0..SOCKETS).map(|_| subscribe(&hub, &f.kitchen_token, &f.school, None)),
    )
    .await;
    let since: Vec<i64> = opened
        .iter()
        .map(|(_, subscribed)| subscribed["seq"].as_i64().unwrap())
        .collect();
    drop(opened);
    // What they miss while away: orders placed and moved on.
    let mut missed = Vec::new();
    for n in 1..=5 {
        let id = expect(place_order(&hub, &f, &format!("storm-{n}"), 1).await, 201)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/api/v1/orders/{id}/confirm");
        expect(post(&hub, &f.kitchen_token, &path, json!({})).await, 200);
        missed.push(id);
    }
    let started = std::time::Instant::now();
    let mut sockets = futures_util::future::join_all(
        since
            .iter()
            .map(|s| subscribe(&hub, &f.kitchen_token, &f.school, Some(*s))),
    )
    .await;
    let reconnected_in = started.elapsed();
    eprintln!("reconnect storm: {SOCKETS} sockets resubscribed in {reconnected_in:?}");
    let live = expect(place_order(&hub, &f, "storm-live", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for ((socket, subscribed), since) in sockets.iter_mut().zip(&since) {
        let upto = subscribed["seq"].as_i64().unwrap();
        assert_eq!(upto, since + 10, "ten events missed");
        let mut orders = Vec::new();
        for seq in since + 1..=upto + 1 {
            let frame = next_json(socket).await;
            assert_eq!(frame["seq"], seq, "{frame}");
            orders.push(frame["data"]["order_id"].as_str().unwrap().to_owned());
        }
        let expected: Vec<&String> = missed
            .iter()
            .flat_map(|id| [id, id])
            .chain(std::iter::once(&live))
            .collect();
        assert_eq!(orders.iter().collect::<Vec<_>>(), expected);
    }
    assert!(metric(&hub, "ws_resumes_served_total").await >= SOCKETS as f64);
    drop(hub);
    db.drop_database().await;
}

/// The pickup board: anyone of the school may watch it; it shows a ready meal's pickup code,
/// first name and counter, and nothing else; it resumes with `since`.
#[actix_web::test]
async fn the_pickup_board_shows_codes_and_first_names_only() {
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "board").await;
    let other = fixture(&hub, &admin, "elsewhere").await;
    let topic = format!("board:{}", f.school);
    let page = client()
        .get(hub.url(&format!("/board/{}?counter=1", f.school)))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    // Another school's student may not watch this one's board.
    let (_, mut outsider) = client()
        .ws(hub.ws_url(&other.student_token))
        .connect()
        .await
        .unwrap();
    outsider
        .send(ws::Message::Text(
            json!({"type": "subscribe", "topic": topic})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let refused = next_json(&mut outsider).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("wrong_school")),
        "{refused}"
    );

    let (mut board, subscribed) = subscribe_topic(&hub, &f.student_token, &topic, None).await;
    let snapshot = next_json(&mut board).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["data"]["ready"], json!([]));
    assert_eq!(snapshot["seq"], subscribed["seq"]);

    let order = expect(place_order(&hub, &f, "board-1", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut code = String::new();
    for action in ["confirm", "start", "ready"] {
        let path = format!("/api/v1/orders/{order}/{action}");
        let moved = expect(post(&hub, &f.kitchen_token, &path, json!({})).await, 200);
        code = moved["pickup_code"].as_str().unwrap_or_default().to_owned();
    }
    let ready = next_json(&mut board).await;
    assert_eq!(
        ready["type"], "board.ready",
        "placed, confirmed, preparing are not shown"
    );
    assert_eq!(
        ready["data"],
        json!({"pickup_code": code, "name": "Ada", "counter": 1})
    );
    let text = ready.to_string();
    for private in [order.as_str(), f.student.as_str(), "Tomato", "total_cents"] {
        assert!(
            !text.contains(private),
            "{private} on a public board: {text}"
        );
    }
    let seen = ready["seq"].as_i64().unwrap();
    assert!(seen > subscribed["seq"].as_i64().unwrap());
    drop(board);

    // Collected while the board was away: it resumes with exactly that.
    let path = format!("/api/v1/orders/{order}/pickup");
    expect(post(&hub, &f.kitchen_token, &path, json!({})).await, 200);
    let (mut board, _) = subscribe_topic(&hub, &f.student_token, &topic, Some(seen)).await;
    let gone = next_json(&mut board).await;
    assert_eq!(gone["type"], "board.gone", "{gone}");
    assert_eq!(gone["data"]["pickup_code"], code.as_str());
    assert_eq!(gone["seq"], seen + 1);
    drop(hub);
    db.drop_database().await;
}

/// chromedriver on a free loopback port, stopped when dropped.
struct ChromeDriver {
    child: std::process::Child,
    url: String,
}

impl ChromeDriver {
    async fn start() -> ChromeDriver {
        for needed in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(needed).exists(),
                "the browser test needs {needed}: apt-get install chromium chromium-driver \
                 (scripts/test installs them when it can)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while client().get(format!("{url}/status")).send().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        ChromeDriver { child, url }
    }

    async fn browser(&self) -> fantoccini::Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": "/usr/bin/chromium",
                   // The network is closed: keep Chromium from trying to reach outside hosts.
                   "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                            "--no-first-run", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync"]}),
        );
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a headless Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kitchen dashboard in a real browser: it shows an order placed through the API, a bump
/// click moves it, and after a hub restart it resumes with `since` and misses nothing.
#[actix_web::test]
async fn the_dashboard_in_a_real_browser() {
    use fantoccini::Locator;
    let driver = ChromeDriver::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "browser").await;
    let browser = driver.browser().await;
    browser
        .goto(&hub.url(&format!(
            "/dashboard/{}#token={}",
            f.school, f.kitchen_token
        )))
        .await
        .unwrap();
    let wait = |css: String| {
        let browser = browser.clone();
        async move {
            browser
                .wait()
                .at_most(Duration::from_secs(20))
                .for_element(Locator::Css(&css))
                .await
                .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
        }
    };
    // The page redraws its columns on every frame, so an element found a moment ago may be
    // gone: read and click by selector, again until it holds still.
    let text_of = |css: String| {
        let browser = browser.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(el) = browser.find(Locator::Css(&css)).await
                    && let Ok(text) = el.text().await
                {
                    return text;
                }
                assert!(std::time::Instant::now() < deadline, "{css} never readable");
                actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let click = |css: String| {
        let browser = browser.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(el) = browser.find(Locator::Css(&css)).await
                    && el.click().await.is_ok()
                {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{css} never clickable"
                );
                actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let in_column = |column: &str, order: &str| format!("#{column} [data-order-id='{order}']");
    wait("#status:not(.stale)".into()).await;

    let first = expect(place_order(&hub, &f, "browser-1", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait(in_column("placed", &first)).await;
    assert!(
        text_of(in_column("placed", &first))
            .await
            .contains("Tomato soup")
    );
    click(format!("{} .bump", in_column("placed", &first))).await;
    wait(in_column("confirmed", &first)).await;
    wait("#counters tr".into()).await;
    assert!(text_of("#counters".into()).await.contains("Counter 1"));

    // The hub goes down and comes back on the same address; what happens right after the
    // restart reaches the page through its resume.
    let address = hub.base.trim_start_matches("http://").to_owned();
    let mut env = hub.kill();
    wait("#banner.shown".into()).await;
    env.push(("TIFFIN_BIND".into(), address));
    let hub = Hub::start(env);
    let second = expect(place_order(&hub, &f, "browser-2", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/orders/{first}/start");
    expect(post(&hub, &f.kitchen_token, &path, json!({})).await, 200);
    wait(in_column("placed", &second)).await;
    wait(in_column("preparing", &first)).await;
    wait("#status:not(.stale)".into()).await;
    let (_, subscribed) = subscribe(&hub, &f.kitchen_token, &f.school, None).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let shown = browser
            .execute("return Number(document.body.dataset.lastSeq)", vec![])
            .await
            .unwrap();
        if shown == subscribed["seq"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "page at {shown}, hub at {}",
            subscribed["seq"]
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    browser.close().await.unwrap();
    drop(hub);
    db.drop_database().await;
}

/// A user's inbox: in-app messages arrive live on `inbox:<user>`, numbered per user, resume
/// with `since`, and nobody else may read them.
#[actix_web::test]
async fn in_app_messages_reach_the_inbox_topic() {
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "inbox").await;
    let mine = format!("inbox:{}", f.student);

    let (_, mut nosy) = client()
        .ws(hub.ws_url(&f.student_token))
        .connect()
        .await
        .unwrap();
    nosy.send(ws::Message::Text(
        json!({"type": "subscribe", "topic": format!("inbox:{}", f.guardian)})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let refused = next_json(&mut nosy).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    let (mut inbox, subscribed) = subscribe_topic(&hub, &f.student_token, &mine, None).await;
    assert_eq!(subscribed["seq"], 0);
    let snapshot = next_json(&mut inbox).await;
    assert_eq!(snapshot["data"]["messages"], json!([]));

    // The kitchen cancels: the student hears of it in the app.
    let cancel = async |key: &str| {
        let id = expect(place_order(&hub, &f, key, 1).await, 201)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/api/v1/orders/{id}/cancel");
        expect(post(&hub, &f.kitchen_token, &path, json!({})).await, 200);
        id
    };
    let first = cancel("inbox-1").await;
    let message = next_json(&mut inbox).await;
    assert_eq!(message["topic"], mine.as_str());
    assert_eq!(message["type"], "inbox.message");
    assert_eq!(message["seq"], 1);
    assert_eq!(message["data"]["order_id"], first.as_str());
    assert_eq!(message["data"]["kind"], "order_cancelled");
    assert_eq!(message["data"]["title"], "Ada's lunch order was cancelled");
    drop(inbox);

    let second = cancel("inbox-2").await;
    // Stored while away (delivery is asynchronous): wait until it is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut inbox, subscribed) = loop {
        let (socket, subscribed) = subscribe_topic(&hub, &f.student_token, &mine, Some(1)).await;
        if subscribed["seq"] == 2 {
            break (socket, subscribed);
        }
        assert!(std::time::Instant::now() < deadline, "{subscribed}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(subscribed["seq"], 2);
    let missed = next_json(&mut inbox).await;
    assert_eq!(
        (missed["seq"].as_i64(), missed["type"].as_str()),
        (Some(2), Some("inbox.message"))
    );
    assert_eq!(missed["data"]["order_id"], second.as_str());

    let (mut fresh, _) = subscribe_topic(&hub, &f.student_token, &mine, None).await;
    let snapshot = next_json(&mut fresh).await;
    let listed: Vec<&str> = snapshot["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [second.as_str(), first.as_str()], "newest first");

    // The same inbox over REST: list, mark read, delete.
    let listed = expect(get(&hub, &f.student_token, "/api/v1/me/inbox").await, 200);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(listed[0]["order_id"], second.as_str());
    let mark_read = async |id: &str| {
        let path = format!("/api/v1/me/inbox/{id}/read");
        expect(post(&hub, &f.student_token, &path, json!({})).await, 200)
    };
    let read = mark_read(ids[1]).await;
    assert!(read["read_at"].is_string(), "{read}");
    // The user's other devices hear of it: a frame outside the sequence, the first time only.
    let cleared = next_json(&mut fresh).await;
    assert_eq!(
        (cleared["type"].as_str(), cleared["seq"].as_i64()),
        (Some("inbox.read"), Some(0)),
        "{cleared}"
    );
    assert_eq!(cleared["data"]["id"], ids[1]);
    assert_eq!(cleared["data"]["read_at"], read["read_at"]);
    let again = mark_read(ids[1]).await;
    assert_eq!(again["read_at"], read["read_at"], "the first time counts");
    let unread = expect(
        get(&hub, &f.student_token, "/api/v1/me/inbox?unread=true").await,
        200,
    );
    assert_eq!(unread.as_array().unwrap().len(), 1);
    assert_eq!(unread[0]["id"], ids[0]);
    let delete = |id: String| {
        let token = f.student_token.clone();
        let url = hub.url(&format!("/api/v1/me/inbox/{id}"));
        async move { send(client().delete(url).bearer_auth(token), None).await }
    };
    assert_eq!(delete(ids[0].to_owned()).await.status, 204);
    // Next on the other device: the deletion (no second read frame came before it).
    let gone = next_json(&mut fresh).await;
    assert_eq!(
        (gone["type"].as_str(), gone["seq"].as_i64()),
        (Some("inbox.deleted"), Some(0)),
        "{gone}"
    );
    assert_eq!(gone["data"]["id"], ids[0]);
    assert_eq!(gone["data"]["title"], "");
    let again = delete(ids[0].to_owned()).await;
    assert_eq!((again.status, again.code()), (404, "not_found"));
    // Someone else's message is not found either: the guardian's copy of the same cancellation.
    let guardian_token = login(&hub, &f.guardian_email, "guardian-pass-1").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let theirs = loop {
        let theirs = expect(get(&hub, &guardian_token, "/api/v1/me/inbox").await, 200);
        if let Some(id) = theirs[0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guardian's inbox stayed empty"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(delete(theirs).await.status, 404);
    let left = expect(get(&hub, &f.student_token, "/api/v1/me/inbox").await, 200);
    assert_eq!(left.as_array().unwrap().len(), 1);
    let bad = get(&hub, &f.student_token, "/api/v1/me/inbox?limit=0").await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_query"));
    // A resume across the deleted message still has no gap: it comes back blanked.
    let (mut resumed, _) = subscribe_topic(&hub, &f.student_token, &mine, Some(0)).await;
    let one = next_json(&mut resumed).await;
    let two = next_json(&mut resumed).await;
    assert_eq!(
        (one["seq"].as_i64(), two["seq"].as_i64()),
        (Some(1), Some(2))
    );
    assert!(
        two["data"]["deleted_at"].is_string() && two["data"]["title"] == "",
        "{two}"
    );
    drop(hub);
    db.drop_database().await;
}

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

/// The history entries of one order with the given event type.
async fn history_of(hub: &Hub, token: &str, order: &str, kind: &str) -> Vec<Value> {
    let got = expect(
        get(hub, token, &format!("/api/v1/orders/{order}")).await,
        200,
    );
    got["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["type"] == kind)
        .cloned()
        .collect()
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

/// Two nodes on one database and several staff transition one order at once: exactly one
/// wins, the others get a conflict code, and the history holds one transition.
async fn one_winner(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = Hub::start(hub_env(&db, None));
    let second = Hub::start(hub_env(&db, None));
    let admin = first.admin_token();
    let f = fixture(&first, &admin, "race").await;
    for round in 0..3 {
        let placed = expect(
            place_order(&first, &f, &format!("race-{round}"), 1).await,
            201,
        );
        let order = placed["id"].as_str().unwrap().to_owned();
        // Round 0 races confirms on a placed order. Later rounds race `ready` against
        // `cancel` on a preparing order (exclusive moves), where a loser may find the
        // order's actor already stopped by a cancel.
        let mut before = 1;
        if round > 0 {
            for action in ["confirm", "start"] {
                expect(
                    post(
                        &first,
                        &f.kitchen_token,
                        &format!("/api/v1/orders/{order}/{action}"),
                        json!({}),
                    )
                    .await,
                    200,
                );
                before += 1;
            }
        }
        let (primary, rival) = if round == 0 {
            ("confirm", "confirm")
        } else {
            ("ready", "cancel")
        };
        let paths = [primary, rival].map(|a| format!("/api/v1/orders/{order}/{a}"));
        let attempts = (0..8).map(|n| {
            let hub = if n % 2 == 0 { &first } else { &second };
            post(hub, &f.kitchen_token, &paths[(n / 2) % 2], json!({}))
        });
        let replies = futures_util::future::join_all(attempts).await;
        let winners = replies.iter().filter(|r| r.status == 200).count();
        assert_eq!(
            winners,
            1,
            "round {round}: {:?}",
            replies
                .iter()
                .map(|r| (r.status, r.code().to_owned()))
                .collect::<Vec<_>>()
        );
        for r in replies.iter().filter(|r| r.status != 200) {
            assert_eq!(r.status, 409, "{}", r.body);
            assert!(
                ["version_conflict", "invalid_transition"].contains(&r.code()),
                "{}",
                r.body
            );
        }
        let history = expect(
            get(
                &second,
                &f.kitchen_token,
                &format!("/api/v1/orders/{order}"),
            )
            .await,
            200,
        );
        let versions: Vec<i64> = history["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["version"].as_i64().unwrap())
            .collect();
        assert_eq!(
            versions,
            (1..=before + 1).collect::<Vec<_>>(),
            "one transition won"
        );
        // The node that lost catches up and can drive the order on.
        if history["order"]["state"] == "confirmed" {
            expect(
                post(
                    &second,
                    &f.kitchen_token,
                    &format!("/api/v1/orders/{order}/start"),
                    json!({"expected_version": 2}),
                )
                .await,
                200,
            );
        }
    }
    drop((first, second));
    db.drop_database().await;
}

#[actix_web::test]
async fn concurrent_transitions_have_one_winner_on_sqlite() {
    one_winner(Backend::Sqlite).await;
}

#[actix_web::test]
async fn concurrent_transitions_have_one_winner_on_postgres() {
    one_winner(Backend::Postgres).await;
}

/// Orders arriving together are committed together (group commit): every accepted order
/// is answered once, on its kitchen's screen in sequence; a refused order and a duplicate
/// idempotency key roll back alone, leaving no gap in the refused kitchen's sequence.
async fn orders_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start();
    let hub = Hub::start(hub_env(&db, Some(&smtp)));
    let admin = hub.admin_token();
    let a = fixture(&hub, &admin, "together").await;
    // Receipts by email, as this guardian chose (not a default).
    choose_email(
        &hub,
        &a.guardian_email,
        "guardian-pass-1",
        &["order_placed"],
    )
    .await;
    let b = fixture(&hub, &admin, "refused").await;
    // Every meal has celery: each of b's orders is refused inside the store.
    let student_of_b = format!("/api/v1/schools/{}/users/{}", b.school, b.student);
    expect(
        patch(
            &hub,
            &admin,
            &student_of_b,
            json!({"allergies": ["celery"]}),
        )
        .await,
        200,
    );
    let mut screen_a = open_kitchen_socket(&hub, &a.kitchen_token, &a.school).await;
    let (_, b_before) = subscribe(&hub, &b.kitchen_token, &b.school, None).await;
    let b_seq_before = b_before["seq"].as_i64().unwrap();

    const KEYS: usize = 24;
    const BATCHES: &str = "order_commit_batch_size_count";
    const BATCHED: &str = "order_commit_batch_size_sum";
    let (batches_before, sizes_before) = (metric(&hub, BATCHES).await, metric(&hub, BATCHED).await);
    // a: 24 keys, the first 8 sent twice at once; b: 16 refused.
    let keys_a: Vec<String> = (0..KEYS + 8)
        .map(|n| format!("at-once-{}", n % KEYS))
        .collect();
    let keys_b: Vec<String> = (0..16).map(|n| format!("refused-{n}")).collect();
    let for_a = keys_a.iter().map(|key| place_order(&hub, &a, key, 1));
    let for_b = keys_b.iter().map(|key| place_order(&hub, &b, key, 1));
    let (replies_a, replies_b) = futures_util::future::join(
        futures_util::future::join_all(for_a),
        futures_util::future::join_all(for_b),
    )
    .await;

    let mut ids = std::collections::HashMap::new();
    for (n, r) in replies_a.iter().enumerate() {
        assert!(r.status == 201 || r.status == 200, "{}", r.body);
        let id = r.body["id"].as_str().unwrap().to_owned();
        let first = ids.entry(n % KEYS).or_insert_with(|| id.clone());
        assert_eq!(*first, id, "one key, one order");
    }
    let created = replies_a.iter().filter(|r| r.status == 201).count();
    assert_eq!(created, KEYS, "each key created its order once");
    for r in &replies_b {
        assert_eq!(
            (r.status, r.code()),
            (422, "allergy_conflict"),
            "{}",
            r.body
        );
    }
    let live_a = format!("/api/v1/schools/{}/orders/live", a.school);
    let live_a = expect(get(&hub, &a.kitchen_token, &live_a).await, 200);
    assert_eq!(live_a.as_array().unwrap().len(), KEYS);

    // a's screen: each order placed once, in sequence, without a gap.
    let mut seqs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while seqs.len() < KEYS {
        let frame = next_json(&mut screen_a).await;
        assert_eq!(frame["type"], "order.placed", "{frame}");
        assert!(seen.insert(frame["data"]["order_id"].as_str().unwrap().to_owned()));
        seqs.push(frame["seq"].as_i64().unwrap());
    }
    let first = seqs[0];
    assert_eq!(seqs, (first..first + KEYS as i64).collect::<Vec<_>>());
    // b's refused orders took no sequence numbers: its next event is the one after.
    expect(
        patch(&hub, &admin, &student_of_b, json!({"allergies": []})).await,
        200,
    );
    let mut screen_b = open_kitchen_socket(&hub, &b.kitchen_token, &b.school).await;
    expect(place_order(&hub, &b, "after-refusals", 1).await, 201);
    let frame = next_json(&mut screen_b).await;
    assert_eq!(frame["type"], "order.placed", "{frame}");
    assert_eq!(frame["seq"].as_i64().unwrap(), b_seq_before + 1);

    // The batches really held several orders.
    let batches = metric(&hub, BATCHES).await - batches_before;
    let batched = metric(&hub, BATCHED).await - sizes_before;
    assert!(
        batched > batches,
        "{batched} orders in {batches} batches: none shared a commit"
    );
    // Every committed order's outbox rows were committed with it: one receipt each.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let receipts = smtp
            .messages()
            .iter()
            .filter(|m| m.to.iter().any(|t| t == &a.guardian_email))
            .count();
        if receipts >= KEYS {
            assert_eq!(receipts, KEYS, "one receipt per order");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{receipts} receipts of {KEYS}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }

    // Statements and round trips per order (`db_statements_total`, `db_round_trips_total`):
    // a lone order's, then a burst's, whose orders share their batches' reads and writes.
    const SENT: &str = r#"db_statements_total{op="order"}"#;
    const TRIPS: &str = r#"db_round_trips_total{op="order"}"#;
    const COUNTED: &str = r#"db_operations_total{op="order"}"#;
    let counts = async || {
        (
            metric(&hub, SENT).await,
            metric(&hub, TRIPS).await,
            metric(&hub, COUNTED).await,
        )
    };
    let (sent, trips, counted) = counts().await;
    let lone_order = expect(place_order(&hub, &a, "lone", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (sent_after, trips_after, counted_after) = counts().await;
    let (lone, lone_trips) = (sent_after - sent, trips_after - trips);
    assert_eq!(counted_after - counted, 1.0);
    assert!(lone >= 3.0, "a lone order sent {lone} statements");
    if backend == Backend::Postgres {
        // The batch's reads pipelined, then one statement for all its writes.
        assert_eq!(
            lone_trips, 2.0,
            "a lone order took {lone_trips} round trips"
        );
        // A transition: its order's owner read once per node, then one statement a batch;
        // two when the order becomes ready (its counter and code read first).
        const MOVES: &str = r#"db_round_trips_total{op="transition"}"#;
        let before = metric(&hub, MOVES).await;
        advance(&hub, &a, &lone_order, &["confirm", "start", "ready"]).await;
        let moves = metric(&hub, MOVES).await - before;
        assert!(
            (4.0..=5.0).contains(&moves),
            "confirm, start and ready took {moves} round trips"
        );
    }
    let (sent, trips, counted) = counts().await;
    let burst: Vec<String> = (0..KEYS).map(|n| format!("burst-{n}")).collect();
    for r in
        futures_util::future::join_all(burst.iter().map(|key| place_order(&hub, &a, key, 1))).await
    {
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let (sent_after, trips_after, counted_after) = counts().await;
    assert_eq!(counted_after - counted, KEYS as f64);
    let per_order = (sent_after - sent) / KEYS as f64;
    let trips_per_order = (trips_after - trips) / KEYS as f64;
    assert!(
        per_order < lone,
        "orders at once sent {per_order} statements each, a lone one {lone}"
    );
    assert!(
        trips_per_order < lone_trips,
        "orders at once took {trips_per_order} round trips each, a lone one {lone_trips}"
    );
    drop(hub);
    db.drop_database().await;
}

#[actix_web::test]
async fn orders_placed_at_once_commit_together_on_sqlite() {
    orders_at_once(Backend::Sqlite).await;
}

#[actix_web::test]
async fn orders_placed_at_once_commit_together_on_postgres() {
    orders_at_once(Backend::Postgres).await;
}

/// A student follows their own order live; a guardian resumes it with `since`; nobody
/// else may follow it.
#[actix_web::test]
async fn students_and_guardians_follow_their_order() {
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "follow").await;
    let other = fixture(&hub, &admin, "other").await;
    let order = expect(place_order(&hub, &f, "follow-1", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let topic = format!("order:{order}");

    let (mut student, subscribed) = subscribe_topic(&hub, &f.student_token, &topic, None).await;
    assert_eq!(subscribed["seq"], 1);
    let snapshot = next_json(&mut student).await;
    assert_eq!(
        (snapshot["type"].as_str(), snapshot["seq"].as_i64()),
        (Some("snapshot"), Some(1))
    );
    assert_eq!(snapshot["data"]["order"]["state"], "placed");

    advance(&hub, &f, &order, &["confirm", "start", "ready"]).await;
    let mut seen = Vec::new();
    for (seq, kind) in [
        (2, "order.confirmed"),
        (3, "order.preparing"),
        (4, "order.ready"),
    ] {
        let frame = next_json(&mut student).await;
        assert_eq!(
            (
                frame["topic"].as_str(),
                frame["seq"].as_i64(),
                frame["type"].as_str()
            ),
            (Some(topic.as_str()), Some(seq), Some(kind))
        );
        seen.push(frame);
    }
    assert_eq!(
        seen[2]["data"]["order"]["counter"]["number"], 1,
        "ready at counter 1"
    );

    let guardian = login(&hub, &f.guardian_email, "guardian-pass-1").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut resumed, subscribed) = subscribe_topic(&hub, &guardian, &topic, Some(2)).await;
    assert_eq!(subscribed["seq"], 4);
    assert_eq!(next_json(&mut resumed).await, seen[1]);
    assert_eq!(next_json(&mut resumed).await, seen[2]);

    for token in [&other.student_token, &other.kitchen_token] {
        let (_, mut socket) = client().ws(hub.ws_url(token)).connect().await.unwrap();
        socket
            .send(ws::Message::Text(
                json!({"type": "subscribe", "topic": topic})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
        let refused = next_json(&mut socket).await;
        assert_eq!(refused["type"], "error", "{refused}");
        assert!(
            ["wrong_school", "forbidden"].contains(&refused["code"].as_str().unwrap()),
            "{refused}"
        );
    }
}

/// A dashboard that drops mid-stream and resumes with `since` gets exactly the frames it
/// missed, in order, then live ones; one that is ahead gets an explicit snapshot.
#[actix_web::test]
async fn dashboards_resume_without_a_gap() {
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "resume").await;
    // The reference: a dashboard that never drops.
    let mut reference = open_kitchen_socket(&hub, &f.kitchen_token, &f.school).await;
    let mut dropping = open_kitchen_socket(&hub, &f.kitchen_token, &f.school).await;

    let mut orders = Vec::new();
    for n in 0..3 {
        orders.push(
            expect(place_order(&hub, &f, &format!("r-{n}"), 1).await, 201)["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut last = 0;
    for _ in 0..3 {
        last = next_json(&mut dropping).await["seq"].as_i64().unwrap();
    }
    drop(dropping);

    // Missed while away: two orders placed, one confirmed, one cancelled.
    for n in 3..5 {
        orders.push(
            expect(place_order(&hub, &f, &format!("r-{n}"), 1).await, 201)["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    expect(
        post(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{}/confirm", orders[0]),
            json!({}),
        )
        .await,
        200,
    );
    expect(
        post(
            &hub,
            &f.student_token,
            &format!("/api/v1/orders/{}/cancel", orders[1]),
            json!({}),
        )
        .await,
        200,
    );

    let (mut resumed, subscribed) = subscribe(&hub, &f.kitchen_token, &f.school, Some(last)).await;
    assert_eq!(subscribed["seq"], last + 4);
    expect(
        post(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/orders/{}/start", orders[0]),
            json!({}),
        )
        .await,
        200,
    );
    let mut expected = Vec::new();
    for _ in 0..(last + 5) {
        expected.push(next_json(&mut reference).await);
    }
    let missed_and_live: Vec<Value> = expected
        .into_iter()
        .filter(|f| f["seq"].as_i64().unwrap() > last)
        .collect();
    assert_eq!(missed_and_live.len(), 5);
    for want in missed_and_live {
        assert_eq!(
            next_json(&mut resumed).await,
            want,
            "resumed frames equal the reference, in order"
        );
    }

    // A client ahead of the server is not left silently behind: it gets a snapshot.
    let (mut ahead, _) = subscribe(&hub, &f.kitchen_token, &f.school, Some(last + 1000)).await;
    let snapshot = next_json(&mut ahead).await;
    assert_eq!(
        (
            snapshot["type"].as_str(),
            snapshot["data"]["reason"].as_str()
        ),
        (Some("snapshot"), Some("ahead_of_server"))
    );
    let live: Vec<&str> = snapshot["data"]["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(live.len(), 4, "five placed, one cancelled: {live:?}");
    assert!(!live.contains(&orders[1].as_str()));
    assert_eq!(snapshot["seq"], last + 5);
}

/// Role and school checks, bad input, token rotation: clear codes, never a 500.
#[actix_web::test]
async fn rules_at_the_edge() {
    let db = TestDb::new(Backend::Sqlite).await;
    let log = db.dir().join("hub.log");
    let mut env = hub_env(&db, None);
    env.retain(|(k, _)| k != "RUST_LOG");
    env.push(("RUST_LOG".into(), "debug".into()));
    let hub = Hub::start_logging(env, Some(&log));
    let admin = hub.admin_token();
    let a = fixture(&hub, &admin, "a").await;
    let b = fixture(&hub, &admin, "b").await;

    // School A's token on school B's data.
    for path in [
        format!("/api/v1/schools/{}/orders/live", b.school),
        format!("/api/v1/schools/{}/counters", b.school),
        format!("/api/v1/schools/{}", b.school),
    ] {
        let r = get(&hub, &a.kitchen_token, &path).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "wrong_school"),
            "{path}: {}",
            r.body
        );
    }
    let placed_in_b = expect(place_order(&hub, &b, "b-1", 1).await, 201);
    let b_order = placed_in_b["id"].as_str().unwrap();
    let r = post(
        &hub,
        &a.kitchen_token,
        &format!("/api/v1/orders/{b_order}/confirm"),
        json!({}),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "wrong_school"));
    let r = get(&hub, &a.student_token, &format!("/api/v1/orders/{b_order}")).await;
    assert_eq!(r.status, 403, "{}", r.body);

    // Lower roles.
    let r = post(
        &hub,
        &a.kitchen_token,
        "/api/v1/schools",
        json!({"name": "X", "time_zone": "UTC"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let placed = expect(place_order(&hub, &a, "a-1", 1).await, 201);
    let order = placed["id"].as_str().unwrap().to_owned();
    let r = post(
        &hub,
        &a.student_token,
        &format!("/api/v1/orders/{order}/confirm"),
        json!({}),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "transition_not_permitted"));
    // A guardian of the student may cancel while it is placed; a stale version conflicts.
    let g = login(&hub, &a.guardian_email, "guardian-pass-1").await;
    let guardian_token = g["access_token"].as_str().unwrap();
    let r = post(
        &hub,
        guardian_token,
        &format!("/api/v1/orders/{order}/cancel"),
        json!({"expected_version": 7}),
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "version_conflict"));
    let cancelled = expect(
        post(
            &hub,
            guardian_token,
            &format!("/api/v1/orders/{order}/cancel"),
            json!({"reason": "home sick"}),
        )
        .await,
        200,
    );
    assert_eq!(cancelled["state"], "cancelled");
    let r = post(
        &hub,
        &a.kitchen_token,
        &format!("/api/v1/orders/{order}/confirm"),
        json!({}),
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "invalid_transition"));
    let history = expect(
        get(&hub, guardian_token, &format!("/api/v1/orders/{order}")).await,
        200,
    );
    assert_eq!(history["history"][1]["reason"], "home sick");
    assert_eq!(history["history"][1]["actor_id"], a.guardian.as_str());

    // No token, a tampered token, an expired one.
    let r = send(
        client().get(hub.url(&format!("/api/v1/schools/{}/meals", a.school))),
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"));
    let mut tampered = a.kitchen_token.clone();
    tampered.pop();
    tampered.push(if a.kitchen_token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    let r = get(&hub, &tampered, "/api/v1/me").await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"));
    let expired = hub.cli(&["token", "--role", "admin", "--ttl", "-120"]);
    let r = get(&hub, &expired, "/api/v1/schools").await;
    assert_eq!((r.status, r.code()), (401, "token_expired"));

    // Bad input: each gets its code, nothing is written.
    let orders = hub.url(&format!("/api/v1/schools/{}/orders", a.school));
    let raw = |body: &'static str| {
        client()
            .post(orders.clone())
            .bearer_auth(&a.student_token)
            .insert_header(("Content-Type", "application/json"))
            .send_body(body)
    };
    let status_code = |mut res: awc::ClientResponse<_>| async move {
        let body: Value = res.json().limit(1 << 20).await.unwrap_or(Value::Null);
        (
            res.status().as_u16(),
            body["error"]["code"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(
        status_code(raw("{\"items\": [").await.unwrap()).await,
        (400, "malformed_json".into())
    );
    assert_eq!(
        status_code(raw("{\"items\": [], \"tip\": 1}").await.unwrap()).await,
        (422, "invalid_body".into())
    );
    assert_eq!(
        status_code(raw("{\"items\": \"soup\"}").await.unwrap()).await,
        (422, "invalid_body".into())
    );
    assert_eq!(
        status_code(raw("{\"items\": []}").await.unwrap()).await,
        (422, "empty_order".into())
    );
    let big = format!("{{\"items\": [], \"pad\": \"{}\"}}", "x".repeat(200_000));
    let res = client()
        .post(orders.clone())
        .bearer_auth(&a.student_token)
        .insert_header(("Content-Type", "application/json"))
        .send_body(big)
        .await
        .unwrap();
    assert_eq!(status_code(res).await, (413, "body_too_large".into()));
    let unknown_meal = post(
        &hub,
        &a.student_token,
        &format!("/api/v1/schools/{}/orders", a.school),
        json!({"items": [{"meal_id": b.meals[0], "quantity": 1}]}),
    )
    .await;
    assert_eq!(
        (unknown_meal.status, unknown_meal.code()),
        (422, "unknown_meal")
    );
    let r = get(&hub, &a.kitchen_token, "/api/v1/orders/not-a-uuid").await;
    assert_eq!((r.status, r.code()), (400, "invalid_id"));
    let r = get(
        &hub,
        &a.kitchen_token,
        &format!("/api/v1/orders/{}", uuid::Uuid::new_v4()),
    )
    .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = get(&hub, &a.kitchen_token, "/api/v1/nothing-here").await;
    assert_eq!((r.status, r.code()), (404, "route_not_found"));
    let r = post(
        &hub,
        &admin,
        "/api/v1/schools",
        json!({"name": "Y", "time_zone": "Mars/Olympus"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (422, "validation_failed"));
    let dup = post(
        &hub,
        &admin,
        &format!("/api/v1/schools/{}/users", a.school),
        json!({"role": "student", "display_name": "Twin", "email": a.guardian_email}),
    )
    .await;
    assert_eq!((dup.status, dup.code()), (409, "duplicate"));
    // Only the one cancelled order exists in school A: no partial writes above.
    let mine = expect(
        get(
            &hub,
            &a.kitchen_token,
            &format!("/api/v1/schools/{}/orders/live", a.school),
        )
        .await,
        200,
    );
    assert_eq!(mine, json!([]));

    // Allergies: refused with the allergen named, unless kitchen staff record an override.
    expect(
        patch(
            &hub,
            &admin,
            &format!("/api/v1/schools/{}/users/{}", a.school, a.student),
            json!({"allergies": ["Celery"]}),
        )
        .await,
        200,
    );
    let soup = json!({"items": [{"meal_id": a.meals[0], "quantity": 1}]});
    let orders_path = format!("/api/v1/schools/{}/orders", a.school);
    let r = post(&hub, &a.student_token, &orders_path, soup.clone()).await;
    assert_eq!((r.status, r.code()), (422, "allergy_conflict"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("celery"),
        "{}",
        r.body
    );
    let mut overriding = soup.clone();
    overriding["allergy_override"] = json!("celery-free batch, checked by the cook");
    let r = post(&hub, &a.student_token, &orders_path, overriding.clone()).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    overriding["student_id"] = json!(a.student);
    let served = expect(
        post(&hub, &a.kitchen_token, &orders_path, overriding).await,
        201,
    );
    let history = expect(
        get(
            &hub,
            &a.kitchen_token,
            &format!("/api/v1/orders/{}", served["id"].as_str().unwrap()),
        )
        .await,
        200,
    );
    let reason = history["history"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("allergy override") && reason.contains("celery-free batch"),
        "{reason}"
    );

    // Sign-in by phone, however it is written.
    let p = &a.guardian_phone;
    let spaced = format!("{} {}-{}", &p[..2], &p[2..5], &p[5..]);
    let by_phone = login(&hub, &spaced, "guardian-pass-1").await;
    assert_eq!(by_phone["user"]["id"], a.guardian.as_str());

    // A path served with other methods is 405 with `Allow`; a path not served at all is 404.
    let order_path = format!("/api/v1/orders/{}/confirm", uuid::Uuid::new_v4());
    for (method, path, allow) in [
        ("DELETE", "/api/v1/schools", "GET, POST"),
        ("PUT", order_path.as_str(), "POST"),
        ("POST", "/api/v1/me", "GET"),
    ] {
        let req = client()
            .request(method.parse().unwrap(), hub.url(path))
            .bearer_auth(&admin);
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 405, "{method} {path}");
        assert_eq!(
            res.headers().get("allow").unwrap().to_str().unwrap(),
            allow,
            "{method} {path}"
        );
    }
    let nowhere = send(
        client()
            .delete(hub.url("/api/v1/nowhere"))
            .bearer_auth(&admin),
        None,
    )
    .await;
    assert_eq!((nowhere.status, nowhere.code()), (404, "route_not_found"));

    // Every read of an unknown school's data is a 404, lists included.
    let unknown = uuid::Uuid::new_v4();
    for list in ["cards", "readers", "scans", "users", "meals", "counters"] {
        let r = get(&hub, &admin, &format!("/api/v1/schools/{unknown}/{list}")).await;
        assert_eq!(
            (r.status, r.code()),
            (404, "not_found"),
            "{list}: {}",
            r.body
        );
    }

    // The operator's admin token (from `tiffin token`, naming no user) still has a `/me`.
    let me = expect(get(&hub, &admin, "/api/v1/me").await, 200);
    assert_eq!(
        (me["id"].as_str(), me["role"].as_str()),
        (Some("operator"), Some("admin")),
        "{me}"
    );

    // Phone numbers: E.164 whatever the writing; without `+`, the school's region reads them;
    // a number no one can dial is refused, naming the field.
    let users = format!("/api/v1/schools/{}/users", a.school);
    for (written, stored) in [
        ("(201) 555-0142", "+12015550142"),
        ("+44 20 7946 0958", "+442079460958"),
    ] {
        let made = expect(
            post(
                &hub,
                &admin,
                &users,
                json!({"role": "guardian", "display_name": "Phoned", "phone": written}),
            )
            .await,
            201,
        );
        assert_eq!(made["phone"], stored, "{written}");
    }
    for refused in [
        "555-0100",
        "5550100",
        "+1 555 0100",
        "+999 1234567",
        "call me",
    ] {
        let e = expect(
            post(
                &hub,
                &admin,
                &users,
                json!({"role": "guardian", "display_name": "Phoned", "phone": refused}),
            )
            .await,
            422,
        );
        assert_eq!(
            (e["error"]["code"].as_str(), e["error"]["field"].as_str()),
            (Some("validation_failed"), Some("phone")),
            "{refused}: {e}"
        );
    }
    let school = format!("/api/v1/schools/{}", a.school);
    let e = expect(
        patch(&hub, &admin, &school, json!({"phone_region": "XX"})).await,
        422,
    );
    assert_eq!(e["error"]["field"], "phone_region", "{e}");
    assert_eq!(
        expect(
            patch(&hub, &admin, &school, json!({"phone_region": "gb"})).await,
            200
        )["phone_region"],
        "GB"
    );
    let made = expect(
        post(
            &hub,
            &admin,
            &users,
            json!({"role": "guardian", "display_name": "Phoned", "phone": "020 7946 0959"}),
        )
        .await,
        201,
    );
    assert_eq!(made["phone"], "+442079460959");

    // A school admin manages the school's people but cannot take over another school admin.
    let users = format!("/api/v1/schools/{}/users", a.school);
    let mut admins = Vec::new();
    for n in 0..2 {
        let email = format!("head{n}@a.school.test");
        let created = expect(post(&hub, &admin, &users, json!({"role": "school_admin", "display_name": "Head", "email": email, "password": "head-pass-123"})).await, 201);
        admins.push((
            created["id"].as_str().unwrap().to_owned(),
            login(&hub, &email, "head-pass-123").await["access_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        ));
    }
    let takeover = patch(
        &hub,
        &admins[0].1,
        &format!("{users}/{}", admins[1].0),
        json!({"password": "mine-now-123"}),
    )
    .await;
    assert_eq!((takeover.status, takeover.code()), (403, "forbidden"));
    let r = post(
        &hub,
        &admins[0].1,
        &users,
        json!({"role": "school_admin", "display_name": "Third", "email": "head3@a.school.test"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    expect(
        patch(
            &hub,
            &admins[0].1,
            &format!("{users}/{}", a.guardian),
            json!({"locale": "es"}),
        )
        .await,
        200,
    );

    // An order for a school that does not exist is a 404 at once, every time: its kitchen
    // answers so instead of being restarted while the request waits.
    let nowhere = uuid::Uuid::new_v4();
    for attempt in 0..3 {
        let started = std::time::Instant::now();
        let r = post(
            &hub,
            &admin,
            &format!("/api/v1/schools/{nowhere}/orders"),
            json!({"student_id": a.student, "items": [{"meal_id": a.meals[0], "quantity": 1}]}),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (404, "not_found"),
            "{attempt}: {}",
            r.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{attempt}: {:?}",
            started.elapsed()
        );
    }

    // A token naming no real person cannot place orders (and gets a 403, not a 500).
    let nobody = uuid::Uuid::new_v4().to_string();
    let operator = hub.cli(&[
        "token",
        "--role",
        "school_admin",
        "--school",
        &a.school,
        "--user",
        &nobody,
    ]);
    let r = post(
        &hub,
        &operator,
        &format!("/api/v1/schools/{}/orders", a.school),
        json!({"student_id": a.student, "items": [{"meal_id": a.meals[0], "quantity": 1}]}),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.body);

    // Oversize transition bodies and plain GETs on the socket endpoint get codes too.
    let big = format!("{{\"reason\": \"{}\"}}", "x".repeat(100_000));
    let res = client()
        .post(hub.url(&format!("/api/v1/orders/{order}/confirm")))
        .bearer_auth(&a.kitchen_token)
        .insert_header(("Content-Type", "application/json"))
        .send_body(big)
        .await
        .unwrap();
    assert_eq!(status_code(res).await, (413, "body_too_large".into()));
    let r = get(
        &hub,
        &a.kitchen_token,
        &format!("/api/v1/ws?access_token={}", a.kitchen_token),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "websocket_upgrade_required"));

    // Refresh tokens rotate; replaying a used one revokes the whole family.
    let first = login(&hub, &a.guardian_email, "guardian-pass-1").await;
    let r1 = first["refresh_token"].as_str().unwrap();
    let second = expect(
        send(
            client().post(hub.url("/api/v1/auth/refresh")),
            Some(json!({"refresh_token": r1})),
        )
        .await,
        200,
    );
    let r2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(r1, r2);
    let replay = send(
        client().post(hub.url("/api/v1/auth/refresh")),
        Some(json!({"refresh_token": r1})),
    )
    .await;
    assert_eq!(
        (replay.status, replay.code()),
        (401, "refresh_token_invalid")
    );
    let after = send(
        client().post(hub.url("/api/v1/auth/refresh")),
        Some(json!({"refresh_token": r2})),
    )
    .await;
    assert_eq!(
        (after.status, after.code()),
        (401, "refresh_token_invalid"),
        "family revoked"
    );
    let wrong = send(
        client().post(hub.url("/api/v1/auth/login")),
        Some(json!({"login": a.guardian_email, "password": "nope-nope"})),
    )
    .await;
    assert_eq!((wrong.status, wrong.code()), (401, "invalid_credentials"));

    // A socket may not subscribe to another school's kitchen, nor may a student.
    let (_, mut socket) = client()
        .ws(hub.ws_url(&a.kitchen_token))
        .connect()
        .await
        .unwrap();
    socket
        .send(ws::Message::Text(
            json!({"type": "subscribe", "topic": format!("kitchen:{}", b.school)})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let refused = next_json(&mut socket).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("wrong_school"))
    );
    let (_, mut socket) = client()
        .ws(hub.ws_url(&a.student_token))
        .connect()
        .await
        .unwrap();
    socket
        .send(ws::Message::Text(
            json!({"type": "subscribe", "topic": format!("kitchen:{}", a.school)})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await["code"], "forbidden");
    let denied = client().ws(hub.ws_url("garbage")).connect().await;
    assert!(
        denied.is_err(),
        "an unauthenticated socket is refused before the upgrade"
    );

    // Every response carries a request id (the caller's, when sane) that the log shows too.
    let res = client()
        .get(hub.url("/readyz"))
        .insert_header(("X-Request-Id", "trace-me-123"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers().get("x-request-id").unwrap(), "trace-me-123");
    let res = client()
        .get(hub.url("/readyz"))
        .insert_header(("X-Request-Id", "not a valid id!"))
        .send()
        .await
        .unwrap();
    let fresh = res
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(fresh.len(), 32, "{fresh}");
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;

    // Secrets stay out of the log, even at debug level: the signing key, passwords, and
    // access tokens (which WebSocket clients send in the query string).
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("/api/v1/ws"), "the log records requests");
    assert!(
        logged.contains("request_id=trace-me-123"),
        "the access log shows request ids"
    );
    for secret in [
        JWT_SECRET,
        "guardian-pass-1",
        "kitchen-pass-1",
        a.kitchen_token.as_str(),
        a.student_token.as_str(),
    ] {
        assert!(
            !logged.contains(secret),
            "the log shows a secret: {}",
            &secret[..8]
        );
    }

    // Every served route is in the OpenAPI document.
    let doc = expect(
        send(client().get(hub.url("/api/v1/openapi.json")), None).await,
        200,
    );
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/schools",
        "/api/v1/schools/{school_id}/orders",
        "/api/v1/orders/{order_id}/ready",
        "/api/v1/schools/{school_id}/orders/live",
        "/api/v1/ws",
        "/api/v1/openapi.json",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(paths.len() >= 28, "{} paths", paths.len());
}

/// `tiffin migrate` and `tiffin demo` work on their own, and every subcommand has `--help`.
#[actix_web::test]
async fn command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiffin"))
            .args(args)
            .current_dir(dir.path())
            .env("TIFFIN_DATABASE_URL", "sqlite://cli.db")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for sub in ["serve", "migrate", "demo", "password", "token"] {
        let (ok, out, _) = run(&[sub, "--help"]);
        assert!(ok && out.contains("Usage: tiffin"), "{sub} --help: {out}");
    }
    let (ok, out, err) = run(&["migrate"]);
    assert!(ok, "{err}");
    assert!(out.contains("migrations applied"));
    assert!(dir.path().join("cli.db").exists());
    let (ok, out, err) = run(&["demo"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Demo school: ") && out.contains("kitchen@demo.tiffin.test"),
        "{out}"
    );
    // The demo's passwords are random, printed once: none is written in the code or README.
    let password_of = |out: &str, login: &str| {
        out.lines()
            .find_map(|l| l.split_once(&format!("{login} / ")))
            .map(|(_, password)| password.trim().to_owned())
            .unwrap_or_else(|| panic!("no password printed for {login}: {out}"))
    };
    let first = password_of(&out, "kitchen@demo.tiffin.test");
    assert!(first.len() >= 16, "{first}");
    assert_ne!(first, password_of(&out, "admin@demo.tiffin.test"));
    let (ok, again, _) = run(&["demo"]);
    assert!(ok && !again.contains(&first), "printed once: {again}");
    let (ok, reset, err) = run(&["password", "kitchen@demo.tiffin.test"]);
    assert!(ok, "{err}");
    assert!(reset.trim().len() >= 16 && reset.trim() != first, "{reset}");
    let (ok, _, err) = run(&["password", "nobody@demo.tiffin.test"]);
    assert!(!ok && err.contains("no one signs in as"), "{err}");

    let (ok, _, err) = run(&["token", "--role", "student"]);
    assert!(!ok && err.contains("--school is required"), "{err}");
    let (ok, _, err) = run(&["token", "--role", "chef", "--school", "x"]);
    assert!(!ok && err.contains("unknown role"), "{err}");
    let school = uuid::Uuid::new_v4().to_string();
    for (args, refusal) in [
        (
            vec!["--role", "admin", "--ttl", "999999999"],
            "--ttl must be",
        ),
        (vec!["--role", "admin", "--ttl", "0"], "--ttl must be"),
        (
            vec!["--role", "student", "--school", "x", "--user", &school],
            "--school must be a UUID",
        ),
        (
            vec!["--role", "student", "--school", &school, "--user", "bob"],
            "--user must be a UUID",
        ),
        (
            vec!["--role", "student", "--school", &school],
            "--user is required",
        ),
    ] {
        let (ok, _, err) = run(&[&["token"][..], &args].concat());
        assert!(!ok && err.contains(refusal), "{args:?}: {err}");
    }
    let (ok, _, err) = run(&["token", "--role", "admin", "--ttl", "86400"]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&["serve", "--config", "missing.toml"]);
    assert!(!ok && err.contains("does not exist"), "{err}");
}

/// Both migration folders hold the same versions, and each runs up, down and up again.
#[actix_web::test]
async fn migrations_run_up_down_up_on_both_backends() {
    // One copy of the migrations serves both backends.
    let mut names: Vec<String> =
        std::fs::read_dir(format!("{}/migrations", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    names.sort();
    assert!(!names.is_empty());
    // diesel's version of `2026-11-23-000001_people` is `20261123000001`.
    let versions: Vec<String> = names
        .iter()
        .map(|n| n.split('_').next().unwrap().replace('-', ""))
        .collect();

    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let url = tiffin::db::DatabaseUrl::parse(&db.url).unwrap();
        let (up, down, again) = tiffin::db::run_on_thread(move || {
            let mut conn = tiffin::db::MigrationConnection::establish(&url)?;
            let up = conn.run_pending()?;
            let down = conn.revert_all()?;
            let again = conn.run_pending()?;
            Ok((up, down, again))
        })
        .await
        .unwrap();
        assert_eq!(up, versions, "{backend:?}");
        assert_eq!(down.len(), up.len(), "{backend:?}");
        assert_eq!(again, up, "{backend:?}");
        db.drop_database().await;
    }
}

/// Nodes started together on an empty PostgreSQL database (an orchestrator starting replicas):
/// one migrates under the lock, the others wait and go on; all three serve.
#[actix_web::test]
async fn three_nodes_started_together_migrate_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let env = hub_env(&db, None);
    let hubs: Vec<Hub> = std::thread::scope(|scope| {
        let started: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| Hub::start(env.clone())))
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let admin = hubs[0].admin_token();
    for (n, hub) in hubs.iter().enumerate() {
        assert_eq!(
            client()
                .get(hub.url("/readyz"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "node {n}"
        );
        let school = post(
            hub,
            &admin,
            "/api/v1/schools",
            json!({"name": format!("Node {n}"), "time_zone": "UTC"}),
        )
        .await;
        expect(school, 201);
    }
    drop(hubs);
    db.drop_database().await;
}

/// Polls the delivery status of an order's notifications until `done` holds for them.
async fn statuses_until(
    hub: &Hub,
    token: &str,
    order: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let rows = expect(
            get(hub, token, &format!("/api/v1/orders/{order}/notifications")).await,
            200,
        );
        let rows = rows.as_array().unwrap().clone();
        if done(&rows) {
            return rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivery status never settled: {rows:#?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

fn row<'a>(rows: &'a [Value], recipient: &str, kind: &str, channel: &str) -> &'a Value {
    rows.iter()
        .find(|r| {
            r["recipient_id"] == recipient && r["template"] == kind && r["channel"] == channel
        })
        .unwrap_or_else(|| panic!("no {kind} {channel} row for {recipient}: {rows:#?}"))
}

/// Registers a push device for the token's user.
async fn add_device(hub: &Hub, token: &str, platform: &str, device: &str) {
    expect(
        post(
            hub,
            token,
            "/api/v1/me/devices",
            json!({"platform": platform, "token": device}),
        )
        .await,
        201,
    );
}

/// The one-time code in a message's text.
fn six_digit_code(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap_or_else(|| panic!("no 6-digit code in {text:?}"))
        .to_owned()
}

async fn token_of(hub: &Hub, login_name: &str, password: &str) -> String {
    login(hub, login_name, password).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

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

async fn register_reader(
    hub: &Hub,
    admin: &str,
    school: &str,
    name: &str,
    counter: &str,
) -> ReaderKey {
    let made = expect(
        post(
            hub,
            admin,
            &format!("/api/v1/schools/{school}/readers"),
            json!({"name": name, "counter_id": counter}),
        )
        .await,
        201,
    );
    ReaderKey {
        id: made["id"].as_str().unwrap().to_owned(),
        secret: made["secret"].as_str().unwrap().to_owned(),
    }
}

async fn scan_card(hub: &Hub, reader: &ReaderKey, seq: i64, uid: &str) -> Value {
    expect(
        reader_post(
            hub,
            reader,
            "/api/v1/reader/scans",
            &json!({"seq": seq, "card_uid": uid}),
        )
        .await,
        200,
    )
}

async fn counter_ids(hub: &Hub, token: &str, school: &str) -> Vec<String> {
    expect(
        get(hub, token, &format!("/api/v1/schools/{school}/counters")).await,
        200,
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|c| c["id"].as_str().unwrap().to_owned())
    .collect()
}

async fn ready_order(hub: &Hub, f: &Fixture, key: &str) -> String {
    let id = expect(place_order(hub, f, key, 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(hub, f, &id, &["confirm", "start", "ready"]).await;
    id
}

async fn pickups_of(hub: &Hub, f: &Fixture, order: &str) -> usize {
    history_of(hub, &f.kitchen_token, order, "order.picked_up")
        .await
        .len()
}

/// Readers at the counters: signed requests (forged, expired, replayed and unsigned ones are
/// refused), every verdict, (reader, seq) replays, debounce, an offline batch sent out of
/// order, two readers racing for one meal, cards blocked, lost and replaced, the allergy hold,
/// heartbeats, and the audit of every scan.
#[actix_web::test]
async fn rfid_readers_verdicts_replays_and_races() {
    let db = TestDb::new(Backend::Sqlite).await;
    let smtp = SmtpSink::start();
    let mut env = hub_env(&db, Some(&smtp));
    env.push(("TIFFIN_RFID__DEBOUNCE_MS".into(), "1000".into()));
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "rfid").await;
    let counters = format!("/api/v1/schools/{}/counters", f.school);
    expect(
        post(
            &hub,
            &admin,
            &counters,
            json!({"number": 2, "is_open": true}),
        )
        .await,
        201,
    );
    let ids = counter_ids(&hub, &admin, &f.school).await;
    let (one, two) = (ids[0].clone(), ids[1].clone());
    let a = register_reader(&hub, &admin, &f.school, "Counter 1 reader", &one).await;
    let b = register_reader(&hub, &admin, &f.school, "Counter 2 reader", &two).await;
    let c = register_reader(&hub, &admin, &f.school, "Counter 1 spare", &one).await;
    let idle = register_reader(&hub, &admin, &f.school, "Never used", &two).await;
    let r = post(
        &hub,
        &f.kitchen_token,
        &format!("/api/v1/schools/{}/readers", f.school),
        json!({"name": "x", "counter_id": one}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "forbidden"),
        "staff do not register readers"
    );
    let cards = format!("/api/v1/schools/{}/cards", f.school);
    let card = expect(
        post(
            &hub,
            &admin,
            &cards,
            json!({"student_id": f.student, "card_uid": "04:a1:b2:c3"}),
        )
        .await,
        201,
    );
    assert_eq!(card["card_uid"], "04A1B2C3");
    let r = post(
        &hub,
        &admin,
        &cards,
        json!({"student_id": f.student, "card_uid": "04A1B2C3"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "duplicate"));
    let uid = "04-A1-B2-C3";

    // Authentication: unsigned, forged, expired, replayed; a user's token is not a reader's.
    let path = "/api/v1/reader/scans";
    let body = json!({"seq": 1000, "card_uid": "FF"}).to_string();
    let r = send(
        client().post(hub.url(path)).bearer_auth(&f.kitchen_token),
        Some(json!({"seq": 1, "card_uid": "FF"})),
    )
    .await;
    assert_eq!((r.status, r.code()), (401, "reader_unauthenticated"));
    let now = chrono::Utc::now().timestamp_millis();
    let forged = reader_signature("not the secret", now, path, body.as_bytes());
    let r = signed_send(&hub, &a.id, now, &forged, path, body.clone()).await;
    assert_eq!((r.status, r.code()), (401, "signature_invalid"));
    let r = reader_post_at(
        &hub,
        &a,
        path,
        &json!({"seq": 1001, "card_uid": "FF"}),
        -120,
    )
    .await;
    assert_eq!((r.status, r.code()), (401, "signature_expired"));
    let good = reader_signature(&a.secret, now, path, body.as_bytes());
    let first = signed_send(&hub, &a.id, now, &good, path, body.clone()).await;
    assert_eq!(
        (first.status, first.body["verdict"].as_str()),
        (200, Some("unknown_card"))
    );
    let r = signed_send(&hub, &a.id, now, &good, path, body.clone()).await;
    assert_eq!((r.status, r.code()), (401, "signature_replayed"));
    let tampered = body.replace("FF", "04A1B2C3");
    let r = signed_send(&hub, &a.id, now, &good, path, tampered).await;
    assert_eq!(
        (r.status, r.code()),
        (401, "signature_invalid"),
        "the body is signed"
    );
    let r = send(
        client().get(hub.url("/api/v1/me")).bearer_auth(&a.secret),
        None,
    )
    .await;
    assert_eq!(r.status, 401, "a reader's secret is not a user's token");

    // Nothing ordered; then an order not ready yet.
    let v = scan_card(&hub, &a, 1, uid).await;
    assert_eq!(
        (v["verdict"].as_str(), v["state"].as_str()),
        (Some("no_ready_order"), None),
        "{v}"
    );
    let order = expect(place_order(&hub, &f, "rfid-1", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    let v = scan_card(&hub, &a, 2, uid).await;
    assert_eq!(
        (v["verdict"].as_str(), v["state"].as_str()),
        (Some("no_ready_order"), Some("placed")),
        "{v}"
    );
    assert_eq!(v["order_id"], order.as_str());
    advance(&hub, &f, &order, &["confirm", "start", "ready"]).await;

    // Ready at counter 1: counter 2's reader sends the student there.
    let v = scan_card(&hub, &b, 1, uid).await;
    assert_eq!(v["verdict"], "wrong_counter", "{v}");
    assert_eq!(v["counter"]["name"], "Counter 1");

    // Counter 1 hands it over, once: a repeat read within the window and a retried sequence
    // number both get the first verdict.
    let mut dashboard = open_kitchen_socket(&hub, &f.kitchen_token, &f.school).await;
    // Past the debounce window of the "not ready" read on this reader.
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    let v = scan_card(&hub, &a, 3, uid).await;
    assert_eq!(
        (v["verdict"].as_str(), v["debounced"].as_bool()),
        (Some("accepted"), Some(false)),
        "{v}"
    );
    assert_eq!(v["order_id"], order.as_str());
    assert_eq!(v["student_name"], "Ada");
    let frame = next_json(&mut dashboard).await;
    assert_eq!(
        (frame["type"].as_str(), frame["data"]["order_id"].as_str()),
        (Some("order.picked_up"), Some(order.as_str()))
    );
    let again = scan_card(&hub, &a, 4, uid).await;
    assert_eq!(
        (again["verdict"].as_str(), again["debounced"].as_bool()),
        (Some("accepted"), Some(true)),
        "{again}"
    );
    let retried = scan_card(&hub, &a, 3, uid).await;
    assert_eq!(
        (retried["verdict"].as_str(), retried["replayed"].as_bool()),
        (Some("accepted"), Some(true))
    );
    assert_eq!(retried["scan_id"], v["scan_id"]);
    assert_eq!(pickups_of(&hub, &f, &order).await, 1);
    // The family is told, in-app (routine news: not by email unless chosen).
    statuses_until(
        &hub,
        &f.kitchen_token,
        &order,
        Duration::from_secs(20),
        |rows| {
            rows.iter().any(|r| {
                r["template"] == "order_picked_up"
                    && r["channel"] == "in_app"
                    && r["recipient_id"] == f.guardian.as_str()
                    && r["status"] == "sent"
            })
        },
    )
    .await;
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    let v = scan_card(&hub, &a, 5, uid).await;
    assert_eq!(v["verdict"], "already_picked_up", "{v}");

    // An offline batch, sent out of order, applies in sequence order: one hand-over, the
    // repeat reads within the window get its verdict.
    let order = ready_order(&hub, &f, "rfid-2").await;
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(20);
    let at = |ms: i64| (t0 + chrono::Duration::milliseconds(ms)).to_rfc3339();
    let batch = json!({"scans": [
        {"seq": 12, "card_uid": uid, "read_at": at(600)},
        {"seq": 10, "card_uid": uid, "read_at": at(0)},
        {"seq": 11, "card_uid": uid, "read_at": at(300)},
    ]});
    let answer = expect(
        reader_post(&hub, &a, "/api/v1/reader/scans/batch", &batch).await,
        200,
    );
    let results: Vec<(i64, &str, bool)> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["seq"].as_i64().unwrap(),
                r["verdict"].as_str().unwrap(),
                r["debounced"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            (10, "accepted", false),
            (11, "accepted", true),
            (12, "accepted", true)
        ]
    );
    assert_eq!(pickups_of(&hub, &f, &order).await, 1);

    // Two readers at counter 1 scan the same card at the same moment: one hand-over.
    let order = ready_order(&hub, &f, "rfid-3").await;
    let (x, y) =
        futures_util::future::join(scan_card(&hub, &a, 20, uid), scan_card(&hub, &c, 1, uid)).await;
    let mut verdicts = [
        x["verdict"].as_str().unwrap().to_owned(),
        y["verdict"].as_str().unwrap().to_owned(),
    ];
    verdicts.sort();
    assert_eq!(verdicts, ["accepted", "already_picked_up"], "{x} {y}");
    assert_eq!(pickups_of(&hub, &f, &order).await, 1);

    // Served despite an allergy: the scan holds it; staff hand it over with a reason.
    expect(
        patch(
            &hub,
            &admin,
            &format!("/api/v1/schools/{}/users/{}", f.school, f.student),
            json!({"allergies": ["celery"]}),
        )
        .await,
        200,
    );
    let held = expect(
        post(&hub, &f.kitchen_token, &format!("/api/v1/schools/{}/orders", f.school), json!({"student_id": f.student, "items": [{"meal_id": f.meals[0], "quantity": 1}], "allergy_override": "parent confirmed celery is fine"})).await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(&hub, &f, &held, &["confirm", "start", "ready"]).await;
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    let v = scan_card(&hub, &a, 30, uid).await;
    assert_eq!(
        (v["verdict"].as_str(), v["note"].as_str()),
        (
            Some("allergy_hold"),
            Some("allergy override for Tomato soup (celery): parent confirmed celery is fine")
        ),
        "{v}"
    );
    assert_eq!(pickups_of(&hub, &f, &held).await, 0);
    let hold = loop {
        let frame = next_json(&mut dashboard).await;
        if frame["type"] == "alert.allergy_hold" {
            break frame;
        }
    };
    assert_eq!(hold["data"]["order_id"], held.as_str());
    smtp.wait_for_containing(
        &f.guardian_email,
        "on hold for an allergy check",
        Duration::from_secs(20),
    )
    .await;
    let pickup = format!("/api/v1/orders/{held}/pickup");
    let r = post(&hub, &f.kitchen_token, &pickup, json!({})).await;
    assert_eq!((r.status, r.code()), (422, "allergy_ack_required"));
    expect(
        post(
            &hub,
            &f.kitchen_token,
            &pickup,
            json!({"reason": "checked: plain soup, no celery"}),
        )
        .await,
        200,
    );
    let ack = history_of(&hub, &f.kitchen_token, &held, "order.picked_up").await;
    assert_eq!(ack[0]["reason"], "checked: plain soup, no celery");
    assert!(
        ack[0]["actor_id"].is_string(),
        "who acknowledged it is recorded"
    );
    expect(
        patch(
            &hub,
            &admin,
            &format!("/api/v1/schools/{}/users/{}", f.school, f.student),
            json!({"allergies": []}),
        )
        .await,
        200,
    );

    // Cards: blocked, reported lost by a guardian (the kitchen and the family are alerted),
    // replaced; another school's card.
    let card_id = card["id"].as_str().unwrap();
    expect(
        post(
            &hub,
            &admin,
            &format!("/api/v1/cards/{card_id}/block"),
            json!({}),
        )
        .await,
        200,
    );
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        scan_card(&hub, &a, 40, uid).await["verdict"],
        "card_blocked"
    );
    expect(
        post(
            &hub,
            &admin,
            &format!("/api/v1/cards/{card_id}/unblock"),
            json!({}),
        )
        .await,
        200,
    );
    let guardian = login(&hub, &f.guardian_email, "guardian-pass-1").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = post(
        &hub,
        &f.student_token,
        &format!("/api/v1/cards/{card_id}/report-lost"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 403);
    let lost = expect(
        post(
            &hub,
            &guardian,
            &format!("/api/v1/cards/{card_id}/report-lost"),
            json!({}),
        )
        .await,
        200,
    );
    assert_eq!(lost["status"], "lost");
    let v = scan_card(&hub, &b, 41, uid).await;
    assert_eq!(v["verdict"], "card_lost", "{v}");
    let alert = loop {
        let frame = next_json(&mut dashboard).await;
        // The blocked card's alert came first.
        if frame["type"] == "alert.card_in_use" && frame["data"]["card"]["status"] == "lost" {
            break frame;
        }
    };
    assert_eq!(
        (
            alert["data"]["card"]["status"].as_str(),
            alert["data"]["reader_name"].as_str()
        ),
        (Some("lost"), Some("Counter 2 reader"))
    );
    let mail = smtp
        .wait_for_containing(
            &f.guardian_email,
            "lost lunch card was used",
            Duration::from_secs(20),
        )
        .await;
    assert!(
        mail.unfolded().contains("Counter 2 reader"),
        "{}",
        mail.data
    );
    let replaced = expect(
        post(
            &hub,
            &admin,
            &format!("/api/v1/cards/{card_id}/replace"),
            json!({"card_uid": "0A0B0C0D"}),
        )
        .await,
        201,
    );
    assert_eq!(replaced["status"], "active");
    let order = ready_order(&hub, &f, "rfid-4").await;
    assert_eq!(
        scan_card(&hub, &a, 42, "0A0B0C0D").await["verdict"],
        "accepted"
    );
    assert_eq!(pickups_of(&hub, &f, &order).await, 1);
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        scan_card(&hub, &a, 43, uid).await["verdict"],
        "card_blocked",
        "the old card is dead"
    );
    let other = fixture(&hub, &admin, "elsewhere").await;
    let there = counter_ids(&hub, &admin, &other.school).await;
    let foreign = register_reader(&hub, &admin, &other.school, "Elsewhere reader", &there[0]).await;
    assert_eq!(
        scan_card(&hub, &foreign, 1, "0A0B0C0D").await["verdict"],
        "wrong_school"
    );

    // Heartbeats and what the kitchen sees of its readers; every scan is on record.
    expect(
        reader_post(&hub, &b, "/api/v1/reader/heartbeat", &json!({})).await,
        200,
    );
    let summary = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/kitchen/summary", f.school),
        )
        .await,
        200,
    );
    let online: Vec<(String, bool)> = summary["readers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["online"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        online.contains(&("Counter 2 reader".into(), true)),
        "{online:?}"
    );
    assert!(online.contains(&("Never used".into(), false)), "{online:?}");
    let _ = idle;
    let scans = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/scans?limit=1000", f.school),
        )
        .await,
        200,
    );
    let scans = scans.as_array().unwrap();
    assert!(
        scans
            .iter()
            .all(|s| s["verdict"] != "pending" && s["took_us"].as_i64().is_some()),
        "{scans:#?}"
    );
    let from_a = scans
        .iter()
        .filter(|s| s["reader_id"] == a.id.as_str())
        .count();
    assert_eq!(from_a, 14, "one record per (reader, seq): {scans:#?}");

    // A rotated key: the old secret stops working at once.
    let rotated = expect(
        post(
            &hub,
            &admin,
            &format!("/api/v1/schools/{}/readers/{}/rotate-key", f.school, a.id),
            json!({}),
        )
        .await,
        200,
    );
    let r = reader_post(&hub, &a, "/api/v1/reader/heartbeat", &json!({})).await;
    assert_eq!((r.status, r.code()), (401, "signature_invalid"));
    let a2 = ReaderKey {
        id: a.id.clone(),
        secret: rotated["secret"].as_str().unwrap().to_owned(),
    };
    expect(
        reader_post(&hub, &a2, "/api/v1/reader/heartbeat", &json!({})).await,
        200,
    );
}

/// A student without a card: staff ask for a one-time code, which reaches the family; a wrong
/// code costs one of three attempts, the right one hands the meal over once, and a code is
/// locked after three misses and dead after its time.
#[actix_web::test]
async fn one_time_codes_hand_over_like_a_scan() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (fcm, sms) = (FakeFcm::start(), FakeSms::start());
    let mut env = hub_env(&db, None);
    env.extend(provider_env(&fcm, &sms, db.dir()));
    env.push(("TIFFIN_RFID__CODE_TTL_SECS".into(), "3".into()));
    // This test enters more codes in a minute than the default limit lets one person.
    env.push(("TIFFIN_LIMITS__CODES__BURST".into(), "50".into()));
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "codes").await;
    let guardian = token_of(&hub, &f.guardian_email, "guardian-pass-1").await;
    expect(
        put(
            &hub,
            &guardian,
            "/api/v1/me/preferences",
            json!({"preferences": [{"kind": "pickup_code", "channel": "sms", "enabled": true}]}),
        )
        .await,
        200,
    );
    let counter = counter_ids(&hub, &admin, &f.school).await[0].clone();
    let codes = format!("/api/v1/schools/{}/pickup-codes", f.school);
    let ask = json!({"student_id": f.student, "counter_id": counter});
    let r = post(&hub, &f.kitchen_token, &codes, ask.clone()).await;
    assert_eq!((r.status, r.code()), (409, "no_ready_order"));
    let order = ready_order(&hub, &f, "code-1").await;
    let r = post(&hub, &f.student_token, &codes, ask.clone()).await;
    assert_eq!(r.status, 403, "staff ask, not students");
    let issued = expect(post(&hub, &f.kitchen_token, &codes, ask.clone()).await, 201);
    assert!(
        issued.get("code").is_none(),
        "staff never see the code: {issued}"
    );
    assert_eq!(issued["attempts_left"], 3);
    let text = sms
        .wait_for(&f.guardian_phone, "pickup code", Duration::from_secs(20))
        .await;
    let code = six_digit_code(&text);
    let verify = format!(
        "/api/v1/pickup-codes/{}/verify",
        issued["id"].as_str().unwrap()
    );
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let r = post(&hub, &f.kitchen_token, &verify, json!({"code": wrong})).await;
    assert_eq!((r.status, r.code()), (422, "code_invalid"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 attempts left"),
        "{:?}",
        r.body
    );
    assert_eq!(pickups_of(&hub, &f, &order).await, 0);
    let v = expect(
        post(&hub, &f.kitchen_token, &verify, json!({"code": code})).await,
        200,
    );
    assert_eq!(
        (v["verdict"].as_str(), v["order_id"].as_str()),
        (Some("accepted"), Some(order.as_str())),
        "{v}"
    );
    let r = post(&hub, &f.kitchen_token, &verify, json!({"code": code})).await;
    assert_eq!((r.status, r.code()), (409, "code_used"));
    assert_eq!(pickups_of(&hub, &f, &order).await, 1);
    let how = history_of(&hub, &f.kitchen_token, &order, "order.picked_up").await;
    assert!(
        how[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("one-time code"),
        "{how:?}"
    );

    // Three misses lock it, even for the right code after.
    let order = ready_order(&hub, &f, "code-2").await;
    let issued = expect(post(&hub, &f.kitchen_token, &codes, ask.clone()).await, 201);
    let verify = format!(
        "/api/v1/pickup-codes/{}/verify",
        issued["id"].as_str().unwrap()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let second = loop {
        let texts: Vec<String> = sms
            .to(&f.guardian_phone)
            .into_iter()
            .filter(|t| t.contains("pickup code"))
            .collect();
        if texts.len() == 2 {
            break texts[1].clone();
        }
        assert!(std::time::Instant::now() < deadline, "{texts:?}");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    let code = six_digit_code(&second);
    let mut last = None;
    for _ in 0..3 {
        let r = post(&hub, &f.kitchen_token, &verify, json!({"code": "x99999"})).await;
        last = Some((r.status, r.code().to_owned()));
    }
    assert_eq!(last, Some((409, "code_locked".to_owned())));
    let r = post(&hub, &f.kitchen_token, &verify, json!({"code": code})).await;
    assert_eq!((r.status, r.code()), (409, "code_locked"));
    assert_eq!(pickups_of(&hub, &f, &order).await, 0);

    // A code left unused past its time is dead.
    let issued = expect(post(&hub, &f.kitchen_token, &codes, ask).await, 201);
    let verify = format!(
        "/api/v1/pickup-codes/{}/verify",
        issued["id"].as_str().unwrap()
    );
    actix_web::rt::time::sleep(Duration::from_millis(3200)).await;
    let r = post(&hub, &f.kitchen_token, &verify, json!({"code": "123456"})).await;
    assert_eq!((r.status, r.code()), (409, "code_expired"));
    assert_eq!(pickups_of(&hub, &f, &order).await, 0);
}

/// Token buckets answer `429 rate_limited` with `Retry-After`: per login name on sign-in (the
/// right password included, once the bucket is empty), per user, per client address; other
/// keys are not affected, and refusals are counted.
#[actix_web::test]
async fn rate_limits_answer_429_with_retry_after() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut env = hub_env(&db, None);
    for (k, v) in [
        ("TIFFIN_LIMITS__SIGN_IN__PER_MINUTE", "1"),
        ("TIFFIN_LIMITS__SIGN_IN__BURST", "3"),
        ("TIFFIN_LIMITS__PER_USER__PER_MINUTE", "60"),
        ("TIFFIN_LIMITS__PER_USER__BURST", "20"),
        ("TIFFIN_LIMITS__PER_IP__PER_MINUTE", "60"),
        ("TIFFIN_LIMITS__PER_IP__BURST", "200"),
    ] {
        env.push((k.into(), v.into()));
    }
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "limits").await;
    let login_as = |password: &'static str| {
        send(
            client().post(hub.url("/api/v1/auth/login")),
            Some(json!({"login": f.guardian_email, "password": password})),
        )
    };
    for _ in 0..3 {
        assert_eq!(
            login_as("wrong-password").await.code(),
            "invalid_credentials"
        );
    }
    let r = login_as("guardian-pass-1").await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{:?}", r.body);
    let other = send(
        client().post(hub.url("/api/v1/auth/login")),
        Some(json!({"login": "kim.limits@school.test", "password": "kitchen-pass-1"})),
    )
    .await;
    assert_eq!(other.status, 200, "another login name has its own bucket");

    let mut refused = None;
    for _ in 0..25 {
        let mut res = client()
            .get(hub.url("/api/v1/me"))
            .bearer_auth(&f.student_token)
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            let wait: u64 = res
                .headers()
                .get("retry-after")
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
            refused = Some((wait, body["error"]["code"].as_str().unwrap().to_owned()));
            break;
        }
    }
    let (wait, code) = refused.expect("the user's bucket never ran dry");
    assert_eq!(code, "rate_limited");
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        get(&hub, &f.kitchen_token, "/api/v1/me").await.status,
        200,
        "other users are not slowed"
    );

    let mut statuses = Vec::new();
    for _ in 0..250 {
        let res = client()
            .get(hub.url("/api/v1/nothing-here"))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert!(res.headers().contains_key("retry-after"));
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&429),
        "the address's bucket never ran dry"
    );
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 404));
    assert_eq!(
        client()
            .get(hub.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "probes are not API calls"
    );
    for limit in ["sign_in", "user", "ip"] {
        let counted = metric(&hub, &format!("rate_limited_total{{limit=\"{limit}\"}}")).await;
        assert!(counted >= 1.0, "{limit}: {counted}");
    }
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

/// Bad input on the wire gets a clear answer, never a 500, a panic or a hung connection:
/// invalid UTF-8, huge numbers and random bytes as JSON bodies; binary, malformed and
/// oversized WebSocket frames; and raw garbage after a WebSocket upgrade.
#[actix_web::test]
async fn garbage_on_the_wire_gets_clear_errors_not_hangs() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new(Backend::Sqlite).await;
    let mut env = hub_env(&db, None);
    // Random bytes may read as the start of a long frame: the idle timeout bounds the wait.
    env.push(("TIFFIN_WS_IDLE_TIMEOUT_SECS".into(), "15".into()));
    env.push(("TIFFIN_HTTP_HEADER_TIMEOUT_SECS".into(), "2".into()));
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "garbage").await;
    let orders = hub.url(&format!("/api/v1/schools/{}/orders", f.school));
    let raw = |body: Vec<u8>| {
        let orders = orders.clone();
        let token = f.student_token.clone();
        async move {
            let mut res = client()
                .post(orders)
                .bearer_auth(token)
                .insert_header(("Content-Type", "application/json"))
                .send_body(body)
                .await
                .unwrap();
            let body: Value =
                serde_json::from_slice(&res.body().await.unwrap()).unwrap_or_default();
            (
                res.status().as_u16(),
                body["error"]["code"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    let mut utf8 = br#"{"items": [{"meal_id": ""#.to_vec();
    utf8.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    utf8.extend_from_slice(br#"", "quantity": 1}]}"#);
    assert_eq!(raw(utf8).await, (400, "malformed_json".to_owned()));
    let huge = format!(
        r#"{{"items": [{{"meal_id": "{}", "quantity": 184467440737095516160}}]}}"#,
        f.meals[0]
    );
    assert_eq!(
        raw(huge.into_bytes()).await,
        (422, "invalid_body".to_owned())
    );
    let noise: Vec<u8> = (0..512).map(|_| rand::random::<u8>()).collect();
    let (status, code) = raw(noise).await;
    assert!(status == 400 && code == "malformed_json", "{status} {code}");

    // WebSocket frames: errors for what can be answered, a close for what cannot.
    let (_, mut socket) = client()
        .ws(hub.ws_url(&f.kitchen_token))
        .connect()
        .await
        .unwrap();
    socket
        .send(ws::Message::Binary(vec![0, 1, 2, 3].into()))
        .await
        .unwrap();
    let e = next_json(&mut socket).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("invalid_body")),
        "{e}"
    );
    socket
        .send(ws::Message::Text(
            "{\"type\": \"subscribe\", \"topic\"".into(),
        ))
        .await
        .unwrap();
    let e = next_json(&mut socket).await;
    assert_eq!(e["code"], "invalid_body", "{e}");
    socket
        .send(ws::Message::Text(r#"{"type": "ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut socket).await["type"],
        "pong",
        "still serving after bad frames"
    );
    let big = format!(r#"{{"type": "ping", "pad": "{}"}}"#, "x".repeat(64 * 1024));
    socket.send(ws::Message::Text(big.into())).await.unwrap();
    let closed = actix_web::rt::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(frame)) = socket.next().await {
            if let ws::Frame::Close(reason) = frame {
                return reason;
            }
        }
        None
    })
    .await
    .expect("an oversized frame must not hang the socket");
    assert_eq!(closed.map(|r| r.code), Some(awc::ws::CloseCode::Protocol));

    // Raw bytes after a valid upgrade: the hub drops the connection.
    let addr = hub.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let upgrade = format!(
        "GET /api/v1/ws?access_token={} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        f.kitchen_token
    );
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let garbage: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
    tcp.write_all(&garbage).await.unwrap();
    let ended = actix_web::rt::time::timeout(Duration::from_secs(25), async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the garbage connection was left hanging");

    // A client that trickles its request head is cut off after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let cut = actix_web::rt::time::timeout(Duration::from_secs(10), async {
        let mut answer = Vec::new();
        let _ = slow.read_to_end(&mut answer).await;
        answer
    })
    .await
    .expect("a half-sent request head held the connection open");
    assert!(
        cut.is_empty() || String::from_utf8_lossy(&cut).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&cut)
    );
    assert_eq!(
        client()
            .get(hub.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Text is checked once at the edge: a control character in any string is `422 invalid_text`
/// naming the field, on both backends (PostgreSQL cannot store NUL), and nothing is written;
/// a type error names the field path. Tabs and line breaks are text.
async fn text_and_types_are_checked_at_the_edge(backend: Backend) {
    let db = TestDb::new(backend).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "text").await;
    let refusal = |r: Reply| {
        (
            r.status,
            r.code().to_owned(),
            r.body["error"]["field"].as_str().unwrap_or("").to_owned(),
        )
    };
    let invalid_text = |field: &str| (422, "invalid_text".to_owned(), field.to_owned());

    let login = send(
        client().post(hub.url("/api/v1/auth/login")),
        Some(json!({"login": "nul\u{0}@x.test", "password": "whatever-1"})),
    )
    .await;
    assert_eq!(refusal(login), invalid_text("login"));
    let meals = format!("/api/v1/schools/{}/meals", f.school);
    let meal = post(
        &hub,
        &admin,
        &meals,
        json!({"name": "Soup\u{0}", "price_cents": 100}),
    )
    .await;
    assert_eq!(refusal(meal), invalid_text("name"));
    let users = format!("/api/v1/schools/{}/users", f.school);
    let user = json!({"role": "student", "display_name": "Ada\u{1b}[31m", "allergies": ["nuts"]});
    assert_eq!(
        refusal(post(&hub, &admin, &users, user).await),
        invalid_text("display_name")
    );
    let user = json!({"role": "student", "display_name": "Ada", "allergies": ["ok", "nu\u{7f}ts"]});
    assert_eq!(
        refusal(post(&hub, &admin, &users, user).await),
        invalid_text("allergies[1]")
    );
    let order = expect(place_order(&hub, &f, "text-1", 1).await, 201);
    let cancel = format!("/api/v1/orders/{}/cancel", order["id"].as_str().unwrap());
    let reason = post(
        &hub,
        &f.kitchen_token,
        &cancel,
        json!({"reason": "gone\u{0}"}),
    )
    .await;
    assert_eq!(refusal(reason), invalid_text("reason"));

    let orders = format!("/api/v1/schools/{}/orders", f.school);
    let typed = post(
        &hub,
        &f.student_token,
        &orders,
        json!({"items": [{"meal_id": f.meals[0], "quantity": "two"}]}),
    )
    .await;
    let message = typed.body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert_eq!(
        refusal(typed),
        (
            422,
            "invalid_body".to_owned(),
            "items[0].quantity".to_owned()
        )
    );
    assert!(
        message.starts_with("items[0].quantity: invalid type"),
        "{message}"
    );
    assert!(
        !message.contains("line"),
        "no position, the path says where: {message}"
    );

    // Nothing of the refusals was written; the order is still open.
    assert_eq!(
        expect(get(&hub, &admin, &meals).await, 200)
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let people = expect(get(&hub, &admin, &users).await, 200);
    assert_eq!(
        people.as_array().unwrap().len(),
        3,
        "the fixture's three: {people}"
    );
    let reason = post(
        &hub,
        &f.kitchen_token,
        &cancel,
        json!({"reason": "sold out\n\tsorry"}),
    )
    .await;
    assert_eq!(expect(reason, 200)["state"], "cancelled");
}

#[actix_web::test]
async fn text_and_types_are_checked_at_the_edge_on_sqlite() {
    text_and_types_are_checked_at_the_edge(Backend::Sqlite).await;
}

#[actix_web::test]
async fn text_and_types_are_checked_at_the_edge_on_postgres() {
    text_and_types_are_checked_at_the_edge(Backend::Postgres).await;
}

/// The database cuts the hub's connections while requests are in flight (as a failover or a
/// server restart does): every answer is the request's own or `503 database_unavailable` with
/// `Retry-After`, never a 500, and every order acknowledged is there afterwards.
#[actix_web::test]
async fn connections_cut_mid_request_are_503s_not_500s() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut env = hub_env(&db, None);
    // As many requests as the database allows: no rate limit answers in its place.
    for limit in ["PER_IP", "PER_USER"] {
        env.push((format!("TIFFIN_LIMITS__{limit}__PER_MINUTE"), "0".into()));
    }
    let hub = Hub::start(env);
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "cut").await;
    let until = std::time::Instant::now() + Duration::from_secs(4);
    let cutter = async {
        while std::time::Instant::now() < until {
            db.terminate_connections().await;
            actix_web::rt::time::sleep(Duration::from_millis(150)).await;
        }
    };
    let worker = |w: usize| {
        let (hub, f) = (&hub, &f);
        async move {
            let mut answers = Vec::new();
            let mut n = 0;
            while std::time::Instant::now() < until {
                n += 1;
                let reply = place_order(hub, f, &format!("cut-{w}-{n}"), 1).await;
                answers.push(reply);
                let live = format!("/api/v1/schools/{}/orders/live", f.school);
                answers.push(get(hub, &f.kitchen_token, &live).await);
            }
            answers
        }
    };
    let (_, answers) =
        futures_util::future::join(cutter, futures_util::future::join_all((0..6).map(worker)))
            .await;
    let answers: Vec<Reply> = answers.into_iter().flatten().collect();
    let mut unavailable = 0;
    for r in &answers {
        if r.status == 503 {
            assert_eq!(r.code(), "database_unavailable", "{}", r.body);
            assert!(
                r.retry_after.is_some(),
                "503 without Retry-After: {}",
                r.body
            );
            unavailable += 1;
        } else {
            assert!(matches!(r.status, 200 | 201), "{} {}", r.status, r.body);
        }
    }
    assert!(
        unavailable > 0,
        "no request met a cut connection in {} answers",
        answers.len()
    );
    for r in answers.iter().filter(|r| r.status == 201) {
        let id = r.body["id"].as_str().unwrap();
        let path = format!("/api/v1/orders/{id}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut reply = get(&hub, &f.kitchen_token, &path).await;
        while reply.status == 503 && std::time::Instant::now() < deadline {
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            reply = get(&hub, &f.kitchen_token, &path).await;
        }
        assert_eq!(expect(reply, 200)["order"]["id"], id);
    }
    db.drop_database().await;
}

/// With `metrics_token` set, `/metrics` answers only a request that carries it.
#[actix_web::test]
async fn metrics_can_require_a_token() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut env = hub_env(&db, None);
    env.push(("TIFFIN_METRICS_TOKEN".into(), "scrape-me-please".into()));
    let hub = Hub::start(env);
    for (token, status) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some("scrape-me-please"), 200),
    ] {
        let mut req = client().get(hub.url("/metrics"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let mut res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{token:?}");
        let body = String::from_utf8_lossy(&res.body().await.unwrap()).into_owned();
        assert_eq!(
            body.contains("http_requests_total"),
            status == 200,
            "{body}"
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

/// The security matrix. Every operation in the OpenAPI document refuses a request with no
/// token, a tampered or expired token, or a reader's secret as a token (401); reader
/// operations refuse a user's token. Another school's staff, another student, another
/// student's guardian and lower roles are refused on every read of a school's data and on
/// every topic.
#[actix_web::test]
async fn security_matrix() {
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let a = fixture(&hub, &admin, "seca").await;
    let b = fixture(&hub, &admin, "other").await;
    let order = expect(place_order(&hub, &a, "sec-1", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let counter = counter_ids(&hub, &admin, &a.school).await[0].clone();
    let reader = register_reader(&hub, &admin, &a.school, "Sec reader", &counter).await;
    let card = expect(
        post(
            &hub,
            &admin,
            &format!("/api/v1/schools/{}/cards", a.school),
            json!({"student_id": a.student, "card_uid": "5EC5EC"}),
        )
        .await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tampered = a.kitchen_token.clone();
    tampered.pop();
    tampered.push(if a.kitchen_token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    let expired = hub.cli(&["token", "--role", "admin", "--ttl", "-120"]);

    // Every operation of the document, with ids of school A filled in.
    let doc = expect(
        send(client().get(hub.url("/api/v1/openapi.json")), None).await,
        200,
    );
    let fill = |path: &str| {
        let mut out = path.to_owned();
        for (param, value) in [
            ("{school_id}", a.school.as_str()),
            ("{order_id}", order.as_str()),
            ("{counter_id}", counter.as_str()),
            ("{reader_id}", reader.id.as_str()),
            ("{card_id}", card.as_str()),
            ("{user_id}", a.student.as_str()),
            ("{student_id}", a.student.as_str()),
            ("{guardian_id}", a.guardian.as_str()),
            ("{meal_id}", a.meals[0].as_str()),
        ] {
            out = out.replace(param, value);
        }
        // Ids nobody in this test owns.
        while let (Some(start), Some(end)) = (out.find('{'), out.find('}')) {
            out.replace_range(start..=end, &uuid::Uuid::new_v4().to_string());
        }
        out
    };
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let public = [
            "/api/v1/auth/login",
            "/api/v1/auth/refresh",
            "/api/v1/auth/logout",
            "/api/v1/openapi.json",
        ]
        .contains(&path.as_str());
        let reader_op = path.starts_with("/api/v1/reader/");
        for method in item.as_object().unwrap().keys() {
            let url = hub.url(&fill(path));
            let request = |token: Option<&str>| {
                let mut req = match method.as_str() {
                    "get" => client().get(url.clone()),
                    "post" => client().post(url.clone()),
                    "put" => client().put(url.clone()),
                    "patch" => client().patch(url.clone()),
                    "delete" => client().delete(url.clone()),
                    other => panic!("method {other}"),
                };
                if let Some(token) = token {
                    req = req.bearer_auth(token);
                }
                let body = (method != "get" && method != "delete").then(|| json!({}));
                send(req, body)
            };
            // Pages, probes and metrics are not the API.
            if public || !path.starts_with("/api/v1/") {
                continue;
            }
            if reader_op {
                let r = request(Some(&a.kitchen_token)).await;
                assert_eq!(
                    (r.status, r.code()),
                    (401, "reader_unauthenticated"),
                    "{method} {path}: a user's token"
                );
                checked += 1;
                continue;
            }
            for (who, token) in [
                ("no token", None),
                ("tampered", Some(tampered.as_str())),
                ("expired", Some(expired.as_str())),
                ("a reader's secret", Some(reader.secret.as_str())),
            ] {
                let r = request(token).await;
                assert_eq!(r.status, 401, "{method} {path} with {who}: {:?}", r.body);
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} operations in the document?");

    // Reads of school A's data by people who have no business there.
    let school = format!("/api/v1/schools/{}", a.school);
    let staff_only = [
        format!("{school}/users"),
        format!("{school}/orders/live"),
        format!("{school}/kitchen/summary"),
        format!("{school}/readers"),
        format!("{school}/cards"),
        format!("{school}/scans"),
        format!("{school}/students/{}/guardians", a.student),
    ];
    let members = [
        school.clone(),
        format!("{school}/counters"),
        format!("{school}/meals"),
        format!("{school}/service-windows"),
        format!("/api/v1/orders/{order}"),
        format!("/api/v1/orders/{order}/notifications"),
    ];
    let b_guardian = token_of(&hub, &b.guardian_email, "guardian-pass-1").await;
    for path in staff_only.iter().chain(&members) {
        for (who, token) in [
            ("school B's staff", &b.kitchen_token),
            ("school B's student", &b.student_token),
            ("school B's guardian", &b_guardian),
        ] {
            let r = get(&hub, token, path).await;
            assert!(
                matches!(r.status, 403 | 404),
                "{who} read {path}: {} {:?}",
                r.status,
                r.body
            );
        }
    }
    for path in &staff_only {
        let r = get(&hub, &a.student_token, path).await;
        assert_eq!(r.status, 403, "a student read {path}: {:?}", r.body);
    }
    let r = get(&hub, &a.kitchen_token, "/api/v1/admin/dead-letters").await;
    assert_eq!(r.status, 403, "staff are not admins");
    // Another student of the same school, and a guardian who is not theirs.
    let users = format!("{school}/users");
    let other_student = expect(
        post(&hub, &admin, &users, json!({"role": "student", "display_name": "Bo", "email": "bo.seca@school.test", "password": "student-pass-2"})).await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bo = token_of(&hub, "bo.seca@school.test", "student-pass-2").await;
    for path in [
        format!("/api/v1/orders/{order}"),
        format!("/api/v1/orders/{order}/notifications"),
    ] {
        assert_eq!(
            get(&hub, &bo, &path).await.status,
            403,
            "another student read {path}"
        );
    }
    let r = post(
        &hub,
        &bo,
        &format!("/api/v1/orders/{order}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 403, "another student cancelled");
    let r = post(
        &hub,
        &a.student_token,
        &format!("/api/v1/orders/{order}/confirm"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 403, "a student confirmed");
    let r = post(
        &hub,
        &b_guardian,
        &format!("/api/v1/cards/{card}/report-lost"),
        json!({}),
    )
    .await;
    assert!(
        matches!(r.status, 403),
        "another school's guardian reported a card: {}",
        r.status
    );

    // Topics.
    for (who, token, topic) in [
        (
            "school B's staff",
            &b.kitchen_token,
            format!("kitchen:{}", a.school),
        ),
        (
            "a student",
            &a.student_token,
            format!("kitchen:{}", a.school),
        ),
        (
            "school B's staff",
            &b.kitchen_token,
            format!("board:{}", a.school),
        ),
        ("another student", &bo, format!("order:{order}")),
        ("school B's guardian", &b_guardian, format!("order:{order}")),
        ("a guardian", &b_guardian, format!("inbox:{}", a.guardian)),
        (
            "a student",
            &a.student_token,
            format!("inbox:{other_student}"),
        ),
    ] {
        let (_, mut socket) = client().ws(hub.ws_url(token)).connect().await.unwrap();
        socket
            .send(ws::Message::Text(
                json!({"type": "subscribe", "topic": topic})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
        let answer = next_json(&mut socket).await;
        assert_eq!(
            answer["type"], "error",
            "{who} subscribed to {topic}: {answer}"
        );
        assert!(
            matches!(
                answer["code"].as_str(),
                Some("forbidden" | "wrong_school" | "not_found")
            ),
            "{answer}"
        );
    }
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

/// Secrets never reach the log or an error body, even at debug level: passwords, the JWT key,
/// access and refresh tokens, provider credentials, reader secrets and one-time codes.
#[actix_web::test]
async fn secrets_stay_out_of_logs_and_error_bodies() {
    let db = TestDb::new(Backend::Sqlite).await;
    let smtp = SmtpSink::start();
    let sms = FakeSms::start();
    let mut env = hub_env(&db, Some(&smtp));
    let smtp_password = "smtp-password-7f3a9";
    for (k, v) in [
        ("RUST_LOG", "debug"),
        ("TIFFIN_SMTP__USERNAME", "tiffin"),
        ("TIFFIN_SMTP__PASSWORD", smtp_password),
        ("TIFFIN_SMS__BASE_URL", sms.base().as_str()),
        ("TIFFIN_SMS__ACCOUNT_SID", SMS_SID),
        ("TIFFIN_SMS__AUTH_TOKEN", SMS_TOKEN),
        ("TIFFIN_SMS__FROM", SMS_FROM),
    ] {
        env.retain(|(key, _)| key != k);
        env.push((k.into(), v.into()));
    }
    let log = db.dir().join("hub.log");
    let hub = Hub::start_logging(env, Some(&log));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "secrets").await;
    let guardian = login(&hub, &f.guardian_email, "guardian-pass-1").await;
    let (access, refresh) = (
        guardian["access_token"].as_str().unwrap().to_owned(),
        guardian["refresh_token"].as_str().unwrap().to_owned(),
    );
    let wrong = send(
        client().post(hub.url("/api/v1/auth/login")),
        Some(json!({"login": f.guardian_email, "password": "a-wrong-password-55"})),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(!wrong.body.to_string().contains("a-wrong-password-55"));
    expect(
        put(
            &hub,
            &access,
            "/api/v1/me/preferences",
            // The pickup by email too (not a default): an email the SMTP credentials are tried on.
            json!({"preferences": [
                {"kind": "pickup_code", "channel": "sms", "enabled": true},
                {"kind": "order_picked_up", "channel": "email", "enabled": true},
            ]}),
        )
        .await,
        200,
    );
    expect(
        send(
            client().post(hub.url("/api/v1/auth/refresh")),
            Some(json!({"refresh_token": refresh})),
        )
        .await,
        200,
    );
    let (_, socket) = client().ws(hub.ws_url(&access)).connect().await.unwrap();
    drop(socket);
    // A reader, a scan, a one-time code (sent, then a wrong and a right guess).
    let counter = counter_ids(&hub, &admin, &f.school).await[0].clone();
    let reader = register_reader(&hub, &admin, &f.school, "Secret reader", &counter).await;
    expect(
        reader_post(&hub, &reader, "/api/v1/reader/heartbeat", &json!({})).await,
        200,
    );
    let order = ready_order(&hub, &f, "secret-1").await;
    let issued = expect(
        post(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/pickup-codes", f.school),
            json!({"student_id": f.student, "counter_id": counter}),
        )
        .await,
        201,
    );
    let text = sms
        .wait_for(&f.guardian_phone, "pickup code", Duration::from_secs(20))
        .await;
    let code = six_digit_code(&text);
    let verify = format!(
        "/api/v1/pickup-codes/{}/verify",
        issued["id"].as_str().unwrap()
    );
    let wrong_code = if code == "000000" { "111111" } else { "000000" };
    let r = post(&hub, &f.kitchen_token, &verify, json!({"code": wrong_code})).await;
    assert!(!r.body.to_string().contains(wrong_code), "{:?}", r.body);
    expect(
        post(&hub, &f.kitchen_token, &verify, json!({"code": code})).await,
        200,
    );
    assert_eq!(pickups_of(&hub, &f, &order).await, 1);
    // The email was tried with the SMTP credentials (the sink offers no AUTH: it fails).
    statuses_until(
        &hub,
        &f.kitchen_token,
        &order,
        Duration::from_secs(20),
        |rows| {
            rows.iter().any(|r| {
                r["template"] == "order_picked_up"
                    && r["channel"] == "email"
                    && r["attempts"].as_i64() >= Some(1)
            })
        },
    )
    .await;
    drop(hub);

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.lines().count() > 20,
        "debug logging was on: {logged}"
    );
    for (what, secret) in [
        ("a password", "guardian-pass-1"),
        ("a wrong password", "a-wrong-password-55"),
        ("the JWT key", JWT_SECRET),
        ("an access token", access.as_str()),
        ("a refresh token", refresh.as_str()),
        ("the admin token", admin.as_str()),
        ("the SMTP password", smtp_password),
        ("the SMS auth token", SMS_TOKEN),
        ("a reader secret", reader.secret.as_str()),
        ("a one-time code", code.as_str()),
    ] {
        assert!(!logged.contains(secret), "{what} is in the log");
    }
}

/// `/readyz` until Redis reads `redis` (`ok` or `unreachable`); returns the body.
async fn readiness_until(hub: &Hub, redis: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = send(client().get(hub.url("/readyz")), None).await;
        if reply.body["redis"] == redis {
            return reply.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis never {redis}: {}",
            reply.body
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads kitchen frames until `kind` for `order`, checking that every numbered frame follows
/// the one before (`last`); returns the frames about `order`.
async fn kitchen_frames_until(
    socket: &mut Socket,
    last: &mut i64,
    order: &str,
    kind: &str,
) -> Vec<String> {
    let mut kinds = Vec::new();
    loop {
        let frame = next_json(socket).await;
        let Some(seq) = frame["seq"].as_i64().filter(|s| *s > 0) else {
            continue;
        };
        assert_eq!(seq, *last + 1, "a gap on the dashboard: {frame}");
        *last = seq;
        if frame["data"]["order_id"] == order {
            kinds.push(frame["type"].as_str().unwrap().to_owned());
            if frame["type"] == kind {
                return kinds;
            }
        }
    }
}

/// Three nodes on one PostgreSQL and one Redis (a private server the test stops and starts):
/// a dashboard on one node follows orders placed and driven on the others and scanned at a
/// reader posting to a third; racing nodes have one winner; a reader's signature and a
/// sign-in bucket are one truth across nodes; outbox dispatch on three nodes sends each
/// message once; a node killed leaves the others working; with Redis away the nodes serve
/// their own sockets, say `degraded` and read each other's events from the database, and
/// reconnect by themselves; a dashboard resumes on another node with `since`, without a gap.
#[actix_web::test]
async fn three_nodes_share_one_postgres_and_one_redis() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut redis = PrivateRedis::start();
    let smtp = SmtpSink::start();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut env = hub_env(&db, Some(&smtp));
    env.push(("TIFFIN_REDIS_URL".into(), redis.url()));
    env.push(("TIFFIN_LIMITS__SIGN_IN__PER_MINUTE".into(), "1".into()));
    env.push(("TIFFIN_LIMITS__SIGN_IN__BURST".into(), "4".into()));
    let one = Hub::start_logging(env.clone(), Some(log.path()));
    let two = Hub::start(env.clone());
    let three = Hub::start(env);
    for node in [&one, &two, &three] {
        let ready = readiness_until(node, "ok").await;
        assert_eq!(ready["status"], "ready", "{ready}");
    }
    let admin = one.admin_token();
    let f = fixture(&one, &admin, "nodes").await;
    let counter = counter_ids(&one, &admin, &f.school).await[0].clone();
    let reader = register_reader(&one, &admin, &f.school, "Counter 1 reader", &counter).await;
    let card = "04:9a:00:01";
    expect(
        post(
            &one,
            &admin,
            &format!("/api/v1/schools/{}/cards", f.school),
            json!({"student_id": f.student, "card_uid": card}),
        )
        .await,
        201,
    );
    let (mut dash, subscribed) = subscribe(&one, &f.kitchen_token, &f.school, None).await;
    let mut last = subscribed["seq"].as_i64().unwrap();
    assert_eq!(next_json(&mut dash).await["type"], "snapshot");
    // The guardian's app on node 1: in-app messages sent by any node's dispatcher reach it.
    // Receipts and "ready" also by email, as chosen: the emails the three dispatchers share.
    let guardian_token = choose_email(
        &one,
        &f.guardian_email,
        "guardian-pass-1",
        &["order_placed", "order_ready"],
    )
    .await;
    let inbox_topic = format!("inbox:{}", f.guardian);
    let (mut inbox, _) = subscribe_topic(&one, &guardian_token, &inbox_topic, None).await;
    assert_eq!(next_json(&mut inbox).await["type"], "snapshot");
    let mut orders = Vec::new();

    // Placed on node 2, driven and scanned on node 3, watched on node 1.
    let order = expect(place_order(&two, &f, "nodes-1", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(&three, &f, &order, &["confirm", "start", "ready"]).await;
    let verdict = scan_card(&three, &reader, 1, card).await;
    assert_eq!(verdict["verdict"], "accepted", "{verdict}");
    assert_eq!(
        kitchen_frames_until(&mut dash, &mut last, &order, "order.picked_up").await,
        [
            "order.placed",
            "order.confirmed",
            "order.preparing",
            "order.ready",
            "order.picked_up"
        ]
    );
    orders.push(order);

    // One signed request, two nodes: the second sees it replayed.
    let path = "/api/v1/reader/scans";
    let body = json!({"seq": 2, "card_uid": card}).to_string();
    let at = chrono::Utc::now().timestamp_millis();
    let signature = reader_signature(&reader.secret, at, path, body.as_bytes());
    let first = signed_send(&one, &reader.id, at, &signature, path, body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = signed_send(&two, &reader.id, at, &signature, path, body).await;
    assert_eq!((again.status, again.code()), (401, "signature_replayed"));
    // Debounce and the reader's sequence are one truth too: the card read again at node 3
    // just after node 1 is a repeat; seq 3 posted again to node 2, freshly signed, a replay.
    let repeat = scan_card(&three, &reader, 3, card).await;
    assert_eq!(repeat["debounced"], true, "{repeat}");
    let replayed = scan_card(&two, &reader, 3, card).await;
    assert_eq!(replayed["replayed"], true, "{replayed}");

    // A sign-in bucket of 4 is spent across the nodes, not 4 per node.
    for (n, node) in [&one, &two, &three, &one, &two].into_iter().enumerate() {
        let reply = send(
            client().post(node.url("/api/v1/auth/login")),
            Some(json!({"login": "nobody@nodes.test", "password": "wrong-password"})),
        )
        .await;
        let limited = reply.status == 429;
        assert_eq!(limited, n == 4, "attempt {n}: {}", reply.body);
    }

    // Nodes racing for one order: one wins; every node drives it on from there.
    for round in 0..3 {
        let order = expect(
            place_order(&one, &f, &format!("nodes-race-{round}"), 1).await,
            201,
        )["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let confirm = format!("/api/v1/orders/{order}/confirm");
        let attempts = [&one, &two, &three, &one, &two, &three]
            .map(|node| post(node, &f.kitchen_token, &confirm, json!({})));
        let replies = futures_util::future::join_all(attempts).await;
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| [200, 409].contains(s)),
            "{statuses:?}"
        );
        let next = [&one, &two, &three][round];
        expect(
            post(
                next,
                &f.kitchen_token,
                &format!("/api/v1/orders/{order}/start"),
                json!({"expected_version": 2}),
            )
            .await,
            200,
        );
        assert_eq!(
            kitchen_frames_until(&mut dash, &mut last, &order, "order.preparing").await,
            ["order.placed", "order.confirmed", "order.preparing"]
        );
        orders.push(order);
    }

    // Three dispatchers on one outbox: every email once.
    let mut sent = 0;
    for order in &orders {
        let rows = statuses_until(
            &one,
            &f.kitchen_token,
            order,
            Duration::from_secs(30),
            |rows| {
                rows.iter()
                    .filter(|r| r["channel"] == "email")
                    .all(|r| r["status"] != "pending")
            },
        )
        .await;
        sent += rows
            .iter()
            .filter(|r| r["channel"] == "email" && r["status"] == "sent")
            .count();
    }
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let mails: Vec<String> = smtp
        .messages()
        .iter()
        .map(|m| format!("{:?}\n{}", m.to, m.unfolded()))
        .collect();
    let distinct: std::collections::HashSet<&String> = mails.iter().collect();
    assert!(
        sent >= orders.len(),
        "{sent} emails for {} orders",
        orders.len()
    );
    assert_eq!(mails.len(), sent, "one email per sent row");
    assert_eq!(distinct.len(), mails.len(), "no email twice");
    let messages = expect(
        get(&two, &guardian_token, "/api/v1/me/inbox?limit=200").await,
        200,
    );
    let newest = messages[0]["seq"].as_i64().unwrap();
    for seq in 1..=newest {
        let frame = next_json(&mut inbox).await;
        assert_eq!(frame["seq"], seq, "every in-app message, in order: {frame}");
    }

    // A one-time code issued on node 2 allows three attempts in all, not three per node.
    let waiting = ready_order(&one, &f, "nodes-code").await;
    let codes = format!("/api/v1/schools/{}/pickup-codes", f.school);
    let ask = json!({"student_id": f.student, "counter_id": counter});
    let issued = expect(post(&two, &f.kitchen_token, &codes, ask).await, 201);
    let verify = format!(
        "/api/v1/pickup-codes/{}/verify",
        issued["id"].as_str().unwrap()
    );
    let mut answers = Vec::new();
    for node in [&three, &one, &two] {
        let r = post(node, &f.kitchen_token, &verify, json!({"code": "x99999"})).await;
        answers.push((r.status, r.code().to_owned()));
    }
    assert_eq!(
        answers,
        [
            (422, "code_invalid".to_owned()),
            (422, "code_invalid".to_owned()),
            (409, "code_locked".to_owned())
        ]
    );
    assert_eq!(pickups_of(&three, &f, &waiting).await, 0);

    // Node 2 dies; the others carry on.
    drop(two.kill());
    let order = expect(place_order(&three, &f, "nodes-after-kill", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(&one, &f, &order, &["confirm"]).await;
    assert_eq!(
        kitchen_frames_until(&mut dash, &mut last, &order, "order.confirmed").await,
        ["order.placed", "order.confirmed"]
    );

    // Redis away: degraded, each node serves its own sockets and reads the others' events
    // from the database; then back, and the bus carries events again.
    redis.down();
    let degraded = readiness_until(&one, "unreachable").await;
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    let during = expect(place_order(&three, &f, "nodes-redis-away", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(&one, &f, &during, &["confirm"]).await;
    advance(&three, &f, &during, &["start"]).await;
    assert_eq!(
        kitchen_frames_until(&mut dash, &mut last, &during, "order.preparing").await,
        ["order.placed", "order.confirmed", "order.preparing"]
    );
    redis.up();
    for node in [&one, &three] {
        assert_eq!(readiness_until(node, "ok").await["status"], "ready");
    }
    let relayed = "cluster_relayed_total{direction=\"in\"}";
    let before = metric(&one, relayed).await;
    advance(&three, &f, &during, &["ready"]).await;
    assert_eq!(
        kitchen_frames_until(&mut dash, &mut last, &during, "order.ready").await,
        ["order.ready"]
    );
    assert!(
        metric(&one, relayed).await > before,
        "the event came over Redis"
    );

    // The dashboard moves to node 3 and resumes where it was.
    drop(dash);
    advance(&three, &f, &during, &["pickup"]).await;
    let (mut moved, _) = subscribe(&three, &f.kitchen_token, &f.school, Some(last)).await;
    assert_eq!(
        kitchen_frames_until(&mut moved, &mut last, &during, "order.picked_up").await,
        ["order.picked_up"]
    );

    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(logged.contains("redis unavailable"), "{logged}");
    assert!(logged.contains("redis reachable again"), "{logged}");
    drop((one, three));
    db.drop_database().await;
}

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
/// `since` after every drop and checks that its frames are gapless; returns the last seq
/// once `stop` is set and it has reached `stop`'s value.
async fn resilient_dashboard(
    ws_url: String,
    topic: String,
    stop: std::rc::Rc<std::cell::Cell<i64>>,
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
    let dashboard = actix_web::rt::spawn(resilient_dashboard(
        format!(
            "{}/api/v1/ws?access_token={}",
            base.replacen("http", "ws", 1),
            f.kitchen_token
        ),
        format!("kitchen:{}", f.school),
        done_seq.clone(),
    ));

    // The killer: at random moments, SIGKILL and a restart on the same database and port.
    // The students keep coming until it is done, so that every kill lands mid-rush.
    let killing = Rc::new(Cell::new(true));
    let killer = {
        let (hub, killing) = (hub.clone(), killing.clone());
        actix_web::rt::spawn(async move {
            for _ in 0..kills {
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
    assert_eq!(
        metric(&hub, "tiffin_orders{state=\"picked_up\"}").await as usize,
        orders.len(),
        "no stray order"
    );
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
        let id = mail
            .data
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("message-id").then(|| {
                    value
                        .trim()
                        .trim_start_matches('<')
                        .split('@')
                        .next()
                        .unwrap()
                        .to_owned()
                })
            })
            .expect("every email has a Message-ID");
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
    let inbox = expect(
        get(&hub, &guardian_token, "/api/v1/me/inbox?limit=200").await,
        200,
    );
    let inbox: Vec<String> = inbox
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
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

fn smtp_connections(sink: &SmtpSink, sessions: usize) -> tiffin::smtp::SmtpConnections {
    let config = tiffin::config::SmtpConfig {
        host: "127.0.0.1".into(),
        port: Some(sink.port),
        tls: tiffin::config::SmtpTls::None,
        username: None,
        password: None,
        from: "Tiffin <tiffin@school.test>".into(),
        connections: sessions,
    };
    tiffin::smtp::SmtpConnections::new(&config, Duration::from_secs(5)).unwrap()
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

/// A hub's settings on a port of its own, with readers unthrottled.
fn claims_env(db: &TestDb, smtp: Option<&SmtpSink>) -> Vec<(String, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = hub_env(db, smtp);
    env.push(("TIFFIN_BIND".into(), format!("127.0.0.1:{port}")));
    env.push(("TIFFIN_LIMITS__PER_READER__PER_MINUTE".into(), "0".into()));
    env
}

/// `env` with the hub set to abort at `point` (`test_crash_at`).
fn crashing_at(env: &[(String, String)], point: &str) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    env.push(("TIFFIN_TEST_CRASH_AT".into(), point.into()));
    env
}

/// Runs SQL on the test's database directly: what an earlier version of the hub left behind.
async fn db_execute(db: &TestDb, sql: &str) {
    match db.backend {
        Backend::Sqlite => {
            use diesel::{Connection, RunQueryDsl, sqlite::SqliteConnection};
            let path = db.url.strip_prefix("sqlite://").unwrap();
            let mut conn = SqliteConnection::establish(path).unwrap();
            diesel::sql_query(sql).execute(&mut conn).unwrap();
        }
        Backend::Postgres => {
            use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
            let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
            conn.batch_execute(sql).await.unwrap();
        }
    }
}

/// A school's scans once none is `pending` any more; fails after `within`.
async fn scans_settled(hub: &Hub, f: &Fixture, within: Duration) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    let path = format!("/api/v1/schools/{}/scans", f.school);
    loop {
        let rows = expect(get(hub, &f.kitchen_token, &path).await, 200);
        let rows = rows.as_array().unwrap().clone();
        if rows.iter().all(|r| r["verdict"] != "pending") {
            return rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scans still pending after {within:?}: {rows:#?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A scan sent to a hub that dies on it: no verdict comes back, and the process is gone.
async fn scan_into_a_crash(hub: &mut Hub, reader: &ReaderKey, seq: i64, uid: &str) {
    let path = "/api/v1/reader/scans";
    let body = json!({"seq": seq, "card_uid": uid}).to_string();
    let at = chrono::Utc::now().timestamp_millis();
    let signature = reader_signature(&reader.secret, at, path, body.as_bytes());
    let answered = try_send_raw(
        signed_request(&hub.url(path), &reader.id, at, &signature),
        body,
    )
    .await
    .filter(|r| r.status == 200);
    assert!(answered.is_none(), "answered before the crash");
    assert!(
        hub.wait_exit(Duration::from_secs(10)).is_some(),
        "the hub did not crash"
    );
}

/// A school with one reader and a card for its student; the hub stopped.
async fn scan_setup(hub: &Hub, tag: &str) -> (Fixture, ReaderKey, String) {
    let admin = hub.admin_token();
    let f = fixture(hub, &admin, tag).await;
    let counter = counter_ids(hub, &admin, &f.school).await[0].clone();
    let reader = register_reader(hub, &admin, &f.school, "Counter 1", &counter).await;
    let uid = "04:C1:A1:23".to_owned();
    expect(
        post(
            hub,
            &admin,
            &format!("/api/v1/schools/{}/cards", f.school),
            json!({"student_id": f.student, "card_uid": uid}),
        )
        .await,
        201,
    );
    (f, reader, uid)
}

/// Killed between a scan's claim and its decision: the restarted hub abandons the claim by
/// itself (no reader retries), nothing was handed over, and the reader's retry decides afresh
/// and is then answered that decision again.
async fn scan_claim_left_by_a_crash(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = claims_env(&db, None);
    let hub = Hub::start(env.clone());
    let (f, reader, uid) = scan_setup(&hub, "claimed").await;
    let order = ready_order(&hub, &f, "claimed-1").await;
    hub.kill();

    let mut hub = Hub::start(crashing_at(&env, "scan_claimed"));
    scan_into_a_crash(&mut hub, &reader, 1, &uid).await;
    hub.kill();
    let hub = Hub::start(env.clone());
    let rows = scans_settled(&hub, &f, Duration::from_secs(10)).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["verdict"], "abandoned", "{rows:#?}");
    assert_eq!(pickups_of(&hub, &f, &order).await, 0, "nothing handed over");

    let first = scan_card(&hub, &reader, 1, &uid).await;
    assert_eq!(first["verdict"], "accepted", "{first}");
    assert_eq!(first["order_id"], order.as_str());
    assert_eq!(first["replayed"], false);
    let again = scan_card(&hub, &reader, 1, &uid).await;
    assert_eq!(again["verdict"], "accepted", "{again}");
    assert_eq!(again["order_id"], order.as_str());
    assert_eq!(again["replayed"], true);
    assert_eq!(pickups_of(&hub, &f, &order).await, 1);
    scans_settled(&hub, &f, Duration::from_secs(1)).await;
    drop(hub);
    db.drop_database().await;
}

#[actix_web::test]
async fn a_scan_claim_left_by_a_crash_is_abandoned_and_a_retry_decides_on_sqlite() {
    scan_claim_left_by_a_crash(Backend::Sqlite).await;
}

#[actix_web::test]
async fn a_scan_claim_left_by_a_crash_is_abandoned_and_a_retry_decides_on_postgres() {
    scan_claim_left_by_a_crash(Backend::Postgres).await;
}

/// Killed after a scan's hand-over committed, the reader never answered, while the student
/// has a second meal ready: after the restart the scan carries the first meal's decision
/// without any retry, the retry is answered it, and the second meal stays at the counter.
/// Then the same for a scan an earlier version left `pending` with its hand-over committed.
async fn scan_handed_over_before_a_crash(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = claims_env(&db, None);
    let hub = Hub::start(env.clone());
    let (f, reader, uid) = scan_setup(&hub, "handed").await;
    let first = ready_order(&hub, &f, "handed-1").await;
    let second = ready_order(&hub, &f, "handed-2").await;
    hub.kill();

    let mut hub = Hub::start(crashing_at(&env, "scan_handed_over"));
    scan_into_a_crash(&mut hub, &reader, 7, &uid).await;
    hub.kill();
    let hub = Hub::start(env.clone());
    let rows = scans_settled(&hub, &f, Duration::from_secs(10)).await;
    assert_eq!(rows[0]["verdict"], "accepted", "{rows:#?}");
    assert_eq!(rows[0]["order_id"], first.as_str(), "{rows:#?}");
    let retry = scan_card(&hub, &reader, 7, &uid).await;
    assert_eq!(retry["verdict"], "accepted", "{retry}");
    assert_eq!(
        retry["order_id"],
        first.as_str(),
        "the first decision: {retry}"
    );
    assert_eq!(retry["replayed"], true, "{retry}");
    assert_eq!(pickups_of(&hub, &f, &first).await, 1);
    assert_eq!(pickups_of(&hub, &f, &second).await, 0, "one meal a scan");
    hub.kill();

    // As an earlier version left it: the hand-over committed, the scan still pending.
    db_execute(
        &db,
        "UPDATE scans SET verdict = 'pending', answer = NULL, order_id = NULL, \
         student_id = NULL, took_us = NULL, claimed_by = NULL WHERE seq = 7",
    )
    .await;
    let hub = Hub::start(env.clone());
    let rows = scans_settled(&hub, &f, Duration::from_secs(15)).await;
    assert_eq!(rows[0]["verdict"], "accepted", "{rows:#?}");
    assert_eq!(rows[0]["order_id"], first.as_str(), "{rows:#?}");
    let retry = scan_card(&hub, &reader, 7, &uid).await;
    assert_eq!(retry["order_id"], first.as_str(), "{retry}");
    assert_eq!(retry["replayed"], true, "{retry}");
    let path = format!("/api/v1/orders/{second}");
    let still = expect(get(&hub, &f.kitchen_token, &path).await, 200);
    assert_eq!(still["order"]["state"], "ready", "the second meal waits");
    assert_eq!(pickups_of(&hub, &f, &second).await, 0);
    drop(hub);
    db.drop_database().await;
}

#[actix_web::test]
async fn a_taken_over_scan_never_hands_over_a_second_meal_on_sqlite() {
    scan_handed_over_before_a_crash(Backend::Sqlite).await;
}

#[actix_web::test]
async fn a_taken_over_scan_never_hands_over_a_second_meal_on_postgres() {
    scan_handed_over_before_a_crash(Backend::Postgres).await;
}

/// How many copies of each Message-ID (its local part) the sink received.
fn copies_by_message_id(smtp: &SmtpSink) -> std::collections::HashMap<String, usize> {
    let mut copies = std::collections::HashMap::new();
    for mail in smtp.messages() {
        let id = mail
            .data
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("message-id").then(|| {
                    let id = value.trim().trim_start_matches('<');
                    id.split('@').next().unwrap().to_owned()
                })
            })
            .expect("every email has a Message-ID");
        *copies.entry(id).or_default() += 1;
    }
    copies
}

/// Killed after the SMTP server accepted an email and before its row was marked: the
/// restarted node takes its claim back at once (not after the 60 s lease) and sends it again
/// under the same Message-ID, although its news (a meal waiting) is no longer true by then;
/// the row says `sent`, and the resend is counted.
async fn email_accepted_before_a_crash(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start();
    let env = claims_env(&db, Some(&smtp));
    let hub = Hub::start(env.clone());
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "resend").await;
    let order = expect(place_order(&hub, &f, "resend-1", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // "Ready" comes by email only to those who chose it.
    choose_email(&hub, &f.guardian_email, "guardian-pass-1", &["order_ready"]).await;
    advance(&hub, &f, &order, &["confirm", "start"]).await;
    statuses_until(
        &hub,
        &f.kitchen_token,
        &order,
        Duration::from_secs(20),
        |rows| !rows.is_empty() && rows.iter().all(|r| r["status"] != "pending"),
    )
    .await;
    hub.kill();

    let mut hub = Hub::start(crashing_at(&env, "email_accepted"));
    let path = format!("/api/v1/orders/{order}/ready");
    let _ = try_send(
        client().post(hub.url(&path)).bearer_auth(&f.kitchen_token),
        Some(&json!({})),
    )
    .await;
    assert!(
        hub.wait_exit(Duration::from_secs(20)).is_some(),
        "the hub did not crash"
    );
    hub.kill();
    let ready_email = |rows: &[Value]| {
        rows.iter()
            .find(|r| r["template"] == "order_ready" && r["channel"] == "email")
            .cloned()
    };

    let hub = Hub::start(env.clone());
    // The meal is collected at once: the email's news is no longer true.
    advance(&hub, &f, &order, &["pickup"]).await;
    let rows = statuses_until(
        &hub,
        &f.kitchen_token,
        &order,
        Duration::from_secs(15),
        |rows| ready_email(rows).is_some_and(|r| r["status"] != "pending"),
    )
    .await;
    let email = ready_email(&rows).unwrap();
    assert_eq!(email["status"], "sent", "{email}");
    let id = email["id"].as_str().unwrap();
    assert_eq!(
        copies_by_message_id(&smtp).get(id),
        Some(&2),
        "sent again under its Message-ID"
    );
    assert_eq!(
        metric(&hub, "notify_resent_after_crash_total{channel=\"email\"}").await,
        1.0
    );
    drop(hub);
    db.drop_database().await;
}

#[actix_web::test]
async fn a_restarted_node_resends_its_claimed_email_at_once_on_sqlite() {
    email_accepted_before_a_crash(Backend::Sqlite).await;
}

#[actix_web::test]
async fn a_restarted_node_resends_its_claimed_email_at_once_on_postgres() {
    email_accepted_before_a_crash(Backend::Postgres).await;
}
