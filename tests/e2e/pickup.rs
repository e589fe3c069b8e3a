//! Handing meals over: counters and pickup codes, the pickup board, one-time codes.

use crate::common::*;

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
    let summary = kitchen_summary(&hub, &f).await;
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
