//! Baselines measured in the same run as the hub, so that every goal is a ratio on this
//! machine. The bare servers and the raw inserts run in a child process (`bare-server`)
//! pinned, like the hub, to CPU 0; this driver runs on CPU 1. Rounds alternate bare and hub;
//! the report gives medians, plus the driver's own CPU so that a driver-bound round shows.
//!
//! - HTTP path: hello-world against an authenticated request the hub refuses at validation
//!   (request id, access log, metrics, rate limit, JWT, routing, error body; no database).
//! - Durable intake: 16 clients placing orders (each committed with its outbox rows, then
//!   201) against raw writers inserting an order row and an outbox row per transaction, and
//!   batched, through the same driver (16 writers on PostgreSQL, one on SQLite, which takes
//!   one writer at a time).
//! - Fan-out: frames per second to many sockets on one kitchen against the bare broadcast
//!   server's; and the bare server's publish -> frame p99 with 10 sockets at a fixed rate,
//!   which with one client's commit p99 gives the scan -> dashboard budget.
//! - Idle sockets: hub memory per authenticated, subscribed socket against the bare server's.
//! - Outbox drain: on a hub of its own whose email goes to a sink that stalls while the 16
//!   intake clients place orders, then takes 50 ms a message: the emails a second intake
//!   commits against the emails a second the hub then delivers from the backlog.

use crate::hub::{self, StartedHub, Target, client, created};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::cell::Cell;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Connections kept busy by the closed-loop HTTP driver.
const CLIENTS: usize = 32;
/// Independent writers in the intake comparison.
const WRITERS: usize = 16;
/// Orders per transaction in the batched raw-insert run.
const BATCH: usize = 32;
/// Publishers in the fan-out comparison.
const PUBLISHERS: usize = 4;
/// Sockets per kitchen when timing publish -> frame.
const LATENCY_SOCKETS: usize = 10;
/// Messages a second when timing publish -> frame.
const LATENCY_RATE: f64 = 200.0;

pub use crate::hub::Backend;

/// The comparisons, to run some alone (e.g. under a profiler).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Http,
    Intake,
    Fanout,
    Idle,
    Drain,
    /// Verified scans a second (an absolute goal: no bare server does what a scan does).
    Scans,
}

#[derive(clap::Args)]
pub struct Options {
    /// Rounds of each, alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Length of one measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// The database of the hub the tool starts, and of the raw inserts.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    /// The PostgreSQL server (its maintenance database) for scratch databases, made for the
    /// run and dropped after it.
    #[arg(
        long,
        env = "TIFFIN_LOAD_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,
    /// Kitchen screens on one kitchen in the fan-out comparison (with fewer, the hub's
    /// kitchen commits, not its fan-out, set the pace).
    #[arg(long, default_value_t = 1000)]
    pub fanout_sockets: usize,
    /// Idle sockets for the memory comparison (0: skip it).
    #[arg(long, default_value_t = 15_000)]
    pub idle_sockets: usize,
    /// SMTP sessions the drain's hub holds to its 50 ms sink: one email at a time goes over
    /// each, so they bound its drain (20 emails a second each).
    #[arg(long, default_value_t = crate::sink::SMTP_SESSIONS)]
    pub smtp_sessions: usize,
    /// Only these comparisons (e.g. one under a profiler); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Leave the processes unpinned.
    #[arg(long)]
    pub no_pin: bool,
}

