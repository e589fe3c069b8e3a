//! Group commit: callers queue their writes, and whoever holds a turn commits everything
//! queued so far in one transaction, then answers each caller. One commit per batch instead of
//! one per write: under load writers stop queueing for the database one by one (at 4x the
//! lunch rush, order POST p99 halved; BENCHMARKS.md), though a write's own statements still
//! cost what they did.
//!
//! No task of its own: the callers take turns (a fair semaphore), so a batch runs on the
//! thread of the caller that leads it, and nothing outlives the callers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::{Semaphore, oneshot};

type Waiting<T, R> = (T, oneshot::Sender<R>, Instant);

pub struct GroupCommit<T, R> {
    queue: Mutex<VecDeque<Waiting<T, R>>>,
    turns: Semaphore,
    max_batch: usize,
    /// The histogram of batch sizes in `/metrics`.
    metric: &'static str,
}

impl<T, R> GroupCommit<T, R> {
    /// `writers` batches may commit at once (one for SQLite's single writer); each takes at
    /// most `max_batch` writes; their sizes go to the histogram `metric`.
    pub fn new(writers: usize, max_batch: usize, metric: &'static str) -> Self {
        GroupCommit {
            queue: Mutex::new(VecDeque::new()),
            turns: Semaphore::new(writers.max(1)),
            max_batch: max_batch.max(1),
            metric,
        }
    }

