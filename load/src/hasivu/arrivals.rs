//! What each arrival does: a student refreshes their token, then reads the menu or has a
//! lunch (orders; the kitchen bot confirms, starts and readies it; a reader hands it over); a
//! guardian reads a child's order and their inbox. Before the clock, the warm-up lunches.

use super::plan::{Arrival, Kind};
use super::{
    CONFIRM, INBOX, LUNCH, MENU, ORDER, ORDER_READ, PASSWORD, READY, REFRESH, Run, SCAN,
    SCAN_COOLDOWN, SEED_AT_ONCE, START,
};
use crate::hub::{call, code_of, reader_post_on, reply};
use crate::people::sign_in;
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// One arrival, as the plan's mix says.
pub(super) async fn arrive(run: &Run, n: usize, arrival: Arrival, due: Instant, late: bool) {
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
    if let Ok(tokens) = sign_in(&run.client, &run.url, &s.login, PASSWORD).await {
        *s.access.borrow_mut() = tokens.access;
        *s.refresh.borrow_mut() = tokens.refresh;
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
pub(super) async fn warm_up(run: &Rc<Run>, setup: usize) -> usize {
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
