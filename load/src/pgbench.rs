//! The intake ceiling on PostgreSQL by PostgreSQL's own load driver: `pgbench` with a custom
//! script writing, per transaction, the rows the hub writes per order (the order, one item,
//! its event with a snapshot of the order's size), from 16 clients. The hub's durable intake
//! is judged against it.

use anyhow::{Context, bail};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use std::process::Command;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS bench_orders (id TEXT PRIMARY KEY, \
     school_id TEXT NOT NULL, student_id TEXT NOT NULL, placed_by TEXT NOT NULL, \
     state TEXT NOT NULL, version BIGINT NOT NULL, total_cents BIGINT NOT NULL, \
     idempotency_key TEXT, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL, \
     UNIQUE (placed_by, idempotency_key)); \
     CREATE TABLE IF NOT EXISTS bench_items (order_id TEXT NOT NULL REFERENCES bench_orders (id), \
     line INTEGER NOT NULL, meal_id TEXT NOT NULL, meal_name TEXT NOT NULL, \
     quantity INTEGER NOT NULL, unit_price_cents BIGINT NOT NULL, PRIMARY KEY (order_id, line)); \
     CREATE TABLE IF NOT EXISTS bench_events (school_id TEXT NOT NULL, seq BIGINT NOT NULL, \
     order_id TEXT NOT NULL REFERENCES bench_orders (id), version BIGINT NOT NULL, \
     kind TEXT NOT NULL, to_state TEXT NOT NULL, snapshot TEXT NOT NULL, \
     created_at TIMESTAMP NOT NULL, fanned_out BOOLEAN NOT NULL, \
     PRIMARY KEY (school_id, seq));";

/// One order a transaction: what the hub writes for it, with keys pgbench makes unique.
const SCRIPT: &str = "\\set n random(1, 1000000000000)\n\
BEGIN;\n\
INSERT INTO bench_orders VALUES ('o-' || :client_id || '-' || :n, 'school', 'student', \
'placer-' || :client_id, 'placed', 1, 450, 'key-' || :n, now(), now());\n\
INSERT INTO bench_items VALUES ('o-' || :client_id || '-' || :n, 1, 'meal', 'Pasta bake', 1, 450);\n\
INSERT INTO bench_events VALUES ('school-' || :client_id, :n, 'o-' || :client_id || '-' || :n, 1, \
'order.placed', 'placed', repeat('x', 600), now(), false);\n\
END;\n";

/// Orders a second pgbench commits with `clients` clients for `seconds`, on a database
/// at `url` that this makes the tables in. Fails clearly when pgbench is not installed.
pub async fn orders_per_sec(url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    AsyncPgConnection::establish(url)
        .await?
        .batch_execute(SCHEMA)
        .await?;
    let script = std::env::temp_dir().join(format!(
        "tiffin-load-pgbench-{}.sql",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&script, SCRIPT)?;
    let (clients, seconds, url) = (clients.to_string(), seconds.to_string(), url.to_owned());
    let script_path = script.clone();
    let out = actix_web::rt::task::spawn_blocking(move || {
        Command::new("pgbench")
            .args(["-n", "-c", &clients, "-j", "2", "-T", &seconds, "-f"])
            .arg(&script_path)
            .arg(&url)
            .output()
    })
    .await?;
    let _ = std::fs::remove_file(&script);
    let out = out.context(
        "running pgbench (PostgreSQL's load driver, installed with the server: \
         apt-get install postgresql-client)",
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tps(&stdout).with_context(|| format!("no tps in pgbench's output: {stdout}"))
}

/// The rate in pgbench's summary (`tps = 5510.3 (without initial connection time)`).
fn tps(summary: &str) -> Option<f64> {
    summary
        .lines()
        .filter_map(|line| line.strip_prefix("tps = "))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_rate_from_pgbenchs_summary() {
        let summary = "number of transactions actually processed: 55104\n\
                       latency average = 2.901 ms\n\
                       initial connection time = 8.731 ms\n\
                       tps = 5510.348 (without initial connection time)\n";
        assert_eq!(super::tps(summary), Some(5510.348));
        assert_eq!(super::tps("pgbench: error: no such file"), None);
    }
}
