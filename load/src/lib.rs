//! `tiffin-load`: replays a lunch rush against a Tiffin hub (one it starts, or one given by
//! URL, loopback only) and reports latency per hop, throughput and whether anything was lost
//! or doubled. `tiffin-load compare A.json B.json` prints the differences between two runs.
//! A library so that the end-to-end tests run the tool in-process (`cli`); `main.rs` calls it.

mod bare;
mod baseline;
mod hasivu;
mod hub;
mod people;
mod pgbench;
mod profile;
mod progress;
mod raw;
mod report;
pub mod roster_bundle;
mod rush;
mod sink;
mod stats;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Two runs side by side: each figure of B against A, its change and whether it is
    /// better or worse.
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// Also write the comparison as a page here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Measures the hub against bare servers and raw inserts in alternating rounds, pinned
    /// to the same core, and says which goals hold; writes baseline.json.
    Baseline {
        #[command(flatten)]
        hub: HubArgs,
        #[command(flatten)]
        options: baseline::Options,
        /// Where baseline.json goes.
        #[arg(long, default_value = "load-report")]
        out: PathBuf,
    },
    /// Writes a OneRoster 1.1 bundle of a district's size for `tiffin roster import` (with
    /// `--from-seed`, the same district with a share of its people changed), and beside it
    /// expected.json: what importing it should report.
    RosterBundle {
        #[command(flatten)]
        options: roster_bundle::Options,
    },
    /// The bare servers and raw inserts the baselines measure (started by `baseline`).
    #[command(hide = true)]
    BareServer {
        /// Sends each write at once (`TCP_NODELAY`), as the hub does.
        #[arg(long)]
        nodelay: bool,
    },
}

/// Which hub: one given by URL, or one the tool starts.
#[derive(Args, Clone)]
pub struct HubArgs {
    /// A running hub, e.g. http://127.0.0.1:8080 (loopback only; run it with
    /// limits.per_ip, per_user and per_reader off). Without it, the tool starts `--hub-bin`
    /// on a fresh database of its own (`--backend`).
    #[arg(long)]
    pub url: Option<String>,
    /// An admin access token for `--url` (`tiffin token --role admin`).
    #[arg(long, env = "TIFFIN_LOAD_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// The hub binary started when no `--url` is given.
    #[arg(long, default_value = "target/release/tiffin")]
    pub hub_bin: PathBuf,
    /// The hub's process id, for its CPU time and memory in the report (known when the tool
    /// starts the hub).
    #[arg(long)]
    pub hub_pid: Option<u32>,
}

