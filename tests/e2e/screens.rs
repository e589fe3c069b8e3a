//! Kitchen screens: pairing with a short code, the screen's own credential (renewed,
//! surviving restarts, narrowed to its school and kind), listing and revoking; and the pages
//! in a real browser through pairing, renewals, a restart, a network cut and a revocation.

use crate::common::*;

mod browser;
mod nodes;

#[actix_web::test]
async fn screens_pair_renew_and_are_revoked_on_sqlite() {
    screens_pair_renew_and_are_revoked(Backend::Sqlite).await;
}

#[actix_web::test]
async fn screens_pair_renew_and_are_revoked_on_postgres() {
    screens_pair_renew_and_are_revoked(Backend::Postgres).await;
}

fn with_screens(
    mut env: Vec<(String, String)>,
    code_ttl: i64,
    access_ttl: i64,
) -> Vec<(String, String)> {
    env.push((
        "TIFFIN_SCREENS__PAIRING_CODE_TTL_SECS".into(),
        code_ttl.to_string(),
    ));
    env.push((
        "TIFFIN_SCREENS__ACCESS_TOKEN_TTL_SECS".into(),
        access_ttl.to_string(),
    ));
    env
}

/// Reads a socket until it closes; the close frame's code and reason.
async fn closed(socket: &mut Socket) -> (u16, String) {
    loop {
        let frame = actix_web::rt::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the socket stayed open 10 s");
        match frame {
            Some(Ok(ws::Frame::Close(Some(reason)))) => {
                return (
                    u16::from(reason.code),
                    reason.description.unwrap_or_default(),
                );
            }
            Some(Ok(ws::Frame::Ping(p))) => {
                let _ = socket.send(ws::Message::Pong(p)).await;
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

async fn screens_pair_renew_and_are_revoked(backend: Backend) {
    let db = TestDb::new(backend).await;
    let hub = Hub::start(with_screens(hub_env(&db, None), 10, 900));
    let admin = hub.admin_token();
    let a = fixture(&hub, &admin, "scra").await;
    let b = fixture(&hub, &admin, "other").await;

    // A new screen shows a code of 8 unambiguous characters and waits.
    let (code, secret) = start_pairing(&hub).await;
    assert_eq!(code.len(), 9, "{code}");
    assert!(
        code.chars().enumerate().all(|(i, c)| if i == 4 {
            c == '-'
        } else {
            c.is_ascii_uppercase() || c.is_ascii_digit()
        }) && !code.contains(['0', 'O', '1', 'I', 'L']),
        "{code}"
    );
    let waiting = claim_screen(&hub, &secret).await;
    assert_eq!(
        (waiting.status, &waiting.body["status"]),
        (202, &json!("waiting"))
    );

    // Bad codes are refused with clear codes and nothing is written.
    for bad in ["ABC", "ABCD-EFG0", ""] {
        let r = enter_code(
            &hub,
            &a.kitchen_token,
            &a.school,
            bad,
            "Hot line",
            "station",
        )
        .await;
        assert_eq!((r.status, r.code()), (422, "pairing_code_invalid"), "{bad}");
    }
    let unknown = if code == "ABCD-EFGH" {
        "HGFE-DCBA"
    } else {
        "ABCD-EFGH"
    };
    let r = enter_code(
        &hub,
        &a.kitchen_token,
        &a.school,
        unknown,
        "Hot line",
        "kitchen",
    )
    .await;
    assert_eq!((r.status, r.code()), (422, "pairing_code_invalid"));
    // A station screen names one of the school's stations; no other kind names one. (The
    // admin enters these: staff may enter ten codes a minute.)
    let hot_line = new_station(&hub, &admin, &a.school, "Hot line").await;
    let elsewhere = new_station(&hub, &admin, &b.school, "Hot line").await;
    let r = enter_code(&hub, &admin, &a.school, &code, "Hot", "station").await;
    assert_eq!(
        (r.status, r.code(), &r.body["error"]["field"]),
        (422, "station_required", &json!("station_id"))
    );
    let unknown_station = uuid::Uuid::new_v4().to_string();
    for station in [&elsewhere, &unknown_station] {
        let r = enter_station_code(&hub, &admin, &a.school, &code, "Hot", station).await;
        assert_eq!((r.status, r.code()), (422, "unknown_station"), "{station}");
    }
    let mut board = json!({"code": code, "name": "Board", "kind": "board"});
    board["station_id"] = json!(hot_line);
    let r = enter_pairing(&hub, &admin, &a.school, board.clone()).await;
    assert_eq!((r.status, r.code()), (422, "validation_failed"));
    board["station_id"] = json!("not-a-uuid");
    let r = enter_pairing(&hub, &admin, &a.school, board).await;
    assert_eq!((r.status, r.code()), (422, "invalid_body"));
    let r = enter_code(&hub, &a.kitchen_token, &a.school, &code, "Hot line", "oven").await;
    assert_eq!((r.status, r.code()), (422, "invalid_body"));
    let r = enter_code(
        &hub,
        &a.student_token,
        &a.school,
        &code,
        "Hot line",
        "station",
    )
    .await;
    assert_eq!(r.status, 403, "a student paired a screen");
    let r = enter_code(
        &hub,
        &b.kitchen_token,
        &a.school,
        &code,
        "Hot line",
        "station",
    )
    .await;
    assert_eq!(r.status, 403, "another school's staff paired a screen");
    assert_eq!(
        expect(
            get(
                &hub,
                &admin,
                &format!("/api/v1/schools/{}/screens", a.school)
            )
            .await,
            200
        ),
        json!([])
    );

    // Staff enter it as typed (any case, spaces); a second entry is refused.
    let typed = code.to_lowercase().replace('-', " ");
    let screen = expect(
        enter_station_code(
            &hub,
            &a.kitchen_token,
            &a.school,
            &typed,
            "Hot line",
            &hot_line,
        )
        .await,
        201,
    );
    assert_eq!(
        (&screen["name"], &screen["kind"], &screen["school_name"]),
        (&json!("Hot line"), &json!("station"), &json!("scra School"))
    );
    assert_eq!(screen["station_id"], json!(hot_line));
    let r = enter_code(&hub, &a.kitchen_token, &a.school, &code, "Again", "board").await;
    assert_eq!((r.status, r.code()), (409, "pairing_code_used"));

    // The screen collects its credential once.
    let tokens = expect(claim_screen(&hub, &secret).await, 200);
    assert_eq!(tokens["screen"]["id"], screen["id"]);
    let r = claim_screen(&hub, &secret).await;
    assert_eq!((r.status, r.code()), (422, "pairing_code_invalid"));
    let screen_id = screen["id"].as_str().unwrap().to_owned();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let first_refresh = tokens["refresh_token"].as_str().unwrap().to_owned();

    // It sees its own kitchen's orders and nothing else; it moves no order.
    let live = format!("/api/v1/schools/{}/orders/live", a.school);
    expect(get(&hub, &access, &live).await, 200);
    let other = format!("/api/v1/schools/{}/orders/live", b.school);
    assert_eq!(get(&hub, &access, &other).await.status, 403);
    let summary = format!("/api/v1/schools/{}/kitchen/summary", a.school);
    assert_eq!(get(&hub, &access, &summary).await.code(), "forbidden");
    let r = post(
        &hub,
        &access,
        &format!("/api/v1/schools/{}/orders", a.school),
        json!({"student_id": a.student, "items": [{"meal_id": a.meals[0], "quantity": 1}]}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "forbidden"),
        "a screen placed an order"
    );

    // Renewal rotates the refresh token; the one before still works once more (a lost
    // answer), the one before that does not.
    let second = expect(renew_screen(&hub, &first_refresh).await, 200);
    let second_refresh = second["refresh_token"].as_str().unwrap().to_owned();
    let third = expect(renew_screen(&hub, &second_refresh).await, 200);
    let r = renew_screen(&hub, &first_refresh).await;
    assert_eq!((r.status, r.code()), (401, "refresh_token_invalid"));
    let third_refresh = third["refresh_token"].as_str().unwrap().to_owned();
    let fourth = expect(renew_screen(&hub, &second_refresh).await, 200);
    let mut refresh = fourth["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh, third_refresh);

    // The credential survives a hub restart (it is in the database, hashed).
    let env = hub.kill();
    let hub = Hub::start(env);
    let renewed = expect(renew_screen(&hub, &refresh).await, 200);
    refresh = renewed["refresh_token"].as_str().unwrap().to_owned();
    let access = renewed["access_token"].as_str().unwrap().to_owned();
    let listed = expect(
        get(
            &hub,
            &a.kitchen_token,
            &format!("/api/v1/schools/{}/screens", a.school),
        )
        .await,
        200,
    );
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], json!(screen_id));
    assert!(listed[0]["last_seen_at"].is_string(), "{listed}");

    // Revocation: refused to another school, then the socket closes at once, the credential
    // and the access token stop working, and the screen leaves the list.
    let (mut socket, _) = subscribe(&hub, &access, &a.school, None).await;
    let revoke = |token: &str, school: &str| {
        let url = hub.url(&format!("/api/v1/schools/{school}/screens/{screen_id}"));
        let token = token.to_owned();
        async move { send(client().delete(url).bearer_auth(token), None).await }
    };
    // Another school's staff: not their school, and no such screen in theirs.
    assert_eq!(revoke(&b.kitchen_token, &a.school).await.status, 403);
    assert_eq!(revoke(&b.kitchen_token, &b.school).await.status, 404);
    assert_eq!(revoke(&a.kitchen_token, &a.school).await.status, 204);
    let (close_code, reason) = closed(&mut socket).await;
    assert_eq!((close_code, reason.as_str()), (1008, "screen revoked"));
    let r = revoke(&a.kitchen_token, &a.school).await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = renew_screen(&hub, &refresh).await;
    assert_eq!((r.status, r.code()), (401, "screen_revoked"));
    let r = get(&hub, &access, &live).await;
    assert_eq!((r.status, r.code()), (401, "screen_revoked"));
    assert!(
        client().ws(hub.ws_url(&access)).connect().await.is_err(),
        "a revoked screen's socket was upgraded"
    );
    assert_eq!(
        expect(
            get(
                &hub,
                &admin,
                &format!("/api/v1/schools/{}/screens", a.school)
            )
            .await,
            200
        ),
        json!([])
    );

    // A code nobody enters expires: staff and the screen are told so.
    let (code, secret) = start_pairing(&hub).await;
    actix_web::rt::time::sleep(Duration::from_secs(11)).await;
    let r = enter_code(&hub, &admin, &a.school, &code, "Late", "board").await;
    assert_eq!((r.status, r.code()), (409, "pairing_code_expired"));
    let r = claim_screen(&hub, &secret).await;
    assert_eq!((r.status, r.code()), (409, "pairing_code_expired"));
    drop(hub);
    db.drop_database().await;
}
