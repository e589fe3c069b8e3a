//! Persistence: one diesel DSL over PostgreSQL (production) and SQLite (embedded default).
//!
//! diesel-async has no released async `MultiConnection`, so [`Db`] is an enum over the two
//! pools and [`with_conn!`](crate::with_conn) expands one query body into both arms;
//! [`on_both_connections!`](crate::on_both_connections) implements a trait for both connection
//! types with one body. This is the backend switch: the queries live in `crate::store`.

pub mod checkpoint;
pub(crate) mod facts_epoch;
pub mod models;
mod prepared;
mod rows;
pub mod schema;
#[cfg(test)]
pub(crate) mod test_support;

pub use prepared::{Kept, kept};
pub use rows::new_id;
pub(crate) use rows::{InsertRows, find, insert, insert_outbox_pg};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::{Connection, SqliteConnection};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::RecyclingMethod;
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::{SpawnBlocking, SyncConnectionWrapper};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;
use std::time::Duration;

pub type PgConn = AsyncPgConnection;
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection, OnCallingThread>;

/// Runs each SQLite statement on the thread that awaits it. diesel-async's default hands
/// every statement to tokio's blocking pool and back: under load those hand-offs, not SQLite,
/// took most of the hub's CPU (BENCHMARKS.md). It works because the hub holds one SQLite
/// connection (see [`Db::connect`]): no statement ever waits for another connection's lock,
/// so a statement costs microseconds and a transaction, which never yields between its
/// statements, holds the connection only that long.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnCallingThread;

impl SpawnBlocking for OnCallingThread {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> futures_util::future::BoxFuture<'a, Result<R, Box<dyn std::error::Error + Send + Sync>>>
    where
        R: Send + 'static,
    {
        Box::pin(std::future::ready(Ok(task())))
    }

    fn get_runtime() -> Self {
        OnCallingThread
    }
}

/// One copy for both backends: every migration is written in SQL that PostgreSQL and SQLite
/// both accept (the up-down-up test runs them on each).
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Per-connection SQLite settings: the busy timeout first, so nothing after it fails with an
/// immediate SQLITE_BUSY; durable commits in WAL mode; enforced foreign keys.
pub(crate) const SQLITE_PRAGMAS: &str =
    "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";
/// WAL (concurrent readers beside one writer) is a property of the database file: set once,
/// before the pool opens, because switching needs the database to itself.
const SQLITE_WAL: &str = "PRAGMA journal_mode = WAL;";

/// A database URL, parsed once: its scheme selects the backend.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    /// The SQLite file path.
    Sqlite(String),
}

impl std::fmt::Debug for DatabaseUrl {
    // PostgreSQL URLs may carry a password: show the backend only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Postgres(_) => f.write_str("Postgres(..)"),
            DatabaseUrl::Sqlite(path) => write!(f, "Sqlite({path})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DatabaseUrl;

    #[test]
    fn urls_select_the_backend_and_redact_passwords() {
        let pg =
            DatabaseUrl::parse("postgres://app:hunter2@db:5432/tiffin?password=x&sslmode=require")
                .unwrap();
        assert_eq!(pg.redacted(), "postgres://***@db:5432/tiffin");
        assert!(!format!("{pg:?}").contains("hunter2"));
        assert_eq!(
            DatabaseUrl::parse("sqlite://t.db"),
            Ok(DatabaseUrl::Sqlite("t.db".into()))
        );
        assert!(DatabaseUrl::parse("mysql://x").is_err());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseUrl::Postgres(url.to_owned()))
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err("sqlite URL needs a file path, e.g. sqlite://tiffin.db".into());
            }
            Ok(DatabaseUrl::Sqlite(path.to_owned()))
        } else {
            Err("database URL must start with sqlite:// or postgres://".into())
        }
    }

    /// A loggable description with any password removed.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{path}"),
            DatabaseUrl::Postgres(url) => {
                // Passwords hide in the user part and in the query (`?password=`).
                let url = url.split('?').next().unwrap_or_default();
                match (url.find("://"), url.rfind('@')) {
                    (Some(scheme_end), Some(at)) if at > scheme_end => {
                        format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
                    }
                    _ => url.to_owned(),
                }
            }
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("not found")]
    NotFound,
    #[error("duplicate: {0}")]
    Duplicate(String),
    #[error("reference to a missing row: {0}")]
    MissingReference(String),
    #[error("database error: {0}")]
    Other(String),
}

