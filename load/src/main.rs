//! `tiffin-load`: places N orders through a running hub's API, then readies them as kitchen
//! staff and hands them over at the counter through signed RFID scans (each card read several
//! times, as real readers do), and reports throughput, latency and errors. It seeds its own
//! school, counter, readers and cards first, so it runs against any hub given an admin token.
//! Every run is bounded by the order count and a deadline. It fails on any loss or double.

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
    /// Raw reads a reader posts per card presented (only the first hands over).
    #[arg(long, default_value_t = 3)]
    reads_per_card: usize,
    /// Pause between one student's visits to the counter; keep it above the hub's
    /// `rfid.debounce_ms`, or a second visit reads as a repeat of the first.
    #[arg(long, default_value_t = 3100)]
    visit_gap_ms: u64,
    /// Skip the hand-over phase (orders only).
    #[arg(long)]
    no_pickup: bool,
}

#[derive(Debug)]
struct Outcome {
    student: usize,
    latency: Duration,
    result: Result<String, String>,
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).finish()
}

async fn call(req: awc::ClientRequest, body: Value) -> anyhow::Result<(u16, Value)> {
    reply(req.send_json(&body).await).await
}

/// A response's status and JSON body (null if it has none).
async fn reply<S>(
    sent: Result<awc::ClientResponse<S>, awc::error::SendRequestError>,
) -> anyhow::Result<(u16, Value)>
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    let mut res = sent.map_err(|e| anyhow::anyhow!("{e}"))?;
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
    /// (reader id, secret): one per ten students, all at the school's one counter.
    readers: Vec<(String, String)>,
}

/// A student's card as the load tool numbers it.
fn card_uid(n: usize) -> String {
    format!("10AD{n:08X}")
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
        let student_id = student["id"].as_str().context("student id")?.to_owned();
        created(
            c.post(url(&format!("/api/v1/schools/{id}/cards")))
                .bearer_auth(admin),
            json!({"student_id": student_id, "card_uid": card_uid(n)}),
        )
        .await?;
        students.push((
            student_id,
            tokens["access_token"].as_str().context("token")?.to_owned(),
        ));
    }
    let counter = created(
        c.post(url(&format!("/api/v1/schools/{id}/counters")))
            .bearer_auth(admin),
        json!({"number": 1, "is_open": true}),
    )
    .await?;
    let counter = counter["id"].as_str().context("counter id")?.to_owned();
    let mut readers = Vec::new();
    for n in 0..args.students.div_ceil(10) {
        let reader = created(
            c.post(url(&format!("/api/v1/schools/{id}/readers")))
                .bearer_auth(admin),
            json!({"name": format!("Load reader {n}"), "counter_id": counter}),
        )
        .await?;
        readers.push((
            reader["id"].as_str().context("reader id")?.to_owned(),
            reader["secret"]
                .as_str()
                .context("reader secret")?
                .to_owned(),
        ));
    }
    Ok(School {
        id,
        meal,
        students,
        readers,
    })
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
        student: n % school.students.len(),
        latency: started.elapsed(),
        result,
    }
}

