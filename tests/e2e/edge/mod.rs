//! Rules at the hub's edge: roles and schools, input, rate limits, the wire, security.

mod people;
mod rules;
mod security;
mod wire;

use crate::common::*;

/// A hub logging at debug level (to `hub.log` in the database's directory) with two schools.
async fn two_schools_on_a_debug_logging_hub(
    db: &TestDb,
) -> (std::path::PathBuf, Hub, String, Fixture, Fixture) {
    let log = db.dir().join("hub.log");
    let mut env = hub_env(db, None);
    env.retain(|(k, _)| k != "RUST_LOG");
    env.push(("RUST_LOG".into(), "debug".into()));
    let hub = Hub::start_logging(env, Some(&log));
    let admin = hub.admin_token();
    let a = fixture(&hub, &admin, "a").await;
    let b = fixture(&hub, &admin, "b").await;
    (log, hub, admin, a, b)
}

/// Secrets stay out of the log, even at debug level: the signing key, passwords, and
/// access tokens (which WebSocket clients send in the query string).
fn secrets_stay_out_of(log: &std::path::Path, a: &Fixture) {
    let logged = std::fs::read_to_string(log).unwrap();
    for secret in [
        JWT_SECRET,
        "guardian-pass-1",
        "kitchen-pass-1",
        a.kitchen_token.as_str(),
        a.student_token.as_str(),
    ] {
        assert!(
            !logged.contains(secret),
            "the log shows a secret: {}",
            &secret[..8]
        );
    }
}
