//! The `hasivu` profile: the source specification's own rush plan, replayed as written.
//! Phases of open-loop arrivals at a constant rate (each sent when due, whatever the hub is
//! doing, and timed from then); a seeded mix of students who refresh their token and read the
//! menu, students who refresh and order (kitchen bots then confirm, start and ready the order
//! and a reader hands it over with a signed scan), and guardians who read one of their child's
//! orders and their inbox. Reported per phase and request type against the plan's p95 target,
//! with the rush's accounting: every accepted order handed over exactly once.

use crate::RunArgs;
use crate::hub::{Target, call, code_of, reader_post_on, reply, usage};
use crate::report::Recorder;
use crate::sink::{Bucket, ProviderLimits, Sinks};
use anyhow::{Context, bail};
use awc::Client;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The plan: `load/profiles/hasivu.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    /// Seeds the arrival mix's shuffle.
    pub seed: u64,
    /// Every request type's p95 should be under this, in every phase.
    pub target_p95_ms: f64,
    pub schools: usize,
    /// Signed-in students, reused round-robin.
    pub students_per_school: usize,
    /// Guardian k has students 2k and 2k+1 of their school.
    pub guardians_per_school: usize,
    pub readers_per_school: usize,
    /// After the last arrival, how long lunches under way may take to finish.
    pub drain_secs: u64,
    pub phases: Vec<Phase>,
    pub mix: Mix,
    /// What a hub the tool starts sends its notifications to, and how soon they must be out.
    #[serde(default)]
    pub notifications: Notifications,
}

/// The notification side of a run against a hub the tool starts: the tool's sinks answer each
/// email, push and SMS after `sink_delay_ms`, and the hub's provider buckets are set to what
/// they allow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notifications {
    /// How long each sink takes to answer (a provider's latency); `--sink-delay-ms` overrides.
    pub sink_delay_ms: u64,
    /// Everything the run committed must be sent, or expired by rule, this long after the end
    /// of the last phase.
    pub within_secs: u64,
    /// The push provider's rate (FCM's quota: 600,000 messages a minute per project).
    pub push_per_sec: u32,
    /// The SMS provider's rate (a short code or a messaging service's pool: about 100 a
    /// second; one long code takes 1).
    pub sms_per_sec: u32,
}

impl Default for Notifications {
    fn default() -> Notifications {
        Notifications {
            sink_delay_ms: 50,
            within_secs: 60,
            push_per_sec: 10_000,
            sms_per_sec: 100,
        }
    }
}

impl Notifications {
    /// The hub's provider buckets against sinks that answer after `delay_ms`: email what the
    /// SMTP sink allows (each of the hub's `smtp_sessions` carries one message at a time, so
    /// 1000 / `delay_ms` a second each; a burst of one per session; off when the sink does not
    /// wait), push and SMS at the providers' rates (the HTTP sinks answer every request
    /// concurrently, so they allow whatever the provider would), each with a burst of one
    /// second's worth.
    pub fn limits(&self, delay_ms: u64, smtp_sessions: usize) -> ProviderLimits {
        let email = match 1000u64.checked_div(delay_ms) {
            Some(each) => Bucket {
                per_sec: u32::try_from(each.saturating_mul(smtp_sessions as u64))
                    .unwrap_or(u32::MAX),
                burst: u32::try_from(smtp_sessions.max(1)).unwrap_or(u32::MAX),
            },
            None => Bucket {
                per_sec: 0,
                burst: 0,
            },
        };
        let second = |per_sec: u32| Bucket {
            per_sec,
            burst: per_sec,
        };
        ProviderLimits {
            email,
            push: second(self.push_per_sec),
            sms: second(self.sms_per_sec),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    pub arrivals_per_sec: f64,
}

/// Shares of arrivals, in whole parts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    pub menu: u32,
    pub order: u32,
    pub guardian: u32,
}

impl Plan {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.phases.is_empty() {
            bail!("a phased plan needs at least one phase");
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !self
            .phases
            .iter()
            .all(|p| positive(p.seconds) && positive(p.arrivals_per_sec))
        {
            bail!("every phase needs positive seconds and arrivals_per_sec");
        }
        if self.mix.menu + self.mix.order + self.mix.guardian == 0 {
            bail!("the mix needs at least one share");
        }
        if self.schools == 0 || self.students_per_school == 0 || self.readers_per_school == 0 {
            bail!("schools, students_per_school and readers_per_school must be at least 1");
        }
        if self.guardians_per_school * 2 > self.students_per_school {
            bail!(
                "each guardian has two children: guardians_per_school <= students_per_school / 2"
            );
        }
        if self.mix.guardian > 0 && self.guardians_per_school == 0 {
            bail!("a mix with guardians needs guardians_per_school");
        }
        if !positive(self.target_p95_ms) {
            bail!("target_p95_ms must be positive");
        }
        if self.notifications.within_secs == 0 {
            bail!("notifications.within_secs must be at least 1");
        }
        Ok(())
    }

    /// Each phase's start and length in seconds, every length scaled by `time_scale`.
    pub fn spans(&self, time_scale: f64) -> Vec<(f64, f64)> {
        let mut start = 0.0;
        self.phases
            .iter()
            .map(|p| {
                let span = (start, p.seconds * time_scale);
                start += span.1;
                span
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Menu,
    Order,
    Guardian,
}

/// One arrival: when it is due (seconds from the start), in which phase, of which kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub at: f64,
    pub phase: usize,
    pub kind: Kind,
}

/// Every arrival of the run: each phase at its constant rate (times `rate_scale`), evenly
/// spaced over its scaled length; kinds from [`mix_sequence`], one sequence across phases.
pub fn schedule(plan: &Plan, time_scale: f64, rate_scale: f64) -> Vec<Arrival> {
    let spans = plan.spans(time_scale);
    let counts: Vec<usize> = plan
        .phases
        .iter()
        .zip(&spans)
        .map(|(p, (_, length))| (length * p.arrivals_per_sec * rate_scale).round() as usize)
        .collect();
    let mut kinds = mix_sequence(plan.mix, counts.iter().sum(), plan.seed).into_iter();
    let mut arrivals = Vec::with_capacity(counts.iter().sum());
    for (phase, (&(start, length), &n)) in spans.iter().zip(&counts).enumerate() {
        for i in 0..n {
            let Some(kind) = kinds.next() else {
                break;
            };
            arrivals.push(Arrival {
                at: start + (i as f64 + 0.5) * length / n as f64,
                phase,
                kind,
            });
        }
    }
    arrivals
}

/// `n` kinds in the mix's shares: exact in every block of (shares / their gcd) arrivals, in
/// an order shuffled by `seed`, so that every stretch of the run has the plan's mix.
pub fn mix_sequence(mix: Mix, n: usize, seed: u64) -> Vec<Kind> {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let g = gcd(gcd(mix.menu, mix.order), mix.guardian).max(1);
    let mut block = Vec::new();
    for (kind, share) in [
        (Kind::Menu, mix.menu),
        (Kind::Order, mix.order),
        (Kind::Guardian, mix.guardian),
    ] {
        block.extend(std::iter::repeat_n(kind, (share / g) as usize));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kinds = Vec::with_capacity(n + block.len());
    while kinds.len() < n && !block.is_empty() {
        let mut next = block.clone();
        next.shuffle(&mut rng);
        kinds.extend(next);
    }
    kinds.truncate(n);
    kinds
}

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
                .map(|_| Recorder::with_hops(&hops))
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
    let cpu_marks = Rc::new(RefCell::new(Vec::new()));
    let marks = target.pid.map(|pid| {
        actix_web::rt::spawn(mark_cpu(run.clone(), pid, spans.clone(), cpu_marks.clone()))
    });
    // A live line only on a terminal: into a file it would be thousands of overwritten lines.
    let live = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = live.then(|| actix_web::rt::spawn(show_progress(run.clone())));
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
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    // The end of the last phase as planned (the driver may have sent its last arrival a
    // little after it): the notifications' clock starts there.
    let planned = spans.last().map_or(0.0, |(start, length)| start + length);
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
        },
    ))
}

/// One arrival, as the plan's mix says.
async fn arrive(run: &Run, n: usize, arrival: Arrival, due: Instant, late: bool) {
    let phase = arrival.phase;
    if arrival.kind == Kind::Guardian {
        guardian_reads(run, phase, due, late).await;
        return;
    }
    let (student, waited) = take_student(run).await;
    if waited {
        run.count(phase, |c| c.waited_for_student += 1);
    }
    // The first request is timed from when the arrival was due: waiting shows.
    let refreshed = refresh(run, phase, student, due, late).await;
    let cooldown = match (refreshed, arrival.kind) {
        (true, Kind::Order) => {
            run.count(phase, |c| c.orders_posted += 1);
            lunch(run, phase, student, format!("hasivu-{}-{n}", run.run_id)).await;
            SCAN_COOLDOWN
        }
        (true, _) => {
            read_menu(run, phase, student).await;
            Duration::ZERO
        }
        (false, _) => Duration::ZERO,
    };
    run.release(student, cooldown);
}

/// The next student free, waiting for one if none is; whether it waited.
async fn take_student(run: &Run) -> (usize, bool) {
    let mut waited = false;
    loop {
        let next = {
            let mut free = run.free.borrow_mut();
            match free.peek() {
                Some(Reverse((at, _))) if *at <= Instant::now() => {
                    free.pop().map(|Reverse((_, s))| s)
                }
                _ => None,
            }
        };
        if let Some(student) = next {
            return (student, waited);
        }
        waited = true;
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `POST /auth/refresh` with the student's refresh token, keeping the new pair. A failed
/// refresh leaves the token's state unknown: the student signs in again (not timed).
async fn refresh(run: &Run, phase: usize, student: usize, due: Instant, late: bool) -> bool {
    let s = &run.students[student];
    let token = s.refresh.borrow().clone();
    let outcome = call(
        run.client.post(format!("{}/api/v1/auth/refresh", run.url)),
        &json!({"refresh_token": token}),
    )
    .await;
    let pair = match &outcome {
        Ok((200, body)) => body["access_token"]
            .as_str()
            .zip(body["refresh_token"].as_str()),
        _ => None,
    };
    if let Some((access, refresh)) = pair {
        *s.access.borrow_mut() = access.to_owned();
        *s.refresh.borrow_mut() = refresh.to_owned();
        run.ok(phase, REFRESH, due.elapsed(), late);
        return true;
    }
    run.error(phase, REFRESH, &code_of(&outcome));
    if let Ok((access, refresh)) = sign_in(&run.client, &run.url, &s.login).await {
        *s.access.borrow_mut() = access;
        *s.refresh.borrow_mut() = refresh;
        run.signed_in_again.set(run.signed_in_again.get() + 1);
    }
    false
}

/// `GET /schools/{id}/meals` as the student.
async fn read_menu(run: &Run, phase: usize, student: usize) {
    let s = &run.students[student];
    let school = &run.schools[s.school];
    let access = s.access.borrow().clone();
    let sent = Instant::now();
    let outcome = reply(
        run.client
            .get(format!("{}/api/v1/schools/{}/meals", run.url, school.id))
            .bearer_auth(&access)
            .send()
            .await,
    )
    .await;
    match &outcome {
        Ok((200, Value::Array(meals))) if !meals.is_empty() => {
            run.ok(phase, MENU, sent.elapsed(), false)
        }
        _ => run.error(phase, MENU, &code_of(&outcome)),
    }
}

/// A lunch: the student orders, the kitchen bot confirms, starts and readies it, a reader
/// hands it over. Each request is timed from its send; the lunch from the order's send to
/// the scan's verdict.
async fn lunch(run: &Run, phase: usize, student: usize, key: String) {
    let s = &run.students[student];
    let school = &run.schools[s.school];
    let access = s.access.borrow().clone();
    let sent = Instant::now();
    let outcome = call(
        run.client
            .post(format!("{}/api/v1/schools/{}/orders", run.url, school.id))
            .bearer_auth(&access)
            .insert_header(("Idempotency-Key", key)),
        &json!({"items": [{"meal_id": school.meal, "quantity": 1}]}),
    )
    .await;
    run.tick(1, 0);
    let id = match &outcome {
        Ok((201, body)) => body["id"].as_str().map(str::to_owned),
        _ => None,
    };
    let Some(id) = id else {
        run.error(phase, ORDER, &code_of(&outcome));
        return;
    };
    run.ok(phase, ORDER, sent.elapsed(), false);
    run.accepted.borrow_mut().push(id.clone());
    *s.latest_order.borrow_mut() = Some(id.clone());
    for (action, hop) in [("confirm", CONFIRM), ("start", START), ("ready", READY)] {
        let moved = Instant::now();
        let outcome = call(
            run.client
                .post(format!("{}/api/v1/orders/{id}/{action}", run.url))
                .bearer_auth(&school.staff),
            &json!({}),
        )
        .await;
        match &outcome {
            Ok((200, _)) => run.ok(phase, hop, moved.elapsed(), false),
            _ => {
                run.error(phase, hop, &code_of(&outcome));
                return;
            }
        }
    }
    let k = school.next_reader.get();
    school.next_reader.set(k + 1);
    let (reader, seq) = &school.readers[k % school.readers.len()];
    let n = seq.get();
    seq.set(n + 1);
    let scanned = Instant::now();
    let outcome = reader_post_on(
        &run.client,
        &run.url,
        reader,
        "/api/v1/reader/scans",
        &json!({"seq": n, "card_uid": s.card}),
    )
    .await;
    run.tick(0, 1);
    match &outcome {
        Ok((200, v))
            if v["verdict"] == "accepted"
                && v["order_id"] == id.as_str()
                && v["debounced"] != true =>
        {
            run.ok(phase, SCAN, scanned.elapsed(), false);
            run.ok(phase, LUNCH, sent.elapsed(), false);
            *run.handed_over.borrow_mut().entry(id).or_default() += 1;
        }
        Ok((200, v)) => run.error(
            phase,
            SCAN,
            &format!("verdict {}", v["verdict"].as_str().unwrap_or("?")),
        ),
        _ => run.error(phase, SCAN, &code_of(&outcome)),
    }
}

/// A guardian, in turn, reads the latest order of one of their children (in turn) and
/// their inbox.
async fn guardian_reads(run: &Run, phase: usize, due: Instant, late: bool) {
    let Some(count) = std::num::NonZeroUsize::new(run.guardians.len()) else {
        return;
    };
    let g = &run.guardians[run.next_guardian.get() % count];
    run.next_guardian.set(run.next_guardian.get() + 1);
    let k = g.next_child.get();
    g.next_child.set(k + 1);
    // The warm-up gave every guardian's first child an order.
    let order = [g.children[k % 2], g.children[(k + 1) % 2]]
        .iter()
        .find_map(|c| run.students[*c].latest_order.borrow().clone());
    match order {
        Some(id) => {
            let outcome = reply(
                run.client
                    .get(format!("{}/api/v1/orders/{id}", run.url))
                    .bearer_auth(&g.token)
                    .send()
                    .await,
            )
            .await;
            match &outcome {
                Ok((200, body)) if body["order"]["id"] == id.as_str() => {
                    run.ok(phase, ORDER_READ, due.elapsed(), late)
                }
                _ => run.error(phase, ORDER_READ, &code_of(&outcome)),
            }
        }
        None => run.error(phase, ORDER_READ, "no order to read"),
    }
    let sent = Instant::now();
    let outcome = reply(
        run.client
            .get(format!("{}/api/v1/me/inbox", run.url))
            .bearer_auth(&g.token)
            .send()
            .await,
    )
    .await;
    match &outcome {
        Ok((200, Value::Array(_))) => run.ok(phase, INBOX, sent.elapsed(), false),
        _ => run.error(phase, INBOX, &code_of(&outcome)),
    }
}

/// Before the clock starts, each guardian's first child has a lunch (recorded apart), so
/// that every guardian has an order to read from the first second.
async fn warm_up(run: &Rc<Run>, setup: usize) -> usize {
    let children: Vec<usize> = run.guardians.iter().map(|g| g.children[0]).collect();
    // Taken out of the pool while they lunch; back in with the cooldown.
    run.free
        .borrow_mut()
        .retain(|Reverse((_, s))| !children.contains(s));
    for lot in children.chunks(SEED_AT_ONCE) {
        futures_util::future::join_all(lot.iter().map(|&student| async move {
            if refresh(run, setup, student, Instant::now(), false).await {
                let key = format!("hasivu-{}-warm-{student}", run.run_id);
                lunch(run, setup, student, key).await;
            }
            run.release(student, SCAN_COOLDOWN);
        }))
        .await;
    }
    children.len()
}

/// The hub's CPU seconds at the start and at the end of each phase.
async fn mark_cpu(run: Rc<Run>, pid: u32, spans: Vec<(f64, f64)>, marks: Rc<RefCell<Vec<f64>>>) {
    let mut at = vec![0.0];
    at.extend(spans.iter().map(|(start, length)| start + length));
    for t in at {
        let when = run.started.get() + Duration::from_secs_f64(t);
        actix_web::rt::time::sleep_until(when.into()).await;
        if let Some((cpu, _)) = usage(pid) {
            marks.borrow_mut().push(cpu);
        }
    }
}

async fn show_progress(run: Rc<Run>) {
    loop {
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        let counts = run.counts.borrow();
        let arrived: u64 = counts.iter().map(|c| c.menu + c.order + c.guardian).sum();
        let phase = counts
            .iter()
            .rposition(|c| c.menu + c.order + c.guardian > 0)
            .map_or(1, |p| p + 1);
        eprint!(
            "\r[{:>5}s] phase {phase}/{}, arrivals {arrived:>7}, orders {:>6}, handed over {:>6}, in flight {:>5}, errors {:>4}",
            run.started.get().elapsed().as_secs(),
            counts.len(),
            run.accepted.borrow().len(),
            run.handed_over.borrow().len(),
            run.outstanding.get(),
            run.whole.borrow().errors(),
        );
    }
}

/// A person's (access token, refresh token).
async fn sign_in(client: &Client, url: &str, login: &str) -> anyhow::Result<(String, String)> {
    let (status, body) = call(
        client.post(format!("{url}/api/v1/auth/login")),
        &json!({"login": login, "password": PASSWORD}),
    )
    .await?;
    if status != 200 {
        bail!("signing in {login}: {status} {body}");
    }
    let token = |k: &str| body[k].as_str().map(str::to_owned).context("tokens");
    Ok((token("access_token")?, token("refresh_token")?))
}

async fn created(client: &Client, url: String, token: &str, body: Value) -> anyhow::Result<Value> {
    crate::hub::created(client.post(url).bearer_auth(token), body).await
}

/// Schools with a meal, a counter and readers, a kitchen bot, students with passwords and
/// cards, and guardians of two students each: everyone signed in.
async fn seed(
    plan: &Plan,
    target: &Target,
    client: &Client,
) -> anyhow::Result<(Vec<School>, Vec<Student>, Vec<Guardian>)> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    // Phone numbers are unique: this run's differ from an earlier run's on the same hub.
    let phone_salt = crate::people::phone_salt(&run_id);
    let admin = target.admin_token.as_str();
    let url = |p: String| format!("{}{p}", target.url);
    let mut schools = Vec::new();
    let mut students = Vec::new();
    let mut guardians = Vec::new();
    for n in 0..plan.schools {
        let (id, meal) = crate::hub::school_with_meal(
            target,
            format!("Hasivu school {n} ({})", &run_id[..8]),
            "America/Chicago",
            ("Hasivu thali", 450),
        )
        .await?;
        let counter = created(
            client,
            url(format!("/api/v1/schools/{id}/counters")),
            admin,
            json!({"number": 1, "is_open": true}),
        )
        .await?;
        let counter = counter["id"].as_str().context("counter id")?.to_owned();
        let mut readers = Vec::new();
        for r in 0..plan.readers_per_school {
            let reader = created(
                client,
                url(format!("/api/v1/schools/{id}/readers")),
                admin,
                json!({"name": format!("Hasivu reader {r}"), "counter_id": counter}),
            )
            .await?;
            let secret = |k: &str| reader[k].as_str().map(str::to_owned).context("reader");
            readers.push(((secret("id")?, secret("secret")?), Cell::new(1)));
        }
        let staff_login = format!("hasivu-{run_id}-{n}-kitchen@load.test");
        created(
            client,
            url(format!("/api/v1/schools/{id}/users")),
            admin,
            json!({"role": "kitchen_staff", "display_name": "Hasivu kitchen", "email": staff_login, "password": PASSWORD}),
        )
        .await?;
        let (staff, _) = sign_in(client, &target.url, &staff_login).await?;
        // Students: created with a password (a hash on the hub), a card, signed in.
        let first = students.len();
        let numbers: Vec<usize> = (0..plan.students_per_school).collect();
        for lot in numbers.chunks(SEED_AT_ONCE) {
            let made = futures_util::future::join_all(lot.iter().map(|s| {
                let (id, run_id, url) = (&id, &run_id, &url);
                async move {
                    let login = format!("hasivu-{run_id}-{n}-{s}@load.test");
                    let student = created(
                        client,
                        url(format!("/api/v1/schools/{id}/users")),
                        admin,
                        json!({"role": "student", "display_name": format!("Student {s}"), "email": login, "password": PASSWORD}),
                    )
                    .await?;
                    let student_id = student["id"].as_str().context("student id")?.to_owned();
                    // Unique per run: runs on one hub do not share cards.
                    let card = format!("4A{}{n:02X}{s:04X}", &run_id[..6]);
                    created(
                        client,
                        url(format!("/api/v1/schools/{id}/cards")),
                        admin,
                        json!({"student_id": student_id, "card_uid": card}),
                    )
                    .await?;
                    let (access, refresh) = sign_in(client, &target.url, &login).await?;
                    anyhow::Ok((
                        student_id,
                        Student {
                            school: n,
                            login,
                            card,
                            access: RefCell::new(access),
                            refresh: RefCell::new(refresh),
                            latest_order: RefCell::new(None),
                        },
                    ))
                }
            }))
            .await;
            for m in made {
                let (student_id, student) = m?;
                students.push((student_id, student));
            }
        }
        for g in 0..plan.guardians_per_school {
            let login = format!("hasivu-{run_id}-{n}-g{g}@load.test");
            let guardian = created(
                client,
                url(format!("/api/v1/schools/{id}/users")),
                admin,
                json!({
                    "role": "guardian",
                    "display_name": format!("Guardian {g}"),
                    "email": login,
                    "password": PASSWORD,
                    "phone": crate::people::phone_number(phone_salt, n * 1000 + g),
                }),
            )
            .await?;
            let guardian_id = guardian["id"].as_str().context("guardian id")?.to_owned();
            let children = [first + 2 * g, first + 2 * g + 1];
            for child in children {
                created(
                    client,
                    url(format!("/api/v1/schools/{id}/guardian-links")),
                    admin,
                    json!({"guardian_id": guardian_id, "student_id": students[child].0, "relationship": "parent"}),
                )
                .await?;
            }
            let (token, _) = sign_in(client, &target.url, &login).await?;
            // As the rush's guardians with the app: a device for push, "ready" by SMS and
            // pickups by email too (routine news is in-app and push by default), so that
            // every channel carries the lunch's news.
            created(
                client,
                url("/api/v1/me/devices".to_owned()),
                &token,
                json!({"platform": "android", "token": format!("hasivu-{run_id}-{n}-g{g}")}),
            )
            .await?;
            crate::hub::created(
                client
                    .put(url("/api/v1/me/preferences".to_owned()))
                    .bearer_auth(&token),
                json!({"preferences": [
                    {"kind": "order_ready", "channel": "sms", "enabled": true},
                    {"kind": "order_picked_up", "channel": "email", "enabled": true},
                ]}),
            )
            .await?;
            guardians.push(Guardian {
                token,
                children,
                next_child: Cell::new(0),
            });
        }
        schools.push(School {
            id,
            meal,
            staff,
            readers,
            next_reader: Cell::new(0),
        });
    }
    Ok((
        schools,
        students.into_iter().map(|(_, s)| s).collect(),
        guardians,
    ))
}

/// What the run did besides its records.
struct Outcome {
    finished: bool,
    seed_secs: f64,
    arrivals_secs: f64,
    run_secs: f64,
    warm_up: usize,
    /// The hub's CPU seconds at the start and at each phase's end.
    cpu: Vec<f64>,
    scheduled: usize,
    /// [`account_notifications`]' report.
    notifications: Value,
}

fn report(plan: &Plan, args: &RunArgs, run: &Run, outcome: Outcome) -> Value {
    let spans = plan.spans(args.time_scale);
    let recorders = run.phases.borrow();
    let counts = run.counts.borrow();
    let mut phases = Vec::new();
    for (p, phase) in plan.phases.iter().enumerate() {
        let (Some(recorder), Some(c)) = (recorders.get(p), counts.get(p)) else {
            continue;
        };
        let hops = recorder.hops_json();
        let length = spans.get(p).map_or(0.0, |s| s.1);
        let cpu = match (outcome.cpu.get(p), outcome.cpu.get(p + 1)) {
            (Some(a), Some(b)) if length > 0.0 => json!((b - a) / length),
            _ => Value::Null,
        };
        phases.push(json!({
            "name": phase.name,
            "seconds": length,
            "arrivals_per_sec": phase.arrivals_per_sec * args.rate_scale,
            "arrivals": {
                "menu": c.menu,
                "order": c.order,
                "guardian": c.guardian,
                "total": c.menu + c.order + c.guardian,
            },
            "late": c.late,
            "dropped": c.dropped,
            "waited_for_student": c.waited_for_student,
            "orders_posted": c.orders_posted,
            "hub_cpu_cores_busy": cpu,
            "requests": REQUESTS.iter().map(|r| (r.to_string(), summary(&hops[*r]))).collect::<serde_json::Map<_, _>>(),
            "lunch": summary(&hops[LUNCH]),
            "verdict": verdict(&hops, plan.target_p95_ms),
        }));
    }
    let setup = recorders
        .get(plan.phases.len())
        .map(|r| r.hops_json())
        .unwrap_or_default();
    let setup_errors: u64 = REQUESTS.iter().map(|r| error_count(&setup[*r])).sum();
    let whole = run.whole.borrow();
    let errors = whole.errors() + setup_errors;
    let accepted = run.accepted.borrow();
    let handed = run.handed_over.borrow();
    let mut unique: Vec<&String> = accepted.iter().collect();
    unique.sort();
    unique.dedup();
    let doubled = accepted.len() - unique.len();
    let twice = handed.values().filter(|n| **n > 1).count();
    let not_handed = accepted
        .iter()
        .filter(|id| !handed.contains_key(*id))
        .count();
    let posted: u64 = counts.iter().map(|c| c.orders_posted).sum();
    let orders_due = posted as usize + outcome.warm_up;
    let dropped: u64 = counts.iter().map(|c| c.dropped).sum();
    let target_met = phases.iter().all(|p| p["verdict"]["met"] == true);
    // Not accounted (a hub given by --url): no verdict, and nothing against the run.
    let notifications_met = outcome.notifications["verdict"]["met"].as_bool();
    let orders_accounted = outcome.finished
        && errors == 0
        && dropped == 0
        && accepted.len() == orders_due
        && doubled == 0
        && twice == 0
        && not_handed == 0;
    let ok = orders_accounted && notifications_met != Some(false);
    json!({
        "profile": plan,
        "kind": "phased",
        "time_scale": args.time_scale,
        "rate_scale": args.rate_scale,
        "backend": match (&args.hub.url, args.backend) {
            (Some(_), _) => "given by --url",
            (None, crate::hub::Backend::Sqlite) => "sqlite",
            (None, crate::hub::Backend::Postgres) => "postgres",
        },
        "ok": ok,
        "orders_accounted": orders_accounted,
        "target_p95_ms": plan.target_p95_ms,
        "target_met_in_every_phase": target_met,
        "notifications_met": notifications_met,
        "finished_within_drain": outcome.finished,
        "seed_seconds": outcome.seed_secs,
        "arrivals_seconds": outcome.arrivals_secs,
        "run_seconds": outcome.run_secs,
        "phases": phases,
        "hops": whole.hops_json(),
        "timeline": whole.timeline_json(),
        "correctness": {
            "arrivals_scheduled": outcome.scheduled,
            "arrivals_dropped": dropped,
            "students": run.students.len(),
            "guardians": run.guardians.len(),
            "warm_up_orders": outcome.warm_up,
            "orders_due": orders_due,
            "orders_accepted": accepted.len(),
            "orders_doubled": doubled,
            "handed_over": handed.len(),
            "handed_over_twice": twice,
            "not_handed_over": not_handed,
            "signed_in_again": run.signed_in_again.get(),
            "setup_errors": setup_errors,
            "errors": errors,
        },
        "notifications": outcome.notifications,
    })
}

/// The outbox's channels, in the order the report shows them.
const CHANNELS: [&str; 4] = ["email", "push", "sms", "in_app"];

/// One outbox row, as the hub's database has it.
#[derive(Debug, Clone, PartialEq, diesel::QueryableByName)]
struct OutboxRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    channel: String,
    /// `pending` (waiting, retrying or being sent), `sent`, `expired` (past its expiry, or
    /// its news no longer true), `skipped` (a fallback whose first channel delivered),
    /// `dead` (given up on).
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamp>)]
    sent_at: Option<chrono::NaiveDateTime>,
}

/// What the hub still has to do: outbox rows waiting, and committed events whose notices are
/// not in the outbox yet (dispatch fans them out after the commit).
#[derive(Debug, Clone, Copy, diesel::QueryableByName)]
struct Waiting {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pending: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    awaiting_fan_out: i64,
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
}

/// The same counts as the hub's own outbox gauges (`outbox_pending`,
/// `outbox_events_awaiting_fan_out`).
const WAITING_SQL: &str = "SELECT \
     (SELECT COUNT(*) FROM outbox WHERE status = 'pending') AS pending, \
     (SELECT COUNT(*) FROM order_events WHERE notice IS NOT NULL AND NOT fanned_out) \
     AS awaiting_fan_out";
const OUTBOX_SQL: &str = "SELECT id, channel, status, sent_at FROM outbox";
/// In-app messages delivered: an inbox row takes its outbox row's id.
const INBOX_SQL: &str = "SELECT i.id AS id FROM inbox_messages i \
     JOIN outbox o ON o.id = i.id WHERE o.channel = 'in_app'";

/// The hub's own database, read (never written) for what it committed.
enum HubDb {
    Sqlite(diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>),
    Postgres(Box<diesel_async::AsyncPgConnection>),
}

impl HubDb {
    async fn open(url: &str) -> anyhow::Result<HubDb> {
        use diesel_async::{AsyncConnection, SimpleAsyncConnection};
        Ok(match url.strip_prefix("sqlite://") {
            Some(path) => {
                let mut conn =
                    diesel_async::sync_connection_wrapper::SyncConnectionWrapper::establish(path)
                        .await
                        .with_context(|| format!("opening the hub's database {path}"))?;
                // The hub writes meanwhile: wait for its lock rather than fail.
                conn.batch_execute("PRAGMA busy_timeout = 5000;").await?;
                HubDb::Sqlite(conn)
            }
            None => HubDb::Postgres(Box::new(
                diesel_async::AsyncPgConnection::establish(url)
                    .await
                    .context("connecting to the hub's database")?,
            )),
        })
    }

    async fn load<T>(&mut self, sql: &'static str) -> anyhow::Result<Vec<T>>
    where
        T: diesel::QueryableByName<diesel::sqlite::Sqlite>
            + diesel::QueryableByName<diesel::pg::Pg>
            + Send
            + 'static,
    {
        use diesel_async::RunQueryDsl;
        Ok(match self {
            HubDb::Sqlite(conn) => diesel::sql_query(sql).load(conn).await?,
            HubDb::Postgres(conn) => diesel::sql_query(sql).load(&mut **conn).await?,
        })
    }

    async fn waiting(&mut self) -> anyhow::Result<Waiting> {
        self.load::<Waiting>(WAITING_SQL)
            .await?
            .first()
            .copied()
            .context("no counts")
    }
}

/// What reached the sinks: per channel, arrivals per outbox id (email by Message-ID, push by
/// the id it carries, in-app by the inbox row, which takes the outbox id); SMS by count
/// (Twilio's API carries no id of ours).
#[derive(Debug, Default)]
struct Received {
    by_id: HashMap<&'static str, HashMap<String, usize>>,
    sms: u64,
}

/// One channel's accounting: what the hub committed, by status at the snapshot, against what
/// its sink received.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
struct ChannelCount {
    committed: u64,
    sent: u64,
    /// Dropped by rule: past its expiry, or its news no longer true (a meal's "ready" when it
    /// was handed over first).
    expired: u64,
    /// Dropped by rule: an SMS fallback whose push was delivered.
    skipped: u64,
    /// Dead-lettered: given up on.
    dead: u64,
    /// Still waiting, retrying or being sent at the snapshot.
    pending: u64,
    /// A status this tool does not know.
    other: u64,
    /// Distinct messages received (SMS: arrivals).
    received: u64,
    /// Messages received more than once; SMS, by count only: arrivals beyond those sent and
    /// pending (a lower bound).
    duplicates: u64,
    /// Recorded as sent, never received.
    sent_not_received: u64,
    /// Received, never committed (never for SMS: not known by id).
    received_not_committed: u64,
    /// The last send the hub recorded, in seconds after the end of the last phase (negative:
    /// before it).
    last_sent_after_end_secs: Option<f64>,
}

/// Every channel's accounting from the outbox's rows and what the sinks received; `end` is
/// the end of the last phase (UTC, as the hub records its times).
fn account(
    rows: &[OutboxRow],
    received: &Received,
    end: chrono::NaiveDateTime,
) -> Vec<(&'static str, ChannelCount)> {
    CHANNELS
        .iter()
        .map(|&channel| {
            let mut c = ChannelCount::default();
            let mine: Vec<&OutboxRow> = rows.iter().filter(|r| r.channel == channel).collect();
            let mut last: Option<chrono::NaiveDateTime> = None;
            for r in &mine {
                c.committed += 1;
                match r.status.as_str() {
                    "sent" => {
                        c.sent += 1;
                        last = last.max(r.sent_at);
                    }
                    "expired" => c.expired += 1,
                    "skipped" => c.skipped += 1,
                    "dead" => c.dead += 1,
                    "pending" => c.pending += 1,
                    _ => c.other += 1,
                }
            }
            c.last_sent_after_end_secs = last.map(|t| {
                (t - end)
                    .num_microseconds()
                    .map_or(f64::INFINITY, |us| us as f64 / 1e6)
            });
            match received.by_id.get(channel) {
                None if channel == "sms" => {
                    c.received = received.sms;
                    c.duplicates = received.sms.saturating_sub(c.sent + c.pending);
                    c.sent_not_received = c.sent.saturating_sub(received.sms);
                }
                by_id => {
                    let empty = HashMap::new();
                    let by_id = by_id.unwrap_or(&empty);
                    c.received = by_id.len() as u64;
                    c.duplicates = by_id.values().filter(|n| **n > 1).count() as u64;
                    c.sent_not_received = mine
                        .iter()
                        .filter(|r| r.status == "sent" && !by_id.contains_key(&r.id))
                        .count() as u64;
                    let ids: std::collections::HashSet<&str> =
                        mine.iter().map(|r| r.id.as_str()).collect();
                    c.received_not_committed =
                        by_id.keys().filter(|id| !ids.contains(id.as_str())).count() as u64;
                }
            }
            (channel, c)
        })
        .collect()
}

/// Met when everything committed was sent or dropped by rule (expired, skipped) by the
/// deadline, with nothing received twice, lost or unaccounted: what missed, if not.
fn notifications_verdict(channels: &[(&str, ChannelCount)], awaiting_fan_out: u64) -> Value {
    let mut missed = Vec::new();
    if awaiting_fan_out > 0 {
        missed.push(format!(
            "{awaiting_fan_out} events' notices not yet in the outbox"
        ));
    }
    for (channel, c) in channels {
        for (n, what) in [
            (c.pending, "still pending"),
            (c.other, "in a status unknown to the tool"),
            (c.dead, "dead-lettered"),
            (c.duplicates, "received twice"),
            (c.sent_not_received, "sent but not received"),
            (c.received_not_committed, "received but never committed"),
        ] {
            if n > 0 {
                missed.push(format!("{n} {channel} {what}"));
            }
        }
    }
    json!({"met": missed.is_empty(), "missed": missed})
}

/// Waits until the hub has nothing left to send or `settings.within_secs` after `end` (the end
/// of the last phase), whichever comes first; then accounts every notification in the hub's
/// database against what its sinks received, per channel.
async fn account_notifications(
    own: &OwnSinks<'_>,
    settings: &Notifications,
    end: Instant,
    end_utc: chrono::DateTime<chrono::Utc>,
) -> Value {
    let setup = json!({
        "accounted": true,
        "sink_delay_ms": own.delay_ms,
        "smtp_sessions": own.smtp_sessions,
        "provider_limits": own.limits,
        "within_secs": settings.within_secs,
        "end_of_last_phase": end_utc.to_rfc3339(),
    });
    let deadline = end + Duration::from_secs(settings.within_secs);
    let counted = async {
        let mut db = HubDb::open(own.database_url).await?;
        let settled = loop {
            let w = db.waiting().await?;
            if w.pending == 0 && w.awaiting_fan_out == 0 {
                break Some(Instant::now());
            }
            let now = Instant::now();
            if now >= deadline {
                break None;
            }
            actix_web::rt::time::sleep((deadline - now).min(Duration::from_millis(250))).await;
        };
        let waiting = db.waiting().await?;
        let rows = db.load::<OutboxRow>(OUTBOX_SQL).await?;
        let inbox = db.load::<Id>(INBOX_SQL).await?;
        anyhow::Ok((settled, waiting, rows, inbox))
    };
    let (settled, waiting, rows, inbox) = match counted.await {
        Ok(counted) => counted,
        Err(e) => {
            let mut report = setup;
            report["error"] = json!(format!("{e:#}"));
            report["verdict"] = json!({"met": false, "missed": [format!("not accounted: {e:#}")]});
            return report;
        }
    };
    // After the database: whatever it records as sent had reached its sink before.
    let times = |d: HashMap<String, Vec<chrono::DateTime<chrono::Utc>>>| {
        d.into_iter()
            .map(|(id, at)| (id, at.len()))
            .collect::<HashMap<_, _>>()
    };
    let mut received = Received {
        sms: own.sinks.providers.sms_count() as u64,
        ..Received::default()
    };
    received
        .by_id
        .insert("email", times(own.sinks.smtp.deliveries()));
    received
        .by_id
        .insert("push", times(own.sinks.providers.push_deliveries()));
    received
        .by_id
        .insert("in_app", inbox.into_iter().map(|i| (i.id, 1)).collect());
    let channels = account(&rows, &received, end_utc.naive_utc());
    let awaiting = u64::try_from(waiting.awaiting_fan_out).unwrap_or(0);
    let verdict = notifications_verdict(&channels, awaiting);
    let last = channels
        .iter()
        .filter_map(|(_, c)| c.last_sent_after_end_secs)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let mut report = setup;
    report["settled_after_end_secs"] =
        json!(settled.map(|t| t.saturating_duration_since(end).as_secs_f64()));
    report["last_sent_after_end_secs"] = json!(last);
    report["events_awaiting_fan_out"] = json!(awaiting);
    report["channels"] = Value::Object(
        channels
            .iter()
            .map(|(name, c)| (name.to_string(), json!(c)))
            .collect(),
    );
    report["verdict"] = verdict;
    report
}

/// One request type's figures, from the recorder's hop.
fn summary(hop: &Value) -> Value {
    json!({
        "count": hop["count"],
        "p50_ms": hop["p50_ms"],
        "p95_ms": hop["p95_ms"],
        "p99_ms": hop["p99_ms"],
        "max_ms": hop["max_ms"],
        "errors": error_count(hop),
        "errors_by_code": hop["errors"],
    })
}

fn error_count(hop: &Value) -> u64 {
    hop["errors"]
        .as_object()
        .map_or(0, |e| e.values().filter_map(Value::as_u64).sum())
}

/// Whether every request type's p95 is under the target and nothing failed; what missed.
fn verdict(hops: &Value, target_ms: f64) -> Value {
    let mut worst: Option<(&str, f64)> = None;
    let mut over = Vec::new();
    let mut errors = 0;
    for r in REQUESTS {
        let hop = &hops[r];
        errors += error_count(hop);
        if hop["count"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        let p95 = hop["p95_ms"].as_f64().unwrap_or(f64::INFINITY);
        if worst.is_none_or(|(_, w)| p95 > w) {
            worst = Some((r, p95));
        }
        if p95 >= target_ms {
            over.push(json!({"request": r, "p95_ms": p95}));
        }
    }
    json!({
        "met": over.is_empty() && errors == 0,
        "worst_p95": worst.map(|(r, p95)| json!({"request": r, "p95_ms": p95})),
        "over_target": over,
        "errors": errors,
    })
}

/// The table printed at the end: per phase, each request type's percentiles and errors, the
/// lunch, and the verdict.
pub fn table(report: &Value) -> String {
    let target = report["target_p95_ms"].as_f64().unwrap_or(0.0);
    let ms = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1}"));
    let mut out = String::new();
    let phases = report["phases"].as_array().cloned().unwrap_or_default();
    for (p, phase) in phases.iter().enumerate() {
        out.push_str(&format!(
            "phase {} {} ({}/s for {:.0} s): {} arrivals, {} late, {} dropped, hub {} cores\n",
            p + 1,
            phase["name"].as_str().unwrap_or("?"),
            phase["arrivals_per_sec"].as_f64().unwrap_or(0.0),
            phase["seconds"].as_f64().unwrap_or(0.0),
            phase["arrivals"]["total"],
            phase["late"],
            phase["dropped"],
            phase["hub_cpu_cores_busy"]
                .as_f64()
                .map_or("?".to_owned(), |c| format!("{c:.2}")),
        ));
        out.push_str(&format!(
            "  {:<11} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
            "request", "count", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"
        ));
        let rows = REQUESTS
            .iter()
            .map(|r| (*r, &phase["requests"][*r]))
            .chain([(LUNCH, &phase["lunch"])]);
        for (name, row) in rows {
            out.push_str(&format!(
                "  {:<11} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
                name,
                row["count"].to_string(),
                ms(&row["p50_ms"]),
                ms(&row["p95_ms"]),
                ms(&row["p99_ms"]),
                ms(&row["max_ms"]),
                row["errors"].to_string(),
            ));
        }
        let v = &phase["verdict"];
        let worst = match v["worst_p95"]["request"].as_str() {
            Some(r) => format!("worst {r} {} ms", ms(&v["worst_p95"]["p95_ms"])),
            None => "no requests".to_owned(),
        };
        let missed: Vec<String> = v["over_target"]
            .as_array()
            .map(|o| {
                o.iter()
                    .map(|x| {
                        format!(
                            "{} {} ms",
                            x["request"].as_str().unwrap_or("?"),
                            ms(&x["p95_ms"])
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let line = if v["met"] == true {
            format!("MET: p95 < {target} ms for every request type ({worst}), no errors")
        } else if missed.is_empty() {
            format!("MISSED: {} errors ({worst})", v["errors"])
        } else {
            format!(
                "MISSED: p95 >= {target} ms for {}; {} errors",
                missed.join(", "),
                v["errors"]
            )
        };
        out.push_str(&format!("  verdict: {line}\n"));
    }
    let c = &report["correctness"];
    out.push_str(&format!(
        "orders accepted {} of {} due, handed over {} ({} twice, {} not), errors {}, dropped {}: {}\n",
        c["orders_accepted"],
        c["orders_due"],
        c["handed_over"],
        c["handed_over_twice"],
        c["not_handed_over"],
        c["errors"],
        c["arrivals_dropped"],
        if report["orders_accounted"] == true {
            "accounted for"
        } else {
            "FAILED"
        },
    ));
    out.push_str(&notifications_table(&report["notifications"]));
    out.push_str(
        match (report["ok"] == true, report["notifications_met"].as_bool()) {
            (true, Some(_)) => "run: OK (every order and notification accounted for)\n",
            (true, None) => "run: OK (every order accounted for; notifications not)\n",
            (false, _) => "run: FAILED\n",
        },
    );
    out
}

/// The notifications' part of the table: the settings, each channel's accounting, the
/// verdict.
fn notifications_table(n: &Value) -> String {
    if n["accounted"] != true {
        return format!(
            "notifications: not accounted ({})\n",
            n["why"].as_str().unwrap_or("?")
        );
    }
    let bucket = |b: &Value| match b["per_sec"].as_u64() {
        Some(0) | None => "off".to_owned(),
        Some(rate) => format!("{rate}/s (burst {})", b["burst"]),
    };
    let limits = &n["provider_limits"];
    let secs = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2} s"));
    // The last send may come before the end: the lunches of the last seconds were done.
    let signed = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:+.2} s"));
    let relative = |v: &Value| match v.as_f64() {
        Some(x) if x < 0.0 => format!("{:.2} s before the end", -x),
        Some(x) => format!("{x:.2} s after the end"),
        None => "none".to_owned(),
    };
    let mut out = format!(
        "notifications: sinks answer in {} ms; hub buckets email {} over {} SMTP sessions, push {}, sms {}\n",
        n["sink_delay_ms"],
        bucket(&limits["email"]),
        n["smtp_sessions"],
        bucket(&limits["push"]),
        bucket(&limits["sms"]),
    );
    if let Some(e) = n["error"].as_str() {
        out.push_str(&format!("  NOT ACCOUNTED: {e}\n"));
        return out;
    }
    out.push_str(&format!(
        "  {:<8} {:>9} {:>7} {:>7} {:>7} {:>5} {:>7} {:>8} {:>6} {:>5} {:>10}\n",
        "channel",
        "committed",
        "sent",
        "expired",
        "skipped",
        "dead",
        "pending",
        "received",
        "twice",
        "lost",
        "last sent"
    ));
    for channel in CHANNELS {
        let c = &n["channels"][channel];
        out.push_str(&format!(
            "  {:<8} {:>9} {:>7} {:>7} {:>7} {:>5} {:>7} {:>8} {:>6} {:>5} {:>10}\n",
            channel,
            c["committed"].to_string(),
            c["sent"].to_string(),
            c["expired"].to_string(),
            c["skipped"].to_string(),
            c["dead"].to_string(),
            c["pending"].to_string(),
            c["received"].to_string(),
            c["duplicates"].to_string(),
            c["sent_not_received"].to_string(),
            signed(&c["last_sent_after_end_secs"]),
        ));
    }
    let v = &n["verdict"];
    let line = if v["met"] == true {
        format!(
            "MET: everything committed sent or expired by rule {} after the end (within {} s), the last send {}; nothing twice or lost",
            secs(&n["settled_after_end_secs"]),
            n["within_secs"],
            relative(&n["last_sent_after_end_secs"]),
        )
    } else {
        let missed: Vec<&str> = v["missed"]
            .as_array()
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        format!(
            "MISSED at {} s after the end: {}",
            n["within_secs"],
            missed.join("; ")
        )
    };
    out.push_str(&format!("  verdict: {line}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        match crate::profile::load("hasivu").unwrap() {
            crate::profile::Loaded::Phased(plan) => plan,
            crate::profile::Loaded::Rush(_) => panic!("hasivu is a phased plan"),
        }
    }

    #[test]
    fn the_plan_is_the_specifications() {
        let p = plan();
        let phases: Vec<(f64, f64)> = p
            .phases
            .iter()
            .map(|ph| (ph.seconds, ph.arrivals_per_sec))
            .collect();
        assert_eq!(phases, [(300.0, 10.0), (600.0, 50.0), (300.0, 100.0)]);
        assert_eq!((p.mix.menu, p.mix.order, p.mix.guardian), (60, 30, 10));
        assert_eq!(p.target_p95_ms, 200.0);
        assert_eq!(
            (p.notifications.sink_delay_ms, p.notifications.within_secs),
            (50, 60)
        );
        let mut bad = p.clone();
        bad.notifications.within_secs = 0;
        assert!(bad.check().is_err());
        bad = p.clone();
        bad.guardians_per_school = p.students_per_school;
        assert!(bad.check().is_err());
        bad = p.clone();
        bad.phases[1].arrivals_per_sec = 0.0;
        assert!(bad.check().is_err());
    }

    #[test]
    fn phases_keep_their_rates_when_shortened() {
        let p = plan();
        let full = schedule(&p, 1.0, 1.0);
        assert_eq!(full.len(), 3_000 + 30_000 + 30_000);
        let short = schedule(&p, 0.05, 1.0);
        // 15 s at 10/s, 30 s at 50/s, 15 s at 100/s.
        let per_phase = |a: &[Arrival], phase| a.iter().filter(|x| x.phase == phase).count();
        assert_eq!(
            (0..3).map(|ph| per_phase(&short, ph)).collect::<Vec<_>>(),
            [150, 1_500, 1_500]
        );
        assert_eq!(p.spans(0.05), [(0.0, 15.0), (15.0, 30.0), (45.0, 15.0)]);
        // Due in order, each inside its phase, evenly spaced at the phase's rate.
        assert!(short.windows(2).all(|w| w[0].at < w[1].at));
        for a in &short {
            let (start, length) = p.spans(0.05)[a.phase];
            assert!(a.at > start && a.at < start + length, "{a:?}");
        }
        let gaps: Vec<f64> = short
            .windows(2)
            .filter(|w| w[0].phase == 2 && w[1].phase == 2)
            .map(|w| w[1].at - w[0].at)
            .collect();
        assert!(gaps.iter().all(|g| (g - 0.01).abs() < 1e-9));
        // --rate-scale changes the rates, not the lengths.
        let half = schedule(&p, 0.05, 0.5);
        assert_eq!(per_phase(&half, 2), 750);
        assert!(half.last().unwrap().at < 60.0);
    }

    #[test]
    fn the_mix_is_exact_in_every_block_and_fixed_by_the_seed() {
        let p = plan();
        let kinds = mix_sequence(p.mix, 10_000, p.seed);
        assert_eq!(kinds.len(), 10_000);
        for block in kinds.chunks(10) {
            let n = |k| block.iter().filter(|x| **x == k).count();
            assert_eq!(
                (n(Kind::Menu), n(Kind::Order), n(Kind::Guardian)),
                (6, 3, 1)
            );
        }
        assert_eq!(kinds, mix_sequence(p.mix, 10_000, p.seed));
        assert_ne!(kinds, mix_sequence(p.mix, 10_000, p.seed + 1));
        // Shuffled: not the same block over and over.
        assert_ne!(kinds[..10], kinds[10..20]);
        // Every phase of a short run has the plan's shares, to within a block.
        let short = schedule(&p, 0.05, 1.0);
        for phase in 0..3 {
            let of = |k| {
                short
                    .iter()
                    .filter(|a| a.phase == phase && a.kind == k)
                    .count() as f64
            };
            let total = of(Kind::Menu) + of(Kind::Order) + of(Kind::Guardian);
            for (k, share) in [(Kind::Menu, 0.6), (Kind::Order, 0.3), (Kind::Guardian, 0.1)] {
                assert!((of(k) - share * total).abs() <= 10.0, "{phase} {k:?}");
            }
        }
        let only_orders = Mix {
            menu: 0,
            order: 5,
            guardian: 0,
        };
        assert!(
            mix_sequence(only_orders, 7, 1)
                .iter()
                .all(|k| *k == Kind::Order)
        );
    }

    #[test]
    fn a_phase_misses_the_target_on_any_p95_over_it_or_any_error() {
        let mut r = Recorder::with_hops(&[
            REFRESH, MENU, ORDER, CONFIRM, START, READY, SCAN, ORDER_READ, INBOX, LUNCH,
        ])
        .unwrap();
        for ms in 1..=100 {
            r.ok(MENU, Duration::from_millis(ms), false);
            r.ok(SCAN, Duration::from_millis(ms * 3), false);
            // The lunch is shown, not judged.
            r.ok(LUNCH, Duration::from_millis(ms * 10), false);
        }
        let v = verdict(&r.hops_json(), 200.0);
        assert_eq!(v["met"], false);
        assert_eq!(v["over_target"][0]["request"], SCAN);
        assert_eq!(v["worst_p95"]["request"], SCAN);
        let v = verdict(&r.hops_json(), 400.0);
        assert_eq!(v["met"], true);
        r.error(INBOX, "503 database_unavailable");
        let v = verdict(&r.hops_json(), 400.0);
        assert_eq!(
            (v["met"].clone(), v["errors"].clone()),
            (json!(false), json!(1))
        );
    }

    #[test]
    fn the_hubs_buckets_are_what_the_sinks_allow() {
        let n = plan().notifications;
        let limits = n.limits(50, 32);
        // 32 SMTP sessions, one message at a time each, 50 ms a message.
        assert_eq!(
            limits.email,
            Bucket {
                per_sec: 640,
                burst: 32
            }
        );
        assert_eq!((limits.push.per_sec, limits.push.burst), (10_000, 10_000));
        assert_eq!((limits.sms.per_sec, limits.sms.burst), (100, 100));
        assert_eq!(n.limits(100, 4).email.per_sec, 40);
        // A sink that does not wait bounds nothing: the bucket is off.
        assert_eq!(n.limits(0, 32).email.per_sec, 0);
        let env: HashMap<String, String> = limits.hub_env().into_iter().collect();
        assert_eq!(env["TIFFIN_DELIVERY__EMAIL__PER_SEC"], "640");
        assert_eq!(env["TIFFIN_DELIVERY__EMAIL__BURST"], "32");
        assert_eq!(env["TIFFIN_DELIVERY__SMS__PER_SEC"], "100");
        assert_eq!(env.len(), 6);
    }

    fn row(id: &str, channel: &str, status: &str, sent_ms: Option<i64>) -> OutboxRow {
        let end = end();
        OutboxRow {
            id: id.to_owned(),
            channel: channel.to_owned(),
            status: status.to_owned(),
            sent_at: sent_ms.map(|ms| end + chrono::Duration::milliseconds(ms)),
        }
    }

    fn end() -> chrono::NaiveDateTime {
        chrono::DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z")
            .unwrap()
            .naive_utc()
    }

    fn received(by_id: &[(&'static str, &[(&str, usize)])], sms: u64) -> Received {
        Received {
            by_id: by_id
                .iter()
                .map(|(channel, ids)| {
                    let ids = ids.iter().map(|(id, n)| (id.to_string(), *n)).collect();
                    (*channel, ids)
                })
                .collect(),
            sms,
        }
    }

    #[test]
    fn each_channel_counts_committed_against_received() {
        let rows = [
            row("e1", "email", "sent", Some(-2_000)),
            row("e2", "email", "sent", Some(1_500)),
            row("e3", "email", "pending", None),
            row("e4", "email", "dead", None),
            row("p1", "push", "sent", Some(250)),
            row("p2", "push", "expired", None),
            row("p3", "push", "sent", Some(100)),
            row("s1", "sms", "sent", Some(-10)),
            row("s2", "sms", "pending", None),
            row("s3", "sms", "skipped", None),
            row("i1", "in_app", "sent", Some(-5_000)),
            row("i2", "in_app", "odd", None),
        ];
        let got = received(
            &[
                // e1 twice; e3 on its way (received, not yet recorded sent); x never committed.
                ("email", &[("e1", 2), ("e2", 1), ("e3", 1), ("x", 1)]),
                // p3 recorded sent but never received.
                ("push", &[("p1", 1)]),
                ("in_app", &[("i1", 1)]),
            ],
            // One sent, one pending that may have arrived, one more: a duplicate.
            3,
        );
        let channels: HashMap<&str, ChannelCount> =
            account(&rows, &got, end()).into_iter().collect();
        let email = &channels["email"];
        assert_eq!(
            (email.committed, email.sent, email.pending, email.dead),
            (4, 2, 1, 1)
        );
        assert_eq!(
            (
                email.received,
                email.duplicates,
                email.sent_not_received,
                email.received_not_committed
            ),
            (4, 1, 0, 1)
        );
        assert_eq!(email.last_sent_after_end_secs, Some(1.5));
        let push = &channels["push"];
        assert_eq!((push.sent, push.expired, push.received), (2, 1, 1));
        assert_eq!((push.sent_not_received, push.duplicates), (1, 0));
        assert_eq!(push.last_sent_after_end_secs, Some(0.25));
        let sms = &channels["sms"];
        assert_eq!(
            (sms.sent, sms.pending, sms.skipped, sms.received),
            (1, 1, 1, 3)
        );
        assert_eq!((sms.duplicates, sms.sent_not_received), (1, 0));
        assert_eq!(sms.last_sent_after_end_secs, Some(-0.01));
        let in_app = &channels["in_app"];
        assert_eq!((in_app.sent, in_app.other, in_app.received), (1, 1, 1));
        // Nothing committed on a channel: all zero, no last send.
        let none = account(&[], &received(&[], 0), end());
        assert_eq!(none.len(), 4);
        assert!(none.iter().all(|(_, c)| *c == ChannelCount::default()));
    }

    #[test]
    fn notifications_are_met_only_when_nothing_waits_doubles_or_goes_missing() {
        let clean = ChannelCount {
            committed: 10,
            sent: 7,
            expired: 2,
            skipped: 1,
            received: 7,
            last_sent_after_end_secs: Some(0.4),
            ..ChannelCount::default()
        };
        let all = |c: &ChannelCount| -> Vec<(&str, ChannelCount)> {
            CHANNELS.iter().map(|ch| (*ch, c.clone())).collect()
        };
        // Expired and skipped are by rule: met.
        assert_eq!(notifications_verdict(&all(&clean), 0)["met"], true);
        // Events not fanned out yet are news still to send.
        let v = notifications_verdict(&all(&clean), 3);
        assert_eq!(v["met"], false);
        assert_eq!(v["missed"][0], "3 events' notices not yet in the outbox");
        for change in [
            |c: &mut ChannelCount| c.pending = 1,
            |c: &mut ChannelCount| c.duplicates = 1,
            |c: &mut ChannelCount| c.dead = 1,
            |c: &mut ChannelCount| c.sent_not_received = 1,
            |c: &mut ChannelCount| c.received_not_committed = 1,
            |c: &mut ChannelCount| c.other = 1,
        ] {
            let mut bad = clean.clone();
            change(&mut bad);
            let mut channels = all(&clean);
            channels[2].1 = bad;
            let v = notifications_verdict(&channels, 0);
            assert_eq!(v["met"], false, "{v}");
            assert_eq!(v["missed"].as_array().unwrap().len(), 1, "{v}");
            assert!(v["missed"][0].as_str().unwrap().contains(" sms "), "{v}");
        }
    }

    #[test]
    fn the_table_says_the_notifications_verdict_and_settings() {
        let limits = plan().notifications.limits(50, 32);
        let channels: Vec<(&str, ChannelCount)> = CHANNELS
            .iter()
            .map(|ch| (*ch, ChannelCount::default()))
            .collect();
        let mut n = json!({
            "accounted": true,
            "sink_delay_ms": 50,
            "smtp_sessions": 32,
            "provider_limits": limits,
            "within_secs": 60,
            "settled_after_end_secs": 0.8,
            "last_sent_after_end_secs": 0.7,
            "channels": channels.iter().map(|(k, c)| (k.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
            "verdict": notifications_verdict(&channels, 0),
        });
        let t = notifications_table(&n);
        assert!(
            t.contains("email 640/s (burst 32) over 32 SMTP sessions"),
            "{t}"
        );
        assert!(t.contains("sms 100/s (burst 100)"), "{t}");
        assert!(t.contains("verdict: MET"), "{t}");
        assert!(t.contains("0.80 s after the end"), "{t}");
        assert!(t.contains("the last send 0.70 s after the end"), "{t}");
        n["last_sent_after_end_secs"] = json!(-0.05);
        let t = notifications_table(&n);
        assert!(t.contains("the last send 0.05 s before the end"), "{t}");
        n["verdict"] = json!({"met": false, "missed": ["4 sms still pending"]});
        let t = notifications_table(&n);
        assert!(
            t.contains("MISSED at 60 s after the end: 4 sms still pending"),
            "{t}"
        );
        let t = notifications_table(&json!({"accounted": false, "why": "given by --url"}));
        assert_eq!(t, "notifications: not accounted (given by --url)\n");
    }
}
