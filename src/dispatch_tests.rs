//! Dispatch with the real store and outbox: expiry, give-up age and provider rate limits. The
//! sender here stands in for an external provider and records what reaches it.

use crate::db::models::{OutboxRow, now};
use crate::db::schema::outbox;
use crate::db::test_support::{
    database, new_order, on_both_backends, pg_admin, pg_database, school,
};
use crate::db::{self, Db};
use crate::store;
use crate::store::DieselStore;
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
    /// When set, each send waits here for a permit: a provider that has stopped answering.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    /// The sends it says it carries at once; 0 for the default.
    parallel: usize,
}

struct Shared(Arc<Provider>);

#[async_trait]
impl Sender for Shared {
    async fn send(&self, message: &OutboxMessage) -> Result<(), SendError> {
        if let Some(gate) = &self.0.gate {
            drop(gate.acquire().await.unwrap());
        }
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

    fn parallel(&self) -> usize {
        match self.0.parallel {
            0 => tiffin_actors::ports::DEFAULT_PARALLEL_SENDS,
            n => n,
        }
    }
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
        dedup_key: None,
        claimed_by: None,
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
            rows.push(store::outbox::outbox_row(db, id).await.unwrap().unwrap());
        }
        if rows.iter().all(|r| r.status != "pending") {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "still pending: {:?}",
            rows.iter()
                .filter(|r| r.status == "pending")
                .collect::<Vec<_>>()
        );
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
    let attempts = store::outbox::delivery_attempts_of(&db, &[fine])
        .await
        .unwrap();
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

#[actix_web::test]
async fn a_stalled_provider_holds_up_only_its_own_channel() {
    let (_dir, db) = database().await;
    a_stalled_provider_holds_up_only_its_own(&db).await;
}

/// On PostgreSQL the claim that skips a full channel is a different statement.
#[actix_web::test]
async fn a_stalled_provider_holds_up_only_its_own_channel_on_postgres() {
    let (name, db) = pg_database().await;
    a_stalled_provider_holds_up_only_its_own(&db).await;
    drop(db);
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

async fn a_stalled_provider_holds_up_only_its_own(db: &Db) {
    let db = db.clone();
    let s = school(&db, "Lanes").await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let email = Arc::new(Provider {
        gate: Some(gate.clone()),
        parallel: 4,
        ..Provider::default()
    });
    let sms = Arc::new(Provider::default());
    // More stalled emails than dispatch once held in all (512), every one due before the
    // texts.
    let earlier = now() - chrono::Duration::minutes(1);
    let mut emails = Vec::new();
    for n in 0..600 {
        let address = format!("guardian{n}@example.test");
        emails.push(
            queue(&db, &s.id, &s.student, n + 1, &address, |r| {
                r.channel = "email".into();
                r.next_attempt_at = earlier;
            })
            .await,
        );
    }
    let mut texts = Vec::new();
    for n in 0..5 {
        let address = format!("+1555000{n}");
        texts.push(queue(&db, &s.id, &s.student, 1_000 + n, &address, |_| ()).await);
    }
    let store = Arc::new(DieselStore::new(db.clone(), 120));
    let senders: HashMap<String, Arc<dyn Sender>> = HashMap::from([
        (
            "email".to_owned(),
            Arc::new(Shared(email.clone())) as Arc<dyn Sender>,
        ),
        (
            "sms".to_owned(),
            Arc::new(Shared(sms.clone())) as Arc<dyn Sender>,
        ),
    ]);
    // No poll within the test: every claim after the first is asked for by dispatch itself
    // (and no rate limit, whose deferred messages wait for the poll).
    let policy = DeliveryPolicy {
        email: RateLimit {
            per_sec: 0,
            burst: 0,
        },
        ..DeliveryPolicy::default()
    };
    let _dispatcher = Dispatcher::new(store, senders, Duration::from_secs(3600), policy).start();

    let rows = settled(&db, &texts).await;
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:?}");
    assert!(email.received.lock().unwrap().is_empty());
    let pending =
        futures_util::future::join_all(emails.iter().map(|id| store::outbox::outbox_row(&db, id)))
            .await
            .into_iter()
            .filter(|row| row.as_ref().unwrap().as_ref().unwrap().status == "pending")
            .count();
    assert_eq!(pending, 600, "the emails wait for their provider");

    gate.add_permits(1);
    let rows = settled(&db, &emails).await;
    assert!(
        rows.iter().all(|r| r.status == "sent" && r.attempts == 1),
        "{:?}",
        rows.iter().find(|r| r.status != "sent" || r.attempts != 1)
    );
    let mut received: Vec<String> = email
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, address)| address.clone())
        .collect();
    received.sort();
    received.dedup();
    assert_eq!(received.len(), 600, "each email once");
    assert_eq!(email.received.lock().unwrap().len(), 600);
}

