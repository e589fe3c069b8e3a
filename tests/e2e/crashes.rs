//! Crashes between a claim and its effect: scans and email decided once after a restart.

use crate::common::*;

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
        let id =
            tiffin_harness::smtp::message_id(&mail.data).expect("every email has a Message-ID");
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