impl Options {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// A child process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pins every thread of `pid` (and those it starts later) to one CPU.
fn pin(pid: u32, cpu: usize) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts this tool's bare server; returns it and its base URL.
fn bare_server() -> anyhow::Result<(Guard, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("bare-server")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the bare server")?;
    let stdout = child.stdout.take().context("bare server stdout")?;
    let guard = Guard(child);
    let port = hub::announced(stdout, "bare listening on ", Duration::from_secs(20))
        .context("the bare server did not start")?;
    Ok((guard, format!("http://127.0.0.1:{port}")))
}

/// Requests per second that `CLIENTS` connections get through in `length`, each sending the
/// next request as soon as the last is answered (closed loop: the server's capacity).
async fn capacity(url: String, token: Option<String>, expect: u16, length: Duration) -> (f64, u64) {
    let done = Rc::new(Cell::new(0u64));
    let wrong = Rc::new(Cell::new(0u64));
    let until = Instant::now() + length;
    let workers = (0..CLIENTS).map(|_| {
        let (url, token, done, wrong) = (url.clone(), token.clone(), done.clone(), wrong.clone());
        async move {
            let c = client();
            while Instant::now() < until {
                let mut req = c.get(&url);
                if let Some(token) = &token {
                    req = req.bearer_auth(token);
                }
                match req.send().await {
                    Ok(mut res) if res.status().as_u16() == expect => {
                        let _ = res.body().await;
                        done.set(done.get() + 1);
                    }
                    _ => wrong.set(wrong.get() + 1),
                }
            }
        }
    });
    let started = Instant::now();
    futures_util::future::join_all(workers).await;
    if wrong.get() > 0 {
        eprintln!("tiffin-load: {} unexpected answers from {url}", wrong.get());
    }
    (
        done.get() as f64 / started.elapsed().as_secs_f64(),
        done.get(),
    )
}

/// A server's CPU microseconds per request over a capacity run: its efficiency, which the
/// driver's own limit does not hide.
async fn serve_cost(
    pid: Option<u32>,
    run: impl Future<Output = (f64, u64)>,
) -> (f64, Option<f64>, f64) {
    let before = server_cpu(pid);
    let ((rate, done), busy) = timed(run).await;
    (rate, cpu_per(before, server_cpu(pid), done), busy)
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// A school of the intake and fan-out runs.
struct School {
    id: String,
    meal: String,
    staff: String,
    students: Vec<String>,
}

/// `n` schools, each with a meal, a kitchen-staff member (signed in) and a few students
/// with a guardian each, so that an order commits the same rows as in a rush. With
/// `receipts_by_email` the guardians chose an email receipt for every order (email is not a
/// default for routine news): the drain's emails.
async fn seed(target: &Target, n: usize, receipts_by_email: bool) -> anyhow::Result<Vec<School>> {
    let c = client();
    let admin = &target.admin_token;
    let url = |p: &str| format!("{}{p}", target.url);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut schools = Vec::new();
    for s in 0..n {
        let (id, meal) = hub::school_with_meal(
            target,
            format!("Baseline school {s} ({})", &run[..8]),
            "America/Chicago",
            ("Baseline soup", 300),
        )
        .await?;
        let login = format!("baseline-{run}-{s}@load.test");
        created(
            c.post(url(&format!("/api/v1/schools/{id}/users"))).bearer_auth(admin),
            json!({"role": "kitchen_staff", "display_name": "Kitchen", "email": login, "password": "baseline-pass"}),
        )
        .await?;
        let signed_in = created(
            c.post(url("/api/v1/auth/login")),
            json!({"login": login, "password": "baseline-pass"}),
        )
        .await?;
        let mut students = Vec::new();
        for k in 0..4 {
            let student = created(
                c.post(url(&format!("/api/v1/schools/{id}/users"))).bearer_auth(admin),
                json!({"role": "student", "display_name": format!("Student {k}"), "email": format!("baseline-{run}-{s}-{k}@load.test")}),
            )
            .await?;
            let student = student["id"].as_str().context("student id")?.to_owned();
            let guardian_login = format!("baseline-{run}-{s}-g{k}@load.test");
            let mut body = json!({"role": "guardian", "display_name": format!("Guardian {k}"), "email": guardian_login});
            if receipts_by_email {
                body["password"] = json!("baseline-pass");
            }
            let guardian = created(
                c.post(url(&format!("/api/v1/schools/{id}/users")))
                    .bearer_auth(admin),
                body,
            )
            .await?;
            if receipts_by_email {
                let token = created(
                    c.post(url("/api/v1/auth/login")),
                    json!({"login": guardian_login, "password": "baseline-pass"}),
                )
                .await?;
                created(
                    c.put(url("/api/v1/me/preferences"))
                        .bearer_auth(token["access_token"].as_str().context("guardian token")?),
                    json!({"preferences": [{"kind": "order_placed", "channel": "email", "enabled": true}]}),
                )
                .await?;
            }
            created(
                c.post(url(&format!("/api/v1/schools/{id}/guardian-links")))
                    .bearer_auth(admin),
                json!({"guardian_id": guardian["id"], "student_id": student, "relationship": "parent"}),
            )
            .await?;
            students.push(student);
        }
        schools.push(School {
            id,
            meal,
            staff: signed_in["access_token"]
                .as_str()
                .context("staff token")?
                .to_owned(),
            students,
        });
    }
    Ok(schools)
}

/// Orders placed (201) per second by one closed-loop client per given school.
async fn place_orders(url: &str, schools: &[&School], length: Duration) -> (f64, u64) {
    let refused = Rc::new(Cell::new(0u64));
    let until = Instant::now() + length;
    let started = Instant::now();
    let clients = schools.iter().map(|school| {
        let refused = refused.clone();
        async move {
            let c = client();
            let mut placed = 0u64;
            while Instant::now() < until {
                let student = &school.students[placed as usize % school.students.len()];
                let body = json!({"student_id": student, "items": [{"meal_id": school.meal, "quantity": 1}]});
                let outcome = hub::call(
                    c.post(format!("{url}/api/v1/schools/{}/orders", school.id))
                        .bearer_auth(&school.staff),
                    &body,
                )
                .await;
                match outcome {
                    Ok((201, _)) => placed += 1,
                    other => {
                        refused.set(refused.get() + 1);
                        if refused.get() == 1 {
                            eprintln!(
                                "tiffin-load: an order was refused: {}",
                                hub::code_of(&other)
                            );
                        }
                    }
                }
            }
            placed
        }
    });
    let placed: u64 = futures_util::future::join_all(clients).await.iter().sum();
    (
        placed as f64 / started.elapsed().as_secs_f64(),
        refused.get(),
    )
}

/// Frames seen by a set of sockets: how many, and when the last arrived.
#[derive(Default)]
struct Seen {
    frames: Cell<u64>,
    last: Cell<Option<Instant>>,
    bytes: Cell<usize>,
}

/// Opens `n` sockets to `ws_url`; each subscribes with `subscribe` (if any) and counts the
/// text frames for which `counts` holds. Returns once every socket is subscribed (or
/// connected, for the bare server), with the reader tasks to abort.
async fn open_sockets(
    ws_url: String,
    n: usize,
    subscribe: Option<String>,
    seen: Rc<Seen>,
    counts: fn(&[u8]) -> bool,
) -> anyhow::Result<Vec<actix_web::rt::task::JoinHandle<()>>> {
    let mut tasks = Vec::with_capacity(n);
    let ready = Rc::new(Cell::new(0usize));
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let opened = futures_util::future::join_all(chunk.iter().map(|_| {
            client()
                .ws(ws_url.as_str())
                .max_frame_size(8 << 20)
                .connect()
        }))
        .await;
        for socket in opened {
            let (_, mut socket) = socket.map_err(|e| anyhow::anyhow!("socket: {e}"))?;
            if let Some(subscribe) = &subscribe {
                socket
                    .send(awc::ws::Message::Text(subscribe.clone().into()))
                    .await
                    .map_err(|e| anyhow::anyhow!("subscribe: {e}"))?;
            } else {
                ready.set(ready.get() + 1);
            }
            let (seen, ready) = (seen.clone(), ready.clone());
            tasks.push(actix_web::rt::spawn(async move {
                while let Some(Ok(frame)) = socket.next().await {
                    match frame {
                        awc::ws::Frame::Text(text) => {
                            if contains(&text, br#""type":"subscribed""#) {
                                ready.set(ready.get() + 1);
                            } else if counts(&text) {
                                seen.frames.set(seen.frames.get() + 1);
                                seen.last.set(Some(Instant::now()));
                                seen.bytes.set(text.len());
                            }
                        }
                        awc::ws::Frame::Ping(p) => {
                            let _ = socket.send(awc::ws::Message::Pong(p)).await;
                        }
                        _ => {}
                    }
                }
            }));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready.get() < n {
        if Instant::now() > deadline {
            bail!("only {} of {n} sockets subscribed", ready.get());
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(tasks)
}

fn close(tasks: Vec<actix_web::rt::task::JoinHandle<()>>) {
    for task in tasks {
        task.abort();
    }
}

/// Waits for `expected` frames (at most 10 s more); frames per second from `started` to
/// the last arrival.
async fn frames_per_sec(seen: &Seen, expected: u64, started: Instant) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.frames.get() < expected && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let end = seen.last.get().unwrap_or(started);
    seen.frames.get() as f64 / end.duration_since(started).as_secs_f64().max(1e-9)
}

fn contains(text: &[u8], needle: &[u8]) -> bool {
    text.windows(needle.len()).any(|w| w == needle)
}

fn is_order_placed(text: &[u8]) -> bool {
    contains(text, br#""type":"order.placed""#)
}

fn any_text(_: &[u8]) -> bool {
    true
}

/// The hub's fan-out: `sockets` kitchen screens on one school while `PUBLISHERS` clients
/// place orders there; frames per second, and one frame's size.
async fn hub_fanout(
    target: &Target,
    school: &School,
    sockets: usize,
    length: Duration,
) -> anyhow::Result<(f64, Option<f64>, usize)> {
    let seen = Rc::new(Seen::default());
    let ws = format!(
        "{}/api/v1/ws?access_token={}",
        target.url.replacen("http", "ws", 1),
        school.staff
    );
    let subscribe = json!({"type": "subscribe", "topic": format!("kitchen:{}", school.id)});
    let tasks = open_sockets(
        ws,
        sockets,
        Some(subscribe.to_string()),
        seen.clone(),
        is_order_placed,
    )
    .await?;
    let cpu = server_cpu(target.pid);
    let started = Instant::now();
    let publishers: Vec<&School> = (0..PUBLISHERS).map(|_| school).collect();
    let (per_sec, _) = place_orders(&target.url, &publishers, length).await;
    let placed = (per_sec * started.elapsed().as_secs_f64()).round() as u64;
    let rate = frames_per_sec(&seen, placed * sockets as u64, started).await;
    let cost = cpu_per(cpu, server_cpu(target.pid), seen.frames.get());
    close(tasks);
    Ok((rate, cost, seen.bytes.get()))
}

fn server_cpu(pid: Option<u32>) -> Option<f64> {
    pid.and_then(hub::usage).map(|(cpu, _)| cpu)
}

/// CPU microseconds per unit of work between two readings.
fn cpu_per(before: Option<f64>, after: Option<f64>, units: u64) -> Option<f64> {
    match (before, after) {
        (Some(a), Some(b)) if units > 0 => Some((b - a) * 1e6 / units as f64),
        _ => None,
    }
}

/// The bare server's fan-out: the same sockets and publishers, the same frame size.
async fn bare_fanout(
    bare: &str,
    bare_pid: u32,
    sockets: usize,
    frame_bytes: usize,
    length: Duration,
) -> anyhow::Result<(f64, Option<f64>)> {
    let seen = Rc::new(Seen::default());
    let ws = format!("{}/ws", bare.replacen("http", "ws", 1));
    let tasks = open_sockets(ws, sockets, None, seen.clone(), any_text).await?;
    let body = "x".repeat(frame_bytes.max(1));
    let cpu = server_cpu(Some(bare_pid));
    let until = Instant::now() + length;
    let started = Instant::now();
    let publishers = (0..PUBLISHERS).map(|_| {
        let body = body.clone();
        async move {
            let c = client();
            let mut sent = 0u64;
            while Instant::now() < until {
                if let Ok(mut res) = c
                    .post(format!("{bare}/publish"))
                    .send_body(body.clone())
                    .await
                {
                    let _ = res.body().await;
                    sent += 1;
                }
            }
            sent
        }
    });
    let sent: u64 = futures_util::future::join_all(publishers)
        .await
        .iter()
        .sum();
    let rate = frames_per_sec(&seen, sent * sockets as u64, started).await;
    let cost = cpu_per(cpu, server_cpu(Some(bare_pid)), seen.frames.get());
    close(tasks);
    Ok((rate, cost))
}

/// The bare server's publish -> frame p99 (ms) with `LATENCY_SOCKETS` sockets, messages sent
/// at `LATENCY_RATE` a second for `length` and timed from when each was due.
async fn bare_fanout_p99(bare: &str, length: Duration) -> anyhow::Result<f64> {
    let ws = format!("{}/ws", bare.replacen("http", "ws", 1));
    let latency = Rc::new(std::cell::RefCell::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    ));
    let due = Rc::new(std::cell::RefCell::new(Vec::<Instant>::new()));
    // Each socket times its frames against the due time of the message they carry.
    let mut tasks = Vec::new();
    for _ in 0..LATENCY_SOCKETS {
        let (_, mut socket) = client()
            .ws(ws.as_str())
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("socket: {e}"))?;
        let (latency, due) = (latency.clone(), due.clone());
        tasks.push(actix_web::rt::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                if let awc::ws::Frame::Text(text) = frame {
                    let n: Option<usize> = std::str::from_utf8(&text)
                        .ok()
                        .and_then(|t| t.split(':').next())
                        .and_then(|k| k.parse().ok());
                    if let Some(at) = n.and_then(|n| due.borrow().get(n).copied()) {
                        let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = latency.borrow_mut().record(us.clamp(1, 60_000_000));
                    }
                }
            }
        }));
    }
    let count = (LATENCY_RATE * length.as_secs_f64()) as usize;
    let start = Instant::now() + Duration::from_millis(100);
    let mut sends = Vec::new();
    for k in 0..count {
        let at = start + Duration::from_secs_f64(k as f64 / LATENCY_RATE);
        actix_web::rt::time::sleep_until(at.into()).await;
        due.borrow_mut().push(at);
        let body = format!("{k}:{}", "x".repeat(500));
        let url = format!("{bare}/publish");
        sends.push(actix_web::rt::spawn(async move {
            if let Ok(mut res) = client().post(url).send_body(body).await {
                let _ = res.body().await;
            }
        }));
    }
    for send in sends {
        let _ = send.await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while (latency.borrow().len() as usize) < count * LATENCY_SOCKETS && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    close(tasks);
    let p99 = latency.borrow().value_at_quantile(0.99) as f64 / 1000.0;
    Ok(p99)
}

/// Memory per idle socket (KiB): the server's resident memory before and after `n` sockets
/// (hub: authenticated and subscribed to a kitchen), settled.
async fn idle_socket_kib(
    pid: u32,
    ws_url: &str,
    n: usize,
    subscribe: Option<String>,
) -> anyhow::Result<f64> {
    let before = hub::memory_kib(pid, "VmRSS").context("server memory")?;
    let tasks = open_sockets(
        ws_url.to_owned(),
        n,
        subscribe,
        Rc::new(Seen::default()),
        any_text,
    )
    .await?;
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    let after = hub::memory_kib(pid, "VmRSS").context("server memory")?;
    close(tasks);
    // Let the server see the sockets go before the next measurement.
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    Ok((after - before) / n as f64)
}

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

/// Waits (at most 60 s) until a server uses under 5% of a core: work a measurement left
/// behind (the outbox draining after intake) must not run into the next one.
async fn quiesce(pid: Option<u32>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let before = server_cpu(pid);
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        match cpu_per(before, server_cpu(pid), 1) {
            Some(us) if us / 1e6 / 0.5 < 0.05 => return,
            None => return,
            _ => {}
        }
    }
    eprintln!("tiffin-load: the hub was still busy after 60 s");
}