impl From<diesel::result::Error> for DbError {
    fn from(e: diesel::result::Error) -> DbError {
        use diesel::result::{DatabaseErrorKind as K, Error as E};
        match e {
            E::NotFound => DbError::NotFound,
            E::DatabaseError(K::UniqueViolation, info) => DbError::Duplicate(info.message().into()),
            E::DatabaseError(K::ForeignKeyViolation, info) => {
                DbError::MissingReference(info.message().into())
            }
            // Not the caller's fault and likely gone on a retry: a lost or refused connection,
            // a server shutting down or failing over, a lost race between transactions.
            E::DatabaseError(
                K::ClosedConnection
                | K::UnableToSendCommand
                | K::SerializationFailure
                | K::ReadOnlyTransaction,
                info,
            ) => DbError::Unavailable(info.message().into()),
            E::DatabaseError(_, info) if is_transient(info.message()) => {
                DbError::Unavailable(info.message().into())
            }
            broken @ (E::BrokenTransactionManager | E::RollbackErrorOnCommit { .. }) => {
                DbError::Unavailable(broken.to_string())
            }
            other => DbError::Other(other.to_string()),
        }
    }
}

/// Server messages of transient failures diesel reports with no kind of their own (PostgreSQL's
/// SQLSTATE classes 08, 40, 53 and 57; SQLite's busy database).
fn is_transient(message: &str) -> bool {
    const TRANSIENT: [&str; 12] = [
        "database is locked",
        "database is busy",
        "terminating connection",
        "the database system is",
        "connection closed",
        "server closed the connection",
        "connection reset",
        "deadlock detected",
        "canceling statement",
        "too many connections",
        "remaining connection slots",
        "could not serialize access",
    ];
    TRANSIENT.iter().any(|t| message.contains(t))
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> DbError {
        DbError::Unavailable(e.to_string())
    }
}

tokio::task_local! {
    /// The operation whose statements this task is sending (see [`counted`]).
    static OPERATION: &'static str;
    /// Set while this task sends statements pipelined (see [`one_round_trip`]).
    static PIPELINED: ();
}

/// Counts every statement a connection sends (BEGIN and COMMIT included) toward the
/// operation counted on the task that sends it, and the round trips they take: each statement
/// is one, except those sent together through [`one_round_trip`].
struct CountRoundTrips;

impl Instrumentation for CountRoundTrips {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::StartQuery { .. } = event {
            // Statements outside a counted operation (dispatch, admin) are not counted.
            if let Ok(op) = OPERATION.try_with(|op| *op) {
                metrics::counter!("db_statements_total", "op" => op).increment(1);
                if PIPELINED.try_with(|_| ()).is_err() {
                    metrics::counter!("db_round_trips_total", "op" => op).increment(1);
                }
            }
        }
    }
}

/// Runs work done for operations of kind `op` (order, transition, scan): the statements it
/// sends count in `db_statements_total{op}` and their round trips in
/// `db_round_trips_total{op}`. A request's lookups and the batch that commits it run on
/// different tasks; each counts its own, and a batch counts in full for the task that leads
/// it. Divided by `db_operations_total{op}`, the mean per operation.
pub async fn counted<T>(op: &'static str, work: impl Future<Output = T>) -> T {
    OPERATION.scope(op, work).await
}

/// Sends statements that are polled together (diesel-async pipelines them on PostgreSQL)
/// counted as one round trip.
pub async fn one_round_trip<T>(work: impl Future<Output = T>) -> T {
    if let Ok(op) = OPERATION.try_with(|op| *op) {
        metrics::counter!("db_round_trips_total", "op" => op).increment(1);
    }
    PIPELINED.scope((), work).await
}

/// Counts one operation of kind `op` in `db_operations_total{op}`.
pub fn operation(op: &'static str) {
    operations(op, 1);
}

/// Counts `n` operations of kind `op`.
pub fn operations(op: &'static str, n: usize) {
    metrics::counter!("db_operations_total", "op" => op).increment(n as u64);
}

/// The connection pool of the configured backend.
#[derive(Clone)]
pub enum Db {
    Pg(Pool<PgConn>),
    Sqlite(Pool<SqliteConn>),
}

/// Runs one diesel body on a pooled connection of either backend: `$conn` is
/// `&mut AsyncPgConnection` in one arm and `&mut SyncConnectionWrapper<SqliteConnection>`
/// in the other. Pool errors return early as [`DbError`].
#[macro_export]
macro_rules! with_conn {
    ($db:expr, |$conn:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Pg(pool) => $crate::with_pooled!(pool, |$conn| $body),
            $crate::db::Db::Sqlite(pool) => $crate::with_pooled!(pool, |$conn| $body),
        }
    };
}

