//! Kitchen screens paired through the API, as a screen and its staff would.

use super::*;

/// A paired screen's credential.
pub struct ScreenCredential {
    pub id: String,
    pub access: String,
    pub refresh: String,
}

/// A new screen's pairing code and the secret it waits with.
pub async fn start_pairing(hub: &Hub) -> (String, String) {
    let pairing = expect(
        send(
            client().post(hub.url("/api/v1/auth/screens/pairings")),
            None,
        )
        .await,
        201,
    );
    (
        pairing["code"].as_str().unwrap().to_owned(),
        pairing["pairing_secret"].as_str().unwrap().to_owned(),
    )
}

/// Staff enter a code for their school.
pub async fn enter_code(
    hub: &Hub,
    token: &str,
    school: &str,
    code: &str,
    name: &str,
    kind: &str,
) -> Reply {
    post(
        hub,
        token,
        &format!("/api/v1/schools/{school}/screens"),
        json!({"code": code, "name": name, "kind": kind}),
    )
    .await
}

pub async fn claim_screen(hub: &Hub, secret: &str) -> Reply {
    send(
        client().post(hub.url("/api/v1/auth/screens/claim")),
        Some(json!({"pairing_secret": secret})),
    )
    .await
}

pub async fn renew_screen(hub: &Hub, refresh: &str) -> Reply {
    send(
        client().post(hub.url("/api/v1/auth/screens/refresh")),
        Some(json!({"refresh_token": refresh})),
    )
    .await
}

/// A screen of `kind` paired end to end by `token` (staff of `school`).
pub async fn paired_screen(
    hub: &Hub,
    token: &str,
    school: &str,
    name: &str,
    kind: &str,
) -> ScreenCredential {
    let (code, secret) = start_pairing(hub).await;
    expect(enter_code(hub, token, school, &code, name, kind).await, 201);
    let tokens = expect(claim_screen(hub, &secret).await, 200);
    ScreenCredential {
        id: tokens["screen"]["id"].as_str().unwrap().to_owned(),
        access: tokens["access_token"].as_str().unwrap().to_owned(),
        refresh: tokens["refresh_token"].as_str().unwrap().to_owned(),
    }
}
