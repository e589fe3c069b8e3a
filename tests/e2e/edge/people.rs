//! People, tokens and sockets at the edge: phone numbers, school admins, refresh rotation,
//! request ids, the OpenAPI document: clear codes, never a 500.

use super::secrets_stay_out_of;
use super::two_schools_on_a_debug_logging_hub;
use crate::common::*;

/// Phone numbers, school admins, unknown schools and people, refresh rotation, sockets,
/// request ids and the OpenAPI document: clear codes, never a 500.
#[actix_web::test]
async fn rules_at_the_edge_people_tokens_and_sockets() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (log, hub, admin, a, b) = two_schools_on_a_debug_logging_hub(&db).await;

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
    secrets_stay_out_of(&log, &a);

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
        "/api/v1/auth/code",
        "/api/v1/auth/code/verify",
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