on_both_backends!(
    a_claim_says_whether_each_of_its_messages_still_goes_out,
    // On PostgreSQL one statement judges what SQLite's claim decides in Rust.
    a_claim_says_whether_each_of_its_messages_still_goes_out_on_postgres,
    a_claim_says_whether_each_still_goes_out
);

async fn a_claim_says_whether_each_still_goes_out(db: Db) {
    let db = &db;
    use tiffin_actors::ports::{Needed, Outbox, Placed, Store};
    let s = school(db, "Needed").await;
    let store = DieselStore::new(db.clone(), 120);
    let placed = match store.place_order(new_order(&s)).await.unwrap() {
        Placed::New(event) => event,
        Placed::Existing(_) => panic!("a new order"),
    };
    // The order's own receipts are not under test.
    let receipts: Vec<String> = store
        .claim_due(100, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.message.id)
        .collect();
    store.mark_sent(&receipts).await.unwrap();
    let later = now() + chrono::Duration::hours(1);
    let push_sent = queue(db, &s.id, &s.student, 1, "token-a", |r| {
        r.channel = "push".into();
    })
    .await;
    store
        .mark_sent(std::slice::from_ref(&push_sent))
        .await
        .unwrap();
    let push_pending = queue(db, &s.id, &s.student, 2, "token-b", |r| {
        r.channel = "push".into();
        r.next_attempt_at = later;
    })
    .await;

    // (template, its event, fallback for, expired, claimed before) -> (needed, resend,
    // status and reason after the claim). The placed order's event: it is placed, not ready.
    let placed_event = placed.seq;
    let none = -100;
    let cases = [
        ("order_ready", none, Some(&push_sent), false, false),
        ("order_ready", none, Some(&push_pending), false, false),
        ("order_ready", placed_event, None, false, false),
        ("order_placed", placed_event, None, false, false),
        ("order_ready", none, None, false, false),
        ("order_ready", placed_event, None, true, false),
        ("order_ready", placed_event, None, false, true),
    ];
    let outcomes = [
        (
            Needed::DeliveredOtherwise,
            false,
            "skipped",
            Some("delivered by push"),
        ),
        (Needed::Yes, false, "pending", None),
        (
            Needed::NoLongerTrue,
            false,
            "expired",
            Some("no longer true"),
        ),
        (Needed::Yes, false, "pending", None),
        (Needed::Yes, false, "pending", None),
        (
            Needed::PastExpiry,
            false,
            "expired",
            Some("past its expiry"),
        ),
        // A claim left by a dead node: its send may have begun; it goes again, marked.
        (Needed::Yes, true, "pending", None),
    ];
    let mut expected = HashMap::new();
    for (n, ((template, event, fallback_for, expired, claimed), outcome)) in
        cases.into_iter().zip(outcomes).enumerate()
    {
        let id = queue(db, &s.id, &s.student, 10 + n as i64, "+15550000", |r| {
            r.template = template.into();
            // Several tell of one event: a channel each keeps them apart.
            r.channel = format!("case-{n}");
            r.event_seq = if event == none {
                none - n as i64
            } else {
                event
            };
            r.fallback_for = fallback_for.cloned();
            if expired {
                r.expires_at = Some(now() - chrono::Duration::seconds(1));
            }
            if claimed {
                r.claimed_until = Some(now() - chrono::Duration::seconds(1));
            }
        })
        .await;
        expected.insert(id, outcome);
    }
    let claimed: HashMap<String, (Needed, bool)> = store
        .claim_due(100, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.message.id, (c.needed, c.resend)))
        .collect();
    let judged: HashMap<String, (Needed, bool)> = expected
        .iter()
        .map(|(id, (needed, resend, _, _))| (id.clone(), (*needed, *resend)))
        .collect();
    assert_eq!(claimed, judged);
    let mut rows = Vec::new();
    for id in expected.keys() {
        rows.push(store::outbox::outbox_row(db, id).await.unwrap().unwrap());
    }
    for row in rows {
        let (_, _, status, why) = expected[&row.id];
        assert_eq!(
            (row.status.as_str(), row.last_error.as_deref()),
            (status, why),
            "{}",
            row.template
        );
        // Leased while it goes out; a dropped one holds no claim.
        assert_eq!(row.claimed_until.is_some(), status == "pending", "{row:?}");
    }
    assert!(
        store.claim_due(100, &[]).await.unwrap().is_empty(),
        "all leased"
    );
}
