//! The lunch rush: seed a district (each school's lunch waves laid out around this run), a
//! pre-order wave (open model: each order is sent when it is due, whatever the hub is doing,
//! and timed from then), guardians' apps following their children's order topics, kitchen
//! bots readying orders in batches, a pickup wave of counter visits, lunch wave after lunch
//! wave, with several raw reads per card (one reader of the first school offline, posting its
//! reads as batches afterwards), and kitchen dashboards on WebSocket timing scan -> frame,
//! which all drop their sockets at the peak of the middle lunch wave and resume with `since`.
//! Then the accounting: every accepted order handed over exactly once, every dashboard and app
//! gapless and with every hand-over frame, every dashboard back after the storm.

use crate::RunArgs;
use crate::hub::{
    Target, call, client, code_of, created, reader_post, round_trips, round_trips_between, usage,
};
use crate::profile::{Profile, arrival_at};
use crate::report::{
    EVENT_TO_SINK, ORDER_POST, Recorder, SCAN_TO_DASHBOARD, SCAN_VERDICT, TRANSITION,
};
use crate::sink::Sinks;
use anyhow::Context;
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, SecondsFormat, Utc, Weekday};
use futures_util::future::{Either, select};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// A send that left this much after it was due counts as late (the driver fell behind).
const LATE: Duration = Duration::from_millis(100);
/// Between two raw reads of one card presented at a reader.
const READ_GAP: Duration = Duration::from_millis(40);
const KITCHEN_PASSWORD: &str = "load-kitchen-pass";
const GUARDIAN_PASSWORD: &str = "load-guardian-pass";
/// The hub takes up to 500 scans in one offline batch (`MAX_BATCH`, src/api/readers.rs) and a
/// body up to `max_body_bytes` (64 KiB by default): stay under both.
const BATCH_SCANS: usize = 500;
const BATCH_BYTES: usize = 60_000;
/// Sockets opened at once; each lot is subscribed before the next opens.
const OPEN_AT_ONCE: usize = 64;
/// How long a lot of new sockets may take to be answered `subscribed`.
const SUBSCRIBE_WITHIN: Duration = Duration::from_secs(30);
/// Attempts at (re)opening a socket, with backoff (about 13 s in all), before giving up.
const OPEN_TRIES: u32 = 8;
/// The school's time zone: its waves are times of day there.
const TIME_ZONE: &str = "America/Chicago";

struct School {
    id: String,
    meal: String,
    /// A member of the kitchen staff's access token: the kitchen bot and its screens.
    staff: String,
    /// Their login: screens whose token expired sign in again.
    staff_login: String,
    students: Vec<String>,
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

fn card_uid(school: usize, student: usize) -> String {
    format!("1D{school:05X}{student:06X}")
}

/// A US number the hub's numbering plan accepts (a real area code, an exchange of 200-999),
/// unique per person `n` of a run; `salt` keeps runs on one hub apart.
pub(crate) fn phone_number(salt: u32, n: usize) -> String {
    const AREAS: [u16; 10] = [201, 202, 203, 205, 206, 207, 208, 209, 210, 212];
    let salt = salt as usize;
    let exchange = 200 + (salt / 10 * 7 + n / 10_000) % 800;
    format!("+1{}{exchange}{:04}", AREAS[salt % 10], n % 10_000)
}

/// A read an offline reader kept, to post later in a batch.
struct OfflineRead {
    /// The reader's index in the first school.
    reader: usize,
    seq: i64,
    card_uid: String,
    read_at: DateTime<Utc>,
    /// The order the card's holder came for.
    order: String,
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
    let before = target.pid.and_then(usage);
    let trips_before = round_trips(&target.url).await;
    let seeding = Instant::now();
    let mut schools = seed(profile, target).await?;
    // After the rest of the seed, which can take long: the waves are laid out around the rush.
    let waves = seed_waves(profile, args.rate_scale, target, &mut schools).await?;
    let seed_secs = seeding.elapsed().as_secs_f64();
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
    // A live line only on a terminal: into a file it would be thousands of overwritten lines.
    let live = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = live.then(|| actix_web::rt::spawn(show_progress(run.clone())));

    let rush = async {
        preorder_wave(&run, &schools, profile, args.rate_scale).await;
        // What an app does once its orders are placed: follow them, before the kitchen moves.
        let opened = open_apps(&run, &schools, &apps_end).await;
        *apps.borrow_mut() = opened;
        kitchen_bots(&run, &schools, profile.staff_batch).await;
        let in_storm = profile.reconnect_storm.then_some(&*storm);
        pickup_wave(&run, &schools, profile, args.rate_scale, in_storm).await;
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
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let notifications = match sinks {
        Some(sinks) => account_notifications(&run, &schools, sinks).await,
        None => Value::Null,
    };
    let after = target.pid.and_then(usage);
    let trips = round_trips_between(&trips_before, &round_trips(&target.url).await);

    // Accounting.
    let accepted = run.accepted.borrow().clone();
    let ordered = profile.schools * profile.orders_per_school();
    let handed = run.handed_over.borrow().clone();
    let twice = handed.values().filter(|n| **n > 1).count();
    let not_handed = accepted
        .iter()
        .filter(|(_, _, id)| !handed.contains_key(id))
        .count();
    let mut unique: Vec<&String> = accepted.iter().map(|(_, _, id)| id).collect();
    unique.sort();
    unique.dedup();
    let doubled_orders = accepted.len() - unique.len();
    let storms = storm.generation.get();
    let screens = Tally::of(&dashboards, storms);
    let mut missing_frames = 0;
    let mut replayed_frames = 0;
    {
        let mut recorder = run.recorder.borrow_mut();
        let scanned = run.scanned_at.borrow();
        for d in &dashboards {
            let seen = d.picked_up.borrow();
            missing_frames += per_school[d.school].saturating_sub(seen.len());
            for (order, first) in seen.iter() {
                // Replays wait out the reconnect: counted, not timed as fan-out.
                if first.replayed {
                    replayed_frames += 1;
                } else if let Some(sent) = scanned.get(order) {
                    recorder.ok(
                        SCAN_TO_DASHBOARD,
                        first.at.saturating_duration_since(*sent),
                        false,
                    );
                }
            }
        }
    }
    let board_tally = Tally::of(&boards, storms);
    // Every meal left its school's board once (replays after the storm included).
    let boards_missing: usize = boards
        .iter()
        .map(|b| per_school[b.school].saturating_sub(b.gone.get() as usize))
        .sum();
    let boards_extra: usize = boards
        .iter()
        .map(|b| (b.gone.get() as usize).saturating_sub(per_school[b.school]))
        .sum();
    let boards_ok = board_tally.clean() && boards_missing == 0 && boards_extra == 0;
    let app_tally = Tally::of(&apps, 0);
    let app_orders: usize = apps.iter().map(|a| a.orders().count()).sum();
    let app_missing: usize = apps.iter().map(|a| a.missing_orders()).sum();
    let apps_ok = app_missing == 0 && app_tally.clean();
    let recorder = run.recorder.borrow();
    let errors = recorder.errors();
    let ok = finished
        && errors == 0
        && accepted.len() == ordered
        && doubled_orders == 0
        && twice == 0
        && not_handed == 0
        && screens.clean()
        && missing_frames == 0
        && apps_ok
        && boards_ok
        && run.dropped.get() == 0
        && (notifications.is_null() || notifications["ok"] == true);
    let hub = match (before, after) {
        (Some((cpu0, _)), Some((cpu1, peak))) => json!({
            "cpu_seconds": cpu1 - cpu0,
            "cpu_cores_busy": (cpu1 - cpu0) / rush_secs.max(1e-9),
            "peak_rss_mib": peak,
        }),
        _ => Value::Null,
    };
    let counter_boards = json!({
        "ok": boards_ok,
        "boards": boards.len(),
        "frames": board_tally.frames,
        "out_of_order": board_tally.gaps,
        "meals_gone_missing": boards_missing,
        "meals_gone_twice": boards_extra,
        "resets": board_tally.resets,
        "reconnects": board_tally.reconnects,
        "not_reconnected": board_tally.not_reconnected,
    });
    // Apart: one json! this size passes the macro recursion limit.
    let guardian_apps = json!({
        "ok": apps_ok,
        "apps": apps.len(),
        "orders_followed": app_orders,
        "frames": app_tally.frames,
        "picked_up_seen": app_orders - app_missing,
        "picked_up_missing": app_missing,
        "gaps": app_tally.gaps,
        "resets": app_tally.resets,
        "refusals": app_tally.refusals,
        "sockets_closed_by_hub": app_tally.closed_by_hub,
        "gave_up": app_tally.not_reconnected,
    });
    Ok(json!({
        "profile": profile,
        "rate_scale": args.rate_scale,
        "ok": ok,
        "finished_within_deadline": finished,
        "seed_seconds": seed_secs,
        "rush_seconds": rush_secs,
        "throughput": {
            "orders_per_sec": run.answered_orders.get() as f64 / rush_secs.max(1e-9),
            "scans_per_sec": run.answered_scans.get() as f64 / rush_secs.max(1e-9),
        },
        "hops": recorder.hops_json(),
        "timeline": recorder.timeline_json(),
        "correctness": {
            "orders_due": ordered,
            "orders_accepted": accepted.len(),
            "orders_doubled": doubled_orders,
            "handed_over": handed.len(),
            "handed_over_twice": twice,
            "not_handed_over": not_handed,
            "repeat_reads_debounced": run.repeats_debounced.get(),
            "waves": waves,
            "offline_readers": profile.offline_readers,
            "offline_batches": run.offline_batches.get(),
            "offline_batch_scans": run.offline_batch_scans.get(),
            "offline_batch_slowest_ms": run.offline_batch_slowest.get().as_secs_f64() * 1000.0,
            "dashboards": dashboards.len(),
            "dashboard_gaps": screens.gaps,
            "dashboard_frames_expected": expected_frames * profile.dashboards_per_kitchen,
            "dashboard_frames_missing": missing_frames,
            "dashboard_frames_replayed": replayed_frames,
            "dashboard_storms": storms,
            "dashboard_reconnects": screens.reconnects,
            "dashboards_not_reconnected": screens.not_reconnected,
            "dashboard_resets": screens.resets,
            "dashboard_refusals": screens.refusals,
            "dashboard_sockets_closed_by_hub": screens.closed_by_hub,
            "guardian_apps": guardian_apps,
            "counter_boards": counter_boards,
            "sends_dropped": run.dropped.get(),
            "errors": errors,
            "notifications": notifications,
        },
        "hub": hub,
        "db_statements": trips,
    }))
}

/// Sums over dashboards or apps.
struct Tally {
    frames: u64,
    gaps: usize,
    resets: usize,
    refusals: usize,
    reconnects: u64,
    closed_by_hub: u64,
    /// Gave up (could not reopen a socket), or did not resume after the last storm.
    not_reconnected: usize,
}

impl Tally {
    fn of(followers: &[Rc<Follower>], storms: u32) -> Tally {
        Tally {
            frames: followers.iter().map(|f| f.frames.get()).sum(),
            gaps: followers.iter().map(|f| f.gaps.get()).sum(),
            resets: followers.iter().map(|f| f.resets.get()).sum(),
            refusals: followers.iter().map(|f| f.refusals.get()).sum(),
            reconnects: followers
                .iter()
                .map(|f| u64::from(f.reconnects.get()))
                .sum(),
            closed_by_hub: followers.iter().map(|f| u64::from(f.drops.get())).sum(),
            not_reconnected: followers
                .iter()
                .filter(|f| f.failed.get() || f.resumed.get() < storms)
                .count(),
        }
    }

