//! What every batch shares: committed together or, should the batch fail, each command alone;
//! independent reads awaited one by one (SQLite) or sent together (PostgreSQL).

use super::{DieselStore, TxError};
use tiffin_actors::ports::CommandError;

/// A batch's commit: an answer per command, or the batch's own failure.
pub(super) type BatchCommit<'a, R> =
    futures_util::future::BoxFuture<'a, Result<Vec<Result<R, TxError>>, TxError>>;

/// Commits a batch together, answering each command; should the batch itself fail (a key
/// another request just took, a deadlock, the database), each is tried alone and answered for
/// itself, so one bad command cannot sink the others.
pub(super) async fn together_or_each<T: Sync, R>(
    store: &DieselStore,
    what: &'static str,
    batch: &[T],
    commit: for<'a> fn(&'a DieselStore, &'a [T]) -> BatchCommit<'a, R>,
) -> Vec<Result<R, TxError>> {
    match commit(store, batch).await {
        Ok(results) => results,
        Err(e) if batch.len() > 1 => {
            tracing::warn!(error = ?e, batch = what, size = batch.len(), "batch failed; trying each alone");
            let mut results = Vec::with_capacity(batch.len());
            for one in batch {
                let alone = commit(store, std::slice::from_ref(one)).await;
                results.push(alone.and_then(|mut answered| {
                    answered.pop().unwrap_or_else(|| {
                        Err(TxError::Refused(CommandError::Internal(format!(
                            "a command went unanswered in its {what} batch"
                        ))))
                    })
                }));
            }
            results
        }
        Err(e) => vec![Err(e)],
    }
}

// How a batch awaits its independent reads on each backend.
/// Awaits the reads one after another (SQLite: each microseconds, in process).
macro_rules! one_by_one {
    ($($read:expr),+ $(,)?) => {
        ($($read.await?),+)
    };
}

/// Sends the reads together on one PostgreSQL connection: diesel-async pipelines futures
/// polled at once, so they cost one round trip's wait instead of five. (Made inside the
/// async block: diesel-async starts a query when its future is made.)
macro_rules! pipelined {
    ($a:expr, $b:expr, $c:expr, $d:expr, $e:expr $(,)?) => {
        $crate::db::one_round_trip(async {
            futures_util::future::try_join5($a, $b, $c, $d, $e).await
        })
        .await?
    };
    ($a:expr, $b:expr, $c:expr, $d:expr $(,)?) => {
        $crate::db::one_round_trip(async { futures_util::future::try_join4($a, $b, $c, $d).await })
            .await?
    };
    ($a:expr, $b:expr, $c:expr $(,)?) => {
        $crate::db::one_round_trip(async { futures_util::future::try_join3($a, $b, $c).await })
            .await?
    };
    ($a:expr, $b:expr $(,)?) => {
        $crate::db::one_round_trip(async { futures_util::future::try_join($a, $b).await }).await?
    };
}

pub(crate) use {one_by_one, pipelined};