/// Implements a trait for both connection types with one body: diesel's query traits hold
/// per backend, and the bounds that would let one generic function run a query on either
/// connection are longer than the queries, so the body is written once and compiled twice.
#[macro_export]
macro_rules! on_both_connections {
    (impl $trait:path { $($body:tt)* }) => {
        impl $trait for $crate::db::PgConn { $($body)* }
        impl $trait for $crate::db::SqliteConn { $($body)* }
    };
}

/// Runs `body` with a connection of one backend's pool, its turn measured as `with_conn!`'s.
#[macro_export]
macro_rules! with_pooled {
    ($pool:expr, |$conn:ident| $body:expr) => {{
        let asked = std::time::Instant::now();
        let mut pooled = $pool.get().await.map_err($crate::db::DbError::from)?;
        let turn = $crate::db::Turn::began(asked);
        let $conn = &mut *pooled;
        let out = $body;
        turn.ended();
        out
    }};
}

/// One turn at a pooled connection: how long it was waited for and held. On SQLite's one
/// connection, the held seconds per second say how busy the database is, and the waits what
/// that costs its callers.
pub struct Turn {
    got: std::time::Instant,
}

impl Turn {
    pub fn began(asked: std::time::Instant) -> Turn {
        let got = std::time::Instant::now();
        metrics::histogram!("db_connection_wait_seconds").record((got - asked).as_secs_f64());
        Turn { got }
    }

    pub fn ended(self) {
        metrics::histogram!("db_connection_held_seconds").record(self.got.elapsed().as_secs_f64());
    }
}

/// Where nothing runs `ANALYZE` (autovacuum off), a statement prepared while its tables were
/// small keeps the plan made then, as they grow: PostgreSQL caches a generic plan after five
/// executions and, without new statistics, never replaces it. Plans made on empty tables read
/// them whole (an order looked up by its key did, at 1.5-3 ms a statement by the end of a
/// 15-second intake run; a scan's orders at 150-300 ms late in a rush). There, the
/// connection plans each statement for its parameters and the tables' current size
/// (`force_custom_plan`), and the hub says so once. Elsewhere the server's setting stands.
async fn plan_afresh_without_autovacuum(conn: &mut PgConn) -> Result<(), diesel::ConnectionError> {
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Mode {
        #[diesel(sql_type = Text)]
        mode: String,
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    let set: Mode = diesel::sql_query(
        "SELECT set_config('plan_cache_mode', CASE WHEN current_setting('autovacuum')::bool \
         THEN current_setting('plan_cache_mode') ELSE 'force_custom_plan' END, false) AS mode",
    )
    .get_result(conn)
    .await
    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    if set.mode == "force_custom_plan" {
        SAID.call_once(|| {
            tracing::warn!(
                "PostgreSQL's autovacuum is off: statements are planned afresh each time \
                 (plan_cache_mode = force_custom_plan) but for the hot batches (orders, \
                 transitions, scans' claims, dispatch), whose generic plans are held to \
                 their indexes; turn autovacuum on"
            )
        });
    }
    Ok(())
}

impl Db {
    /// `max_size` connections to PostgreSQL; always one to SQLite, which takes one writer
    /// at a time anyway: writers queue in the pool, in order, instead of sleeping in SQLite's
    /// busy handler (an unfair schedule of 1 to 100 ms naps that stalled whole threads once
    /// statements ran on them).
    pub fn connect(url: &DatabaseUrl, max_size: usize) -> Result<Db, DbError> {
        let wait = Some(Duration::from_secs(5));
        match url {
            DatabaseUrl::Postgres(url) => {
                let mut config = ManagerConfig::<PgConn>::default();
                // `Verified` sends `SELECT 1` at every checkout: a round trip per turn. A
                // connection the server closed is still caught (`is_closed`), and one that
                // breaks later fails its next statement as `database_unavailable`.
                config.recycling_method = RecyclingMethod::Fast;
                config.custom_setup = Box::new(|url| {
                    async move {
                        let mut conn = PgConn::establish(url).await?;
                        conn.set_instrumentation(CountRoundTrips);
                        plan_afresh_without_autovacuum(&mut conn).await?;
                        Ok(conn)
                    }
                    .boxed()
                });
                let manager = AsyncDieselConnectionManager::<PgConn>::new_with_config(url, config);
                let pool = Pool::builder(manager)
                    .max_size(max_size)
                    .wait_timeout(wait)
                    .create_timeout(wait)
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| DbError::Other(e.to_string()))?;
                Ok(Db::Pg(pool))
            }
            DatabaseUrl::Sqlite(path) => {
                let mut config = ManagerConfig::<SqliteConn>::default();
                config.custom_setup = Box::new(|path| {
                    async move {
                        let mut conn = SqliteConn::establish(path).await?;
                        conn.set_instrumentation(CountRoundTrips);
                        conn.batch_execute(SQLITE_PRAGMAS)
                            .await
                            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    }
                    .boxed()
                });
                let manager =
                    AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path, config);
                let pool = Pool::builder(manager)
                    .max_size(1)
                    .wait_timeout(wait)
                    .create_timeout(wait)
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| DbError::Other(e.to_string()))?;
                Ok(Db::Sqlite(pool))
            }
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Pg(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// A round trip to the database, for `/readyz`.
    pub async fn ping(&self) -> Result<(), DbError> {
        with_conn!(self, |conn| conn
            .batch_execute("SELECT 1")
            .await
            .map_err(DbError::from))
    }
}

/// Applies pending migrations; returns the versions applied. Runs on its own thread:
/// diesel's migration harness is synchronous.
pub async fn migrate(url: &DatabaseUrl) -> Result<Vec<String>, DbError> {
    let url = url.clone();
    run_on_thread(move || {
        let mut harness = MigrationConnection::establish(&url)?;
        harness.run_pending()
    })
    .await
}

/// Runs a blocking job on a plain thread (no runtime context, so diesel-async's wrapper
/// makes its own) and awaits the result.
pub async fn run_on_thread<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, DbError> + Send + 'static,
) -> Result<T, DbError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(job());
    });
    rx.await
        .map_err(|_| DbError::Other("migration thread died".into()))?
}