    /// Nothing skipped, refused or given up on (frames missing are counted apart).
    fn clean(&self) -> bool {
        self.gaps == 0 && self.resets == 0 && self.refusals == 0 && self.not_reconnected == 0
    }
}

/// Schools with a meal, a counter, readers, kitchen staff, and students with cards and
/// guardians; eight schools at once.
async fn seed(profile: &Profile, target: &Target) -> anyhow::Result<Vec<School>> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let indexes: Vec<usize> = (0..profile.schools).collect();
    let mut schools = Vec::with_capacity(profile.schools);
    for chunk in indexes.chunks(8) {
        let made = futures_util::future::join_all(
            chunk
                .iter()
                .map(|n| seed_school(profile, target, &run_id, *n)),
        )
        .await;
        for school in made {
            schools.push(school?);
        }
    }
    Ok(schools)
}

/// A person's access token.
async fn sign_in(url: &str, login: &str, password: &str) -> anyhow::Result<String> {
    let signed_in = created(
        client().post(format!("{url}/api/v1/auth/login")),
        json!({"login": login, "password": password}),
    )
    .await?;
    Ok(signed_in["access_token"]
        .as_str()
        .context("access token")?
        .to_owned())
}

async fn seed_school(
    profile: &Profile,
    target: &Target,
    run_id: &str,
    n: usize,
) -> anyhow::Result<School> {
    let c = client();
    let admin = &target.admin_token;
    let url = |p: &str| format!("{}{p}", target.url);
    let (id, meal) = crate::hub::school_with_meal(
        target,
        format!("Load school {n} ({})", &run_id[..8]),
        TIME_ZONE,
        ("Load lasagna", 400),
    )
    .await?;
    let counter = crate::hub::open_counter(target, &id).await?;
    let mut readers = Vec::new();
    for r in 0..profile.readers_per_school {
        let name = format!("Load reader {r}");
        readers.push((
            crate::hub::add_reader(target, &id, &counter, &name).await?,
            Cell::new(1),
        ));
    }
    let staff_login = format!("load-{run_id}-{n}-kitchen@load.test");
    created(
        c.post(url(&format!("/api/v1/schools/{id}/users"))).bearer_auth(admin),
        json!({"role": "kitchen_staff", "display_name": "Load kitchen", "email": staff_login, "password": KITCHEN_PASSWORD}),
    )
    .await?;
    let staff = sign_in(&target.url, &staff_login, KITCHEN_PASSWORD)
        .await
        .context("staff token")?;
    let mut students = Vec::with_capacity(profile.students_per_school);
    let mut apps = Vec::new();
    let mut guardian_id = String::new();
    // Phone numbers are unique: this run's differ from an earlier run's on the same hub.
    let phone_salt = u32::from_str_radix(&run_id[..4], 16).unwrap_or_default() % 1000;
    for s in 0..profile.students_per_school {
        // No password: students of a load run never sign in; the kitchen takes their
        // pre-orders (a staff token naming the student), as a school's ordering system does.
        let student = created(
            c.post(url(&format!("/api/v1/schools/{id}/users"))).bearer_auth(admin),
            json!({"role": "student", "display_name": format!("Student {s}"), "email": format!("load-{run_id}-{n}-{s}@load.test")}),
        )
        .await?;
        let student_id = student["id"].as_str().context("student id")?.to_owned();
        created(
            c.post(url(&format!("/api/v1/schools/{id}/cards")))
                .bearer_auth(admin),
            json!({"student_id": student_id, "card_uid": card_uid(n, s)}),
        )
        .await?;
        // Siblings: one guardian for every two students, with an email address (high and
        // critical news; routine news is in-app and push, the evening digest is off here).
        if s % 2 == 0 {
            let login = format!("load-{run_id}-{n}-g{s}@load.test");
            let mut body = json!({"role": "guardian", "display_name": format!("Guardian {s}"), "email": login});
            // Only guardians with the app get a password: the hub takes tens of ms to hash one.
            // They also have a phone and take "ready" by SMS, and chose to have pickups by
            // email (routine news is not emailed by default), so every channel is loaded.
            let with_app = s / 2 < profile.guardian_apps_per_school;
            if with_app {
                body["password"] = json!(GUARDIAN_PASSWORD);
                body["phone"] = json!(phone_number(phone_salt, n * 1000 + s));
            }
            let guardian = created(
                c.post(url(&format!("/api/v1/schools/{id}/users")))
                    .bearer_auth(admin),
                body,
            )
            .await?;
            guardian_id = guardian["id"].as_str().context("guardian id")?.to_owned();
            if with_app {
                let token = sign_in(&target.url, &login, GUARDIAN_PASSWORD)
                    .await
                    .context("guardian token")?;
                created(
                    c.post(url("/api/v1/me/devices")).bearer_auth(&token),
                    json!({"platform": "android", "token": format!("load-{run_id}-{n}-{s}")}),
                )
                .await?;
                created(
                    c.put(url("/api/v1/me/preferences")).bearer_auth(&token),
                    json!({"preferences": [
                        {"kind": "order_ready", "channel": "sms", "enabled": true},
                        {"kind": "order_picked_up", "channel": "email", "enabled": true},
                    ]}),
                )
                .await?;
                apps.push(GuardianApp {
                    login,
                    token,
                    students: (s..(s + 2).min(profile.students_per_school)).collect(),
                });
            }
        }
        created(
            c.post(url(&format!("/api/v1/schools/{id}/guardian-links")))
                .bearer_auth(admin),
            json!({"guardian_id": guardian_id, "student_id": student_id, "relationship": "parent"}),
        )
        .await?;
        students.push(student_id);
    }
    Ok(School {
        id,
        staff,
        staff_login,
        meal,
        students,
        readers,
        waves: Vec::new(),
        apps,
    })
}

/// A lunch wave's school-local times of day, and its end as an instant.
#[derive(Debug, PartialEq)]
struct WaveTimes {
    starts_at: String,
    ends_at: String,
    ends_utc: DateTime<Utc>,
}

/// Every school's lunch waves (`POST /schools/{id}/service-windows`), laid out around this
/// run; what the report says about them.
///
/// A wave is a pair of school-local times of day, start before end (no wave spans midnight),
/// resolved on the local day an order is placed. The hub looks at a wave twice: an order is
/// taken only before its cutoff (at most its start), and a ready meal not collected by its end
/// becomes `uncollected`; scans, counters and the board ignore it. So a wave cannot "cover
/// now" for ordering: the waves start once the pre-order wave is due to be over (with slack),
/// a minute apart, and all end after the run's deadline, so that no meal is marked
/// uncollected while the rush still hands them over; that pickups start before the waves'
/// nominal starts is the compressed timeline. When the run would cross local midnight (or a
/// daylight-saving change) there is no honest layout: the schools get no waves, and the
/// report says why.
async fn seed_waves(
    profile: &Profile,
    scale: f64,
    target: &Target,
    schools: &mut [School],
) -> anyhow::Result<Value> {
    if profile.waves_per_school == 0 {
        return Ok(Value::Null);
    }
    let orders = profile.schools * profile.orders_per_school();
    let ordering = 2.0 * orders as f64 / (profile.order_peak_per_sec * scale);
    // Slack for creating the waves and opening the screens before the rush, and for a
    // driver or hub falling behind: an order after its wave's cutoff is refused.
    let ordering_for = Duration::from_secs_f64(ordering.max(0.0) * 1.25) + Duration::from_secs(300);
    // After the deadline (and after the last wave's start), whatever the rush does.
    let starts_for = ordering_for + Duration::from_secs(60 * profile.waves_per_school as u64);
    let ends_after =
        Duration::from_secs(profile.deadline_secs).max(starts_for) + Duration::from_secs(300);
    let layout = match wave_layout(
        Utc::now(),
        ordering_for,
        ends_after,
        profile.waves_per_school,
    ) {
        Ok(layout) => layout,
        Err(why) => {
            eprintln!("tiffin-load: no lunch waves: {why}");
            return Ok(json!({"per_school": 0, "skipped": why}));
        }
    };
    for chunk in schools.chunks_mut(8) {
        let made = futures_util::future::join_all(
            chunk
                .iter()
                .map(|school| create_waves(target, &school.id, &layout)),
        )
        .await;
        for (school, waves) in chunk.iter_mut().zip(made) {
            school.waves = waves?;
        }
    }
    Ok(json!({
        "per_school": layout.len(),
        "time_zone": TIME_ZONE,
        "starts_at": layout.iter().map(|w| w.starts_at.as_str()).collect::<Vec<_>>(),
        "ends_at": layout.first().map(|w| w.ends_at.as_str()),
    }))
}

async fn create_waves(
    target: &Target,
    school: &str,
    layout: &[WaveTimes],
) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    let mut waves = Vec::with_capacity(layout.len());
    for (k, wave) in layout.iter().enumerate() {
        let made = created(
            client()
                .post(format!(
                    "{}/api/v1/schools/{school}/service-windows",
                    target.url
                ))
                .bearer_auth(&target.admin_token),
            json!({
                "name": format!("Load wave {}", k + 1),
                "starts_at": wave.starts_at,
                "ends_at": wave.ends_at,
                "order_cutoff_minutes": 0,
                "cancel_deadline_minutes": 0,
            }),
        )
        .await
        .context("creating a lunch wave")?;
        let id = made["id"].as_str().context("window id")?.to_owned();
        waves.push((id, wave.ends_utc));
    }
    Ok(waves)
}