/// Our own CPU seconds so far.
fn own_cpu() -> f64 {
    server_cpu(Some(std::process::id())).unwrap_or_default()
}

/// Runs `f` and returns its value with the driver's cores busy meanwhile.
async fn timed<T>(f: impl Future<Output = T>) -> (T, f64) {
    let (cpu, at) = (own_cpu(), Instant::now());
    let value = f.await;
    (
        value,
        (own_cpu() - cpu) / at.elapsed().as_secs_f64().max(1e-9),
    )
}

#[derive(Default)]
struct Series(std::collections::BTreeMap<&'static str, Vec<f64>>);

impl Series {
    fn push(&mut self, name: &'static str, value: f64) {
        self.0.entry(name).or_default().push(value);
    }
    fn medians(&mut self) -> std::collections::BTreeMap<&'static str, f64> {
        self.0
            .iter_mut()
            .map(|(name, values)| (*name, median(values)))
            .collect()
    }
}

/// A hub for the baselines: the one given by URL, or one the tool starts on the chosen
/// backend (a scratch PostgreSQL database, dropped with it).
struct Hub {
    target: Target,
    own: Option<crate::hub::OwnHub>,
    started: Option<StartedHub>,
}

impl Hub {
    /// `env`: where the hub's email goes.
    async fn start(
        hub_args: &crate::HubArgs,
        options: &Options,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Hub> {
        if hub_args.url.is_none() && options.backend == Backend::Postgres {
            let own = crate::hub::OwnHub::start(
                &hub_args.hub_bin,
                options.backend,
                &options.postgres_url,
                env,
            )
            .await?;
            return Ok(Hub {
                target: own.started.target(),
                own: Some(own),
                started: None,
            });
        }
        let (target, started) = hub_args.target(env)?;
        Ok(Hub {
            target,
            own: None,
            started,
        })
    }

    async fn stop(self, _options: &Options) {
        drop(self.started);
        if let Some(own) = self.own {
            own.stop().await;
        }
    }
}

pub async fn run(hub_args: &crate::HubArgs, options: &Options) -> anyhow::Result<Value> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut pinned = !options.no_pin && cores >= 2 && pin(std::process::id(), 1);
    let mut pin_servers = |hub: &Hub, bare: &Guard| {
        pinned = pinned && pin(bare.0.id(), 0) && hub.target.pid.is_some_and(|pid| pin(pid, 0));
    };
    let sink = crate::sink::SmtpSink::start(Duration::ZERO)?;
    let hub = Hub::start(hub_args, options, sink.hub_env(crate::sink::SMTP_SESSIONS)).await?;
    let (bare_guard, bare) = bare_server()?;
    pin_servers(&hub, &bare_guard);
    let outcome = measure(&hub.target, &bare, bare_guard.0.id(), options).await;
    hub.stop(options).await;
    drop(bare_guard);
    let mut report = outcome?;

