//! The lunch rush: seed a district, a pre-order wave (open model: each order is sent when it
//! is due, whatever the hub is doing, and timed from then), kitchen bots readying orders in
//! batches, a pickup wave of counter visits with several raw reads per card, and kitchen
//! dashboards on WebSocket timing scan -> frame. Then the accounting: every accepted order
//! handed over exactly once, every dashboard gapless.

use crate::RunArgs;
use crate::hub::{Target, call, client, code_of, created, reader_post, usage};
use crate::profile::{Profile, arrival_at};
use crate::report::{
    EVENT_TO_SINK, ORDER_POST, Recorder, SCAN_TO_DASHBOARD, SCAN_VERDICT, TRANSITION,
};
use crate::sink::SmtpSink;
use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A send that left this much after it was due counts as late (the driver fell behind).
const LATE: Duration = Duration::from_millis(100);
/// Between two raw reads of one card presented at a reader.
const READ_GAP: Duration = Duration::from_millis(40);

struct School {
    id: String,
    meal: String,
    /// A member of the kitchen staff's access token: the kitchen bot and its screens.
    staff: String,
    students: Vec<String>,
    /// (reader id, secret) and the reader's own scan sequence.
    readers: Vec<((String, String), Cell<i64>)>,
}

fn card_uid(school: usize, student: usize) -> String {
    format!("1D{school:05X}{student:06X}")
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
    /// Order id -> when its first read at the counter was sent.
    scanned_at: RefCell<HashMap<String, Instant>>,
    /// Order id -> accepted, non-repeat verdicts (a meal handed over).
    handed_over: RefCell<HashMap<String, u32>>,
    repeats_debounced: Cell<u64>,
    answered_orders: Cell<u64>,
    answered_scans: Cell<u64>,
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
    sink: Option<&SmtpSink>,
) -> anyhow::Result<Value> {
    let before = target.pid.and_then(usage);
    let seeding = Instant::now();
    let schools = seed(profile, target).await?;
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
    });
    let schools = Rc::new(schools);
    let deadline = Duration::from_secs(profile.deadline_secs);
    let dashboards = open_dashboards(&run, &schools, profile.dashboards_per_kitchen).await?;
    let progress = (!args.quiet).then(|| actix_web::rt::spawn(show_progress(run.clone())));

    let rush = async {
        preorder_wave(&run, &schools, profile, args.rate_scale).await;
        kitchen_bots(&run, &schools, profile.staff_batch).await;
        pickup_wave(&run, &schools, profile, args.rate_scale).await;
    };
    let finished = actix_web::rt::time::timeout(deadline, rush).await.is_ok();
    let rush_secs = run.started.elapsed().as_secs_f64();
    // Frames still on their way: give the dashboards a moment to see the last hand-overs.
    let expected_frames = run.handed_over.borrow().len();
    // Hand-over frames each school's screens should see: one per accepted order.
    let mut per_school = vec![0usize; schools.len()];
    for (school, _, _) in run.accepted.borrow().iter() {
        per_school[*school] += 1;
    }
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(10)
        && dashboards
            .iter()
            .any(|d| d.picked_up.borrow().len() < per_school[d.school])
    {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let emails = match sink {
        Some(sink) => account_emails(&run, &schools, sink).await,
        None => Value::Null,
    };
    let after = target.pid.and_then(usage);

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
    let mut gaps = 0;
    let mut missing_frames = 0;
    {
        let mut recorder = run.recorder.borrow_mut();
        let scanned = run.scanned_at.borrow();
        for d in &dashboards {
            gaps += d.gaps.get();
            let seen = d.picked_up.borrow();
            missing_frames += per_school[d.school].saturating_sub(seen.len());
            for (order, at) in seen.iter() {
                if let Some(sent) = scanned.get(order) {
                    recorder.ok(
                        SCAN_TO_DASHBOARD,
                        at.saturating_duration_since(*sent),
                        false,
                    );
                }
            }
        }
    }
    let recorder = run.recorder.borrow();
    let errors = recorder.errors();
    let ok = finished
        && errors == 0
        && accepted.len() == ordered
        && doubled_orders == 0
        && twice == 0
        && not_handed == 0
        && gaps == 0
        && missing_frames == 0
        && run.dropped.get() == 0
        && (emails.is_null() || emails["ok"] == true);
    let hub = match (before, after) {
        (Some((cpu0, _)), Some((cpu1, peak))) => json!({
            "cpu_seconds": cpu1 - cpu0,
            "cpu_cores_busy": (cpu1 - cpu0) / rush_secs.max(1e-9),
            "peak_rss_mib": peak,
        }),
        _ => Value::Null,
    };
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
            "dashboards": dashboards.len(),
            "dashboard_gaps": gaps,
            "dashboard_frames_expected": expected_frames * profile.dashboards_per_kitchen,
            "dashboard_frames_missing": missing_frames,
            "sends_dropped": run.dropped.get(),
            "errors": errors,
            "emails": emails,
        },
        "hub": hub,
    }))
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

