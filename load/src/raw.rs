//! The raw-insert baseline: an order row and its outbox row per order, written through the
//! hub's own driver (diesel-async, with the hub's SQLite settings) into a scratch database,
//! by independent clients in a closed loop, one order per transaction or `batch` per
//! transaction. What durable intake is compared with.

use anyhow::{Context, bail};
use diesel::sql_query;
use diesel::sql_types::{BigInt, Text};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

type SqliteConn = SyncConnectionWrapper<diesel::SqliteConnection>;

/// The hub's SQLite settings (src/db/mod.rs), so that both pay for the same durability.
/// Per connection; the journal mode is set once, when the scratch file is made (changing it
/// takes a lock that concurrent connections would fail on).
const SQLITE_SETUP: &str =
    "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";
const SQLITE_WAL: &str = "PRAGMA journal_mode = WAL;";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS raw_orders (id TEXT PRIMARY KEY, \
     school_id TEXT NOT NULL, student_id TEXT NOT NULL, state TEXT NOT NULL, \
     total_cents BIGINT NOT NULL, created_at TEXT NOT NULL); \
     CREATE TABLE IF NOT EXISTS raw_outbox (id TEXT PRIMARY KEY, \
     order_id TEXT NOT NULL REFERENCES raw_orders (id), channel TEXT NOT NULL, \
     payload TEXT NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL); \
     CREATE INDEX IF NOT EXISTS raw_outbox_pending ON raw_outbox (status, created_at);";

/// A scratch database: a SQLite file, or a PostgreSQL database made for the run and dropped
/// after it.
pub enum Scratch {
    Sqlite(std::path::PathBuf),
    /// `made`: the server's maintenance URL and the database's name, when this run made it.
    Postgres {
        url: String,
        made: Option<(String, String)>,
    },
}

impl Scratch {
    pub async fn sqlite() -> anyhow::Result<Scratch> {
        let path = std::env::temp_dir().join(format!(
            "tiffin-load-raw-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let scratch = Scratch::Sqlite(path);
        scratch.setup().await?;
        Ok(scratch)
    }

    /// `server` is a URL of the PostgreSQL server's maintenance database.
    pub async fn postgres(server: &str) -> anyhow::Result<Scratch> {
        let name = format!("tiffin_load_raw_{}", uuid::Uuid::new_v4().simple());
        create_database(server, &name).await?;
        let scratch = Scratch::Postgres {
            url: database_url(server, &name),
            made: Some((server.to_owned(), name)),
        };
        scratch.setup().await?;
        Ok(scratch)
    }

    /// One made by another process of this run, left for it to drop.
    pub fn existing_postgres(url: &str) -> Scratch {
        Scratch::Postgres {
            url: url.to_owned(),
            made: None,
        }
    }

    pub fn url(&self) -> String {
        match self {
            Scratch::Sqlite(path) => path.display().to_string(),
            Scratch::Postgres { url, .. } => url.clone(),
        }
    }

    async fn setup(&self) -> anyhow::Result<()> {
        match self {
            Scratch::Sqlite(_) => {
                let mut conn = sqlite(&self.url()).await?;
                conn.batch_execute(SQLITE_WAL).await?;
                conn.batch_execute(SCHEMA).await?
            }
            Scratch::Postgres { .. } => {
                AsyncPgConnection::establish(&self.url())
                    .await?
                    .batch_execute(SCHEMA)
                    .await?
            }
        }
        Ok(())
    }

    pub async fn drop_now(self) {
        match self {
            Scratch::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Scratch::Postgres { made: None, .. } => {}
            Scratch::Postgres {
                made: Some((server, name)),
                ..
            } => {
                if let Err(e) = drop_database(&server, &name).await {
                    eprintln!("tiffin-load: could not drop scratch database {name}: {e:#}");
                }
            }
        }
    }
}

/// The same server, another database.
pub fn database_url(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server, String::new()),
    };
    match base.rsplit_once('/') {
        Some((host, _)) if host.contains("://") && !host.ends_with('/') => {
            format!("{host}/{name}{query}")
        }
        _ => format!("{}/{name}{query}", base.trim_end_matches('/')),
    }
}

pub async fn create_database(server: &str, name: &str) -> anyhow::Result<()> {
    copy_database(server, name, None).await
}