    /// Queues `item` and returns its result once a batch holding it has been committed by
    /// `commit`, which must return one result per item, in order. `None` if the caller that
    /// led its batch was dropped mid-commit (whether that batch committed is then unknown).
    pub async fn submit<F: Future<Output = Vec<R>>>(
        &self,
        item: T,
        commit: impl Fn(Vec<T>) -> F,
    ) -> Option<R> {
        let (answer, mut answered) = oneshot::channel();
        self.lock().push_back((item, answer, Instant::now()));
        loop {
            // Answered by the batch this caller just led, or by another while it waited.
            if let Some(answer) = settled(&mut answered) {
                return answer;
            }
            let turn = self.turns.acquire().await.ok()?;
            if let Some(answer) = settled(&mut answered) {
                return answer;
            }
            // Callers on this thread that are ready to run queue theirs first: on SQLite a
            // commit never yields, so without this every batch would hold one write.
            tokio::task::yield_now().await;
            let batch: Vec<Waiting<T, R>> = {
                let mut queue = self.lock();
                let n = queue.len().min(self.max_batch);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                // Another writer holds ours.
                drop(turn);
                return answered.await.ok();
            }
            metrics::histogram!(self.metric).record(batch.len() as f64);
            // Where a write's time goes: queued for a turn, then its batch's commit.
            let waited = metrics::histogram!("group_commit_wait_seconds", "batch" => self.metric);
            let (items, answers): (Vec<T>, Vec<oneshot::Sender<R>>) = batch
                .into_iter()
                .map(|(item, answer, queued)| {
                    waited.record(queued.elapsed().as_secs_f64());
                    (item, answer)
                })
                .unzip();
            let began = Instant::now();
            let results = commit(items).await;
            metrics::histogram!("group_commit_seconds", "batch" => self.metric)
                .record(began.elapsed().as_secs_f64());
            for (answer, result) in answers.into_iter().zip(results) {
                // A caller that went away needs no answer.
                let _ = answer.send(result);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting<T, R>>> {
        // The queue is only pushed to and drained: a panic elsewhere cannot leave it torn.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Group commits side by side, each with one writer, every key (a school) sent to one lane
/// for good: batches of different lanes lock different schools, so two writers never queue on
/// the same school rows (two writers of one group commit both locked every school of a busy
/// node, and the second waited through the first's commit; BENCHMARKS.md). Keys are dealt
/// to the lanes in turn as first seen, so a node's schools split evenly whatever their ids.
pub struct Lanes<T, R> {
    lanes: Vec<GroupCommit<T, R>>,
    /// Each key's lane, and the next lane to deal.
    dealt: Mutex<(HashMap<String, usize>, usize)>,
}

/// Keys remembered before the deal starts afresh (a district's schools fit many times over).
const MAX_KEYS: usize = 100_000;

impl<T, R> Lanes<T, R> {
    /// `lanes` group commits of one writer each, as [`GroupCommit::new`].
    pub fn new(lanes: usize, max_batch: usize, metric: &'static str) -> Self {
        Lanes {
            lanes: (0..lanes.max(1))
                .map(|_| GroupCommit::new(1, max_batch, metric))
                .collect(),
            dealt: Mutex::default(),
        }
    }

    /// The lane of `key`'s writes.
    pub fn of(&self, key: &str) -> &GroupCommit<T, R> {
        let n = self.lanes.len();
        let lane = if n == 1 {
            0
        } else {
            // Only inserts and a clear: a panic elsewhere cannot leave the map torn.
            let mut dealt = self.dealt.lock().unwrap_or_else(PoisonError::into_inner);
            let (lanes, next) = &mut *dealt;
            match lanes.get(key) {
                Some(&lane) => lane,
                None => {
                    if lanes.len() >= MAX_KEYS {
                        lanes.clear();
                    }
                    let lane = *next % n;
                    *next = next.wrapping_add(1);
                    lanes.insert(key.to_owned(), lane);
                    lane
                }
            }
        };
        &self.lanes[lane]
    }
}

/// `Some` once the caller's batch is done with: `Some(None)` if its leader went away.
fn settled<R>(answered: &mut oneshot::Receiver<R>) -> Option<Option<R>> {
    match answered.try_recv() {
        Ok(result) => Some(Some(result)),
        Err(oneshot::error::TryRecvError::Closed) => Some(None),
        Err(oneshot::error::TryRecvError::Empty) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn writes_queued_during_a_commit_share_the_next_one() {
        let group: Rc<GroupCommit<u32, u32>> = Rc::new(GroupCommit::new(1, 64, "test_batch_size"));
        let batches: Rc<RefCell<Vec<Vec<u32>>>> = Rc::default();
        let commit = {
            let batches = batches.clone();
            move |items: Vec<u32>| {
                let batches = batches.clone();
                async move {
                    batches.borrow_mut().push(items.clone());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    items.iter().map(|i| i * 10).collect::<Vec<_>>()
                }
            }
        };
        let local = tokio::task::LocalSet::new();
        let results = local
            .run_until(async {
                let call = |n: u32| {
                    let (group, commit) = (group.clone(), commit.clone());
                    tokio::task::spawn_local(async move { group.submit(n, &commit).await })
                };
                let mut handles = vec![call(0)];
                // The first is mid-commit when the others arrive.
                tokio::time::sleep(Duration::from_millis(5)).await;
                handles.extend((1..10).map(call));
                let mut results = Vec::new();
                for h in handles {
                    results.push(h.await.ok().flatten());
                }
                results
            })
            .await;
        assert_eq!(
            results,
            (0..10).map(|n| Some(n * 10)).collect::<Vec<_>>(),
            "each caller gets its own result"
        );
        // The first caller commits alone; the nine that queued meanwhile go in one batch.
        assert_eq!(
            *batches.borrow(),
            vec![vec![0], (1..10).collect::<Vec<_>>()]
        );
    }

    /// Callers ready at once all queue before the first takes its batch.
    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_takes_at_most_max_batch_in_arrival_order() {
        let group: Rc<GroupCommit<u32, u32>> = Rc::new(GroupCommit::new(1, 3, "test_batch_size"));
        let batches: Rc<RefCell<Vec<Vec<u32>>>> = Rc::default();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let handles: Vec<_> = (0..7u32)
                    .map(|n| {
                        let (group, batches) = (group.clone(), batches.clone());
                        tokio::task::spawn_local(async move {
                            group
                                .submit(n, |items: Vec<u32>| {
                                    batches.borrow_mut().push(items.clone());
                                    async move {
                                        tokio::time::sleep(Duration::from_millis(5)).await;
                                        items
                                    }
                                })
                                .await
                        })
                    })
                    .collect();
                for (n, h) in handles.into_iter().enumerate() {
                    assert_eq!(h.await.ok().flatten(), Some(n as u32));
                }
            })
            .await;
        assert_eq!(
            *batches.borrow(),
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]
        );
    }

    #[test]
    fn schools_are_dealt_to_lanes_in_turn_and_stay_there() {
        let lanes: Lanes<u32, u32> = Lanes::new(2, 8, "test_batch_size");
        let lane = |key: &str| std::ptr::from_ref(lanes.of(key));
        let (a, b, c, d) = (lane("A"), lane("B"), lane("C"), lane("D"));
        assert_ne!(a, b, "the first two schools write side by side");
        assert_eq!((c, d), (a, b), "the next two are dealt in the same turn");
        assert_eq!(lane("B"), b, "a school keeps its lane");
        let one: Lanes<u32, u32> = Lanes::new(1, 8, "test_batch_size");
        assert_eq!(
            std::ptr::from_ref(one.of("A")),
            std::ptr::from_ref(one.of("B")),
            "one lane takes every school"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn callers_whose_leader_is_dropped_mid_commit_get_none_not_a_hang() {
        let group: Rc<GroupCommit<u32, u32>> = Rc::new(GroupCommit::new(1, 64, "test_batch_size"));
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let submit = |n: u32, hold: Duration| {
                    let group = group.clone();
                    tokio::task::spawn_local(async move {
                        group
                            .submit(n, |items: Vec<u32>| async move {
                                tokio::time::sleep(hold).await;
                                items
                            })
                            .await
                    })
                };
                let first = submit(0, Duration::from_millis(50));
                tokio::task::yield_now().await;
                // Both queue while the first commits; the leader of their batch hangs.
                let leader = submit(1, Duration::from_secs(3600));
                let follower = submit(2, Duration::ZERO);
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert_eq!(first.await.ok().flatten(), Some(0));
                leader.abort();
                assert_eq!(follower.await.ok().flatten(), None);
                // The queue is free for the next caller.
                assert_eq!(submit(3, Duration::ZERO).await.ok().flatten(), Some(3));
            })
            .await;
    }
}