async fn seed_school(
    profile: &Profile,
    target: &Target,
    run_id: &str,
    n: usize,
) -> anyhow::Result<School> {
    let c = client();
    let admin = &target.admin_token;
    let url = |p: &str| format!("{}{p}", target.url);
    let school = created(
        c.post(url("/api/v1/schools")).bearer_auth(admin),
        json!({"name": format!("Load school {n} ({})", &run_id[..8]), "time_zone": "America/Chicago"}),
    )
    .await
    .context("creating a school (is the admin token right?)")?;
    let id = school["id"].as_str().context("school id")?.to_owned();
    let meal = created(
        c.post(url(&format!("/api/v1/schools/{id}/meals")))
            .bearer_auth(admin),
        json!({"name": "Load lasagna", "price_cents": 400}),
    )
    .await?;
    let counter = created(
        c.post(url(&format!("/api/v1/schools/{id}/counters")))
            .bearer_auth(admin),
        json!({"number": 1, "is_open": true}),
    )
    .await?;
    let counter = counter["id"].as_str().context("counter id")?.to_owned();
    let mut readers = Vec::new();
    for r in 0..profile.readers_per_school {
        let reader = created(
            c.post(url(&format!("/api/v1/schools/{id}/readers")))
                .bearer_auth(admin),
            json!({"name": format!("Load reader {r}"), "counter_id": counter}),
        )
        .await?;
        readers.push((
            (
                reader["id"].as_str().context("reader id")?.to_owned(),
                reader["secret"]
                    .as_str()
                    .context("reader secret")?
                    .to_owned(),
            ),
            Cell::new(1),
        ));
    }
    let staff_login = format!("load-{run_id}-{n}-kitchen@load.test");
    created(
        c.post(url(&format!("/api/v1/schools/{id}/users"))).bearer_auth(admin),
        json!({"role": "kitchen_staff", "display_name": "Load kitchen", "email": staff_login, "password": "load-kitchen-pass"}),
    )
    .await?;
    let signed_in = created(
        c.post(url("/api/v1/auth/login")),
        json!({"login": staff_login, "password": "load-kitchen-pass"}),
    )
    .await?;
    let staff = signed_in["access_token"]
        .as_str()
        .context("staff token")?
        .to_owned();
    let mut students = Vec::with_capacity(profile.students_per_school);
    let mut guardian_id = String::new();
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
        // Siblings: one guardian for every two students, told by email.
        if s % 2 == 0 {
            let guardian = created(
                c.post(url(&format!("/api/v1/schools/{id}/users"))).bearer_auth(admin),
                json!({"role": "guardian", "display_name": format!("Guardian {s}"), "email": format!("load-{run_id}-{n}-g{s}@load.test")}),
            )
            .await?;
            guardian_id = guardian["id"].as_str().context("guardian id")?.to_owned();
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
        meal: meal["id"].as_str().context("meal id")?.to_owned(),
        students,
        readers,
    })
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
            let body = json!({"student_id": s.students[student], "items": [{"meal_id": s.meal, "quantity": 1}]});
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

