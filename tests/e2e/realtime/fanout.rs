//! Fan-out: one kitchen's frames reach a thousand screens byte for byte, in order.

use crate::common::*;

const SOCKETS: usize = 1_000;
/// Orders placed and confirmed while the screens watch: two frames each.
const ORDERS: usize = 5;

/// The next text frame's bytes exactly as they came off the wire.
async fn next_text(socket: &mut Socket) -> actix_web::web::Bytes {
    loop {
        let frame = actix_web::rt::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("no frame within 30 s")
            .expect("socket closed")
            .expect("protocol error");
        match frame {
            ws::Frame::Text(bytes) => return bytes,
            ws::Frame::Ping(p) => socket.send(ws::Message::Pong(p)).await.unwrap(),
            _ => {}
        }
    }
}

/// A thousand kitchen screens on one kitchen: every frame the kitchen publishes reaches
/// every screen with the same bytes, in the same order, numbered without a gap.
#[actix_web::test]
async fn every_frame_reaches_a_thousand_screens_byte_identical_and_in_order() {
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "fanout").await;
    expect(place_order(&hub, &f, "fanout-before", 1).await, 201);
    let mut sockets = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS / 100 {
        let opened = futures_util::future::join_all(
            (0..100).map(|_| open_kitchen_socket(&hub, &f.kitchen_token, &f.school)),
        )
        .await;
        sockets.extend(opened);
    }
    let mut orders = Vec::new();
    for n in 0..ORDERS {
        let id = expect(place_order(&hub, &f, &format!("fanout-{n}"), 1).await, 201)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/api/v1/orders/{id}/confirm");
        expect(post(&hub, &f.kitchen_token, &path, json!({})).await, 200);
        orders.push(id);
    }
    // The first screen's frames: the kitchen's events in order, placed then confirmed.
    let mut expected = Vec::new();
    for _ in 0..2 * ORDERS {
        expected.push(next_text(&mut sockets[0]).await);
    }
    let seen: Vec<Value> = expected
        .iter()
        .map(|bytes| serde_json::from_slice(bytes).unwrap())
        .collect();
    let first = seen[0]["seq"].as_i64().unwrap();
    for (n, frame) in seen.iter().enumerate() {
        assert_eq!(frame["seq"], first + n as i64, "gapless: {frame}");
        let kind = if n % 2 == 0 {
            "order.placed"
        } else {
            "order.confirmed"
        };
        assert_eq!(frame["type"], kind, "{frame}");
        assert_eq!(frame["data"]["order_id"], orders[n / 2], "{frame}");
    }
    // Every other screen: the same frames, byte for byte, in the same order.
    for (n, socket) in sockets.iter_mut().enumerate().skip(1) {
        for (k, want) in expected.iter().enumerate() {
            let got = next_text(socket).await;
            assert_eq!(got, *want, "screen {n}, frame {k}");
        }
    }
    drop(sockets);
    drop(hub);
    db.drop_database().await;
}
