//! Card readers: registered, signed requests, scans and their hand-overs.

use super::*;

/// A registered card reader and its secret.
#[derive(Clone)]
pub struct ReaderKey {
    pub id: String,
    pub secret: String,
}

/// The reader's signature: hex HMAC-SHA256 of `{timestamp}\n{METHOD}\n{path}\n{body}`.
pub fn reader_signature(secret: &str, timestamp: i64, path: &str, body: &[u8]) -> String {
    tiffin_harness::reader::signature(secret, timestamp, path, body).unwrap()
}

/// A signed reader request, with the reader's clock `skew_secs` off the hub's.
pub async fn reader_post_at(
    hub: &Hub,
    reader: &ReaderKey,
    path: &str,
    body: &Value,
    skew_secs: i64,
) -> Reply {
    let timestamp = chrono::Utc::now().timestamp_millis() + skew_secs * 1000;
    let body = body.to_string();
    let signature = reader_signature(&reader.secret, timestamp, path, body.as_bytes());
    signed_send(hub, &reader.id, timestamp, &signature, path, body).await
}

pub async fn reader_post(hub: &Hub, reader: &ReaderKey, path: &str, body: &Value) -> Reply {
    reader_post_at(hub, reader, path, body, 0).await
}

/// A reader's request to `url`, signed with `signature` over `timestamp`.
pub fn signed_request(
    url: &str,
    reader_id: &str,
    timestamp: i64,
    signature: &str,
) -> awc::ClientRequest {
    tiffin_harness::reader::signed_request(&client(), url, reader_id, timestamp, signature)
}

/// Sends exactly these headers and body (to replay or forge a request).
pub async fn signed_send(
    hub: &Hub,
    reader_id: &str,
    timestamp: i64,
    signature: &str,
    path: &str,
    body: String,
) -> Reply {
    let req = signed_request(&hub.url(path), reader_id, timestamp, signature);
    try_send_raw(req, body).await.expect("request")
}

pub async fn register_reader(
    hub: &Hub,
    admin: &str,
    school: &str,
    name: &str,
    counter: &str,
) -> ReaderKey {
    let made = expect(
        post(
            hub,
            admin,
            &format!("/api/v1/schools/{school}/readers"),
            json!({"name": name, "counter_id": counter}),
        )
        .await,
        201,
    );
    ReaderKey {
        id: made["id"].as_str().unwrap().to_owned(),
        secret: made["secret"].as_str().unwrap().to_owned(),
    }
}

pub async fn scan_card(hub: &Hub, reader: &ReaderKey, seq: i64, uid: &str) -> Value {
    expect(
        reader_post(
            hub,
            reader,
            "/api/v1/reader/scans",
            &json!({"seq": seq, "card_uid": uid}),
        )
        .await,
        200,
    )
}

pub async fn counter_ids(hub: &Hub, token: &str, school: &str) -> Vec<String> {
    expect(
        get(hub, token, &format!("/api/v1/schools/{school}/counters")).await,
        200,
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|c| c["id"].as_str().unwrap().to_owned())
    .collect()
}

pub async fn ready_order(hub: &Hub, f: &Fixture, key: &str) -> String {
    let id = expect(place_order(hub, f, key, 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(hub, f, &id, &["confirm", "start", "ready"]).await;
    id
}

pub async fn pickups_of(hub: &Hub, f: &Fixture, order: &str) -> usize {
    history_of(hub, &f.kitchen_token, order, "order.picked_up")
        .await
        .len()
}
