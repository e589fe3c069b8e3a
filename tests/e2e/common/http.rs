//! Requests to the hub and their answers.

use super::*;
use awc::Client;

pub fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).finish()
}

/// A response's status and JSON body (Null when empty or not JSON).
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Sends a request; `None` when no answer came back (the hub is down or dying).
pub async fn try_send(req: awc::ClientRequest, body: Option<&Value>) -> Option<Reply> {
    reply_of(
        match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        }
        .ok()?,
    )
    .await
}

/// Sends a raw body; `None` when no answer came back.
pub async fn try_send_raw(req: awc::ClientRequest, body: String) -> Option<Reply> {
    reply_of(req.send_body(body).await.ok()?).await
}

async fn reply_of<S>(mut res: awc::ClientResponse<S>) -> Option<Reply>
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    let bytes = res.body().limit(4 << 20).await.ok()?;
    Some(Reply {
        status: res.status().as_u16(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry_after: res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    })
}

pub async fn send(req: awc::ClientRequest, body: Option<Value>) -> Reply {
    try_send(req, body.as_ref()).await.expect("request")
}

pub async fn get(hub: &Hub, token: &str, path: &str) -> Reply {
    send(client().get(hub.url(path)).bearer_auth(token), None).await
}

pub async fn post(hub: &Hub, token: &str, path: &str, body: Value) -> Reply {
    send(client().post(hub.url(path)).bearer_auth(token), Some(body)).await
}

pub async fn put(hub: &Hub, token: &str, path: &str, body: Value) -> Reply {
    send(client().put(hub.url(path)).bearer_auth(token), Some(body)).await
}

pub async fn patch(hub: &Hub, token: &str, path: &str, body: Value) -> Reply {
    send(client().patch(hub.url(path)).bearer_auth(token), Some(body)).await
}

/// Signs `login` in and turns email on for these kinds of message (routine news is not
/// emailed by default); returns the access token.
pub async fn choose_email(hub: &Hub, login: &str, password: &str, kinds: &[&str]) -> String {
    let signed_in = expect(
        send(
            client().post(hub.url("/api/v1/auth/login")),
            Some(serde_json::json!({"login": login, "password": password})),
        )
        .await,
        200,
    );
    let token = signed_in["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let preferences: Vec<Value> = kinds
        .iter()
        .map(|kind| serde_json::json!({"kind": kind, "channel": "email", "enabled": true}))
        .collect();
    expect(
        put(
            hub,
            &token,
            "/api/v1/me/preferences",
            serde_json::json!({ "preferences": preferences }),
        )
        .await,
        200,
    );
    token
}

/// Asserts the status and returns the body.
#[track_caller]
pub fn expect(reply: Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "unexpected answer: {}", reply.body);
    reply.body
}

/// Creates something with a POST that must answer 201; its id.
pub async fn created_id(hub: &Hub, token: &str, path: &str, body: Value) -> String {
    let made = expect(post(hub, token, path, body).await, 201);
    made["id"].as_str().unwrap().to_owned()
}