    // Idle sockets on fresh processes: memory the rounds freed would hide the sockets' cost.
    if options.idle_sockets > 0 && options.runs(Part::Idle) {
        let hub = Hub::start(hub_args, options, sink.hub_env(crate::sink::SMTP_SESSIONS)).await?;
        let (bare_guard, bare) = bare_server()?;
        pin_servers(&hub, &bare_guard);
        let measured = idle_sockets(&hub.target, &bare, bare_guard.0.id(), options).await;
        hub.stop(options).await;
        drop(bare_guard);
        if let (Some(goal), Some(goals)) = (measured?, report["goals"].as_array_mut()) {
            goals.push(goal);
        }
    }

    // The drain on a hub of its own: its outbox must start empty, its sink be slow.
    if options.runs(Part::Drain) {
        if hub_args.url.is_some() {
            eprintln!(
                "tiffin-load: with --url the hub's email sink is not ours: drain not measured"
            );
        } else {
            let slow = crate::sink::SmtpSink::start(DRAIN_SINK_DELAY)?;
            let hub = Hub::start(hub_args, options, slow.hub_env(options.smtp_sessions)).await?;
            if pinned {
                pinned = hub.target.pid.is_some_and(|pid| pin(pid, 0));
            }
            let measured = drain(&hub.target, &slow, options).await;
            hub.stop(options).await;
            let (goal, medians) = measured?;
            if let Some(goals) = report["goals"].as_array_mut() {
                goals.push(goal);
            }
            report["drain_medians"] = medians;
        }
    }
    // Scans on a hub of their own: a school of ready orders seeded for them.
    if options.runs(Part::Scans) {
        let hub = Hub::start(hub_args, options, sink.hub_env(crate::sink::SMTP_SESSIONS)).await?;
        if pinned {
            pinned = hub.target.pid.is_some_and(|pid| pin(pid, 0));
        }
        let measured =
            crate::scans::measure(&hub.target, Duration::from_secs(options.seconds)).await;
        hub.stop(options).await;
        let measured = measured?;
        if let Some(goals) = report["goals"].as_array_mut() {
            goals.push(measured);
        }
    }
    report["pinned"] = json!(pinned);
    report["cores"] = json!(cores);
    Ok(report)
}

