//! Sockets the fan-out and idle comparisons open: on the hub (subscribed to a kitchen) or on
//! the bare server, counting the frames they see.

use crate::hub::client;
use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Frames seen by a set of sockets: how many, and when the last arrived.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) frames: Cell<u64>,
    pub(super) last: Cell<Option<Instant>>,
    pub(super) bytes: Cell<usize>,
}

/// Opens `n` sockets to `ws_url`; each subscribes with `subscribe` (if any) and counts the
/// text frames for which `counts` holds. Returns once every socket is subscribed (or
/// connected, for the bare server), with the reader tasks to abort.
pub(super) async fn open_sockets(
    ws_url: String,
    n: usize,
    subscribe: Option<String>,
    seen: Rc<Seen>,
    counts: fn(&[u8]) -> bool,
) -> anyhow::Result<Vec<actix_web::rt::task::JoinHandle<()>>> {
    let mut tasks = Vec::with_capacity(n);
    let ready = Rc::new(Cell::new(0usize));
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let opened = futures_util::future::join_all(chunk.iter().map(|_| {
            client()
                .ws(ws_url.as_str())
                .max_frame_size(8 << 20)
                .connect()
        }))
        .await;
        for socket in opened {
            let (_, mut socket) = socket.map_err(|e| anyhow::anyhow!("socket: {e}"))?;
            if let Some(subscribe) = &subscribe {
                socket
                    .send(awc::ws::Message::Text(subscribe.clone().into()))
                    .await
                    .map_err(|e| anyhow::anyhow!("subscribe: {e}"))?;
            } else {
                ready.set(ready.get() + 1);
            }
            let (seen, ready) = (seen.clone(), ready.clone());
            tasks.push(actix_web::rt::spawn(async move {
                while let Some(Ok(frame)) = socket.next().await {
                    match frame {
                        awc::ws::Frame::Text(text) => {
                            if contains(&text, br#""type":"subscribed""#) {
                                ready.set(ready.get() + 1);
                            } else if counts(&text) {
                                seen.frames.set(seen.frames.get() + 1);
                                seen.last.set(Some(Instant::now()));
                                seen.bytes.set(text.len());
                            }
                        }
                        awc::ws::Frame::Ping(p) => {
                            let _ = socket.send(awc::ws::Message::Pong(p)).await;
                        }
                        _ => {}
                    }
                }
            }));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready.get() < n {
        if Instant::now() > deadline {
            bail!("only {} of {n} sockets subscribed", ready.get());
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(tasks)
}

pub(super) fn close(tasks: Vec<actix_web::rt::task::JoinHandle<()>>) {
    for task in tasks {
        task.abort();
    }
}
pub(super) fn contains(text: &[u8], needle: &[u8]) -> bool {
    text.windows(needle.len()).any(|w| w == needle)
}

pub(super) fn any_text(_: &[u8]) -> bool {
    true
}
