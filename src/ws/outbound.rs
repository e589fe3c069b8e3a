//! The socket's write side: a bounded queue to a writer task of its own.

use actix_ws::CloseReason;
use std::time::Duration;

/// How long a closing socket waits for room to write its close frame before it gives up.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// What the socket actor hands its writer.
pub(super) enum Out {
    Text(String),
    /// A catch-up (snapshot or replay): one slot in the queue however long, so a resume
    /// after a long absence is not mistaken for a slow consumer.
    Batch(Vec<String>),
    Ping,
    Pong(actix_web::web::Bytes),
}

/// The write side: a bounded queue to a writer task, so a client that stops reading fills
/// the queue instead of the hub's memory, and never stalls the actor or the kitchen.
pub(super) struct Outbound {
    pub(super) queue: tokio::sync::mpsc::Sender<Out>,
    pub(super) close: Option<tokio::sync::oneshot::Sender<CloseReason>>,
}

/// Writes queued frames until told to close (the close frame jumps the queue) or the actor
/// goes away.
pub(super) async fn write_out(
    mut session: actix_ws::Session,
    mut queue: tokio::sync::mpsc::Receiver<Out>,
    mut close: tokio::sync::oneshot::Receiver<CloseReason>,
) {
    enum Step {
        Close(Option<CloseReason>),
        Next(Option<Out>),
    }
    loop {
        let step = tokio::select! {
            biased;
            reason = &mut close => Step::Close(reason.ok()),
            next = queue.recv() => Step::Next(next),
        };
        let out = match step {
            Step::Next(Some(out)) => out,
            Step::Next(None) | Step::Close(None) => break finish(session, None).await,
            Step::Close(reason) => break finish(session, reason).await,
        };
        let step = {
            let sent = async {
                match out {
                    Out::Text(text) => session.text(text).await,
                    Out::Batch(texts) => {
                        for text in texts {
                            session.text(text).await?;
                        }
                        Ok(())
                    }
                    Out::Ping => session.ping(b"").await,
                    Out::Pong(bytes) => session.pong(&bytes).await,
                }
            };
            tokio::select! {
                biased;
                reason = &mut close => Some(reason.ok()),
                sent = sent => sent.is_err().then_some(None),
            }
        };
        if let Some(reason) = step {
            break finish(session, reason).await;
        }
    }
}

async fn finish(session: actix_ws::Session, reason: Option<CloseReason>) {
    // A client that never reads never makes room: drop the connection after the grace.
    let _ = tokio::time::timeout(CLOSE_GRACE, session.close(reason)).await;
}