/// `waves` lunch waves for a rush starting at `now`: the first starts once ordering is over
/// (`ordering_for` from now), the others a minute apart, and all end `ends_after` from now;
/// or why that does not fit one day of the school's clock.
fn wave_layout(
    now: DateTime<Utc>,
    ordering_for: Duration,
    ends_after: Duration,
    waves: usize,
) -> Result<Vec<WaveTimes>, String> {
    // Whole seconds, rounded up: the hub keeps `HH:MM:SS`.
    let at =
        |secs: u64| DateTime::from_timestamp(now.timestamp().saturating_add_unsigned(secs + 1), 0);
    let starts: Option<Vec<DateTime<Utc>>> = (0..waves as u64)
        .map(|k| at(ordering_for.as_secs() + 60 * k))
        .collect();
    let (Some(starts), Some(end)) = (starts, at(ends_after.as_secs())) else {
        return Err("the run's times are out of range".into());
    };
    if starts.last().is_some_and(|last| *last >= end) {
        return Err("the waves would start after the run's end".into());
    }
    let offset = chicago_utc_offset(now);
    if chicago_utc_offset(end) != offset {
        return Err(format!(
            "a daylight-saving change in {TIME_ZONE} falls within the run, and waves are times of day"
        ));
    }
    let offset = FixedOffset::east_opt(offset).ok_or_else(|| "no such offset".to_owned())?;
    let local = |t: DateTime<Utc>| t.with_timezone(&offset).naive_local();
    if local(end).date() != local(now).date() {
        return Err(format!(
            "it is {} in {TIME_ZONE}: the run would outlast the school's day, and a wave cannot span midnight",
            local(now).format("%H:%M")
        ));
    }
    let time = |t: DateTime<Utc>| local(t).format("%H:%M:%S").to_string();
    Ok(starts
        .into_iter()
        .map(|start| WaveTimes {
            starts_at: time(start),
            ends_at: time(end),
            ends_utc: end,
        })
        .collect())
}

/// America/Chicago's offset from UTC in seconds (east), by the US rules in force since 2007:
/// daylight time (UTC-5) from 02:00 on the second Sunday of March to 02:00 on the first Sunday
/// of November, standard time (UTC-6) otherwise. The load crate has no time-zone database;
/// each accepted order's wave (its end as an instant, from the hub's) checks this.
fn chicago_utc_offset(at: DateTime<Utc>) -> i32 {
    let sunday =
        |month: u32, n: u8| NaiveDate::from_weekday_of_month_opt(at.year(), month, Weekday::Sun, n);
    // 02:00 CST is 08:00 UTC; 02:00 CDT is 07:00 UTC.
    let begins = sunday(3, 2).and_then(|d| d.and_hms_opt(8, 0, 0));
    let ends = sunday(11, 1).and_then(|d| d.and_hms_opt(7, 0, 0));
    let daylight =
        matches!((begins, ends), (Some(b), Some(e)) if b.and_utc() <= at && at < e.and_utc());
    if daylight { -5 * 3600 } else { -6 * 3600 }
}

