//! What every batch shares: committed together or, should the batch fail, each command alone;
//! independent reads awaited one by one (SQLite) or sent together (PostgreSQL).

use super::{DieselStore, TxError};
use diesel::QueryResult;
use futures_util::future::{Either, Ready, ready};
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

/// A read made only when there is something to look for: no statement otherwise. The read is
/// made here, not when first polled, so it keeps its place among statements sent together.
pub(super) fn unless_none<T, F>(
    keys: &[&str],
    read: impl FnOnce() -> F,
) -> Either<Ready<QueryResult<Vec<T>>>, F>
where
    F: Future<Output = QueryResult<Vec<T>>>,
{
    if keys.is_empty() {
        Either::Left(ready(Ok(Vec::new())))
    } else {
        Either::Right(read())
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

/// Sends the reads (four or five) together on generic plans (`GENERIC_PLANS_PG`): BEGIN, the
/// settings, the reads and COMMIT made in order and sent in one round trip. For reads made so
/// often that planning each afresh (as the connection does where autovacuum is off) cost more
/// than running it; `plan_tests` holds them to their indexes under such plans. Every answer
/// is read (joined, not tried), so the transaction is closed either way.
macro_rules! pipelined_on_generic_plans {
    (@on $conn:expr, $join:ident, ($($name:ident),+), $($read:expr),+) => {{
        let conn: &$crate::db::PgConn = $conn;
        let (mut begin_on, mut plans_on, mut commit_on) = (conn, conn, conn);
        $crate::db::one_round_trip(async {
            let begin = $crate::db::kept(diesel::sql_query("BEGIN")).execute(&mut begin_on);
            let plans =
                $crate::db::kept(diesel::sql_query($crate::store::sequence::GENERIC_PLANS_PG))
                    .execute(&mut plans_on);
            let reads = futures_util::future::$join($($read),+);
            let commit = $crate::db::kept(diesel::sql_query("COMMIT")).execute(&mut commit_on);
            let (begin, plans, ($($name),+), commit) =
                futures_util::future::join4(begin, plans, reads, commit).await;
            begin?;
            plans?;
            let read = ($($name?),+);
            commit?;
            Ok::<_, diesel::result::Error>(read)
        })
        .await?
    }};
    ($conn:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr $(,)?) => {
        $crate::store::batch::pipelined_on_generic_plans!(
            @on $conn, join5, (a, b, c, d, e), $a, $b, $c, $d, $e
        )
    };
    ($conn:expr, $a:expr, $b:expr, $c:expr, $d:expr $(,)?) => {
        $crate::store::batch::pipelined_on_generic_plans!(
            @on $conn, join4, (a, b, c, d), $a, $b, $c, $d
        )
    };
}

pub(crate) use {one_by_one, pipelined, pipelined_on_generic_plans};
