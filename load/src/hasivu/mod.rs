//! The `hasivu` profile: the source specification's own rush plan, replayed as written.
//! Phases of open-loop arrivals at a constant rate (each sent when due, whatever the hub is
//! doing, and timed from then); a seeded mix of students who refresh their token and read the
//! menu, students who refresh and order (kitchen bots then confirm, start and ready the order
//! and a reader hands it over with a signed scan), and guardians who read one of their child's
//! orders and their inbox. Reported per phase and request type against the plan's p95 target,
//! with the rush's accounting: every accepted order handed over exactly once.
//!
//! Here the run and its shared state; its parts: `plan` (phases, the mix, the schedule),
//! `seed`, `arrivals` (what each arrival does), `notifications` (the outbox against the
//! sinks) and `report` (per phase, the verdicts, the table).

mod arrivals;
mod notifications;
mod plan;
mod report;
mod seed;

use crate::RunArgs;
use crate::hub::Target;
use crate::progress::Progress;
use crate::report::{HubSampler, Recorder};
use crate::sink::{ProviderLimits, Sinks};
use crate::stats::server_cpu;
use anyhow::bail;
use arrivals::{arrive, warm_up};
use awc::Client;
use notifications::account_notifications;
pub use plan::Plan;
use plan::{Kind, schedule};
pub use report::table;
use report::{Outcome, report};
use seed::seed;
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

const REFRESH: &str = "refresh";
const MENU: &str = "menu";
const ORDER: &str = "order";
const CONFIRM: &str = "confirm";
const START: &str = "start";
const READY: &str = "ready";
const SCAN: &str = "scan";
const ORDER_READ: &str = "order_read";
const INBOX: &str = "inbox";
/// Not a request: an order's POST to its scan's verdict.
const LUNCH: &str = "lunch";
/// The request types, in the order the table shows them.
pub const REQUESTS: [&str; 9] = [
    REFRESH, MENU, ORDER, CONFIRM, START, READY, SCAN, ORDER_READ, INBOX,
];

/// A send that left this much after it was due counts as late (the driver fell behind).
const LATE: Duration = Duration::from_millis(100);
/// A card read again at one reader within the hub's debounce (`rfid.debounce_ms`, 3 s by
/// default) gets the earlier read's verdict: a student who ordered waits this long before
/// their next arrival.
const SCAN_COOLDOWN: Duration = Duration::from_millis(3500);
const PASSWORD: &str = "hasivu-load-pass";
/// People created (each an Argon2 hash on the hub) and signed in at once during the seed.
const SEED_AT_ONCE: usize = 8;

struct School {
    id: String,
    meal: String,
    /// The kitchen bot's access token.
    staff: String,
    /// (reader id, secret) and the reader's own scan sequence.
    readers: Vec<((String, String), Cell<i64>)>,
    /// Scans go to the school's readers in turn.
    next_reader: Cell<usize>,
}

struct Student {
    school: usize,
    login: String,
    card: String,
    access: RefCell<String>,
    /// Single use: each refresh returns the next one.
    refresh: RefCell<String>,
    /// The latest order accepted for this student (what a guardian reads).
    latest_order: RefCell<Option<String>>,
}

struct Guardian {
    token: String,
    /// Indexes into the run's students.
    children: [usize; 2],
    next_child: Cell<usize>,
}

/// What happened to a phase's arrivals, beside the latencies.
#[derive(Default, Clone)]
struct PhaseCounts {
    menu: u64,
    order: u64,
    guardian: u64,
    /// Sent more than `LATE` after they were due.
    late: u64,
    /// Not sent: `--max-outstanding` requests were outstanding.
    dropped: u64,
    /// Arrivals that found no student free and waited for one (inside their first
    /// request's latency).
    waited_for_student: u64,
    /// Orders posted (the student's refresh succeeded).
    orders_posted: u64,
}

struct Run {
    url: String,
    client: Client,
    started: Cell<Instant>,
    /// One per phase, then one for the seed's warm-up lunches.
    phases: RefCell<Vec<Recorder>>,
    counts: RefCell<Vec<PhaseCounts>>,
    /// The whole run, per request type (`hops` in the report, as the rush's).
    whole: RefCell<Recorder>,
    outstanding: Cell<usize>,
    max_outstanding: usize,
    schools: Vec<School>,
    students: Vec<Student>,
    guardians: Vec<Guardian>,
    /// Students free from an instant on, earliest first: round-robin reuse.
    free: RefCell<BinaryHeap<Reverse<(Instant, usize)>>>,
    next_guardian: Cell<usize>,
    /// Accepted orders, each once (warm-up ones included).
    accepted: RefCell<Vec<String>>,
    /// Order id -> accepted, non-repeat verdicts (a meal handed over).
    handed_over: RefCell<HashMap<String, u32>>,
    /// Students who signed in again after a refresh failed.
    signed_in_again: Cell<u64>,
    run_id: String,
}

