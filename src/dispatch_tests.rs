//! Dispatch with the real store and outbox: expiry, give-up age and provider rate limits. The
//! sender here stands in for an external provider and records what reaches it.

use crate::db::models::{OutboxRow, now};
use crate::db::schema::outbox;
use crate::db::{self, DatabaseUrl, Db};
use crate::repo;
use crate::store::DieselStore;
use crate::supervision_tests::school;
use actix::Actor;
use async_trait::async_trait;
use diesel_async::RunQueryDsl;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiffin_actors::ports::{OutboxMessage, SendError, Sender};
use tiffin_actors::{DeliveryPolicy, Dispatcher, RateLimit};

/// A provider that accepts everything except the addresses it is told to fail.
#[derive(Default)]
struct Provider {
    received: Mutex<Vec<(Instant, String)>>,
    failing: Vec<String>,
}

struct Shared(Arc<Provider>);

#[async_trait]
impl Sender for Shared {
    async fn send(&self, message: &OutboxMessage) -> Result<(), SendError> {
        self.0
            .received
            .lock()
            .unwrap()
            .push((Instant::now(), message.address.clone()));
        if self.0.failing.contains(&message.address) {
            Err(SendError::Transient("provider timeout".into()))
        } else {
            Ok(())
        }
    }
}

async fn database() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(dir.path().join("t.db").display().to_string());
    db::migrate(&url).await.unwrap();
    let db = Db::connect(&url, 4).unwrap();
    (dir, db)
}

async fn queue(
    db: &Db,
    school: &str,
    recipient: &str,
    seq: i64,
    address: &str,
    tweak: impl FnOnce(&mut OutboxRow),
) -> String {
    let at = now();
    let mut row = OutboxRow {
        id: uuid::Uuid::now_v7().to_string(),
        school_id: school.to_owned(),
        event_seq: seq,
        recipient_id: recipient.to_owned(),
        channel: "sms".into(),
        template: "order_ready".into(),
        address: address.to_owned(),
        locale: "en".into(),
        payload: "{}".into(),
        status: "pending".into(),
        attempts: 0,
        next_attempt_at: at,
        claimed_until: None,
        last_error: None,
        created_at: at,
        sent_at: None,
        priority: 1,
        expires_at: Some(at + chrono::Duration::hours(1)),
        fallback_for: None,
    };
    tweak(&mut row);
    insert(db, &row).await.unwrap();
    row.id
}

async fn insert(db: &Db, row: &OutboxRow) -> Result<(), db::DbError> {
    crate::with_conn!(db, |conn| diesel::insert_into(outbox::table)
        .values(row)
        .execute(conn)
        .await)?;
    Ok(())
}

async fn settled(db: &Db, ids: &[String]) -> Vec<OutboxRow> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut rows = Vec::new();
        for id in ids {
            rows.push(repo::outbox_row(db, id).await.unwrap().unwrap());
        }
        if rows.iter().all(|r| r.status != "pending") {
            return rows;
        }
        assert!(Instant::now() < deadline, "still pending: {rows:?}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start(db: &Db, provider: &Arc<Provider>, policy: DeliveryPolicy) -> actix::Addr<Dispatcher> {
    let store = Arc::new(DieselStore::new(db.clone(), 120));
    let sender: Arc<dyn Sender> = Arc::new(Shared(provider.clone()));
    Dispatcher::new(
        store,
        HashMap::from([("sms".to_owned(), sender)]),
        Duration::from_millis(20),
        policy,
    )
    .start()
}

#[actix_web::test]
async fn expired_and_too_old_messages_are_never_sent_late() {
    let (_dir, db) = database().await;
    let s = school(&db, "Expiry").await;
    let provider = Arc::new(Provider {
        failing: vec!["+1000".into()],
        ..Provider::default()
    });
    let long_ago = now() - chrono::Duration::minutes(10);
    let stale = queue(&db, &s.id, &s.student, 1, "+1999", |r| {
        r.expires_at = Some(now() - chrono::Duration::seconds(1));
    })
    .await;
    let failing_for_long = queue(&db, &s.id, &s.student, 2, "+1000", |r| {
        r.created_at = long_ago;
        r.attempts = 2;
    })
    .await;
    let fine = queue(&db, &s.id, &s.student, 3, "+1555", |_| ()).await;
    let _dispatcher = start(
        &db,
        &provider,
        DeliveryPolicy {
            max_age_secs: 60,
            ..DeliveryPolicy::default()
        },
    );
    let rows = settled(&db, &[stale, failing_for_long, fine.clone()]).await;
    let outcome: Vec<(&str, i32, Option<&str>)> = rows
        .iter()
        .map(|r| (r.status.as_str(), r.attempts, r.last_error.as_deref()))
        .collect();
    assert_eq!(outcome[0], ("expired", 0, Some("past its expiry")));
    assert_eq!(outcome[1].0, "dead");
    assert_eq!(outcome[1].1, 3);
    assert!(
        outcome[1].2.unwrap().contains("gave up after 3 attempts"),
        "{outcome:?}"
    );
    assert_eq!(outcome[2], ("sent", 1, None));
    let received: Vec<String> = provider
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, a)| a.clone())
        .collect();
    assert!(
        !received.contains(&"+1999".to_owned()),
        "the expired one never reached the provider"
    );
    let attempts = repo::delivery_attempts_of(&db, &[fine]).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!((attempts[0].1, attempts[0].3.as_str()), (1, "sent"));
}

#[actix_web::test]
async fn a_provider_rate_limit_spaces_sends_and_loses_none() {
    let (_dir, db) = database().await;
    let s = school(&db, "Bucket").await;
    let provider = Arc::new(Provider::default());
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(queue(&db, &s.id, &s.student, n + 1, &format!("+1{n}"), |_| ()).await);
    }
    let _dispatcher = start(
        &db,
        &provider,
        DeliveryPolicy {
            sms: RateLimit {
                per_sec: 2,
                burst: 1,
            },
            ..DeliveryPolicy::default()
        },
    );
    let rows = settled(&db, &ids).await;
    assert!(
        rows.iter().all(|r| r.status == "sent" && r.attempts == 1),
        "{rows:?}"
    );
    let received = provider.received.lock().unwrap().clone();
    assert_eq!(received.len(), 4, "each once");
    // Two a second, one at a time: the fourth no sooner than 1.5 s after the first.
    let spread = received[3].0 - received[0].0;
    assert!(spread >= Duration::from_millis(1400), "{spread:?}");
}
