//! The reconnect storm: one signal telling every follower to drop its socket and resume, or
//! that the run is over.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};

/// Tells followers to drop their sockets and reconnect (a storm), or to stop (the run is
/// over). Single-threaded: a generation in a `Cell` and one waker slot per follower task.
#[derive(Default)]
pub(super) struct Storm {
    pub(super) generation: Cell<u32>,
    pub(super) over: Cell<bool>,
    wakers: RefCell<Vec<Option<Waker>>>,
}

impl Storm {
    /// A waker slot for one more follower task.
    pub(super) fn join(&self) -> usize {
        let mut wakers = self.wakers.borrow_mut();
        wakers.push(None);
        wakers.len() - 1
    }

    pub(super) fn raise(&self) {
        self.generation.set(self.generation.get() + 1);
        self.wake_all();
    }

    pub(super) fn end(&self) {
        self.over.set(true);
        self.wake_all();
    }

    fn wake_all(&self) {
        let waiting: Vec<Waker> = self
            .wakers
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for waker in waiting {
            waker.wake();
        }
    }

    /// Resolves once there was a storm after generation `seen`, or the run is over.
    pub(super) fn moved(&self, slot: usize, seen: u32) -> impl Future<Output = ()> + Unpin {
        std::future::poll_fn(move |cx| {
            if self.over.get() || self.generation.get() != seen {
                return Poll::Ready(());
            }
            // Polled once per frame: keep one waker per task, not one per poll.
            if let Some(waiting) = self.wakers.borrow_mut().get_mut(slot)
                && waiting.as_ref().is_none_or(|w| !w.will_wake(cx.waker()))
            {
                *waiting = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::FutureExt;

    #[test]
    fn a_storm_wakes_its_followers_once_per_generation() {
        let storm = Storm::default();
        let slot = storm.join();
        assert!(storm.moved(slot, 0).now_or_never().is_none());
        storm.raise();
        assert!(storm.moved(slot, 0).now_or_never().is_some());
        assert!(storm.moved(slot, 1).now_or_never().is_none());
        storm.end();
        assert!(storm.moved(slot, 1).now_or_never().is_some());
    }
}
