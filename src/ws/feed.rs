//! A subscription's live path: the bus hands each frame to the subscription's feed, which
//! puts it in sequence straight into the socket's send queue (a duplicate dropped, a full
//! queue closed with `1013`). Only a gap goes to the socket actor, which fills it from the
//! store; the frame's bytes are the bus's, shared by every socket of the topic.

use super::Socket;
use super::board::board_frame;
use super::outbound::{Out, Refused, SendQueue};
use super::protocol::Source;
use actix::WeakAddr;
use actix::prelude::*;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use tiffin_actors::bus::{Published, Subscriber};

/// Live frames a subscription may hold while it catches up before it counts as a slow
/// consumer.
const MAX_WAITING: usize = 1024;

/// Counted per frame per socket: the handle is looked up once, not per frame.
static FRAMES_SENT: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("ws_frames_sent_total"));

/// How a subscription shows the bus's frames.
#[derive(Clone, Copy, PartialEq)]
enum View {
    /// As published (a kitchen screen, an inbox: alerts of the moment too).
    Whole,
    /// As published, sequenced frames only (an order).
    Sequenced,
    /// Reduced for a public pickup board.
    Board,
}

enum Gate {
    /// Catching up (a snapshot, a replay, or a gap being filled): live frames wait.
    Waiting(Vec<Arc<Published>>),
    Live {
        last: i64,
    },
    /// Unsubscribed, or the socket is gone: the bus drops the feed.
    Ended,
}

pub(super) struct Feed {
    /// The topic as the client named it (a board's frames are written under it).
    topic: String,
    view: View,
    queue: Arc<SendQueue>,
    socket: WeakAddr<Socket>,
    gate: Mutex<Gate>,
}

/// Sent to the socket actor when its queue overflowed and the feed closed it with `1013`.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct SlowConsumer;

/// Sent to the socket actor when a frame arrived past a gap: replay `after + 1 ..= upto` from
/// the store, then go live again.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct FillGap {
    pub(super) topic: String,
    pub(super) after: i64,
    pub(super) upto: i64,
}

impl Feed {
    pub(super) fn new(
        topic: String,
        source: &Source,
        queue: Arc<SendQueue>,
        socket: WeakAddr<Socket>,
    ) -> Arc<Feed> {
        let view = match source {
            Source::Kitchen(_) | Source::Inbox(_) => View::Whole,
            Source::Order(_) => View::Sequenced,
            Source::Board(_) => View::Board,
        };
        Arc::new(Feed {
            topic,
            view,
            queue,
            socket,
            gate: Mutex::new(Gate::Waiting(Vec::new())),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Gate> {
        // Each state is whole after every statement: a panic elsewhere leaves it usable.
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the catch-up frames, then the live frames that waited for them, in order.
    /// False if the socket could not take them (it is closed).
    pub(super) fn go_live(&self, catch_up: Vec<String>, last: i64) -> bool {
        let mut gate = self.lock();
        if matches!(*gate, Gate::Ended) {
            return false;
        }
        if !catch_up.is_empty() && !self.push(Out::Batch(catch_up)) {
            return false;
        }
        let waiting = match std::mem::replace(&mut *gate, Gate::Live { last }) {
            Gate::Waiting(waiting) => waiting,
            Gate::Live { .. } | Gate::Ended => Vec::new(),
        };
        waiting.iter().all(|frame| self.admit(&mut gate, frame))
    }

    /// The bus stops handing this feed frames at its next one.
    pub(super) fn end(&self) {
        *self.lock() = Gate::Ended;
    }

    /// One sequenced frame through the gate; false when the feed is done.
    fn admit(&self, gate: &mut Gate, frame: &Arc<Published>) -> bool {
        match gate {
            Gate::Ended => false,
            Gate::Waiting(waiting) if waiting.len() >= MAX_WAITING => {
                self.slow_consumer();
                false
            }
            Gate::Waiting(waiting) => {
                waiting.push(frame.clone());
                true
            }
            Gate::Live { last } if frame.frame.seq <= *last => true,
            Gate::Live { last } if frame.frame.seq == *last + 1 => {
                *last = frame.frame.seq;
                self.write(frame)
            }
            Gate::Live { last } => {
                let gap = FillGap {
                    topic: self.topic.clone(),
                    after: *last,
                    upto: frame.frame.seq - 1,
                };
                *gate = Gate::Waiting(vec![frame.clone()]);
                match self.socket.upgrade() {
                    Some(socket) => {
                        socket.do_send(gap);
                        true
                    }
                    None => false,
                }
            }
        }
    }

    fn write(&self, frame: &Published) -> bool {
        let text = match self.view {
            View::Whole | View::Sequenced => frame.json.clone(),
            View::Board => {
                let board = frame.view.get_or_init(|| {
                    board_frame(&self.topic, &frame.frame).map(|f| Arc::from(f.to_json()))
                });
                match board {
                    Some(board) => board.clone(),
                    None => return true,
                }
            }
        };
        self.push(Out::Shared(text))
    }

    fn push(&self, out: Out) -> bool {
        match self.queue.push(out) {
            Ok(()) => {
                FRAMES_SENT.increment(1);
                true
            }
            Err(Refused::Full) => {
                self.slow_consumer();
                false
            }
            Err(Refused::Ended) => false,
        }
    }

    fn slow_consumer(&self) {
        if self.queue.close(Some(super::slow_consumer_close()))
            && let Some(socket) = self.socket.upgrade()
        {
            socket.do_send(SlowConsumer);
        }
    }
}

impl Subscriber for Feed {
    fn offer(&self, frame: &Arc<Published>) -> bool {
        if frame.frame.transient {
            // Not in the sequence: straight out to kitchen screens (alerts) and inboxes (a
            // message read or deleted elsewhere), never to boards or orders.
            return match self.view {
                View::Whole => {
                    !matches!(*self.lock(), Gate::Ended)
                        && self.push(Out::Shared(frame.json.clone()))
                }
                View::Sequenced | View::Board => true,
            };
        }
        let mut gate = self.lock();
        self.admit(&mut gate, frame)
    }
}