/// Creates database `name`, empty or a copy of `template` (file by file: a roster of
/// millions copies in seconds where logging each block would take minutes).
pub async fn copy_database(server: &str, name: &str, template: Option<&str>) -> anyhow::Result<()> {
    let mut admin = AsyncPgConnection::establish(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let sql = match template {
        None => format!("CREATE DATABASE {name}"),
        Some(t) if t.contains('"') => bail!("no database is named {t:?}"),
        Some(t) => format!("CREATE DATABASE {name} TEMPLATE \"{t}\" STRATEGY FILE_COPY"),
    };
    admin
        .batch_execute(&sql)
        .await
        .with_context(|| format!("creating {name}"))?;
    Ok(())
}

pub async fn drop_database(server: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = AsyncPgConnection::establish(server).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    Ok(())
}

async fn sqlite(path: &str) -> anyhow::Result<SqliteConn> {
    let mut conn = SqliteConn::establish(path).await?;
    conn.batch_execute(SQLITE_SETUP).await?;
    Ok(conn)
}

/// Orders committed per second and the commit latency of one transaction.
pub struct Rate {
    pub orders_per_sec: f64,
    pub txn_p50_ms: f64,
    pub txn_p99_ms: f64,
}

/// `clients` connections each committing `batch` orders (each with its outbox row) per
/// transaction, as fast as they can, for `length`.
pub async fn measure(
    scratch: &Scratch,
    clients: usize,
    batch: usize,
    length: Duration,
) -> anyhow::Result<Rate> {
    let until = Instant::now() + length;
    let started = Instant::now();
    let runs = (0..clients).map(|client| async move {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut orders = 0u64;
        let mut n = 0usize;
        macro_rules! drive {
            ($conn:expr, $begin:expr, $order_sql:expr, $outbox_sql:expr) => {{
                let mut conn = $conn;
                while Instant::now() < until {
                    let began = Instant::now();
                    let first = n;
                    n += batch;
                    // Written out rather than diesel's `transaction`: SQLite takes its write
                    // lock at BEGIN IMMEDIATE, under the busy timeout, so that 16 writers
                    // queue instead of failing with "database is locked".
                    conn.batch_execute($begin).await?;
                    let inserted = async {
                        for i in first..first + batch {
                            let id = format!("{client}-{i}-{}", uuid::Uuid::now_v7().simple());
                            let at = chrono::Utc::now().to_rfc3339();
                            sql_query($order_sql)
                                .bind::<Text, _>(&id)
                                .bind::<Text, _>("school")
                                .bind::<Text, _>(format!("student-{client}-{i}"))
                                .bind::<Text, _>("placed")
                                .bind::<BigInt, _>(400i64)
                                .bind::<Text, _>(&at)
                                .execute(&mut conn)
                                .await?;
                            sql_query($outbox_sql)
                                .bind::<Text, _>(format!("{id}-receipt"))
                                .bind::<Text, _>(&id)
                                .bind::<Text, _>("email")
                                .bind::<Text, _>(r#"{"template":"order_placed"}"#)
                                .bind::<Text, _>("pending")
                                .bind::<Text, _>(&at)
                                .execute(&mut conn)
                                .await?;
                        }
                        Ok::<_, diesel::result::Error>(())
                    }
                    .await;
                    if let Err(e) = inserted {
                        let _ = conn.batch_execute("ROLLBACK").await;
                        return Err(e.into());
                    }
                    conn.batch_execute("COMMIT").await?;
                    let us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = latency.record(us.clamp(1, 60_000_000));
                    orders += batch as u64;
                }
            }};
        }
        match scratch {
            Scratch::Sqlite(_) => drive!(
                sqlite(&scratch.url()).await?,
                "BEGIN IMMEDIATE",
                "INSERT INTO raw_orders VALUES (?, ?, ?, ?, ?, ?)",
                "INSERT INTO raw_outbox VALUES (?, ?, ?, ?, ?, ?)"
            ),
            Scratch::Postgres { .. } => drive!(
                AsyncPgConnection::establish(&scratch.url()).await?,
                "BEGIN",
                "INSERT INTO raw_orders VALUES ($1, $2, $3, $4, $5, $6)",
                "INSERT INTO raw_outbox VALUES ($1, $2, $3, $4, $5, $6)"
            ),
        }
        anyhow::Ok((orders, latency))
    });
    let mut total = 0u64;
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for run in futures_util::future::join_all(runs).await {
        let (orders, latency) = run?;
        total += orders;
        all.add(&latency)?;
    }
    Ok(Rate {
        orders_per_sec: total as f64 / started.elapsed().as_secs_f64(),
        txn_p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        txn_p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_urls_name_another_database() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://127.0.0.1:5432", "x"),
            "postgres://127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }

    #[actix_web::test]
    async fn raw_inserts_commit_what_they_count() {
        let scratch = Scratch::sqlite().await.unwrap();
        let rate = measure(&scratch, 2, 4, Duration::from_millis(200))
            .await
            .unwrap();
        let mut conn = sqlite(&scratch.url()).await.unwrap();
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let orders: Count = sql_query("SELECT COUNT(*) AS n FROM raw_orders")
            .get_result(&mut conn)
            .await
            .unwrap();
        let outbox: Count = sql_query("SELECT COUNT(*) AS n FROM raw_outbox")
            .get_result(&mut conn)
            .await
            .unwrap();
        assert!(orders.n > 0 && orders.n % 4 == 0, "{}", orders.n);
        assert_eq!(orders.n, outbox.n);
        assert!(rate.orders_per_sec > 0.0 && rate.txn_p99_ms >= rate.txn_p50_ms);
        drop(conn);
        scratch.drop_now().await;
    }
}