/// A signed reader request: hex HMAC-SHA256 of `{ms}\n{METHOD}\n{path}\n{body}`.
async fn reader_post(
    args: &Args,
    reader: &(String, String),
    path: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    use hmac::Mac;
    let body = body.to_string();
    let timestamp = chrono::Utc::now().timestamp_millis();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(reader.1.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    mac.update(format!("{timestamp}\nPOST\n{path}\n").as_bytes());
    mac.update(body.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let sent = client()
        .post(format!("{}{path}", args.url))
        .insert_header(("X-Reader-Id", reader.0.as_str()))
        .insert_header(("X-Timestamp", timestamp.to_string()))
        .insert_header(("X-Signature", signature))
        .insert_header(("Content-Type", "application/json"))
        .send_body(body)
        .await;
    reply(sent).await
}

/// What the counter saw of one student's visits.
#[derive(Default)]
struct Visits {
    handed_over: Vec<String>,
    debounced: usize,
    scan_latencies: Vec<Duration>,
    errors: Vec<String>,
}

/// One student comes to the counter `visits` times; each time the reader reads the card
/// `reads` times in quick succession (numbered by the reader's own sequence).
async fn visit_counter(
    args: Rc<Args>,
    school: Rc<School>,
    student: usize,
    visits: usize,
    seq: Rc<std::cell::Cell<i64>>,
) -> Visits {
    let reader = &school.readers[student % school.readers.len()];
    let mut out = Visits::default();
    for visit in 0..visits {
        if visit > 0 {
            actix_web::rt::time::sleep(Duration::from_millis(args.visit_gap_ms)).await;
        }
        for _ in 0..args.reads_per_card.max(1) {
            let n = seq.get();
            seq.set(n + 1);
            let started = Instant::now();
            let body = json!({"seq": n, "card_uid": card_uid(student)});
            match reader_post(&args, reader, "/api/v1/reader/scans", &body).await {
                Ok((200, v)) => {
                    out.scan_latencies.push(started.elapsed());
                    match (v["verdict"].as_str(), v["debounced"].as_bool()) {
                        (Some("accepted"), Some(false)) => out
                            .handed_over
                            .push(v["order_id"].as_str().unwrap_or("").to_owned()),
                        (Some("accepted"), Some(true)) => out.debounced += 1,
                        (verdict, _) => out
                            .errors
                            .push(format!("verdict {}", verdict.unwrap_or("?"))),
                    }
                }
                Ok((status, v)) => out.errors.push(format!(
                    "{status} {}",
                    v["error"]["code"].as_str().unwrap_or("?")
                )),
                Err(e) => out.errors.push(format!("transport: {e}")),
            }
        }
    }
    out
}

/// Staff ready every accepted order; then each student collects theirs at the counter.
async fn pickup_phase(
    args: Rc<Args>,
    school: Rc<School>,
    accepted: &[(usize, String)],
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut readying = futures_util::stream::FuturesUnordered::new();
    let mut queue = accepted.iter();
    let mut ready_errors: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        while readying.len() < args.concurrency {
            let Some((_, order)) = queue.next() else {
                break;
            };
            let (args, order) = (args.clone(), order.clone());
            readying.push(async move {
                for action in ["confirm", "start", "ready"] {
                    let url = format!("{}/api/v1/orders/{order}/{action}", args.url);
                    match call(client().post(url).bearer_auth(&args.admin_token), json!({})).await {
                        Ok((200, _)) => {}
                        Ok((status, v)) => {
                            return Err(format!(
                                "{action} {status} {}",
                                v["error"]["code"].as_str().unwrap_or("?")
                            ));
                        }
                        Err(e) => return Err(format!("{action} transport: {e}")),
                    }
                }
                Ok(())
            });
        }
        match futures_util::StreamExt::next(&mut readying).await {
            Some(Ok(())) => {}
            Some(Err(e)) => *ready_errors.entry(e).or_default() += 1,
            None => break,
        }
    }
    let readied_in = started.elapsed();
    let mut per_student = vec![0usize; school.students.len()];
    for (student, _) in accepted {
        per_student[*student] += 1;
    }
    // Each reader numbers its own scans; students sharing a reader share its counter.
    let sequences: Vec<Rc<std::cell::Cell<i64>>> = school
        .readers
        .iter()
        .map(|_| Rc::new(std::cell::Cell::new(1)))
        .collect();
    let visits =
        futures_util::future::join_all(per_student.iter().enumerate().map(|(student, visits)| {
            let seq = sequences[student % sequences.len()].clone();
            visit_counter(args.clone(), school.clone(), student, *visits, seq)
        }))
        .await;
    let mut handed_over: Vec<String> = visits.iter().flat_map(|v| v.handed_over.clone()).collect();
    let mut scan_latencies: Vec<Duration> = visits
        .iter()
        .flat_map(|v| v.scan_latencies.clone())
        .collect();
    scan_latencies.sort();
    let mut scan_errors: BTreeMap<String, usize> = BTreeMap::new();
    for e in visits.iter().flat_map(|v| v.errors.clone()) {
        *scan_errors.entry(e).or_default() += 1;
    }
    let debounced: usize = visits.iter().map(|v| v.debounced).sum();
    let handed = handed_over.len();
    handed_over.sort();
    handed_over.dedup();
    let doubled = handed - handed_over.len();
    let expected: std::collections::HashSet<&str> =
        accepted.iter().map(|(_, id)| id.as_str()).collect();
    let missing = expected
        .iter()
        .filter(|id| handed_over.binary_search(&id.to_string()).is_err())
        .count();
    let ok = ready_errors.is_empty() && scan_errors.is_empty() && doubled == 0 && missing == 0;
    Ok(json!({
        "ok": ok,
        "readied": accepted.len(),
        "readied_seconds": readied_in.as_secs_f64(),
        "ready_errors": ready_errors,
        "handed_over": handed,
        "handed_over_twice": doubled,
        "not_handed_over": missing,
        "repeat_reads_debounced": debounced,
        "scan_errors": scan_errors,
        "scan_latency_ms": {
            "p50": percentile(&scan_latencies, 50.0),
            "p90": percentile(&scan_latencies, 90.0),
            "p99": percentile(&scan_latencies, 99.0),
            "max": scan_latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        },
    }))
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
    let mut by_student = Vec::new();
    for o in &outcomes {
        match &o.result {
            Ok(id) => {
                if accepted.insert(id.clone()) {
                    by_student.push((o.student, id.clone()));
                }
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

    let orders_ok =
        errors.is_empty() && lost == 0 && duplicated == 0 && accepted.len() == args.orders;
    let pickup = if args.no_pickup {
        json!(null)
    } else {
        pickup_phase(args.clone(), school.clone(), &by_student).await?
    };
    let pickup_ok = args.no_pickup || pickup["ok"] == true;
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
        "pickup": pickup,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(orders_ok && pickup_ok)
}

type Placing = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome>>>;

fn futures_unordered() -> futures_util::stream::FuturesUnordered<Placing> {
    futures_util::stream::FuturesUnordered::new()
}
