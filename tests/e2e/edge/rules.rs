//! Role and school checks, bad input, allergies and routes: clear codes, never a 500.

use super::secrets_stay_out_of;
use super::two_schools_on_a_debug_logging_hub;
use crate::common::*;

/// Role and school checks, tokens, bad input, allergies and routes: clear codes, never a 500.
#[actix_web::test]
async fn rules_at_the_edge_orders_and_input() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (log, hub, admin, a, b) = two_schools_on_a_debug_logging_hub(&db).await;

    // School A's token on school B's data.
    for path in [
        format!("/api/v1/schools/{}/orders/live", b.school),
        format!("/api/v1/schools/{}/counters", b.school),
        format!("/api/v1/schools/{}", b.school),
    ] {
        let r = get(&hub, &a.kitchen_token, &path).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "wrong_school"),
            "{path}: {}",
            r.body
        );
    }
    let placed_in_b = expect(place_order(&hub, &b, "b-1", 1).await, 201);
    let b_order = placed_in_b["id"].as_str().unwrap();
    let r = post(
        &hub,
        &a.kitchen_token,
        &format!("/api/v1/orders/{b_order}/confirm"),
        json!({}),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "wrong_school"));
    let r = get(&hub, &a.student_token, &format!("/api/v1/orders/{b_order}")).await;
    assert_eq!(r.status, 403, "{}", r.body);

    // Lower roles.
    let r = post(
        &hub,
        &a.kitchen_token,
        "/api/v1/schools",
        json!({"name": "X", "time_zone": "UTC"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let placed = expect(place_order(&hub, &a, "a-1", 1).await, 201);
    let order = placed["id"].as_str().unwrap().to_owned();
    let r = post(
        &hub,
        &a.student_token,
        &format!("/api/v1/orders/{order}/confirm"),
        json!({}),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "transition_not_permitted"));
    // A guardian of the student may cancel while it is placed; a stale version conflicts.
    let g = login(&hub, &a.guardian_email, "guardian-pass-1").await;
    let guardian_token = g["access_token"].as_str().unwrap();
    let r = post(
        &hub,
        guardian_token,
        &format!("/api/v1/orders/{order}/cancel"),
        json!({"expected_version": 7}),
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "version_conflict"));
    let cancelled = expect(
        post(
            &hub,
            guardian_token,
            &format!("/api/v1/orders/{order}/cancel"),
            json!({"reason": "home sick"}),
        )
        .await,
        200,
    );
    assert_eq!(cancelled["state"], "cancelled");
    let r = post(
        &hub,
        &a.kitchen_token,
        &format!("/api/v1/orders/{order}/confirm"),
        json!({}),
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "invalid_transition"));
    let history = expect(
        get(&hub, guardian_token, &format!("/api/v1/orders/{order}")).await,
        200,
    );
    assert_eq!(history["history"][1]["reason"], "home sick");
    assert_eq!(history["history"][1]["actor_id"], a.guardian.as_str());

    // No token, a tampered token, an expired one.
    let r = send(
        client().get(hub.url(&format!("/api/v1/schools/{}/meals", a.school))),
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"));
    let mut tampered = a.kitchen_token.clone();
    tampered.pop();
    tampered.push(if a.kitchen_token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    let r = get(&hub, &tampered, "/api/v1/me").await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"));
    let expired = hub.cli(&["token", "--role", "admin", "--ttl", "-120"]);
    let r = get(&hub, &expired, "/api/v1/schools").await;
    assert_eq!((r.status, r.code()), (401, "token_expired"));

    // Bad input: each gets its code, nothing is written.
    let orders = hub.url(&format!("/api/v1/schools/{}/orders", a.school));
    let raw = |body: &'static str| {
        client()
            .post(orders.clone())
            .bearer_auth(&a.student_token)
            .insert_header(("Content-Type", "application/json"))
            .send_body(body)
    };
    let status_code = |mut res: awc::ClientResponse<_>| async move {
        let body: Value = res.json().limit(1 << 20).await.unwrap_or(Value::Null);
        (
            res.status().as_u16(),
            body["error"]["code"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(
        status_code(raw("{\"items\": [").await.unwrap()).await,
        (400, "malformed_json".into())
    );
    assert_eq!(
        status_code(raw("{\"items\": [], \"tip\": 1}").await.unwrap()).await,
        (422, "invalid_body".into())
    );
    assert_eq!(
        status_code(raw("{\"items\": \"soup\"}").await.unwrap()).await,
        (422, "invalid_body".into())
    );
    assert_eq!(
        status_code(raw("{\"items\": []}").await.unwrap()).await,
        (422, "empty_order".into())
    );
    let big = format!("{{\"items\": [], \"pad\": \"{}\"}}", "x".repeat(200_000));
    let res = client()
        .post(orders.clone())
        .bearer_auth(&a.student_token)
        .insert_header(("Content-Type", "application/json"))
        .send_body(big)
        .await
        .unwrap();
    assert_eq!(status_code(res).await, (413, "body_too_large".into()));
    let unknown_meal = post(
        &hub,
        &a.student_token,
        &format!("/api/v1/schools/{}/orders", a.school),
        json!({"items": [{"meal_id": b.meals[0], "quantity": 1}]}),
    )
    .await;
    assert_eq!(
        (unknown_meal.status, unknown_meal.code()),
        (422, "unknown_meal")
    );
    let r = get(&hub, &a.kitchen_token, "/api/v1/orders/not-a-uuid").await;
    assert_eq!((r.status, r.code()), (400, "invalid_id"));
    let r = get(
        &hub,
        &a.kitchen_token,
        &format!("/api/v1/orders/{}", uuid::Uuid::new_v4()),
    )
    .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = get(&hub, &a.kitchen_token, "/api/v1/nothing-here").await;
    assert_eq!((r.status, r.code()), (404, "route_not_found"));
    let r = post(
        &hub,
        &admin,
        "/api/v1/schools",
        json!({"name": "Y", "time_zone": "Mars/Olympus"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (422, "validation_failed"));
    let dup = post(
        &hub,
        &admin,
        &format!("/api/v1/schools/{}/users", a.school),
        json!({"role": "student", "display_name": "Twin", "email": a.guardian_email}),
    )
    .await;
    assert_eq!((dup.status, dup.code()), (409, "duplicate"));
    // Only the one cancelled order exists in school A: no partial writes above.
    let mine = expect(
        get(
            &hub,
            &a.kitchen_token,
            &format!("/api/v1/schools/{}/orders/live", a.school),
        )
        .await,
        200,
    );
    assert_eq!(mine, json!([]));

    // Allergies: refused with the allergen named, unless kitchen staff record an override.
    expect(
        patch(
            &hub,
            &admin,
            &format!("/api/v1/schools/{}/users/{}", a.school, a.student),
            json!({"allergies": ["Celery"]}),
        )
        .await,
        200,
    );
    let soup = json!({"items": [{"meal_id": a.meals[0], "quantity": 1}]});
    let orders_path = format!("/api/v1/schools/{}/orders", a.school);
    let r = post(&hub, &a.student_token, &orders_path, soup.clone()).await;
    assert_eq!((r.status, r.code()), (422, "allergy_conflict"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("celery"),
        "{}",
        r.body
    );
    let mut overriding = soup.clone();
    overriding["allergy_override"] = json!("celery-free batch, checked by the cook");
    let r = post(&hub, &a.student_token, &orders_path, overriding.clone()).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    overriding["student_id"] = json!(a.student);
    let served = expect(
        post(&hub, &a.kitchen_token, &orders_path, overriding).await,
        201,
    );
    let history = expect(
        get(
            &hub,
            &a.kitchen_token,
            &format!("/api/v1/orders/{}", served["id"].as_str().unwrap()),
        )
        .await,
        200,
    );
    let reason = history["history"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("allergy override") && reason.contains("celery-free batch"),
        "{reason}"
    );

    // Sign-in by phone, however it is written.
    let p = &a.guardian_phone;
    let spaced = format!("{} {}-{}", &p[..2], &p[2..5], &p[5..]);
    let by_phone = login(&hub, &spaced, "guardian-pass-1").await;
    assert_eq!(by_phone["user"]["id"], a.guardian.as_str());

    // A path served with other methods is 405 with `Allow`; a path not served at all is 404.
    let order_path = format!("/api/v1/orders/{}/confirm", uuid::Uuid::new_v4());
    for (method, path, allow) in [
        ("DELETE", "/api/v1/schools", "GET, POST"),
        ("PUT", order_path.as_str(), "POST"),
        ("POST", "/api/v1/me", "GET"),
    ] {
        let req = client()
            .request(method.parse().unwrap(), hub.url(path))
            .bearer_auth(&admin);
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 405, "{method} {path}");
        assert_eq!(
            res.headers().get("allow").unwrap().to_str().unwrap(),
            allow,
            "{method} {path}"
        );
    }
    let nowhere = send(
        client()
            .delete(hub.url("/api/v1/nowhere"))
            .bearer_auth(&admin),
        None,
    )
    .await;
    assert_eq!((nowhere.status, nowhere.code()), (404, "route_not_found"));

    // Every read of an unknown school's data is a 404, lists included.
    let unknown = uuid::Uuid::new_v4();
    for list in ["cards", "readers", "scans", "users", "meals", "counters"] {
        let r = get(&hub, &admin, &format!("/api/v1/schools/{unknown}/{list}")).await;
        assert_eq!(
            (r.status, r.code()),
            (404, "not_found"),
            "{list}: {}",
            r.body
        );
    }

    // The operator's admin token (from `tiffin token`, naming no user) still has a `/me`.
    let me = expect(get(&hub, &admin, "/api/v1/me").await, 200);
    assert_eq!(
        (me["id"].as_str(), me["role"].as_str()),
        (Some("operator"), Some("admin")),
        "{me}"
    );

    // Oversize transition bodies and plain GETs on the socket endpoint get codes too.
    let big = format!("{{\"reason\": \"{}\"}}", "x".repeat(100_000));
    let res = client()
        .post(hub.url(&format!("/api/v1/orders/{order}/confirm")))
        .bearer_auth(&a.kitchen_token)
        .insert_header(("Content-Type", "application/json"))
        .send_body(big)
        .await
        .unwrap();
    assert_eq!(status_code(res).await, (413, "body_too_large".into()));
    let r = get(
        &hub,
        &a.kitchen_token,
        &format!("/api/v1/ws?access_token={}", a.kitchen_token),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "websocket_upgrade_required"));

    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    secrets_stay_out_of(&log, &a);
}
