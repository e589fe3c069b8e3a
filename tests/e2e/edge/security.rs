//! Who may do what (the security matrix) and secrets kept out of logs and error bodies.

use crate::common::*;

/// The security matrix. Every operation in the OpenAPI document refuses a request with no
/// token, a tampered or expired token, or a reader's secret as a token (401); reader
/// operations refuse a user's token. Another school's staff, another student, another
/// student's guardian and lower roles are refused on every read of a school's data and on
/// every topic. A paired screen's credential is refused on every operation but the few its
/// kind needs (it places no order), and on every other school's data and topics.
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
    let hot_line = new_station(&hub, &admin, &a.school, "Hot line").await;
    let station = paired_station(&hub, &a.kitchen_token, &a.school, "Hot", &hot_line).await;
    let expo = paired_screen(&hub, &a.kitchen_token, &a.school, "Pass", "expo").await;
    let board = paired_screen(&hub, &a.kitchen_token, &a.school, "Board", "board").await;
    // What screens may call (common/screens.rs); everything else refuses screens.
    let for_stations = STATION_SCREEN_CALLS;
    let for_screens: Vec<_> = for_stations
        .into_iter()
        .chain(KITCHEN_SCREEN_CALLS)
        .collect();
    let mut screen_checked = 0;

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
            ("{line}", "0"),
            ("{screen_id}", station.id.as_str()),
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
            "/api/v1/auth/code",
            "/api/v1/auth/code/verify",
            "/api/v1/auth/refresh",
            "/api/v1/auth/logout",
            "/api/v1/auth/screens/pairings",
            "/api/v1/auth/screens/claim",
            "/api/v1/auth/screens/refresh",
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
            let operation = (method.as_str(), path.as_str());
            let school_read = operation == ("get", "/api/v1/schools/{school_id}");
            for (who, token, refused) in [
                (
                    "a station screen",
                    &station.access,
                    !for_stations.contains(&operation),
                ),
                (
                    "an expo screen",
                    &expo.access,
                    !for_screens.contains(&operation),
                ),
                ("a board screen", &board.access, !school_read),
            ] {
                if !refused || path == "/api/v1/ws" {
                    continue;
                }
                let r = request(Some(token)).await;
                assert_eq!(
                    (r.status, r.code()),
                    (403, "forbidden"),
                    "{method} {path} with {who}: {:?}",
                    r.body
                );
                screen_checked += 1;
            }
        }
    }
    assert!(checked >= 40, "only {checked} operations in the document?");
    assert!(
        screen_checked >= 100,
        "only {screen_checked} refusals of screens?"
    );

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
        format!("{school}/stations"),
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
    // A screen's few operations, on another school's data.
    let b_order = expect(place_order(&hub, &b, "sec-b", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let calls = for_screens
        .iter()
        .map(|call| (&expo, call))
        .chain(for_stations.iter().map(|call| (&station, call)));
    for (screen, &(method, path)) in calls {
        let path = path
            .replace("{school_id}", &b.school)
            .replace("{order_id}", &b_order)
            .replace("{line}", "0");
        let r = match method {
            "get" => get(&hub, &screen.access, &path).await,
            _ => post(&hub, &screen.access, &path, json!({})).await,
        };
        assert!(
            matches!(r.code(), "wrong_school" | "forbidden"),
            "a screen of school A: {method} {path}: {} {:?}",
            r.status,
            r.body
        );
    }
    let r = get(&hub, &a.kitchen_token, "/api/v1/admin/dead-letters").await;
    assert_eq!(r.status, 403, "staff are not admins");
    // Roster imports: a district admin for the district, a school admin for their school only.
    expect(
        post(&hub, &admin, &format!("/api/v1/schools/{}/users", b.school), json!({"role": "school_admin", "display_name": "B Head", "email": "head.b@school.test", "password": "head-pass-123"})).await,
        201,
    );
    let b_head = token_of(&hub, "head.b@school.test", "head-pass-123").await;
    let roster = |token: &str, query: String| {
        client()
            .post(hub.url(&format!("/api/v1/admin/rosters{query}")))
            .bearer_auth(token)
            .insert_header(("content-type", "application/zip"))
    };
    for (who, token, query, status, code) in [
        (
            "school B's head, for the district",
            &b_head,
            String::new(),
            403,
            "forbidden",
        ),
        (
            "school B's head, for school A",
            &b_head,
            format!("?school={}", a.school),
            403,
            "wrong_school",
        ),
        (
            "school A's staff",
            &a.kitchen_token,
            format!("?school={}", a.school),
            403,
            "forbidden",
        ),
        (
            "school A's guardian",
            &token_of(&hub, &a.guardian_email, "guardian-pass-1").await,
            format!("?school={}", a.school),
            403,
            "forbidden",
        ),
        (
            "school A's student",
            &a.student_token,
            String::new(),
            403,
            "forbidden",
        ),
        // Let through, then refused for the body: school B was never imported from a roster.
        (
            "school B's head, for school B",
            &b_head,
            format!("?school={}", b.school),
            422,
            "roster_unreadable",
        ),
        (
            "the district admin",
            &admin,
            String::new(),
            422,
            "roster_unreadable",
        ),
    ] {
        let r = try_send_raw(roster(token, query), "not a zip".into())
            .await
            .unwrap();
        assert_eq!((r.status, r.code()), (status, code), "{who}: {:?}", r.body);
    }
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
    // Stations: the school admin makes them; the school's kitchen staff mark items done.
    let stations = format!("{school}/stations");
    for (who, token) in [
        ("kitchen staff", &a.kitchen_token),
        ("a student", &a.student_token),
        ("school B's staff", &b.kitchen_token),
    ] {
        let r = post(&hub, token, &stations, json!({"name": "Grill"})).await;
        assert_eq!(r.status, 403, "{who} made a station: {:?}", r.body);
    }
    let grill = expect(
        post(&hub, &admin, &stations, json!({"name": "Grill"})).await,
        201,
    );
    assert_eq!(grill["school_id"], json!(a.school));
    expect(
        post(
            &hub,
            &a.kitchen_token,
            &format!("/api/v1/orders/{order}/confirm"),
            json!({}),
        )
        .await,
        200,
    );
    let done = format!("/api/v1/orders/{order}/items/0/done");
    for (who, token) in [
        ("the student", &a.student_token),
        ("another student", &bo),
        ("a guardian", &b_guardian),
        ("school B's staff", &b.kitchen_token),
    ] {
        let r = post(&hub, token, &done, json!({})).await;
        assert_eq!(r.status, 403, "{who} marked an item done: {:?}", r.body);
    }
    expect(post(&hub, &a.kitchen_token, &done, json!({})).await, 200);
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
            "a station screen",
            &station.access,
            format!("kitchen:{}", b.school),
        ),
        (
            "a station screen",
            &station.access,
            format!("board:{}", b.school),
        ),
        (
            "a board screen",
            &board.access,
            format!("kitchen:{}", a.school),
        ),
        ("a board screen", &board.access, format!("order:{order}")),
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
