//! Supervision with the real store: a kitchen that fails is restarted from what was committed,
//! commands sent meanwhile are answered, and other kitchens do not notice.

use crate::db::test_support::{School, new_order, school};
use crate::db::{self, DatabaseUrl, Db};
use crate::store::DieselStore;
use actix::Actor;
use std::sync::Arc;
use tiffin_actors::bus::LocalBus;
use tiffin_actors::domain::{Issuer, OrderCommand, OrderState, TimerPolicy};
use tiffin_actors::kitchen::{InjectFault, InjectOrderFault};
use tiffin_actors::ports::Placed;
use tiffin_actors::{KitchenFor, LiveOrders, PlaceOrder, Registry, TransitionOrder};

fn order(s: &School) -> PlaceOrder {
    PlaceOrder(new_order(s))
}

fn placed(p: Placed) -> tiffin_actors::domain::KitchenEvent {
    match p {
        Placed::New(event) => event,
        Placed::Existing(_) => panic!("expected a new order"),
    }
}

#[actix_web::test]
async fn a_failed_kitchen_restarts_from_the_store_and_answers_what_was_sent_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(dir.path().join("t.db").display().to_string());
    db::migrate(&url).await.unwrap();
    let db = Db::connect(&url, 4).unwrap();
    let (a, b) = (school(&db, "A").await, school(&db, "B").await);
    let store = Arc::new(DieselStore::new(db.clone(), 120));
    let registry = Registry::new(store, Arc::new(LocalBus::new()), TimerPolicy::default());
    let kitchens = registry.kitchens();
    let registry = registry.start();
    let kitchen_a = registry.send(KitchenFor(a.id.clone())).await.unwrap();
    let kitchen_b = registry.send(KitchenFor(b.id.clone())).await.unwrap();
    let in_a = placed(kitchen_a.send(order(&a)).await.unwrap().unwrap());
    let in_b = placed(kitchen_b.send(order(&b)).await.unwrap().unwrap());

    // Fail kitchen A, and send it work at once: it is queued, then answered after the restart.
    kitchen_a.do_send(InjectFault);
    let confirm = TransitionOrder {
        order_id: in_a.order_id.clone(),
        command: OrderCommand::Confirm,
        issuer: Issuer::Staff,
        actor_id: None,
        reason: None,
        expected_version: Some(1),
        scan: None,
    };
    let confirmed = kitchen_a.send(confirm).await.unwrap().unwrap();
    assert_eq!(
        (confirmed.to, confirmed.version),
        (OrderState::Confirmed, 2)
    );
    let second = placed(kitchen_a.send(order(&a)).await.unwrap().unwrap());
    assert_eq!(
        second.seq, 3,
        "the restarted kitchen continues its sequence from the store"
    );
    let live_a = kitchen_a.send(LiveOrders).await.unwrap().unwrap();
    assert_eq!(live_a.len(), 2);
    assert_eq!(live_a[0].state, OrderState::Confirmed);

    // Kitchen B never noticed.
    let live_b = kitchen_b.send(LiveOrders).await.unwrap().unwrap();
    assert_eq!(live_b.len(), 1);
    assert_eq!(live_b[0].id, in_b.order_id);
    assert_eq!(live_b[0].state, OrderState::Placed);
    // The registry still hands out the same, restarted kitchen, and so do the kitchens
    // known to handlers without asking it.
    let again = registry.send(KitchenFor(a.id.clone())).await.unwrap();
    assert_eq!(again.send(LiveOrders).await.unwrap().unwrap().len(), 2);
    let known = kitchens.of(&registry, &a.id).await.unwrap();
    assert!(known == again, "the kitchen the registry started");
    assert_eq!(known.send(LiveOrders).await.unwrap().unwrap().len(), 2);
}

#[actix_web::test]
async fn a_failed_order_actor_is_restarted_by_its_kitchen_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(dir.path().join("t.db").display().to_string());
    db::migrate(&url).await.unwrap();
    let db = Db::connect(&url, 4).unwrap();
    let a = school(&db, "A").await;
    let registry = Registry::new(
        Arc::new(DieselStore::new(db.clone(), 120)),
        Arc::new(LocalBus::new()),
        TimerPolicy::default(),
    )
    .start();
    let kitchen = registry.send(KitchenFor(a.id.clone())).await.unwrap();
    let order = placed(kitchen.send(order(&a)).await.unwrap().unwrap());
    let step = |command, version| TransitionOrder {
        order_id: order.order_id.clone(),
        command,
        issuer: Issuer::Staff,
        actor_id: None,
        reason: None,
        expected_version: Some(version),
        scan: None,
    };
    kitchen
        .send(step(OrderCommand::Confirm, 1))
        .await
        .unwrap()
        .unwrap();
    assert!(
        kitchen
            .send(InjectOrderFault(order.order_id.clone()))
            .await
            .unwrap()
    );
    // The next command finds the actor gone and gets a fresh one that knows version 2.
    let started = kitchen
        .send(step(OrderCommand::Start, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((started.to, started.version), (OrderState::Preparing, 3));
    let stale = kitchen.send(step(OrderCommand::Ready, 2)).await.unwrap();
    assert_eq!(
        stale.err(),
        Some(tiffin_actors::ports::CommandError::VersionConflict)
    );
}