impl Run {
    fn ok(&self, phase: usize, hop: &'static str, latency: Duration, late: bool) {
        if let Some(r) = self.phases.borrow_mut().get_mut(phase) {
            r.ok(hop, latency, late);
        }
        if phase < self.counts.borrow().len() {
            self.whole.borrow_mut().ok(hop, latency, late);
        }
    }

    fn error(&self, phase: usize, hop: &'static str, code: &str) {
        if let Some(r) = self.phases.borrow_mut().get_mut(phase) {
            r.error(hop, code);
        }
        if phase < self.counts.borrow().len() {
            self.whole.borrow_mut().error(hop, code);
        }
    }

    fn count(&self, phase: usize, f: impl FnOnce(&mut PhaseCounts)) {
        if let Some(c) = self.counts.borrow_mut().get_mut(phase) {
            f(c);
        }
    }

    fn tick(&self, orders: u64, scans: u64) {
        let second = self.started.get().elapsed().as_secs() as usize;
        self.whole.borrow_mut().tick(second, orders, scans);
    }

    fn release(&self, student: usize, after: Duration) {
        self.free
            .borrow_mut()
            .push(Reverse((Instant::now() + after, student)));
    }
}

/// A hub the tool started for the run: the sinks it sends to, with the settings it was given,
/// and its database, where what it committed is read.
pub struct OwnSinks<'a> {
    pub sinks: &'a Sinks,
    pub database_url: &'a str,
    pub delay_ms: u64,
    pub limits: ProviderLimits,
    pub smtp_sessions: usize,
}