/// Whether an accepted order is in the wave it asked for, ending when the seed computed.
fn in_wave(order: &Value, window: &str, ends: DateTime<Utc>) -> bool {
    order["wave"]["id"] == window
        && order["wave"]["ends_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| (t.with_timezone(&Utc) - ends).num_seconds().abs() <= 1)
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

async fn preorder_wave(run: &Rc<Run>, schools: &Rc<Vec<School>>, profile: &Profile, scale: f64) {
    let per_school = profile.orders_per_school();
    let total = per_school * schools.len();
    let offset = run.started.elapsed();
    let mut sends = Vec::with_capacity(total);
    for i in 0..total {
        // Interleave schools so that every kitchen is busy at once.
        let (school, student) = (i % schools.len(), i / schools.len());
        let due = offset
            + Duration::from_secs_f64(arrival_at(i, total, profile.order_peak_per_sec * scale));
        let late = until(run, due).await;
        if !admit(run) {
            continue;
        }
        let (run, schools) = (run.clone(), schools.clone());
        sends.push(actix_web::rt::spawn(async move {
            let s = &schools[school];
            let mut body = json!({"student_id": s.students[student], "items": [{"meal_id": s.meal, "quantity": 1}]});
            // The student's lunch wave, named as a school's ordering system would.
            let wave = s
                .waves
                .get(wave_of(student, s.readers.len(), s.waves.len()));
            if let Some((window, _)) = wave {
                body["window_id"] = json!(window);
            }
            let outcome = call(
                client()
                    .post(format!("{}/api/v1/schools/{}/orders", run.url, s.id))
                    .bearer_auth(&s.staff)
                    .insert_header(("Idempotency-Key", format!("load-{school}-{student}"))),
                &body,
            )
            .await;
            let latency = (run.started + due).elapsed();
            run.outstanding.set(run.outstanding.get() - 1);
            run.answered_orders.set(run.answered_orders.get() + 1);
            run.recorder.borrow_mut().tick(run.second(), 1, 0);
            match &outcome {
                Ok((201, body)) if body["id"].is_string() => {
                    run.recorder.borrow_mut().ok(ORDER_POST, latency, late);
                    if let Some((window, ends)) = wave
                        && !in_wave(body, window, *ends)
                    {
                        // Another wave, or another end: the seed's clock is not the hub's.
                        run.recorder
                            .borrow_mut()
                            .error(ORDER_POST, "not in the wave asked for");
                    }
                    let id = body["id"].as_str().unwrap_or_default().to_owned();
                    run.accepted.borrow_mut().push((school, student, id));
                }
                _ => run.recorder.borrow_mut().error(ORDER_POST, &code_of(&outcome)),
            }
        }));
    }
    for send in sends {
        let _ = send.await;
    }
}

/// Guardians' apps: each follows the order topics of its children's accepted orders, as an
/// app does once they are placed.
async fn open_apps(run: &Rc<Run>, schools: &Rc<Vec<School>>, end: &Rc<Storm>) -> Vec<Rc<Follower>> {
    let mut orders: HashMap<(usize, usize), Vec<String>> = HashMap::new();
    for (school, student, id) in run.accepted.borrow().iter() {
        orders
            .entry((*school, *student))
            .or_default()
            .push(id.clone());
    }
    let mut apps = Vec::new();
    for (n, school) in schools.iter().enumerate() {
        for app in &school.apps {
            let topics: Vec<String> = app
                .students
                .iter()
                .filter_map(|student| orders.get(&(n, *student)))
                .flatten()
                .map(|id| format!("order:{id}"))
                .collect();
            if topics.is_empty() {
                continue;
            }
            let account = Rc::new(Account {
                login: app.login.clone(),
                password: GUARDIAN_PASSWORD,
                token: RefCell::new(app.token.clone()),
            });
            apps.push(Rc::new(Follower::new(n, topics, account)));
        }
    }
    // Apps that could not subscribe show in the accounting (refusals, gave up, frames missing).
    start_following(&apps, &run.url, end).await;
    apps
}

/// One bot per kitchen confirms, starts and readies its orders, `batch` at a time.
async fn kitchen_bots(run: &Rc<Run>, schools: &Rc<Vec<School>>, batch: usize) {
    let bots = (0..schools.len()).map(|school| {
        let run = run.clone();
        let staff = schools[school].staff.clone();
        async move {
            let orders: Vec<String> = run
                .accepted
                .borrow()
                .iter()
                .filter(|(s, _, _)| *s == school)
                .map(|(_, _, id)| id.clone())
                .collect();
            for chunk in orders.chunks(batch) {
                for action in ["confirm", "start", "ready"] {
                    let moves = chunk.iter().map(|id| {
                        let (run, staff) = (run.clone(), staff.clone());
                        async move {
                            let started = Instant::now();
                            let outcome = call(
                                client()
                                    .post(format!("{}/api/v1/orders/{id}/{action}", run.url))
                                    .bearer_auth(&staff),
                                &json!({}),
                            )
                            .await;
                            let mut recorder = run.recorder.borrow_mut();
                            match &outcome {
                                Ok((200, _)) => recorder.ok(TRANSITION, started.elapsed(), false),
                                _ => recorder
                                    .error(TRANSITION, &format!("{action} {}", code_of(&outcome))),
                            }
                        }
                    });
                    futures_util::future::join_all(moves).await;
                }
            }
        }
    });
    futures_util::future::join_all(bots).await;
}

/// Every student with an order comes to the counter in their lunch wave's turn; the reader
/// reads the card 3-5 times. The first school's first `offline_readers` readers keep their
/// reads for `replay_offline`. With a storm, every dashboard drops its socket at the peak of
/// the middle wave, when the counters are busiest.
async fn pickup_wave(
    run: &Rc<Run>,
    schools: &Rc<Vec<School>>,
    profile: &Profile,
    scale: f64,
    storm: Option<&Storm>,
) {
    let mut visits: Vec<(usize, usize, String)> = run.accepted.borrow().clone();
    // Wave after wave, each rising and falling; a stable sort keeps the schools interleaved.
    let waves = schools
        .iter()
        .map(|s| s.waves.len())
        .max()
        .unwrap_or_default()
        .max(1);
    let wave =
        |school: usize, student: usize| wave_of(student, schools[school].readers.len(), waves);
    visits.sort_by_key(|(school, student, _)| wave(*school, *student));
    let mut counts = vec![0; waves];
    for (school, student, _) in &visits {
        counts[wave(*school, *student)] += 1;
    }
    let dues = wave_arrivals(&counts, profile.scan_peak_per_sec * scale);
    let storm_at = counts[..waves / 2].iter().sum::<usize>() + counts[waves / 2] / 2;
    let total = visits.len();
    let offset = run.started.elapsed();
    let [low, high] = profile.reads_per_card;
    let offline_readers = profile.offline_readers;
    let mut sends = Vec::with_capacity(total);
    for (i, (school, student, order)) in visits.into_iter().enumerate() {
        let due = offset + Duration::from_secs_f64(dues.get(i).copied().unwrap_or_default());
        let late = until(run, due).await;
        if i == storm_at
            && let Some(storm) = storm
        {
            storm.raise();
        }
        if !admit(run) {
            continue;
        }
        let reads = low + (i * 7919) % (high - low + 1);
        let (run, schools) = (run.clone(), schools.clone());
        sends.push(actix_web::rt::spawn(async move {
            let s = &schools[school];
            let at_reader = student % s.readers.len();
            let (reader, seq) = &s.readers[at_reader];
            let offline = school == 0 && at_reader < offline_readers;
            for read in 0..reads {
                let read_due = due + READ_GAP * read as u32;
                let read_late = late || until(&run, read_due).await;
                let n = seq.get();
                seq.set(n + 1);
                if offline {
                    // Kept with its seq and when it was read; not timed, not yet answered.
                    run.offline.borrow_mut().push(OfflineRead {
                        reader: at_reader,
                        seq: n,
                        card_uid: card_uid(school, student),
                        read_at: Utc::now(),
                        order: order.clone(),
                    });
                    continue;
                }
                if read == 0 {
                    run.scanned_at
                        .borrow_mut()
                        .insert(order.clone(), Instant::now());
                }
                let body = json!({"seq": n, "card_uid": card_uid(school, student)});
                let outcome = reader_post(&run.url, reader, "/api/v1/reader/scans", &body).await;
                let latency = (run.started + read_due).elapsed();
                run.answered_scans.set(run.answered_scans.get() + 1);
                run.recorder.borrow_mut().tick(run.second(), 0, 1);
                match &outcome {
                    Ok((200, v))
                        if v["verdict"] == "accepted" && v["order_id"] == order.as_str() =>
                    {
                        run.recorder
                            .borrow_mut()
                            .ok(SCAN_VERDICT, latency, read_late);
                        if v["debounced"] == true {
                            run.repeats_debounced.set(run.repeats_debounced.get() + 1);
                        } else {
                            *run.handed_over
                                .borrow_mut()
                                .entry(order.clone())
                                .or_default() += 1;
                        }
                    }
                    Ok((200, v)) => run.recorder.borrow_mut().error(
                        SCAN_VERDICT,
                        &format!("verdict {}", v["verdict"].as_str().unwrap_or("?")),
                    ),
                    _ => run
                        .recorder
                        .borrow_mut()
                        .error(SCAN_VERDICT, &code_of(&outcome)),
                }
            }
            run.outstanding.set(run.outstanding.get() - 1);
        }));
    }
    for send in sends {
        let _ = send.await;
    }
}

/// A student's lunch wave: siblings (one guardian's two students) share one, and every wave
/// comes to every reader (students go to reader `student % readers`).
fn wave_of(student: usize, readers: usize, waves: usize) -> usize {
    (student / readers.max(1)) % waves.max(1)
}

/// When each visit of a pickup wave in lunch waves is due, in seconds from its start: the
/// waves one after another (`counts` visits each), each rising to `peak` and falling.
fn wave_arrivals(counts: &[usize], peak: f64) -> Vec<f64> {
    let mut due = Vec::with_capacity(counts.iter().sum());
    let mut start = 0.0;
    for &n in counts {
        due.extend((0..n).map(|j| start + arrival_at(j, n, peak)));
        start += 2.0 * n as f64 / peak;
    }
    due
}

/// The offline readers come back: each posts what it kept, in its seq order, in batches. A
/// batch is not a hop (its reads waited on purpose): its scans are counted, its accepted
/// non-repeat verdicts are hand-overs like live ones, anything else is an error.
async fn replay_offline(run: &Rc<Run>, schools: &Rc<Vec<School>>) {
    let mut reads = run.offline.take();
    let Some(school) = schools.first() else {
        return;
    };
    reads.sort_by_key(|r| (r.reader, r.seq));
    let mut readers: Vec<usize> = reads.iter().map(|r| r.reader).collect();
    readers.dedup();
    for at_reader in readers {
        let Some((reader, _)) = school.readers.get(at_reader) else {
            continue;
        };
        let kept: Vec<&OfflineRead> = reads.iter().filter(|r| r.reader == at_reader).collect();
        let orders: HashMap<i64, &str> = kept.iter().map(|r| (r.seq, r.order.as_str())).collect();
        let scans: Vec<Value> = kept
            .iter()
            .map(|r| {
                json!({
                    "seq": r.seq,
                    "card_uid": r.card_uid,
                    "read_at": r.read_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                })
            })
            .collect();
        for batch in offline_batches(&scans, BATCH_SCANS, BATCH_BYTES) {
            let path = "/api/v1/reader/scans/batch";
            let sent = Instant::now();
            let mut outcome = reader_post(&run.url, reader, path, &batch).await;
            if !matches!(outcome, Ok((200, _))) {
                // Once more: scans the hub already decided are answered the same (`replayed`).
                outcome = reader_post(&run.url, reader, path, &batch).await;
            }
            let took = sent.elapsed();
            run.offline_batches.set(run.offline_batches.get() + 1);
            run.offline_batch_slowest
                .set(run.offline_batch_slowest.get().max(took));
            let results = match &outcome {
                Ok((200, answer)) => answer["results"].as_array().cloned().unwrap_or_default(),
                _ => {
                    let code = format!("offline batch {}", code_of(&outcome));
                    run.recorder.borrow_mut().error(SCAN_VERDICT, &code);
                    continue;
                }
            };
            let asked = batch["scans"].as_array().map_or(0, Vec::len);
            if results.len() != asked {
                run.recorder
                    .borrow_mut()
                    .error(SCAN_VERDICT, "offline batch: answers missing");
            }
            let answered = results.len() as u64;
            run.answered_scans.set(run.answered_scans.get() + answered);
            run.offline_batch_scans
                .set(run.offline_batch_scans.get() + answered);
            run.recorder.borrow_mut().tick(run.second(), 0, answered);
            for result in &results {
                let order = result["seq"].as_i64().and_then(|seq| orders.get(&seq));
                match order {
                    Some(order)
                        if result["verdict"] == "accepted" && result["order_id"] == *order =>
                    {
                        if result["debounced"] == true {
                            run.repeats_debounced.set(run.repeats_debounced.get() + 1);
                        } else {
                            *run.handed_over
                                .borrow_mut()
                                .entry((*order).to_owned())
                                .or_default() += 1;
                        }
                    }
                    _ => run.recorder.borrow_mut().error(
                        SCAN_VERDICT,
                        &format!(
                            "offline verdict {}",
                            result["verdict"].as_str().unwrap_or("?")
                        ),
                    ),
                }
            }
        }
    }
}

/// A reader's kept scans (in seq order) as batch bodies the hub takes: at most `max_scans`
/// and `max_bytes` of JSON each, in order.
fn offline_batches(scans: &[Value], max_scans: usize, max_bytes: usize) -> Vec<Value> {
    // `{"scans":[]}`, then each scan and its comma.
    const WRAPPER: usize = 12;
    let mut batches = Vec::new();
    let mut current: Vec<Value> = Vec::new();
    let mut bytes = WRAPPER;
    for scan in scans {
        let size = scan.to_string().len() + 1;
        if !current.is_empty() && (current.len() >= max_scans || bytes + size > max_bytes) {
            batches.push(json!({"scans": std::mem::take(&mut current)}));
            bytes = WRAPPER;
        }
        bytes += size;
        current.push(scan.clone());
    }
    if !current.is_empty() {
        batches.push(json!({"scans": current}));
    }
    batches
}

/// Tells followers to drop their sockets and reconnect (a storm), or to stop (the run is
/// over). Single-threaded: a generation in a `Cell` and one waker slot per follower task.
#[derive(Default)]
struct Storm {
    generation: Cell<u32>,
    over: Cell<bool>,
    wakers: RefCell<Vec<Option<Waker>>>,
}

impl Storm {
    /// A waker slot for one more follower task.
    fn join(&self) -> usize {
        let mut wakers = self.wakers.borrow_mut();
        wakers.push(None);
        wakers.len() - 1
    }

    fn raise(&self) {
        self.generation.set(self.generation.get() + 1);
        self.wake_all();
    }

    fn end(&self) {
        self.over.set(true);
        self.wake_all();
    }

    fn wake_all(&self) {
        let waiting: Vec<Waker> = self
            .wakers
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for waker in waiting {
            waker.wake();
        }
    }

    /// Resolves once there was a storm after generation `seen`, or the run is over.
    fn moved(&self, slot: usize, seen: u32) -> impl Future<Output = ()> + Unpin {
        std::future::poll_fn(move |cx| {
            if self.over.get() || self.generation.get() != seen {
                return Poll::Ready(());
            }
            // Polled once per frame: keep one waker per task, not one per poll.
            if let Some(waiting) = self.wakers.borrow_mut().get_mut(slot)
                && waiting.as_ref().is_none_or(|w| !w.will_wake(cx.waker()))
            {
                *waiting = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// A person's sign-in, renewed when a socket is refused for an expired token (the hub also
/// closes a socket when its token expires).
struct Account {
    login: String,
    password: &'static str,
    token: RefCell<String>,
}

/// A WebSocket client following topics across sockets: a kitchen screen (its kitchen
/// topic) or a guardian's app (its children's order topics). What it saw outlives each
/// socket, so a new one resumes every topic with `since`.
struct Follower {
    school: usize,
    topics: Vec<String>,
    account: Rc<Account>,
    /// Topic -> the last sequence number seen.
    last: RefCell<HashMap<String, i64>>,
    /// Order id -> when its `order.picked_up` frame first arrived, and whether as a replay.
    picked_up: RefCell<HashMap<String, Seen>>,
    /// Topic -> the hub's latest sequence number when a resumed socket subscribed: frames up
    /// to it are replays of what the last socket missed, not live fan-out.
    replaying: RefCell<HashMap<String, i64>>,
    /// Numbered frames (not snapshots or alerts).
    frames: Cell<u64>,
    gaps: Cell<usize>,
    /// A resume answered with a snapshot (the hub could not replay): frames were skipped,
    /// openly.
    resets: Cell<usize>,
    /// `{"type": "error"}` answers (a subscription refused).
    refusals: Cell<usize>,
    /// Sockets dropped in a storm and opened again.
    reconnects: Cell<u32>,
    /// Sockets the hub closed (expired token, idle, slow consumer) and opened again.
    drops: Cell<u32>,
    /// The storm generation of the latest socket answered `subscribed`.
    resumed: Cell<u32>,
    /// Could not open a socket: it stopped following.
    failed: Cell<bool>,
    /// `board.gone` frames (a meal left the pickup board), on a counter board.
    gone: Cell<u64>,
}

impl Follower {
    fn new(school: usize, topics: Vec<String>, account: Rc<Account>) -> Follower {
        Follower {
            school,
            topics,
            account,
            last: RefCell::default(),
            picked_up: RefCell::default(),
            replaying: RefCell::default(),
            frames: Cell::new(0),
            gaps: Cell::new(0),
            resets: Cell::new(0),
            refusals: Cell::new(0),
            reconnects: Cell::new(0),
            drops: Cell::new(0),
            resumed: Cell::new(0),
            gone: Cell::new(0),
            failed: Cell::new(false),
        }
    }

    /// The orders an app follows (none for a kitchen screen).
    fn orders(&self) -> impl Iterator<Item = &str> {
        self.topics.iter().filter_map(|t| t.strip_prefix("order:"))
    }

    /// Followed orders whose `order.picked_up` frame has not arrived.
    fn missing_orders(&self) -> usize {
        let seen = self.picked_up.borrow();
        self.orders().filter(|o| !seen.contains_key(*o)).count()
    }

    /// Every topic answered `subscribed`, nothing refused, still following.
    fn subscribed(&self) -> bool {
        !self.failed.get()
            && self.refusals.get() == 0
            && self.last.borrow().len() == self.topics.len()
    }

    /// One frame from the hub, which arrived at `at` on a socket opened in storm generation
    /// `generation`.
    fn on_frame(&self, frame: &Value, at: Instant, generation: u32) {
        let topic = frame["topic"].as_str().unwrap_or_default();
        match (frame["type"].as_str(), frame["seq"].as_i64()) {
            (Some("error"), _) => self.refusals.set(self.refusals.get() + 1),
            // Fresh: count from the hub's latest; resumed: from what was seen.
            (Some("subscribed"), Some(seq)) => {
                let resumed = self.last.borrow().contains_key(topic);
                if resumed {
                    self.replaying.borrow_mut().insert(topic.to_owned(), seq);
                } else {
                    self.last.borrow_mut().insert(topic.to_owned(), seq);
                }
                self.resumed.set(generation);
            }
            (Some("snapshot"), Some(_)) if frame["data"]["reason"] == "fresh" => {}
            (Some("snapshot"), Some(seq)) => {
                self.resets.set(self.resets.get() + 1);
                self.last.borrow_mut().insert(topic.to_owned(), seq);
            }
            // Alerts of the moment have seq 0: outside the sequence.
            (Some(kind), Some(seq)) if seq > 0 => {
                self.frames.set(self.frames.get() + 1);
                let before = self.last.borrow_mut().insert(topic.to_owned(), seq);
                // A board skips the kitchen's events it does not show: its numbers only rise.
                let out_of_order = if topic.starts_with("board:") {
                    before.is_some_and(|l| seq <= l)
                } else {
                    before.is_some_and(|l| seq != l + 1)
                };
                if out_of_order {
                    self.gaps.set(self.gaps.get() + 1);
                }
                if kind == "board.gone" {
                    self.gone.set(self.gone.get() + 1);
                }
                if kind == "order.picked_up"
                    && let Some(order) = frame["data"]["order_id"].as_str()
                {
                    let replayed = self
                        .replaying
                        .borrow()
                        .get(topic)
                        .is_some_and(|until| seq <= *until);
                    self.picked_up
                        .borrow_mut()
                        .entry(order.to_owned())
                        .or_insert(Seen { at, replayed });
                }
            }
            _ => {}
        }
    }
}

/// When a frame first arrived, and whether in a resumed socket's replay.
#[derive(Clone, Copy)]
struct Seen {
    at: Instant,
    replayed: bool,
}

/// Why a follower opens a socket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reopen {
    First,
    Storm,
    Dropped,
}

/// Backoff between attempts at opening a socket, spread a little by the follower's slot so
/// a storm's retries do not all land at once.
fn backoff(attempt: u32, slot: usize) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)) + (slot % 97) as u64)
}

/// Follows `me.topics` until the run is over: opens a socket (signing in again if the token
/// expired), subscribes to every topic (with `since` where it saw frames), reads. A storm, or
/// the hub closing the socket, means another socket; one that cannot be opened in
/// `OPEN_TRIES` attempts marks the follower failed.
async fn follow(me: Rc<Follower>, url: String, storm: Rc<Storm>) {
    let slot = storm.join();
    let ws = format!("{}/api/v1/ws?access_token=", url.replacen("http", "ws", 1));
    let mut why = Reopen::First;
    loop {
        if storm.over.get() {
            return;
        }
        let generation = storm.generation.get();
        let mut opened = None;
        for attempt in 0..OPEN_TRIES {
            let token = me.account.token.borrow().clone();
            let ws_url = format!("{ws}{token}");
            let connected = client()
                .ws(ws_url.as_str())
                .max_frame_size(8 << 20)
                .connect()
                .await;
            match connected {
                Ok((_, socket)) => {
                    opened = Some(socket);
                    break;
                }
                Err(awc::error::WsClientError::InvalidResponseStatus(status))
                    if status.as_u16() == 401 =>
                {
                    // Expired: sign in again, unless another socket of this account just did.
                    let stale = *me.account.token.borrow() == token;
                    if stale
                        && let Ok(fresh) =
                            sign_in(&url, &me.account.login, me.account.password).await
                    {
                        *me.account.token.borrow_mut() = fresh;
                        continue;
                    }
                }
                Err(_) => {}
            }
            if storm.over.get() {
                return;
            }
            actix_web::rt::time::sleep(backoff(attempt, slot)).await;
        }
        let Some(mut socket) = opened else {
            me.failed.set(true);
            return;
        };
        match why {
            Reopen::Storm => me.reconnects.set(me.reconnects.get() + 1),
            Reopen::Dropped => me.drops.set(me.drops.get() + 1),
            Reopen::First => {}
        }
        let mut subscribing = true;
        for topic in &me.topics {
            let since = me.last.borrow().get(topic).copied();
            let mut message = json!({"type": "subscribe", "topic": topic});
            if let Some(since) = since {
                message["since"] = json!(since);
            }
            let text = awc::ws::Message::Text(message.to_string().into());
            if socket.send(text).await.is_err() {
                subscribing = false;
                break;
            }
        }
        why = if subscribing {
            loop {
                let frame = match select(socket.next(), storm.moved(slot, generation)).await {
                    Either::Left((Some(Ok(frame)), _)) => frame,
                    Either::Left(_) => break Reopen::Dropped,
                    Either::Right(_) => break Reopen::Storm,
                };
                match frame {
                    awc::ws::Frame::Text(text) => {
                        let at = Instant::now();
                        if let Ok(frame) = serde_json::from_slice::<Value>(&text) {
                            me.on_frame(&frame, at, generation);
                        }
                    }
                    awc::ws::Frame::Ping(p) => {
                        let _ = socket.send(awc::ws::Message::Pong(p)).await;
                    }
                    awc::ws::Frame::Close(_) => break Reopen::Dropped,
                    _ => {}
                }
            }
        } else {
            Reopen::Dropped
        };
        // Dropping the socket without a close frame: a lost connection, as in a storm.
        drop(socket);
        if why == Reopen::Dropped {
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts a task per follower, `OPEN_AT_ONCE` at a time, each lot waiting (at most
/// `SUBSCRIBE_WITHIN`) until it is subscribed; says how many are not.
async fn start_following(followers: &[Rc<Follower>], url: &str, storm: &Rc<Storm>) -> usize {
    let mut not_subscribed = 0;
    for lot in followers.chunks(OPEN_AT_ONCE) {
        for follower in lot {
            actix_web::rt::spawn(follow(follower.clone(), url.to_owned(), storm.clone()));
        }
        let until = Instant::now() + SUBSCRIBE_WITHIN;
        while Instant::now() < until
            && lot
                .iter()
                .any(|f| !f.subscribed() && !f.failed.get() && f.refusals.get() == 0)
        {
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        not_subscribed += lot.iter().filter(|f| !f.subscribed()).count();
    }
    not_subscribed
}

/// The kitchen screens: `per_kitchen` per school, each on its own socket, sharing the
/// school's staff sign-in.
async fn open_dashboards(
    run: &Rc<Run>,
    schools: &Rc<Vec<School>>,
    (per_kitchen, topic): (usize, &str),
    storm: &Rc<Storm>,
) -> anyhow::Result<Vec<Rc<Follower>>> {
    let mut dashboards = Vec::new();
    for (n, school) in schools.iter().enumerate() {
        let account = Rc::new(Account {
            login: school.staff_login.clone(),
            password: KITCHEN_PASSWORD,
            token: RefCell::new(school.staff.clone()),
        });
        for _ in 0..per_kitchen {
            let topics = vec![format!("{topic}:{}", school.id)];
            dashboards.push(Rc::new(Follower::new(n, topics, account.clone())));
        }
    }
    let not_subscribed = start_following(&dashboards, &run.url, storm).await;
    if not_subscribed > 0 {
        storm.end();
        anyhow::bail!(
            "{not_subscribed} of {} dashboard sockets could not subscribe",
            dashboards.len()
        );
    }
    Ok(dashboards)
}

/// One line on stderr, rewritten every second.
async fn show_progress(run: Rc<Run>) {
    loop {
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        eprint!(
            "\r[{:>5}s] orders answered {:>7}, scans answered {:>7}, in flight {:>5}, errors {:>4}, dropped {:>4}",
            run.started.elapsed().as_secs(),
            run.answered_orders.get(),
            run.answered_scans.get(),
            run.outstanding.get(),
            run.recorder.borrow().errors(),
            run.dropped.get(),
        );
    }
}

/// Every email, push and SMS the hub committed for the run's orders, against what reached
/// the sinks: each sent one arrived, nothing uncommitted arrived, nothing arrived twice (SMS
/// by count: Twilio's API carries no id of ours). Records event -> sink latency (from the
/// outbox row's creation to its arrival) for email and push.
async fn account_notifications(run: &Rc<Run>, schools: &Rc<Vec<School>>, sinks: &Sinks) -> Value {
    const CHANNELS: [&str; 3] = ["email", "push", "sms"];
    let accepted = run.accepted.borrow().clone();
    // Channel -> outbox id -> when it was committed; and the ids sent.
    let mut committed: HashMap<&str, HashMap<String, Option<DateTime<Utc>>>> = HashMap::new();
    let mut sent: HashMap<&str, Vec<String>> = HashMap::new();
    let mut unreadable = 0;
    let settle = Instant::now() + Duration::from_secs(60);
    for (school, _, order) in &accepted {
        let url = format!("{}/api/v1/orders/{order}/notifications", run.url);
        let rows = loop {
            let rows = call_get(&url, &schools[*school].staff).await;
            let pending = rows.as_ref().is_some_and(|rows| {
                rows.iter().any(|r| {
                    CHANNELS.contains(&r["channel"].as_str().unwrap_or_default())
                        && r["status"] == "pending"
                })
            });
            if !pending || Instant::now() > settle {
                break rows;
            }
            actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        };
        let Some(rows) = rows else {
            unreadable += 1;
            continue;
        };
        for r in &rows {
            let Some(channel) = CHANNELS.iter().find(|c| r["channel"] == **c) else {
                continue;
            };
            let (Some(id), Some(created)) = (r["id"].as_str(), r["created_at"].as_str()) else {
                continue;
            };
            let created = DateTime::parse_from_rfc3339(created)
                .map(|t| t.with_timezone(&Utc))
                .ok();
            committed
                .entry(channel)
                .or_default()
                .insert(id.to_owned(), created);
            if r["status"] == "sent" {
                sent.entry(channel).or_default().push(id.to_owned());
            }
        }
    }
    let mut report = serde_json::Map::new();
    let mut ok = unreadable == 0;
    for channel in CHANNELS {
        let committed = committed.remove(channel).unwrap_or_default();
        let sent = sent.remove(channel).unwrap_or_default();
        let value = match channel {
            "sms" => {
                let received = sinks.providers.sms_count();
                let fine = received == sent.len();
                ok &= fine;
                json!({
                    "ok": fine,
                    "committed": committed.len(),
                    "sent": sent.len(),
                    "not_sent": committed.len() - sent.len(),
                    "received": received,
                })
            }
            _ => {
                let delivered = match channel {
                    "email" => sinks.smtp.deliveries(),
                    _ => sinks.providers.push_deliveries(),
                };
                let (value, fine) = account_channel(run, &committed, &sent, &delivered);
                ok &= fine;
                value
            }
        };
        report.insert(channel.to_owned(), value);
    }
    report.insert("ok".to_owned(), json!(ok));
    report.insert("unreadable_orders".to_owned(), json!(unreadable));
    Value::Object(report)
}

/// One channel counted by outbox id: what was sent against what arrived.
fn account_channel(
    run: &Run,
    committed: &HashMap<String, Option<DateTime<Utc>>>,
    sent: &[String],
    delivered: &HashMap<String, Vec<DateTime<Utc>>>,
) -> (Value, bool) {
    let missing = sent
        .iter()
        .filter(|id| !delivered.contains_key(*id))
        .count();
    let stray = delivered
        .keys()
        .filter(|id| !committed.contains_key(*id))
        .count();
    let twice = delivered.values().filter(|at| at.len() > 1).count();
    let mut recorder = run.recorder.borrow_mut();
    // This channel's own tail beside the shared hop: providers differ in how many messages
    // they take at once (SMTP one per session, HTTP as many as asked).
    let mut own = hdrhistogram::Histogram::<u64>::new(3).ok();
    for (id, arrivals) in delivered {
        if let (Some(Some(created)), Some(first)) = (committed.get(id), arrivals.first()) {
            let latency = (*first - *created).to_std().unwrap_or_default();
            recorder.ok(EVENT_TO_SINK, latency, false);
            if let Some(own) = own.as_mut() {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                let _ = own.record(us.max(1));
            }
        }
    }
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let latency = own.filter(|h| !h.is_empty()).map(|h| {
        json!({"p50_ms": ms(&h, 0.5), "p99_ms": ms(&h, 0.99), "max_ms": h.max() as f64 / 1000.0})
    });
    let created: Vec<_> = committed.values().flatten().copied().collect();
    let arrived: Vec<_> = delivered
        .values()
        .filter_map(|a| a.first().copied())
        .collect();
    let fine = missing == 0 && stray == 0 && twice == 0;
    (
        json!({
            "ok": fine,
            "drain": drain_rates(&created, &arrived),
            "event_to_sink": latency,
            "committed": committed.len(),
            "sent": sent.len(),
            "not_sent": committed.len() - sent.len(),
            "received": delivered.len(),
            "sent_but_missing": missing,
            "received_but_not_committed": stray,
            "received_twice": twice,
        }),
        fine,
    )
}

/// Intake against drain, from when each email was committed and when it arrived: the
/// busiest five seconds of commits (per second), and the sink's deliveries per second in the
/// seconds that began with more waiting than they delivered and ended with a backlog: the
/// drain's capacity, not the intake's pace. (Messages merely on their way to a slow sink are a
/// backlog at every second's edge; counting those seconds measured the intake.)
fn drain_rates(
    created: &[chrono::DateTime<chrono::Utc>],
    arrived: &[chrono::DateTime<chrono::Utc>],
) -> Value {
    let Some(start) = created.iter().chain(arrived).min().copied() else {
        return Value::Null;
    };
    let second = |t: &chrono::DateTime<chrono::Utc>| (*t - start).num_seconds().max(0) as usize;
    let span = created.iter().chain(arrived).map(second).max().unwrap_or(0) + 1;
    let (mut committed, mut delivered) = (vec![0u64; span], vec![0u64; span]);
    created.iter().for_each(|t| committed[second(t)] += 1);
    arrived.iter().for_each(|t| delivered[second(t)] += 1);
    let intake_peak = committed
        .windows(5.min(span))
        .map(|w| w.iter().sum::<u64>() as f64 / w.len() as f64)
        .fold(0.0, f64::max);
    let mut backlog = 0i64;
    let mut busy = Vec::new();
    for s in 0..span {
        let at_start = backlog;
        backlog += committed[s] as i64 - delivered[s] as i64;
        if at_start > delivered[s] as i64 && backlog > 0 {
            busy.push(delivered[s] as f64);
        }
    }
    let capacity = (!busy.is_empty()).then(|| crate::baseline::median(&mut busy));
    json!({
        "intake_peak_per_sec": intake_peak,
        "drain_per_sec_with_backlog": capacity,
        "seconds_with_backlog": busy.len(),
        "ratio": capacity.map(|c| c / intake_peak.max(1e-9)),
    })
}

async fn call_get(url: &str, token: &str) -> Option<Vec<Value>> {
    let sent = client().get(url).bearer_auth(token).send().await;
    match crate::hub::reply(sent).await {
        Ok((200, Value::Array(rows))) => Some(rows),
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn drain_counts_only_seconds_with_a_backlog() {
        let t0 = chrono::Utc::now();
        let at = |ms: i64| t0 + chrono::Duration::milliseconds(ms);
        // 100 emails committed in the first second, drained at 20 a second over 5 s.
        let created: Vec<_> = (0..100).map(|i| at(i * 10)).collect();
        let arrived: Vec<_> = (0..100).map(|i| at(i * 50 + 5)).collect();
        let rates = drain_rates(&created, &arrived);
        assert_eq!(rates["drain_per_sec_with_backlog"], 20.0);
        assert_eq!(rates["intake_peak_per_sec"], 20.0);
        assert_eq!(rates["seconds_with_backlog"], 3);
        // A sink that keeps up never has a backlog to measure.
        assert!(drain_rates(&created, &created)["drain_per_sec_with_backlog"].is_null());
        // Nor one that keeps up 60 ms behind a steady 50 a second: a few on their way at
        // every second's edge are not a backlog.
        let steady: Vec<_> = (0..250).map(|i| at(i * 20)).collect();
        let behind: Vec<_> = steady
            .iter()
            .map(|t| *t + chrono::Duration::milliseconds(60))
            .collect();
        assert!(drain_rates(&steady, &behind)["drain_per_sec_with_backlog"].is_null());
        assert!(drain_rates(&[], &[]).is_null());
    }

    use super::*;
    use futures_util::future::FutureExt;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn chicago_keeps_us_daylight_time() {
        let hours = |s: &str| chicago_utc_offset(utc(s)) / 3600;
        assert_eq!(hours("2026-01-15T12:00:00Z"), -6);
        assert_eq!(hours("2026-07-01T12:00:00Z"), -5);
        // 2025: from 02:00 CST on 9 March to 02:00 CDT on 2 November.
        assert_eq!(hours("2025-03-09T07:59:59Z"), -6);
        assert_eq!(hours("2025-03-09T08:00:00Z"), -5);
        assert_eq!(hours("2025-11-02T06:59:59Z"), -5);
        assert_eq!(hours("2025-11-02T07:00:00Z"), -6);
    }

    #[test]
    fn waves_start_after_ordering_and_end_after_the_run_on_the_schools_clock() {
        let now = utc("2026-01-15T16:00:00Z"); // 10:00 in Chicago
        let layout =
            wave_layout(now, Duration::from_secs(100), Duration::from_secs(600), 3).unwrap();
        let starts: Vec<&str> = layout.iter().map(|w| w.starts_at.as_str()).collect();
        assert_eq!(starts, ["10:01:41", "10:02:41", "10:03:41"]);
        assert!(layout.iter().all(|w| w.ends_at == "10:10:01"));
        assert!(
            layout
                .iter()
                .all(|w| w.ends_utc == utc("2026-01-15T16:10:01Z"))
        );
        // 23:50 in Chicago: no wave can last 20 minutes without crossing midnight.
        let late = utc("2026-01-16T05:50:00Z");
        let refused = wave_layout(late, Duration::from_secs(60), Duration::from_secs(1200), 2);
        assert!(refused.unwrap_err().contains("midnight"));
        // Daylight time begins at 08:00 UTC on 8 March 2026.
        let spring = utc("2026-03-08T07:30:00Z");
        let refused = wave_layout(
            spring,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            2,
        );
        assert!(refused.unwrap_err().contains("daylight"));
        // The waves' starts must come before their end.
        assert!(wave_layout(now, Duration::from_secs(500), Duration::from_secs(600), 4).is_err());
        assert_eq!(
            wave_layout(now, Duration::from_secs(1), Duration::from_secs(2), 0),
            Ok(Vec::new())
        );
    }

    #[test]
    fn an_order_is_checked_against_its_wave() {
        let ends = utc("2026-01-15T16:10:01Z");
        let order = json!({"wave": {"id": "w1", "ends_at": "2026-01-15T16:10:01Z"}});
        assert!(in_wave(&order, "w1", ends));
        assert!(!in_wave(&order, "w2", ends));
        let hour_off = json!({"wave": {"id": "w1", "ends_at": "2026-01-15T17:10:01Z"}});
        assert!(!in_wave(&hour_off, "w1", ends));
        assert!(!in_wave(&json!({"wave": null}), "w1", ends));
    }

    #[test]
    fn every_wave_comes_to_every_reader_and_siblings_share_one() {
        let (readers, waves) = (2, 4);
        for wave in 0..waves {
            let at: Vec<usize> = (0..40)
                .filter(|s| wave_of(*s, readers, waves) == wave)
                .map(|s| s % readers)
                .collect();
            assert!((0..readers).all(|r| at.contains(&r)), "wave {wave}: {at:?}");
        }
        assert!(
            (0..40)
                .step_by(2)
                .all(|s| wave_of(s, 2, 4) == wave_of(s + 1, 2, 4))
        );
        assert_eq!(wave_of(7, 0, 0), 0);
    }

    #[test]
    fn lunch_waves_come_one_after_another() {
        let peak = 10.0;
        let one = wave_arrivals(&[100], peak);
        let same: Vec<f64> = (0..100).map(|i| arrival_at(i, 100, peak)).collect();
        assert_eq!(one, same);
        let two = wave_arrivals(&[100, 50, 0, 20], peak);
        assert_eq!(two.len(), 170);
        assert!(two.windows(2).all(|w| w[0] <= w[1]));
        // The second wave starts when the first (2n/peak = 20 s) is over.
        assert!(two[99] < 20.0 && two[100] >= 20.0);
        assert!(two[150] >= 30.0);
    }

    #[test]
    fn offline_reads_go_in_ordered_batches_the_hub_takes() {
        let scans: Vec<Value> = (1..=1200)
            .map(|seq| {
                json!({"seq": seq, "card_uid": "1D00000000002A", "read_at": "2026-01-15T16:00:00.123Z"})
            })
            .collect();
        let batches = offline_batches(&scans, 500, 60_000);
        let sizes: Vec<usize> = batches
            .iter()
            .map(|b| b["scans"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [500, 500, 200]);
        let seqs: Vec<i64> = batches
            .iter()
            .flat_map(|b| b["scans"].as_array().unwrap().iter())
            .map(|s| s["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=1200).collect::<Vec<i64>>());
        // A byte limit cuts sooner, and every body stays under it.
        let small = offline_batches(&scans, 500, 8_000);
        assert!(small.len() > 3);
        assert!(small.iter().all(|b| b.to_string().len() <= 8_000));
        assert_eq!(
            small
                .iter()
                .map(|b| b["scans"].as_array().unwrap().len())
                .sum::<usize>(),
            1200
        );
        assert!(offline_batches(&[], 500, 60_000).is_empty());
    }

    #[test]
    fn a_storm_wakes_its_followers_once_per_generation() {
        let storm = Storm::default();
        let slot = storm.join();
        assert!(storm.moved(slot, 0).now_or_never().is_none());
        storm.raise();
        assert!(storm.moved(slot, 0).now_or_never().is_some());
        assert!(storm.moved(slot, 1).now_or_never().is_none());
        storm.end();
        assert!(storm.moved(slot, 1).now_or_never().is_some());
    }

    fn follower(topics: &[&str]) -> Follower {
        let account = Rc::new(Account {
            login: String::new(),
            password: "",
            token: RefCell::default(),
        });
        Follower::new(0, topics.iter().map(|t| (*t).to_owned()).collect(), account)
    }

    #[test]
    fn a_follower_counts_gaps_and_resumes_across_sockets() {
        let f = follower(&["kitchen:k"]);
        let now = Instant::now();
        let frame = |kind: &str, seq: i64| json!({"topic": "kitchen:k", "type": kind, "seq": seq, "data": {"order_id": format!("o{seq}"), "reason": "fresh"}});
        f.on_frame(&frame("subscribed", 5), now, 0);
        f.on_frame(&frame("snapshot", 5), now, 0);
        assert!(f.subscribed());
        f.on_frame(&frame("order.ready", 6), now, 0);
        f.on_frame(&frame("order.picked_up", 7), now, 0);
        f.on_frame(
            &json!({"topic": "kitchen:k", "type": "alert.card_in_use", "seq": 0}),
            now,
            0,
        );
        assert_eq!((f.frames.get(), f.gaps.get()), (2, 0));
        // A new socket in storm 1 resumes from 7: the hub's latest (12) does not move it.
        f.on_frame(&frame("subscribed", 12), now, 1);
        assert_eq!(f.resumed.get(), 1);
        for seq in 8..=13 {
            f.on_frame(&frame("order.picked_up", seq), now, 1);
        }
        assert_eq!(f.gaps.get(), 0);
        // 8-12 were missed and replayed; 7 and 13 arrived live.
        let replayed: Vec<String> = {
            let seen = f.picked_up.borrow();
            let mut ids: Vec<String> = seen
                .iter()
                .filter(|(_, s)| s.replayed)
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(replayed, ["o10", "o11", "o12", "o8", "o9"]);
        assert_eq!(f.picked_up.borrow().len(), 7);
        // A skipped frame is a gap; a snapshot answering a resume is a reset.
        f.on_frame(&frame("order.ready", 15), now, 1);
        assert_eq!(f.gaps.get(), 1);
        let mut reset = frame("snapshot", 40);
        reset["data"]["reason"] = json!("too_far_behind");
        f.on_frame(&reset, now, 1);
        f.on_frame(&frame("order.ready", 41), now, 1);
        assert_eq!((f.gaps.get(), f.resets.get()), (1, 1));
        f.on_frame(&json!({"type": "error", "code": "forbidden"}), now, 1);
        assert_eq!(f.refusals.get(), 1);
        assert!(!f.subscribed());
    }

    #[test]
    fn an_app_knows_which_of_its_orders_are_still_to_come() {
        let app = follower(&["order:a", "order:b"]);
        assert_eq!(app.orders().collect::<Vec<_>>(), ["a", "b"]);
        let now = Instant::now();
        app.on_frame(
            &json!({"topic": "order:a", "type": "subscribed", "seq": 1}),
            now,
            0,
        );
        assert!(!app.subscribed());
        app.on_frame(
            &json!({"topic": "order:b", "type": "subscribed", "seq": 1}),
            now,
            0,
        );
        assert!(app.subscribed());
        for (seq, kind) in [
            (2, "order.confirmed"),
            (3, "order.preparing"),
            (4, "order.ready"),
            (5, "order.picked_up"),
        ] {
            app.on_frame(
                &json!({"topic": "order:a", "type": kind, "seq": seq, "data": {"order_id": "a"}}),
                now,
                0,
            );
        }
        assert_eq!(app.missing_orders(), 1);
        assert_eq!(app.gaps.get(), 0);
        assert_eq!(follower(&["kitchen:k"]).missing_orders(), 0);
    }
}
