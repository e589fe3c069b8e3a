//! WebSocket subscriptions to the hub and the frames read from them.

use super::*;

pub type Socket = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

/// Subscribes to a topic; returns the socket after its `subscribed` frame.
pub async fn subscribe_topic(
    hub: &Hub,
    token: &str,
    topic: &str,
    since: Option<i64>,
) -> (Socket, Value) {
    let (_, mut socket) = client()
        .ws(hub.ws_url(token))
        .connect()
        .await
        .expect("ws connect");
    let mut frame = json!({"type": "subscribe", "topic": topic});
    if let Some(since) = since {
        frame["since"] = json!(since);
    }
    socket
        .send(ws::Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    let first = next_json(&mut socket).await;
    assert_eq!(first["type"], "subscribed", "{first}");
    (socket, first)
}

/// Subscribes to a kitchen; returns the socket after its `subscribed` frame.
pub async fn subscribe(
    hub: &Hub,
    token: &str,
    school: &str,
    since: Option<i64>,
) -> (Socket, Value) {
    subscribe_topic(hub, token, &format!("kitchen:{school}"), since).await
}

/// A fresh kitchen subscription: `subscribed`, then a snapshot of the live orders.
pub async fn open_kitchen_socket(hub: &Hub, token: &str, school: &str) -> Socket {
    let (mut socket, subscribed) = subscribe(hub, token, school, None).await;
    let snapshot = next_json(&mut socket).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["seq"], subscribed["seq"]);
    assert_eq!(snapshot["data"]["reason"], "fresh");
    socket
}

pub async fn next_json<T>(socket: &mut actix_codec::Framed<T, ws::Codec>) -> Value
where
    T: actix_codec::AsyncRead + actix_codec::AsyncWrite + Unpin,
{
    loop {
        let frame = actix_web::rt::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no frame within 10 s")
            .expect("socket closed")
            .expect("protocol error");
        match frame {
            ws::Frame::Text(bytes) => return serde_json::from_slice(&bytes).unwrap(),
            ws::Frame::Ping(p) => socket.send(ws::Message::Pong(p)).await.unwrap(),
            _ => {}
        }
    }
}
