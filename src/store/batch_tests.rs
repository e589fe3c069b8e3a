//! Batches against the real store on both backends: a refused command is refused alone and
//! takes no sequence number while the rest commit; orders becoming ready together get
//! distinct codes and balanced counters; committed events are fanned out once.

use super::{DieselStore, TxError};
use crate::db::models::now;
use crate::db::schema::outbox;
use crate::db::test_support::{counters, guardian_of, new_order, school, step};
use crate::db::test_support::{on_both_backends, pg_admin, pg_database};
use crate::db::{Db, DbError};
use crate::with_conn;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use std::collections::HashSet;
use tiffin_actors::domain::{KitchenEvent, OrderState};
use tiffin_actors::ports::{CommandError, NewOrder, NewOrderItem, Placed};

fn committed(result: Result<Placed, TxError>) -> KitchenEvent {
    match result {
        Ok(Placed::New(event)) => event,
        other => panic!("expected a new order, got {other:?}"),
    }
}

async fn batches_refuse_alone_and_number_without_gaps(db: Db) {
    let (a, b) = (school(&db, "A").await, school(&db, "B").await);
    counters(&db, &a, 2).await;
    let store = DieselStore::new(db.clone(), 120);
    let wakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let woken = wakes.clone();
    store.wake_dispatch_with(move |_| {
        woken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    // `AtomicUsize::load`, not diesel's `load`.
    let wakes =
        move || std::sync::atomic::AtomicUsize::load(&wakes, std::sync::atomic::Ordering::SeqCst);
    let mut unknown_meal = new_order(&a);
    unknown_meal.items = vec![NewOrderItem {
        meal_id: "no-such-meal".into(),
        quantity: 1,
    }];
    let mut results = store
        .insert_orders(vec![
            new_order(&a),
            unknown_meal,
            new_order(&b),
            new_order(&a),
            new_order(&a),
        ])
        .await;
    assert!(matches!(
        results.remove(1),
        Err(TxError::Refused(CommandError::UnknownMeal(_)))
    ));
    assert_eq!(wakes(), 1, "the committed batch woke dispatch once");
    let placed: Vec<KitchenEvent> = results.into_iter().map(committed).collect();
    let seqs: Vec<(String, i64)> = placed
        .iter()
        .map(|e| (e.school_id.clone(), e.seq))
        .collect();
    assert_eq!(
        seqs,
        vec![
            (a.id.clone(), 1),
            (b.id.clone(), 1),
            (a.id.clone(), 2),
            (a.id.clone(), 3)
        ],
        "the refused order took no number"
    );
    let (first, in_b, second, third) = (&placed[0], &placed[1], &placed[2], &placed[3]);

    // `second` moves on alone first: the batch's step decided on its old view is refused.
    let alone = store
        .commit_transitions(vec![step(second, OrderState::Confirmed)])
        .await;
    let second_now = alone.into_iter().next().unwrap().unwrap();
    assert_eq!(second_now.seq, 4);
    assert_eq!(wakes(), 2, "a committed transition wakes dispatch");
    let mut results = store
        .commit_transitions(vec![
            step(first, OrderState::Confirmed),
            step(second, OrderState::Confirmed),
            step(in_b, OrderState::Confirmed),
            step(third, OrderState::Confirmed),
        ])
        .await;
    assert!(matches!(
        results.remove(1),
        Err(TxError::Refused(CommandError::VersionConflict))
    ));
    let moved: Vec<KitchenEvent> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        moved.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![5, 2, 6],
        "the stale step took no number"
    );
    assert!(
        moved
            .iter()
            .all(|e| e.to == OrderState::Confirmed && e.version == 2)
    );

    // Three orders ready in one batch: distinct codes, each to the least loaded counter.
    let preparing: Vec<KitchenEvent> = store
        .commit_transitions(vec![
            step(&moved[0], OrderState::Preparing),
            step(&second_now, OrderState::Preparing),
            step(&moved[2], OrderState::Preparing),
        ])
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ready: Vec<KitchenEvent> = store
        .commit_transitions(
            preparing
                .iter()
                .map(|e| step(e, OrderState::Ready))
                .collect(),
        )
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let codes: HashSet<&str> = ready
        .iter()
        .filter_map(|e| e.order.pickup_code.as_deref())
        .collect();
    assert_eq!(codes.len(), 3, "{ready:?}");
    let numbers: Vec<i32> = ready
        .iter()
        .map(|e| e.order.counter.as_ref().unwrap().number)
        .collect();
    assert_eq!(
        numbers,
        vec![1, 2, 1],
        "each to the least loaded counter, counting the batch's own"
    );
    // What was committed is what was answered.
    for e in &ready {
        let stored = store_order(&store, &e.order_id).await;
        assert_eq!(stored, e.order, "{}", e.order_id);
    }
}

async fn store_order(store: &DieselStore, id: &str) -> tiffin_actors::domain::OrderSummary {
    use tiffin_actors::ports::Store;
    store.load_order(id).await.unwrap().unwrap()
}

on_both_backends!(
    batches_refuse_alone_and_number_without_gaps_on_sqlite,
    batches_refuse_alone_and_number_without_gaps_on_postgres,
    batches_refuse_alone_and_number_without_gaps
);

/// Orders placed and moved at once, through every writer, leave one school's events
/// numbered 1..=n with nothing skipped, and the school's counter at n: a kitchen that finds a
/// number missing from the store skips it.
async fn concurrent_batches_number_without_gaps(db: Db) {
    use crate::db::schema::{order_events, schools};
    use tiffin_actors::ports::Store;
    let s = school(&db, "Busy").await;
    counters(&db, &s, 2).await;
    let store = DieselStore::new(db.clone(), 120);
    let lunches = (0..300).map(|_| async {
        let mut event = committed(Ok(store.place_order(new_order(&s)).await.unwrap()));
        for to in [
            OrderState::Confirmed,
            OrderState::Preparing,
            OrderState::Ready,
        ] {
            event = store.commit_transition(step(&event, to)).await.unwrap();
        }
    });
    futures_util::future::join_all(lunches).await;
    let read: Result<(Vec<i64>, i64), DbError> = async {
        let seqs = with_conn!(&db, |conn| order_events::table
            .filter(order_events::school_id.eq(&s.id))
            .order(order_events::seq.asc())
            .select(order_events::seq)
            .load::<i64>(conn)
            .await)?;
        let last = with_conn!(&db, |conn| schools::table
            .find(&s.id)
            .select(schools::event_seq)
            .first::<i64>(conn)
            .await)?;
        Ok((seqs, last))
    }
    .await;
    let (seqs, last) = read.unwrap();
    assert_eq!(seqs, (1..=1200).collect::<Vec<i64>>());
    assert_eq!(last, 1200);
}

#[actix_web::test]
async fn concurrent_batches_number_without_gaps_on_postgres() {
    let (name, db) = pg_database().await;
    concurrent_batches_number_without_gaps(db.clone()).await;
    drop(db);
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

async fn outbox_rows(db: &Db) -> Vec<(i64, String, String)> {
    let rows: Result<Vec<(i64, String, String)>, DbError> = async {
        with_conn!(db, |conn| outbox::table
            .select((outbox::event_seq, outbox::recipient_id, outbox::channel))
            .order((outbox::event_seq, outbox::recipient_id, outbox::channel))
            .load(conn)
            .await
            .map_err(DbError::from))
    }
    .await;
    rows.unwrap()
}

/// Events become outbox rows for their audience once: a second fan-out finds nothing.
async fn events_are_fanned_out_once(db: Db) {
    use tiffin_actors::ports::{Lease, Outbox};
    let a = school(&db, "A").await;
    let guardian = guardian_of(&db, &a).await;
    let store = DieselStore::new(db.clone(), 120);
    let placed: Vec<KitchenEvent> = store
        .insert_orders(vec![new_order(&a), new_order(&a)])
        .await
        .into_iter()
        .map(committed)
        .collect();
    assert!(outbox_rows(&db).await.is_empty(), "nothing before fan-out");
    let before = store.stats().await.unwrap();
    assert_eq!(
        (before.pending, before.awaiting_fan_out),
        (0, 2),
        "news waiting is counted"
    );
    let nothing_leased = Lease { most: 0, skip: &[] };
    assert_eq!(store.fan_out(256, nothing_leased).await.unwrap().events, 2);
    assert_eq!(store.stats().await.unwrap().awaiting_fan_out, 0);
    let rows = outbox_rows(&db).await;
    // A receipt per order to the guardian (the student placed it: no news of their own act).
    let seqs: Vec<i64> = placed.iter().map(|e| e.seq).collect();
    for seq in &seqs {
        let to_guardian: Vec<_> = rows.iter().filter(|r| r.0 == *seq).collect();
        assert!(!to_guardian.is_empty(), "no rows for event {seq}: {rows:?}");
        assert!(to_guardian.iter().all(|r| r.1 == guardian), "{rows:?}");
    }
    let again = store.fan_out(256, nothing_leased).await.unwrap();
    assert_eq!((again.events, again.messages), (0, 0));
    assert_eq!(outbox_rows(&db).await, rows, "written once");
}

on_both_backends!(
    events_are_fanned_out_once_on_sqlite,
    events_are_fanned_out_once_on_postgres,
    events_are_fanned_out_once
);

/// A fan-out leases to its dispatcher what a claim made then would send, as many as the lease
/// allows, none on a channel it skips nor news no longer true of its order; claims get the
/// rest, and never what the fan-out leased.
async fn fan_out_leases_what_a_claim_would_send(db: Db) {
    use tiffin_actors::ports::{Lease, Needed, Outbox, Store};
    let a = school(&db, "A").await;
    counters(&db, &a, 1).await;
    let guardian = guardian_of(&db, &a).await;
    // "Ready" by email as well as in the app: two channels.
    let chosen: Result<usize, DbError> = async {
        use crate::db::schema::notification_preferences as p;
        with_conn!(&db, |conn| diesel::insert_into(p::table)
            .values((
                p::user_id.eq(&guardian),
                p::event_kind.eq("order_ready"),
                p::channel.eq("email"),
                p::enabled.eq(true),
                p::updated_at.eq(now()),
            ))
            .execute(conn)
            .await
            .map_err(DbError::from))
    }
    .await;
    chosen.unwrap();
    let store = DieselStore::new(db.clone(), 120);
    let placed: Vec<KitchenEvent> = store
        .insert_orders(vec![new_order(&a), new_order(&a), new_order(&a)])
        .await
        .into_iter()
        .map(committed)
        .collect();
    let none = Lease { most: 0, skip: &[] };
    let receipts = store.fan_out(256, none).await.unwrap();
    assert_eq!((receipts.events, receipts.leased.len()), (3, 0));
    // The last order is ready, then collected before its "ready" news is fanned out.
    let (mut event, mut stale) = (placed[2].clone(), 0);
    for to in [
        OrderState::Confirmed,
        OrderState::Preparing,
        OrderState::Ready,
        OrderState::PickedUp,
    ] {
        event = store.commit_transition(step(&event, to)).await.unwrap();
        if to == OrderState::Ready {
            stale = event.seq;
        }
    }
    for first in &placed[..2] {
        let mut event = first.clone();
        for to in [
            OrderState::Confirmed,
            OrderState::Preparing,
            OrderState::Ready,
        ] {
            event = store.commit_transition(step(&event, to)).await.unwrap();
        }
    }
    let skipped = "email".to_owned();
    let skip = [skipped.clone()];
    let out = store
        .fan_out(
            256,
            Lease {
                most: 2,
                skip: &skip,
            },
        )
        .await
        .unwrap();
    // "Ready" in the app and by email for each order, "picked up" in the app.
    assert_eq!(out.messages, 3 * 2 + 1, "{} messages", out.messages);
    assert_eq!(out.leased.len(), 2, "as many as the lease allows");
    let leased_ids: Vec<String> = out.leased.iter().map(|c| c.message.id.clone()).collect();
    for claimed in &out.leased {
        assert_eq!((claimed.needed, claimed.resend), (Needed::Yes, false));
        assert_ne!(
            claimed.message.channel, skipped,
            "a skipped channel is left"
        );
    }
    let leased: Result<Vec<(i64, Option<String>)>, DbError> = async {
        with_conn!(&db, |conn| outbox::table
            .filter(outbox::id.eq_any(&leased_ids))
            .select((outbox::event_seq, outbox::claimed_by))
            .load(conn)
            .await
            .map_err(DbError::from))
    }
    .await;
    let leased = leased.unwrap();
    assert_eq!(leased.len(), 2);
    for (seq, by) in &leased {
        assert_ne!(*seq, stale, "only news still true is leased");
        assert_eq!(
            by.as_deref(),
            Some(store.node.id.as_str()),
            "leased by this node"
        );
    }
    let claimed = store.claim_due(100, &[]).await.unwrap();
    assert!(
        claimed.iter().all(|c| !leased_ids.contains(&c.message.id)),
        "a claim takes nothing the fan-out leased"
    );
    assert!(
        claimed
            .iter()
            .any(|c| c.message.template == "order_ready" && c.needed == Needed::NoLongerTrue),
        "the collected order's news is left to the claim, which expires it"
    );
    assert!(
        claimed
            .iter()
            .any(|c| c.message.channel == skipped && c.needed == Needed::Yes),
        "the skipped channel's messages are claimed later"
    );
}

on_both_backends!(
    fan_out_leases_what_a_claim_would_send_on_sqlite,
    fan_out_leases_what_a_claim_would_send_on_postgres,
    fan_out_leases_what_a_claim_would_send
);

/// The facts epoch as the triggers left it.
async fn facts_epoch(db: &Db) -> i64 {
    use crate::db::schema::facts_epoch;
    let epoch: Result<i64, DbError> = async {
        with_conn!(db, |conn| facts_epoch::table
            .select(facts_epoch::epoch)
            .first(conn)
            .await
            .map_err(DbError::from))
    }
    .await;
    epoch.unwrap()
}

/// PostgreSQL decides a batch from the facts kept from earlier batches only while nothing
/// they hold has changed: a meal taken off the menu moves the facts epoch, the batch decided
/// from the kept menu writes nothing (and takes no number), and is decided again from a fresh
/// read. Writes that change no fact (orders, inbox numbers) leave the epoch alone, and a
/// request repeated with its key is answered with its order from the write's unique key.
#[tokio::test]
async fn kept_facts_decide_only_while_the_epoch_holds_on_postgres() {
    use crate::db::schema::{meals, users};
    use tiffin_actors::ports::Idempotency;
    let (name, db) = pg_database().await;
    let a = school(&db, "A").await;
    let store = DieselStore::new(db.clone(), 120);
    let first = committed(store.insert_orders(vec![new_order(&a)]).await.remove(0));
    assert!(
        store.facts.facts_for(&[new_order(&a)]).is_some(),
        "the first batch's facts are kept"
    );
    let epoch = facts_epoch(&db).await;
    let second = committed(store.insert_orders(vec![new_order(&a)]).await.remove(0));
    assert_eq!((first.seq, second.seq), (1, 2));
    let bumped: Result<usize, DbError> = async {
        with_conn!(&db, |conn| diesel::update(users::table.find(&a.student))
            .set(users::inbox_seq.eq(users::inbox_seq + 1))
            .execute(conn)
            .await
            .map_err(DbError::from))
    }
    .await;
    assert_eq!(bumped.unwrap(), 1);
    assert_eq!(
        facts_epoch(&db).await,
        epoch,
        "orders and inbox numbers are no facts"
    );

    let set_available = |available: bool| {
        let (db, meal) = (db.clone(), a.meal.clone());
        async move {
            let set: Result<usize, DbError> = async {
                with_conn!(&db, |conn| diesel::update(meals::table.find(&meal))
                    .set(meals::available.eq(available))
                    .execute(conn)
                    .await
                    .map_err(DbError::from))
            }
            .await;
            assert_eq!(set.unwrap(), 1);
        }
    };
    set_available(false).await;
    assert!(
        facts_epoch(&db).await > epoch,
        "a meal's change moves the epoch"
    );
    assert!(
        store.facts.facts_for(&[new_order(&a)]).is_some(),
        "the kept menu still offers the meal"
    );
    let refused = store.insert_orders(vec![new_order(&a)]).await.remove(0);
    assert!(
        matches!(
            refused,
            Err(TxError::Refused(CommandError::MealUnavailable(_)))
        ),
        "decided from the menu as it is now: {refused:?}"
    );
    set_available(true).await;
    let keyed = NewOrder {
        idempotency: Some(Idempotency {
            key: "lunch-1".into(),
            fingerprint: "f1".into(),
        }),
        ..new_order(&a)
    };
    let third = match store.place(keyed.clone()).await {
        Ok(Placed::New(event)) => event,
        other => panic!("expected a new order, got {other:?}"),
    };
    assert_eq!(
        third.seq, 3,
        "the write refused for its moved epoch took no number"
    );
    assert!(
        store
            .facts
            .facts_for(std::slice::from_ref(&keyed))
            .is_some()
    );
    match store.place(keyed).await {
        Ok(Placed::Existing(order)) => assert_eq!(order.id, third.order_id),
        other => panic!("expected the first request's order, got {other:?}"),
    }
    drop(store);
    drop(db);
    pg_admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}
