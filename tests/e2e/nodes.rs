//! Two nodes on one PostgreSQL and one Redis, as a district runs them behind a load balancer:
//! no node owns a kitchen (every decision is made in a batch that locks its schools and
//! checks versions in the database), so a node killed mid-rush leaves its kitchens to the
//! other at once, and what an admin changes through one node holds for the other's next
//! decision.

use crate::common::*;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

async fn two_nodes(db: &TestDb, redis: &PrivateRedis) -> (Hub, Hub) {
    let mut env = hub_env(db, None);
    env.push(("TIFFIN_REDIS_URL".into(), redis.url()));
    let (a, b) = (Hub::start(env.clone()), Hub::start(env));
    for node in [&a, &b] {
        let ready = readiness_until(node, "ok").await;
        assert_eq!(ready["status"], "ready", "{ready}");
    }
    (a, b)
}

fn order_body(f: &Fixture) -> Value {
    json!({"items": [{"meal_id": f.meals[0], "quantity": 1}]})
}

/// Sends order `n` (its idempotency key) to `base`; the order's id once acknowledged.
async fn send_order(base: &str, f: &Fixture, n: usize) -> Option<String> {
    let mut res = client()
        .post(format!("{base}/api/v1/schools/{}/orders", f.school))
        .bearer_auth(&f.student_token)
        .insert_header(("Idempotency-Key", format!("rush-{n}")))
        .send_json(&order_body(f))
        .await
        .ok()?;
    if ![200, 201].contains(&res.status().as_u16()) {
        return None;
    }
    let body = res.json::<Value>().await.ok()?;
    body["id"].as_str().map(str::to_owned)
}

