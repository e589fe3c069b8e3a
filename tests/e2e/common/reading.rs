//! Reading what the hub did: order history, notification statuses, metrics.

use super::*;

/// A time zone where it is about noon now, so a test's times of day never cross midnight.
pub fn noon_zone() -> String {
    use chrono::{Timelike, Utc};
    match (12 - Utc::now().hour() as i32 + 24 + 12) % 24 - 12 {
        0 => "Etc/GMT".to_owned(),
        n if n > 0 => format!("Etc/GMT-{n}"),
        n => format!("Etc/GMT+{}", -n),
    }
}

/// The kitchen at a glance (`GET .../kitchen/summary`), as the fixture's kitchen staff see it.
pub async fn kitchen_summary(hub: &Hub, f: &Fixture) -> Value {
    expect(
        get(
            hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/kitchen/summary", f.school),
        )
        .await,
        200,
    )
}

/// A counter of the hub's `/metrics`, 0 if it has not been recorded yet.
pub async fn metric(hub: &Hub, name: &str) -> f64 {
    let text = String::from_utf8(
        client()
            .get(hub.url("/metrics"))
            .send()
            .await
            .unwrap()
            .body()
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The history entries of one order with the given event type.
pub async fn history_of(hub: &Hub, token: &str, order: &str, kind: &str) -> Vec<Value> {
    let got = expect(
        get(hub, token, &format!("/api/v1/orders/{order}")).await,
        200,
    );
    got["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["type"] == kind)
        .cloned()
        .collect()
}

/// Polls the delivery status of an order's notifications until `done` holds for them.
pub async fn statuses_until(
    hub: &Hub,
    token: &str,
    order: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let rows = expect(
            get(hub, token, &format!("/api/v1/orders/{order}/notifications")).await,
            200,
        );
        let rows = rows.as_array().unwrap().clone();
        if done(&rows) {
            return rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivery status never settled: {rows:#?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn row<'a>(rows: &'a [Value], recipient: &str, kind: &str, channel: &str) -> &'a Value {
    rows.iter()
        .find(|r| {
            r["recipient_id"] == recipient && r["template"] == kind && r["channel"] == channel
        })
        .unwrap_or_else(|| panic!("no {kind} {channel} row for {recipient}: {rows:#?}"))
}

/// Registers a push device for the token's user.
pub async fn add_device(hub: &Hub, token: &str, platform: &str, device: &str) {
    expect(
        post(
            hub,
            token,
            "/api/v1/me/devices",
            json!({"platform": platform, "token": device}),
        )
        .await,
        201,
    );
}

/// The one-time code in a message's text.
pub fn six_digit_code(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap_or_else(|| panic!("no 6-digit code in {text:?}"))
        .to_owned()
}