/// Every student with an order comes to the counter; the reader reads the card 3-5 times.
async fn pickup_wave(run: &Rc<Run>, schools: &Rc<Vec<School>>, profile: &Profile, scale: f64) {
    let visits: Vec<(usize, usize, String)> = run.accepted.borrow().clone();
    let total = visits.len();
    let offset = run.started.elapsed();
    let [low, high] = profile.reads_per_card;
    let mut sends = Vec::with_capacity(total);
    for (i, (school, student, order)) in visits.into_iter().enumerate() {
        let due = offset
            + Duration::from_secs_f64(arrival_at(i, total, profile.scan_peak_per_sec * scale));
        let late = until(run, due).await;
        if !admit(run) {
            continue;
        }
        let reads = low + (i * 7919) % (high - low + 1);
        let (run, schools) = (run.clone(), schools.clone());
        sends.push(actix_web::rt::spawn(async move {
            let s = &schools[school];
            let (reader, seq) = &s.readers[student % s.readers.len()];
            for read in 0..reads {
                let read_due = due + READ_GAP * read as u32;
                let read_late = late || until(&run, read_due).await;
                let n = seq.get();
                seq.set(n + 1);
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

/// A kitchen screen: every `order.picked_up` frame with when it arrived, and any gap.
struct Dashboard {
    school: usize,
    picked_up: Rc<RefCell<HashMap<String, Instant>>>,
    gaps: Rc<Cell<usize>>,
}

async fn open_dashboards(
    run: &Rc<Run>,
    schools: &Rc<Vec<School>>,
    per_kitchen: usize,
) -> anyhow::Result<Vec<Dashboard>> {
    let mut dashboards = Vec::new();
    for (n, school) in schools.iter().enumerate() {
        let ws_url = format!(
            "{}/api/v1/ws?access_token={}",
            run.url.replacen("http", "ws", 1),
            school.staff
        );
        for _ in 0..per_kitchen {
            let (_, mut socket) = client()
                .ws(ws_url.as_str())
                .max_frame_size(8 << 20)
                .connect()
                .await
                .map_err(|e| anyhow::anyhow!("dashboard socket: {e}"))?;
            let subscribe = json!({"type": "subscribe", "topic": format!("kitchen:{}", school.id)});
            socket
                .send(awc::ws::Message::Text(subscribe.to_string().into()))
                .await
                .map_err(|e| anyhow::anyhow!("dashboard subscribe: {e}"))?;
            let dashboard = Dashboard {
                school: n,
                picked_up: Rc::default(),
                gaps: Rc::default(),
            };
            let (seen, gaps) = (dashboard.picked_up.clone(), dashboard.gaps.clone());
            actix_web::rt::spawn(async move {
                let mut last: Option<i64> = None;
                while let Some(Ok(frame)) = socket.next().await {
                    let text = match frame {
                        awc::ws::Frame::Text(text) => text,
                        awc::ws::Frame::Ping(p) => {
                            let _ = socket.send(awc::ws::Message::Pong(p)).await;
                            continue;
                        }
                        _ => continue,
                    };
                    let at = Instant::now();
                    let Ok(frame) = serde_json::from_slice::<Value>(&text) else {
                        continue;
                    };
                    match (frame["type"].as_str(), frame["seq"].as_i64()) {
                        (Some("subscribed"), seq) => last = last.or(seq),
                        (Some("snapshot"), _) | (_, None | Some(0)) => {}
                        (Some(kind), Some(seq)) => {
                            if last.is_some_and(|l| seq != l + 1) {
                                gaps.set(gaps.get() + 1);
                            }
                            last = Some(seq);
                            if kind == "order.picked_up"
                                && let Some(order) = frame["data"]["order_id"].as_str()
                            {
                                seen.borrow_mut().insert(order.to_owned(), at);
                            }
                        }
                        _ => {}
                    }
                }
            });
            dashboards.push(dashboard);
        }
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

/// Every email the hub committed for the run's orders, against what reached the sink: each
/// sent one arrived, nothing uncommitted arrived, nothing arrived twice. Records the
/// event -> sink latency (from the outbox row's creation to its arrival).
async fn account_emails(run: &Rc<Run>, schools: &Rc<Vec<School>>, sink: &SmtpSink) -> Value {
    let accepted = run.accepted.borrow().clone();
    let mut committed = HashMap::new();
    let mut sent = Vec::new();
    let mut unreadable = 0;
    let settle = Instant::now() + Duration::from_secs(60);
    for (school, _, order) in &accepted {
        let url = format!("{}/api/v1/orders/{order}/notifications", run.url);
        let rows = loop {
            let rows = call_get(&url, &schools[*school].staff).await;
            let pending = rows.as_ref().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["channel"] == "email" && r["status"] == "pending")
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
        for r in rows.iter().filter(|r| r["channel"] == "email") {
            let (Some(id), Some(created)) = (r["id"].as_str(), r["created_at"].as_str()) else {
                continue;
            };
            let created = chrono::DateTime::parse_from_rfc3339(created)
                .map(|t| t.with_timezone(&chrono::Utc))
                .ok();
            committed.insert(id.to_owned(), created);
            if r["status"] == "sent" {
                sent.push(id.to_owned());
            }
        }
    }
    let delivered = sink.deliveries();
    let missing = sent
        .iter()
        .filter(|id| !delivered.contains_key(*id))
        .count();
    let stray = delivered
        .keys()
        .filter(|id| !committed.contains_key(*id))
        .count();
    let twice = delivered.values().filter(|at| at.len() > 1).count();
    let pending = committed.len() - sent.len();
    let mut recorder = run.recorder.borrow_mut();
    for (id, arrivals) in &delivered {
        if let (Some(Some(created)), Some(first)) = (committed.get(id), arrivals.first()) {
            let latency = (*first - *created).to_std().unwrap_or_default();
            recorder.ok(EVENT_TO_SINK, latency, false);
        }
    }
    json!({
        "ok": unreadable == 0 && missing == 0 && stray == 0 && twice == 0,
        "committed": committed.len(),
        "sent": sent.len(),
        "not_sent": pending,
        "received": delivered.len(),
        "sent_but_missing": missing,
        "received_but_not_committed": stray,
        "received_twice": twice,
        "unreadable_orders": unreadable,
    })
}

async fn call_get(url: &str, token: &str) -> Option<Vec<Value>> {
    let sent = client().get(url).bearer_auth(token).send().await;
    match crate::hub::reply(sent).await {
        Ok((200, Value::Array(rows))) => Some(rows),
        _ => None,
    }
}
