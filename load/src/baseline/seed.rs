//! The schools the intake, fan-out, idle and drain runs order at, and the closed-loop clients
//! that place their orders.

use crate::hub::{self, Target, client, created};
use crate::people::{kitchen_staff, sign_in};
use anyhow::Context;
use serde_json::json;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A school of the intake and fan-out runs.
pub(super) struct School {
    pub(super) id: String,
    pub(super) meal: String,
    pub(super) staff: String,
    pub(super) students: Vec<String>,
}

/// `n` schools, each with a meal, a kitchen-staff member (signed in) and a few students
/// with a guardian each, so that an order commits the same rows as in a rush. With
/// `receipts_by_email` the guardians chose an email receipt for every order (email is not a
/// default for routine news): the drain's emails.
pub(super) async fn seed(
    target: &Target,
    n: usize,
    receipts_by_email: bool,
) -> anyhow::Result<Vec<School>> {
    let c = client();
    let admin = &target.admin_token;
    let url = |p: &str| format!("{}{p}", target.url);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut schools = Vec::new();
    for s in 0..n {
        let (id, meal) = hub::school_with_meal(
            target,
            format!("Baseline school {s} ({})", &run[..8]),
            "America/Chicago",
            ("Baseline soup", 300),
        )
        .await?;
        let login = format!("baseline-{run}-{s}@load.test");
        let staff = kitchen_staff(target, &id, "Kitchen", (&login, "baseline-pass")).await?;
        let mut students = Vec::new();
        for k in 0..4 {
            let student = created(
                c.post(url(&format!("/api/v1/schools/{id}/users"))).bearer_auth(admin),
                json!({"role": "student", "display_name": format!("Student {k}"), "email": format!("baseline-{run}-{s}-{k}@load.test")}),
            )
            .await?;
            let student = student["id"].as_str().context("student id")?.to_owned();
            let guardian_login = format!("baseline-{run}-{s}-g{k}@load.test");
            let mut body = json!({"role": "guardian", "display_name": format!("Guardian {k}"), "email": guardian_login});
            if receipts_by_email {
                body["password"] = json!("baseline-pass");
            }
            let guardian = created(
                c.post(url(&format!("/api/v1/schools/{id}/users")))
                    .bearer_auth(admin),
                body,
            )
            .await?;
            if receipts_by_email {
                let token = sign_in(&c, &target.url, &guardian_login, "baseline-pass")
                    .await
                    .context("guardian token")?
                    .access;
                created(
                    c.put(url("/api/v1/me/preferences")).bearer_auth(token),
                    json!({"preferences": [{"kind": "order_placed", "channel": "email", "enabled": true}]}),
                )
                .await?;
            }
            created(
                c.post(url(&format!("/api/v1/schools/{id}/guardian-links")))
                    .bearer_auth(admin),
                json!({"guardian_id": guardian["id"], "student_id": student, "relationship": "parent"}),
            )
            .await?;
            students.push(student);
        }
        schools.push(School {
            id,
            meal,
            staff,
            students,
        });
    }
    Ok(schools)
}

/// Orders placed (201) per second by one closed-loop client per given school.
pub(super) async fn place_orders(url: &str, schools: &[&School], length: Duration) -> (f64, u64) {
    let refused = Rc::new(Cell::new(0u64));
    let until = Instant::now() + length;
    let started = Instant::now();
    let clients = schools.iter().map(|school| {
        let refused = refused.clone();
        async move {
            let c = client();
            let mut placed = 0u64;
            while Instant::now() < until {
                let student = &school.students[placed as usize % school.students.len()];
                let body = json!({"student_id": student, "items": [{"meal_id": school.meal, "quantity": 1}]});
                let outcome = hub::call(
                    c.post(format!("{url}/api/v1/schools/{}/orders", school.id))
                        .bearer_auth(&school.staff),
                    &body,
                )
                .await;
                match outcome {
                    Ok((201, _)) => placed += 1,
                    other => {
                        refused.set(refused.get() + 1);
                        if refused.get() == 1 {
                            eprintln!(
                                "tiffin-load: an order was refused: {}",
                                hub::code_of(&other)
                            );
                        }
                    }
                }
            }
            placed
        }
    });
    let placed: u64 = futures_util::future::join_all(clients).await.iter().sum();
    (
        placed as f64 / started.elapsed().as_secs_f64(),
        refused.get(),
    )
}
