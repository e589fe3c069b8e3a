//! Two nodes on one PostgreSQL and one Redis, as a district runs them behind a load balancer:
//! no node owns a kitchen (every decision is made in a batch that locks its schools and
//! checks versions in the database), so a node killed mid-rush leaves its kitchens to the
//! other at once, and what an admin changes through one node holds for the other's next
//! decision.

use super::*;
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
/// meal taken off the menu, a card blocked, a reader's key rotated (the new secret works on
/// the other node at once, the old one stops there within a second).
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
    expect(
        reader_post(&b, &new_key, "/api/v1/reader/heartbeat", &json!({})).await,
        200,
    );
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
    drop((a, b));
    db.drop_database().await;
}
