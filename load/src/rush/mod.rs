//! The lunch rush: seed a district (each school's lunch waves laid out around this run), a
//! pre-order wave (open model: each order is sent when it is due, whatever the hub is doing,
//! and timed from then), guardians' apps following their children's order topics, kitchen
//! bots readying orders in batches, a pickup wave of counter visits, lunch wave after lunch
//! wave, with several raw reads per card (one reader of the first school offline, posting its
//! reads as batches afterwards), and kitchen dashboards on WebSocket timing scan -> frame,
//! which all drop their sockets at the peak of the middle lunch wave and resume with `since`.
//! Then the accounting: every accepted order handed over exactly once, every dashboard and app
//! gapless and with every hand-over frame, every dashboard back after the storm.
//!
//! Here the run and its shared state; its parts: `seed`, `waves`, `orders` (the pre-order wave
//! and the kitchen bots), `pickup` (the readers), `followers` (screens, boards, apps),
//! `storm`, `notifications`, and `tallies` (the accounting and the report).

mod followers;
mod notifications;
mod orders;
mod pickup;
mod roster;
mod seed;
mod storm;
mod tallies;
mod waves;

use crate::RunArgs;
use crate::hub::{Target, round_trips, round_trips_between, usage};
use crate::profile::Profile;
use crate::progress::Progress;
use crate::report::{HubSampler, Recorder};
use crate::sink::Sinks;
use chrono::{DateTime, Utc};
use followers::{Follower, open_apps, open_dashboards};
use notifications::account_notifications;
use orders::{kitchen_bots, preorder_wave};
use pickup::{OfflineRead, pickup_wave, replay_offline};
use seed::seed;
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use storm::Storm;
use waves::seed_waves;

/// A send that left this much after it was due counts as late (the driver fell behind).
const LATE: Duration = Duration::from_millis(100);
const KITCHEN_PASSWORD: &str = "load-kitchen-pass";
const GUARDIAN_PASSWORD: &str = "load-guardian-pass";

struct School {
    id: String,
    meal: String,
    /// A member of the kitchen staff's access token: the kitchen bot and its screens.
    staff: String,
    /// Their login: screens whose token expired sign in again.
    staff_login: String,
    /// The kitchen's tablets: one client for the day, its connections kept alive (a client
    /// a request opened a connection a transition, thousands a second at district-l).
    kitchen: awc::Client,
    students: Vec<String>,
    /// Each student's card.
    cards: Vec<String>,
    /// (reader id, secret) and the reader's own scan sequence.
    readers: Vec<((String, String), Cell<i64>)>,
    /// Lunch waves: (window id, when it ends). Empty when the profile has none or they could
    /// not fit the school's day; each student orders for wave `wave_of`.
    waves: Vec<(String, DateTime<Utc>)>,
    /// Guardians who follow their children's orders in the app.
    apps: Vec<GuardianApp>,
}

/// A guardian with the app: signed in at the seed, renewed when the token expires.
struct GuardianApp {
    login: String,
    token: String,
    /// Their children (student numbers in the school).
    students: Vec<usize>,
}

/// The shared state of a run.
struct Run {
    url: String,
    started: Instant,
    recorder: RefCell<Recorder>,
    outstanding: Cell<usize>,
    max_outstanding: usize,
    dropped: Cell<u64>,
    /// Accepted orders: (school, student, order id).
    accepted: RefCell<Vec<(usize, usize, String)>>,
    /// Order id -> when its first read at the counter was sent (live readers only).
    scanned_at: RefCell<HashMap<String, Instant>>,
    /// Order id -> accepted, non-repeat verdicts (a meal handed over).
    handed_over: RefCell<HashMap<String, u32>>,
    repeats_debounced: Cell<u64>,
    answered_orders: Cell<u64>,
    answered_scans: Cell<u64>,
    /// Reads the offline readers kept during the pickup wave.
    offline: RefCell<Vec<OfflineRead>>,
    offline_batches: Cell<u64>,
    offline_batch_scans: Cell<u64>,
    /// The slowest offline batch POST (not a hop: its reads waited on purpose).
    offline_batch_slowest: Cell<Duration>,
}

impl Run {
    fn second(&self) -> usize {
        self.started.elapsed().as_secs() as usize
    }
}