/// The busiest kitchen's node is SIGKILLed mid-rush, orders going to both nodes: the
/// clients that were on it go to the other, which accepts their retries within 5 s; every
/// acknowledged order exists once, a retry of any key returns the order it made, and a
/// dashboard on the surviving node saw every order in sequence without a gap.
#[actix_web::test]
async fn a_node_killed_mid_rush_leaves_its_kitchen_to_the_other() {
    let db = TestDb::new(Backend::Postgres).await;
    let redis = PrivateRedis::start();
    let (a, b) = two_nodes(&db, &redis).await;
    let admin = a.admin_token();
    let f = Rc::new(fixture(&a, &admin, "takeover").await);
    let (mut dash, subscribed) = subscribe(&b, &f.kitchen_token, &f.school, None).await;
    let mut last = subscribed["seq"].as_i64().unwrap();
    assert_eq!(next_json(&mut dash).await["type"], "snapshot");

    const ORDERS: usize = 160;
    let acknowledged: Rc<RefCell<HashMap<usize, String>>> = Rc::default();
    // When the first client that was on the killed node got an answer from the other.
    let failed_over: Rc<RefCell<Option<Instant>>> = Rc::default();
    let killed_at: Rc<RefCell<Option<Instant>>> = Rc::default();
    let (base_a, base_b) = (a.base.clone(), b.base.clone());
    let next = Rc::new(RefCell::new(0usize));
    let rush = (0..8).map(|worker| {
        let (f, acknowledged, next) = (f.clone(), acknowledged.clone(), next.clone());
        let (failed_over, killed_at) = (failed_over.clone(), killed_at.clone());
        let (base_a, base_b) = (base_a.clone(), base_b.clone());
        async move {
            // Half the clients start on the node that will be killed.
            let mut on_a = worker % 2 == 0;
            loop {
                let n = {
                    let mut next = next.borrow_mut();
                    *next += 1;
                    *next - 1
                };
                if n >= ORDERS {
                    return;
                }
                for attempt in 0.. {
                    assert!(attempt < 500, "order {n} never acknowledged");
                    let base = if on_a { &base_a } else { &base_b };
                    if let Some(id) = send_order(base, &f, n).await {
                        if worker % 2 == 0 && !on_a && failed_over.borrow().is_none() {
                            *failed_over.borrow_mut() = Some(Instant::now());
                        }
                        acknowledged.borrow_mut().insert(n, id);
                        break;
                    }
                    // No answer: as a load balancer would, try the other node with the same key.
                    if killed_at.borrow().is_some() {
                        on_a = false;
                    }
                    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
    let rush = actix_web::rt::spawn(futures_util::future::join_all(rush));
    while acknowledged.borrow().len() < 40 {
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    *killed_at.borrow_mut() = Some(Instant::now());
    drop(a.kill());
    rush.await.unwrap();
    let killed_at = killed_at.borrow().unwrap();
    let failed_over = failed_over
        .borrow()
        .expect("a client of the killed node failed over");
    assert!(
        failed_over - killed_at < Duration::from_secs(5),
        "the other node took the kitchen's orders after {:?}",
        failed_over - killed_at
    );
    let acknowledged = acknowledged.borrow().clone();
    assert_eq!(
        acknowledged.len(),
        ORDERS,
        "every order acknowledged in the end"
    );

    // A retry of every key returns the order it made: none lost, none made twice.
    for (n, id) in &acknowledged {
        let again = send_order(&b.base, &f, *n).await;
        assert_eq!(again.as_ref(), Some(id), "order {n} after the kill");
    }
    let live = expect(
        get(
            &b,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/orders/live", f.school),
        )
        .await,
        200,
    );
    let live: HashSet<String> = live
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    let ids: HashSet<String> = acknowledged.values().cloned().collect();
    assert_eq!(live, ids, "the kitchen holds each acknowledged order once");

    // The surviving node's dashboard: every order, numbered without a gap.
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        let frame = next_json(&mut dash).await;
        let Some(seq) = frame["seq"].as_i64().filter(|s| *s > 0) else {
            continue;
        };
        assert_eq!(seq, last + 1, "a gap on the dashboard: {frame}");
        last = seq;
        if frame["type"] == "order.placed" {
            let id = frame["data"]["order_id"].as_str().unwrap().to_owned();
            assert!(ids.contains(&id), "a frame of an order never made: {frame}");
            assert!(seen.insert(id), "an order placed twice: {frame}");
        }
    }
    drop(b);
    db.drop_database().await;
}

/// What an admin changes through one node holds for the other node's very next decision: a
/// meal taken off the menu, a card blocked, a reader's key rotated (told over the bus, the
/// old secret stops working on the other node, the new one works there).
#[actix_web::test]
async fn an_admin_change_on_one_node_holds_for_the_next_decision_on_the_other() {
    let db = TestDb::new(Backend::Postgres).await;
    let redis = PrivateRedis::start();
    let (a, b) = two_nodes(&db, &redis).await;
    let admin = a.admin_token();
    let f = fixture(&a, &admin, "admin-change").await;
    let counter = counter_ids(&a, &admin, &f.school).await[0].clone();
    let reader = register_reader(&a, &admin, &f.school, "Till", &counter).await;
    let card = "04:aa:bb:01";
    let made = expect(
        post(
            &a,
            &admin,
            &format!("/api/v1/schools/{}/cards", f.school),
            json!({"student_id": f.student, "card_uid": card}),
        )
        .await,
        201,
    );
    // Both nodes have decided for this kitchen and this reader before the changes.
    expect(place_order(&b, &f, "before-change", 1).await, 201);
    let before = scan_card(&b, &reader, 1, card).await;
    assert_eq!(before["verdict"], "no_ready_order", "{before}");

    expect(
        patch(
            &a,
            &admin,
            &format!("/api/v1/schools/{}/meals/{}", f.school, f.meals[0]),
            json!({"available": false}),
        )
        .await,
        200,
    );
    let refused = place_order(&b, &f, "after-change", 1).await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "meal_unavailable"),
        "{}",
        refused.body
    );

    let card_id = made["id"].as_str().unwrap();
    expect(
        post(
            &a,
            &admin,
            &format!("/api/v1/cards/{card_id}/block"),
            json!({}),
        )
        .await,
        200,
    );
    // Another reader: the first would answer a repeat read within its debounce window.
    let other = register_reader(&a, &admin, &f.school, "Till 2", &counter).await;
    let blocked = scan_card(&b, &other, 1, card).await;
    assert_eq!(blocked["verdict"], "card_blocked", "{blocked}");

    let rotated = expect(
        post(
            &a,
            &admin,
            &format!(
                "/api/v1/schools/{}/readers/{}/rotate-key",
                f.school, reader.id
            ),
            json!({}),
        )
        .await,
        200,
    );
    let new_key = ReaderKey {
        id: reader.id.clone(),
        secret: rotated["secret"].as_str().unwrap().to_owned(),
    };
    // The other node remembers the reader's row (it decided a scan above) and is told of the
    // rotation over the bus: the old secret stops working there without a new-key request.
    let rotated_at = Instant::now();
    loop {
        let old = reader_post(&b, &reader, "/api/v1/reader/heartbeat", &json!({})).await;
        if old.status == 401 {
            assert_eq!(old.code(), "signature_invalid", "{}", old.body);
            break;
        }
        assert!(
            rotated_at.elapsed() < Duration::from_secs(2),
            "the old secret still works on the other node"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    expect(
        reader_post(&b, &new_key, "/api/v1/reader/heartbeat", &json!({})).await,
        200,
    );
    drop((a, b));
    db.drop_database().await;
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
