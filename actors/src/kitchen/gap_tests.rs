//! The kitchen publishes every committed event in order, through gaps and late reads.

use super::*;
use crate::bus::LocalBus;
use crate::domain::machine::OrderState;
use crate::ports::TransitionCommit;
use crate::ports::{AlertCommit, CounterMove, ItemDone, ItemDoneCommit, KitchenSnapshot};
use crate::ports::{NewOrder, Placed};
use async_trait::async_trait;
use std::sync::Mutex;

/// A store whose reads of events hold what was committed when each began, and answer
/// when the test says.
#[derive(Default)]
struct SlowStore {
    committed: Mutex<Vec<KitchenEvent>>,
    reads: Mutex<Vec<Arc<tokio::sync::Semaphore>>>,
}

impl SlowStore {
    fn commit(&self, event: &KitchenEvent) {
        self.committed.lock().unwrap().push(event.clone());
    }
    fn reads_begun(&self) -> usize {
        self.reads.lock().unwrap().len()
    }
    fn answer(&self, read: usize) {
        self.reads.lock().unwrap()[read].add_permits(1);
    }
}

fn not_here() -> CommandError {
    CommandError::Internal("not in this test".into())
}

#[async_trait]
impl Store for SlowStore {
    async fn load_kitchen(&self, school_id: &str) -> Result<KitchenSnapshot, CommandError> {
        Ok(KitchenSnapshot {
            school_id: school_id.into(),
            last_seq: 0,
            live_orders: Vec::new(),
        })
    }
    async fn place_order(&self, _: NewOrder) -> Result<Placed, CommandError> {
        Err(not_here())
    }
    async fn commit_transition(&self, _: TransitionCommit) -> Result<KitchenEvent, CommandError> {
        Err(not_here())
    }
    async fn move_counter(&self, _: CounterMove) -> Result<KitchenEvent, CommandError> {
        Err(not_here())
    }
    async fn record_alert(&self, _: AlertCommit) -> Result<KitchenEvent, CommandError> {
        Err(not_here())
    }
    async fn mark_item_done(&self, _: ItemDoneCommit) -> Result<ItemDone, CommandError> {
        Err(not_here())
    }
    async fn load_order(&self, _: &str) -> Result<Option<OrderSummary>, CommandError> {
        Err(not_here())
    }
    async fn events_since(
        &self,
        _: &str,
        after: i64,
        _: i64,
    ) -> Result<Vec<KitchenEvent>, CommandError> {
        let seen: Vec<KitchenEvent> = self
            .committed
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        self.reads.lock().unwrap().push(gate.clone());
        let _answered = gate.acquire().await;
        Ok(seen)
    }
}

fn placed(seq: i64) -> KitchenEvent {
    let at = chrono::Utc::now();
    let order = OrderSummary {
        id: format!("o{seq}"),
        school_id: "s".into(),
        student_id: "st".into(),
        student_name: "Student".into(),
        state: OrderState::Placed,
        version: 1,
        items: Vec::new(),
        total_cents: 0,
        placed_at: at,
        updated_at: at,
        counter: None,
        pickup_code: None,
        wave: None,
        ready_at: None,
        alerts: Vec::new(),
        allergy_override: None,
    };
    KitchenEvent {
        school_id: "s".into(),
        seq,
        kind: "order.placed".into(),
        order_id: order.id.clone(),
        from: None,
        to: OrderState::Placed,
        version: 1,
        actor_id: None,
        reason: None,
        at,
        order,
    }
}

fn kitchen() -> (Arc<SlowStore>, Addr<Kitchen>) {
    let store = Arc::new(SlowStore::default());
    let kitchen = Kitchen::new(
        "s".into(),
        store.clone(),
        Arc::new(LocalBus::new()),
        None,
        TimerPolicy::default(),
    )
    .start();
    (store, kitchen)
}

async fn until(what: impl Fn() -> bool) {
    for _ in 0..200 {
        if what() {
            return;
        }
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
    panic!("waited 2 s");
}

/// Event 3 commits after a read for an earlier gap began, and its answer comes late: the
/// read's answer must not make the kitchen skip it.
#[actix::test]
async fn a_gap_is_skipped_only_on_the_word_of_a_read_that_could_see_it() {
    let (store, kitchen) = kitchen();
    let events: Vec<KitchenEvent> = (1..=4).map(placed).collect();
    // 1 and 2 commit; 2's answer comes first, and a read for the gap at 1 begins.
    store.commit(&events[0]);
    store.commit(&events[1]);
    kitchen.send(Committed(events[1].clone())).await.unwrap();
    until(|| store.reads_begun() == 1).await;
    // 1 arrives; 3 and 4 commit, 4's answer first: a second read begins for the gap at 3.
    kitchen.send(Committed(events[0].clone())).await.unwrap();
    store.commit(&events[2]);
    store.commit(&events[3]);
    kitchen.send(Committed(events[3].clone())).await.unwrap();
    until(|| store.reads_begun() == 2).await;
    // The first read answers (without 3, which committed after it began), then 3 arrives.
    store.answer(0);
    actix::clock::sleep(Duration::from_millis(50)).await;
    kitchen.send(Committed(events[2].clone())).await.unwrap();
    store.answer(1);
    let mut live: Vec<String> = kitchen
        .send(LiveOrders)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
    live.sort();
    assert_eq!(live, ["o1", "o2", "o3", "o4"]);
}

/// A number below one the kitchen already holds, and missing from a read that began after
/// it, was never committed: skipped, so the kitchen does not wait for it forever.
#[actix::test]
async fn a_number_never_committed_is_skipped() {
    let (store, kitchen) = kitchen();
    let second = placed(2);
    store.commit(&second);
    kitchen.send(Committed(second)).await.unwrap();
    until(|| store.reads_begun() == 1).await;
    store.answer(0);
    let kitchen = &kitchen;
    let live = async || kitchen.send(LiveOrders).await.unwrap().unwrap().len();
    for _ in 0..200 {
        if live().await == 1 {
            return;
        }
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
    panic!("the event after the gap was never published");
}