/// How long the drain's sink takes to accept each email (the goal's slow provider).
const DRAIN_SINK_DELAY: Duration = Duration::from_millis(50);
/// The longest the drain's sink stalls (its intake's length).
const MAX_STALL: Duration = Duration::from_secs(10);
/// The drain waits for its backlog at most this long after intake stops.
const DRAIN_WAIT: Duration = Duration::from_secs(180);

/// Emails over one drain round, as the sink saw them.
#[derive(Debug, PartialEq)]
struct DrainRound {
    /// Emails the round's orders committed, per second of intake.
    intake_per_sec: f64,
    /// Delivered per second from the end of intake until the last: the backlog's drain.
    /// `None` when too few were left to time.
    drain_per_sec: Option<f64>,
    /// Left waiting when intake stopped.
    backlog: usize,
}

/// Fewer emails than this left at the end of intake are too few to time a drain by.
const MIN_BACKLOG: usize = 100;

/// A round's rates from the first arrival of each of its emails (`arrivals`, in seconds since
/// intake began) and intake's length. Every email was committed during intake: an order is
/// answered only once its outbox rows are.
fn drain_round(arrivals: &[f64], intake_secs: f64) -> DrainRound {
    let after: Vec<f64> = arrivals
        .iter()
        .copied()
        .filter(|&t| t > intake_secs)
        .collect();
    let last = after.iter().copied().fold(intake_secs, f64::max);
    DrainRound {
        intake_per_sec: arrivals.len() as f64 / intake_secs,
        drain_per_sec: (after.len() >= MIN_BACKLOG)
            .then(|| after.len() as f64 / (last - intake_secs)),
        backlog: after.len(),
    }
}

