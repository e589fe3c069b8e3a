//! Statements of fixed text that a PostgreSQL connection prepares once and keeps.
//!
//! diesel's `sql_query` (and its multi-row inserts and its updates) cannot be kept, so
//! diesel-async prepares such a statement each time it runs it, and waits for the server's
//! answer while holding the connection's statement cache: every such statement of a
//! "pipelined" batch cost a round trip of its own before the next could be sent (a
//! transition batch's BEGIN, lock, write and COMMIT four in a row), and PostgreSQL parsed it
//! afresh. A kept statement is sent at once, so a batch of them is one round trip.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// A statement kept by the connection under its text and its parameters' types.
#[derive(Debug, Clone)]
#[must_use = "a statement runs only when executed or loaded"]
pub struct Kept<Q>(Q);

/// `query` (a `sql_query` of fixed text, its parameters bound), prepared on a connection's
/// first use of its text and kept. Only for text that does not vary with the call: each
/// text is a statement the connection keeps.
pub fn kept<Q>(query: Q) -> Kept<Q> {
    Kept(query)
}

impl<Q: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for Kept<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

/// Kept by its text: there is no id of its type, which every such statement shares.
impl<Q> QueryId for Kept<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Kept<Q> {
    type SqlType = Q::SqlType;
}