impl HubArgs {
    /// The target, and the hub the tool started for it (stopped when dropped) with these
    /// settings added (where its email, push and SMS go).
    fn target(
        &self,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<(hub::Target, Option<hub::StartedHub>)> {
        match &self.url {
            Some(url) => {
                hub::ensure_loopback(url)?;
                let token = self
                    .admin_token
                    .clone()
                    .context("--admin-token (or TIFFIN_LOAD_ADMIN_TOKEN) is needed with --url")?;
                Ok((
                    hub::Target {
                        url: url.trim_end_matches('/').to_owned(),
                        admin_token: token,
                        pid: self.hub_pid,
                    },
                    None,
                ))
            }
            None => {
                let started = hub::StartedHub::start(&self.hub_bin, env)?;
                Ok((started.target(), Some(started)))
            }
        }
    }
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// A built-in profile (smoke, district-m, district-l, nation, hasivu) or a profile TOML
    /// file.
    #[arg(long, default_value = "smoke")]
    pub profile: String,
    #[command(flatten)]
    pub hub: HubArgs,
    /// The database of a hub the tool starts (without `--url`): a fresh SQLite file, or a
    /// scratch PostgreSQL database on `--postgres-url`, dropped afterwards.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: hub::Backend,
    /// The PostgreSQL server (its maintenance database) for `--backend postgres`.
    #[arg(
        long,
        env = "TIFFIN_LOAD_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,
    /// With `--backend postgres`: the scratch database starts as a copy of this database of
    /// the server (e.g. a district imported once with `tiffin roster import`; with
    /// `--roster DIR --roster-imported`).
    #[arg(long)]
    pub postgres_template: Option<String>,
    /// Where report.json and report.html go.
    #[arg(long, default_value = "load-report")]
    pub out: PathBuf,
    /// Multiplies the profile's arrival rates (0.5: half load).
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// Multiplies the length of every phase of a phased plan (hasivu), rates unchanged
    /// (0.05: a CI-sized run).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Requests outstanding at once before further arrivals are dropped (and counted): keeps
    /// a hub that stalls from drowning the driver.
    #[arg(long, default_value_t = 4000)]
    pub max_outstanding: usize,
    /// How long the tool's sinks take to accept each email, push and SMS (a slow provider;
    /// the drain-rate goal uses 50). Default 0, or a phased plan's `sink_delay_ms` (hasivu:
    /// 50).
    #[arg(long)]
    pub sink_delay_ms: Option<u64>,
    /// SMTP sessions the hub may hold open to the tool's sink (its `smtp.connections`): one
    /// email at a time goes over each, so with a slow sink they bound the email rate.
    #[arg(long, default_value_t = sink::SMTP_SESSIONS)]
    pub smtp_sessions: usize,
    /// No progress bar on stderr (there is none when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// Print the whole report as JSON on stdout instead of the summary (report.json is
    /// written either way).
    #[arg(long)]
    pub json: bool,
    /// A rush's people come from a OneRoster bundle in this folder instead of the API: the
    /// profile's district is generated there if the folder has no bundle, imported through
    /// `POST /api/v1/admin/rosters`, and its schools, students, cards and guardians are found
    /// through the API. Needs a hub whose database has no other schools of those names.
    #[arg(long)]
    pub roster: Option<PathBuf>,
    /// With `--roster`: the bundle is already imported (`tiffin roster import DIR`).
    #[arg(long, requires = "roster")]
    pub roster_imported: bool,
    /// Overrides the profile's share of students who order (a shorter rush in a district of
    /// the same size).
    #[arg(long)]
    pub order_share: Option<f64>,
}

/// Runs the tool with these command-line arguments (the program's name first): the exit code.
pub async fn cli<I, T>(args: I) -> std::process::ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match outcome(args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("tiffin-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the tool with these arguments: whether the run held (nothing lost, doubled or
/// refused), or why it could not run.
pub async fn outcome<I, T>(args: I) -> anyhow::Result<bool>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    match cli.command {
        Some(Command::Compare { a, b, html }) => compare(&a, &b, html.as_deref()).map(|()| true),
        Some(Command::Baseline { hub, options, out }) => run_baseline(&hub, &options, &out).await,
        Some(Command::RosterBundle { options }) => {
            let expected = roster_bundle::write(&options)?;
            println!("{}", serde_json::to_string_pretty(&expected)?);
            Ok(true)
        }
        Some(Command::BareServer { nodelay }) => bare::serve(nodelay).await.map(|()| true),
        None => run(cli.run).await,
    }
}

fn compare(a: &PathBuf, b: &PathBuf, html: Option<&std::path::Path>) -> anyhow::Result<()> {
    let read = |p: &PathBuf| -> anyhow::Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a report", p.display()))
    };
    let (x, y) = (read(a)?, read(b)?);
    print!("{}", report::compare_text(&x, &y));
    if let Some(out) = html {
        let names = (a.display().to_string(), b.display().to_string());
        std::fs::write(out, report::compare_html(&x, &y, (&names.0, &names.1)))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Runs the profile; true when nothing was lost, doubled or refused.
async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let mut loaded = profile::load(&args.profile)?;
    if !args.rate_scale.is_finite() || args.rate_scale <= 0.0 {
        bail!("--rate-scale must be positive");
    }
    match &mut loaded {
        profile::Loaded::Rush(_) if args.time_scale != 1.0 => {
            bail!("--time-scale is for phased plans (hasivu); a rush takes --rate-scale")
        }
        profile::Loaded::Rush(profile) => {
            if let Some(share) = args.order_share {
                profile.order_share = share;
                profile.check()?;
            }
        }
        profile::Loaded::Phased(_) if args.roster.is_some() || args.order_share.is_some() => {
            bail!("--roster and --order-share are for a rush, not a phased plan")
        }
        profile::Loaded::Phased(_) => {}
    }
    // A hub the tool starts sends its email, push and SMS to the tool's sinks, which count
    // every delivery. A rush leaves the hub's provider buckets off (the sinks are not under
    // test); a phased plan sets them to what its sinks allow.
    let (delay_ms, limits) = match &loaded {
        profile::Loaded::Rush(_) => (args.sink_delay_ms.unwrap_or(0), sink::ProviderLimits::NONE),
        profile::Loaded::Phased(plan) => {
            let delay = args
                .sink_delay_ms
                .unwrap_or(plan.notifications.sink_delay_ms);
            (delay, plan.notifications.limits(delay, args.smtp_sessions))
        }
    };
    let sinks = match args.hub.url {
        Some(_) => None,
        None => Some(sink::Sinks::start(std::time::Duration::from_millis(
            delay_ms,
        ))?),
    };
    let env = match &sinks {
        Some(sinks) => sinks.hub_env(args.smtp_sessions, &limits)?,
        None => Vec::new(),
    };
    let (target, own) = match (&args.hub.url, args.backend) {
        (None, hub::Backend::Postgres) => {
            let server = (
                args.postgres_url.as_str(),
                args.postgres_template.as_deref(),
            );
            let own = hub::OwnHub::start(&args.hub.hub_bin, args.backend, server, env).await?;
            (own.started.target(), Some(own))
        }
        _ => {
            let (target, started) = args.hub.target(env)?;
            (target, started.map(hub::OwnHub::sqlite))
        }
    };
    let report = match &loaded {
        profile::Loaded::Rush(profile) => rush::run(profile, &args, &target, sinks.as_ref()).await,
        profile::Loaded::Phased(plan) => {
            // What the hub committed is read from its own database, beside what the sinks got.
            let own_hub = match (&sinks, &own) {
                (Some(sinks), Some(own)) => Some(hasivu::OwnSinks {
                    sinks,
                    database_url: own.started.database_url(),
                    delay_ms,
                    limits,
                    smtp_sessions: args.smtp_sessions,
                }),
                _ => None,
            };
            hasivu::run(plan, &args, &target, own_hub).await
        }
    };
    if let Some(own) = own {
        own.stop().await;
    }
    let report = report?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(args.out.join("report.json"), &json)?;
    std::fs::write(args.out.join("report.html"), report::html(&report))?;
    if args.json {
        println!("{json}");
    } else {
        if matches!(loaded, profile::Loaded::Phased(_)) {
            println!("{}", hasivu::table(&report));
        }
        print!("{}", report::summary(&report));
    }
    eprintln!(
        "tiffin-load: reports in {}/report.json and report.html",
        args.out.display()
    );
    Ok(report["ok"] == true)
}

async fn run_baseline(
    hub: &HubArgs,
    options: &baseline::Options,
    out: &PathBuf,
) -> anyhow::Result<bool> {
    if options.rounds == 0 || options.seconds == 0 || options.fanout_sockets == 0 {
        bail!("--rounds, --seconds and --fanout-sockets must be at least 1");
    }
    let report = baseline::run(hub, options).await?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(out.join("baseline.json"), &json)?;
    println!("{json}");
    Ok(true)
}