/// The drain goal, in rounds: the sink stalls while 16 clients place orders for
/// `options.seconds` (the hub's intake, its outbox filling), then answers in 50 ms a message
/// while the hub drains what its intake left. Measured without the stall, the hub's intake
/// and dispatch share its core and the drain keeps up, leaving nothing to time.
async fn drain(
    target: &Target,
    sink: &crate::sink::SmtpSink,
    options: &Options,
) -> anyhow::Result<(Value, Value)> {
    // The hub gives up on a send after 15 s, waiting for a session included: a longer
    // stall would time the retries' backoff, not the drain.
    let length = Duration::from_secs(options.seconds).min(MAX_STALL);
    let schools = seed(target, WRITERS, true).await?;
    let all: Vec<&School> = schools.iter().collect();
    let mut s = Series::default();
    let mut duplicated = 0usize;
    for round in 1..=options.rounds {
        quiesce(target.pid).await;
        let known: std::collections::HashSet<String> = sink.deliveries().into_keys().collect();
        sink.pause(true);
        let began = chrono::Utc::now();
        let (orders_per_sec, refused) = place_orders(&target.url, &all, length).await;
        let intake_secs = (chrono::Utc::now() - began).as_seconds_f64();
        sink.pause(false);
        let (cpu, unpaused) = (server_cpu(target.pid), Instant::now());
        if refused > 0 {
            bail!("the hub refused {refused} orders during the drain run");
        }
        // Until no email has arrived for 3 s (the sink takes 50 ms each).
        let deadline = Instant::now() + DRAIN_WAIT;
        let mut seen = sink.delivered();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_secs(3) {
            actix_web::rt::time::sleep(Duration::from_millis(250)).await;
            let now = sink.delivered();
            if now != seen {
                (seen, quiet_since) = (now, Instant::now());
            }
        }
        // Whether the hub's core ran out while draining (1.0: all of it), or it waited.
        if let Some(busy) = cpu_per(cpu, server_cpu(target.pid), 1) {
            let drained_for = unpaused.elapsed().saturating_sub(Duration::from_secs(3));
            s.push(
                "hub_cores_busy_drain",
                busy / 1e6 / drained_for.as_secs_f64().max(1e-3),
            );
        }
        let deliveries = sink.deliveries();
        let mut arrivals = Vec::new();
        let fresh = deliveries.iter().filter(|(id, _)| !known.contains(*id));
        for (_, times) in fresh {
            duplicated += times.len().saturating_sub(1);
            if let Some(first) = times.iter().min() {
                arrivals.push((*first - began).as_seconds_f64());
            }
        }
        let measured = drain_round(&arrivals, intake_secs);
        let mut line = format!(
            "tiffin-load: drain round {round}: {orders_per_sec:.0} orders/s committed {:.0} emails/s; {} left, ",
            measured.intake_per_sec, measured.backlog
        );
        match measured.drain_per_sec {
            Some(rate) => {
                line += &format!("drained at {rate:.0}/s");
                s.push("drain_emails_per_sec", rate);
            }
            None => line += "too few to time",
        }
        eprintln!("{line}");
        s.push("intake_orders_per_sec", orders_per_sec);
        s.push("intake_emails_per_sec", measured.intake_per_sec);
        s.push("backlog_at_intake_end", measured.backlog as f64);
    }
    let m = s.medians();
    let intake = m.get("intake_emails_per_sec").copied().unwrap_or(0.0);
    let ratio = m
        .get("drain_emails_per_sec")
        .map(|drain| drain / intake.max(1e-9));
    let goal = json!({
        "goal": "outbox drain >= 2x the sustained intake rate against sinks that answer in 50 ms",
        "smtp_sessions": options.smtp_sessions,
        "duplicated": duplicated,
        "ratio": ratio,
        "met": duplicated == 0 && ratio.is_some_and(|r| r >= 2.0),
    });
    Ok((goal, json!(m)))
}

