//! A screen revoked through one node loses its sockets on every node at once.

use super::closed;
use crate::common::*;

/// `/readyz` until the node hears the others over Redis.
async fn hearing_the_others(hub: &Hub) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = send(client().get(hub.url("/readyz")), None).await;
        if reply.body["redis"] == "ok" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis never ok: {}",
            reply.body
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two nodes on one PostgreSQL and one Redis: a screen's socket on node B closes as soon
/// as the screen is revoked through node A (its access token still has 15 minutes to run),
/// while the socket of another screen on B stays open.
#[actix_web::test]
async fn a_screen_revoked_on_one_node_is_closed_on_the_other() {
    let db = TestDb::new(Backend::Postgres).await;
    let redis = PrivateRedis::start();
    let mut env = hub_env(&db, None);
    env.push(("TIFFIN_REDIS_URL".into(), redis.url()));
    let (a, b) = (Hub::start(env.clone()), Hub::start(env));
    for node in [&a, &b] {
        hearing_the_others(node).await;
    }
    let admin = a.admin_token();
    let f = fixture(&a, &admin, "twonodes").await;
    let revoked = paired_screen(&a, &f.kitchen_token, &f.school, "Hot line", "kitchen").await;
    let kept = paired_screen(&a, &f.kitchen_token, &f.school, "Pass", "expo").await;
    let (mut on_b, _) = subscribe(&b, &revoked.access, &f.school, None).await;
    let (mut kept_on_b, _) = subscribe(&b, &kept.access, &f.school, None).await;
    assert_eq!(next_json(&mut kept_on_b).await["type"], "snapshot");

    let url = a.url(&format!(
        "/api/v1/schools/{}/screens/{}",
        f.school, revoked.id
    ));
    let r = send(client().delete(url).bearer_auth(&f.kitchen_token), None).await;
    assert_eq!(r.status, 204);
    let (code, reason) = closed(&mut on_b).await;
    assert_eq!((code, reason.as_str()), (1008, "screen revoked"));

    // The other screen on B still hears the kitchen.
    let order = expect(place_order(&a, &f, "twonodes-1", 1).await, 201);
    loop {
        let frame = next_json(&mut kept_on_b).await;
        if frame["data"]["order"]["id"] == order["id"] {
            break;
        }
    }
    drop((a, b));
    db.drop_database().await;
}
