//! The group commit of "sent" records.

use crate::ports::{CommandError, Outbox};
use std::sync::Mutex;

type SentReply = tokio::sync::oneshot::Sender<Result<(), CommandError>>;

/// Group commit of "sent": a delivery's record waits for the write under way, then the next
/// write takes every record queued meanwhile. On SQLite every write queues for the one
/// connection behind the kitchens' orders: one per message made them wait (BENCHMARKS.md).
#[derive(Default)]
pub(super) struct SentLog {
    queued: Mutex<Vec<(String, SentReply)>>,
    writing: tokio::sync::Mutex<()>,
}

impl SentLog {
    pub(super) async fn record(&self, outbox: &dyn Outbox, id: &str) -> Result<(), CommandError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((id.to_owned(), done));
        {
            let _writer = self.writing.lock().await;
            let batch = std::mem::take(
                &mut *self
                    .queued
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            // Empty when an earlier writer took this record along.
            if !batch.is_empty() {
                let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
                let written = outbox.mark_sent(&ids).await;
                metrics::histogram!("notify_sent_batch_size").record(ids.len() as f64);
                for (_, done) in batch {
                    let _ = done.send(written.clone());
                }
            }
        }
        outcome
            .await
            .map_err(|_| CommandError::Internal("sent record dropped".into()))?
    }
}