/// The advisory lock nodes take to migrate ("tiffinmg" in ASCII): held for the session, so a
/// node that dies while migrating lets the next one go on.
const MIGRATION_LOCK: i64 = 0x7469_6666_696e_6d67;

/// A synchronous connection for running migrations on either backend.
pub enum MigrationConnection {
    Pg(Box<AsyncConnectionWrapper<PgConn>>),
    Sqlite(Box<SqliteConnection>),
}

impl MigrationConnection {
    pub fn establish(url: &DatabaseUrl) -> Result<MigrationConnection, DbError> {
        let unavailable = |e: diesel::ConnectionError| DbError::Unavailable(e.to_string());
        match url {
            DatabaseUrl::Postgres(url) => Ok(MigrationConnection::Pg(Box::new(
                <AsyncConnectionWrapper<PgConn> as Connection>::establish(url)
                    .map_err(unavailable)?,
            ))),
            DatabaseUrl::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(path).map_err(unavailable)?;
                diesel::connection::SimpleConnection::batch_execute(&mut conn, SQLITE_PRAGMAS)?;
                diesel::connection::SimpleConnection::batch_execute(&mut conn, SQLITE_WAL)?;
                Ok(MigrationConnection::Sqlite(Box::new(conn)))
            }
        }
    }

    /// Applies what is pending. On PostgreSQL under a session lock: nodes starting together
    /// wait for the first to migrate, then find nothing left to do.
    pub fn run_pending(&mut self) -> Result<Vec<String>, DbError> {
        let names = |applied: Vec<diesel::migration::MigrationVersion<'_>>| {
            applied.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        let failed = |e: Box<dyn std::error::Error + Send + Sync>| {
            DbError::Other(format!("migration failed: {e}"))
        };
        match self {
            MigrationConnection::Pg(c) => {
                let lock = format!("SELECT pg_advisory_lock({MIGRATION_LOCK})");
                diesel::connection::SimpleConnection::batch_execute(c.as_mut(), &lock)?;
                let applied = c.run_pending_migrations(MIGRATIONS).map(names);
                let triggers = applied
                    .as_ref()
                    .ok()
                    .map(|applied| facts_epoch::install_triggers(c.as_mut(), !applied.is_empty()));
                let unlock = format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})");
                diesel::connection::SimpleConnection::batch_execute(c.as_mut(), &unlock)?;
                let applied = applied.map_err(failed)?;
                triggers.transpose()?;
                Ok(applied)
            }
            MigrationConnection::Sqlite(c) => c
                .run_pending_migrations(MIGRATIONS)
                .map(names)
                .map_err(failed),
        }
    }

    /// Reverts every applied migration, newest first; returns the versions reverted.
    pub fn revert_all(&mut self) -> Result<Vec<String>, DbError> {
        let reverted = match self {
            MigrationConnection::Pg(c) => c.revert_all_migrations(MIGRATIONS),
            MigrationConnection::Sqlite(c) => c.revert_all_migrations(MIGRATIONS),
        }
        .map_err(|e| DbError::Other(format!("revert failed: {e}")))?;
        Ok(reverted.iter().map(|v| v.to_string()).collect())
    }
}
