//! An order from placement to pickup (the spine), a hub with no configuration, and students and guardians following their order.

use crate::common::*;

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
    // The banner is printed right after the address line: the tokens, then the sign-ins.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let printed_all = |lines: &[String]| {
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("guardian:"))
            && lines.iter().any(|l| l.contains("ada@demo.tiffin.test / "))
    };
    while !printed_all(&printed.lock().unwrap()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no demo tokens printed: {:?}",
            printed.lock().unwrap()
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = printed.lock().unwrap().clone();
    // No token in a screen's URL: the demo says how to pair one, and names its stations.
    let pair_page = lines
        .iter()
        .find_map(|l| l.strip_prefix("Pair a kitchen screen: open "))
        .and_then(|l| l.split_once(' '))
        .map(|(page, _)| page.trim_end_matches(';').to_owned())
        .expect("how to pair a screen");
    assert_eq!(pair_page, hub.url("/screens/pair"));
    assert!(
        !lines.iter().any(|l| l.contains("#token=")),
        "a token in a page's address: {lines:?}"
    );
    let school = lines
        .iter()
        .find_map(|l| l.strip_prefix("Demo school: "))
        .and_then(|l| l.split_once(';'))
        .map(|(school, _)| school.to_owned())
        .expect("the demo school");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("/api/v1/schools/{school}/screens"))),
        "{lines:?}"
    );
    let kitchen_token = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("kitchen_staff: "))
        .unwrap();
    let stations = expect(
        get(
            &hub,
            kitchen_token,
            &format!("/api/v1/schools/{school}/stations"),
        )
        .await,
        200,
    );
    assert_eq!(stations.as_array().unwrap().len(), 2, "{stations}");
    let station_line = lines
        .iter()
        .find(|l| l.contains("station with a station_id"))
        .expect("the stations to pair with");
    assert!(
        station_line.contains(stations[0]["id"].as_str().unwrap()),
        "{station_line}"
    );
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
        .get(&pair_page)
        .send()
        .await
        .unwrap()
        .body()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&html).contains("/pages/screen.js"));

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
