//! Card readers: registration, signed scans, verdicts, replays and races.

use crate::common::*;

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
    let summary = kitchen_summary(&hub, &f).await;
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
