//! `tiffin-load`: places N orders through a running hub's API and reports throughput,
//! latency and errors. It seeds its own school first, so it runs against any hub given an
//! admin token. Every run is bounded by the order count and a deadline.

use anyhow::{Context, bail};
use awc::Client;
use clap::Parser;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "tiffin-load",
    version,
    about = "Lunch-rush load driver for Tiffin"
)]
struct Args {
    /// Base URL of the hub, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin access token (`tiffin token --role admin`).
    #[arg(long, env = "TIFFIN_LOAD_ADMIN_TOKEN")]
    admin_token: String,
    /// Orders to place.
    #[arg(long, default_value_t = 500)]
    orders: usize,
    /// Students placing them.
    #[arg(long, default_value_t = 50)]
    students: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
}

#[derive(Debug)]
struct Outcome {
    latency: Duration,
    result: Result<String, String>,
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).finish()
}

async fn call(req: awc::ClientRequest, body: Value) -> anyhow::Result<(u16, Value)> {
    let mut res = req
        .send_json(&body)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes = res.body().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

async fn created(req: awc::ClientRequest, body: Value) -> anyhow::Result<Value> {
    let (status, value) = call(req, body).await?;
    if status != 201 && status != 200 {
        bail!("set-up request failed with {status}: {value}");
    }
    Ok(value)
}

struct School {
    id: String,
    meal: String,
    students: Vec<(String, String)>,
}

/// A school, one meal and students with their own access tokens.
async fn seed(args: &Args) -> anyhow::Result<School> {
    let c = client();
    let admin = &args.admin_token;
    let url = |p: &str| format!("{}{p}", args.url);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let school = created(
        c.post(url("/api/v1/schools")).bearer_auth(admin),
        json!({"name": format!("Load school {}", &run[..8]), "time_zone": "America/Chicago"}),
    )
    .await
    .context("creating the school (is the admin token right?)")?;
    let id = school["id"].as_str().context("school id")?.to_owned();
    let meal = created(
        c.post(url(&format!("/api/v1/schools/{id}/meals")))
            .bearer_auth(admin),
        json!({"name": "Load lasagna", "price_cents": 400}),
    )
    .await?;
    let meal = meal["id"].as_str().context("meal id")?.to_owned();
    let mut students = Vec::new();
    for n in 0..args.students {
        let login = format!("load-{run}-{n}@load.test");
        let student = created(
            c.post(url(&format!("/api/v1/schools/{id}/users"))).bearer_auth(admin),
            json!({"role": "student", "display_name": format!("Student {n}"), "email": login, "password": "load-password"}),
        )
        .await?;
        let tokens = created(
            c.post(url("/api/v1/auth/login")),
            json!({"login": login, "password": "load-password"}),
        )
        .await?;
        students.push((
            student["id"].as_str().context("student id")?.to_owned(),
            tokens["access_token"].as_str().context("token")?.to_owned(),
        ));
    }
    Ok(School { id, meal, students })
}

async fn place(args: Rc<Args>, school: Rc<School>, n: usize) -> Outcome {
    let (_, token) = &school.students[n % school.students.len()];
    let started = Instant::now();
    let result = call(
        client()
            .post(format!("{}/api/v1/schools/{}/orders", args.url, school.id))
            .bearer_auth(token)
            .insert_header(("Idempotency-Key", format!("load-{n}"))),
        json!({"items": [{"meal_id": school.meal, "quantity": 1}]}),
    )
    .await;
    let result = match result {
        Ok((201, body)) => body["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no id".into()),
        Ok((status, body)) => Err(format!(
            "{status} {}",
            body["error"]["code"].as_str().unwrap_or("unknown")
        )),
        Err(e) => Err(format!("transport: {e}")),
    };
    Outcome {
        latency: started.elapsed(),
        result,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("tiffin-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Returns whether every order was accepted and is accounted for.
async fn run(args: Args) -> anyhow::Result<bool> {
    if args.students == 0 || args.concurrency == 0 {
        bail!("--students and --concurrency must be at least 1");
    }
    let args = Rc::new(args);
    let school = Rc::new(seed(&args).await?);
    let deadline = Instant::now() + Duration::from_secs(args.deadline_secs);
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(args.orders);
    let mut next = 0;
    let mut in_flight = futures_unordered();
    while next < args.orders || !in_flight.is_empty() {
        while next < args.orders && in_flight.len() < args.concurrency {
            in_flight.push(Box::pin(place(args.clone(), school.clone(), next)));
            next += 1;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match actix_web::rt::time::timeout(remaining, futures_util::StreamExt::next(&mut in_flight))
            .await
        {
            Ok(Some(outcome)) => outcomes.push(outcome),
            Ok(None) => {}
            Err(_) => bail!(
                "deadline of {} s passed with {} orders in flight",
                args.deadline_secs,
                in_flight.len()
            ),
        }
    }
    let elapsed = started.elapsed();

    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    latencies.sort();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut accepted = std::collections::HashSet::new();
    for o in &outcomes {
        match &o.result {
            Ok(id) => {
                accepted.insert(id.clone());
            }
            Err(code) => *errors.entry(code.clone()).or_default() += 1,
        }
    }
    // Every accepted order must be in the kitchen: none lost, none doubled.
    let (status, live) = {
        let mut res = client()
            .get(format!(
                "{}/api/v1/schools/{}/orders/live",
                args.url, school.id
            ))
            .bearer_auth(&args.admin_token)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let body = res
            .body()
            .limit(64 << 20)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        (
            res.status().as_u16(),
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        )
    };
    if status != 200 {
        bail!("live orders answered {status}");
    }
    let live_ids: Vec<&str> = live
        .as_array()
        .map(|a| a.iter().filter_map(|o| o["id"].as_str()).collect())
        .unwrap_or_default();
    let unique_live: std::collections::HashSet<&str> = live_ids.iter().copied().collect();
    let lost = accepted
        .iter()
        .filter(|id| !unique_live.contains(id.as_str()))
        .count();
    let duplicated = live_ids.len() - unique_live.len();

    let report = json!({
        "orders": args.orders,
        "accepted": accepted.len(),
        "errors": errors,
        "lost": lost,
        "duplicated": duplicated,
        "seconds": elapsed.as_secs_f64(),
        "orders_per_second": outcomes.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        "latency_ms": {
            "p50": percentile(&latencies, 50.0),
            "p90": percentile(&latencies, 90.0),
            "p99": percentile(&latencies, 99.0),
            "max": latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(errors.is_empty() && lost == 0 && duplicated == 0 && accepted.len() == args.orders)
}

type Placing = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome>>>;

fn futures_unordered() -> futures_util::stream::FuturesUnordered<Placing> {
    futures_util::stream::FuturesUnordered::new()
}