/// The idle-socket goal: hub memory per authenticated socket subscribed to a kitchen,
/// against the bare server's per socket.
async fn idle_sockets(
    target: &Target,
    bare: &str,
    bare_pid: u32,
    options: &Options,
) -> anyhow::Result<Option<Value>> {
    let n = options.idle_sockets;
    let Some(pid) = target.pid else {
        eprintln!("tiffin-load: no --hub-pid: hub memory per socket not measured");
        return Ok(None);
    };
    let school = seed(target, 1, false).await?;
    let school = school.first().context("seeded school")?;
    let ws = format!(
        "{}/api/v1/ws?access_token={}",
        target.url.replacen("http", "ws", 1),
        school.staff
    );
    let subscribe = json!({"type": "subscribe", "topic": format!("kitchen:{}", school.id)});
    // A few sockets first, so that one-off costs (buffers, the kitchen actor) are not counted.
    idle_socket_kib(pid, &ws, 16, Some(subscribe.to_string())).await?;
    let hub_kib = idle_socket_kib(pid, &ws, n, Some(subscribe.to_string())).await?;
    let bare_ws = format!("{}/ws", bare.replacen("http", "ws", 1));
    idle_socket_kib(bare_pid, &bare_ws, 16, None).await?;
    let bare_kib = idle_socket_kib(bare_pid, &bare_ws, n, None).await?;
    let density = bare_kib / hub_kib.max(1e-9);
    Ok(Some(json!({
        "goal": format!("idle authenticated WebSocket <= 25 KB at {n} sockets, >= 0.6x the bare server's density"),
        "hub_kib_per_socket": hub_kib,
        "bare_kib_per_socket": bare_kib,
        "ratio": density,
        "met": hub_kib * 1.024 <= 25.0 && density >= 0.6,
    })))
}

/// The bare server's CPU per unit of work over the hub's, where both were read.
fn cost_ratio(m: &std::collections::BTreeMap<&str, f64>, bare: &str, hub: &str) -> Option<f64> {
    Some(m.get(bare)? / m.get(hub)?.max(1e-9))
}

/// A throughput goal, judged twice: by rate, and by CPU per unit of work, because a driver
/// can run out of CPU before the server it measures (hello-world's does).
fn throughput_goal(goal: &str, floor: f64, ratio: f64, cpu_ratio: Option<f64>) -> Value {
    json!({
        "goal": goal,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "met": ratio >= floor && cpu_ratio.is_none_or(|c| c >= floor),
    })
}

