//! In-app messages sent by the fan-out that writes them, with the real store on both backends.

use super::in_app::InPlace;
use crate::db::schema::{delivery_attempts, inbox_messages, outbox};
use crate::db::test_support::{counters, guardian_of, new_order, on_both_backends, school, step};
use crate::db::{Db, DbError};
use crate::store::DieselStore;
use crate::with_conn;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use std::sync::{Arc, Mutex};
use tiffin_actors::bus::{Bus, LocalBus, Published, Subscriber, inbox_topic};
use tiffin_actors::domain::OrderState;
use tiffin_actors::ports::{Lease, Needed, Outbox, Placed, Store};

/// Frames a subscriber heard: (kind, seq, message id).
#[derive(Default)]
struct Heard(Mutex<Vec<(String, i64, String)>>);

impl Subscriber for Heard {
    fn offer(&self, published: &Arc<Published>) -> bool {
        let frame = &published.frame;
        let id = frame.data["id"].as_str().unwrap_or_default().to_owned();
        self.0
            .lock()
            .unwrap()
            .push((frame.kind.clone(), frame.seq, id));
        true
    }
}

/// A fan-out sends the in-app messages due at once itself: stored in the inbox in its own
/// transaction, numbered in order, marked sent with their attempt, published, and never
/// claimed; one whose news is no longer true is left to the claim, which expires it.
async fn fan_out_sends_in_app_messages_where_it_writes_them(db: Db) {
    let a = school(&db, "A").await;
    counters(&db, &a, 1).await;
    let guardian = guardian_of(&db, &a).await;
    let bus = Arc::new(LocalBus::new());
    let heard = Arc::new(Heard::default());
    bus.subscribe(&inbox_topic(&guardian), heard.clone());
    let store = DieselStore::new(db.clone(), 120);
    let templates = crate::notify::templates::Templates::load().unwrap();
    store.deliver_in_app_with(Arc::new(InPlace::new(Arc::new(templates), bus.clone())));
    let mut placed = Vec::new();
    for _ in 0..2 {
        match store.place_order(new_order(&a)).await.unwrap() {
            Placed::New(event) => placed.push(event),
            other => panic!("expected a new order, got {other:?}"),
        }
    }
    // The second order is ready, then collected before its news is fanned out.
    let mut event = placed[1].clone();
    for to in [
        OrderState::Confirmed,
        OrderState::Preparing,
        OrderState::Ready,
        OrderState::PickedUp,
    ] {
        event = store.commit_transition(step(&event, to)).await.unwrap();
    }
    let lease = Lease {
        most: 100,
        skip: &[],
    };
    let out = store.fan_out(256, lease).await.unwrap();
    // Two receipts, "ready" and "picked up": each to the guardian in the app.
    assert_eq!(out.messages, 4, "{out:?}");
    assert_eq!(out.delivered, 3, "all but the stale news: {out:?}");
    assert!(
        out.leased.is_empty(),
        "nothing in the app is leased: {out:?}"
    );

    type Row = (
        String,
        i64,
        String,
        String,
        i32,
        Option<chrono::NaiveDateTime>,
    );
    let rows: Result<Vec<Row>, DbError> = async {
        with_conn!(&db, |conn| outbox::table
            .filter(outbox::channel.eq("in_app"))
            .order(outbox::event_seq.asc())
            .select((
                outbox::id,
                outbox::event_seq,
                outbox::template,
                outbox::status,
                outbox::attempts,
                outbox::sent_at,
            ))
            .load(conn)
            .await
            .map_err(DbError::from))
    }
    .await;
    let rows = rows.unwrap();
    let sent: Vec<&Row> = rows.iter().filter(|r| r.3 == "sent").collect();
    assert_eq!(sent.len(), 3, "{rows:?}");
    assert!(sent.iter().all(|r| r.4 == 1 && r.5.is_some()), "{rows:?}");
    let stale: Vec<&Row> = rows.iter().filter(|r| r.3 != "sent").collect();
    assert_eq!(stale.len(), 1, "{rows:?}");
    assert_eq!(
        (stale[0].2.as_str(), stale[0].3.as_str()),
        ("order_ready", "pending")
    );

    let stored: Result<Vec<(String, i64)>, DbError> = async {
        with_conn!(&db, |conn| inbox_messages::table
            .filter(inbox_messages::user_id.eq(&guardian))
            .order(inbox_messages::seq.asc())
            .select((inbox_messages::id, inbox_messages::seq))
            .load(conn)
            .await
            .map_err(DbError::from))
    }
    .await;
    let stored = stored.unwrap();
    let expected: Vec<(String, i64)> = sent
        .iter()
        .zip(1..)
        .map(|(r, seq)| (r.0.clone(), seq))
        .collect();
    assert_eq!(stored, expected, "numbered from 1 in the events' order");
    let attempts: Result<Vec<(String, i32, String)>, DbError> = async {
        with_conn!(&db, |conn| delivery_attempts::table
            .select((
                delivery_attempts::outbox_id,
                delivery_attempts::attempt,
                delivery_attempts::outcome,
            ))
            .load(conn)
            .await
            .map_err(DbError::from))
    }
    .await;
    let mut attempts = attempts.unwrap();
    attempts.sort();
    let mut recorded: Vec<(String, i32, String)> = sent
        .iter()
        .map(|r| (r.0.clone(), 1, "sent".to_owned()))
        .collect();
    recorded.sort();
    assert_eq!(attempts, recorded, "each sent message's attempt");
    let frames: Vec<(String, i64, String)> = expected
        .iter()
        .map(|(id, seq)| ("inbox.message".to_owned(), *seq, id.clone()))
        .collect();
    assert_eq!(
        *heard.0.lock().unwrap(),
        frames,
        "published once each, in order"
    );

    let claimed = store.claim_due(100, &[]).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].message.id, stale[0].0);
    assert_eq!(claimed[0].needed, Needed::NoLongerTrue);
}

on_both_backends!(
    fan_out_sends_in_app_messages_where_it_writes_them_on_sqlite,
    fan_out_sends_in_app_messages_where_it_writes_them_on_postgres,
    fan_out_sends_in_app_messages_where_it_writes_them
);
