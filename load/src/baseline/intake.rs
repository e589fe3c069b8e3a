//! Durable intake: the hub placing orders (each committed with its outbox rows) against raw
//! inserts of an order row and an outbox row per transaction, and pgbench on PostgreSQL.

use super::seed::{School, place_orders};
use super::{Backend, Options, Series, WRITERS};
use crate::hub::{self, Target};
use crate::raw::Scratch;
use crate::stats::{cpu_per, server_cpu};
use anyhow::bail;
use serde::Deserialize;
use std::time::{Duration, Instant};

/// Orders per transaction in the batched raw-insert run.
pub(super) const BATCH: usize = 32;

/// What the bare server measures of raw inserts, in its pinned process.
#[derive(serde::Serialize, Deserialize)]
pub struct RawRequest {
    pub url: String,
    pub postgres: bool,
    pub clients: usize,
    pub batch: usize,
    pub millis: u64,
}

#[derive(serde::Serialize, Deserialize)]
pub struct RawAnswer {
    pub orders_per_sec: f64,
    pub txn_p50_ms: f64,
    pub txn_p99_ms: f64,
}

async fn raw(bare: &str, request: &RawRequest) -> anyhow::Result<RawAnswer> {
    let (status, body) = hub::reply(
        awc::Client::builder()
            .timeout(Duration::from_secs(120))
            .finish()
            .post(format!("{bare}/raw"))
            .send_json(request)
            .await,
    )
    .await?;
    if status != 200 {
        bail!("raw inserts failed: {body}");
    }
    Ok(serde_json::from_value(body)?)
}

/// One round: raw inserts (one a transaction, batched, one writer's commit p99), pgbench on
/// PostgreSQL, then the hub's intake with its statements per order; the round's line.
pub(super) async fn round(
    target: &Target,
    bare: &str,
    scratch: &Scratch,
    options: &Options,
    raw_writers: usize,
    all: &[&School],
    s: &mut Series,
) -> anyhow::Result<String> {
    let length = Duration::from_secs(options.seconds);
    let postgres = options.backend == Backend::Postgres;
    let raw_request = |clients, batch| RawRequest {
        url: scratch.url(),
        postgres,
        clients,
        batch,
        millis: length.as_millis() as u64,
    };
    let mut line = String::new();
    let one = raw(bare, &raw_request(raw_writers, 1)).await?;
    s.push("raw_insert_per_sec", one.orders_per_sec);
    let batched = raw(bare, &raw_request(raw_writers, BATCH)).await?;
    s.push("raw_insert_batched_per_sec", batched.orders_per_sec);
    let single = raw(bare, &raw_request(1, 1)).await?;
    s.push("raw_commit_p99_ms", single.txn_p99_ms);
    if postgres {
        let bench =
            crate::pgbench::orders_per_sec(&scratch.url(), WRITERS, options.seconds).await?;
        s.push("pgbench_orders_per_sec", bench);
        line += &format!(" pgbench {bench:.0}/s;");
    }
    let cpu = server_cpu(target.pid);
    let page = crate::hub::metrics_page(&target.url).await;
    let began = Instant::now();
    let (intake, refused) = place_orders(&target.url, all, length).await;
    let after = crate::hub::metrics_page(&target.url).await;
    let delta = |name: &str| {
        crate::hub::metric_value(&after, name).unwrap_or(0.0)
            - crate::hub::metric_value(&page, name).unwrap_or(0.0)
    };
    let orders = delta(r#"db_operations_total{op="order"}"#);
    if orders > 0.0 {
        s.push(
            "hub_statements_per_order",
            delta(r#"db_statements_total{op="order"}"#) / orders,
        );
        s.push(
            "hub_round_trips_per_order",
            delta(r#"db_round_trips_total{op="order"}"#) / orders,
        );
    }
    let batches = delta("order_commit_batch_size_count");
    if batches > 0.0 {
        s.push(
            "hub_orders_per_batch",
            delta("order_commit_batch_size_sum") / batches,
        );
    }
    if refused > 0 {
        bail!("the hub refused {refused} orders during the intake run");
    }
    s.push("hub_intake_per_sec", intake);
    // Whether the hub ran out of CPU (1.0: its whole core) or waited.
    if let Some(busy) = cpu_per(cpu, server_cpu(target.pid), 1) {
        s.push(
            "hub_cores_busy_intake",
            busy / 1e6 / began.elapsed().as_secs_f64(),
        );
    }
    line += &format!(
        " intake {intake:.0}/s vs raw {:.0}/s ({:.0}/s batched);",
        one.orders_per_sec, batched.orders_per_sec
    );
    Ok(line)
}