async fn measure(
    target: &Target,
    bare: &str,
    bare_pid: u32,
    options: &Options,
) -> anyhow::Result<Value> {
    let length = Duration::from_secs(options.seconds);
    let postgres = options.backend == Backend::Postgres;
    let schools = seed(target, WRITERS, false).await?;
    let scratch = match options.backend {
        Backend::Sqlite => crate::raw::Scratch::sqlite().await?,
        Backend::Postgres => crate::raw::Scratch::postgres(&options.postgres_url).await?,
    };
    let raw_request = |clients, batch| RawRequest {
        url: scratch.url(),
        postgres,
        clients,
        batch,
        millis: length.as_millis() as u64,
    };
    // SQLite takes one writer at a time: more only add the busy handler's unfair backoff
    // (seen: p99 2.4 s, and "database is locked" past its 5 s), so its rate is one writer's.
    let raw_writers = if postgres { WRITERS } else { 1 };
    let mut s = Series::default();
    let hello = format!("{bare}/hello");
    let refused_path = format!("{}/api/v1/orders/not-an-id", target.url);
    let all: Vec<&School> = schools.iter().collect();
    let mut frame_bytes = 600;
    let outcome = async {
        for round in 1..=options.rounds {
            let mut line = format!("tiffin-load: baseline round {round}:");
            if options.runs(Part::Http) {
                quiesce(target.pid).await;
                let (bare_rate, bare_cost, busy) =
                    serve_cost(Some(bare_pid), capacity(hello.clone(), None, 200, length)).await;
                s.push("hello_world_per_sec", bare_rate);
                s.push("driver_cores_busy_hello_world", busy);
                let (rate, cost, busy) = serve_cost(
                    target.pid,
                    capacity(
                        refused_path.clone(),
                        Some(target.admin_token.clone()),
                        400,
                        length,
                    ),
                )
                .await;
                s.push("hub_http_path_per_sec", rate);
                s.push("driver_cores_busy_hub_http_path", busy);
                if let (Some(bare_cost), Some(cost)) = (bare_cost, cost) {
                    s.push("hello_world_cpu_us_per_request", bare_cost);
                    s.push("hub_http_path_cpu_us_per_request", cost);
                }
                line += &format!(" http {rate:.0} vs {bare_rate:.0}/s;");
            }
            if options.runs(Part::Intake) {
                quiesce(target.pid).await;
                let one = raw(bare, &raw_request(raw_writers, 1)).await?;
                s.push("raw_insert_per_sec", one.orders_per_sec);
                let batched = raw(bare, &raw_request(raw_writers, BATCH)).await?;
                s.push("raw_insert_batched_per_sec", batched.orders_per_sec);
                let single = raw(bare, &raw_request(1, 1)).await?;
                s.push("raw_commit_p99_ms", single.txn_p99_ms);
                if postgres {
                    let bench =
                        crate::pgbench::orders_per_sec(&scratch.url(), WRITERS, options.seconds)
                            .await?;
                    s.push("pgbench_orders_per_sec", bench);
                    line += &format!(" pgbench {bench:.0}/s;");
                }
                let cpu = server_cpu(target.pid);
                let page = crate::hub::metrics_page(&target.url).await;
                let began = Instant::now();
                let (intake, refused) = place_orders(&target.url, &all, length).await;
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
            }
            if options.runs(Part::Fanout) {
                quiesce(target.pid).await;
                let (hub_rate, hub_cost, bytes) =
                    hub_fanout(target, &schools[0], options.fanout_sockets, length).await?;
                frame_bytes = bytes.max(1);
                s.push("hub_fanout_frames_per_sec", hub_rate);
                quiesce(target.pid).await;
                let (bare_run, busy) = timed(bare_fanout(
                    bare,
                    bare_pid,
                    options.fanout_sockets,
                    frame_bytes,
                    length,
                ))
                .await;
                let (bare_rate, bare_cost) = bare_run?;
                s.push("bare_fanout_frames_per_sec", bare_rate);
                s.push("driver_cores_busy_bare_fanout", busy);
                if let (Some(hub_cost), Some(bare_cost)) = (hub_cost, bare_cost) {
                    s.push("hub_fanout_cpu_us_per_frame", hub_cost);
                    s.push("bare_fanout_cpu_us_per_frame", bare_cost);
                }
                s.push("bare_fanout_p99_ms", bare_fanout_p99(bare, length).await?);
                line += &format!(" fan-out {hub_rate:.0} vs {bare_rate:.0} frames/s;");
            }
            eprintln!("{line}");
        }
        anyhow::Ok(())
    }
    .await;
    scratch.drop_now().await;
    outcome?;

    let m = s.medians();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let ratio = |a: f64, b: f64| a / b.max(1e-9);
    let http = ratio(get("hub_http_path_per_sec"), get("hello_world_per_sec"));
    // PostgreSQL: against pgbench writing the hub's rows per order; SQLite: one writer's
    // raw inserts.
    let intake_ratio = if postgres {
        ratio(get("hub_intake_per_sec"), get("pgbench_orders_per_sec"))
    } else {
        ratio(get("hub_intake_per_sec"), get("raw_insert_per_sec"))
    };
    let fanout = ratio(
        get("hub_fanout_frames_per_sec"),
        get("bare_fanout_frames_per_sec"),
    );
    // The scan -> dashboard goal's budget: twice (one commit + a bare fan-out).
    let budget = match (m.get("raw_commit_p99_ms"), m.get("bare_fanout_p99_ms")) {
        (Some(commit), Some(fanout)) => json!(2.0 * (commit + fanout)),
        _ => Value::Null,
    };
    let (intake_goal, intake_name) = if postgres {
        (
            1.0,
            "durable intake >= 1.0x pgbench writing the hub's rows per order, 16 clients (PostgreSQL)",
        )
    } else {
        (
            3.0,
            "durable intake >= 3x raw one-row-per-transaction WAL inserts (SQLite)",
        )
    };
    let mut goals = Vec::new();
    if options.runs(Part::Http) {
        goals.push(throughput_goal(
            "HTTP path without the database >= 0.6x hello-world",
            0.6,
            http,
            cost_ratio(
                &m,
                "hello_world_cpu_us_per_request",
                "hub_http_path_cpu_us_per_request",
            ),
        ));
    }
    if options.runs(Part::Intake) {
        goals.push(
            json!({"goal": intake_name, "ratio": intake_ratio, "met": intake_ratio >= intake_goal}),
        );
    }
    if options.runs(Part::Fanout) {
        goals.push(throughput_goal(
            "fan-out >= 0.5x the bare broadcast server",
            0.5,
            fanout,
            cost_ratio(
                &m,
                "bare_fanout_cpu_us_per_frame",
                "hub_fanout_cpu_us_per_frame",
            ),
        ));
    }
    Ok(json!({
        "mode": "baseline",
        "backend": if postgres { "postgres" } else { "sqlite" },
        "rounds": options.rounds,
        "seconds_per_round": options.seconds,
        "http_clients": CLIENTS,
        "hub_intake_clients": WRITERS,
        "raw_writers": raw_writers,
        "raw_batch": BATCH,
        "fanout_sockets": options.fanout_sockets,
        "fanout_frame_bytes": frame_bytes,
        "idle_sockets": options.idle_sockets,
        "medians": m,
        "scan_to_dashboard_budget_ms": budget,
        "goals": goals,
    }))
}

#[cfg(test)]
mod tests {
    use super::{DrainRound, drain_round, median};

    #[test]
    fn drain_times_only_what_intake_left() {
        // 10 s of intake committing 100 emails a second; 600 delivered meanwhile, the other
        // 400 over the 2 s after.
        let mut arrivals: Vec<f64> = (0..600).map(|i| f64::from(i) / 60.0).collect();
        arrivals.extend((1..=400).map(|i| 10.0 + f64::from(i) / 200.0));
        assert_eq!(
            drain_round(&arrivals, 10.0),
            DrainRound {
                intake_per_sec: 100.0,
                drain_per_sec: Some(200.0),
                backlog: 400,
            }
        );
        // A hub that kept up leaves only the sink's last 50 ms: nothing to time.
        let kept_up: Vec<f64> = (0..1000).map(|i| f64::from(i) / 100.0 + 0.05).collect();
        let round = drain_round(&kept_up, 10.0);
        assert_eq!(round.drain_per_sec, None);
        assert!(round.backlog <= 5, "{round:?}");
    }

    #[test]
    fn median_of_rounds() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [5.0]), 5.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
