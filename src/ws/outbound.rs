//! The socket's write side: a bounded send queue that the bus (live frames) and the socket
//! actor (replies, catch-ups, pings) fill, and that the connection's response body drains,
//! everything queued since its last write encoded into one.

use actix_http::ws::{CloseReason, OpCode, Parser};
use actix_web::web::{Bytes, BytesMut};
use futures_util::Stream;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// What goes out on a socket.
pub(super) enum Out {
    /// A bus frame, serialised once and shared by every socket of its topic.
    Shared(Arc<str>),
    Text(String),
    /// A catch-up (snapshot or replay): one slot in the queue however long, so a resume
    /// after a long absence is not mistaken for a slow consumer.
    Batch(Vec<String>),
    Ping,
    Pong(Bytes),
}

/// Why a frame was not queued.
pub(super) enum Refused {
    /// The queue is full: the client is not reading (a slow consumer).
    Full,
    /// The socket is closing or gone.
    Ended,
}

/// A socket's bounded send queue: a client that stops reading fills it instead of the hub's
/// memory, and never stalls the bus, the kitchen or the actor.
pub(super) struct SendQueue {
    capacity: usize,
    state: Mutex<Queued>,
}

#[derive(Default)]
struct Queued {
    items: VecDeque<Out>,
    /// A close frame to write ahead of anything still queued (without a reason: `None`).
    closing: Option<Option<CloseReason>>,
    /// Nothing more goes out: closed, or the connection is gone.
    ended: bool,
    writer: Option<Waker>,
}

impl SendQueue {
    pub(super) fn new(capacity: usize) -> Arc<SendQueue> {
        Arc::new(SendQueue {
            capacity,
            state: Mutex::new(Queued::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queued> {
        // The state is consistent after every statement: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn push(&self, out: Out) -> Result<(), Refused> {
        let mut queued = self.lock();
        if queued.ended || queued.closing.is_some() {
            return Err(Refused::Ended);
        }
        if queued.items.len() >= self.capacity {
            return Err(Refused::Full);
        }
        queued.items.push_back(out);
        let writer = queued.writer.take();
        drop(queued);
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Closes with a reason, ahead of anything still queued. False if the socket was already
    /// closing or gone (someone else closed it).
    pub(super) fn close(&self, reason: Option<CloseReason>) -> bool {
        let mut queued = self.lock();
        if queued.ended || queued.closing.is_some() {
            return false;
        }
        queued.items.clear();
        queued.closing = Some(reason);
        let writer = queued.writer.take();
        drop(queued);
        if let Some(writer) = writer {
            writer.wake();
        }
        true
    }
}

/// The connection's response body: writes what the queue holds, then the close frame.
pub(super) struct Outgoing {
    queue: Arc<SendQueue>,
    /// What is being encoded, swapped with the queue's so neither reallocates.
    taken: VecDeque<Out>,
    finished: bool,
}

impl Outgoing {
    pub(super) fn new(queue: Arc<SendQueue>) -> Outgoing {
        Outgoing {
            queue,
            taken: VecDeque::new(),
            finished: false,
        }
    }
}

fn encode(out: Out, buf: &mut BytesMut) {
    let text = |buf: &mut BytesMut, text: &str| {
        Parser::write_message(buf, text.as_bytes(), OpCode::Text, true, false);
    };
    match out {
        Out::Shared(json) => text(buf, &json),
        Out::Text(t) => text(buf, &t),
        Out::Batch(texts) => texts.iter().for_each(|t| text(buf, t)),
        Out::Ping => Parser::write_message(buf, b"", OpCode::Ping, true, false),
        Out::Pong(bytes) => Parser::write_message(buf, &bytes[..], OpCode::Pong, true, false),
    }
}

/// The bytes `out` encodes to, exactly: a buffer of that capacity freezes into `Bytes`
/// without a second allocation (a buffer not filled to capacity is boxed as a shared one).
fn size(out: &Out) -> usize {
    // A server's frame is not masked: 2 header bytes, 4 from 126 bytes, 10 from 64 KiB.
    let framed = |len: usize| {
        len + match len {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        }
    };
    match out {
        Out::Shared(json) => framed(json.len()),
        Out::Text(t) => framed(t.len()),
        Out::Batch(texts) => texts.iter().map(|t| framed(t.len())).sum(),
        Out::Ping => framed(0),
        Out::Pong(bytes) => framed(bytes.len()),
    }
}

impl Stream for Outgoing {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        let mut queued = this.queue.lock();
        if let Some(reason) = queued.closing.take() {
            queued.items.clear();
            queued.ended = true;
            drop(queued);
            this.finished = true;
            let mut buf = BytesMut::with_capacity(128);
            Parser::write_close(&mut buf, reason, false);
            return Poll::Ready(Some(Ok(buf.freeze())));
        }
        if queued.items.is_empty() {
            if queued.ended {
                drop(queued);
                this.finished = true;
                return Poll::Ready(None);
            }
            if !queued
                .writer
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                queued.writer = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        std::mem::swap(&mut queued.items, &mut this.taken);
        drop(queued);
        // Everything queued since the last write goes out as one.
        let mut buf = BytesMut::with_capacity(this.taken.iter().map(size).sum());
        for out in this.taken.drain(..) {
            encode(out, &mut buf);
        }
        Poll::Ready(Some(Ok(buf.freeze())))
    }
}

impl Drop for Outgoing {
    /// The connection is gone: nothing more is queued for it.
    fn drop(&mut self) {
        let mut queued = self.queue.lock();
        queued.ended = true;
        queued.items.clear();
        queued.writer = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_encoded_into_exactly_its_size() {
        let text = |n: usize| "x".repeat(n);
        let outs = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]
            .into_iter()
            .flat_map(|n| {
                [
                    Out::Shared(Arc::from(text(n))),
                    Out::Text(text(n)),
                    Out::Batch(vec![text(n), text(3)]),
                    Out::Pong(Bytes::from(text(n.min(125)))),
                ]
            })
            .chain([Out::Ping, Out::Batch(Vec::new())]);
        for out in outs {
            let expected = size(&out);
            let mut buf = BytesMut::with_capacity(expected);
            encode(out, &mut buf);
            assert_eq!(buf.len(), expected);
            assert_eq!(buf.capacity(), expected, "the buffer never grew");
        }
    }
}
