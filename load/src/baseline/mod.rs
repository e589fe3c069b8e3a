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
//!
//! Here the rounds, the pinning, the medians and the goals; one file per comparison (`http`,
//! `intake`, `fanout`, `idle`, `drain`, `scans`), the schools they order at (`seed`) and
//! their sockets (`sockets`).

mod drain;
mod fanout;
mod http;
mod idle;
pub mod intake;
mod scans;
mod seed;
mod sockets;

use crate::hub::{self, StartedHub, Target};
use crate::stats::{cpu_per, median, server_cpu};
use anyhow::Context;
use drain::{DRAIN_SINK_DELAY, drain};
use idle::idle_sockets;
use seed::{School, seed};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Independent writers in the intake comparison.
const WRITERS: usize = 16;

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
    /// Scans a second offered across the scan benchmark's readers (open loop, the goal's
    /// measure); 0 drives them closed loop instead, for the most a node answers.
    #[arg(long, default_value_t = 1500)]
    pub scan_rate: u32,
    /// Only these comparisons (e.g. one under a profiler); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Leave the processes unpinned.
    #[arg(long)]
    pub no_pin: bool,
    /// The bare broadcast server sets `TCP_NODELAY`, as the hub does: without it, its writes
    /// to a socket with a frame unacknowledged wait for the client's ACK and are sent in the
    /// client's process, which the hub's CPU a frame pays and the bare server's does not. The
    /// goal is judged against the server as it is; this measures like for like.
    #[arg(long)]
    pub bare_nodelay: bool,
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
fn bare_server(options: &Options) -> anyhow::Result<(Guard, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("bare-server")
        .args(options.bare_nodelay.then_some("--nodelay"))
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
                (&options.postgres_url, None),
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
    let (bare_guard, bare) = bare_server(options)?;
    pin_servers(&hub, &bare_guard);
    let outcome = measure(&hub.target, &bare, bare_guard.0.id(), options).await;
    hub.stop(options).await;
    drop(bare_guard);
    let mut report = outcome?;

    // Idle sockets on fresh processes: memory the rounds freed would hide the sockets' cost.
    if options.idle_sockets > 0 && options.runs(Part::Idle) {
        let hub = Hub::start(hub_args, options, sink.hub_env(crate::sink::SMTP_SESSIONS)).await?;
        let (bare_guard, bare) = bare_server(options)?;
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
        let measured = scans::measure(
            &hub.target,
            Duration::from_secs(options.seconds),
            options.scan_rate,
        )
        .await;
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
    // SQLite takes one writer at a time: more only add the busy handler's unfair backoff
    // (seen: p99 2.4 s, and "database is locked" past its 5 s), so its rate is one writer's.
    let raw_writers = if postgres { WRITERS } else { 1 };
    let mut s = Series::default();
    let all: Vec<&School> = schools.iter().collect();
    let mut frame_bytes = 600;
    let outcome = async {
        for round in 1..=options.rounds {
            let mut line = format!("tiffin-load: baseline round {round}:");
            if options.runs(Part::Http) {
                quiesce(target.pid).await;
                line += &http::round(target, bare, bare_pid, length, &mut s).await;
            }
            if options.runs(Part::Intake) {
                quiesce(target.pid).await;
                line += &intake::round(target, bare, &scratch, options, raw_writers, &all, &mut s)
                    .await?;
            }
            if options.runs(Part::Fanout) {
                quiesce(target.pid).await;
                let (text, bytes) = fanout::round(
                    target,
                    bare,
                    bare_pid,
                    &schools[0],
                    options.fanout_sockets,
                    length,
                    &mut s,
                )
                .await?;
                frame_bytes = bytes;
                line += &text;
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
            "HTTP path without the database >= 0.75x hello-world",
            0.75,
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
            "fan-out >= 0.6x the bare broadcast server",
            0.6,
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
        "http_clients": http::CLIENTS,
        "hub_intake_clients": WRITERS,
        "raw_writers": raw_writers,
        "raw_batch": intake::BATCH,
        "fanout_sockets": options.fanout_sockets,
        "fanout_frame_bytes": frame_bytes,
        "bare_nodelay": options.bare_nodelay,
        "idle_sockets": options.idle_sockets,
        "medians": m,
        "scan_to_dashboard_budget_ms": budget,
        "goals": goals,
    }))
}
