//! A database of its own for each test, on SQLite or the shared PostgreSQL.

/// PostgreSQL for tests; the test command checks it is up before anything runs.
pub fn postgres_admin_url() -> String {
    std::env::var("TIFFIN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

async fn pg_admin(sql: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let url = postgres_admin_url();
    let mut conn = AsyncPgConnection::establish(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required for these tests: {e}"));
    conn.batch_execute(sql).await.expect("admin SQL");
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.path().join("tiffin.db").display()),
                backend,
                pg_name: None,
                _dir: dir,
            },
            Backend::Postgres => {
                let name = format!("tiffin_test_{}", uuid::Uuid::new_v4().simple());
                pg_admin(&format!("CREATE DATABASE {name}")).await;
                let base = postgres_admin_url();
                let url = match base.rfind('/') {
                    Some(i) => format!("{}/{name}", &base[..i]),
                    None => panic!("bad TIFFIN_TEST_POSTGRES_URL"),
                };
                TestDb {
                    url,
                    backend,
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Cuts every session on this PostgreSQL database, as a failover or a server restart does.
    pub async fn terminate_connections(&self) {
        if let Some(name) = &self.pg_name {
            pg_admin(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            ))
            .await;
        }
    }

    pub async fn drop_database(mut self) {
        if let Some(name) = self.pg_name.take() {
            pg_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}

impl Drop for TestDb {
    /// A test's PostgreSQL database goes with it, passed or failed, so runs do not pile them
    /// up; on a thread of its own, as the test's runtime may be ending.
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            let dropped = std::thread::spawn(move || {
                actix_web::rt::System::new().block_on(pg_admin(&format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
            })
            .join();
            if dropped.is_err() && !std::thread::panicking() {
                panic!("could not drop the test's database");
            }
        }
    }
}

/// Runs SQL on the test's database directly: what an earlier version of the hub left
/// behind, or a time moved past.
pub async fn db_execute(db: &TestDb, sql: &str) {
    match db.backend {
        Backend::Sqlite => {
            use diesel::{Connection, RunQueryDsl, sqlite::SqliteConnection};
            let path = db.url.strip_prefix("sqlite://").unwrap();
            let mut conn = SqliteConnection::establish(path).unwrap();
            // A hub still running may hold the write lock for a moment.
            diesel::sql_query("PRAGMA busy_timeout = 10000")
                .execute(&mut conn)
                .unwrap();
            diesel::sql_query(sql).execute(&mut conn).unwrap();
        }
        Backend::Postgres => {
            use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
            let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
            conn.batch_execute(sql).await.unwrap();
        }
    }
}