pub async fn run(
    plan: &Plan,
    args: &RunArgs,
    target: &Target,
    own: Option<OwnSinks<'_>>,
) -> anyhow::Result<Value> {
    if !args.time_scale.is_finite() || args.time_scale <= 0.0 {
        bail!("--time-scale must be positive");
    }
    let arrivals = schedule(plan, args.time_scale, args.rate_scale);
    let spans = plan.spans(args.time_scale);
    let client = Client::builder()
        .timeout(Duration::from_secs(30))
        // The driver's pool must not queue requests the hub has not seen.
        .connector(awc::Connector::new().limit(args.max_outstanding.max(100) * 2))
        .finish();
    let seeding = Instant::now();
    let (schools, students, guardians) = seed(plan, target, &client).await?;
    let hops: Vec<&'static str> = REQUESTS.iter().copied().chain([LUNCH]).collect();
    let run = Rc::new(Run {
        url: target.url.clone(),
        client,
        started: Cell::new(Instant::now()),
        phases: RefCell::new(
            (0..=plan.phases.len())
                .map(|_| Recorder::with_hops(&hops).map(Recorder::without_series))
                .collect::<anyhow::Result<_>>()?,
        ),
        counts: RefCell::new(vec![PhaseCounts::default(); plan.phases.len()]),
        whole: RefCell::new(Recorder::with_hops(&hops)?),
        outstanding: Cell::new(0),
        max_outstanding: args.max_outstanding,
        free: RefCell::new(
            (0..students.len())
                .map(|s| Reverse((Instant::now(), s)))
                .collect(),
        ),
        schools,
        students,
        guardians,
        next_guardian: Cell::new(0),
        accepted: RefCell::default(),
        handed_over: RefCell::default(),
        signed_in_again: Cell::new(0),
        run_id: uuid::Uuid::new_v4().simple().to_string(),
    });
    let warm_up = warm_up(&run, plan.phases.len()).await;
    let seed_secs = seeding.elapsed().as_secs_f64();

    run.started.set(Instant::now());
    let started_utc = chrono::Utc::now();
    let hub_sampler = HubSampler::start(target.pid);
    {
        let mut whole = run.whole.borrow_mut();
        whole.start_clock();
        for (phase, (start, _)) in plan.phases.iter().zip(&spans) {
            whole.phase(&phase.name, Some(*start));
        }
    }
    // The end of the last phase as planned (the driver may send its last arrival a little
    // after it): the notifications' clock starts there.
    let planned = spans.last().map_or(0.0, |(start, length)| start + length);
    let cpu_marks = Rc::new(RefCell::new(Vec::new()));
    let marks = target.pid.map(|pid| {
        actix_web::rt::spawn(mark_cpu(run.clone(), pid, spans.clone(), cpu_marks.clone()))
    });
    let progress = Progress::new(args.quiet, Some(planned));
    let live = progress.is_shown();
    let ticker = live.then(|| actix_web::rt::spawn(show_progress(run.clone(), progress.clone())));
    for (n, arrival) in arrivals.iter().copied().enumerate() {
        let due = run.started.get() + Duration::from_secs_f64(arrival.at);
        let now = Instant::now();
        if due > now {
            actix_web::rt::time::sleep_until(due.into()).await;
        }
        let late = now.saturating_duration_since(due) > LATE;
        run.count(arrival.phase, |c| {
            match arrival.kind {
                Kind::Menu => c.menu += 1,
                Kind::Order => c.order += 1,
                Kind::Guardian => c.guardian += 1,
            }
            c.late += u64::from(late);
        });
        if run.outstanding.get() >= run.max_outstanding {
            run.count(arrival.phase, |c| c.dropped += 1);
            continue;
        }
        run.outstanding.set(run.outstanding.get() + 1);
        let run = run.clone();
        actix_web::rt::spawn(async move {
            arrive(&run, n, arrival, due, late).await;
            run.outstanding.set(run.outstanding.get() - 1);
        });
    }
    let arrivals_secs = run.started.get().elapsed().as_secs_f64();
    let drain_until = Instant::now() + Duration::from_secs(plan.drain_secs);
    while run.outstanding.get() > 0 && Instant::now() < drain_until {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let finished = run.outstanding.get() == 0;
    let run_secs = run.started.get().elapsed().as_secs_f64();
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    progress.finish();
    let end = run.started.get() + Duration::from_secs_f64(planned);
    let end_utc = started_utc
        + chrono::Duration::from_std(Duration::from_secs_f64(planned)).unwrap_or_default();
    let notifications = match &own {
        Some(own) => {
            if live {
                eprintln!(
                    "tiffin-load: waiting up to {} s after the end for every notification",
                    plan.notifications.within_secs
                );
            }
            account_notifications(own, &plan.notifications, end, end_utc).await
        }
        None => json!({
            "accounted": false,
            "why": "the hub was given by --url: its sinks and database are not the tool's",
        }),
    };
    if let Some(marks) = marks {
        marks.abort();
    }
    let cpu = cpu_marks.borrow().clone();
    let hub_series = hub_sampler.stop();
    Ok(report(
        plan,
        args,
        &run,
        Outcome {
            finished,
            seed_secs,
            arrivals_secs,
            run_secs,
            warm_up,
            cpu,
            scheduled: arrivals.len(),
            notifications,
            hub_series,
        },
    ))
}

/// The hub's CPU seconds at the start and at the end of each phase.
async fn mark_cpu(run: Rc<Run>, pid: u32, spans: Vec<(f64, f64)>, marks: Rc<RefCell<Vec<f64>>>) {
    let mut at = vec![0.0];
    at.extend(spans.iter().map(|(start, length)| start + length));
    for t in at {
        let when = run.started.get() + Duration::from_secs_f64(t);
        actix_web::rt::time::sleep_until(when.into()).await;
        if let Some(cpu) = server_cpu(Some(pid)) {
            marks.borrow_mut().push(cpu);
        }
    }
}

/// The progress bar, redrawn every second.
async fn show_progress(run: Rc<Run>, progress: Progress) {
    loop {
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        let counts = run.counts.borrow();
        let arrived: u64 = counts.iter().map(|c| c.menu + c.order + c.guardian).sum();
        let phase = counts
            .iter()
            .rposition(|c| c.menu + c.order + c.guardian > 0)
            .map_or(1, |p| p + 1);
        let whole = run.whole.borrow();
        progress.update(
            &format!("phase {phase}/{}", counts.len()),
            run.started.get().elapsed().as_secs(),
            whole.answered(),
            whole.errors(),
            &format!(
                "arrivals {arrived} | orders {} | handed over {} | in flight {}",
                run.accepted.borrow().len(),
                run.handed_over.borrow().len(),
                run.outstanding.get(),
            ),
        );
    }
}
