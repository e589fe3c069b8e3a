//! What reaches the hub's edge: rate limits, garbage on the wire, text and types, cut connections, the metrics token.

use crate::common::*;

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
            assert!(
                res.headers().contains_key("x-request-id"),
                "a refusal has its id"
            );
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
    let refused_unrouted = metric(
        &hub,
        r#"http_requests_total{method="GET",route="unmatched",status="429"}"#,
    )
    .await;
    assert_eq!(refused_unrouted, 1.0, "the address's refusal is counted");
    for limit in ["sign_in", "user", "ip"] {
        let counted = metric(&hub, &format!("rate_limited_total{{limit=\"{limit}\"}}")).await;
        assert!(counted >= 1.0, "{limit}: {counted}");
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
    // Half a frame waits for the idle timeout: the shortest the configuration allows.
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

    // Raw bytes after a valid upgrade: a frame the protocol forbids (reserved bits set) is
    // dropped at once; half a frame is dropped by the idle timeout (checked on the heartbeat,
    // every 10 s). Fixed bytes: random ones parse as a valid frame now and then.
    let addr = hub.base.trim_start_matches("http://").to_owned();
    let upgraded = |addr: String, token: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let upgrade = format!(
            "GET /api/v1/ws?access_token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
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
        tcp
    };
    let ends_within = |mut tcp: tokio::net::TcpStream, bytes: Vec<u8>, within: u64| async move {
        tcp.write_all(&bytes).await.unwrap();
        actix_web::rt::time::timeout(Duration::from_secs(within), async {
            let mut buf = [0u8; 1024];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    };
    let mut forbidden = vec![0xf1u8, 0x85, 1, 2, 3, 4];
    forbidden.extend((0..250).map(|_| rand::random::<u8>()));
    let tcp = upgraded(addr.clone(), f.kitchen_token.clone()).await;
    assert!(
        ends_within(tcp, forbidden, 10).await,
        "a forbidden frame left the connection open"
    );
    // A masked text frame announcing 1,000 bytes, then 10 of them.
    let mut half = vec![0x81u8, 0xfe, 0x03, 0xe8, 9, 8, 7, 6];
    half.extend([b'x'; 10]);
    let tcp = upgraded(addr.clone(), f.kitchen_token.clone()).await;
    assert!(
        ends_within(tcp, half, 15 + 10 + 15).await,
        "half a frame left the connection open past the idle timeout"
    );

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
