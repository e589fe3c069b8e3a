//! Verified scans a second on one node (issue 21's goal: at least 1,500 with the verdict's
//! p99 at most 20 ms). `SCHOOLS` schools (a node serves a district's: a counter's reader
//! reads a card every few seconds, so no one school makes such a rate), each with one open
//! counter, `READERS` readers at it and students each with a card and an order made ready.
//! Every scan must be accepted: anything else fails the run. Two ways to drive them:
//! - open loop (the goal's measure): scans offered at a steady rate across all the readers,
//!   each reader one device scanning its cards in turn, each verdict timed from when its
//!   scan was due;
//! - closed loop (`--scan-rate 0`, the most a node answers): `CLOSED_LOOP_READERS` readers a
//!   school each scanning as soon as its last verdict came. There, by Little's law, the mean
//!   verdict is the readers in flight over the rate (32 readers at 1,500 a second: 21 ms),
//!   so its p99 says how many readers were used more than how fast a verdict is.

use crate::hub::{self, Target, client, code_of, created, reader_post_on};
use crate::people::kitchen_staff;
use crate::stats::server_cpu;
use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SCHOOLS: usize = 8;
/// Readers at each school's counter, each scanning one card at a time: enough that at the
/// goal's rate each scans every 85 ms, well apart from its verdicts.
const READERS: usize = 16;
/// Readers a school in the closed loop.
const CLOSED_LOOP_READERS: usize = 4;
/// Cards of each school, each with a ready order: together enough for the goal's rate for
/// a few seconds.
const STUDENTS: usize = 750;
/// Requests in flight while seeding.
const SEEDING: usize = 16;

/// A scan's answer, with how long it took.
type Answer = (Duration, anyhow::Result<(u16, Value)>);

/// Seeds the school, then measures; the goal's entry for `baseline.json`.
/// `rate`: scans a second offered (open loop), or 0 for the closed loop.
pub async fn measure(target: &Target, length: Duration, rate: u32) -> anyhow::Result<Value> {
    let seeded = Instant::now();
    let mut schools = Vec::with_capacity(SCHOOLS);
    for n in 0..SCHOOLS {
        schools.push(seed(target, n).await?);
    }
    eprintln!(
        "tiffin-load: scans: {} ready orders in {SCHOOLS} schools seeded in {:.0} s",
        SCHOOLS * STUDENTS,
        seeded.elapsed().as_secs_f64()
    );
    let trips_before = hub::round_trips(&target.url).await;
    let cpu_before = server_cpu(target.pid);
    let began = Instant::now();
    let until = began + length;
    let answers: Vec<Vec<Answer>> = if rate == 0 {
        let readers = schools.iter().flat_map(|school| {
            let readers = &school.readers[..CLOSED_LOOP_READERS];
            readers.iter().enumerate().map(|(r, reader)| {
                let cards = school.cards.iter().skip(r).step_by(readers.len()).collect();
                scan(&target.url, reader, cards, None, until)
            })
        });
        futures_util::future::join_all(readers).await
    } else {
        // Reader k of all K scans at began + k/rate, then every K/rate.
        let all = SCHOOLS * READERS;
        let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
        let readers = schools.iter().enumerate().flat_map(|(s, school)| {
            school.readers.iter().enumerate().map(move |(r, reader)| {
                let k = s * READERS + r;
                let cards = school.cards.iter().skip(r).step_by(READERS).collect();
                let pace = (began + gap * k as u32, gap * all as u32);
                scan(&target.url, reader, cards, Some(pace), until)
            })
        });
        futures_util::future::join_all(readers).await
    };
    let elapsed = began.elapsed().as_secs_f64();
    let cpu_after = server_cpu(target.pid);
    let trips = hub::round_trips_between(&trips_before, &hub::round_trips(&target.url).await);
    let mut latencies = Vec::new();
    let mut refused: std::collections::BTreeMap<String, u64> = Default::default();
    for (latency, outcome) in answers.into_iter().flatten() {
        match &outcome {
            Ok((200, body)) if body["verdict"] == "accepted" => latencies.push(latency),
            Ok((200, body)) => {
                *refused
                    .entry(body["verdict"].as_str().unwrap_or("?").to_owned())
                    .or_default() += 1
            }
            _ => *refused.entry(code_of(&outcome)).or_default() += 1,
        }
    }
    if !refused.is_empty() {
        bail!("scans not accepted: {refused:?}");
    }
    latencies.sort();
    let ms = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    // Open loop: the rate offered, held if every scan was answered by the end.
    let per_sec = latencies.len() as f64 / elapsed;
    let readers = if rate == 0 {
        CLOSED_LOOP_READERS
    } else {
        READERS
    } * SCHOOLS;
    let (p50, p99) = (ms(0.50), ms(0.99));
    let busy = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| (after - before) / elapsed);
    eprintln!(
        "tiffin-load: scans ({}): {per_sec:.0}/s accepted, verdict p50 {p50:.1} ms, p99 {p99:.1} ms \
         ({} scans by {readers} readers in {elapsed:.1} s; hub {:.2} cores)",
        if rate == 0 {
            "closed loop".to_owned()
        } else {
            format!("offered {rate}/s")
        },
        latencies.len(),
        busy.unwrap_or(0.0)
    );
    Ok(json!({
        "goal": "verified scans >= 1,500/s on one node with the verdict's p99 <= 20 ms",
        "met": per_sec >= 1500.0 && p99 <= 20.0,
        "scans_per_sec": per_sec,
        "verdict_p50_ms": p50,
        "verdict_p99_ms": p99,
        "scans": latencies.len(),
        "offered_per_sec": (rate > 0).then_some(rate),
        "schools": SCHOOLS,
        "readers": readers,
        "hub_cores_busy": busy,
        "db_statements": trips,
    }))
}