pub async fn run(
    profile: &Profile,
    args: &RunArgs,
    target: &Target,
    sinks: Option<&Sinks>,
) -> anyhow::Result<Value> {
    let trips_before = round_trips(&target.url).await;
    let seeding = Instant::now();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let (mut schools, roster) = match &args.roster {
        Some(dir) => {
            let imported = roster::prepare(profile, target, dir, args.roster_imported).await?;
            let schools = roster::seed(profile, target, dir, &run_id).await?;
            (schools, imported)
        }
        None => (seed(profile, target, &run_id).await?, Value::Null),
    };
    // After the rest of the seed, which can take long: the waves are laid out around the rush.
    let waves = seed_waves(profile, args.rate_scale, target, &mut schools).await?;
    let seed_secs = seeding.elapsed().as_secs_f64();
    // The hub's CPU over the rush alone, as `cpu_cores_busy` divides it by the rush's length.
    let before = target.pid.and_then(usage);
    let run = Rc::new(Run {
        url: target.url.clone(),
        started: Instant::now(),
        recorder: RefCell::new(Recorder::new()?),
        outstanding: Cell::new(0),
        max_outstanding: args.max_outstanding,
        dropped: Cell::new(0),
        accepted: RefCell::default(),
        scanned_at: RefCell::default(),
        handed_over: RefCell::default(),
        repeats_debounced: Cell::new(0),
        answered_orders: Cell::new(0),
        answered_scans: Cell::new(0),
        offline: RefCell::default(),
        offline_batches: Cell::new(0),
        offline_batch_scans: Cell::new(0),
        offline_batch_slowest: Cell::new(Duration::ZERO),
    });
    let hub_sampler = HubSampler::start(target.pid);
    run.recorder.borrow_mut().phase("screens open", Some(0.0));
    let schools = Rc::new(schools);
    let deadline = Duration::from_secs(profile.deadline_secs);
    let storm = Rc::new(Storm::default());
    // The apps are not in the storm: theirs only tells them when the run is over.
    let apps_end = Rc::new(Storm::default());
    let dashboards = open_dashboards(
        &run,
        &schools,
        (profile.dashboards_per_kitchen, "kitchen"),
        &storm,
    )
    .await?;
    // Counter boards: the pickup screens, in the storm with the kitchen screens.
    let boards = open_dashboards(
        &run,
        &schools,
        (profile.boards_per_kitchen, "board"),
        &storm,
    )
    .await?;
    let apps: RefCell<Vec<Rc<Follower>>> = RefCell::default();
    let progress = Progress::new(args.quiet, None);
    let ticker = progress
        .is_shown()
        .then(|| actix_web::rt::spawn(show_progress(run.clone(), progress.clone())));
    let phase = |name: &str| run.recorder.borrow_mut().phase(name, None);

    let rush = async {
        phase("pre-orders");
        preorder_wave(&run, &schools, profile, args.rate_scale).await;
        // What an app does once its orders are placed: follow them, before the kitchen moves.
        phase("apps open");
        let opened = open_apps(&run, &schools, &apps_end).await;
        *apps.borrow_mut() = opened;
        phase("kitchen");
        kitchen_bots(&run, &schools, profile, args.rate_scale).await;
        let in_storm = profile.reconnect_storm.then_some(&*storm);
        phase("pickup");
        pickup_wave(&run, &schools, profile, args.rate_scale, in_storm).await;
        phase("offline batches");
        replay_offline(&run, &schools).await;
    };
    let finished = actix_web::rt::time::timeout(deadline, rush).await.is_ok();
    let rush_secs = run.started.elapsed().as_secs_f64();
    let apps = apps.take();
    // Frames still on their way: give the dashboards a moment to see the last hand-overs.
    let expected_frames = run.handed_over.borrow().len();
    // Hand-over frames each school's screens should see: one per accepted order.
    let mut per_school = vec![0usize; schools.len()];
    for (school, _, _) in run.accepted.borrow().iter() {
        per_school[*school] += 1;
    }
    phase("settle");
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(10)
        && (dashboards
            .iter()
            .any(|d| !d.failed.get() && d.picked_up.borrow().len() < per_school[d.school])
            || apps
                .iter()
                .any(|a| !a.failed.get() && a.missing_orders() > 0)
            || boards
                .iter()
                .any(|b| !b.failed.get() && (b.gone.get() as usize) < per_school[b.school]))
    {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    storm.end();
    apps_end.end();
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    progress.finish();
    let notifications = match sinks {
        Some(sinks) => account_notifications(&run, &schools, sinks).await,
        None => Value::Null,
    };
    let after = target.pid.and_then(usage);
    let hub_series = hub_sampler.stop();
    let trips = round_trips_between(&trips_before, &round_trips(&target.url).await);
    let hub = match (before, after) {
        (Some((cpu0, _)), Some((cpu1, peak))) => json!({
            "cpu_seconds": cpu1 - cpu0,
            "cpu_cores_busy": (cpu1 - cpu0) / rush_secs.max(1e-9),
            "peak_rss_mib": peak,
        }),
        _ => Value::Null,
    };
    let storms = storm.generation.get();
    Ok(tallies::report(
        profile,
        args,
        &run,
        tallies::Rushed {
            finished,
            seed_secs,
            rush_secs,
            waves,
            roster,
            dashboards,
            boards,
            apps,
            storms,
            per_school,
            expected_frames,
            notifications,
            hub,
            hub_series,
            trips,
        },
    ))
}

/// Waits until `due` (from the run's start), then says whether the send is late.
async fn until(run: &Run, due: Duration) -> bool {
    let at = run.started + due;
    let now = Instant::now();
    if at > now {
        actix_web::rt::time::sleep_until(at.into()).await;
        false
    } else {
        now - at > LATE
    }
}

/// Takes a slot for one more outstanding request, or counts the arrival as dropped.
fn admit(run: &Run) -> bool {
    if run.outstanding.get() >= run.max_outstanding {
        run.dropped.set(run.dropped.get() + 1);
        return false;
    }
    run.outstanding.set(run.outstanding.get() + 1);
    true
}

/// The progress bar, redrawn every second.
async fn show_progress(run: Rc<Run>, progress: Progress) {
    loop {
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        let recorder = run.recorder.borrow();
        progress.update(
            recorder.current_phase().unwrap_or("starting"),
            run.started.elapsed().as_secs(),
            recorder.answered(),
            recorder.errors(),
            &format!(
                "orders {} | scans {} | in flight {} | dropped {}",
                run.answered_orders.get(),
                run.answered_scans.get(),
                run.outstanding.get(),
                run.dropped.get(),
            ),
        );
    }
}
