//! Kitchen screens paired through the API, as a screen and its staff would.

use super::*;

/// What a station screen's credential may call: it moves no order.
pub const STATION_SCREEN_CALLS: [(&str, &str); 4] = [
    ("get", "/api/v1/schools/{school_id}"),
    ("get", "/api/v1/schools/{school_id}/orders/live"),
    ("get", "/api/v1/schools/{school_id}/stations"),
    ("post", "/api/v1/orders/{order_id}/items/{line}/done"),
];

/// What a kitchen or expo screen's credential may call besides a station's.
pub const KITCHEN_SCREEN_CALLS: [(&str, &str); 7] = [
    ("get", "/api/v1/schools/{school_id}/kitchen/summary"),
    ("post", "/api/v1/orders/{order_id}/confirm"),
    ("post", "/api/v1/orders/{order_id}/start"),
    ("post", "/api/v1/orders/{order_id}/ready"),
    ("post", "/api/v1/orders/{order_id}/pickup"),
    ("post", "/api/v1/orders/{order_id}/recall"),
    ("post", "/api/v1/orders/{order_id}/bump"),
];

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

/// A station created through the API; its id.
pub async fn new_station(hub: &Hub, admin: &str, school: &str, name: &str) -> String {
    let path = format!("/api/v1/schools/{school}/stations");
    expect(post(hub, admin, &path, json!({"name": name})).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned()
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
    let body = json!({"code": code, "name": name, "kind": kind});
    enter_pairing(hub, token, school, body).await
}

/// Staff enter a code for a station screen of `station`.
pub async fn enter_station_code(
    hub: &Hub,
    token: &str,
    school: &str,
    code: &str,
    name: &str,
    station: &str,
) -> Reply {
    let body = json!({"code": code, "name": name, "kind": "station", "station_id": station});
    enter_pairing(hub, token, school, body).await
}

pub async fn enter_pairing(hub: &Hub, token: &str, school: &str, body: Value) -> Reply {
    post(
        hub,
        token,
        &format!("/api/v1/schools/{school}/screens"),
        body,
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

/// A screen of `kind` (not a station) paired end to end by `token` (staff of `school`).
pub async fn paired_screen(
    hub: &Hub,
    token: &str,
    school: &str,
    name: &str,
    kind: &str,
) -> ScreenCredential {
    let body = json!({"name": name, "kind": kind});
    paired_with(hub, token, school, body).await
}

/// A station screen of `station` paired end to end by `token` (staff of `school`).
pub async fn paired_station(
    hub: &Hub,
    token: &str,
    school: &str,
    name: &str,
    station: &str,
) -> ScreenCredential {
    let body = json!({"name": name, "kind": "station", "station_id": station});
    paired_with(hub, token, school, body).await
}

async fn paired_with(hub: &Hub, token: &str, school: &str, mut body: Value) -> ScreenCredential {
    let (code, secret) = start_pairing(hub).await;
    body["code"] = json!(code);
    expect(enter_pairing(hub, token, school, body).await, 201);
    let tokens = expect(claim_screen(hub, &secret).await, 200);
    ScreenCredential {
        id: tokens["screen"]["id"].as_str().unwrap().to_owned(),
        access: tokens["access_token"].as_str().unwrap().to_owned(),
        refresh: tokens["refresh_token"].as_str().unwrap().to_owned(),
    }
}