/// The seeded school: its readers (id, secret) and the cards of its ready orders.
struct School {
    readers: Vec<(String, String)>,
    cards: Vec<String>,
}

fn card_uid(school: usize, n: usize) -> String {
    format!("5C{school:04X}{n:08X}")
}

async fn seed(target: &Target, school: usize) -> anyhow::Result<School> {
    let admin = &target.admin_token;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (id, meal) = hub::school_with_meal(
        target,
        format!("Scan school {school} ({})", &run[..8]),
        "America/Chicago",
        ("Scan stew", 350),
    )
    .await?;
    let counter = hub::open_counter(target, &id).await?;
    let mut readers = Vec::with_capacity(READERS);
    for r in 0..READERS {
        let name = format!("Scan reader {r}");
        readers.push(hub::add_reader(target, &id, &counter, &name).await?);
    }
    let login = format!("scans-{run}@load.test");
    let staff = kitchen_staff(target, &id, "Kitchen", (&login, "scans-pass")).await?;
    let (id, meal, staff, run) = (&id, &meal, &staff, &run);
    let cards: Vec<anyhow::Result<String>> = futures_util::stream::iter(0..STUDENTS)
        .map(|n| async move {
            let c = client();
            let url = |p: &str| format!("{}{p}", target.url);
            let student = created(
                c.post(url(&format!("/api/v1/schools/{id}/users"))).bearer_auth(admin),
                json!({"role": "student", "display_name": format!("Student {n}"), "email": format!("scans-{run}-{n}@load.test")}),
            )
            .await?;
            let card = card_uid(school, n);
            created(
                c.post(url(&format!("/api/v1/schools/{id}/cards"))).bearer_auth(admin),
                json!({"student_id": student["id"], "card_uid": card}),
            )
            .await?;
            let order = created(
                c.post(url(&format!("/api/v1/schools/{id}/orders"))).bearer_auth(staff),
                json!({"student_id": student["id"], "items": [{"meal_id": meal, "quantity": 1}]}),
            )
            .await?;
            let order = order["id"].as_str().context("order id")?;
            for action in ["confirm", "start", "ready"] {
                created(
                    c.post(url(&format!("/api/v1/orders/{order}/{action}"))).bearer_auth(staff),
                    json!({}),
                )
                .await?;
            }
            Ok(card)
        })
        .buffer_unordered(SEEDING)
        .collect()
        .await;
    Ok(School {
        readers,
        cards: cards.into_iter().collect::<anyhow::Result<_>>()?,
    })
}

/// One reader scanning `cards` in turn until `until` or the cards run out: each answer with
/// its latency. Paced (`pace`: the first scan's time and the gap between its scans), each
/// scan is due at its time and timed from then, sent at once if the verdict before it came
/// late; else each is sent when the one before it is answered.
async fn scan(
    url: &str,
    reader: &(String, String),
    cards: Vec<&String>,
    pace: Option<(Instant, Duration)>,
    until: Instant,
) -> Vec<Answer> {
    let client = client();
    let mut answers = Vec::new();
    for (seq, card) in (1..).zip(cards) {
        let due = match pace {
            Some((first, gap)) => first + gap * (seq - 1),
            None => Instant::now(),
        };
        if due >= until {
            break;
        }
        actix_web::rt::time::sleep_until(due.into()).await;
        let body = json!({"seq": seq, "card_uid": card});
        let answer = reader_post_on(&client, url, reader, "/api/v1/reader/scans", &body).await;
        answers.push((due.elapsed(), answer));
    }
    answers
}
