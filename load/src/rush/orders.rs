//! The orders: the pre-order wave (each order sent when it is due, timed from then), and the
//! kitchens confirming, starting and readying them, open loop too.

use super::waves::{in_wave, wave_of};
use super::{Run, School, admit, until};
use crate::hub::{call, client, code_of};
use crate::profile::{Profile, arrival_at};
use crate::report::{ORDER_POST, TRANSITION};
use serde_json::json;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub(super) async fn preorder_wave(
    run: &Rc<Run>,
    schools: &Rc<Vec<School>>,
    profile: &Profile,
    scale: f64,
) {
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

/// The kitchens confirm, start and ready every accepted order, open loop: orders are begun
/// in a wave peaking at a third of the profile's transition rate, an order's steps
/// `STEP_GAP` apart, each timed from when it was due (or from its step before's answer, if
/// that came later).
pub(super) async fn kitchen_bots(
    run: &Rc<Run>,
    schools: &Rc<Vec<School>>,
    profile: &Profile,
    scale: f64,
) {
    let orders: Vec<(usize, String)> = run
        .accepted
        .borrow()
        .iter()
        .map(|(school, _, id)| (*school, id.clone()))
        .collect();
    let total = orders.len();
    let offset = run.started.elapsed();
    let begun_per_sec = profile.transition_peak() * scale / STEPS.len() as f64;
    let mut moves = Vec::with_capacity(total);
    for (i, (school, id)) in orders.into_iter().enumerate() {
        let due = offset + Duration::from_secs_f64(arrival_at(i, total, begun_per_sec));
        until(run, due).await;
        // An order's moves count as one request outstanding while they run.
        if !admit(run) {
            continue;
        }
        let (run, staff) = (run.clone(), schools[school].staff.clone());
        let tablet = schools[school].kitchen.clone();
        moves.push(actix_web::rt::spawn(async move {
            let mut answered = run.started + due;
            for (step, action) in STEPS.iter().enumerate() {
                let step_due = due + STEP_GAP * step as u32;
                let late = until(&run, step_due).await;
                let from = answered.max(run.started + step_due);
                let outcome = call(
                    tablet
                        .post(format!("{}/api/v1/orders/{id}/{action}", run.url))
                        .bearer_auth(&staff),
                    &json!({}),
                )
                .await;
                answered = Instant::now();
                let mut recorder = run.recorder.borrow_mut();
                match &outcome {
                    Ok((200, _)) => {
                        recorder.ok(TRANSITION, answered.saturating_duration_since(from), late)
                    }
                    _ => {
                        recorder.error(TRANSITION, &format!("{action} {}", code_of(&outcome)));
                        // The order's later steps would only be refused.
                        break;
                    }
                }
            }
            run.outstanding.set(run.outstanding.get() - 1);
        }));
    }
    for step in moves {
        let _ = step.await;
    }
}

/// An order's steps in the kitchen, in order.
const STEPS: [&str; 3] = ["confirm", "start", "ready"];
/// Between an order's steps: a cook's moment, short enough that the wave's steps overlap.
const STEP_GAP: Duration = Duration::from_millis(500);
