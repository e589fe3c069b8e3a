//! Orders and transitions at once: one winner per transition, orders placed together commit together.

use crate::common::*;

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
